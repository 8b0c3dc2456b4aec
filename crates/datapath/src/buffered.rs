//! The portable path: read into a pooled buffer, write it out.
//!
//! One burst starts when the source becomes readable and ends when it runs dry, at EOF, or
//! (in [`crate::Strategy::Auto`]) when a read fills the whole buffer, which hands the
//! direction over to splice. Buffers come from a small per-thread pool and go back to it
//! at the end of every burst, so an idle connection holds none.
//!
//! A read that returns fewer bytes than asked is taken to mean the socket's receive queue
//! is empty (true for TCP), and the socket's readiness is cleared right away instead of
//! issuing one more `read` just to see `EAGAIN`. The readiness is cleared through
//! `try_io`, which only clears the readiness *snapshot taken before the read*: data or a
//! FIN arriving after that snapshot raises a new edge-triggered event and is not lost, and
//! tokio never clears the read-closed state.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::ops::{Deref, DerefMut};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::activity::Activity;

/// Buffers kept per thread between bursts.
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer borrowed from this thread's pool; goes back to the pool on drop.
pub(crate) struct PooledBuf(Box<[u8]>);

impl PooledBuf {
    pub(crate) fn take(size: usize) -> PooledBuf {
        let reused = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                // Buffers of another size (another options set) are dropped, not reused.
                while let Some(b) = p.pop() {
                    if b.len() == size {
                        return Some(b);
                    }
                }
                None
            })
            .ok()
            .flatten();
        PooledBuf(reused.unwrap_or_else(|| vec![0u8; size].into_boxed_slice()))
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        });
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// How a burst ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Burst {
    /// The source sent FIN (read returned 0).
    Eof,
    /// The source ran dry; wait for it to become readable again.
    Idle,
    /// A read filled the whole buffer: bulk data, worth switching to splice.
    Bulk,
}

/// Outcome of one read.
enum Read {
    Eof,
    /// `drained`: the read was short, so the socket's readiness was cleared.
    Data {
        n: usize,
        drained: bool,
    },
}

/// Waits until `src` is readable, then moves bytes to `dst` until `src` runs dry or ends.
/// `bulk_switch`: end the burst with [`Burst::Bulk`] after a read that filled the buffer.
pub(crate) async fn burst(
    src: &TcpStream,
    dst: &TcpStream,
    size: usize,
    bulk_switch: bool,
    activity: &Activity,
    bytes: &mut u64,
) -> io::Result<Burst> {
    crate::readable(src).await?;
    let mut buf = PooledBuf::take(size);
    loop {
        let (n, drained) = match read_hinted(src, &mut buf) {
            Ok(Read::Eof) => return Ok(Burst::Eof),
            Ok(Read::Data { n, drained }) => (n, drained),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write_all(dst, &buf[..n]).await?;
        *bytes += n as u64;
        crate::count_copied(n as u64);
        activity.touch();
        if drained {
            return Ok(Burst::Idle);
        }
        if bulk_switch && n == buf.len() {
            return Ok(Burst::Bulk);
        }
        // A stream that never runs dry must still let the worker's other tasks run.
        tokio::task::consume_budget().await;
    }
}

/// One read; a short read clears the readiness snapshot taken before it (see module docs).
fn read_hinted(src: &TcpStream, buf: &mut [u8]) -> io::Result<Read> {
    let mut short = 0usize;
    let res = src.try_io(Interest::READABLE, || {
        let n = src.try_read(buf)?;
        if n > 0 && n < buf.len() {
            // Report WouldBlock so that try_io clears the readiness; the bytes are in `short`.
            short = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match res {
        Ok(0) => Ok(Read::Eof),
        Ok(n) => Ok(Read::Data { n, drained: false }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(Read::Data {
            n: short,
            drained: true,
        }),
        Err(e) => Err(e),
    }
}

/// Writes all of `data`, waiting for writability when the socket buffer is full.
pub(crate) async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => crate::writable(dst).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_buffers_of_the_same_size_only() {
        let a = PooledBuf::take(4096);
        let ptr = a.as_ptr();
        drop(a);
        let b = PooledBuf::take(4096);
        assert_eq!(b.as_ptr(), ptr, "same-size buffer reused");
        drop(b);
        let c = PooledBuf::take(8192);
        assert_eq!(c.len(), 8192);
    }

    #[test]
    fn pool_is_bounded() {
        let bufs: Vec<_> = (0..POOL_MAX + 10).map(|_| PooledBuf::take(2048)).collect();
        drop(bufs);
        let len = POOL.with(|p| p.borrow().len());
        assert!(len <= POOL_MAX);
    }
}
