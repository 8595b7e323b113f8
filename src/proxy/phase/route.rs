//! Phase `route`: the route for the request's host and path (404), the route's own access
//! lists and rate limits (403, 429), `redirect_https` (308), and the route's body limit
//! against a declared `Content-Length` (413).

use super::super::access::guard;
use super::super::route::Route;
use super::super::{redirect, PoolTarget, ProxyError, RequestCtx};
use super::Early;

/// The request's route, or the early answer that ends it here.
pub fn route<'r>(ctx: &mut RequestCtx<'r>) -> Result<&'r Route<PoolTarget>, Early> {
    let proxy = ctx.proxy;
    let route = proxy
        .routes
        .find(ctx.host, ctx.req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    if !route.access.is_empty() || !route.rate_limits.is_empty() {
        let edge = &proxy.security.edge;
        guard(ctx.req, ctx.client, &route.access, &route.rate_limits, edge)?;
    }
    if route.redirect_https && !ctx.over_tls {
        if let Some(response) = redirect::redirect(ctx.req, ctx.host) {
            return Err(Early::Answered(Box::new(response)));
        }
    }
    if proxy.log.enabled() {
        ctx.record.route = Some(route.label.clone());
        ctx.record.pool = Some(route.target.name.clone());
    }
    if let (Some(limit), Some(length)) = (route.max_body_size, ctx.declared_length) {
        if length > limit {
            return Err(ProxyError::BodyTooLarge.into());
        }
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use actix_web::http::header;
    use actix_web::test::TestRequest;

    use super::*;
    use crate::proxy::{test_proxy, Proxy};

    const SETTINGS: &str = r#"
        [[routes]]
        path = "/"
        pool = "web"
        [[routes]]
        path = "/staff/"
        pool = "web"
        deny = ["10.0.0.0/8"]
        [[routes]]
        path = "/upload/"
        pool = "web"
        max_body_size = "1KiB"
        [[routes]]
        host = "shop.test"
        path = "/"
        pool = "shop"
        redirect_https = true
        [pools.web]
        servers = [{ address = "127.0.0.1:9001" }]
        [pools.shop]
        servers = [{ address = "127.0.0.1:9002" }]
    "#;

    /// The route phase's verdict on a request from `peer`: the route's pool, or the status.
    fn verdict(proxy: &Proxy, request: TestRequest, peer: &str) -> Result<String, u16> {
        use actix_web::ResponseError as _;
        let req = request.peer_addr(peer.parse().unwrap()).to_http_request();
        let mut ctx = RequestCtx::new(&req, proxy);
        match route(&mut ctx) {
            Ok(route) => Ok(route.target.name.to_string()),
            Err(Early::Refused(err)) => Err(err.status_code().as_u16()),
            Err(Early::Answered(response)) => Err(response.status().as_u16()),
        }
    }

    #[actix_rt::test]
    async fn the_longest_prefix_of_the_matching_host_wins() {
        let proxy = test_proxy(SETTINGS).await;
        let get = |host: &str, path: &str| {
            TestRequest::get()
                .uri(path)
                .insert_header((header::HOST, host))
        };
        let peer = "192.0.2.1:5000";
        assert_eq!(
            verdict(&proxy, get("www.test", "/x"), peer),
            Ok("web".into())
        );
        assert_eq!(
            verdict(&proxy, get("www.test", "/staff/a"), peer),
            Ok("web".into())
        );
        let shop = TestRequest::get()
            .uri("/")
            .insert_header((header::HOST, "shop.test"));
        // No TLS listener runs, so there is nowhere to redirect to: served as it is.
        assert_eq!(verdict(&proxy, shop, peer), Ok("shop".into()));
    }

    #[actix_rt::test]
    async fn a_route_refuses_what_its_own_rules_refuse() {
        let proxy = test_proxy(SETTINGS).await;
        let staff = || {
            TestRequest::get()
                .uri("/staff/")
                .insert_header((header::HOST, "a"))
        };
        assert_eq!(verdict(&proxy, staff(), "10.1.2.3:5000"), Err(403));
        assert_eq!(verdict(&proxy, staff(), "192.0.2.1:5000"), Ok("web".into()));
        let upload = |length: &str| {
            TestRequest::post()
                .uri("/upload/")
                .insert_header((header::HOST, "a"))
                .insert_header((header::CONTENT_LENGTH, length.to_string()))
        };
        assert_eq!(verdict(&proxy, upload("1025"), "192.0.2.1:5000"), Err(413));
        assert_eq!(
            verdict(&proxy, upload("1024"), "192.0.2.1:5000"),
            Ok("web".into())
        );
    }
}
