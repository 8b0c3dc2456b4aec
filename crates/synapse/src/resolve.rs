//! DNS names in the registry, resolved in the background and kept through DNS failures.
//!
//! A record's `host` may be a DNS name. Resolving it on every connection would put a
//! `getaddrinfo` on tokio's blocking pool per connection, and make every connection fail
//! while DNS is down even though the instances are fine. Instead each service runs
//! [`refresh_loop`]: it looks up every name among its backends when it appears, again every
//! [`REFRESH`], and sooner after a failed connect (the name may have moved). A lookup that
//! fails or comes back empty keeps the addresses of the last one that worked: DNS being
//! down changes nothing for traffic (the same "static stability" as an etcd outage).
//!
//! Connections dial the kept addresses ([`dial`]); until a name has been resolved once,
//! they resolve it themselves, so a new backend is usable at once. IP literals are never
//! looked up.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::backends::Backend;
use crate::ejection::now_ms;
use crate::resolution::{is_name, Addrs};
use crate::state::ServiceState;

/// How often a name that resolves is looked up again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How often a name is retried while it has never resolved, and at most how often a
/// failed connect triggers a lookup.
pub const RETRY: Duration = Duration::from_secs(2);
/// A lookup that takes longer than this has failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the loop looks for names that are due.
const TICK: Duration = Duration::from_millis(500);

/// Whether a name is due for a lookup at `now`.
pub fn due(now: u64, last_lookup: u64, resolved: bool, stale: bool) -> bool {
    if last_lookup == 0 {
        return true;
    }
    let since = Duration::from_millis(now.saturating_sub(last_lookup));
    since >= if resolved && !stale { REFRESH } else { RETRY }
}

/// The addresses to keep after a lookup: its answer, or what was kept before when it
/// failed or found nothing.
pub fn after_lookup(
    kept: Option<Addrs>,
    lookup: io::Result<Vec<SocketAddr>>,
) -> Result<Addrs, (Option<Addrs>, String)> {
    match lookup {
        Ok(addrs) if !addrs.is_empty() => Ok(Arc::new(addrs)),
        Ok(_) => Err((kept, "the name has no address".to_owned())),
        Err(e) => Err((kept, e.to_string())),
    }
}

/// Connects to a backend: its kept addresses (in order) if its name has resolved, else
/// whatever `host` says right now.
pub async fn dial(backend: &Backend) -> io::Result<TcpStream> {
    match backend.state.resolution().addrs() {
        Some(addrs) => TcpStream::connect(&addrs[..]).await,
        None => TcpStream::connect(backend.spec.endpoint()).await,
    }
}

/// Keeps the service's DNS names resolved for as long as the service runs.
pub async fn refresh_loop(service: Arc<ServiceState>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let set = service.set();
        let now = now_ms();
        let lookups = set.active.iter().filter(|b| {
            let (last_lookup, resolved, stale) = b.state.resolution().lookup_state();
            is_name(&b.spec.host) && due(now, last_lookup, resolved, stale)
        });
        // Concurrently, so one slow name does not hold the others up.
        futures::future::join_all(lookups.map(|b| refresh(b, lookup(b)))).await;
    }
}

/// The system resolver's answer for a backend's name, bounded by [`LOOKUP_TIMEOUT`].
async fn lookup(backend: &Backend) -> io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(
        LOOKUP_TIMEOUT,
        tokio::net::lookup_host(backend.spec.endpoint()),
    )
    .await
    {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {LOOKUP_TIMEOUT:?}"),
        )),
    }
}

/// One lookup of a backend's name, applied to what it keeps.
/// One lookup of a backend's name, applied to what it keeps. Logs carry the service from
/// the caller's span.
async fn refresh(
    backend: &Backend,
    lookup: impl std::future::Future<Output = io::Result<Vec<SocketAddr>>>,
) {
    let r = backend.state.resolution();
    r.lookup_started(now_ms());
    let lookup = lookup.await;
    let host = &backend.spec.host;
    match after_lookup(r.addrs(), lookup) {
        Ok(addrs) => {
            let shown = addrs.clone();
            let changed = r.resolved(addrs);
            if r.set_failing(false) || changed {
                tracing::info!(%host, addresses = ?shown, "resolved");
            }
        }
        Err((kept, error)) => {
            if !r.set_failing(true) {
                match kept {
                    Some(addrs) => tracing::warn!(
                        %host, %error, addresses = ?addrs,
                        "cannot resolve; keeping the last addresses"
                    ),
                    None => tracing::warn!(
                        %host, %error,
                        "cannot resolve; connections resolve it themselves meanwhile"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Static stability through a DNS outage: once resolved, a name that stops resolving
    /// keeps being dialled at its last addresses.
    #[tokio::test]
    async fn a_backend_stays_reachable_when_its_name_stops_resolving() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Backend {
            spec: crate::backends::BackendSpec {
                id: "db-1".into(),
                host: "db-1.invalid".into(),
                port: addr.port(),
                weight: 100,
                zone: None,
            },
            state: Arc::default(),
        };
        // (No real lookup of that name here: tests never send a DNS query off the host.)
        refresh(&backend, async { Ok(vec![addr]) }).await;
        assert_eq!(
            backend.state.resolution().addrs().as_deref(),
            Some(&vec![addr])
        );
        refresh(&backend, async { Err(io::Error::other("SERVFAIL")) }).await;
        refresh(&backend, async { Ok(Vec::new()) }).await;
        assert_eq!(
            backend.state.resolution().addrs().as_deref(),
            Some(&vec![addr])
        );
        let (dialled, accepted) = tokio::join!(dial(&backend), listener.accept());
        assert_eq!(dialled.unwrap().peer_addr().unwrap(), addr);
        assert!(accepted.is_ok());
    }

    #[test]
    fn only_names_are_looked_up() {
        assert!(is_name("db-1.internal"));
        assert!(is_name("localhost"));
        assert!(!is_name("10.0.0.5"));
        assert!(!is_name("::1"));
    }

    #[test]
    fn names_are_looked_up_at_once_then_every_refresh_or_sooner_when_stale_or_unresolved() {
        let ms = |d: Duration| d.as_millis() as u64;
        let last = 1_000;
        assert!(due(5, 0, false, false));
        // Resolved and fine: only after REFRESH.
        assert!(!due(last + ms(REFRESH) - 1, last, true, false));
        assert!(due(last + ms(REFRESH), last, true, false));
        // A connect failed, or it never resolved: after RETRY, not before.
        for (resolved, stale) in [(true, true), (false, false), (false, true)] {
            assert!(!due(last + ms(RETRY) - 1, last, resolved, stale));
            assert!(due(last + ms(RETRY), last, resolved, stale));
        }
    }

    #[test]
    fn a_failed_or_empty_lookup_keeps_the_last_addresses() {
        let old = Arc::new(vec!["10.0.0.1:80".parse().unwrap()]);
        let new: Vec<SocketAddr> = vec!["10.0.0.2:80".parse().unwrap()];
        assert_eq!(
            after_lookup(Some(old.clone()), Ok(new.clone())).unwrap(),
            Arc::new(new)
        );
        let (kept, why) =
            after_lookup(Some(old.clone()), Err(io::Error::other("SERVFAIL"))).unwrap_err();
        assert_eq!((kept, why.as_str()), (Some(old.clone()), "SERVFAIL"));
        let (kept, why) = after_lookup(Some(old.clone()), Ok(Vec::new())).unwrap_err();
        assert_eq!(kept, Some(old));
        assert!(why.contains("no address"), "{why}");
        assert!(after_lookup(None, Err(io::Error::other("x")))
            .unwrap_err()
            .0
            .is_none());
    }
}
