//! The admin HTTP server (loopback only), [`daemon::admin`]'s: `GET /status` returns the
//! state of every service as JSON (see `docs/synapse.md` for the fields); `GET /health`
//! answers `ok`.
//!
//! It reads the same lock-free snapshots the forwarder uses, so a busy status poller
//! never slows connections down.

use std::net::SocketAddr;
use std::sync::Arc;

use daemon::admin::{AdminServer, StatusOnly};
use tokio::net::TcpListener;

/// Produces the status document.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A running admin server; dropping it stops it.
pub struct Admin(AdminServer);

impl Admin {
    /// Serves on `listener`, bound at `addr` (a loopback address: the configuration
    /// accepts no other), so this cannot fail.
    pub fn start(listener: TcpListener, addr: SocketAddr, status: StatusFn) -> Self {
        let routes = Arc::new(StatusOnly(move || status()));
        Admin(AdminServer::serve_bound(listener, addr, routes))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}
