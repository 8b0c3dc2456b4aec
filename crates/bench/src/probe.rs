//! `probe`: registration -> routable and removal -> unroutable latency through synapse.
//!
//! The probe runs its own backends; each greets every connection with its 4-byte id and
//! closes. A base backend (id 0) stays registered throughout. Then, `count` times:
//! - a new backend (id i) is started and its record put into etcd; the clock starts just
//!   before the put. Connections are made through synapse back to back until one is
//!   answered by id i: that connection's completion is the registration latency.
//! - the record is deleted; the clock starts just before the delete. Connections go on
//!   until `run` consecutive ones are answered by someone else; the removal latency is the
//!   start of the first connection of that run.
//!
//! The etcd round trip of each put/delete is reported separately (it is inside both
//! latencies). Bounded by `count` and `max_secs`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::Samples;
use crate::target::Target;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// The proxy's listen address for the service.
    #[arg(long)]
    via: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Give up on one registration or removal after this long (counted as a miss).
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Consecutive answers from others that prove a removal.
    #[arg(long, default_value_t = 6)]
    run: u32,
    #[arg(long, default_value_t = 240)]
    max_secs: u64,
}

async fn serve(listener: TcpListener, id: u32) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let _ = s.write_all(&id.to_le_bytes()).await;
        });
    }
}

/// One connection through the proxy: the id of the backend that answered.
async fn hit(via: SocketAddr) -> anyhow::Result<u32> {
    let f = async {
        let mut s = TcpStream::connect(via).await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        anyhow::Ok(u32::from_le_bytes(b))
    };
    tokio::time::timeout(Duration::from_secs(1), f).await?
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(a.max_secs);
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut etcd = a.target.connect().await?;
    let base = TcpListener::bind("127.0.0.1:0").await?;
    let base_port = base.local_addr()?.port();
    tokio::spawn(serve(base, 0));
    etcd.put(
        a.target.key("probe-base"),
        Target::record("probe-base", base_port),
        None,
    )
    .await?;
    let t = Instant::now();
    loop {
        if hit(a.via).await.is_ok() {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(15),
            "the base backend never became routable through {}",
            a.via
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (mut reg, mut rem, mut put_rtt) = (Vec::new(), Vec::new(), Vec::new());
    let (mut reg_miss, mut rem_miss, mut conn_err, mut probes) = (0u32, 0u32, 0u64, 0u64);
    for i in 1..=a.count {
        if Instant::now() > deadline {
            break;
        }
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let port = l.local_addr()?.port();
        let server = tokio::spawn(serve(l, i));
        let id = format!("probe-{i}");
        let key = a.target.key(&id);
        let value = Target::record(&id, port);

        let t0 = Instant::now();
        etcd.put(key.as_str(), value, None).await?;
        put_rtt.push(t0.elapsed());
        loop {
            if t0.elapsed() > timeout {
                reg_miss += 1;
                break;
            }
            probes += 1;
            match hit(a.via).await {
                Ok(id) if id == i => {
                    reg.push(t0.elapsed());
                    break;
                }
                Ok(_) => {}
                Err(_) => conn_err += 1,
            }
        }

        let t1 = Instant::now();
        etcd.delete(key.as_str(), None).await?;
        put_rtt.push(t1.elapsed());
        let (mut streak, mut streak_start) = (0u32, Duration::ZERO);
        loop {
            if t1.elapsed() > timeout {
                rem_miss += 1;
                break;
            }
            let started = t1.elapsed();
            probes += 1;
            match hit(a.via).await {
                Ok(id) if id == i => streak = 0,
                Ok(_) => {
                    if streak == 0 {
                        streak_start = started;
                    }
                    streak += 1;
                    if streak >= a.run {
                        rem.push(streak_start);
                        break;
                    }
                }
                Err(_) => conn_err += 1,
            }
        }
        server.abort();
    }
    let _ = etcd.delete(a.target.key("probe-base"), None).await;

    Samples::new(reg).print("reg");
    Samples::new(rem).print("rem");
    Samples::new(put_rtt).print("etcd_rtt");
    println!("reg_miss={reg_miss}");
    println!("rem_miss={rem_miss}");
    println!("probe_connections={probes}");
    println!("probe_connection_errors={conn_err}");
    Ok(())
}
