//! TLS to the servers (`[pools.NAME.tls]`): real TLS origins with certificates made by the
//! test, verification, keep-alive, failures as connect errors, client certificates, probes,
//! WebSocket relays.

use std::net::{SocketAddr, TcpStream};

use tungstenite::{HandshakeError, WebSocket};

use crate::helpers::*;

/// A CA, its file, and a TLS origin whose certificate it signed.
struct Setup {
    ca: Authority,
    dir: TempDir,
    ca_file: String,
}

impl Setup {
    fn new() -> Self {
        let ca = Authority::new("gatehouse test CA");
        let dir = TempDir::new();
        let ca_file = write(&dir, "ca.pem", &ca.pem());
        Self { ca, dir, ca_file }
    }

    /// `[pools.NAME.tls]`'s line trusting the test CA.
    fn trust(&self) -> String {
        format!("ca_file = {:?}", self.ca_file)
    }

    /// [`tls_pool`] verifying `servers` against the test CA, with `extra` sections.
    fn verified_pool(&self, servers: &[String], extra: &str) -> Toml {
        tls_pool(servers, &self.trust(), extra)
    }
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// Pool `web` of `servers` (addresses as written) over TLS with `tls` keys.
fn tls_pool(servers: &[String], tls: &str, extra: &str) -> Toml {
    one_pool(servers, &format!("{extra}\n[pools.web.tls]\n{tls}\n"))
}

fn ip(addr: SocketAddr) -> String {
    addr.to_string()
}

/// Asserts a 502 from gatehouse's own page that names no server and no cause.
fn assert_generic_502(response: &Response, origin: SocketAddr) {
    assert_eq!(response.status, 502);
    let body = response.text().to_lowercase();
    for secret in [
        origin.ip().to_string(),
        origin.port().to_string(),
        "certificate".into(),
        "tls".into(),
        "ssl".into(),
        "verify".into(),
    ] {
        assert!(!body.contains(&secret), "{secret:?} in: {body}");
    }
}

#[test]
fn requests_reach_a_tls_server_verified_against_the_configured_ca() {
    let setup = Setup::new();
    let origin = TlsOrigin::start("secure", &setup.ca.server(), None);
    let toml = setup.verified_pool(&[ip(origin.addr)], "");
    let proxy = Proxy::from_toml(&toml);
    let response = get(proxy.addr, "/name");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "secure");
    assert_eq!(origin.handshakes(), 1);
    // An IP address is verified as such and sent no SNI.
    assert_eq!(origin.server_names(), vec![None]);
}

#[test]
fn a_server_named_by_host_gets_that_name_as_sni_and_sni_overrides_it() {
    let setup = Setup::new();
    let origin = TlsOrigin::start("secure", &setup.ca.server(), None);
    let by_name = format!("localhost:{}", origin.addr.port());
    let ca = setup.trust();
    let proxy = Proxy::from_toml(tls_pool(&[by_name], &ca, ""));
    assert_eq!(get(proxy.addr, "/name").text(), "secure");
    drop(proxy);
    let sni = format!("{ca}\nsni = \"localhost\"");
    let proxy = Proxy::from_toml(tls_pool(&[ip(origin.addr)], &sni, ""));
    assert_eq!(get(proxy.addr, "/name").text(), "secure");
    assert_eq!(
        origin.server_names(),
        vec![Some("localhost".to_string()), Some("localhost".to_string())]
    );
}

#[test]
fn a_server_name_that_the_certificate_does_not_match_fails() {
    let setup = Setup::new();
    let origin = TlsOrigin::start("secure", &setup.ca.server(), None);
    let tls = format!("ca_file = {:?}\nsni = \"other.example\"", setup.ca_file);
    let proxy = Proxy::from_toml(tls_pool(
        &[ip(origin.addr)],
        &tls,
        "[pools.web.retry]\nattempts = 1\n",
    ));
    assert_generic_502(&get(proxy.addr, "/name"), origin.addr);
    assert_eq!(origin.hits(), 0);
}

#[test]
fn keep_alive_reuses_one_tls_connection_for_several_requests() {
    let setup = Setup::new();
    let origin = TlsOrigin::start("secure", &setup.ca.server(), None);
    let toml = setup.verified_pool(&[ip(origin.addr)], "");
    let proxy = Proxy::from_toml(&toml);
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..5 {
        conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
        let response = conn.try_read(false).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "secure");
    }
    assert_eq!(origin.hits(), 5);
    assert_eq!(
        origin.handshakes(),
        1,
        "each request made its own connection"
    );
}

#[test]
fn an_untrusted_certificate_is_a_connect_failure_retried_on_another_server_and_ejected() {
    let setup = Setup::new();
    let stranger = Authority::new("someone else's CA");
    let good = TlsOrigin::start("good", &setup.ca.server(), None);
    let bad = TlsOrigin::start("bad", &stranger.server(), None);
    let toml = setup.verified_pool(
        &[ip(good.addr), ip(bad.addr)],
        "[pools.web.passive]\nmax_fails = 2\nejection_time = \"60s\"\n",
    );
    let proxy = Proxy::from_toml(&toml);
    for _ in 0..6 {
        let response = get(proxy.addr, "/name");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "good");
    }
    assert_eq!(bad.hits(), 0);
    let server = admin_server(proxy.admin, "web", bad.addr);
    assert_eq!(server["health"]["passive"], "ejected", "{server}");
    assert_eq!(server["takes_traffic"], false, "{server}");
}

#[test]
fn an_untrusted_certificate_answers_a_502_that_names_nothing() {
    let setup = Setup::new();
    let stranger = Authority::new("someone else's CA");
    let origin = TlsOrigin::start("bad", &stranger.server(), None);
    let toml = setup.verified_pool(&[ip(origin.addr)], "");
    let proxy = Proxy::from_toml(&toml);
    assert_generic_502(&get(proxy.addr, "/name"), origin.addr);
    assert_eq!(origin.hits(), 0);
}

#[test]
fn without_verification_an_untrusted_server_is_reached() {
    let stranger = Authority::new("someone else's CA");
    let origin = TlsOrigin::start("untrusted", &stranger.server(), None);
    let proxy = Proxy::from_toml(tls_pool(&[ip(origin.addr)], "verify = false", ""));
    let response = get(proxy.addr, "/name");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "untrusted");
}

#[test]
fn a_server_requiring_a_client_certificate_accepts_gatehouses_and_refuses_none() {
    let setup = Setup::new();
    let clients = Authority::new("client CA");
    let origin = TlsOrigin::start("mutual", &setup.ca.server(), Some(&clients));
    let client = clients.client();
    let cert = write(&setup.dir, "client.pem", &client.cert_pem);
    let key = write(&setup.dir, "client.key", &client.key_pem);
    let ca = setup.trust();

    let with = format!("{ca}\ncert = {cert:?}\nkey = {key:?}");
    let proxy = Proxy::from_toml(tls_pool(&[ip(origin.addr)], &with, ""));
    let response = get(proxy.addr, "/name");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "mutual");
    drop(proxy);

    let proxy = Proxy::from_toml(tls_pool(&[ip(origin.addr)], &ca, ""));
    assert_generic_502(&get(proxy.addr, "/name"), origin.addr);
    assert_eq!(origin.hits(), 1);
}

#[test]
fn a_health_probe_over_tls_marks_a_tls_server_up() {
    let setup = Setup::new();
    let origin = TlsOrigin::start("secure", &setup.ca.server(), None);
    let toml = setup.verified_pool(
        &[ip(origin.addr)],
        "[pools.web.health]\npath = \"/health\"\ninterval = \"50ms\"\njitter = \"0s\"\n\
         initial_state = \"down\"\nrise = 1\n",
    );
    let proxy = Proxy::from_toml(&toml);
    wait_until("the probe marks the server up", || {
        admin_server(proxy.admin, "web", origin.addr)["health"]["probe"] == "up"
    });
    assert!(origin.health_checks() > 0);
    assert_eq!(get(proxy.addr, "/name").text(), "secure");
}

#[test]
fn a_health_probe_refuses_an_untrusted_tls_server() {
    let setup = Setup::new();
    let stranger = Authority::new("someone else's CA");
    let origin = TlsOrigin::start("bad", &stranger.server(), None);
    let toml = setup.verified_pool(
        &[ip(origin.addr)],
        "[pools.web.health]\npath = \"/health\"\ninterval = \"50ms\"\njitter = \"0s\"\n\
         initial_state = \"up\"\nfall = 1\n",
    );
    let proxy = Proxy::from_toml(&toml);
    wait_until("the probe marks the server down", || {
        admin_server(proxy.admin, "web", origin.addr)["health"]["probe"] == "down"
    });
    let server = admin_server(proxy.admin, "web", origin.addr);
    let detail = server["health"]["last_probe"]["detail"].to_string();
    assert!(detail.contains("certificate verify failed"), "{detail}");
    assert_eq!(origin.health_checks(), 0);
}

#[test]
fn a_reload_that_changes_the_tls_settings_rebuilds_the_pools_connections() {
    let setup = Setup::new();
    let stranger = Authority::new("someone else's CA");
    let wrong_ca = write(&setup.dir, "wrong.pem", &stranger.pem());
    let origin = TlsOrigin::start("secure", &setup.ca.server(), None);
    let servers = [ip(origin.addr)];
    let retry = "[pools.web.retry]\nattempts = 1\n[pools.web.passive]\nenabled = false\n";
    let mut process = Process::start(tls_pool(
        &servers,
        &format!("ca_file = {wrong_ca:?}"),
        retry,
    ));
    assert_eq!(get(process.addr, "/name").status, 502);

    // A CA file that cannot be read is refused, and the running settings stay.
    let missing = setup.dir.0.join("missing.pem");
    let toml = tls_pool(&servers, &format!("ca_file = {missing:?}"), retry);
    std::fs::write(&process.config, toml.to_string()).unwrap();
    let refused = admin_reload(process.admin);
    assert_ne!(refused.status, 200);
    assert!(
        refused.text().contains("pools.web.tls.ca_file"),
        "{}",
        refused.text()
    );
    assert_eq!(get(process.addr, "/name").status, 502);

    let toml = setup.verified_pool(&servers, retry);
    std::fs::write(&process.config, toml.to_string()).unwrap();
    assert_eq!(admin_reload(process.admin).status, 200);
    let response = get(process.addr, "/name");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "secure");
    process.signal(libc::SIGTERM);
    process.wait();
}

#[test]
fn bad_tls_files_are_settings_errors_naming_key_value_and_file() {
    let setup = Setup::new();
    let dead = DeadServer::new();
    let servers = [dead.addr.to_string()];
    let missing = setup.dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let error = settings_error(tls_pool(&servers, &format!("ca_file = {missing:?}"), ""));
    for part in ["pools.web.tls.ca_file", missing, "bad.toml", "cannot read"] {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }

    let junk = write(&setup.dir, "junk.pem", b"not a certificate");
    let error = settings_error(tls_pool(&servers, &format!("ca_file = {junk:?}"), ""));
    assert!(error.contains("pools.web.tls.ca_file"), "{error}");
    assert!(error.contains("no certificate"), "{error}");

    let client = setup.ca.client();
    let other = setup.ca.client();
    let cert = write(&setup.dir, "client.pem", &client.cert_pem);
    let key = write(&setup.dir, "other.key", &other.key_pem);
    let error = settings_error(tls_pool(
        &servers,
        &format!("cert = {cert:?}\nkey = {key:?}"),
        "",
    ));
    assert!(error.contains("pools.web.tls.key"), "{error}");
    assert!(error.contains("does not belong"), "{error}");

    let error = settings_error(tls_pool(&servers, &format!("cert = {cert:?}"), ""));
    assert!(error.contains("pools.web.tls.key"), "{error}");

    let error = settings_error(tls_pool(&servers, "min_version = \"1.1\"", ""));
    assert!(error.contains("min_version"), "{error}");
}

/// Opens a WebSocket through gatehouse; its status and, on 101, the socket.
fn websocket(proxy: SocketAddr) -> (u16, Option<WebSocket<TcpStream>>) {
    let stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let url = format!("ws://{proxy}/chat");
    match tungstenite::client(url.as_str(), stream) {
        Ok((socket, response)) => (response.status().as_u16(), Some(socket)),
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            (response.status().as_u16(), None)
        }
        Err(err) => panic!("WebSocket handshake: {err}"),
    }
}

/// Closes a WebSocket and waits, within the read timeout, for the server's close.
fn close(mut socket: WebSocket<TcpStream>) {
    socket.close(None).unwrap();
    while let Ok(message) = socket.read() {
        if message.is_close() {
            break;
        }
    }
}

#[test]
fn websocket_messages_reach_a_verified_tls_server_with_sni_and_a_client_certificate() {
    let setup = Setup::new();
    let clients = Authority::new("client CA");
    let origin = WebSocketOrigin::over_tls(&setup.ca.server(), Some(&clients));
    let client = clients.client();
    let cert = write(&setup.dir, "client.pem", &client.cert_pem);
    let key = write(&setup.dir, "client.key", &client.key_pem);
    let tls = format!(
        "ca_file = {:?}\nsni = \"localhost\"\ncert = {cert:?}\nkey = {key:?}",
        setup.ca_file
    );
    let proxy = Proxy::from_toml(tls_pool(&[ip(origin.addr)], &tls, ""));

    let (status, socket) = websocket(proxy.addr);
    assert_eq!(status, 101);
    let mut socket = socket.unwrap();
    echoes(&mut socket);
    close(socket);
    assert_eq!(origin.server_names(), vec![Some("localhost".to_string())]);
    wait_until("the relay frees its server", || {
        admin_server(proxy.admin, "web", origin.addr)["in_flight"] == 0
    });
}

#[test]
fn a_websocket_to_an_untrusted_tls_server_answers_a_502_that_names_nothing() {
    let setup = Setup::new();
    let stranger = Authority::new("someone else's CA");
    let origin = WebSocketOrigin::over_tls(&stranger.server(), None);
    let toml = setup.verified_pool(&[ip(origin.addr)], "");
    let proxy = Proxy::from_toml(&toml);
    let response = raw(
        proxy.addr,
        "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_generic_502(&response, origin.addr);
    assert!(origin.server_names().is_empty(), "a handshake completed");
    assert_eq!(admin_server(proxy.admin, "web", origin.addr)["failures"], 1);
}

#[test]
fn a_tls_websocket_server_that_fails_verification_is_ejected_like_any_other() {
    let setup = Setup::new();
    let stranger = Authority::new("someone else's CA");
    let good = WebSocketOrigin::over_tls(&setup.ca.server(), None);
    let bad = WebSocketOrigin::over_tls(&stranger.server(), None);
    let toml = setup.verified_pool(
        &[ip(good.addr), ip(bad.addr)],
        "[pools.web.passive]\nmax_fails = 1\nejection_time = \"60s\"\n",
    );
    let proxy = Proxy::from_toml(&toml);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, socket) = websocket(proxy.addr);
        statuses.push(status);
        if let Some(socket) = socket {
            close(socket);
        }
    }
    // Round robin sends one of the first two to the untrusted server, and none after that.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses[2..].iter().all(|&s| s == 101), "{statuses:?}");
    let server = admin_server(proxy.admin, "web", bad.addr);
    assert_eq!(server["health"]["passive"], "ejected", "{server}");
}
