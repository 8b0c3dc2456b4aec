//! The admin HTTP server (loopback only), [`daemon::admin`]'s: `GET /status` returns the
//! state of every service as JSON (see `docs/synapse.md` for the fields), `GET /metrics`
//! the same in the OpenMetrics text format ([`crate::metrics`]), `GET /health` answers `ok`,
//! `GET /ready` 200 once every service has a backend set (503 listing those still waiting),
//! `GET /` serves the live dashboard (`assets/dashboard.*`), which polls `/status`.
//!
//! It reads the same lock-free snapshots the forwarder uses, so a busy status poller
//! never slows connections down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use daemon::admin::{AdminServer, Routes};
use daemon::dashboard::Page;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::metrics::{self, Snapshot};

/// Every service's status right now; the admin server's view of synapse.
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// The services with no backend set yet (`GET /ready`), without building their status.
pub type WaitingFn = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// A running admin server; dropping it stops it.
pub struct Admin(AdminServer);

impl Admin {
    /// Serves on `listener`, bound at `addr` (a loopback address: the configuration
    /// accepts no other), so this cannot fail.
    /// `per_backend` is `metrics.per_backend`, read at each scrape (a reload changes it).
    pub fn start(listener: TcpListener, addr: SocketAddr, views: Views) -> Self {
        Admin(AdminServer::serve_bound(listener, addr, Arc::new(views)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

/// The live dashboard at `GET /` (`assets/`: compiled in, nothing fetched from elsewhere).
const PAGE: Page = Page {
    html: include_str!("../assets/dashboard.html"),
    script: include_str!("../assets/dashboard.js"),
};

/// What the admin server sees of synapse.
pub struct Views {
    pub snapshot: SnapshotFn,
    pub waiting: WaitingFn,
    /// `metrics.per_backend`, read at each scrape (a reload changes it).
    pub per_backend: Arc<AtomicBool>,
}

impl Routes for Views {
    fn status(&self) -> Value {
        serde_json::json!({ "services": (self.snapshot)() })
    }

    fn metrics(&self) -> Option<String> {
        let per_backend = self.per_backend.load(Ordering::Relaxed);
        Some(metrics::text(
            &(self.snapshot)(),
            per_backend,
            env!("CARGO_PKG_VERSION"),
        ))
    }

    /// Ready once every configured service has a backend set (from etcd, the cache file or
    /// `default_servers`).
    fn waiting_for(&self) -> Option<Vec<String>> {
        Some((self.waiting)())
    }

    fn page(&self) -> Option<Page> {
        Some(PAGE)
    }

    fn endpoints(&self) -> Vec<&'static str> {
        vec!["GET /health", "GET /status", "GET /metrics", "GET /ready"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page loads is compiled in; its links go to routes served here.
    #[test]
    fn the_page_references_only_what_this_server_serves() {
        for reference in daemon::dashboard::references(PAGE.html) {
            let served = daemon::dashboard::file(&PAGE, &format!("/{reference}")).is_some()
                || ["status", "metrics"].contains(&reference);
            assert!(
                served,
                "the page references {reference:?}, which is not served"
            );
        }
    }
}
