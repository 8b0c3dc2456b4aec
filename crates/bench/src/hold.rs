//! `hold` and `sink`: N idle connections through a proxy, for the proxy's RSS.
//!
//! `sink` is the backend: it accepts connections, greets each with one byte and keeps it
//! open until the peer closes it. `hold` opens N connections through the proxy and reads that byte on each, so every
//! connection is known to be established on both legs; then it prints `ready=N` and keeps
//! them idle for `secs` seconds while the script reads the proxy's RSS. They are separate
//! processes so each needs only N descriptors.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy's listen address.
    #[arg(long)]
    via: SocketAddr,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// How long to hold the connections once all are up.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    #[arg(long)]
    listen: SocketAddr,
    /// Exit after this long.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
}

pub async fn sink(a: SinkArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let serve = async {
        loop {
            match listener.accept().await {
                // Held until the peer closes, so descriptors are given back between runs.
                Ok((mut s, _)) => {
                    tokio::spawn(async move {
                        if s.write_all(b"!").await.is_ok() {
                            let mut b = [0u8; 64];
                            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::select! {
        () = serve => {}
        _ = tokio::time::sleep(Duration::from_secs(a.max_secs)) => {}
    }
    Ok(())
}

async fn open(via: SocketAddr) -> anyhow::Result<TcpStream> {
    let f = async {
        let mut s = TcpStream::connect(via).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        anyhow::Ok(s)
    };
    tokio::time::timeout(Duration::from_secs(10), f).await?
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    // The sink must be routable before the bulk of connections goes out.
    let first = loop {
        match open(a.via).await {
            Ok(s) => break s,
            Err(e) => anyhow::ensure!(
                start.elapsed() < Duration::from_secs(15),
                "no connection through {} reached the sink: {e}",
                a.via
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(a.count);
    for _ in 1..a.count {
        let permit = sem.clone().acquire_owned().await?;
        let via = a.via;
        tasks.push(tokio::spawn(async move {
            let r = open(via).await;
            drop(permit);
            r
        }));
    }
    let mut conns = vec![first];
    let mut failed = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => conns.push(s),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(_) => failed += 1,
        }
    }
    println!("ready={}", conns.len());
    println!("failed={failed}");
    if let Some(e) = first_error {
        println!("first_error={e}");
    }
    println!("setup_secs={:.2}", start.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    drop(conns);
    Ok(())
}
