//! `load`: HTTP/1.1 load with a new connection per request (`Connection: close`), counting
//! every failed request (connect error, reset, timeout, anything but a 200). Used for the
//! failover run, where a backend is killed with -9 in the middle. Bounded by `secs` and
//! `max_requests`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::Samples;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
}

#[derive(Default)]
struct Failures {
    connect: AtomicU64,
    io: AtomicU64,
    timeout: AtomicU64,
    status: AtomicU64,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

async fn one(target: SocketAddr, f: &Failures) -> bool {
    let attempt = async {
        let mut s = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(_) => return Err(&f.connect),
        };
        let _ = s.set_nodelay(true);
        let mut buf = Vec::with_capacity(512);
        if s.write_all(REQUEST).await.is_err() || s.read_to_end(&mut buf).await.is_err() {
            return Err(&f.io);
        }
        if buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200") {
            Ok(())
        } else {
            Err(&f.status)
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(())) => true,
        Ok(Err(counter)) => {
            counter.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(_) => {
            f.timeout.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let failures = Arc::new(Failures::default());
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (failures, issued) = (failures.clone(), issued.clone());
        let (target, max) = (a.target, a.max_requests);
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                let t = Instant::now();
                if one(target, &failures).await {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = failures.connect.load(Ordering::Relaxed)
        + failures.io.load(Ordering::Relaxed)
        + failures.timeout.load(Ordering::Relaxed)
        + failures.status.load(Ordering::Relaxed);
    println!("ok={}", all.len());
    println!("failed={failed}");
    println!(
        "failed_connect={}",
        failures.connect.load(Ordering::Relaxed)
    );
    println!("failed_io={}", failures.io.load(Ordering::Relaxed));
    println!(
        "failed_timeout={}",
        failures.timeout.load(Ordering::Relaxed)
    );
    println!("failed_status={}", failures.status.load(Ordering::Relaxed));
    println!("rps={:.0}", all.len() as f64 / secs);
    Samples::new(all).print("lat");
    Ok(())
}
