//! `register`: puts N instance records of one service into etcd (for RSS with many
//! backends), or deletes them again with `--delete`.
#![forbid(unsafe_code)]

use anyhow::Context;

use crate::target::Target;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Records point at 127.0.0.1:(port_base + i).
    #[arg(long, default_value_t = 40000)]
    port_base: u16,
    /// Delete the service's whole prefix instead.
    #[arg(long)]
    delete: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut client = a.target.connect().await?;
    let dir = a.target.service_prefix();
    if a.delete {
        let opts = etcd_client::DeleteOptions::new().with_prefix();
        let r = client.delete(dir.as_str(), Some(opts)).await?;
        println!("deleted={}", r.deleted());
        return Ok(());
    }
    let start = std::time::Instant::now();
    for i in 0..a.count {
        let port =
            u16::try_from(u32::from(a.port_base) + i).context("port_base + count exceeds 65535")?;
        let id = format!("bulk-{i}");
        let value = Target::record(&id, port);
        client
            .put(a.target.key(&id), value, None)
            .await
            .with_context(|| format!("put #{i}"))?;
    }
    println!("registered={}", a.count);
    println!("register_secs={:.2}", start.elapsed().as_secs_f64());
    Ok(())
}
