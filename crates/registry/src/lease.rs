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
//!
//! A lease given up that way may still live: a restarted etcd gives every lease a fresh TTL,
//! so the keys of an instance that died during the outage would stay for another TTL. Such
//! superseded leases are revoked by a second task once a newer lease is in force and its
//! writers report having moved their keys to it ([`LeaseHandle::settled`]), or at the latest
//! `request_timeout + dial_timeout` after the new grant; retried until etcd revokes them or
//! says they are gone. While etcd does not answer, both tasks try again every 0.25-0.5 s
//! (not the 5 s of other requests): the keeper is what notices etcd's return.
//!
//! How often keepalives failed and leases were lost is counted in [`LeaseCounters`], for a
//! program's metrics.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::etcd::{is_transient, Etcd};

/// Pacing of the lease tasks while etcd does not answer; see the module documentation.
const PROBE: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_millis(500),
};

/// A lease id shown as etcdctl shows it: 16 lowercase hex digits (`094d8a1b2c3d4e5f`). In decimal it
/// matched nothing an operator could paste into `etcdctl lease timetolive`, and JSON readers
/// such as `jq` rounded it (ids use all 63 bits; a double keeps 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for LeaseId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// For `#[serde(serialize_with)]` on an `Option<i64>` lease id: the hex string, or null.
pub fn serialize_hex<S: serde::Serializer>(id: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&id.map(LeaseId), s)
}

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

/// How keeping leases went, for a program's metrics. A program that replaces its lease (a
/// reload moving to other etcd settings) hands the same counters to the new one
/// ([`Lease::start_counting`]), so the counts never go back.
#[derive(Debug, Default)]
pub struct LeaseCounters {
    keepalive_failures: AtomicU64,
    lost: AtomicU64,
}

impl LeaseCounters {
    /// Keepalives that got no answer: the stream could not be opened or broke, or etcd could
    /// not be reached. Counted per attempt; the log says when a streak starts and ends.
    pub fn keepalive_failures(&self) -> u64 {
        self.keepalive_failures.load(Ordering::Relaxed)
    }

    /// Leases given up because etcd no longer knew them or no keepalive got through for a
    /// whole TTL (each followed by a new grant). A revoke on request is not a loss.
    pub fn leases_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Leases given up but possibly still alive in etcd, shared by the keeper (adds), the
/// releaser (removes once revoked) and [`Lease::revoke`] (revokes what is left at the end).
type Superseded = Arc<watch::Sender<BTreeSet<i64>>>;

/// The owner's side: keeps the lease alive until [`Lease::revoke`] or drop.
pub struct Lease {
    handle: LeaseHandle,
    /// The keeper and the releaser; aborted on revoke and drop.
    tasks: Vec<JoinHandle<()>>,
    etcd: Etcd,
    superseded: Superseded,
}

/// What writers need: the current lease id, and a way to say it turned out to be gone.
#[derive(Clone)]
pub struct LeaseHandle {
    current: watch::Receiver<Option<i64>>,
    lost: mpsc::UnboundedSender<i64>,
    settled: Arc<watch::Sender<Option<i64>>>,
    reconnected: watch::Receiver<u64>,
    counters: Arc<LeaseCounters>,
}

impl LeaseHandle {
    /// What the lease's tasks counted so far.
    pub fn counters(&self) -> &LeaseCounters {
        &self.counters
    }

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

    /// Tells the lease that everything this writer keeps is written under lease `id`: the
    /// leases given up before it can be revoked without taking any of those keys along.
    pub fn settled(&self, id: i64) {
        self.settled.send_if_modified(|s| {
            let changed = *s != Some(id);
            *s = Some(id);
            changed
        });
    }

    /// A receiver that changes whenever keepalives get through again after failing: etcd
    /// answers again, so a request waiting out a long backoff step may start over at once.
    /// Only changes after this call count.
    pub fn reconnected(&self) -> watch::Receiver<u64> {
        let mut rx = self.reconnected.clone();
        rx.mark_unchanged();
        rx
    }
}

impl Lease {
    /// Starts granting and keeping a lease of `ttl` (whole seconds, at least 1; rounded up)
    /// in the background. Returns at once, also when etcd is down: the id is published as
    /// soon as a grant succeeds.
    pub fn start(etcd: Etcd, ttl: Duration) -> Lease {
        Lease::start_counting(etcd, ttl, Arc::default())
    }

    /// [`Lease::start`], counting into `counters` (which may have counted for an earlier
    /// lease of the same program).
    pub fn start_counting(etcd: Etcd, ttl: Duration, counters: Arc<LeaseCounters>) -> Lease {
        let (current_tx, current_rx) = watch::channel(None);
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let (reconnected_tx, reconnected_rx) = watch::channel(0);
        let settled = Arc::new(watch::channel(None).0);
        let superseded: Superseded = Arc::new(watch::channel(BTreeSet::new()).0);
        let ttl_secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let keeper = Keeper {
            etcd: etcd.clone(),
            ttl: Duration::from_secs(ttl_secs as u64),
            ttl_secs,
            current: current_tx,
            lost: lost_rx,
            reconnected: reconnected_tx,
            superseded: superseded.clone(),
            counters: counters.clone(),
        };
        let config = etcd.config();
        let releaser = Releaser {
            etcd: etcd.clone(),
            current: current_rx.clone(),
            settled: settled.subscribe(),
            superseded: superseded.clone(),
            grace: config.request_timeout.get() + config.dial_timeout.get(),
        };
        let tasks = vec![tokio::spawn(keeper.run()), tokio::spawn(releaser.run())];
        Lease {
            handle: LeaseHandle {
                current: current_rx,
                lost: lost_tx,
                settled,
                reconnected: reconnected_rx,
                counters,
            },
            tasks,
            etcd,
            superseded,
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
    /// it in one request, and any superseded lease not revoked yet. Gives up after
    /// `deadline` (the keys then expire with the TTL). Returns the revoked lease id, or
    /// `None` if there was none or the revoke failed.
    pub async fn revoke(mut self, deadline: Duration) -> Option<i64> {
        // Aborted, not asked to stop: while etcd is unreachable the tasks may be inside a
        // request (a keepalive in flight, a connect) that would hold the stop for its own
        // timeout, on top of `deadline`. Dropping a request mid-way harms nothing.
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        let until = tokio::time::Instant::now() + deadline;
        let revoked = match self.handle.current() {
            Some(id) => self.revoke_current(id, until, deadline).await,
            None => None,
        };
        let superseded: Vec<i64> = self.superseded.borrow().iter().copied().collect();
        for id in superseded {
            match revoke_until(&self.etcd, id, until).await {
                Ok(()) => tracing::info!(lease = %LeaseId(id), "superseded lease revoked"),
                Err(e) => {
                    let lease = LeaseId(id);
                    tracing::warn!(%lease, error = %e, "superseded lease not revoked; its keys expire with its TTL")
                }
            }
        }
        revoked
    }

    async fn revoke_current(
        &self,
        id: i64,
        until: tokio::time::Instant,
        deadline: Duration,
    ) -> Option<i64> {
        match revoke_until(&self.etcd, id, until).await {
            Ok(()) => {
                tracing::info!(lease = %LeaseId(id), "lease revoked; its keys are deleted");
                Some(id)
            }
            Err(RevokeError::Failed(e)) => {
                tracing::warn!(lease = %LeaseId(id), error = %e, "lease revoke failed; keys expire with the TTL");
                None
            }
            Err(RevokeError::TimedOut) => {
                tracing::warn!(
                    lease = %LeaseId(id),
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
        for task in &self.tasks {
            task.abort();
        }
    }
}

enum RevokeError {
    Failed(etcd_client::Error),
    TimedOut,
}

impl std::fmt::Display for RevokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevokeError::Failed(e) => write!(f, "{e}"),
            RevokeError::TimedOut => write!(f, "timed out"),
        }
    }
}

/// Revokes lease `id`, retrying until `until`. A lease etcd does not know is gone with its
/// keys, which is what a revoke is for, so that counts as revoked.
async fn revoke_until(
    etcd: &Etcd,
    id: i64,
    until: tokio::time::Instant,
) -> Result<(), RevokeError> {
    let revoked = tokio::time::timeout_at(
        until,
        etcd.retry("lease revoke", |mut c| async move {
            match c.lease_revoke(id).await {
                Ok(_) => Ok(()),
                Err(e) if is_lease_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }),
    )
    .await;
    match revoked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RevokeError::Failed(e)),
        Err(_) => Err(RevokeError::TimedOut),
    }
}

/// How one attempt of [`attempt`] failed.
enum Failure {
    /// Another attempt, on this member or the next, may succeed.
    Transient(etcd_client::Error),
    /// etcd answered and refused.
    Final(etcd_client::Error),
}

/// One request on the current member, bounded like each attempt of [`Etcd::retry`]; a
/// transient failure moves the handle to the next member. The lease tasks pace their own
/// retries ([`PROBE`]) instead of using [`Etcd::retry`], whose backoff grows to 5 s.
async fn attempt<T, F, Fut>(etcd: &Etcd, op: F) -> Result<T, Failure>
where
    F: FnOnce(etcd_client::Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let config = etcd.config();
    let limit = config.request_timeout.get() + config.dial_timeout.get();
    let session = etcd.session().await.map_err(Failure::Transient)?;
    let generation = session.generation();
    let error = match tokio::time::timeout(limit, op(session.client)).await {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(e)) if !is_transient(&e) => return Err(Failure::Final(e)),
        Ok(Err(e)) => e,
        Err(_) => etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!(
            "no answer within {limit:?}"
        ))),
    };
    etcd.failed(generation).await;
    Err(Failure::Transient(error))
}

/// Revokes superseded leases; see the module documentation.
struct Releaser {
    etcd: Etcd,
    current: watch::Receiver<Option<i64>>,
    settled: watch::Receiver<Option<i64>>,
    superseded: Superseded,
    /// How long writers may take to move to a new lease before the old ones go anyway.
    grace: Duration,
}

impl Releaser {
    async fn run(mut self) {
        let mut pending = self.superseded.subscribe();
        loop {
            if pending.wait_for(|s| !s.is_empty()).await.is_err() {
                return;
            }
            self.successor_settled().await;
            let ids: Vec<i64> = self.superseded.borrow().iter().copied().collect();
            for id in ids {
                self.revoke(id).await;
                self.superseded.send_modify(|s| {
                    s.remove(&id);
                });
            }
        }
    }

    /// Waits until a lease is in force and its writers have moved to it, or `grace` has
    /// passed since it was granted (a lease may have no writers, or one that cannot write).
    async fn successor_settled(&mut self) {
        loop {
            // Copied out first: the borrow must not live across the awaits below.
            let current = *self.current.borrow_and_update();
            let Some(id) = current else {
                if self.current.changed().await.is_err() {
                    // The keeper is gone: the lease is being revoked or dropped.
                    return std::future::pending().await;
                }
                continue;
            };
            // `Some(true)`: go ahead; `Some(false)`: a channel closed (the lease is being
            // revoked or dropped); `None`: lease `id` was lost too, wait for the next one.
            let ready = tokio::select! {
                settled = self.settled.wait_for(|s| *s == Some(id)) => Some(settled.is_ok()),
                _ = tokio::time::sleep(self.grace) => Some(true),
                changed = self.current.changed() => changed.is_err().then_some(false),
            };
            match ready {
                Some(true) => return,
                Some(false) => return std::future::pending().await,
                None => continue,
            }
        }
    }

    /// Revokes `id` until etcd has done it or says it is gone.
    async fn revoke(&self, id: i64) {
        let mut unreachable = PROBE.start();
        let mut refused = Backoff::default().start();
        loop {
            let revoked =
                attempt(&self.etcd, |mut c| async move { c.lease_revoke(id).await }).await;
            match revoked {
                Ok(_) => {
                    tracing::info!(
                        lease = %LeaseId(id),
                        "superseded lease revoked; keys still bound to it are deleted"
                    );
                    return;
                }
                Err(Failure::Final(e)) if is_lease_not_found(&e) => {
                    tracing::debug!(lease = %LeaseId(id), "superseded lease already gone");
                    return;
                }
                Err(Failure::Transient(e)) => {
                    tracing::debug!(lease = %LeaseId(id), error = %e, "cannot revoke a superseded lease yet");
                    unreachable.wait().await;
                }
                Err(Failure::Final(e)) => {
                    if refused.failures() == 0 {
                        let lease = LeaseId(id);
                        tracing::warn!(%lease, error = %e, "etcd refused to revoke a superseded lease; retrying");
                    }
                    refused.wait().await;
                }
            }
        }
    }
}

struct Keeper {
    etcd: Etcd,
    ttl: Duration,
    ttl_secs: i64,
    current: watch::Sender<Option<i64>>,
    lost: mpsc::UnboundedReceiver<i64>,
    reconnected: watch::Sender<u64>,
    superseded: Superseded,
    counters: Arc<LeaseCounters>,
}

/// Why keeping a lease ended (the keeper is aborted to stop it).
enum End {
    Lost(String),
}

impl Keeper {
    async fn run(mut self) {
        loop {
            let id = self.grant().await;
            tracing::info!(lease = %LeaseId(id), ttl = ?self.ttl, "lease granted");
            self.current.send_replace(Some(id));
            let End::Lost(why) = self.keep(id).await;
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(lease = %LeaseId(id), reason = %why, "lease lost; granting a new one");
            // Lost in our view; etcd may still hold it (see the module documentation).
            self.superseded.send_modify(|s| {
                s.insert(id);
            });
            self.current.send_replace(None);
        }
    }

    /// Grants a lease, trying until etcd gives one.
    async fn grant(&mut self) -> i64 {
        let ttl_secs = self.ttl_secs;
        let mut unreachable = PROBE.start();
        let mut refused = Backoff::default().start();
        loop {
            let granted = attempt(&self.etcd, |mut c| async move {
                c.lease_grant(ttl_secs, None).await
            })
            .await;
            match granted {
                Ok(resp) => return resp.id(),
                Err(Failure::Transient(e)) => {
                    if unreachable.failures() == 0 {
                        tracing::warn!(error = %e, "etcd unreachable; retrying the lease grant");
                    } else {
                        tracing::debug!(error = %e, "etcd still unreachable for the lease grant");
                    }
                    unreachable.wait().await;
                }
                Err(Failure::Final(e)) => {
                    // etcd answered but refused (e.g. permission denied). Keep trying slowly;
                    // an operator may fix the role while we run.
                    tracing::error!(error = %e, "etcd refused to grant a lease");
                    refused.wait().await;
                }
            }
        }
    }

    /// Keeps lease `id` alive until it is lost. The stream is reopened (on
    /// the next member) whenever it breaks; the lease only counts as lost when etcd says so
    /// or when a whole TTL passed without a successful keepalive.
    async fn keep(&mut self, id: i64) -> End {
        let period = (self.ttl / 3).max(Duration::from_millis(200));
        let request_timeout = self.etcd.config().request_timeout.get();
        let mut alive_until = Instant::now() + self.ttl;
        let mut backoff = PROBE.start();
        // Logged once when keepalives start failing and once when they work again.
        let mut failing = false;
        loop {
            if Instant::now() >= alive_until {
                return End::Lost(format!("no keepalive got through for {:?}", self.ttl));
            }
            let session = match self.etcd.session().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(lease = %LeaseId(id), error = %e, "cannot connect for keepalive");
                    self.note_failure(&mut failing, id);
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
                    tracing::debug!(lease = %LeaseId(id), error = %e, "keepalive stream failed to open");
                    self.note_failure(&mut failing, id);
                    if is_transient(&e) {
                        self.etcd.failed(session.generation()).await;
                    }
                    if let Some(end) = self.pause(&mut backoff, id).await {
                        return end;
                    }
                    continue;
                }
                Err(_) => {
                    self.note_failure(&mut failing, id);
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
                tracing::info!(lease = %LeaseId(id), "lease keepalive works again");
                self.reconnected.send_modify(|n| *n = n.wrapping_add(1));
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
                        let answer = other.map(|r| r.map(|_| ()));
                        tracing::debug!(lease = %LeaseId(id), ?answer, "keepalive stream broke; reopening");
                        self.etcd.failed(session.generation()).await;
                        self.note_failure(&mut failing, id);
                        break;
                    }
                }
                if Instant::now() >= alive_until {
                    break;
                }
            }
        }
    }

    /// Counts a failed keepalive; logs the start of a streak of them, once.
    fn note_failure(&self, failing: &mut bool, id: i64) {
        self.counters
            .keepalive_failures
            .fetch_add(1, Ordering::Relaxed);
        if !std::mem::replace(failing, true) {
            tracing::warn!(
                lease = %LeaseId(id),
                ttl = ?self.ttl,
                "lease keepalive failing; retrying on other etcd members until the TTL runs out"
            );
        }
    }

    /// Waits a backoff step; `Some` if the lease is reported lost meanwhile.
    async fn pause(&mut self, backoff: &mut crate::backoff::BackoffState, id: i64) -> Option<End> {
        tokio::select! {
            _ = backoff.wait() => None,
            Some(reported) = self.lost.recv() => {
                (reported == id).then(|| End::Lost("a write said the lease is not found".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseId;

    /// etcdctl prints `%016x`: a leading zero digit stays, or the id would not match its output.
    #[test]
    fn lease_ids_print_as_etcdctl_prints_them() {
        assert_eq!(
            LeaseId(0x0e91_a230_775e_3c06).to_string(),
            "0e91a230775e3c06"
        );
        assert_eq!(LeaseId(7587881469370459149).to_string(), "694d91fe7b98640d");
        let json = serde_json::to_string(&Some(LeaseId(1))).unwrap_or_default();
        assert_eq!(json, "\"0000000000000001\"");
    }
}
