//! Phase `respond`: the client's response. A server's answer is streamed down with the framing
//! it had, compressed when the rules say so; and every response header rule is applied here,
//! once, to every response: hop-by-hop headers removed, the affinity cookie, `Location`
//! rewritten, HSTS, the request id, hidden headers, `Server`.

use actix_web::body::{BodyStream, BoxBody, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse};

use super::super::body::{Framing, ResponseBody};
use super::super::error::{page_body, page_head};
use super::super::headers::{self, X_REQUEST_ID};
use super::super::route::Route;
use super::super::{PoolTarget, RequestCtx};
use super::tries::Answer;
use super::Finish;
use crate::affinity::Session;
use crate::compression::{self, Compress, Compression, Encoder};
use crate::pool::Server;

/// Where a response came from, which decides the header rules it gets.
pub enum Source<'r> {
    /// Gatehouse's own answer: an error page or a redirect.
    Own,
    /// A server's answer to a WebSocket handshake, relayed as it came.
    Upgraded,
    /// A server's answer to a forwarded request.
    Proxied {
        route: &'r Route<PoolTarget>,
        server: std::sync::Arc<Server>,
        session: Option<Session>,
    },
}

/// The response to a forwarded request, from the server's answer.
pub fn proxied<'r>(
    ctx: &mut RequestCtx<'r>,
    route: &'r Route<PoolTarget>,
    answer: Answer,
    session: Option<Session>,
) -> (HttpResponse, Source<'r>) {
    let status = answer.response.status();
    let intercept = route
        .intercept_errors
        .as_deref()
        .unwrap_or(&ctx.proxy.intercept_errors);
    if intercept
        .iter()
        .any(|range| range.contains(status.as_u16()))
    {
        return (intercepted(ctx, answer), Source::Own);
    }
    let pool = &route.target;
    let server = answer.claim.server().clone();
    let compression = route.compression.or(ctx.proxy.compression.as_ref());
    let finish = ctx.finish(Some(answer.claim));
    let response = streamed(
        ctx.req,
        answer.response,
        pool,
        compression.map(|rules| &**rules),
        finish,
    );
    // A cacheable response is stored here, as its body streams to the client.
    let source = Source::Proxied {
        route,
        server,
        session,
    };
    (response, source)
}

/// Gatehouse's generic page in place of a server's answer whose status `intercept_errors`
/// lists: the status and `Retry-After` kept, the server's body and other headers dropped
/// (its connection with them).
fn intercepted(ctx: &mut RequestCtx<'_>, answer: Answer) -> HttpResponse {
    let status = answer.response.status();
    let mut page = page_head(status);
    if let Some(retry_after) = answer.response.headers().get(header::RETRY_AFTER) {
        page.insert_header((header::RETRY_AFTER, retry_after.clone()));
    }
    let body = page_body(status);
    ctx.finish(Some(answer.claim)).finish(body.len() as u64);
    page.body(body)
}

/// Every response header rule, for a response from `source`.
///
/// Called once per request, last: the request id moves into the response.
pub fn header_rules(ctx: &mut RequestCtx<'_>, response: &mut HttpResponse, source: Source<'_>) {
    let proxy = ctx.proxy;
    match source {
        Source::Own => {}
        Source::Upgraded => {
            let switching = response.status() == actix_web::http::StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers::strip_hop_by_hop(headers, switching);
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::SERVER);
        }
        Source::Proxied {
            route,
            server,
            session,
        } => {
            if let (Some(affinity), Some(session)) = (&route.target.affinity, &session) {
                affinity.bind(session, &server, response);
            }
            let headers = response.headers_mut();
            proxy
                .hiding
                .rewrite_redirects(headers, &server.authority, ctx.host);
            if let (true, Some(hsts)) = (ctx.over_tls, &route.hsts) {
                headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
    }
    let headers = response.headers_mut();
    let request_id = std::mem::replace(&mut ctx.request_id, HeaderValue::from_static(""));
    headers.insert(X_REQUEST_ID, request_id);
    proxy.hiding.strip(headers);
    if let Some(server) = &proxy.server_header {
        headers.insert(header::SERVER, server.clone());
    }
}

/// The client's response from the server's, body streamed with the framing it had.
fn streamed(
    req: &HttpRequest,
    upstream: awc::ClientResponse,
    pool: &PoolTarget,
    compression: Option<&Compression>,
    finish: Finish,
) -> HttpResponse {
    let method = req.method();
    let status = upstream.status();
    let framing = Framing::of(upstream.version(), upstream.headers());
    // A chunked body's Content-Length, if the server sent both, means nothing (RFC 9112 6.3).
    let length = match framing {
        Framing::Length => headers::content_length(upstream.headers()),
        _ => None,
    };
    // The server's header map is taken, not copied: the body no longer needs it.
    let mut headers = HeaderMap::new();
    let upstream = upstream.map_body(|head, payload| {
        headers = std::mem::take(&mut head.headers);
        payload
    });
    headers::downstream_response_headers(&mut headers);
    let encoder =
        compression.and_then(|rules| compress(req, status.as_u16(), &mut headers, length, rules));
    let idle = pool.settings.response_timeout.get();
    let body = ResponseBody::new(upstream, idle, finish).framed_by(framing);
    if let Some(encoder) = encoder {
        let body = BoxBody::new(BodyStream::new(Compress::new(body, encoder)));
        let mut response = HttpResponse::with_body(status, body);
        *response.headers_mut() = headers;
        return response;
    }
    let body = if headers::response_has_no_body(method, status.as_u16()) {
        match length {
            // A HEAD response keeps the length the body would have had.
            Some(length) if method == Method::HEAD => BoxBody::new(SizedStream::new(length, body)),
            _ => {
                drop(body);
                BoxBody::new(actix_web::body::None::new())
            }
        }
    } else {
        match length {
            Some(length) => BoxBody::new(SizedStream::new(length, body)),
            None => BoxBody::new(BodyStream::new(body)),
        }
    };
    let mut response = HttpResponse::with_body(status, body);
    *response.headers_mut() = headers;
    response
}

/// Applies the compression rules to a response's headers; the encoder for its body, if it
/// is to be compressed.
fn compress(
    req: &HttpRequest,
    status: u16,
    headers: &mut HeaderMap,
    length: Option<u64>,
    rules: &Compression,
) -> Option<Encoder> {
    let accept = req.headers().get(header::ACCEPT_ENCODING);
    let plan = rules.plan(req.method(), status, headers, length, accept);
    if plan.vary {
        compression::add_vary(headers);
    }
    let algorithm = plan.encode?;
    match Encoder::new(algorithm, &rules.settings().levels) {
        Ok(encoder) => {
            compression::encoded_headers(headers, algorithm);
            Some(encoder)
        }
        Err(err) => {
            log::warn!("cannot start a {} encoder: {err}", algorithm.token());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;
    use actix_web::http::StatusCode;
    use actix_web::test::TestRequest;

    use super::*;
    use crate::proxy::test_proxy;

    const SETTINGS: &str = r#"
        [server]
        server_header = "edge"
        [[routes]]
        path = "/"
        pool = "web"
        hsts = "max-age=600"
        [pools.web]
        servers = [{ address = "127.0.0.1:9001" }]
    "#;

    fn answer(status: StatusCode, headers: &[(&str, &str)]) -> HttpResponse {
        let mut response = HttpResponse::new(status);
        for (name, value) in headers {
            let name = header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            response
                .headers_mut()
                .append(name, HeaderValue::from_str(value).unwrap());
        }
        response
    }

    fn value<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
        response.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[actix_rt::test]
    async fn every_response_gets_the_request_id_and_server_and_loses_hidden_headers() {
        let proxy = test_proxy(SETTINGS).await;
        let req = TestRequest::get()
            .insert_header((X_REQUEST_ID, "abc-1"))
            .to_http_request();
        for source in [Source::Own, Source::Upgraded] {
            let mut ctx = RequestCtx::new(&req, &proxy);
            let mut response = answer(StatusCode::OK, &[("x-powered-by", "php"), ("server", "x")]);
            header_rules(&mut ctx, &mut response, source);
            assert_eq!(value(&response, "x-request-id"), Some("abc-1"));
            assert_eq!(value(&response, "server"), Some("edge"));
            assert_eq!(value(&response, "x-powered-by"), None);
        }
    }

    #[actix_rt::test]
    async fn a_proxied_response_has_its_redirects_rewritten_and_hsts_only_over_tls() {
        let proxy = test_proxy(SETTINGS).await;
        let req = TestRequest::get()
            .insert_header((header::HOST, "www.test"))
            .to_http_request();
        let mut ctx = RequestCtx::new(&req, &proxy);
        let route = proxy.routes.find(Some("www.test"), "/").unwrap();
        let server = std::sync::Arc::new(Server::new("127.0.0.1:9001", 1).unwrap());
        let proxied = |server| Source::Proxied {
            route,
            server,
            session: None,
        };
        let location = [("location", "http://127.0.0.1:9001/next")];
        let mut response = answer(StatusCode::FOUND, &location);
        header_rules(&mut ctx, &mut response, proxied(server.clone()));
        assert_eq!(value(&response, "location"), Some("http://www.test/next"));
        assert_eq!(value(&response, "strict-transport-security"), None);

        ctx.over_tls = true;
        let mut response = answer(StatusCode::OK, &[]);
        header_rules(&mut ctx, &mut response, proxied(server));
        assert_eq!(
            value(&response, "strict-transport-security"),
            Some("max-age=600")
        );
    }

    #[actix_rt::test]
    async fn an_upgrade_answer_keeps_upgrade_on_101_only() {
        let proxy = test_proxy(SETTINGS).await;
        let req = TestRequest::get().to_http_request();
        let mut ctx = RequestCtx::new(&req, &proxy);
        let hop = [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("content-length", "0"),
            ("keep-alive", "timeout=5"),
        ];
        let mut switching = answer(StatusCode::SWITCHING_PROTOCOLS, &hop);
        header_rules(&mut ctx, &mut switching, Source::Upgraded);
        assert_eq!(value(&switching, "upgrade"), Some("websocket"));
        assert_eq!(value(&switching, "keep-alive"), None);
        assert_eq!(value(&switching, "content-length"), None);
        let mut refused = answer(StatusCode::FORBIDDEN, &hop);
        header_rules(&mut ctx, &mut refused, Source::Upgraded);
        assert_eq!(value(&refused, "upgrade"), None);
        assert_eq!(value(&refused, "connection"), None);
    }
}
