//! A handle on the etcd cluster that survives the cluster's failures.
//!
//! etcd-client neither retries nor drops a dead member from its balanced channel (measured:
//! ~40% of requests failed for 15 s after one of three members died). So an [`Etcd`] keeps
//! one client bound to one member at a time; when a request fails in a way that another
//! member, or the same one a little later, could answer, it moves on to the next member and
//! retries with jittered backoff. Transitions between reachable and unreachable are logged
//! once each, never once per attempt.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::config::EtcdConfig;

/// Cheap to clone; clones share the connection and the reachability state.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    config: EtcdConfig,
    backoff: Backoff,
    current: Mutex<Current>,
    reachable: AtomicBool,
}

struct Current {
    /// Index into `config.endpoints` of the member the client talks to.
    endpoint: usize,
    client: Option<Client>,
    /// Bumped on every rotation so a stale failure report does not rotate twice.
    generation: u64,
}

/// A client plus the generation it belongs to, for [`Etcd::failed`].
pub struct Session {
    pub client: Client,
    pub generation: u64,
}

impl Session {
    /// The value to hand to [`Etcd::failed`] when this session's stream breaks.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Whether another attempt (on the same or another member) may succeed where this one
/// failed. Errors in what we asked for (bad arguments, missing lease, permission) are final.
/// What a TLS alert in an error's text means for an operator, if it holds one: etcd
/// refused the handshake (no client certificate, or one it does not trust).
pub fn tls_refusal(error: &str) -> Option<&'static str> {
    const ALERTS: [&str; 4] = [
        "BadCertificate",
        "CertificateRequired",
        "UnknownCA",
        "certificate required",
    ];
    ALERTS
        .iter()
        .any(|a| error.contains(a))
        .then_some("etcd refused the TLS handshake (check etcd.tls.cert and etcd.tls.key)")
}

pub fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code::*;
    match e {
        E::GRpcStatus(s) => matches!(
            s.code(),
            Unavailable
                | DeadlineExceeded
                | Unknown
                | Cancelled
                | Aborted
                | ResourceExhausted
                | Internal
                | Unauthenticated
        ),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

impl Etcd {
    pub fn new(config: EtcdConfig) -> Self {
        Etcd {
            inner: Arc::new(Inner {
                config,
                backoff: Backoff::default(),
                current: Mutex::new(Current {
                    endpoint: 0,
                    client: None,
                    generation: 0,
                }),
                reachable: AtomicBool::new(true),
            }),
        }
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// The endpoint currently in use; empty for a configuration without endpoints (which
    /// validation rejects, but a handle built in code must not panic on it).
    pub async fn endpoint(&self) -> String {
        let current = self.inner.current.lock().await;
        let endpoints = &self.inner.config.endpoints;
        endpoints
            .get(current.endpoint % endpoints.len().max(1))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether the last request reached etcd.
    pub fn is_reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    /// A client for the current member, connecting first if needed; a failed connect moves
    /// on to the next member. With TLS the files are read again on every connect, so renewed
    /// certificates are picked up.
    pub async fn session(&self) -> Result<Session, etcd_client::Error> {
        let mut current = self.inner.current.lock().await;
        if let Some(client) = &current.client {
            return Ok(Session {
                client: client.clone(),
                generation: current.generation,
            });
        }
        let endpoints = &self.inner.config.endpoints;
        let endpoint = endpoints
            .get(current.endpoint % endpoints.len().max(1))
            .ok_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoints".into()))?;
        let options = connect_options(&self.inner.config)?;
        let connected = tokio::time::timeout(
            self.inner.config.dial_timeout.get() + self.inner.config.request_timeout.get(),
            Client::connect([endpoint.as_str()], Some(options)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded(format!("connecting to {endpoint} timed out")),
            ))
        });
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                current.generation += 1;
                current.endpoint = (current.endpoint + 1) % endpoints.len().max(1);
                return Err(e);
            }
        };
        current.client = Some(client.clone());
        Ok(Session {
            client,
            generation: current.generation,
        })
    }

    /// Reports that `session` failed transiently: the next session goes to the next member.
    pub async fn failed(&self, session_generation: u64) {
        let mut current = self.inner.current.lock().await;
        if current.generation == session_generation {
            current.generation += 1;
            current.client = None;
            current.endpoint = (current.endpoint + 1) % self.inner.config.endpoints.len().max(1);
        }
    }

    fn mark_reachable(&self, what: &str) {
        if !self.inner.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!(op = what, "etcd reachable again");
        }
    }

    fn mark_unreachable(&self, what: &str, e: &etcd_client::Error) {
        if self.inner.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(op = what, error = %e, "etcd unreachable; retrying with backoff");
        } else {
            tracing::debug!(op = what, error = %e, "etcd still unreachable");
        }
    }

    /// Runs `op` until it succeeds or fails with an error that is not transient, moving
    /// across members with jittered backoff. Failures to connect (including rejected
    /// credentials) are always retried. Each attempt is bounded by the request timeout.
    /// `what` names the operation in logs.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut backoff = self.inner.backoff.start();
        let limit = self.inner.config.request_timeout.get() + self.inner.config.dial_timeout.get();
        loop {
            let outcome = match self.session().await {
                Ok(session) => {
                    let result = tokio::time::timeout(limit, op(session.client)).await;
                    let result = result.unwrap_or_else(|_| {
                        Err(etcd_client::Error::GRpcStatus(
                            tonic::Status::deadline_exceeded(format!(
                                "{what} took longer than {limit:?}"
                            )),
                        ))
                    });
                    (result, Some(session.generation))
                }
                Err(e) => (Err(e), None),
            };
            match outcome {
                (Ok(value), _) => {
                    self.mark_reachable(what);
                    return Ok(value);
                }
                // Connecting never gives up: a wrong password or certificate is logged and
                // retried, so fixing it on the etcd side needs no restart here.
                (Err(e), None) => {
                    self.mark_unreachable(what, &e);
                    backoff.wait().await;
                }
                (Err(e), Some(generation)) if is_transient(&e) => {
                    self.mark_unreachable(what, &e);
                    self.failed(generation).await;
                    backoff.wait().await;
                }
                (Err(e), _) => {
                    // The member answered; the request itself was wrong.
                    self.mark_reachable(what);
                    return Err(e);
                }
            }
        }
    }
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout.get())
        .with_timeout(config.request_timeout.get())
        .with_keep_alive(
            config.keepalive_interval.get(),
            config.keepalive_timeout.get(),
        )
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                etcd_client::Error::InvalidArgs(format!("cannot read {}: {e}", p.display()))
            })
        };
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &tls.domain {
            t = t.domain_name(domain.clone());
        }
        options = options.with_tls(t);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alert_is_named_for_the_operator() {
        let e = "transport error: Custom { kind: InvalidData, error: \"received fatal alert: BadCertificate\" }";
        assert!(tls_refusal(e).is_some_and(|h| h.contains("etcd.tls.cert")));
        assert_eq!(tls_refusal("connection refused"), None);
    }
}
