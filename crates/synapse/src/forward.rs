//! One accepted connection: choose a backend, connect (moving to another backend when a
//! connect fails or times out), then relay bytes until either side is done.
//!
//! The client only ever sees a failure (its connection closed with nothing sent) when
//! no backend could be reached within `retries` further attempts. Connect failures feed
//! passive outlier ejection; successes end it early.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::backends::{self, BackendSet, EjectionPolicy, Stats};
use crate::balance::{self, Candidate, ZoneAffinity};
use crate::config::ServiceConfig;
use crate::copy;
use crate::service::Shared;

/// Keepalive on both legs, so that a peer that vanished (host down, partition) is noticed
/// and its connection freed, instead of a slot held forever.
const KEEPALIVE: TcpKeepalive = TcpKeepalive::new()
    .with_time(Duration::from_secs(30))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// NODELAY because synapse adds a hop: Nagle's delay on top of the app's own buffering
/// would add latency to every small request.
pub fn tune(stream: &TcpStream) {
    let socket = SockRef::from(stream);
    if let Err(e) = socket.set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if let Err(e) = socket.set_tcp_keepalive(&KEEPALIVE) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Counts a live connection on a backend for as long as it is held.
struct ActiveGuard(Arc<Stats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn ejection_policy(config: &ServiceConfig) -> EjectionPolicy {
    EjectionPolicy {
        eject_after: config.eject_after,
        base: config.ejection_time.get(),
        max_percent: config.max_ejection_percent,
    }
}

fn candidates(set: &BackendSet, zone: Option<&str>, now: u64) -> Vec<Candidate> {
    set.active
        .iter()
        .map(|b| Candidate {
            weight: b.spec.weight,
            ejected: b.stats.is_ejected(now),
            active: b.stats.active(),
            local: zone.is_some() && b.spec.zone.as_deref() == zone,
        })
        .collect()
}

/// Serves one accepted client connection to its end.
pub async fn serve(shared: Arc<Shared>, client: TcpStream) {
    tune(&client);
    if !shared.wait_until_known().await {
        shared.note_unserved("no backend set known yet");
        return;
    }
    let config = shared.config.load_full();
    let set = shared.set.load_full();
    let zone = shared.zone.load_full();
    let affinity = zone.as_ref().as_ref().map(|_| ZoneAffinity {
        min_local: config.min_zone_backends,
    });
    let policy = ejection_policy(&config);
    let mut tried: Vec<usize> = Vec::new();
    let connected = loop {
        if tried.len() > config.retries as usize {
            break None;
        }
        let now = backends::now_ms();
        let cands = candidates(&set, zone.as_deref(), now);
        let Some(i) = balance::pick(
            config.balance,
            &cands,
            &tried,
            affinity,
            &set.schedule,
            || shared.cursor.fetch_add(1, Ordering::Relaxed),
            // Made per pick: a thread's generator must not live across an await.
            &mut rand::rng(),
        ) else {
            break None;
        };
        tried.push(i);
        let backend = &set.active[i];
        let attempt = tokio::time::timeout(
            config.connect_timeout.get(),
            TcpStream::connect((backend.spec.host.as_str(), backend.spec.port)),
        )
        .await;
        match attempt {
            Ok(Ok(stream)) => {
                if backends::record_success(&backend.stats, policy, backends::now_ms()) {
                    tracing::info!(service = %shared.name, backend = %format!("{}:{}", backend.spec.host, backend.spec.port), "backend restored: a connection succeeded");
                }
                break Some((stream, backend.stats.clone()));
            }
            Ok(Err(e)) => shared.connect_failed(&set, backend, policy, &e.to_string()),
            Err(_) => shared.connect_failed(&set, backend, policy, "connect timed out"),
        }
    };
    let Some((upstream, stats)) = connected else {
        shared.note_unserved(if set.active.is_empty() {
            "no backends"
        } else {
            "no backend could be reached"
        });
        return;
    };
    tune(&upstream);
    stats.active.fetch_add(1, Ordering::Relaxed);
    stats.total.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(stats.clone());
    let drain = stats.drain.load_full();
    let ended = tokio::select! {
        ended = copy::relay(client, upstream, config.idle_timeout.map(|t| t.get())) => ended,
        _ = drain.cancelled() => {
            tracing::debug!(service = %shared.name, "connection cut: its backend drained for drain_timeout");
            return;
        }
        _ = shared.cut.cancelled() => {
            tracing::debug!(service = %shared.name, "connection cut at the end of the shutdown timeout");
            return;
        }
    };
    match ended {
        copy::Ended::Closed(up, down) => {
            tracing::trace!(service = %shared.name, up, down, "connection closed")
        }
        copy::Ended::Idle => {
            tracing::debug!(service = %shared.name, "connection closed: idle timeout")
        }
        copy::Ended::Failed(e) => {
            tracing::debug!(service = %shared.name, error = %e, "connection ended with an error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_legs_get_nodelay_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (accepted, _)) = (client.unwrap(), accepted.unwrap());
        for stream in [&client, &accepted] {
            tune(stream);
            let socket = SockRef::from(stream);
            assert!(socket.tcp_nodelay().unwrap());
            assert!(socket.keepalive().unwrap());
            assert_eq!(
                socket.tcp_keepalive_time().unwrap(),
                Duration::from_secs(30)
            );
        }
    }
}
