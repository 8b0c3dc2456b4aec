//! One direction of a relay (`src` -> `dst`): moves bursts with the chosen strategy until
//! `src` sends FIN, then shuts down the write side of `dst` (propagating the half-close,
//! unless the other direction has ended too and the coming close does it) and returns the
//! bytes moved.
#![forbid(unsafe_code)]

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpStream;

use crate::activity::Activity;
use crate::buffered::{self, Burst};
use crate::options::{RelayOptions, Strategy};
use crate::Meter;

/// One direction's view of the relay's [`Meter`]: reports the bytes of each burst as it
/// ends (a failed burst included), so a meter sees long connections move.
pub(crate) struct Metered<'m, M> {
    pub meter: &'m M,
    pub to_upstream: bool,
}

impl<M: Meter> Metered<'_, M> {
    /// Reports what `bytes` gained since `reported`.
    fn report(&self, bytes: u64, reported: &mut u64) {
        if bytes > *reported {
            self.meter.moved(self.to_upstream, bytes - *reported);
            *reported = bytes;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Buffered,
    Splice,
}

pub(crate) async fn run<M: Meter>(
    src: &TcpStream,
    dst: &TcpStream,
    options: &RelayOptions,
    activity: &Activity,
    one_done: &AtomicBool,
    metered: Metered<'_, M>,
) -> io::Result<u64> {
    let size = options.effective_buffer_size();
    let mut splice_ok = options.strategy != Strategy::Buffered && splice_available();
    let mut mode = if options.strategy == Strategy::Splice && splice_ok {
        Mode::Splice
    } else {
        Mode::Buffered
    };
    let mut bytes = 0u64;
    let mut reported = 0u64;
    // Auto: consecutive splice bursts too small to be worth a pipe.
    let mut small_bursts = 0u32;
    loop {
        match mode {
            Mode::Buffered => {
                let bulk_switch = options.strategy == Strategy::Auto && splice_ok;
                let burst =
                    buffered::burst(src, dst, size, bulk_switch, activity, &mut bytes).await;
                metered.report(bytes, &mut reported);
                match burst? {
                    Burst::Eof => break,
                    Burst::Idle => {}
                    Burst::Bulk => mode = Mode::Splice,
                }
            }
            Mode::Splice => {
                let burst = splice_burst(src, dst, options, activity, &mut bytes).await;
                metered.report(bytes, &mut reported);
                match burst? {
                    SpliceEnd::Eof => break,
                    SpliceEnd::Idle { moved } => {
                        // Auto: bursts well under one buffer are messages, not a stream; two
                        // in a row hand the direction back to buffers (the hysteresis keeps a
                        // stream whose reader is momentarily ahead on splice).
                        if options.strategy == Strategy::Auto {
                            small_bursts = if moved < (size / 4) as u64 {
                                small_bursts + 1
                            } else {
                                0
                            };
                            if small_bursts >= 2 {
                                small_bursts = 0;
                                mode = Mode::Buffered;
                            }
                        }
                    }
                    SpliceEnd::Unsupported => {
                        splice_ok = false;
                        mode = Mode::Buffered;
                    }
                }
            }
        }
    }
    // The first direction to end passes the half-close on. When the other one has already
    // ended, both sockets are fully read and the relay is about to drop them: that close
    // sends the FIN, so the `shutdown` call is skipped.
    if !one_done.swap(true, Ordering::AcqRel) {
        shutdown_write(dst)?;
    }
    Ok(bytes)
}

/// Sends FIN on `s`. A peer that is already gone (`ENOTCONN`) is not an error here: the
/// other direction reports it if it matters.
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(s).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

enum SpliceEnd {
    Eof,
    Idle { moved: u64 },
    Unsupported,
}

#[cfg(target_os = "linux")]
fn splice_available() -> bool {
    crate::splice::available()
}

#[cfg(not(target_os = "linux"))]
fn splice_available() -> bool {
    false
}

#[cfg(target_os = "linux")]
async fn splice_burst(
    src: &TcpStream,
    dst: &TcpStream,
    options: &RelayOptions,
    activity: &Activity,
    bytes: &mut u64,
) -> io::Result<SpliceEnd> {
    use crate::splice::{burst, SpliceBurst};
    Ok(
        match burst(src, dst, options.pipe_size, activity, bytes).await? {
            SpliceBurst::Eof => SpliceEnd::Eof,
            SpliceBurst::Idle { moved } => SpliceEnd::Idle { moved },
            SpliceBurst::Unsupported => SpliceEnd::Unsupported,
        },
    )
}

#[cfg(not(target_os = "linux"))]
async fn splice_burst(
    _src: &TcpStream,
    _dst: &TcpStream,
    _options: &RelayOptions,
    _activity: &Activity,
    _bytes: &mut u64,
) -> io::Result<SpliceEnd> {
    Ok(SpliceEnd::Unsupported)
}
