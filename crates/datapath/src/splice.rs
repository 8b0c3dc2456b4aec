//! The Linux fast path: `splice(2)` socket -> pipe -> socket, so payload bytes never enter
//! user space.
//!
//! Everything here is safe Rust: `nix` wraps `pipe2`, `fcntl(F_SETPIPE_SZ)` and `splice`
//! over borrowed descriptors (`AsFd`), so this module carries no `unsafe` of its own and
//! forbids it. Both ends are non-blocking: the sockets are (tokio sets `O_NONBLOCK`), the
//! pipe is created with `O_NONBLOCK` and every call passes `SPLICE_F_NONBLOCK`. Readiness
//! comes from tokio (`poll_read_ready()/poll_write_ready()` + `try_io`).
//!
//! The pipe is only filled when it is empty. That keeps `EAGAIN` unambiguous: when
//! splicing *into an empty pipe* fails with `EAGAIN`, the socket has no data (a partly
//! full pipe could also be out of slots, and clearing the socket's readiness then would
//! lose a wake-up). Draining only `EAGAIN`s when the destination socket is full.
//!
//! Pipes come from a small per-thread pool: a direction takes one when its source becomes
//! readable and gives it back, empty, when the source runs dry, so idle connections hold no
//! pipe and a new connection costs no `pipe2`/`fcntl`/`close` calls. A pipe that might
//! still hold data (an error mid-drain) is closed instead of pooled.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::activity::Activity;
use crate::buffered::{write_all, PooledBuf};

/// Pipes kept per thread between bursts.
const POOL_MAX: usize = 16;

/// Set once the kernel has said it cannot splice at all (`ENOSYS`), so later connections
/// go straight to buffers.
static SPLICE_BROKEN: AtomicBool = AtomicBool::new(false);

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Whether splice is worth trying in this process.
pub(crate) fn available() -> bool {
    !SPLICE_BROKEN.load(Ordering::Relaxed)
}

/// A non-blocking pipe pair.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The size asked for (pool key).
    requested: usize,
    /// The capacity the kernel granted.
    capacity: usize,
}

impl Pipe {
    /// Creates a pipe and asks for `size` bytes of capacity; keeps the kernel's default
    /// (64 KiB) silently when refused (`EPERM` above `/proc/sys/fs/pipe-max-size`).
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        if let Ok(size) = i32::try_from(size) {
            let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(size));
        }
        let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .filter(|&c| c > 0)
            .unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            requested: size,
            capacity,
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A pipe borrowed from this thread's pool; returns to it on drop unless it may hold data.
pub(crate) struct PooledPipe {
    pipe: Option<Pipe>,
    /// Bytes spliced in and not yet out.
    pending: usize,
}

impl PooledPipe {
    pub(crate) fn take(size: usize) -> io::Result<PooledPipe> {
        let reused = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                while let Some(pipe) = p.pop() {
                    if pipe.requested == size {
                        return Some(pipe);
                    }
                }
                None
            })
            .ok()
            .flatten();
        let pipe = match reused {
            Some(p) => p,
            None => Pipe::new(size)?,
        };
        Ok(PooledPipe {
            pipe: Some(pipe),
            pending: 0,
        })
    }

    fn pipe(&self) -> io::Result<&Pipe> {
        self.pipe
            .as_ref()
            .ok_or_else(|| io::Error::other("pipe already released"))
    }
}

impl Drop for PooledPipe {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        if self.pending != 0 {
            return; // may hold bytes of this connection: close it
        }
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(pipe);
            }
        });
    }
}

/// How a splice burst ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SpliceBurst {
    /// The source sent FIN.
    Eof,
    /// The source ran dry after `moved` bytes in this burst.
    Idle { moved: u64 },
    /// The kernel refuses splice for these descriptors; nothing was lost, use buffers.
    Unsupported,
}

/// Errors meaning "splice cannot be used here" rather than "the connection failed".
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
    )
}

fn splice_nb<I: AsFd, O: AsFd>(from: I, to: O, len: usize) -> io::Result<usize> {
    splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map_err(io::Error::from)
}

/// Waits until `src` is readable, then splices `src` -> pipe -> `dst` until `src` runs
/// dry or ends.
pub(crate) async fn burst(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: usize,
    activity: &Activity,
    bytes: &mut u64,
) -> io::Result<SpliceBurst> {
    crate::readable(src).await?;
    let mut pipe = match PooledPipe::take(pipe_size) {
        Ok(p) => p,
        // Out of descriptors or pipe memory: this burst uses buffers, later ones retry.
        Err(_) => return Ok(SpliceBurst::Unsupported),
    };
    let capacity = pipe.pipe()?.capacity();
    let mut moved = 0u64;
    loop {
        // Fill: only into an empty pipe, so EAGAIN means the socket has no data.
        let filled = {
            let w = &pipe.pipe()?.write;
            src.try_io(Interest::READABLE, || splice_nb(src, w, capacity))
        };
        let n = match filled {
            Ok(0) => return Ok(SpliceBurst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(SpliceBurst::Idle { moved })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_unsupported(&e) => {
                if e.raw_os_error() == Some(Errno::ENOSYS as i32) {
                    SPLICE_BROKEN.store(true, Ordering::Relaxed);
                }
                return Ok(SpliceBurst::Unsupported);
            }
            Err(e) => return Err(e),
        };
        pipe.pending = n;
        // Drain: the pipe holds `pending` bytes; EAGAIN means `dst` is full.
        while pipe.pending > 0 {
            let drained = {
                let r = &pipe.pipe()?.read;
                let pending = pipe.pending;
                dst.try_io(Interest::WRITABLE, || splice_nb(r, dst, pending))
            };
            match drained {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => pipe.pending -= m.min(pipe.pending),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => crate::writable(dst).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_unsupported(&e) => {
                    rescue(&mut pipe, dst).await?;
                    *bytes += n as u64;
                    crate::count_copied(n as u64);
                    return Ok(SpliceBurst::Unsupported);
                }
                Err(e) => return Err(e),
            }
        }
        *bytes += n as u64;
        crate::count_spliced(n as u64);
        moved += n as u64;
        activity.touch();
        // A stream that never runs dry must still let the worker's other tasks run.
        tokio::task::consume_budget().await;
    }
}

/// The destination refused splice with bytes already in the pipe: copy them out through a
/// buffer so nothing is lost, leaving the pipe empty.
async fn rescue(pipe: &mut PooledPipe, dst: &TcpStream) -> io::Result<()> {
    let mut buf = PooledBuf::take(64 * 1024);
    while pipe.pending > 0 {
        let want = pipe.pending.min(buf.len());
        let n = nix::unistd::read(&pipe.pipe()?.read, &mut buf[..want]).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        write_all(dst, &buf[..n]).await?;
        pipe.pending -= n.min(pipe.pending);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_gets_the_requested_size_or_the_default() {
        let p = Pipe::new(1024 * 1024).unwrap();
        assert!(p.capacity() >= 64 * 1024, "capacity {}", p.capacity());
        // Absurd sizes are refused by the kernel and fall back silently.
        let q = Pipe::new(1 << 30).unwrap();
        assert!(q.capacity() >= 4096);
    }

    #[test]
    fn pipes_are_pooled_and_reused() {
        let a = PooledPipe::take(256 * 1024).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a.pipe().unwrap().read);
        drop(a);
        let b = PooledPipe::take(256 * 1024).unwrap();
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&b.pipe().unwrap().read), fd);
    }

    #[test]
    fn a_pipe_that_may_hold_data_is_not_pooled() {
        let mut a = PooledPipe::take(128 * 1024).unwrap();
        a.pending = 10;
        drop(a);
        let in_pool = POOL.with(|p| p.borrow().iter().any(|p| p.requested == 128 * 1024));
        assert!(!in_pool);
    }

    #[test]
    fn unsupported_errors_are_classified() {
        assert!(is_unsupported(&io::Error::from_raw_os_error(libc_einval())));
        assert!(!is_unsupported(&io::Error::from(io::ErrorKind::WouldBlock)));
        assert!(!is_unsupported(&io::Error::from_raw_os_error(
            Errno::ECONNRESET as i32
        )));
    }

    fn libc_einval() -> i32 {
        Errno::EINVAL as i32
    }

    #[test]
    fn splice_between_pipes_moves_bytes() {
        // A pipe -> pipe splice exercises the wrapper without sockets.
        let a = Pipe::new(64 * 1024).unwrap();
        let b = Pipe::new(64 * 1024).unwrap();
        assert_eq!(nix::unistd::write(&a.write, b"hello").unwrap(), 5);
        assert_eq!(splice_nb(&a.read, &b.write, 5).unwrap(), 5);
        let mut out = [0u8; 5];
        assert_eq!(nix::unistd::read(&b.read, &mut out).unwrap(), 5);
        assert_eq!(&out, b"hello");
        // Empty source pipe: EAGAIN, not a hang.
        let e = splice_nb(&a.read, &b.write, 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn splice_from_a_regular_file_to_a_file_is_refused_as_unsupported() {
        // Neither end is a pipe: the kernel answers EINVAL, which must map to Unsupported.
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let g = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let e = splice_nb(&f, &g, 10).unwrap_err();
        assert!(is_unsupported(&e), "{e:?}");
    }
}
