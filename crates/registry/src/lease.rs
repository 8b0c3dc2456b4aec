//! One lease for a whole process, kept alive for as long as the process wants it.
//!
//! etcd charges per lease, and a single lease makes deregistration one request (revoke deletes
//! every key bound to it). etcd-client's keeper sends nothing by itself, so a task here sends a
//! keepalive about every TTL/3 and reads the answer. The lease is considered lost when etcd
//! says so (`ttl <= 0`, "lease not found", the data dir was wiped, someone ran `etcdctl lease
//! revoke`) or when no keepalive got through for a whole TTL (etcd has expired it by then).
//! A lost lease is replaced by a newly granted one at once; the id in force is published on a
//! [`tokio::sync::watch`] channel so that writers re-put their keys under it. `None` means
//! "no lease right now": nothing written earlier can be assumed to exist.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::etcd::{is_transient, Etcd};

/// Whether `e` says that the lease does not exist (any more).
pub fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound || s.message().contains("lease not found")
        }
        // etcd-client reports a first keepalive answer with ttl <= 0 this way.
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        _ => false,
    }
}

/// The owner's side: keeps the lease alive until [`Lease::revoke`] or drop.
pub struct Lease {
    handle: LeaseHandle,
    task: Option<JoinHandle<()>>,
    etcd: Etcd,
}

/// What writers need: the current lease id, and a way to say it turned out to be gone.
#[derive(Clone)]
pub struct LeaseHandle {
    current: watch::Receiver<Option<i64>>,
    lost: mpsc::UnboundedSender<i64>,
}

impl LeaseHandle {
    /// A receiver of the lease id in force (`None` while there is none).
    pub fn subscribe(&self) -> watch::Receiver<Option<i64>> {
        self.current.clone()
    }

    pub fn current(&self) -> Option<i64> {
        *self.current.borrow()
    }

    /// Tells the keeper that a request using lease `id` failed with "lease not found", so
    /// it grants a new one now instead of at its next keepalive.
    pub fn report_lost(&self, id: i64) {
        // The keeper has stopped only while shutting down; then nobody needs a new lease.
        let _ = self.lost.send(id);
    }
}

impl Lease {
    /// Starts granting and keeping a lease of `ttl` (whole seconds, at least 1; rounded up)
    /// in the background. Returns at once, also when etcd is down: the id is published as
    /// soon as a grant succeeds.
    pub fn start(etcd: Etcd, ttl: Duration) -> Lease {
        let (current_tx, current_rx) = watch::channel(None);
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let ttl_secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let keeper = Keeper {
            etcd: etcd.clone(),
            ttl: Duration::from_secs(ttl_secs as u64),
            ttl_secs,
            current: current_tx,
            lost: lost_rx,
        };
        let task = tokio::spawn(keeper.run());
        Lease {
            handle: LeaseHandle {
                current: current_rx,
                lost: lost_tx,
            },
            task: Some(task),
            etcd,
        }
    }

    pub fn handle(&self) -> LeaseHandle {
        self.handle.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<i64>> {
        self.handle.subscribe()
    }

    pub fn current(&self) -> Option<i64> {
        self.handle.current()
    }

    /// Stops the keepalives and revokes the current lease, which deletes every key bound to
    /// it in one request. Gives up after `deadline` (the keys then expire with the TTL).
    /// Returns the revoked lease id, or `None` if there was none or the revoke failed.
    pub async fn revoke(mut self, deadline: Duration) -> Option<i64> {
        // Aborted, not asked to stop: while etcd is unreachable the keeper may be inside a
        // request (a keepalive in flight, a connect) that would hold the stop for its own
        // timeout, on top of `deadline`. Dropping a request mid-way harms nothing.
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let id = self.handle.current()?;
        let revoked = tokio::time::timeout(
            deadline,
            self.etcd.retry("lease revoke", |mut c| async move {
                match c.lease_revoke(id).await {
                    Ok(_) => Ok(()),
                    // Already gone: the keys are gone with it, which is what we wanted.
                    Err(e) if is_lease_not_found(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            }),
        )
        .await;
        match revoked {
            Ok(Ok(())) => {
                tracing::info!(lease = id, "lease revoked; its keys are deleted");
                Some(id)
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = id, error = %e, "lease revoke failed; keys expire with the TTL");
                None
            }
            Err(_) => {
                tracing::warn!(
                    lease = id,
                    ?deadline,
                    "lease revoke timed out; keys expire with the TTL"
                );
                None
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Keeper {
    etcd: Etcd,
    ttl: Duration,
    ttl_secs: i64,
    current: watch::Sender<Option<i64>>,
    lost: mpsc::UnboundedReceiver<i64>,
}

/// Why keeping a lease ended (the keeper is aborted to stop it).
enum End {
    Lost(String),
}

impl Keeper {
    async fn run(mut self) {
        let mut backoff = Backoff::default().start();
        loop {
            let ttl_secs = self.ttl_secs;
            let granted = self
                .etcd
                .retry("lease grant", |mut c| async move {
                    c.lease_grant(ttl_secs, None).await
                })
                .await;
            let id = match granted {
                Ok(resp) => resp.id(),
                Err(e) => {
                    // Not transient (e.g. permission denied): etcd answered but refused. Keep
                    // trying slowly; an operator may fix the role while we run.
                    tracing::error!(error = %e, "etcd refused to grant a lease");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            tracing::info!(lease = id, ttl = ?self.ttl, "lease granted");
            self.current.send_replace(Some(id));
            let End::Lost(why) = self.keep(id).await;
            tracing::warn!(lease = id, reason = %why, "lease lost; granting a new one");
            self.current.send_replace(None);
        }
    }

    /// Keeps lease `id` alive until it is lost. The stream is reopened (on
    /// the next member) whenever it breaks; the lease only counts as lost when etcd says so
    /// or when a whole TTL passed without a successful keepalive.
    async fn keep(&mut self, id: i64) -> End {
        let period = (self.ttl / 3).max(Duration::from_millis(200));
        let request_timeout = self.etcd.config().request_timeout.get();
        let mut alive_until = Instant::now() + self.ttl;
        let mut backoff = Backoff::default().start();
        // Logged once when keepalives start failing and once when they work again.
        let mut failing = false;
        loop {
            if Instant::now() >= alive_until {
                return End::Lost(format!("no keepalive got through for {:?}", self.ttl));
            }
            let session = match self.etcd.session().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(lease = id, error = %e, "cannot connect for keepalive");
                    note_failure(&mut failing, id, self.ttl);
                    if let Some(end) = self.pause(&mut backoff, id).await {
                        return end;
                    }
                    continue;
                }
            };
            let mut client = session.client.clone();
            let opened = tokio::time::timeout(request_timeout, client.lease_keep_alive(id)).await;
            let (mut keeper, mut stream) = match opened {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) if is_lease_not_found(&e) => {
                    return End::Lost("etcd no longer knows the lease".into())
                }
                Ok(Err(e)) => {
                    tracing::debug!(lease = id, error = %e, "keepalive stream failed to open");
                    note_failure(&mut failing, id, self.ttl);
                    if is_transient(&e) {
                        self.etcd.failed(session.generation()).await;
                    }
                    if let Some(end) = self.pause(&mut backoff, id).await {
                        return end;
                    }
                    continue;
                }
                Err(_) => {
                    note_failure(&mut failing, id, self.ttl);
                    self.etcd.failed(session.generation()).await;
                    if let Some(end) = self.pause(&mut backoff, id).await {
                        return end;
                    }
                    continue;
                }
            };
            // Opening the stream sent a first keepalive and read a positive TTL back.
            alive_until = Instant::now() + self.ttl;
            backoff.reset();
            if std::mem::take(&mut failing) {
                tracing::info!(lease = id, "lease keepalive works again");
            }
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(reported) = self.lost.recv() => {
                        if reported == id {
                            return End::Lost("a write said the lease is not found".into());
                        }
                        continue;
                    }
                }
                let sent = keeper.keep_alive().await;
                let answer = match sent {
                    Ok(()) => {
                        tokio::time::timeout(request_timeout.min(self.ttl), stream.message()).await
                    }
                    Err(e) => Ok(Err(e)),
                };
                match answer {
                    Ok(Ok(Some(resp))) if resp.ttl() <= 0 => {
                        return End::Lost("keepalive answered ttl <= 0".into())
                    }
                    Ok(Ok(Some(_))) => alive_until = Instant::now() + self.ttl,
                    Ok(Err(e)) if is_lease_not_found(&e) => {
                        return End::Lost("etcd no longer knows the lease".into())
                    }
                    other => {
                        tracing::debug!(lease = id, answer = ?other.map(|r| r.map(|_| ())), "keepalive stream broke; reopening");
                        self.etcd.failed(session.generation()).await;
                        note_failure(&mut failing, id, self.ttl);
                        break;
                    }
                }
                if Instant::now() >= alive_until {
                    break;
                }
            }
        }
    }

    /// Waits a backoff step; `Some` if the lease is reported lost meanwhile.
    async fn pause(&mut self, backoff: &mut crate::backoff::BackoffState, id: i64) -> Option<End> {
        tokio::select! {
            _ = backoff.wait() => None,
            Some(reported) = self.lost.recv() => (reported == id).then(|| End::Lost("a write said the lease is not found".into())),
        }
    }
}

/// Logs the start of a streak of keepalive failures, once.
fn note_failure(failing: &mut bool, id: i64, ttl: Duration) {
    if !std::mem::replace(failing, true) {
        tracing::warn!(
            lease = id,
            ?ttl,
            "lease keepalive failing; retrying on other etcd members until the TTL runs out"
        );
    }
}
