//! The admin API: pools and their servers as JSON, runtime membership changes, and runtime
//! blocks of client addresses.
//!
//! Every change goes through the settings supervisor, one at a time with reloads, to the
//! pool's actor as the same message start-up sends; each is logged with the caller's address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::dev::Server as RunningServer;
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;

use crate::affinity::Affinity;
use crate::pool::{Condition, PoolError, PoolHandle, ProbeVerdict, Server};
use crate::proxy::SharedProxy;
use crate::settings::{Balance, Cidr, Duration, ServerEntry, ServerState, Settings};
use crate::supervisor::{Changed, ReloadError, ServerChange, ServerChanges, SupervisorHandle};

/// What the admin handlers read: the running pools (from the request path's published state),
/// the settings supervisor, which applies every change, and the token callers must present.
pub struct Admin {
    shared: Arc<SharedProxy>,
    supervisor: SupervisorHandle,
    token: String,
}

impl Admin {
    pub fn new(
        settings: &Settings,
        shared: Arc<SharedProxy>,
        supervisor: SupervisorHandle,
    ) -> Self {
        Self {
            shared,
            supervisor,
            token: settings.admin.token.clone(),
        }
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

    /// One pool as JSON: its algorithm and every server with its counters.
    fn describe(&self, name: &str, handle: &PoolHandle, balance: Balance) -> serde_json::Value {
        let servers: Vec<serde_json::Value> = handle
            .snapshot()
            .servers
            .iter()
            .map(|s| describe(s))
            .collect();
        json!({ "name": name, "balance": balance, "servers": servers })
    }
}

/// One server as JSON: its settings and counters, what health checks and live traffic say
/// of it, whether it takes traffic, and for a draining server whether its last request has
/// finished.
fn describe(server: &Server) -> serde_json::Value {
    let mut json = json!({
        "address": &*server.address,
        "weight": server.weight,
        "state": server.state(),
        "backup": server.backup,
        "max_connections": server.max_connections,
        "in_flight": server.stats.in_flight.load(Ordering::Relaxed),
        "requests": server.stats.requests.load(Ordering::Relaxed),
        "failures": server.stats.failures.load(Ordering::Relaxed),
        "health": health(server.condition()),
        "takes_traffic": server.takes_traffic(),
    });
    if server.state() == ServerState::Drain {
        json["drained"] = json!(server.drained());
    }
    json
}

/// A server's condition as JSON: the probes' verdict and last report (none while the pool
/// has no checks), and passive detection's verdict with the end of a running ejection.
fn health(condition: &Condition) -> serde_json::Value {
    let probe = condition.probe();
    let last_probe = match probe {
        ProbeVerdict::Unchecked => None,
        _ => condition.last_probe(),
    };
    // Rounded up: the server is out until at least then.
    let unix = |at: SystemTime| {
        at.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
    };
    json!({
        "probe": probe,
        "last_probe": last_probe,
        "passive": condition.passive(),
        "ejected_until": condition.ejected_until().map(unix),
    })
}

/// A JSON error body: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

fn no_pool(name: &str) -> HttpResponse {
    pool_error(PoolError::NoPool(name.into()))
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
        None => no_pool(&name),
    }
}

/// The pool's session persistence, if the pool exists and has one; else the 404 to answer.
fn affinity_of(admin: &Admin, name: &str) -> Result<Arc<Affinity>, Box<HttpResponse>> {
    let proxy = admin.shared.load();
    let pool = proxy
        .pools
        .iter()
        .find(|pool| &*pool.name == name)
        .ok_or_else(|| Box::new(no_pool(name)))?;
    pool.affinity.clone().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            format!("pool {name:?} has no [pools.{name}.sticky] section"),
        ))
    })
}

/// `GET /pools/NAME/sticky`: the mode and, for table modes, the bindings per server.
async fn show_sticky(admin: web::Data<Admin>, name: web::Path<String>) -> HttpResponse {
    let affinity = match affinity_of(&admin, &name) {
        Ok(affinity) => affinity,
        Err(response) => return *response,
    };
    let mode = affinity.settings().mode;
    let body = match affinity.table() {
        Some(table) => {
            let servers = table.per_server();
            let entries: usize = servers.values().sum();
            json!({ "pool": *name, "mode": mode, "entries": entries, "max_entries": affinity.settings().max_entries, "servers": servers })
        }
        // The cookie mode keeps nothing: the clients hold their bindings.
        None => json!({ "pool": *name, "mode": mode, "entries": null, "servers": null }),
    };
    HttpResponse::Ok().json(body)
}

/// `DELETE /pools/NAME/sticky`: forgets every binding of a table mode.
async fn flush_sticky(
    req: HttpRequest,
    admin: web::Data<Admin>,
    name: web::Path<String>,
) -> HttpResponse {
    let affinity = match affinity_of(&admin, &name) {
        Ok(affinity) => affinity,
        Err(response) => return *response,
    };
    let Some(table) = affinity.table() else {
        return error(
            StatusCode::CONFLICT,
            "mode = \"cookie\" keeps no table: change the secret to unbind every session",
        );
    };
    let flushed = table.len();
    table.clear();
    log::info!(
        "admin {}: flushed the sticky table of pool {name} ({flushed} bindings)",
        caller(&req)
    );
    HttpResponse::Ok().json(json!({ "pool": *name, "flushed": flushed }))
}

/// Reads a JSON body; the error, serde's reason, is for a 400.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| format!("bad {what}: {err}"))
}

fn weight_zero() -> HttpResponse {
    error(StatusCode::BAD_REQUEST, "weight must be at least 1")
}

/// `POST /pools/NAME/servers`: a server entry as in the settings files.
async fn add_server(
    req: HttpRequest,
    admin: web::Data<Admin>,
    name: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let entry: ServerEntry = match parse(&body, "server description") {
        Ok(entry) => entry,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    if entry.weight == 0 {
        return weight_zero();
    }
    let described = format!("{entry:?}");
    let address = entry.address.clone();
    match admin
        .supervisor
        .change_servers(&name, ServerChange::Add(entry))
        .await
    {
        Ok(changed) => {
            log::info!(
                "admin {}: added server {address} to pool {name}: {described}",
                caller(&req)
            );
            HttpResponse::Created().json(answer(&name, changed))
        }
        Err(err) => pool_error(err),
    }
}

/// `PATCH /pools/NAME/servers/ADDRESS`: changes a server's weight, limit, backup flag or state.
async fn update_server(
    req: HttpRequest,
    admin: web::Data<Admin>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (name, address) = path.into_inner();
    let changes: ServerChanges = match parse(&body, "server change") {
        Ok(changes) => changes,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    if changes.weight == Some(0) {
        return weight_zero();
    }
    let described = format!("{changes:?}");
    let change = ServerChange::Update(address.clone(), changes);
    match admin.supervisor.change_servers(&name, change).await {
        Ok(changed) => {
            log::info!(
                "admin {}: changed server {address} of pool {name}: {described}",
                caller(&req)
            );
            HttpResponse::Ok().json(answer(&name, changed))
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
    let change = ServerChange::Remove(address.clone());
    match admin.supervisor.change_servers(&name, change).await {
        Ok(changed) => {
            log::info!("admin {}: removed server {address} from pool {name}; its requests in flight finish", caller(&req));
            let mut body = json!({ "pool": name, "removed": address });
            if let Some(err) = changed.state_file_error {
                body["state_file_error"] = json!(err);
            }
            HttpResponse::Ok().json(body)
        }
        Err(err) => pool_error(err),
    }
}

/// A change's answer: the server as it is now with its pool's name, and `state_file_error`
/// when the change could not be saved.
fn answer(pool: &str, changed: Changed) -> serde_json::Value {
    let mut body = changed.server.as_deref().map_or(json!({}), describe);
    body["pool"] = json!(pool);
    if let Some(err) = changed.state_file_error {
        body["state_file_error"] = json!(err);
    }
    body
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

/// `POST /security/deny`'s body: a network to block, for a while or until lifted.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyRequest {
    cidr: Cidr,
    #[serde(default)]
    ttl: Option<Duration>,
}

/// One runtime block as JSON; `seconds_left` is null for a block without expiry.
fn describe_block(cidr: Cidr, seconds_left: Option<u64>) -> serde_json::Value {
    json!({ "cidr": cidr, "seconds_left": seconds_left })
}

/// `POST /security/deny`: blocks a network now. New connections from it are closed as soon
/// as they are accepted; requests on connections already open get 403. A block of the same
/// network is replaced.
async fn block(req: HttpRequest, admin: web::Data<Admin>, body: web::Bytes) -> HttpResponse {
    let request: DenyRequest = match parse(&body, "block") {
        Ok(request) => request,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let ttl = request.ttl.map(Duration::get);
    if ttl.is_some_and(|ttl| ttl.is_zero()) {
        return error(
            StatusCode::BAD_REQUEST,
            "ttl must be more than 0; leave it out for a block until lifted",
        );
    }
    admin
        .shared
        .load()
        .security
        .edge
        .denies
        .block(request.cidr, ttl);
    let ttl_text = request
        .ttl
        .map_or_else(|| "until lifted".to_string(), |ttl| format!("for {ttl}"));
    log::info!(
        "admin {}: blocked {} {ttl_text}",
        caller(&req),
        request.cidr
    );
    let seconds = ttl.map(|ttl| ttl.as_secs().max(1));
    HttpResponse::Ok().json(describe_block(request.cidr, seconds))
}

/// `GET /security/deny`: the blocks in force.
async fn list_blocks(admin: web::Data<Admin>) -> HttpResponse {
    let blocks: Vec<serde_json::Value> = admin
        .shared
        .load()
        .security
        .edge
        .denies
        .list()
        .into_iter()
        .map(|(cidr, left)| describe_block(cidr, left))
        .collect();
    HttpResponse::Ok().json(json!({ "blocks": blocks }))
}

/// `DELETE /security/deny/CIDR`: lifts the block of exactly that network. The prefix may
/// be written with a plain slash (`/security/deny/192.0.2.0/24`) or encoded (`%2F`).
async fn unblock(
    req: HttpRequest,
    admin: web::Data<Admin>,
    path: web::Path<String>,
) -> HttpResponse {
    let text = path.replace("%2F", "/").replace("%2f", "/");
    let cidr: Cidr = match text.parse() {
        Ok(cidr) => cidr,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    if !admin.shared.load().security.edge.denies.unblock(cidr) {
        return error(StatusCode::NOT_FOUND, format!("{cidr} is not blocked"));
    }
    log::info!("admin {}: lifted the block of {cidr}", caller(&req));
    HttpResponse::Ok().json(json!({ "unblocked": cidr }))
}

fn pool_error(err: PoolError) -> HttpResponse {
    let status = match err {
        PoolError::Duplicate(_) => StatusCode::CONFLICT,
        PoolError::Unknown(_) | PoolError::NoPool(_) => StatusCode::NOT_FOUND,
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
            .route("/pools/{name}/sticky", web::get().to(show_sticky))
            .route("/pools/{name}/sticky", web::delete().to(flush_sticky))
            .route(
                "/pools/{name}/servers/{address}",
                web::delete().to(remove_server),
            )
            .route(
                "/pools/{name}/servers/{address}",
                web::patch().to(update_server),
            )
            .route("/reload", web::post().to(reload))
            .route("/security/deny", web::get().to(list_blocks))
            .route("/security/deny", web::post().to(block))
            .route("/security/deny/{cidr:.+}", web::delete().to(unblock))
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
