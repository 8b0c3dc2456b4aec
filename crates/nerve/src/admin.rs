//! nerve's routes on the shared admin server ([`daemon::admin`], loopback only):
//!
//! - `GET /health`: `ok`.
//! - `GET /`: the live dashboard (`assets/dashboard.*`), which polls `/status`.
//! - `GET /status`: JSON `{"lease": "hex id"|null, "etcd": {"reachable": bool},
//!   "instances": [InstanceStatus...]}`.
//! - `POST /services/{name}/disable` | `/enable`: maintenance for every instance of a service.
//! - `POST /disable` | `/enable`: the same for every service.
//!
//! The switches stack: an instance is out while any of them (or its maintenance file) holds
//! it. So each POST answers the effective state of the instances it affects and what holds
//! them, not the switch's own new position.
//!
//! Maintenance set here lives in memory: it survives SIGHUP but not a restart (use
//! `maintenance_file` for maintenance that must survive one).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use daemon::admin::{AdminServer, Reply, Routes};
use daemon::dashboard::Page;
use hyper::StatusCode;
use registry::lease::LeaseId;
use registry::Etcd;
use serde_json::{json, Value};

use crate::state::Shared;

/// The etcd handle in force: a reload that changes the etcd settings replaces it.
pub type EtcdSlot = Arc<Mutex<Etcd>>;

/// Binds `addr` and serves nerve's routes until stopped.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    etcd: EtcdSlot,
) -> std::io::Result<AdminServer> {
    AdminServer::bind(addr, Arc::new(NerveRoutes { shared, etcd })).await
}

/// The live dashboard at `GET /` (`assets/`: compiled in, nothing fetched from elsewhere).
const PAGE: Page = Page {
    html: include_str!("../assets/dashboard.html"),
    script: include_str!("../assets/dashboard.js"),
};

struct NerveRoutes {
    shared: Arc<Shared>,
    etcd: EtcdSlot,
}

impl NerveRoutes {
    /// Whether the last request to etcd got an answer.
    fn etcd_reachable(&self) -> bool {
        // The slot only ever holds a complete handle; a panic elsewhere cannot break it.
        let etcd = self.etcd.lock().unwrap_or_else(|p| p.into_inner());
        etcd.is_reachable()
    }

    /// The effective maintenance state of every instance of `service` (all for `None`).
    fn effective(&self, service: Option<&str>) -> Value {
        let instances: Vec<Value> = self
            .shared
            .statuses()
            .into_iter()
            .filter(|s| service.is_none_or(|name| s.service == name))
            .map(|s| {
                json!({
                    "service": s.service,
                    "id": s.instance_id,
                    "maintenance": s.maintenance,
                    "held_by": s.maintenance_reasons,
                })
            })
            .collect();
        json!({ "scope": service.unwrap_or("all"), "instances": instances })
    }
}

impl Routes for NerveRoutes {
    fn metrics(&self) -> Option<String> {
        let instances = self.shared.counted();
        Some(crate::metrics::text(&crate::metrics::Scrape {
            instances: &instances,
            etcd_reachable: self.etcd_reachable(),
            leased: self.shared.lease().is_some(),
            process: self.shared.counters(),
            version: env!("CARGO_PKG_VERSION"),
        }))
    }

    fn status(&self) -> Value {
        json!({
            "lease": self.shared.lease().map(LeaseId),
            "etcd": { "reachable": self.etcd_reachable() },
            "instances": self.shared.statuses(),
        })
    }

    fn is_post(&self, segments: &[&str]) -> bool {
        matches!(
            segments,
            ["disable" | "enable"] | ["services", _, "disable" | "enable"]
        )
    }

    fn post(&self, segments: &[&str]) -> Reply {
        let (service, action) = match segments {
            [action] => (None, *action),
            ["services", name, action] => (Some(*name), *action),
            _ => return (StatusCode::NOT_FOUND, json!({ "error": "not found" })),
        };
        if !self.shared.set_disabled(service, action == "disable") {
            let name = service.unwrap_or_default();
            let error = format!("nerve runs no service named {name:?}");
            return (StatusCode::NOT_FOUND, json!({ "error": error }));
        }
        (StatusCode::OK, self.effective(service))
    }

    fn page(&self) -> Option<Page> {
        Some(PAGE)
    }

    fn endpoints(&self) -> Vec<&'static str> {
        vec![
            "GET /health",
            "GET /status",
            "GET /metrics",
            "POST /disable",
            "POST /enable",
            "POST /services/{name}/disable",
            "POST /services/{name}/enable",
        ]
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
