//! Streaming bodies: the request body on its way up (with its size limit and the client's
//! pace) and the response body on its way down (with its idle timeout and the end-of-request
//! bookkeeping).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_rt::time::Sleep;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::Version;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::oneshot;

use super::phase::Finish;
use super::ProxyError;
use crate::settings::SecuritySettings;
use crate::upstream;

/// Why a request body stopped early.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum BodyFault {
    #[error("request body exceeds the route's max_body_size")]
    TooLarge,
    #[error("{0}")]
    Client(String),
    #[error("the client sent nothing for {0:?} mid-body")]
    Stalled(Duration),
    #[error("the client sent {received} bytes in {elapsed:?}, below min_body_rate")]
    TooSlow { received: u64, elapsed: Duration },
}

impl From<BodyFault> for ProxyError {
    fn from(fault: BodyFault) -> Self {
        match fault {
            BodyFault::TooLarge => Self::BodyTooLarge,
            BodyFault::Client(reason) => Self::BadRequestBody(reason),
            BodyFault::Stalled(_) => Self::BodyStalled,
            BodyFault::TooSlow { .. } => Self::BodyTooSlow,
        }
    }
}

/// What a request body is held to while it is read: the route's size limit and the client's
/// pace (`[security]` client_body_timeout and min_body_rate).
#[derive(Clone)]
pub struct Intake {
    pub limit: Option<u64>,
    /// The longest pause between two reads.
    pub pause: Duration,
    /// Bytes per second averaged over the upload, checked once `pause` has passed; 0 is off.
    pub min_rate: u64,
    /// Where a body refused for slowness is left for the refusal to hold; chunked bodies only.
    unread: Option<Unread>,
}

impl Intake {
    pub fn new(req: &HttpRequest, limit: Option<u64>, security: &SecuritySettings) -> Self {
        let unread = req
            .headers()
            .contains_key(header::TRANSFER_ENCODING)
            .then(|| {
                let unread = Unread::default();
                req.extensions_mut().insert(unread.clone());
                unread
            });
        Self {
            limit,
            pause: security.client_body_timeout.get(),
            min_rate: security.min_body_rate.get(),
            unread,
        }
    }
}

/// A chunked request body refused for slowness, kept until the refusal has been sent.
/// actix-http closes the connection after a response while the request's body is still held,
/// but keeps reading a dropped chunked body to its end, for as long as the client takes.
#[derive(Clone, Default)]
struct Unread(Rc<RefCell<Option<Box<dyn std::any::Any>>>>);

/// The refusal of `req` holding the request body left unread, if a slow client left one, so
/// that its connection is closed once the refusal is sent.
pub fn holding_unread(req: &HttpRequest, response: HttpResponse) -> HttpResponse {
    let Some(Unread(cell)) = req.extensions_mut().remove::<Unread>() else {
        return response;
    };
    let Some(held) = cell.borrow_mut().take() else {
        return response;
    };
    response.map_body(|_, body| BoxBody::new(Holding { body, _held: held }))
}

/// A response body that owns something until it has been sent.
struct Holding {
    body: BoxBody,
    _held: Box<dyn std::any::Any>,
}

impl MessageBody for Holding {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// The request body as sent upstream: counted against the route's limit, timed against the
/// client's pace, with its end signalled so the response timeout starts when the upload is
/// done.
pub struct RequestBody<S> {
    /// Taken when the body ends or fails.
    inner: Option<S>,
    received: u64,
    intake: Intake,
    /// Armed only when the client first makes the body wait: a body that arrives with its
    /// head never needs it.
    pace: Option<PaceTimer>,
    fault: Rc<RefCell<Option<BodyFault>>>,
    sent: Option<oneshot::Sender<()>>,
}

impl<S> RequestBody<S> {
    /// Returns the body, a cell that tells why it failed (if it did), and its end signal.
    #[allow(clippy::type_complexity)]
    pub fn new(
        inner: S,
        intake: Intake,
    ) -> (Self, Rc<RefCell<Option<BodyFault>>>, oneshot::Receiver<()>) {
        let fault = Rc::new(RefCell::new(None));
        let (sent, done) = oneshot::channel();
        let body = Self {
            inner: Some(inner),
            received: 0,
            intake,
            pace: None,
            fault: fault.clone(),
            sent: Some(sent),
        };
        (body, fault, done)
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Bytes, BodyFault>>>
    where
        S: 'static,
    {
        let inner = self.inner.take();
        if matches!(fault, BodyFault::Stalled(_) | BodyFault::TooSlow { .. }) {
            if let (Some(unread), Some(inner)) = (&self.intake.unread, inner) {
                *unread.0.borrow_mut() = Some(Box::new(inner));
            }
        }
        *self.fault.borrow_mut() = Some(fault.clone());
        self.sent.take();
        self.pace = None;
        Poll::Ready(Some(Err(fault)))
    }

    /// Fails the body when the client has paused longer than `pause`, or has sent less than
    /// `min_rate` per second since the first wait, checked each time the timer fires (at
    /// least once a `pause`). The timer is pushed back when it fires, not on every chunk.
    fn poll_pace(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFault>>>
    where
        S: 'static,
    {
        let Intake {
            pause, min_rate, ..
        } = self.intake;
        let pace = self.pace.get_or_insert_with(|| PaceTimer::start(pause));
        loop {
            if pace.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = actix_rt::time::Instant::now();
            let deadline = pace.last_progress + pause;
            if now >= deadline {
                return self.fail(BodyFault::Stalled(pause));
            }
            let elapsed = now - pace.started;
            if min_rate > 0 && elapsed >= pause {
                let due = min_rate as f64 * elapsed.as_secs_f64();
                if (self.received as f64) < due {
                    let received = self.received;
                    return self.fail(BodyFault::TooSlow { received, elapsed });
                }
            }
            pace.sleep.as_mut().reset(deadline);
        }
    }
}

/// The timer behind a request body's pace: one sleep, reset only when it fires.
struct PaceTimer {
    sleep: Pin<Box<Sleep>>,
    started: actix_rt::time::Instant,
    last_progress: actix_rt::time::Instant,
}

impl PaceTimer {
    fn start(pause: Duration) -> Self {
        let now = actix_rt::time::Instant::now();
        Self {
            sleep: Box::pin(actix_rt::time::sleep_until(now + pause)),
            started: now,
            last_progress: now,
        }
    }
}

impl<S, E> Stream for RequestBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + 'static,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, BodyFault>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                if self.intake.limit.is_some_and(|limit| self.received > limit) {
                    return self.fail(BodyFault::TooLarge);
                }
                if let Some(pace) = &mut self.pace {
                    pace.last_progress = actix_rt::time::Instant::now();
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => self.fail(BodyFault::Client(err.to_string())),
            Poll::Ready(None) => {
                self.pace = None;
                self.inner = None;
                if let Some(sent) = self.sent.take() {
                    let _ = sent.send(());
                }
                Poll::Ready(None)
            }
            Poll::Pending => self.poll_pace(cx),
        }
    }
}

/// Why a response body stopped early; the client's connection is then aborted.
#[derive(Debug, thiserror::Error)]
pub enum ResponseFault {
    #[error("the server sent nothing for {0:?} mid-body")]
    Idle(Duration),
    #[error("the server broke off the response: {0}")]
    Broken(String),
}

/// How the server delimited a response body, which decides whether the server closing the
/// connection may end it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// By `Transfer-Encoding: chunked`: it ends with the last chunk.
    Chunked,
    /// By `Content-Length`: it ends after that many bytes.
    Length,
    /// By neither: it ends when the server closes the connection.
    Close,
}

impl Framing {
    /// The framing awc reads a response body with, from the response's version and headers
    /// (chunked wins over `Content-Length`, and HTTP/1.0 has no chunked).
    pub fn of(version: Version, headers: &HeaderMap) -> Self {
        let chunked = version == Version::HTTP_11
            && headers
                .get(header::TRANSFER_ENCODING)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.trim().eq_ignore_ascii_case("chunked"));
        if chunked {
            Self::Chunked
        } else if headers.contains_key(header::CONTENT_LENGTH) {
            Self::Length
        } else {
            Self::Close
        }
    }

    fn ends_before_close(self) -> bool {
        self != Self::Close
    }
}

/// The response body streamed to the client.
pub struct ResponseBody<S> {
    inner: S,
    framing: Framing,
    idle_timeout: Duration,
    /// Armed only when the server first makes the body wait: most small bodies never do.
    idle: Option<IdleTimer>,
    sent: u64,
    finish: Finish,
}

impl<S> ResponseBody<S> {
    /// A body that may end when its stream does, whatever closed the connection.
    pub fn new(inner: S, idle_timeout: Duration, finish: Finish) -> Self {
        Self {
            inner,
            framing: Framing::Close,
            idle_timeout,
            idle: None,
            sent: 0,
            finish,
        }
    }

    /// Sets how the server delimited the body. When that is chunked or `Content-Length`, the
    /// body's stream ending on the server closing the connection is a fault: awc reports it
    /// as the body's end, but the body was cut short.
    pub fn framed_by(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    fn fail(&mut self, fault: ResponseFault) -> Poll<Option<Result<Bytes, ResponseFault>>> {
        if let Some(claim) = &self.finish.claim {
            claim.failed();
            log::warn!("upstream {}: {fault}", claim.server().address);
        }
        Poll::Ready(Some(Err(fault)))
    }
}

impl<S, E> Stream for ResponseBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, ResponseFault>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let framing = self.framing;
        let (poll, closed) = if framing.ends_before_close() {
            // An end-of-file seen during this poll is this body's connection's: a body poll
            // reads that one connection only (awc checks idle pooled ones when a request takes
            // one, not here), and the worker polls nothing else on this thread meanwhile.
            upstream::watching_eof(|| Pin::new(&mut self.inner).poll_next(cx))
        } else {
            (Pin::new(&mut self.inner).poll_next(cx), false)
        };
        match poll {
            Poll::Ready(Some(Ok(chunk))) => {
                self.sent += chunk.len() as u64;
                if let Some(idle) = &mut self.idle {
                    idle.last_progress = actix_rt::time::Instant::now();
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => self.fail(ResponseFault::Broken(err.to_string())),
            Poll::Ready(None) if closed => self.fail(ResponseFault::Broken(truncated(framing))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => self.poll_idle(cx),
        }
    }
}

impl<S> ResponseBody<S> {
    /// Fails the body once the server has sent nothing for `idle_timeout`. The timer is
    /// pushed back only when it fires, not on every chunk.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ResponseFault>>> {
        let idle_timeout = self.idle_timeout;
        // Chunks before the first wait were not timed; the pause starts now.
        let idle = self
            .idle
            .get_or_insert_with(|| IdleTimer::start(idle_timeout));
        loop {
            let deadline = idle.last_progress + idle_timeout;
            if idle.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if actix_rt::time::Instant::now() >= deadline {
                return self.fail(ResponseFault::Idle(idle_timeout));
            }
            idle.sleep.as_mut().reset(deadline);
        }
    }
}

/// The timer behind a response body's idle timeout.
struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    last_progress: actix_rt::time::Instant,
}

impl IdleTimer {
    fn start(idle_timeout: Duration) -> Self {
        let now = actix_rt::time::Instant::now();
        Self {
            sleep: Box::pin(actix_rt::time::sleep_until(now + idle_timeout)),
            last_progress: now,
        }
    }
}

fn truncated(framing: Framing) -> String {
    match framing {
        Framing::Chunked => "connection closed before the last chunk".into(),
        _ => "connection closed before Content-Length bytes".into(),
    }
}

impl<S> Drop for ResponseBody<S> {
    fn drop(&mut self) {
        let sent = self.sent;
        self.finish.finish(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::{AccessLog, AccessRecord};
    use crate::settings::AccessLogFormat;
    use futures_util::StreamExt;

    fn finish() -> Finish {
        Finish {
            claim: None,
            record: AccessRecord::default(),
            log: AccessLog::new(AccessLogFormat::Off),
            started: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_static(name),
                header::HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn framing_follows_what_awc_reads_the_body_by() {
        let of =
            |version, pairs: &[(&'static str, &'static str)]| Framing::of(version, &headers(pairs));
        let chunked = [("transfer-encoding", "Chunked ")];
        let both = [("content-length", "5"), ("transfer-encoding", "chunked")];
        let length = [("content-length", "5")];
        assert_eq!(of(Version::HTTP_11, &chunked), Framing::Chunked);
        assert_eq!(of(Version::HTTP_11, &both), Framing::Chunked);
        assert_eq!(of(Version::HTTP_11, &length), Framing::Length);
        assert_eq!(of(Version::HTTP_10, &both), Framing::Length);
        assert_eq!(of(Version::HTTP_10, &chunked), Framing::Close);
        assert_eq!(
            of(Version::HTTP_11, &[("transfer-encoding", "identity")]),
            Framing::Close
        );
        assert_eq!(of(Version::HTTP_11, &[]), Framing::Close);
    }

    /// A body stream that yields its chunks, then ends; `eof_at_end` makes its last poll
    /// read end-of-file, as awc's does when the server closed the connection.
    fn upstream(
        chunks: &'static [&'static str],
        eof_at_end: bool,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let mut chunks = chunks.iter();
        futures_util::stream::poll_fn(move |_| match chunks.next() {
            Some(chunk) => Poll::Ready(Some(Ok(Bytes::from_static(chunk.as_bytes())))),
            None => {
                if eof_at_end {
                    crate::upstream::note_eof();
                }
                Poll::Ready(None)
            }
        })
    }

    /// The body's items up to its end or first error, where actix-http stops polling it.
    async fn collect(
        mut body: ResponseBody<impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin>,
    ) -> Vec<Result<Bytes, String>> {
        let mut items = Vec::new();
        while let Some(item) = body.next().await {
            let failed = item.is_err();
            items.push(item.map_err(|err| err.to_string()));
            if failed {
                break;
            }
        }
        items
    }

    #[actix_rt::test]
    async fn a_framed_body_cut_off_by_the_server_closing_is_broken() {
        for framing in [Framing::Chunked, Framing::Length] {
            let body =
                ResponseBody::new(upstream(&["hello"], true), Duration::from_secs(5), finish())
                    .framed_by(framing);
            let items = collect(body).await;
            assert_eq!(items.len(), 2, "{items:?}");
            assert_eq!(items[0], Ok(Bytes::from_static(b"hello")));
            assert!(
                items[1]
                    .as_ref()
                    .is_err_and(|err| err.contains("connection closed")),
                "{items:?}"
            );
        }
    }

    #[actix_rt::test]
    async fn a_framed_body_reaching_its_end_is_complete() {
        for framing in [Framing::Chunked, Framing::Length, Framing::Close] {
            let body = ResponseBody::new(
                upstream(&["hel", "lo"], false),
                Duration::from_secs(5),
                finish(),
            )
            .framed_by(framing);
            let items = collect(body).await;
            assert_eq!(
                items,
                [
                    Ok(Bytes::from_static(b"hel")),
                    Ok(Bytes::from_static(b"lo"))
                ]
            );
        }
    }

    #[actix_rt::test]
    async fn a_body_delimited_by_close_ends_at_end_of_file() {
        let body = ResponseBody::new(upstream(&["hello"], true), Duration::from_secs(5), finish());
        assert_eq!(collect(body).await, [Ok(Bytes::from_static(b"hello"))]);
    }

    #[actix_rt::test]
    async fn an_end_of_file_read_outside_the_body_poll_is_not_the_body_s() {
        let body = ResponseBody::new(upstream(&[], false), Duration::from_secs(5), finish())
            .framed_by(Framing::Chunked);
        crate::upstream::note_eof();
        assert_eq!(collect(body).await, []);
    }

    fn intake(pause_secs: u64, min_rate: u64) -> Intake {
        Intake {
            limit: None,
            pause: Duration::from_secs(pause_secs),
            min_rate,
            unread: None,
        }
    }

    /// A client stream sending `chunk` bytes every `every`, `count` times, then ending.
    fn trickle(
        chunk: usize,
        every: Duration,
        count: usize,
    ) -> Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>>>> {
        Box::pin(
            futures_util::stream::iter(0..count).then(move |_| async move {
                actix_rt::time::sleep(every).await;
                Ok(Bytes::from(vec![b'x'; chunk]))
            }),
        )
    }

    /// Reads a request body to its end; the fault that stopped it, if one did.
    async fn drain<S>(mut body: RequestBody<S>) -> Result<u64, BodyFault>
    where
        RequestBody<S>: Stream<Item = Result<Bytes, BodyFault>> + Unpin,
    {
        let mut total = 0;
        // A deadline in paused time, so a timer that never fires fails instead of hanging.
        let reading = async {
            while let Some(chunk) = body.next().await {
                total += chunk?.len() as u64;
            }
            Ok(total)
        };
        tokio::time::timeout(Duration::from_secs(3600), reading)
            .await
            .expect("the body ends or fails")
    }

    #[actix_rt::test]
    async fn a_client_pausing_longer_than_client_body_timeout_fails_the_body() {
        tokio::time::pause();
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"a"))]);
        let stalled = first.chain(futures_util::stream::pending());
        let (body, fault, _) = RequestBody::new(stalled, intake(60, 0));
        assert_eq!(
            drain(body).await,
            Err(BodyFault::Stalled(Duration::from_secs(60)))
        );
        assert_eq!(
            *fault.borrow(),
            Some(BodyFault::Stalled(Duration::from_secs(60)))
        );
    }

    #[actix_rt::test]
    async fn a_slow_but_steady_client_passes_without_a_minimum_rate() {
        tokio::time::pause();
        let steady = trickle(1, Duration::from_secs(50), 10);
        let (body, _, _) = RequestBody::new(steady, intake(60, 0));
        assert_eq!(drain(body).await, Ok(10));
    }

    #[actix_rt::test]
    async fn a_client_below_min_body_rate_fails_after_the_first_timeout() {
        tokio::time::pause();
        let started = actix_rt::time::Instant::now();
        // 10 bytes a second against a minimum of 100.
        let slow = trickle(10, Duration::from_secs(1), 1000);
        let (body, _, _) = RequestBody::new(slow, intake(5, 100));
        assert!(matches!(
            drain(body).await,
            Err(BodyFault::TooSlow { received, .. }) if received < 100
        ));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(7),
            "{took:?}"
        );
    }

    #[actix_rt::test]
    async fn a_client_above_min_body_rate_passes() {
        tokio::time::pause();
        let fast_enough = trickle(200, Duration::from_secs(1), 30);
        let (body, _, _) = RequestBody::new(fast_enough, intake(5, 100));
        assert_eq!(drain(body).await, Ok(6000));
    }

    #[actix_rt::test]
    async fn a_server_pausing_longer_than_the_idle_timeout_fails_the_body() {
        tokio::time::pause();
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"a"))]);
        let stalled = first.chain(futures_util::stream::pending());
        let mut body = ResponseBody::new(stalled, Duration::from_secs(30), finish());
        assert!(body.next().await.unwrap().is_ok());
        // A deadline in paused time, so a timer that never fires fails instead of hanging.
        let next = tokio::time::timeout(Duration::from_secs(3600), body.next()).await;
        assert!(matches!(next, Ok(Some(Err(ResponseFault::Idle(_))))));
    }

    #[actix_rt::test]
    async fn a_slow_but_steady_server_is_never_timed_out() {
        tokio::time::pause();
        let steady = futures_util::stream::iter(0..5).then(|_| async {
            actix_rt::time::sleep(Duration::from_secs(20)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"chunk"))
        });
        let mut body = ResponseBody::new(Box::pin(steady), Duration::from_secs(30), finish());
        for _ in 0..5 {
            assert!(body.next().await.unwrap().is_ok());
        }
        assert!(body.next().await.is_none());
    }
}
