//! `hold`: opens N connections through a proxy to a backend this tool runs itself, waits
//! until the backend has accepted all of them (so the proxy holds both legs), prints
//! `ready=N`, and keeps them idle for `secs` seconds (the script reads the proxy's RSS
//! meanwhile).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy's listen address.
    #[arg(long)]
    via: SocketAddr,
    /// Where this tool's backend listens (registered behind the proxy by the script).
    #[arg(long)]
    backend_listen: SocketAddr,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// How long to hold the connections once all are up.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(a.backend_listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.backend_listen))?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
            acc.fetch_add(1, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    // The backend must be routable before the bulk of connections goes out.
    let first = loop {
        if let Ok(s) = TcpStream::connect(a.via).await {
            let t = Instant::now();
            while accepted.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if accepted.load(Ordering::Relaxed) > 0 {
                break s;
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(15),
            "no connection through {} reached the hold backend",
            a.via
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(a.count);
    for _ in 1..a.count {
        let permit = sem.clone().acquire_owned().await?;
        let via = a.via;
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(via)).await;
            drop(permit);
            r.ok().and_then(Result::ok)
        }));
    }
    let mut conns = vec![first];
    let mut failed = 0usize;
    for t in tasks {
        match t.await {
            Ok(Some(s)) => conns.push(s),
            _ => failed += 1,
        }
    }
    let t = Instant::now();
    while accepted.load(Ordering::Relaxed) < conns.len() && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ready={}", conns.len());
    println!("accepted={}", accepted.load(Ordering::Relaxed));
    println!("connect_failed={failed}");
    println!("setup_secs={:.2}", start.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    drop(conns);
    Ok(())
}
