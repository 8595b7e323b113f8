//! `server.send_timeout`: a client that takes none of what gatehouse sends it for that long
//! is disconnected, so a client that stops reading (or reads a byte a minute) cannot hold a
//! connection, its response and the server's connection behind it forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Instant, Sleep};

/// The client's stream with a deadline on each write that has to wait: it must make progress
/// within the limit. The timer runs only while a write waits.
pub struct SendDeadline<T> {
    io: T,
    limit: Duration,
    /// Armed while a write waits; kept between waits so no timer is allocated per write.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<T> SendDeadline<T> {
    /// `limit` zero: no deadline.
    pub fn new(io: T, limit: Duration) -> Self {
        Self {
            io,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// What a write that made progress or waits means for the deadline: progress disarms it,
    /// waiting arms it (once) and fails the write when it passes.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if outcome.is_ready() || self.limit.is_zero() {
            self.armed = false;
            return outcome;
        }
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(sleep(self.limit)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took nothing for {:?} (server.send_timeout)",
                self.limit
            ),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_progress_resets_it() {
        // A pipe with 8 bytes of room that nobody reads.
        let (near, mut far) = tokio::io::duplex(8);
        let mut stream = SendDeadline::new(near, Duration::from_secs(5));
        stream.write_all(b"12345678").await.unwrap();
        let blocked = tokio::spawn(async move {
            let outcome = stream.write_all(b"more").await;
            (outcome, stream)
        });
        // Progress within the limit: the reader takes the first 8 bytes after 4 s.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut taken = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut far, &mut taken)
            .await
            .unwrap();
        let (outcome, mut stream) = blocked.await.unwrap();
        outcome.unwrap();
        // Now the pipe holds 4 bytes; 8 more must wait, and nobody reads.
        let err = stream.write_all(b"87654321").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(far);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_waits_without_limit() {
        let (near, _far) = tokio::io::duplex(4);
        let mut stream = SendDeadline::new(near, Duration::ZERO);
        let write = stream.write_all(b"more than four");
        let waited = tokio::time::timeout(Duration::from_secs(3600), write).await;
        assert!(waited.is_err(), "still waiting after an hour");
    }
}
