//! A load client for the multi-host tests, run inside a simulated consumer host (`ip netns
//! exec`), dialling synapse on that host's 127.0.0.1. It talks to testkit backends, which
//! greet each connection with their name and then echo: a *request* is one line sent and
//! echoed back.
//!
//! - `--mode new`: every request on a new connection (connect, greeting, one echo, close).
//! - `--mode keep`: long connections, each carrying `--per-connection` requests one after
//!   the other, then closed and replaced (as HTTP clients recycle theirs), so that a
//!   drained instance sees its last connection end within a bounded time.
//!
//! `--workers` tasks each make a request every `--pace-ms`; a request that does not
//! complete within `--timeout-ms` fails (and its connection is dropped). Every 200 ms, and
//! once more when stopped with SIGTERM (after the requests in flight complete or time
//! out), one JSON line goes to stdout: `{"ok", "failed", "by_backend", "errors": [[ms since
//! start, reason], ... the first 50], "latency_ms": {"p50", "p99", "max"}, "final"}`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    New,
    Keep,
}

#[derive(Clone, Copy)]
struct Args {
    target: SocketAddr,
    mode: Mode,
    workers: usize,
    pace: Duration,
    timeout: Duration,
    per_connection: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        mode: Mode::New,
        workers: 2,
        pace: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        per_connection: 50,
    };
    let mut target = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => target = Some(value.parse().context("--target")?),
            "--mode" => {
                args.mode = match value.as_str() {
                    "new" => Mode::New,
                    "keep" => Mode::Keep,
                    other => bail!("--mode new|keep, not {other}"),
                }
            }
            "--workers" => args.workers = value.parse().context("--workers")?,
            "--pace-ms" => args.pace = Duration::from_millis(value.parse().context("--pace-ms")?),
            "--timeout-ms" => {
                args.timeout = Duration::from_millis(value.parse().context("--timeout-ms")?)
            }
            "--per-connection" => {
                args.per_connection = value.parse().context("--per-connection")?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    args.target = target.ok_or_else(|| {
        anyhow!("usage: load-client --target ADDR [--mode new|keep] [--workers N] [--pace-ms MS] [--timeout-ms MS] [--per-connection K]")
    })?;
    if args.workers == 0 || args.per_connection == 0 {
        bail!("--workers and --per-connection must be at least 1");
    }
    Ok(args)
}

#[derive(Default)]
struct Stats {
    ok: u64,
    failed: u64,
    by_backend: BTreeMap<String, u64>,
    errors: Vec<(u64, String)>,
    latencies_us: Vec<u64>,
}

struct Shared {
    start: Instant,
    stop: AtomicBool,
    stats: Mutex<Stats>,
}

impl Shared {
    fn record(&self, result: Result<&str, String>, took: Duration) {
        let Ok(mut s) = self.stats.lock() else { return };
        match result {
            Ok(backend) => {
                s.ok += 1;
                *s.by_backend.entry(backend.to_owned()).or_default() += 1;
                s.latencies_us.push(took.as_micros() as u64);
            }
            Err(e) => {
                s.failed += 1;
                if s.errors.len() < 50 {
                    let at = self.start.elapsed().as_millis() as u64;
                    s.errors.push((at, e));
                }
            }
        }
    }

    fn report(&self, last: bool) -> String {
        let Ok(mut s) = self.stats.lock() else {
            return "{}".into();
        };
        s.latencies_us.sort_unstable();
        let pick = |q: f64| -> f64 {
            let l = &s.latencies_us;
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() as f64 * q) as usize).min(l.len() - 1);
            l[i] as f64 / 1000.0
        };
        serde_json::json!({
            "ok": s.ok,
            "failed": s.failed,
            "by_backend": s.by_backend,
            "errors": s.errors,
            "latency_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)},
            "final": last,
        })
        .to_string()
    }
}

/// A connection through synapse: the backend's greeting read.
struct Connection {
    backend: String,
    reader: BufReader<TcpStream>,
}

async fn open(target: SocketAddr) -> Result<Connection, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    match reader.read_line(&mut line).await {
        Ok(0) => Err("closed before the greeting".into()),
        Ok(_) => Ok(Connection {
            backend: line.trim_end().to_owned(),
            reader,
        }),
        Err(e) => Err(format!("reading the greeting: {e}")),
    }
}

impl Connection {
    async fn echo(&mut self, text: &str) -> Result<(), String> {
        let who = &self.backend;
        self.reader
            .get_mut()
            .write_all(format!("{text}\n").as_bytes())
            .await
            .map_err(|e| format!("{who}: write: {e}"))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) => Err(format!("{who}: closed before the echo")),
            Ok(_) if line.trim_end() == text => Ok(()),
            Ok(_) => Err(format!("{who}: expected {text:?}, got {line:?}")),
            Err(e) => Err(format!("{who}: read: {e}")),
        }
    }
}

/// One request on a new connection; the backend that answered.
async fn one_shot(target: SocketAddr, n: u64) -> Result<String, String> {
    let mut c = open(target).await?;
    c.echo(&format!("request {n}")).await?;
    let _ = c.reader.get_mut().shutdown().await;
    Ok(c.backend)
}

async fn worker(id: usize, args: Args, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(args.pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(Connection, usize)> = None;
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let started = Instant::now();
        let text = format!("worker {id} request {n}");
        let result = match args.mode {
            Mode::New => tokio::time::timeout(args.timeout, one_shot(args.target, n))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", args.timeout))),
            Mode::Keep => {
                let attempt = async {
                    let (c, used) = match conn.take() {
                        Some(open) => open,
                        None => (open(args.target).await?, 0),
                    };
                    let mut c = c;
                    match c.echo(&text).await {
                        Ok(()) => {
                            let backend = c.backend.clone();
                            if used + 1 < args.per_connection {
                                conn = Some((c, used + 1));
                            } else {
                                let _ = c.reader.get_mut().shutdown().await;
                            }
                            Ok(backend)
                        }
                        Err(e) => Err(e),
                    }
                };
                let outcome = tokio::time::timeout(args.timeout, attempt).await;
                outcome.unwrap_or_else(|_| Err(format!("no answer within {:?}", args.timeout)))
            }
        };
        match &result {
            Ok(backend) => shared.record(Ok(backend), started.elapsed()),
            Err(e) => {
                // A connection that failed a request is not used again.
                conn = None;
                shared.record(Err(e.clone()), started.elapsed());
            }
        }
    }
    if let Some((mut c, _)) = conn {
        let _ = c.reader.get_mut().shutdown().await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        stats: Mutex::new(Stats::default()),
    });
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..args.workers {
        workers.spawn(worker(id, args, shared.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = every.tick() => println!("{}", shared.report(false)),
            _ = term.recv() => break,
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    println!("{}", shared.report(true));
    Ok(())
}
