//! Streaming bodies: the request body on its way up (with its size limit) and the response
//! body on its way down (with its idle timeout and the end-of-request bookkeeping).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_rt::time::{sleep, Sleep};
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::oneshot;

use crate::access_log::{AccessLog, AccessRecord};
use crate::pool::InFlight;

/// Why a request body stopped early.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum BodyFault {
    #[error("request body exceeds the route's max_body_size")]
    TooLarge,
    #[error("{0}")]
    Client(String),
}

/// The request body as sent upstream: counted against the route's limit, with its end
/// signalled so the response timeout starts when the upload is done.
pub struct RequestBody<S> {
    inner: S,
    received: u64,
    limit: Option<u64>,
    fault: Rc<RefCell<Option<BodyFault>>>,
    sent: Option<oneshot::Sender<()>>,
}

impl<S> RequestBody<S> {
    /// Returns the body, a cell that tells why it failed (if it did), and its end signal.
    #[allow(clippy::type_complexity)]
    pub fn new(
        inner: S,
        limit: Option<u64>,
    ) -> (Self, Rc<RefCell<Option<BodyFault>>>, oneshot::Receiver<()>) {
        let fault = Rc::new(RefCell::new(None));
        let (sent, done) = oneshot::channel();
        let body = Self {
            inner,
            received: 0,
            limit,
            fault: fault.clone(),
            sent: Some(sent),
        };
        (body, fault, done)
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Bytes, BodyFault>>> {
        *self.fault.borrow_mut() = Some(fault.clone());
        self.sent.take();
        Poll::Ready(Some(Err(fault)))
    }
}

impl<S, E> Stream for RequestBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, BodyFault>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                if self.limit.is_some_and(|limit| self.received > limit) {
                    return self.fail(BodyFault::TooLarge);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => self.fail(BodyFault::Client(err.to_string())),
            Poll::Ready(None) => {
                if let Some(sent) = self.sent.take() {
                    let _ = sent.send(());
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Why a response body stopped early; the client's connection is then aborted.
#[derive(Debug, thiserror::Error)]
pub enum ResponseFault {
    #[error("the server paused longer than response_timeout mid-body")]
    Idle,
    #[error("the server broke off the response: {0}")]
    Broken(String),
}

/// What is finished when the response body ends or is dropped: the server's in-flight claim
/// and the access log line.
pub struct Completion {
    pub claim: Option<InFlight>,
    pub record: AccessRecord,
    pub log: AccessLog,
    pub started: Instant,
}

impl Completion {
    /// Writes the access log line with the bytes actually sent.
    pub fn finish(&mut self, bytes_sent: u64) {
        if self.log.enabled() {
            self.record.bytes_sent = bytes_sent;
            self.record.duration = self.started.elapsed();
            self.log.write(&self.record);
        }
    }
}

/// The response body streamed to the client.
pub struct ResponseBody<S> {
    inner: S,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    sent: u64,
    completion: Completion,
}

impl<S> ResponseBody<S> {
    pub fn new(inner: S, idle_timeout: Duration, completion: Completion) -> Self {
        Self {
            inner,
            idle_timeout,
            idle: Box::pin(sleep(idle_timeout)),
            sent: 0,
            completion,
        }
    }

    fn fail(&mut self, fault: ResponseFault) -> Poll<Option<Result<Bytes, ResponseFault>>> {
        if let Some(claim) = &self.completion.claim {
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
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.sent += chunk.len() as u64;
                let deadline = actix_rt::time::Instant::now() + self.idle_timeout;
                self.idle.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => self.fail(ResponseFault::Broken(err.to_string())),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => self.fail(ResponseFault::Idle),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S> Drop for ResponseBody<S> {
    fn drop(&mut self) {
        let sent = self.sent;
        self.completion.finish(sent);
    }
}
