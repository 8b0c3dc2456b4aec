//! The app and the client of the container test, as one small program copied into its image.
//!
//! - `mesh-app serve NAME LISTEN_ADDR`: a TCP service where the client speaks first: every
//!   line received is answered with `NAME LINE`. A request that an instance dies on before
//!   answering can therefore be sent again elsewhere (synapse's `retry_unanswered`).
//! - `mesh-app load ADDR [WORKERS] [MAX_SECONDS]`: WORKERS clients (default 4), each opening
//!   one new connection after another to ADDR and making one request on it, until stdin
//!   closes or MAX_SECONDS (default 120) pass. Prints `first NAME UNIX_MS` the moment NAME
//!   first answers, then at the end `answered NAME COUNT` per instance, up to 20 `failure
//!   REASON` lines, `ok N` and `failed N`.
//! - `mesh-app get ADDR PATH`: an HTTP GET (to an admin server on the container's loopback,
//!   which the test cannot reach from outside); prints the body, fails on a status other
//!   than 200.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long one request (connect, send, answer) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Failure reasons kept for the report.
const FAILURES_KEPT: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", name, listen] => serve(name, listen).await,
        ["load", addr, rest @ ..] if rest.len() <= 2 => {
            let workers = match rest.first() {
                Some(n) => n.parse().context("WORKERS must be a whole number")?,
                None => 4,
            };
            let max = match rest.get(1) {
                Some(s) => s.parse().context("MAX_SECONDS must be a whole number")?,
                None => 120,
            };
            load(addr, workers, Duration::from_secs(max)).await
        }
        ["get", addr, path] => get(addr, path).await,
        _ => bail!(
            "usage: mesh-app serve NAME LISTEN_ADDR | mesh-app load ADDR [WORKERS] [MAX_SECONDS] \
             | mesh-app get ADDR PATH"
        ),
    }
}

async fn serve(name: &str, listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("mesh-app {name} listening on {listen}");
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let name = name.to_owned();
        tokio::spawn(async move {
            let _ = answer(stream, &name).await;
        });
    }
}

async fn answer(stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let reply = format!("{name} {}\n", line.trim_end());
        reader.get_mut().write_all(reply.as_bytes()).await?;
    }
}

async fn get(addr: &str, path: &str) -> anyhow::Result<()> {
    let addr = addr
        .parse()
        .with_context(|| format!("{addr} is not IP:PORT"))?;
    let reply = testkit::admin::get(addr, path)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    if reply.status != 200 {
        bail!("GET {path}: status {}: {}", reply.status, reply.body);
    }
    print!("{}", reply.body);
    Ok(())
}

#[derive(Default)]
struct Tally {
    answered: BTreeMap<String, u64>,
    failed: u64,
    reasons: Vec<String>,
}

async fn load(addr: &str, workers: usize, max: Duration) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // Stdin closing (the test closing `docker exec -i`'s input) ends the run.
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
            stop.cancel();
        }
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (stop, tally, addr) = (stop.clone(), tally.clone(), addr.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() && started.elapsed() < max {
                n += 1;
                let request = format!("{worker}-{n}");
                let result = tokio::time::timeout(REQUEST_TIMEOUT, request_once(&addr, &request))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
                record(&tally, &request, result);
            }
        }));
    }
    for task in tasks {
        task.await.context("a load worker panicked")?;
    }
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = std::io::stdout().lock();
    for (name, count) in &tally.answered {
        writeln!(out, "answered {name} {count}")?;
    }
    for reason in &tally.reasons {
        writeln!(out, "failure {reason}")?;
    }
    writeln!(out, "ok {}", tally.answered.values().sum::<u64>())?;
    writeln!(out, "failed {}", tally.failed)?;
    out.flush()?;
    // Not returning: the runtime would wait for the thread blocked reading stdin.
    std::process::exit(0)
}

/// One connection, one request: the instance's name, or why it failed.
async fn request_once(addr: &str, request: &str) -> Result<String, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("closed without an answer".into());
    }
    match line.trim_end().split_once(' ') {
        Some((name, echoed)) if echoed == request => Ok(name.to_owned()),
        _ => Err(format!("answer {line:?} to {request:?}")),
    }
}

fn record(tally: &Mutex<Tally>, request: &str, result: Result<String, String>) {
    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(name) => {
            let count = tally.answered.entry(name.clone()).or_default();
            *count += 1;
            if *count == 1 {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "first {name} {ms}");
                let _ = out.flush();
            }
        }
        Err(reason) => {
            tally.failed += 1;
            if tally.reasons.len() < FAILURES_KEPT {
                tally.reasons.push(format!("{request}: {reason}"));
            }
        }
    }
}
