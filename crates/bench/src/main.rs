//! `smartstack-bench`: the probes `make bench` (deploy/bench/run.sh) needs beyond wrk and
//! iperf3. Every subcommand is bounded in count and time and prints its results as
//! `key=value` lines that the script parses.
//!
//! - `relay`: a minimal proxy around one relay strategy (datapath auto/splice/buffered, or
//!   tokio's `copy_bidirectional`), to compare data paths before synapse adopts one.
//! - `register`: put N instance records of one service into etcd (RSS with many backends).
//! - `probe`: registration -> routable and removal -> unroutable latency through synapse.
//! - `hold` / `sink`: N idle connections through a proxy / the backend that keeps them (RSS).
//! - `load`: new-connection-per-request HTTP load counting failures (failover run).
#![forbid(unsafe_code)]

mod hold;
mod load;
mod probe;
mod register;
mod relay;
mod stats;
mod target;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "smartstack-bench", about = "Benchmark probes for make bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Relay(relay::Args),
    Register(register::Args),
    Probe(probe::Args),
    Hold(hold::Args),
    Sink(hold::SinkArgs),
    Load(load::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Relay(a) => relay::main(a),
        Cmd::Register(a) => runtime(1)?.block_on(register::run(a)),
        Cmd::Probe(a) => runtime(1)?.block_on(probe::run(a)),
        Cmd::Hold(a) => runtime(1)?.block_on(hold::run(a)),
        Cmd::Sink(a) => runtime(1)?.block_on(hold::sink(a)),
        Cmd::Load(a) => runtime(1)?.block_on(load::run(a)),
    }
}

/// A runtime with `threads` workers (the probes must not compete with what they measure).
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}
