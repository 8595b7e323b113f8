//! The admin API: pools and their servers as JSON, and runtime membership changes.
//!
//! Every change goes to the pool's actor as the same message start-up sends, and is logged
//! with the caller's address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::dev::Server as RunningServer;
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::json;

use crate::pool::{PoolError, PoolHandle};
use crate::proxy::SharedProxy;
use crate::settings::{Balance, Settings};
use crate::state_file::{self, Membership};
use crate::supervisor::{ReloadError, SupervisorHandle};

/// What the admin handlers read: the running pools (from the request path's published state),
/// the settings supervisor, and the token callers must present.
pub struct Admin {
    shared: Arc<SharedProxy>,
    supervisor: SupervisorHandle,
    token: String,
    state_file: Option<PathBuf>,
}

impl Admin {
    pub fn new(
        settings: &Settings,
        shared: Arc<SharedProxy>,
        supervisor: SupervisorHandle,
    ) -> Self {
        let state_file = Some(&settings.admin.state_file)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from);
        Self {
            shared,
            supervisor,
            token: settings.admin.token.clone(),
            state_file,
        }
    }

    /// Saves every pool's membership to the state file, if there is one. A failure is logged
    /// and reported to the caller; the change itself stands.
    fn save_state(&self) -> Result<(), String> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let mut membership = Membership::default();
        for pool in &self.shared.load().pools {
            let servers = pool
                .handle
                .snapshot()
                .servers
                .iter()
                .map(|s| s.entry())
                .collect();
            membership.pools.insert(pool.name.to_string(), servers);
        }
        state_file::save(path, &membership).map_err(|err| {
            log::error!("{err}");
            err.to_string()
        })
    }

    /// The running pools by name.
    fn pools(&self) -> BTreeMap<String, (PoolHandle, Balance)> {
        self.shared
            .load()
            .pools
            .iter()
            .map(|pool| {
                (
                    pool.name.to_string(),
                    (pool.handle.clone(), pool.settings.balance),
                )
            })
            .collect()
    }

    fn pool(&self, name: &str) -> Option<PoolHandle> {
        self.pools().remove(name).map(|(handle, _)| handle)
    }

    /// One pool as JSON: its algorithm and every server with its counters.
    fn describe(&self, name: &str, handle: &PoolHandle, balance: Balance) -> serde_json::Value {
        let snapshot = handle.snapshot();
        let servers: Vec<serde_json::Value> = snapshot
            .servers
            .iter()
            .map(|server| {
                json!({
                    "address": &*server.address,
                    "weight": server.weight,
                    "in_flight": server.stats.in_flight.load(Ordering::Relaxed),
                    "requests": server.stats.requests.load(Ordering::Relaxed),
                    "failures": server.stats.failures.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({ "name": name, "balance": balance, "servers": servers })
    }
}

/// A JSON error body: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

fn no_pool(name: &str) -> HttpResponse {
    error(StatusCode::NOT_FOUND, format!("no pool named {name:?}"))
}

/// Whether the caller presented the token, when one is set.
fn authorized(req: &HttpRequest, token: &str) -> bool {
    if token.is_empty() {
        return true;
    }
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Compares without an early exit, so response timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn caller(req: &HttpRequest) -> String {
    req.peer_addr()
        .map_or_else(|| "unknown".into(), |addr| addr.to_string())
}

async fn list_pools(admin: web::Data<Admin>) -> HttpResponse {
    let pools: Vec<serde_json::Value> = admin
        .pools()
        .iter()
        .map(|(name, (handle, balance))| admin.describe(name, handle, *balance))
        .collect();
    HttpResponse::Ok().json(json!({ "pools": pools }))
}

async fn show_pool(admin: web::Data<Admin>, name: web::Path<String>) -> HttpResponse {
    match admin.pools().get(name.as_str()) {
        Some((handle, balance)) => HttpResponse::Ok().json(admin.describe(&name, handle, *balance)),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no pool named {:?}", name.as_str()),
        ),
    }
}

/// The body of `POST /pools/NAME/servers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServer {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

async fn add_server(
    req: HttpRequest,
    admin: web::Data<Admin>,
    name: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let Some(pool) = admin.pool(&name) else {
        return no_pool(&name);
    };
    let new: NewServer = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad server description: {err}"),
            )
        }
    };
    if new.weight == 0 {
        return error(StatusCode::BAD_REQUEST, "weight must be at least 1");
    }
    match pool.add_server(&new.address, new.weight).await {
        Ok(()) => {
            let saved = admin.save_state();
            log::info!(
                "admin {}: added server {} (weight {}) to pool {}",
                caller(&req),
                new.address,
                new.weight,
                name
            );
            let body =
                json!({ "pool": name.as_str(), "address": new.address, "weight": new.weight });
            HttpResponse::Created().json(with_state_outcome(body, saved))
        }
        Err(err) => pool_error(err),
    }
}

async fn remove_server(
    req: HttpRequest,
    admin: web::Data<Admin>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (name, address) = path.into_inner();
    let Some(pool) = admin.pool(&name) else {
        return no_pool(&name);
    };
    match pool.remove_server(&address).await {
        Ok(()) => {
            let saved = admin.save_state();
            log::info!("admin {}: removed server {address} from pool {name}; its requests in flight finish", caller(&req));
            HttpResponse::Ok().json(with_state_outcome(
                json!({ "pool": name, "removed": address }),
                saved,
            ))
        }
        Err(err) => pool_error(err),
    }
}

/// `POST /reload`: the same as SIGHUP; answers what changed, or why nothing did.
async fn reload(req: HttpRequest, admin: web::Data<Admin>) -> HttpResponse {
    log::info!("admin {}: reload requested", caller(&req));
    match admin.supervisor.reload().await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(err @ ReloadError::Settings(_)) => error(StatusCode::BAD_REQUEST, err.to_string()),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// Adds `state_file_error` to a change's answer when the change could not be saved.
fn with_state_outcome(mut body: serde_json::Value, saved: Result<(), String>) -> serde_json::Value {
    if let Err(err) = saved {
        body["state_file_error"] = json!(err);
    }
    body
}

fn pool_error(err: PoolError) -> HttpResponse {
    let status = match err {
        PoolError::Duplicate(_) => StatusCode::CONFLICT,
        PoolError::Unknown(_) => StatusCode::NOT_FOUND,
        PoolError::Address { .. } => StatusCode::BAD_REQUEST,
        PoolError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, err.to_string())
}

/// Refuses callers without the token; answers unknown paths with a JSON 404.
async fn not_found(req: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        format!("no admin endpoint {} {}", req.method(), req.path()),
    )
}

/// Starts the admin listener on one worker of its own.
pub fn start(admin: Admin, listen: SocketAddr) -> std::io::Result<(RunningServer, SocketAddr)> {
    let admin = web::Data::new(admin);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(admin.clone())
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                let message = err.to_string();
                actix_web::error::InternalError::from_response(
                    err,
                    error(StatusCode::BAD_REQUEST, message),
                )
                .into()
            }))
            .wrap_fn(|req, srv| {
                use actix_web::dev::Service;
                let allowed = {
                    let admin = req
                        .app_data::<web::Data<Admin>>()
                        .expect("admin state is registered");
                    authorized(req.request(), &admin.token)
                };
                let fut = if allowed {
                    Some(srv.call(req))
                } else {
                    log::warn!(
                        "admin {}: refused {} {} without a valid token",
                        caller(req.request()),
                        req.method(),
                        req.path()
                    );
                    drop(req);
                    None
                };
                async move {
                    match fut {
                        Some(fut) => fut.await,
                        None => Err(actix_web::error::InternalError::from_response(
                            "unauthorized",
                            error(
                                StatusCode::UNAUTHORIZED,
                                "missing or wrong token: send Authorization: Bearer TOKEN",
                            ),
                        )
                        .into()),
                    }
                }
            })
            .route("/pools", web::get().to(list_pools))
            .route("/pools/{name}", web::get().to(show_pool))
            .route("/pools/{name}/servers", web::post().to(add_server))
            .route(
                "/pools/{name}/servers/{address}",
                web::delete().to(remove_server),
            )
            .route("/reload", web::post().to(reload))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .bind(listen)?;
    let bound = server.addrs()[0];
    log::info!("admin API on http://{bound}");
    Ok((server.run(), bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
