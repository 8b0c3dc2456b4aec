//! The data path: bytes between an accepted client and its backend until either side is
//! done. Kept alone in this module so the relay can be swapped without touching the rest
//! of the forwarder.
//!
//! The bytes are moved by `datapath` (splice(2) for bulk, one pooled buffer per burst for
//! messages, nothing held while idle). It passes a half-close on (one side's FIN becomes a
//! shutdown of the other side's write half, and the other direction keeps flowing until it
//! ends too), keeps the idle timer itself (stamped once per burst, not per read), and turns
//! a socket failure into a reset of both sides so a cut-off response never looks complete.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// How a relay ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions finished; bytes client->backend and backend->client.
    Closed(u64, u64),
    /// No byte moved either way for the idle timeout.
    Idle,
    Failed(io::Error),
}

/// Relays until both sides close, an error, or `idle` passes with no byte either way;
/// reports the bytes to `meter` burst by burst.
pub async fn relay<M: datapath::Meter>(
    client: TcpStream,
    backend: TcpStream,
    idle: Option<Duration>,
    meter: &M,
) -> Ended {
    let options = datapath::RelayOptions {
        idle_timeout: idle,
        ..datapath::RelayOptions::default()
    };
    match datapath::relay_metered(client, backend, &options, meter).await {
        Ok(s) => Ended::Closed(s.client_to_upstream, s.upstream_to_client),
        Err(e) if datapath::is_idle_timeout(&e) => Ended::Idle,
        Err(e) => Ended::Failed(e),
    }
}
