//! The data path: bytes between an accepted client and its backend until either side is
//! done. Kept alone in this module so it can be replaced (splice) without touching the
//! rest of the forwarder.
//!
//! `copy_bidirectional` handles half-close: when one side shuts down its write half, the
//! shutdown is passed on and the other direction keeps flowing until it ends too.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::backends::now_ms;

/// How a relay ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions finished; bytes client->backend and backend->client.
    Closed(u64, u64),
    /// No byte moved either way for the idle timeout.
    Idle,
    Failed(io::Error),
}

/// Relays until both sides close, an error, or `idle` passes with no byte either way.
pub async fn relay(client: TcpStream, backend: TcpStream, idle: Option<Duration>) -> Ended {
    let Some(idle) = idle else {
        let (mut client, mut backend) = (client, backend);
        return match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => Ended::Closed(up, down),
            Err(e) => Ended::Failed(e),
        };
    };
    let last = Arc::new(AtomicU64::new(now_ms()));
    let mut client = Activity {
        inner: client,
        last: last.clone(),
    };
    let mut backend = Activity {
        inner: backend,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
    tokio::pin!(copy);
    let idle_ms = idle.as_millis() as u64;
    loop {
        let quiet_for = now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if quiet_for >= idle_ms {
            return Ended::Idle;
        }
        let wake = Duration::from_millis(idle_ms - quiet_for);
        tokio::select! {
            result = &mut copy => {
                return match result {
                    Ok((up, down)) => Ended::Closed(up, down),
                    Err(e) => Ended::Failed(e),
                };
            }
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// A stream that notes the time of every read that returned bytes.
struct Activity<S> {
    inner: S,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
