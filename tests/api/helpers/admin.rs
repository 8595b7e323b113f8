//! Calls to the admin API of a running gatehouse.

use std::net::SocketAddr;

use super::{raw, Response};

/// A JSON call to the admin API on a fresh connection.
pub fn admin_call(admin: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    admin_call_as(admin, method, path, body, None)
}

/// [`admin_call`] with `Authorization: Bearer TOKEN` when a token is given.
pub fn admin_call_as(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// One server of a pool as the admin API describes it.
pub fn admin_server(admin: SocketAddr, pool: &str, address: SocketAddr) -> serde_json::Value {
    let response = admin_call(admin, "GET", &format!("/pools/{pool}"), "");
    assert_eq!(response.status, 200, "{}", response.text());
    let pool = response.json();
    pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == address.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{address} not listed in {pool}"))
}

/// `POST /reload`: the running gatehouse reads its settings file again.
pub fn admin_reload(admin: SocketAddr) -> Response {
    admin_call(admin, "POST", "/reload", "")
}
