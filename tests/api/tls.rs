//! TLS termination: certificates by SNI, protocol versions, HTTP/2 by ALPN, the forwarding
//! headers and redirects of TLS, and certificate reloads. Certificates are made here, signed
//! by a test CA that the client trusts.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openssl::ssl::{
    SslConnector, SslMethod, SslOptions, SslSession, SslSessionCacheMode, SslStream, SslVersion,
};
use openssl::x509::X509;

use crate::helpers::*;

/// A client connection over TLS, ready for HTTP/1.1 requests.
type TlsConn = Conn<SslStream<TcpStream>>;

/// A TLS client connection trusting only `ca`, with SNI `sni`, offering `alpn`, and at most
/// TLS version `max` (older versions allowed by the client, so the server decides).
fn connect_tls(
    addr: SocketAddr,
    ca: &X509,
    sni: Option<&str>,
    alpn: &[u8],
    max: Option<SslVersion>,
) -> Result<SslStream<TcpStream>, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.cert_store_mut().add_cert(ca.clone()).unwrap();
    if let Some(max) = max {
        builder.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
        builder
            .set_min_proto_version(Some(SslVersion::TLS1))
            .unwrap();
        builder.set_max_proto_version(Some(max)).unwrap();
    }
    if !alpn.is_empty() {
        builder.set_alpn_protos(alpn).unwrap();
    }
    let mut config = builder.build().configure().unwrap().verify_hostname(false);
    config.set_use_server_name_indication(sni.is_some());
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    config
        .connect(sni.unwrap_or("unused"), tcp)
        .map_err(|err| err.to_string())
}

/// The DNS names and serial of the certificate the server presented.
fn served(stream: &SslStream<TcpStream>) -> (Vec<String>, u32) {
    let cert = stream
        .ssl()
        .peer_certificate()
        .expect("a server certificate");
    let names = cert
        .subject_alt_names()
        .into_iter()
        .flatten()
        .filter_map(|name| name.dnsname().map(String::from))
        .collect();
    let serial = cert.serial_number().to_bn().unwrap().to_string();
    (names, serial.parse().unwrap())
}

/// One HTTP/1.1 request on a TLS connection, and its response.
fn request(conn: &mut TlsConn, raw: &str) -> Response {
    conn.send(raw.as_bytes());
    conn.read(false)
}

fn get_echo(host: &str) -> String {
    format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

fn start(tls_keys: &str) -> (Origin, Pki, Proxy) {
    let origin = Origin::start("origin");
    let pki = Pki::new();
    let toml = one_pool(&[origin.addr], &pki.tls_section_with(tls_keys));
    let proxy = Proxy::from_toml(&toml);
    (origin, pki, proxy)
}

#[test]
fn sni_chooses_the_certificate_and_the_first_is_the_default() {
    let (_origin, pki, proxy) = start("");
    let tls = proxy.tls[0];
    let names = |sni| served(&connect_tls(tls, pki.ca(), sni, b"", None).unwrap()).0;
    assert_eq!(names(Some("a.test")), ["a.test"]);
    assert_eq!(names(Some("A.TEST")), ["a.test"]);
    assert_eq!(names(Some("www.b.test")), ["*.b.test"]);
    // A wildcard covers one label, as it does in certificates.
    assert_eq!(names(Some("deep.www.b.test")), ["a.test"]);
    assert_eq!(names(Some("b.test")), ["a.test"]);
    assert_eq!(names(Some("unknown.test")), ["a.test"]);
    assert_eq!(names(None), ["a.test"]);
}

#[test]
fn requests_over_tls_reach_the_origin_marked_https() {
    let (origin, pki, proxy) = start("");
    let mut conn =
        Conn::over(connect_tls(proxy.tls[0], pki.ca(), Some("a.test"), b"", None).unwrap());
    assert_eq!(conn.stream().ssl().version_str(), "TLSv1.3");
    let response = request(&mut conn, &get_echo("a.test"));
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = Echo(response.json());
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(echo.header("via").as_deref(), Some("1.1 gatehouse"));
    // The same connection keeps serving.
    let again = request(&mut conn, &get_echo("a.test"));
    assert_eq!(again.status, 200);
    assert_eq!(origin.hits(), 2);
    // Plain HTTP stays `http`.
    let (_, plain) = echo_via(proxy.addr);
    assert_eq!(plain.header("x-forwarded-proto").as_deref(), Some("http"));
}

fn echo_via(addr: SocketAddr) -> (Response, Echo) {
    echo(addr, "")
}

#[test]
fn tls_1_1_and_older_are_refused_and_1_2_is_accepted() {
    let (_origin, pki, proxy) = start("");
    let tls = proxy.tls[0];
    for old in [SslVersion::TLS1_1, SslVersion::TLS1] {
        let err = connect_tls(tls, pki.ca(), Some("a.test"), b"", Some(old))
            .expect_err("handshake refused");
        // Refused by the server (an alert), not by the client's own configuration.
        assert!(err.contains("alert protocol version"), "{err}");
    }
    let stream = connect_tls(tls, pki.ca(), Some("a.test"), b"", Some(SslVersion::TLS1_2))
        .expect("TLS 1.2 accepted");
    assert_eq!(stream.ssl().version_str(), "TLSv1.2");
}

#[test]
fn min_version_1_3_refuses_1_2() {
    let (_origin, pki, proxy) = start("min_version = \"1.3\"\n");
    let tls = proxy.tls[0];
    let err = connect_tls(tls, pki.ca(), Some("a.test"), b"", Some(SslVersion::TLS1_2))
        .expect_err("TLS 1.2 refused");
    assert!(err.contains("alert protocol version"), "{err}");
    assert!(connect_tls(tls, pki.ca(), Some("a.test"), b"", None).is_ok());
}

#[test]
fn alpn_chooses_http2_or_http1() {
    let (origin, pki, proxy) = start("");
    let tls = proxy.tls[0];
    let h1 = connect_tls(tls, pki.ca(), Some("a.test"), b"\x08http/1.1", None).unwrap();
    assert_eq!(h1.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));

    let answer = http2_client::runtime().block_on(async {
        let (mut client, _connection) = http2_client::connect(tls, &pki).await;
        http2_client::send(&mut client, http2_client::get("/echo"), Vec::new())
            .await
            .unwrap()
    });
    let (status, body) = (answer.status, answer.body.unwrap());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo = Echo(serde_json::from_slice(&body).unwrap());
    assert_eq!(echo.header("via").as_deref(), Some("2 gatehouse"));
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(echo.header("host").as_deref(), Some("a.test"));
    assert_eq!(origin.hits(), 1);
}

#[test]
fn redirect_https_sends_plain_requests_to_the_tls_port_and_hsts_goes_over_tls_only() {
    let origin = Origin::start("origin");
    let pki = Pki::new();
    let toml = Toml::base()
        .route(
            "host = \"a.test\"\npool = \"web\"\nredirect_https = true\n\
             hsts = \"max-age=31536000; includeSubDomains\"",
        )
        .route("pool = \"web\"")
        .pool("web", &[origin.addr])
        .extend(&pki.tls_section());
    let proxy = Proxy::from_toml(toml);
    let tls_port = proxy.tls[0].port();
    let plain_port = proxy.addr.port();
    let redirected = raw(
        proxy.addr,
        &format!(
            "POST /path/x?q=1&r=2 HTTP/1.1\r\nHost: a.test:{plain_port}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(redirected.status, 308);
    assert_eq!(
        redirected.header("location"),
        Some(format!("https://a.test:{tls_port}/path/x?q=1&r=2").as_str())
    );
    assert!(redirected.header("strict-transport-security").is_none());
    assert_eq!(origin.hits(), 0, "a redirected request was forwarded");
    // Other routes are served over plain HTTP, without HSTS.
    let (plain, _) = echo(proxy.addr, "");
    assert!(plain.header("strict-transport-security").is_none());

    let mut conn =
        Conn::over(connect_tls(proxy.tls[0], pki.ca(), Some("a.test"), b"", None).unwrap());
    let response = request(&mut conn, &get_echo("a.test"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(origin.hits(), 2);
}

#[test]
fn reload_serves_a_replaced_certificate_to_new_connections_and_keeps_old_ones() {
    let origin = Origin::start("origin");
    let pki = Pki::new();
    let process = Process::start(one_pool(&[origin.addr], &pki.tls_section()));
    let tls = process.tls.expect("a TLS listener");
    let mut old = Conn::over(connect_tls(tls, pki.ca(), Some("a.test"), b"", None).unwrap());
    assert_eq!(served(old.stream()), (vec!["a.test".to_string()], 10));
    assert_eq!(request(&mut old, &get_echo("a.test")).status, 200);

    pki.issue("a", &["a.test"], 11);
    let response = admin_reload(process.admin);
    assert_eq!(response.status, 200, "{}", response.text());
    let fresh = connect_tls(tls, pki.ca(), Some("a.test"), b"", None).unwrap();
    assert_eq!(
        served(&fresh).1,
        11,
        "new connections get the new certificate"
    );
    // The connection opened before the reload keeps working with its certificate.
    assert_eq!(request(&mut old, &get_echo("a.test")).status, 200);
    assert_eq!(served(old.stream()).1, 10);
}

#[test]
fn a_bad_key_at_reload_keeps_the_running_certificate_and_says_why() {
    let origin = Origin::start("origin");
    let pki = Pki::new();
    let process = Process::start(one_pool(&[origin.addr], &pki.tls_section()));
    let tls = process.tls.expect("a TLS listener");
    // A new certificate whose key file holds another key.
    let (_, key) = pki.issue("a", &["a.test"], 12);
    let other = pki.authority.named(&["a.test"], 13).key_pem;
    std::fs::write(&key, other).unwrap();
    let response = admin_reload(process.admin);
    assert_ne!(response.status, 200);
    let text = response.text();
    assert!(text.contains("tls.certificates[0].key"), "{text}");
    assert!(text.contains(key.to_str().unwrap()), "{text}");
    assert!(text.contains("does not match"), "{text}");
    let mut conn = Conn::over(connect_tls(tls, pki.ca(), Some("a.test"), b"", None).unwrap());
    assert_eq!(served(conn.stream()).1, 10, "the running certificate stays");
    assert_eq!(request(&mut conn, &get_echo("a.test")).status, 200);
}

#[test]
fn bad_tls_settings_name_the_key_and_the_file() {
    let pki = Pki::new();
    let (a_cert, a_key) = pki.issue("a", &["a.test"], 10);
    let (b_cert, b_key) = pki.issue("b", &["a.test"], 20);
    let base =
        "[[routes]]\npool = \"web\"\n[pools.web]\nservers = [{ address = \"127.0.0.1:1\" }]\n";
    let tls = |certs: &[(&PathBuf, &PathBuf)], extra: &str| {
        let mut toml = format!("{base}[tls]\nlisten = [\"127.0.0.1:0\"]\n{extra}");
        for (cert, key) in certs {
            toml.push_str(&format!(
                "[[tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n"
            ));
        }
        toml
    };
    let missing = pki.dir.0.join("missing.crt");
    let err = settings_error(tls(&[(&missing, &a_key)], ""));
    assert!(err.contains("tls.certificates[0].cert"), "{err}");
    assert!(err.contains("missing.crt"), "{err}");

    let garbage = pki.dir.write("garbage.crt", "not PEM");
    let err = settings_error(tls(&[(&garbage, &a_key)], ""));
    assert!(
        err.contains("tls.certificates[0].cert") && err.contains("garbage.crt"),
        "{err}"
    );

    let err = settings_error(tls(&[(&a_cert, &b_key)], ""));
    assert!(err.contains("tls.certificates[0].key"), "{err}");
    assert!(
        err.contains("b.key") && err.contains("does not match"),
        "{err}"
    );

    let err = settings_error(tls(&[(&a_cert, &a_key), (&b_cert, &b_key)], ""));
    assert!(err.contains("tls.certificates[1].names"), "{err}");
    assert!(err.contains("a.test"), "{err}");

    let err = settings_error(tls(&[], ""));
    assert!(err.contains("tls.certificates"), "{err}");

    let err = settings_error(tls(&[(&a_cert, &a_key)], "min_version = \"1.1\"\n"));
    assert!(err.contains("tls.min_version"), "{err}");

    let err = settings_error(format!(
        "{}redirect_https = true\n[pools.web]\nservers = []\n",
        "[[routes]]\npool = \"web\"\n"
    ));
    assert!(err.contains("routes[0].redirect_https"), "{err}");
}

/// The OCSP response the server stapled, if any, asking for one.
fn stapled(addr: SocketAddr, ca: &X509, sni: &str) -> Option<Vec<u8>> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.cert_store_mut().add_cert(ca.clone()).unwrap();
    // Accept whatever is stapled; the test compares the bytes.
    builder.set_status_callback(|_| Ok(true)).unwrap();
    let mut config = builder.build().configure().unwrap().verify_hostname(false);
    config
        .set_status_type(openssl::ssl::StatusType::OCSP)
        .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let stream = config.connect(sni, tcp).expect("handshake");
    stream.ssl().ocsp_status().map(<[u8]>::to_vec)
}

#[test]
fn an_ocsp_response_is_stapled_for_its_certificate_only() {
    use openssl::ocsp::{OcspResponse, OcspResponseStatus};
    let origin = Origin::start("origin");
    let pki = Pki::new();
    // A well-formed response; what it says does not matter to stapling.
    let der = OcspResponse::create(OcspResponseStatus::TRY_LATER, None)
        .unwrap()
        .to_der()
        .unwrap();
    let ocsp = pki.dir.0.join("a.ocsp");
    std::fs::write(&ocsp, &der).unwrap();
    // In the first certificate's table (a.test), not the second's (*.b.test).
    let toml = one_pool(&[origin.addr], &pki.tls_section())
        .set("tls.certificates.0.ocsp_file", ocsp.to_str().unwrap());
    let proxy = Proxy::from_toml(toml);
    assert_eq!(stapled(proxy.tls[0], pki.ca(), "a.test"), Some(der));
    assert_eq!(stapled(proxy.tls[0], pki.ca(), "www.b.test"), None);
}

#[test]
fn a_broken_ocsp_file_is_a_settings_error_naming_it() {
    let pki = Pki::new();
    let junk = pki.dir.write("junk.ocsp", "not DER");
    let dead = DeadServer::new();
    let toml = one_pool(&[dead.addr], &pki.tls_section())
        .set("tls.certificates.0.ocsp_file", junk.to_str().unwrap());
    let dir = TempDir::new();
    let config = dir.write("g.toml", toml.to_string());
    let (code, _, stderr) = run_binary(
        &dir.0,
        &["--check", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("ocsp_file"), "{stderr}");
    assert!(stderr.contains("junk.ocsp"), "{stderr}");
}

/// A TLS client that keeps the last session the server gave it, to offer it on a later
/// connection. Sessions are captured by OpenSSL's new-session callback: TLS 1.2 hands the
/// session over at the end of the handshake, TLS 1.3 only after it, in a ticket read with the
/// first response.
struct SessionClient {
    connector: SslConnector,
    last: Arc<Mutex<Option<SslSession>>>,
}

impl SessionClient {
    /// A client speaking only `version`. With TLS 1.2 it refuses tickets, so a session can be
    /// resumed only from the server's session cache, by its session id.
    fn new(ca: &X509, version: SslVersion) -> Self {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder.cert_store_mut().add_cert(ca.clone()).unwrap();
        builder.set_min_proto_version(Some(version)).unwrap();
        builder.set_max_proto_version(Some(version)).unwrap();
        if version == SslVersion::TLS1_2 {
            builder.set_options(SslOptions::NO_TICKET);
        }
        builder.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        let last: Arc<Mutex<Option<SslSession>>> = Arc::default();
        let kept = last.clone();
        builder.set_new_session_callback(move |_, session| {
            *kept.lock().unwrap() = Some(session);
        });
        Self {
            connector: builder.build(),
            last,
        }
    }

    /// One request on a new connection to `sni`, offering `session`; then a clean close
    /// (close_notify), as a well-behaved client ends. Whether the handshake resumed.
    fn visit(&self, addr: SocketAddr, sni: &str, session: Option<&SslSession>) -> bool {
        let mut config = self.connector.configure().unwrap();
        if let Some(session) = session {
            // SAFETY: OpenSSL requires the session to come from the same context as the
            // connection it is set on. Every session offered here was captured by this
            // client's callback, from a connection made with this same connector.
            unsafe { config.set_session(session).unwrap() };
        }
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut conn = Conn::over(config.connect(sni, tcp).expect("handshake"));
        let response = request(&mut conn, &get_echo(sni));
        assert_eq!(response.status, 200, "{}", response.text());
        let reused = conn.stream().ssl().session_reused();
        let _ = conn.stream().shutdown();
        reused
    }

    /// The session the server gave on the last connection.
    fn session(&self) -> SslSession {
        self.last
            .lock()
            .unwrap()
            .clone()
            .expect("the server gave no session")
    }
}

/// Asserts that a session from one connection resumes on the next, for `sni`, and that a
/// connection that offers none is a full handshake.
fn assert_resumes(proxy: &Proxy, pki: &Pki, version: SslVersion, sni: &str) {
    let tls = proxy.tls[0];
    let client = SessionClient::new(pki.ca(), version);
    assert!(!client.visit(tls, sni, None), "{sni}: nothing to resume");
    let session = client.session();
    assert!(
        client.visit(tls, sni, Some(&session)),
        "{sni}: the session was not resumed"
    );
    assert!(
        !client.visit(tls, sni, None),
        "{sni}: resumed without a session"
    );
    let other = SessionClient::new(pki.ca(), version);
    assert!(
        !other.visit(tls, sni, None),
        "{sni}: another client resumed"
    );
}

#[test]
fn tls_1_2_sessions_resume_from_the_servers_session_cache() {
    let (_origin, pki, proxy) = start("");
    for sni in ["a.test", "www.b.test"] {
        assert_resumes(&proxy, &pki, SslVersion::TLS1_2, sni);
    }
}

#[test]
fn tls_1_3_sessions_resume_from_tickets() {
    let (_origin, pki, proxy) = start("");
    for sni in ["a.test", "www.b.test"] {
        assert_resumes(&proxy, &pki, SslVersion::TLS1_3, sni);
    }
}

#[test]
fn a_proxy_protocol_header_before_the_handshake_names_the_client_of_a_tls_connection() {
    let origin = Origin::start("origin");
    let pki = Pki::new();
    let toml = one_pool(&[origin.addr], &pki.tls_section()).set("server.proxy_protocol", true);
    let proxy = Proxy::from_toml(toml);
    let tls = proxy.tls[0];

    let mut tcp = TcpStream::connect(tls).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n")
        .unwrap();
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.cert_store_mut().add_cert(pki.ca().clone()).unwrap();
    let mut conn = Conn::over(builder.build().connect("a.test", tcp).expect("handshake"));
    let response = request(&mut conn, &get_echo("a.test"));
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = Echo(response.json());
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9")
    );
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    // The same connection keeps the header's client for its next request.
    let again = Echo(request(&mut conn, &get_echo("a.test")).json());
    assert_eq!(
        again.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9")
    );

    // A handshake without the header first is closed: the listener wants the header.
    assert!(connect_tls(tls, pki.ca(), Some("a.test"), b"", None).is_err());
    assert_eq!(origin.hits(), 2);
}
