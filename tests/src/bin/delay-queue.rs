//! Holds every packet that netfilter queues to it for a random delay, then lets it go: the
//! delay half of `tc netem delay D J` for kernels built without `sch_netem`. An iptables
//! rule (`-j NFQUEUE --queue-num N`) chooses the packets; this program binds queue N over
//! a netlink socket (nfnetlink_queue, metadata only: it never sees a payload) and gives
//! each packet its ACCEPT verdict `delay ± jitter` (uniform) after it was queued. Packets
//! whose delays cross overtake each other, as with netem.
//!
//! Usage: `delay-queue --queue N --delay-us D --jitter-us J`. Prints `bound queue N` once
//! the queue is bound (add the iptables rule only then: a packet queued to an unbound
//! queue is dropped). Runs until killed.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

/// nfnetlink subsystem of the queue, and its message types.
const SUBSYS_QUEUE: u16 = 3;
const MSG_PACKET: u16 = 0;
const MSG_VERDICT: u16 = 1;
const MSG_CONFIG: u16 = 2;
/// Attributes.
const CFG_CMD: u16 = 1;
const CFG_PARAMS: u16 = 2;
const CFG_QUEUE_MAXLEN: u16 = 3;
const PACKET_HDR: u16 = 1;
const VERDICT_HDR: u16 = 2;
/// Config commands and modes.
const CMD_BIND: u8 = 1;
const COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
/// netlink.
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const AF_INET: u16 = 2;

struct Args {
    queue: u16,
    delay: Duration,
    jitter: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut queue, mut delay, mut jitter) = (None, None, Duration::ZERO);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--queue" => queue = Some(value.parse().context("--queue")?),
            "--delay-us" => {
                delay = Some(Duration::from_micros(value.parse().context("--delay-us")?))
            }
            "--jitter-us" => jitter = Duration::from_micros(value.parse().context("--jitter-us")?),
            other => bail!("unknown argument {other}"),
        }
    }
    let usage = "usage: delay-queue --queue N --delay-us D [--jitter-us J]";
    let delay = delay.ok_or_else(|| anyhow!(usage))?;
    if jitter > delay {
        bail!("--jitter-us must not exceed --delay-us");
    }
    Ok(Args {
        queue: queue.ok_or_else(|| anyhow!(usage))?,
        delay,
        jitter,
    })
}

/// A netlink message: header, nfgenmsg for `queue`, then attributes.
fn message(kind: u16, flags: u16, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&[0; 4]); // length, set below
    m.extend_from_slice(&((SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.extend_from_slice(&[0, 0]); // family AF_UNSPEC, version 0
    m.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let total = m.len() as u32;
    m[..4].copy_from_slice(&total.to_ne_bytes());
    m
}

/// The messages in one datagram: (type, flags, body after the 16-byte header).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 16 {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        out.push((kind, &buf[at + 16..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

/// The attribute `wanted` of a queue message body (after its 4-byte nfgenmsg).
fn attribute(body: &[u8], wanted: u16) -> Option<&[u8]> {
    let mut at = 4;
    while body.len() >= at + 4 {
        let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]) & 0x3fff;
        if len < 4 || at + len > body.len() {
            return None;
        }
        if kind == wanted {
            return Some(&body[at + 4..at + len]);
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// Sends a config request and waits for the kernel's acknowledgement.
fn configure(fd: &OwnedFd, queue: u16, attrs: &[(u16, &[u8])]) -> anyhow::Result<()> {
    let m = message(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue, attrs);
    send(fd.as_raw_fd(), &m, MsgFlags::empty()).context("netlink send")?;
    let mut buf = vec![0u8; 8192];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).context("netlink recv")?;
    for (kind, body) in messages(&buf[..n]) {
        if kind == NLMSG_ERROR && body.len() >= 4 {
            let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            if errno != 0 {
                bail!(
                    "the kernel refused the queue configuration: {}",
                    std::io::Error::from_raw_os_error(-errno)
                );
            }
            return Ok(());
        }
    }
    bail!("no acknowledgement from the kernel")
}

/// splitmix64: jitter needs no better randomness than this.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Packets waiting for their verdict, earliest release first.
type Pending = (Mutex<BinaryHeap<Reverse<(Instant, u32)>>>, Condvar);

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .context("netlink socket")?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).context("netlink bind")?;
    // Room for bursts: a datagram the kernel cannot deliver would leave its packet queued
    // with no verdict ever.
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(8 << 20));
    let q = args.queue;
    configure(
        &fd,
        q,
        &[(CFG_CMD, &[CMD_BIND, 0, (AF_INET >> 8) as u8, AF_INET as u8])],
    )?;
    let mut params = 0u32.to_be_bytes().to_vec();
    params.push(COPY_META);
    configure(&fd, q, &[(CFG_PARAMS, &params)])?;
    configure(&fd, q, &[(CFG_QUEUE_MAXLEN, &65_536u32.to_be_bytes())])?;
    println!(
        "bound queue {q}: delay {:?} ± {:?}",
        args.delay, args.jitter
    );

    let fd = Arc::new(fd);
    let pending: Arc<Pending> = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
    let releaser = {
        let (fd, pending) = (fd.clone(), pending.clone());
        std::thread::spawn(move || release(&fd, q, &pending))
    };
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut rng = Rng(seed);
    let low = args.delay - args.jitter;
    let spread = args.jitter * 2;
    let mut buf = vec![0u8; 65_536];
    loop {
        if releaser.is_finished() {
            bail!("the verdict thread stopped");
        }
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ENOBUFS) => {
                eprintln!("delay-queue: netlink receive buffer overrun; some packets were lost");
                continue;
            }
            Err(e) => return Err(e).context("netlink recv"),
        };
        let now = Instant::now();
        let (lock, wake) = &*pending;
        let mut heap = lock.lock().map_err(|_| anyhow!("poisoned"))?;
        for (kind, body) in messages(&buf[..n]) {
            if kind != (SUBSYS_QUEUE << 8) | MSG_PACKET {
                continue;
            }
            let Some(hdr) = attribute(body, PACKET_HDR).filter(|h| h.len() >= 4) else {
                continue;
            };
            let id = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            heap.push(Reverse((now + low + spread.mul_f64(rng.unit()), id)));
        }
        wake.notify_one();
    }
}

/// Gives each packet its verdict once its time has come.
fn release(fd: &OwnedFd, queue: u16, pending: &Pending) {
    let (lock, wake) = pending;
    let Ok(mut heap) = lock.lock() else { return };
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            due.push(id);
        }
        if !due.is_empty() {
            drop(heap);
            for id in due {
                let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
                verdict.extend_from_slice(&id.to_be_bytes());
                let m = message(
                    MSG_VERDICT,
                    NLM_F_REQUEST,
                    queue,
                    &[(VERDICT_HDR, &verdict)],
                );
                if let Err(e) = send(fd.as_raw_fd(), &m, MsgFlags::empty()) {
                    eprintln!("delay-queue: verdict for packet {id}: {e}");
                }
            }
            heap = match lock.lock() {
                Ok(h) => h,
                Err(_) => return,
            };
            continue;
        }
        let wait = heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1));
        heap = match wake.wait_timeout(heap, wait) {
            Ok((h, _)) => h,
            Err(_) => return,
        };
    }
}
