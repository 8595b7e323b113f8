//! An HTTP/2 client (h2 over OpenSSL with ALPN) for gatehouse's TLS listeners.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::SendRequest;
use openssl::ssl::{SslConnector, SslMethod};
use tokio::task::JoinHandle;

use super::{Pki, DEADLINE};

/// A runtime for one test's HTTP/2 exchanges.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP/2 client connection over TLS (ALPN h2, trusting the test CA), and the task that
/// drives it: it ends when the connection does.
pub async fn connect(
    addr: SocketAddr,
    pki: &Pki,
) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    connect_with(addr, pki, h2::client::Builder::new()).await
}

/// [`connect`] with the client's own HTTP/2 settings.
pub async fn connect_with(
    addr: SocketAddr,
    pki: &Pki,
    client: h2::client::Builder,
) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.cert_store_mut().add_cert(pki.ca().clone()).unwrap();
    builder.set_alpn_protos(b"\x02h2\x08http/1.1").unwrap();
    let ssl = builder
        .build()
        .configure()
        .unwrap()
        .into_ssl("a.test")
        .unwrap();
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut tls).connect().await.unwrap();
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = client.handshake(tls).await.unwrap();
    (client, tokio::spawn(connection))
}

/// A response read whole: status and body, or the stream error that cut it.
pub struct Answer {
    pub status: u16,
    pub body: Result<Vec<u8>, h2::Error>,
}

/// Sends `request` with `body` (none when empty) and reads the whole answer.
pub async fn send(
    client: &mut SendRequest<Bytes>,
    request: http::Request<()>,
    body: Vec<u8>,
) -> Result<Answer, h2::Error> {
    let mut client = client.clone().ready().await?;
    let (response, mut stream) = client.send_request(request, body.is_empty())?;
    if !body.is_empty() {
        send_all(&mut stream, Bytes::from(body)).await?;
    }
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("a response in time")?;
    let status = response.status().as_u16();
    let mut received = response.into_body();
    let mut bytes = Vec::new();
    let body = loop {
        match tokio::time::timeout(DEADLINE, received.data()).await {
            Err(_) => panic!("the body did not end in time"),
            Ok(None) => break Ok(bytes),
            Ok(Some(Err(err))) => break Err(err),
            Ok(Some(Ok(chunk))) => {
                let _ = received.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
        }
    };
    Ok(Answer { status, body })
}

/// Sends `data` and ends the stream, as the server's window allows.
async fn send_all(stream: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let Some(granted) = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await else {
            // The server ended the stream early (it answered without the rest).
            return Ok(());
        };
        let granted = granted?;
        let piece = data.split_to(granted.min(data.len()));
        stream.send_data(piece, data.is_empty())?;
    }
    Ok(())
}

/// A GET for `path` on `a.test`.
pub fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("https://a.test{path}"))
        .body(())
        .unwrap()
}
