//! `relay`: a minimal TCP proxy (accept, connect, relay) around one data-path strategy, so
//! relay strategies can be compared with iperf3/wrk without the rest of synapse.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use datapath::{RelayOptions, Strategy};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to accept on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward to.
    #[arg(long)]
    upstream: SocketAddr,
    /// auto, splice, buffered (datapath) or tokio (tokio::io::copy_bidirectional).
    #[arg(long, default_value = "auto")]
    strategy: String,
    /// datapath buffer size (bytes).
    #[arg(long, default_value_t = datapath::options::DEFAULT_BUFFER_SIZE)]
    buffer_size: usize,
    /// datapath pipe size (bytes).
    #[arg(long, default_value_t = datapath::options::DEFAULT_PIPE_SIZE)]
    pipe_size: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Exit after this many seconds (bounded runs).
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
}

#[derive(Clone, Debug)]
enum Path {
    Tokio,
    Datapath(RelayOptions),
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let path = if args.strategy == "tokio" {
        Path::Tokio
    } else {
        let strategy: Strategy = args.strategy.parse().map_err(anyhow::Error::msg)?;
        Path::Datapath(RelayOptions {
            strategy,
            buffer_size: args.buffer_size,
            pipe_size: args.pipe_size,
            ..RelayOptions::default()
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!("listening={}", args.listen);
        let serve = async {
            loop {
                let (client, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                tokio::spawn(proxy(client, args.upstream, path.clone()));
            }
        };
        tokio::select! {
            () = serve => {}
            _ = tokio::time::sleep(Duration::from_secs(args.max_secs)) => {}
        }
        Ok(())
    })
}

async fn proxy(mut client: TcpStream, upstream: SocketAddr, path: Path) {
    let _ = client.set_nodelay(true);
    let mut up = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = up.set_nodelay(true);
    match path {
        Path::Tokio => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        }
        Path::Datapath(o) => {
            let _ = datapath::relay_with(client, up, &o).await;
        }
    }
}
