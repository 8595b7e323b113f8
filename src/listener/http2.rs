//! HTTP/2 on TLS listeners: gatehouse's own connection loop over the h2 crate, so the
//! limits of `[tls.http2]` hold. actix-http serves HTTP/2 with h2's defaults, which cap
//! neither the streams open at once nor the size of a header list.
//!
//! Each stream becomes an actix-http request for the same application HTTP/1.1 connections
//! use, answered on a task of its own. A stream the client resets cancels its request, and
//! with it the request to the server: a rapid-reset flood cannot leave work running behind
//! it. After `max_requests` streams the connection is sent `GOAWAY` and any later stream is
//! refused unprocessed, so one connection cannot start more than `max_requests` requests.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::header::{self, HeaderName, HeaderValue};
use actix_http::{HttpMessage as _, Method, Payload, Request, Response, StatusCode};
use actix_service::Service;
use bytes::Bytes;
use futures_util::future::{select, Either};
use futures_util::Stream;
use h2::server::{Builder, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant, Sleep};

use crate::conn::{within, OverTls, UndeclaredBody};
use crate::settings::{Http2Settings, ServerSettings};

/// Flow-control windows: what actix-http uses (1 MiB per stream, 2 MiB per connection), so a
/// large upload is not held to h2's 64 KiB default.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// What each HTTP/2 connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub max_requests: u32,
    /// With no stream open for this long, the connection is closed (`server.keep_alive`).
    pub keep_alive: Duration,
    /// The client's preface and SETTINGS must arrive within this (`server.client_header_timeout`);
    /// zero waits without limit.
    pub preface_timeout: Duration,
    /// A stream whose client grants no flow-control window for this long is reset
    /// (`server.send_timeout`); zero waits without limit.
    pub send_timeout: Duration,
}

impl Http2Limits {
    /// The limits of `[tls.http2]` with `server`'s timeouts.
    pub fn new(settings: &Http2Settings, server: &ServerSettings) -> Self {
        Self {
            max_concurrent_streams: settings.max_concurrent_streams,
            // Validated to at most 16 MiB.
            max_header_list_size: u32::try_from(settings.max_header_list_size.get())
                .unwrap_or(u32::MAX),
            max_requests: settings.max_requests,
            keep_alive: server.keep_alive.get(),
            preface_timeout: server.client_header_timeout.get(),
            send_timeout: server.send_timeout.get(),
        }
    }

    /// How long a connection may wait for its first stream: `keep_alive`, or, when that is
    /// zero (close once no stream is open), `client_header_timeout`.
    fn first_wait(&self) -> Duration {
        match self.keep_alive.is_zero() {
            true => self.preface_timeout,
            false => self.keep_alive,
        }
    }

    fn builder(&self) -> Builder {
        let mut builder = Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size);
        builder
    }
}

/// Serves one HTTP/2 connection until the client closes it, it idles past `keep_alive`, it
/// has opened `max_requests` streams and they are answered, or `shutdown` resolves and its
/// open streams are answered.
pub async fn serve<T, S>(
    io: T,
    app: Rc<S>,
    peer: SocketAddr,
    limits: Http2Limits,
    shutdown: impl Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request> + 'static,
    S::Response: Into<Response<BoxBody>>,
    S::Error: Into<Response<BoxBody>>,
{
    let activity = Rc::new(Activity::new());
    let io = Gathered::new(io, activity.clone());
    let handshake = limits.builder().handshake::<_, Bytes>(io);
    let connection = within(limits.preface_timeout, "preface", handshake).await;
    let mut connection = match connection {
        Ok(connection) => connection,
        Err(err) => {
            log::debug!("HTTP/2 connection from {peer} failed: {err}");
            return;
        }
    };
    let mut idle = pin!(sleep(limits.keep_alive));
    let mut shutdown = pin!(shutdown);
    let mut accepted: u32 = 0;
    let mut closing = false;
    poll_fn(|cx| loop {
        if !closing
            && (shutdown.as_mut().poll(cx).is_ready()
                || activity.idled(&mut idle, cx, limits.keep_alive, limits.first_wait()))
        {
            connection.graceful_shutdown();
            activity.closing();
            closing = true;
        }
        // h2 closes a connection told to go away once its streams are done and the client
        // has acknowledged the GOAWAY's PING; a client that never does is dropped. Checked
        // in the same turn, so the timer (or the wake at the last stream's end) is armed.
        if closing && activity.idled(&mut idle, cx, CLOSE_GRACE, CLOSE_GRACE) {
            log::debug!("HTTP/2 connection from {peer} dropped: GOAWAY not acknowledged");
            return Poll::Ready(());
        }
        let was_closing = closing;
        loop {
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((_, mut respond)))) if accepted >= limits.max_requests => {
                    // Sent before the client had our GOAWAY: refused unprocessed, which
                    // tells it to retry on a new connection. No request is started.
                    respond.send_reset(Reason::REFUSED_STREAM);
                }
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let open = activity.open();
                    let stream = answer(app.clone(), request, respond, peer, limits, open);
                    tokio::task::spawn_local(stream);
                    accepted = accepted.saturating_add(1);
                    if accepted >= limits.max_requests && !closing {
                        connection.graceful_shutdown();
                        activity.closing();
                        closing = true;
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    log::debug!("HTTP/2 connection from {peer} ended: {err}");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        // A close started while accepting arms its timer in one more turn.
        if closing == was_closing {
            return Poll::Pending;
        }
    })
    .await;
}

/// How long a connection sent `GOAWAY` may take, once its streams are answered, to
/// acknowledge it before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The largest plaintext of one TLS record.
const RECORD: usize = 16 * 1024;

/// The connection's stream, with vectored writes gathered into one write of up to a TLS
/// record. h2 writes a frame's head and its payload as separate slices, and a TLS stream
/// writes only the first slice of a vectored write: unhelped, each response costs two TLS
/// records and two system calls where one does.
/// It also notes, in [`Activity`], when bytes last went out.
struct Gathered<T> {
    io: T,
    scratch: Vec<u8>,
    activity: Rc<Activity>,
}

impl<T> Gathered<T> {
    fn new(io: T, activity: Rc<Activity>) -> Self {
        // Grown on the first gathered write, not before: idle connections hold no buffer.
        Self {
            io,
            scratch: Vec::new(),
            activity,
        }
    }

    fn wrote(&self, outcome: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(1..)) = outcome {
            self.activity.wrote.set(Instant::now());
        }
        outcome
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gathered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gathered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(outcome)
    }

    /// Writes as much of `bufs` as fits one record, in one write. A write that must wait is
    /// called again with the same slices, so it is retried with the same bytes, as OpenSSL
    /// requires.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.scratch.clear();
        for buf in bufs {
            let room = RECORD - this.scratch.len();
            this.scratch.extend_from_slice(&buf[..buf.len().min(room)]);
            if this.scratch.len() == RECORD {
                break;
            }
        }
        let outcome = Pin::new(&mut this.io).poll_write(cx, &this.scratch);
        this.wrote(outcome)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connection's open streams and since when it has had none: what the idle timer needs.
struct Activity {
    open: Cell<usize>,
    /// The connection's start, the end of its last stream, or the start of its close.
    idle_since: Cell<Instant>,
    /// Whether a stream has been opened: `keep_alive` applies from then on.
    served: Cell<bool>,
    /// The connection task, woken when the last open stream ends.
    waker: RefCell<Option<Waker>>,
    /// When bytes last went out to the client.
    wrote: Cell<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            served: Cell::new(false),
            waker: RefCell::new(None),
            wrote: Cell::new(Instant::now()),
        }
    }

    /// Counts a stream as open until the returned guard is dropped.
    fn open(self: &Rc<Self>) -> OpenStream {
        self.open.set(self.open.get() + 1);
        self.served.set(true);
        OpenStream(self.clone())
    }

    /// The connection was told to go away: the grace period starts now if no stream is open.
    fn closing(&self) {
        if self.open.get() == 0 {
            self.idle_since.set(Instant::now());
        }
    }

    /// Whether the connection has had no open stream for its limit: `first_wait` until a
    /// stream has been opened (zero: no limit), `keep_alive` after. While a stream is open
    /// the timer is left alone and the task is woken when the last one ends; otherwise the
    /// timer is set for the moment the limit passes.
    fn idled(
        &self,
        timer: &mut Pin<&mut Sleep>,
        cx: &mut Context<'_>,
        keep_alive: Duration,
        first_wait: Duration,
    ) -> bool {
        if self.open.get() > 0 {
            let mut waker = self.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            return false;
        }
        let limit = match self.served.get() {
            true => keep_alive,
            false if first_wait.is_zero() => return false,
            false => first_wait,
        };
        let deadline = self.idle_since.get() + limit;
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// One open stream, for [`Activity`].
struct OpenStream(Rc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.open.set(activity.open.get() - 1);
        if activity.open.get() == 0 {
            activity.idle_since.set(Instant::now());
            if let Some(waker) = activity.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// Answers one stream: the request through the application, the response back, both
/// abandoned the moment the client resets the stream.
async fn answer<S>(
    app: Rc<S>,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    limits: Http2Limits,
    open: OpenStream,
) where
    S: Service<Request> + 'static,
    S::Response: Into<Response<BoxBody>>,
    S::Error: Into<Response<BoxBody>>,
{
    let head_only = request.method() == Method::HEAD;
    let call = app.call(into_request(request, peer));
    let reset = poll_fn(|cx| respond.poll_reset(cx));
    let response: Response<BoxBody> = match select(pin!(call), pin!(reset)).await {
        Either::Left((Ok(response), _)) => response.into(),
        Either::Left((Err(err), _)) => err.into(),
        // Dropping the call cancels the request to the server.
        Either::Right(_) => return,
    };
    let (response, body) = response.into_parts();
    let size = body.size();
    let no_body = head_only
        || matches!(size, BodySize::None | BodySize::Sized(0))
        || response.status() == StatusCode::NOT_MODIFIED;
    let head = response_head(&response, size, head_only);
    let mut stream = match respond.send_response(head, no_body) {
        Ok(stream) => stream,
        Err(err) => {
            log::debug!("HTTP/2 response head not sent: {err}");
            return;
        }
    };
    if !no_body {
        let outgoing = Outgoing {
            stream: &mut stream,
            send_timeout: limits.send_timeout,
            activity: &open.0,
        };
        outgoing.send_body(body, size).await;
    }
}

/// The actix-http request for an h2 request: as actix-http builds it, with the peer address,
/// the mark that it came over TLS (h2 is offered on TLS listeners only) and, for a body
/// without `content-length`, the mark that one follows.
fn into_request(request: http::Request<RecvStream>, peer: SocketAddr) -> Request {
    let (mut parts, body) = request.into_parts();
    join_cookies(&mut parts.headers);
    // A GET or HEAD whose client ended the stream with an empty DATA frame rather than with
    // the HEADERS: it has no body, and sending one chunked would make servers refuse it.
    let bodiless = parts.method == Method::GET || parts.method == Method::HEAD;
    let undeclared =
        !body.is_end_stream() && !bodiless && !parts.headers.contains_key(header::CONTENT_LENGTH);
    let payload: Payload = match body.is_end_stream() {
        true => Payload::None,
        false => Payload::Stream {
            payload: Box::pin(RequestBody(body)),
        },
    };
    let mut request = Request::with_payload(payload);
    if undeclared {
        request.extensions_mut().insert(UndeclaredBody);
    }
    let head = request.head_mut();
    head.uri = parts.uri;
    head.method = parts.method;
    head.version = parts.version;
    head.headers = parts.headers.into();
    head.peer_addr = Some(peer);
    request.extensions_mut().insert(OverTls);
    request
}

/// Joins the `cookie` fields HTTP/2 clients send one per cookie (for compression) into the
/// one field HTTP/1.1 servers read, with `"; "` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// A request body, giving back flow-control window as the application takes it.
struct RequestBody(RecvStream);

impl Stream for RequestBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let body = &mut self.0;
        Poll::Ready(match std::task::ready!(body.poll_data(cx)) {
            Some(Ok(chunk)) => Some(
                body.flow_control()
                    .release_capacity(chunk.len())
                    .map(|()| chunk)
                    .map_err(PayloadError::from),
            ),
            Some(Err(err)) => Some(Err(PayloadError::from(err))),
            None => None,
        })
    }
}

/// The h2 response head: the status, the headers less those HTTP/2 forbids (RFC 9113
/// 8.2.2), `content-length` from a body of known size, and `date` when the response has none.
fn response_head(response: &Response<()>, size: BodySize, head_only: bool) -> http::Response<()> {
    let mut head = http::Response::new(());
    let status = response.status();
    *head.status_mut() = status;
    *head.version_mut() = http::Version::HTTP_2;
    let headers = head.headers_mut();
    // The length: a body of known size says it. A HEAD answer says what a GET would have
    // had: the server's header, else the size the body was given. A streamed body keeps the
    // server's header; 204 has none and 304 keeps what the server said.
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let declared = head_only && response.headers().contains_key(header::CONTENT_LENGTH);
    let length = match size {
        BodySize::Sized(len) if !bodiless && !declared => Some(len),
        _ => None,
    };
    if let Some(len) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    for (name, value) in response.headers() {
        let replaced = name == header::CONTENT_LENGTH
            && (length.is_some() || status == StatusCode::NO_CONTENT);
        if connection_specific(name) || replaced {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, now());
    }
    head
}

/// Headers that belong to one HTTP/1.1 connection, which HTTP/2 forbids.
fn connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// The current `Date` value, formatted once a second per worker.
fn now() -> HeaderValue {
    thread_local! {
        static DATE: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let time = SystemTime::now();
    let second = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|date| match date {
        Some((at, value)) if *at == second => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&httpdate::fmt_http_date(time))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *date = Some((second, value.clone()));
            value
        }
    })
}

/// A response on its way to the client.
struct Outgoing<'a> {
    stream: &'a mut SendStream<Bytes>,
    /// `server.send_timeout`, for waits on the client's flow-control window.
    send_timeout: Duration,
    activity: &'a Activity,
}

impl Outgoing<'_> {
    /// Sends the body as the client's window allows. A body that fails part way (the server
    /// broke off), or does not match its length, resets the stream, so the client never
    /// takes a cut body for a whole one; a client reset stops reading it. The body is always
    /// read to its end: the request to the server is complete only then, and its connection
    /// goes back to the pool.
    async fn send_body(mut self, body: BoxBody, size: BodySize) {
        let mut body = pin!(body);
        let mut left = match size {
            BodySize::Sized(len) => Some(len),
            _ => None,
        };
        // The last chunk of a body of known size, held until the body's end (due at once)
        // so that it ends the stream itself, saving a frame.
        let mut last: Option<Bytes> = None;
        loop {
            let stream = &mut *self.stream;
            let next = poll_fn(|cx| {
                if stream.poll_reset(cx).is_ready() {
                    return Poll::Ready(None);
                }
                body.as_mut().poll_next(cx).map(Some)
            })
            .await;
            let chunk = match next {
                // Reset by the client.
                None => return,
                Some(None) => break,
                Some(Some(Ok(chunk))) if chunk.is_empty() => continue,
                Some(Some(Ok(chunk))) => chunk,
                Some(Some(Err(err))) => return self.broken(&err.to_string()),
            };
            let longer = left.is_some_and(|left| chunk.len() as u64 > left);
            if last.is_some() || longer {
                return self.broken("longer than its length");
            }
            if let Some(left) = left.as_mut() {
                *left -= chunk.len() as u64;
            }
            if left == Some(0) {
                last = Some(chunk);
            } else if self.send(chunk, false).await.is_err() {
                return;
            }
        }
        if left.is_some_and(|left| left > 0) {
            return self.broken("shorter than its length");
        }
        let _ = self.send(last.unwrap_or_default(), true).await;
    }

    /// Resets the stream for a body that cannot be sent whole.
    fn broken(self, why: &str) {
        log::debug!("HTTP/2 response body broken: {why}");
        self.stream.send_reset(Reason::INTERNAL_ERROR);
    }

    /// Sends `chunk` in pieces as flow control grants window for them. A stream that gets
    /// no window for `send_timeout` while the connection writes nothing to the client either
    /// is reset: the client could otherwise hold the response, and the server's connection
    /// behind it, without reading. Waiting behind the connection's other streams is not
    /// stalling.
    async fn send(&mut self, mut chunk: Bytes, end: bool) -> Result<(), h2::Error> {
        if chunk.is_empty() {
            return self.stream.send_data(chunk, end);
        }
        while !chunk.is_empty() {
            self.stream.reserve_capacity(chunk.len());
            let granted = loop {
                let stream = &mut *self.stream;
                let window = async {
                    poll_fn(|cx| stream.poll_capacity(cx))
                        .await
                        // None: the stream is gone (reset or closed).
                        .unwrap_or_else(|| Err(h2::Error::from(Reason::CANCEL)))
                };
                if self.send_timeout.is_zero() {
                    break window.await?;
                }
                match tokio::time::timeout(self.send_timeout, window).await {
                    Ok(granted) => break granted?,
                    Err(_) if self.activity.wrote.get().elapsed() < self.send_timeout => {}
                    Err(_) => {
                        log::debug!("HTTP/2 stream reset: no window for {:?}", self.send_timeout);
                        self.stream.send_reset(Reason::CANCEL);
                        return Err(h2::Error::from(Reason::CANCEL));
                    }
                }
            };
            let piece = chunk.split_to(granted.min(chunk.len()));
            self.stream.send_data(piece, end && chunk.is_empty())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    fn head(response: Response<()>, size: BodySize, head_only: bool) -> http::Response<()> {
        response_head(&response, size, head_only)
    }

    #[test]
    fn connection_headers_are_dropped_and_length_follows_the_body() {
        let mut response = Response::with_body(StatusCode::OK, ());
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            HeaderName::from_static("keep-alive"),
            HeaderValue::from_static("5"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        let sent = head(response, BodySize::Sized(12), false);
        assert_eq!(sent.headers()[header::CONTENT_LENGTH], "12");
        for gone in ["connection", "transfer-encoding", "keep-alive"] {
            assert!(!sent.headers().contains_key(gone), "{gone}");
        }
        assert_eq!(sent.headers().get_all(header::SET_COOKIE).iter().count(), 2);
        assert!(sent.headers().contains_key(header::DATE));
    }

    #[test]
    fn streamed_and_head_answers_keep_the_servers_length() {
        let mut response = Response::with_body(StatusCode::OK, ());
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1234"));
        let streamed = head(response, BodySize::Stream, false);
        assert_eq!(streamed.headers()[header::CONTENT_LENGTH], "1234");
        let mut response = Response::with_body(StatusCode::OK, ());
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1234"));
        let to_head = head(response, BodySize::Sized(0), true);
        assert_eq!(to_head.headers()[header::CONTENT_LENGTH], "1234");
    }

    /// Polls [`Activity::idled`] once, with `keep_alive` as the wait for the first stream too.
    async fn idled(timer: &mut Pin<&mut Sleep>, activity: &Activity, keep_alive: Duration) -> bool {
        poll_fn(|cx| Poll::Ready(activity.idled(timer, cx, keep_alive, keep_alive))).await
    }

    #[test]
    fn a_head_answer_says_the_length_a_get_would_have() {
        let response = Response::with_body(StatusCode::OK, ());
        let to_head = head(response, BodySize::Sized(1234), true);
        assert_eq!(to_head.headers()[header::CONTENT_LENGTH], "1234");
        let mut no_content = Response::with_body(StatusCode::NO_CONTENT, ());
        no_content
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let sent = head(no_content, BodySize::Sized(0), false);
        assert!(!sent.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn split_cookies_are_joined_for_http1() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        let mut one = http::HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idles_only_with_no_stream_open() {
        let keep_alive = Duration::from_secs(10);
        let activity = Rc::new(Activity::new());
        let mut timer = pin!(sleep(keep_alive));
        let open = activity.open();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            !idled(&mut timer, &activity, keep_alive).await,
            "a stream is open"
        );
        drop(open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !idled(&mut timer, &activity, keep_alive).await,
            "ended 5 s ago"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            idled(&mut timer, &activity, keep_alive).await,
            "ended 11 s ago"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_last_stream_wakes_the_connection() {
        let activity = Rc::new(Activity::new());
        let mut timer = pin!(sleep(Duration::ZERO));
        let open = activity.open();
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        // keep_alive zero: no busy timer while the stream is open, a wake when it ends.
        assert!(!activity.idled(&mut timer, &mut cx, Duration::ZERO, Duration::ZERO));
        assert!(!woken.0.load(Ordering::SeqCst));
        drop(open);
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(activity.idled(&mut timer, &mut cx, Duration::ZERO, Duration::ZERO));
    }

    #[derive(Default)]
    struct Woken(AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
