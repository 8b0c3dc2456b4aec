//! nerve's routes on the shared admin server ([`daemon::admin`], loopback only):
//!
//! - `GET /health`: `ok`.
//! - `GET /`: the live dashboard (`assets/dashboard.*`), which polls `/status`.
//! - `GET /status`: JSON `{"lease": "hex id"|null, "etcd": {"reachable": bool},
//!   "instances": [InstanceStatus...]}`.
//! - `GET /ready`: 200 once every instance has had its first round of checks and a lease
//!   is held, else 503 naming what it waits for.
//! - `POST /instances/{id}/disable` | `/enable`: maintenance for one instance (`{id}` as in
//!   its key; `/services/{name}/instances/{id}/...` where two services share an id).
//! - `PUT /instances/{id}/weight`, body `5` or `{"weight": 5}`: a runtime weight.
//! - `POST /services/{name}/disable` | `/enable`: maintenance for every instance of a service.
//! - `POST /disable` | `/enable`: the same for every service.
//!
//! The switches stack ([`crate::switches`] says how): an instance is out while any of them
//! (or its maintenance file) holds it. So each call answers the effective state of the
//! instances it affects and what holds them, not the switch's own new position.
//!
//! What is set here lives in memory: it survives SIGHUP but not a restart (use
//! `maintenance_file` for maintenance that must survive one, the configuration for weights).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use daemon::admin::{AdminServer, Reply, Routes};
use daemon::dashboard::Page;
use hyper::{Method, StatusCode};
use registry::lease::LeaseId;
use registry::Etcd;
use serde_json::{json, Value};

use crate::state::{InstanceId, InstanceStatus, Shared};
use crate::switches::Scope;

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

    /// The effective state of every instance `covered` selects, for the answer to a call
    /// on `scope`.
    fn effective(&self, scope: &str, covered: impl Fn(&InstanceStatus) -> bool) -> Value {
        let instances: Vec<Value> = self
            .shared
            .statuses()
            .into_iter()
            .filter(|s| covered(s))
            .map(|s| {
                json!({
                    "service": s.service,
                    "id": s.instance_id,
                    "maintenance": s.maintenance,
                    "held_by": s.maintenance_reasons,
                    "healthy": s.healthy,
                    "registered": s.registered,
                    "weight": s.weight,
                    "effective_weight": s.effective_weight,
                })
            })
            .collect();
        json!({ "scope": scope, "instances": instances })
    }

    /// The one instance `/instances/{id}` (or `/services/{name}/instances/{id}`) names.
    fn instance(&self, service: Option<&str>, id: &str) -> Result<InstanceId, Reply> {
        let mut found = self.shared.find(service, id);
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => {
                let error = match service {
                    Some(name) => format!("nerve runs no instance {id:?} of service {name:?}"),
                    None => format!("nerve runs no instance with id {id:?}"),
                };
                Err((StatusCode::NOT_FOUND, json!({ "error": error })))
            }
            _ => {
                let services: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
                let error = format!(
                    "instance id {id:?} is used by services {services:?}: \
                     use /services/{{name}}/instances/{id}/..."
                );
                Err((StatusCode::CONFLICT, json!({ "error": error })))
            }
        }
    }

    /// `.../instances/{id}/disable|enable|weight`.
    fn on_instance(&self, service: Option<&str>, id: &str, action: &str, body: &[u8]) -> Reply {
        let target = match self.instance(service, id) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        if action == "weight" {
            let weight = match parse_weight(body) {
                Ok(w) => w,
                Err(error) => return (StatusCode::BAD_REQUEST, json!({ "error": error })),
            };
            self.shared.set_weight(&target, weight);
        } else {
            self.shared
                .set_disabled(Scope::Instance(&target), action == "disable");
        }
        let scope = format!("instance {}/{}", target.0, target.1);
        let answer = self.effective(&scope, |s| {
            s.service == target.0 && s.instance_id == target.1
        });
        (StatusCode::OK, answer)
    }
}

/// The largest runtime weight accepted: registry records hold a `u32`.
const MAX_WEIGHT: u64 = u32::MAX as u64;

/// A weight from a `PUT .../weight` body: the integer alone (`curl -d 5`) or
/// `{"weight": 5}`.
pub fn parse_weight(body: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "the body is not UTF-8 text".to_owned())?
        .trim();
    let value = if text.starts_with('{') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("the body is not valid JSON: {e}"))?;
        let Some(w) = v.get("weight") else {
            return Err("the JSON body has no \"weight\" field".to_owned());
        };
        w.as_u64().ok_or_else(|| {
            format!("\"weight\" must be a whole number from 0 to {MAX_WEIGHT}, not {w}")
        })?
    } else if text.is_empty() {
        return Err("the body is empty: send the weight, e.g. `-d 5`".to_owned());
    } else {
        let shown: String = text.chars().take(40).collect();
        text.parse::<u64>().map_err(|_| {
            format!("the body must be a whole number from 0 to {MAX_WEIGHT} or {{\"weight\": N}}, not {shown:?}")
        })?
    };
    u32::try_from(value).map_err(|_| format!("weight {value} is over {MAX_WEIGHT}"))
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

    fn action_method(&self, segments: &[&str]) -> Option<Method> {
        match segments {
            ["disable" | "enable"]
            | ["services", _, "disable" | "enable"]
            | ["instances", _, "disable" | "enable"]
            | ["services", _, "instances", _, "disable" | "enable"] => Some(Method::POST),
            ["instances", _, "weight"] | ["services", _, "instances", _, "weight"] => {
                Some(Method::PUT)
            }
            _ => None,
        }
    }

    fn act(&self, segments: &[&str], body: &[u8]) -> Reply {
        let (service, action) = match segments {
            ["instances", id, action] => return self.on_instance(None, id, action, body),
            ["services", name, "instances", id, action] => {
                return self.on_instance(Some(name), id, action, body)
            }
            [action] => (None, *action),
            ["services", name, action] => (Some(*name), *action),
            _ => return (StatusCode::NOT_FOUND, json!({ "error": "not found" })),
        };
        let scope = service.map_or(Scope::All, Scope::Service);
        if !self.shared.set_disabled(scope, action == "disable") {
            let name = service.unwrap_or_default();
            let error = format!("nerve runs no service named {name:?}");
            return (StatusCode::NOT_FOUND, json!({ "error": error }));
        }
        let answer = self.effective(service.unwrap_or("all"), |s| {
            service.is_none_or(|name| s.service == name)
        });
        (StatusCode::OK, answer)
    }

    fn waiting_for(&self) -> Option<Vec<String>> {
        Some(self.shared.waiting_for())
    }

    fn page(&self) -> Option<Page> {
        Some(PAGE)
    }

    fn endpoints(&self) -> Vec<&'static str> {
        vec![
            "GET /health",
            "GET /status",
            "GET /metrics",
            "GET /ready",
            "POST /disable",
            "POST /enable",
            "POST /services/{name}/disable",
            "POST /services/{name}/enable",
            "POST /instances/{id}/disable",
            "POST /instances/{id}/enable",
            "PUT /instances/{id}/weight",
            "POST /services/{name}/instances/{id}/disable|enable",
            "PUT /services/{name}/instances/{id}/weight",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_is_the_integer_alone_or_a_json_object() {
        assert_eq!(parse_weight(b"5"), Ok(5));
        assert_eq!(parse_weight(b" 0\n"), Ok(0));
        assert_eq!(parse_weight(br#"{"weight": 95}"#), Ok(95));
        for (body, says) in [
            (&b""[..], "empty"),
            (b"-1", "whole number"),
            (b"five", "\"five\""),
            (b"4294967296", "over"),
            (br#"{"weight": "5"}"#, "whole number"),
            (br#"{"w": 5}"#, "no \"weight\""),
            (b"{not json", "not valid JSON"),
            (b"\xff", "UTF-8"),
        ] {
            let error = parse_weight(body).expect_err("refused");
            assert!(error.contains(says), "{body:?}: {error}");
        }
    }

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
