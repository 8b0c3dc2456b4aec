//! Discovery of one service's instances: a full `get` of the service prefix, then a watch
//! from the revision after it, published on a `tokio::sync::watch` channel as a
//! [`ServiceView`].
//!
//! What the peers got wrong and this module must not: a watch that dies silently, a view
//! that empties while etcd is away, a resume that misses what happened during an outage.
//! - Every reconnect starts with a fresh `get`. A watch resumed from the last revision + 1
//!   cannot tell our history from that of an etcd rebuilt from an empty data dir (its
//!   revisions restart low and it would wait for revisions that mean something else), so
//!   the get is the only resume that is right in every case; it is one small read.
//! - A watch cancelled for compaction resyncs at once (a full get, then a watch from its
//!   revision + 1), never retrying the same start revision.
//! - A stream that stops answering is detected: HTTP/2 keepalive on the channel, plus a
//!   progress request every `progress_interval`; a stream silent for two intervals since
//!   its last message is dropped (a deadline reset by every message, so the bound is two
//!   intervals, not up to three as a check on the ticks would give) and discovery moves to
//!   the next member.
//! - The reconnect backoff starts over once a watch has delivered a message after its
//!   creation (a progress answer or an event): an outage long after the last one is retried
//!   at the initial delay, not at the maximum, while a member that drops every watch right
//!   after creating it is retried at a growing delay.
//! - Each lost watch is logged once per service per outage ("watch lost"), and each
//!   service logs "resynced with etcd" when its get and watch succeed again.
//! - While etcd is unreachable the last view stays published (static stability); only
//!   `connected` flips. A resync that would empty the service, or that comes from a
//!   rewound or different etcd, starts a grace period ([`crate::grace`]) instead of being
//!   believed at once.
//! - The get is read in pages ([`crate::snapshot`]), so no size of service is too large to
//!   read, and a value larger than [`MAX_RECORD_BYTES`] is skipped unread.
//! - A value that is not a valid record (or a key that is not a valid instance id) is
//!   skipped with one warning naming the key, escaped and clipped (per revision of that
//!   key); other instances are unaffected.
//! - Cost: an event costs O(log n) (the instances are a persistent map, so a published view
//!   shares everything unchanged with the one before), and the messages that are already
//!   waiting when one arrives are applied together and published once.
//!
//! [`apply`], [`step`] and [`crate::grace::judge_resync`] are the pure parts and are tested
//! as such.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use futures::FutureExt as _;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::backoff::Backoff;
use crate::etcd::Etcd;
use crate::grace::{judge_batch, judge_resync, Grace, GraceReason, Known};
use crate::key;
use crate::record::{InstanceRecord, MAX_RECORD_BYTES};
use crate::snapshot;
use crate::untrusted::Untrusted;

/// Instances of a service by instance id: a persistent map, so that a copy is O(1) and
/// shares everything unchanged. Records sit behind an `Arc` so that the map's fixed-size
/// node chunks hold pointers, not whole records (a quarter of the memory per node copied).
pub type Instances = imbl::OrdMap<String, Arc<InstanceRecord>>;

/// What a consumer knows about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    pub service: String,
    /// etcd's instances, plus those held by a grace period.
    pub instances: Arc<Instances>,
    /// etcd revision the view reflects.
    pub revision: i64,
    /// Whether a watch is established right now.
    pub connected: bool,
    /// When etcd last confirmed the view (a get, an event or a progress notification).
    pub last_sync: SystemTime,
    /// Set while a grace period holds instances etcd no longer lists.
    pub grace: Option<GraceStatus>,
}

/// A grace period as consumers report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GraceStatus {
    pub reason: String,
    /// Instances served although etcd does not list them.
    pub held: usize,
    /// When the held instances are dropped at the latest.
    #[serde(skip)]
    pub until: SystemTime,
}

/// Tuning for [`spawn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscoveryOptions {
    /// How often to ask a quiet watch stream for progress to prove it is alive.
    pub progress_interval: Duration,
    /// Between attempts that reached etcd and were refused (an error answered), or after a
    /// watch that broke: protects a struggling etcd from every consumer at once.
    pub backoff: Backoff,
    /// Between attempts while etcd cannot be reached at all (a connect or a request that
    /// got no answer): such an attempt costs etcd nothing, and the cap bounds how long
    /// after etcd is back (a partition healed) a consumer still serves a stale view.
    pub reconnect: Backoff,
    /// How long a resync that lost the registry's instances is not believed.
    pub grace_period: Duration,
}

/// [`DiscoveryOptions::reconnect`]'s default: 0.1 s doubling up to 1 s (jittered to
/// 0.5-1 s), so that a consumer resyncs within about `dial_timeout` + 1 s of etcd becoming
/// reachable again, however long it was away, and a fleet of them comes back spread over
/// half a second rather than all in the same instant.
pub const DEFAULT_RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(1),
};

/// About two of nerve's default lease TTLs: the time every nerve needs to notice a lost
/// lease and register again.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(20);

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            progress_interval: Duration::from_secs(5),
            backoff: Backoff::default(),
            reconnect: DEFAULT_RECONNECT,
            grace_period: DEFAULT_GRACE_PERIOD,
        }
    }
}

/// One change to a service's instances, decoded from a key-value event.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put {
        id: String,
        record: InstanceRecord,
    },
    /// A delete, or a put whose value is not a valid record (it must not stay routable).
    Remove {
        id: String,
    },
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Change::Put { id, .. } | Change::Remove { id } => id,
        }
    }
}

/// Applies `change`; returns whether the set changed.
pub fn apply(instances: &mut Instances, change: Change) -> bool {
    match change {
        Change::Put { id, record } => {
            if instances.get(&id).map(AsRef::as_ref) == Some(&record) {
                return false;
            }
            instances.insert(id, Arc::new(record));
            true
        }
        Change::Remove { id } => instances.remove(&id).is_some(),
    }
}

/// A watch response reduced to what decides the next step.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchMessage {
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub header_revision: i64,
    pub changes: Vec<Change>,
}

/// What to do with a watch message.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Apply these changes; the view is then at `revision`.
    Apply { changes: Vec<Change>, revision: i64 },
    /// Start over with a full get. `compacted` tells whether it is routine (compaction)
    /// rather than a failure worth backing off for.
    Resync { compacted: bool, reason: String },
}

/// Decides what a watch message means for a view currently at `revision`.
pub fn step(revision: i64, message: WatchMessage) -> Step {
    if message.canceled {
        return if message.compact_revision > 0 {
            Step::Resync {
                compacted: true,
                reason: format!(
                    "watch start revision was compacted (compact revision {})",
                    message.compact_revision
                ),
            }
        } else {
            Step::Resync {
                compacted: false,
                reason: format!("watch cancelled by etcd: {:?}", message.cancel_reason),
            }
        };
    }
    // Progress notifications and creations carry only a header: every event up to that
    // revision has been delivered, so the view may advance to it.
    Step::Apply {
        revision: revision.max(message.header_revision),
        changes: message.changes,
    }
}

/// Why a key-value is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The instance id, when the key names one (its old record must not stay routable).
    pub id: Option<String>,
    pub reason: String,
}

/// Decodes one key-value of `service_prefix` into a change, or says why it is skipped.
/// Keys deeper than one segment are not instances and are ignored (`Ok(None)`).
pub fn decode(
    service_prefix: &str,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<Change>, Skipped> {
    let key = std::str::from_utf8(key).map_err(|_| Skipped {
        id: None,
        reason: "key is not UTF-8".to_owned(),
    })?;
    let Some(id) = key::instance_id(service_prefix, key) else {
        return Ok(None);
    };
    if let Err(e) = key::check_segment("instance id", id) {
        // Never routable, so there is nothing to remove either.
        return Err(Skipped {
            id: None,
            reason: e.to_string(),
        });
    }
    let id = id.to_owned();
    match value {
        None => Ok(Some(Change::Remove { id })),
        Some(v) => match InstanceRecord::parse(v, &id) {
            Ok(record) => Ok(Some(Change::Put { id, record })),
            Err(e) => Err(Skipped {
                id: Some(id),
                reason: format!("invalid record: {e}"),
            }),
        },
    }
}

/// A running discovery task; dropping it stops the task.
pub struct Discovery {
    receiver: watch::Receiver<Option<ServiceView>>,
    task: tokio::task::JoinHandle<()>,
}

impl Discovery {
    /// `None` until the first successful get.
    pub fn subscribe(&self) -> watch::Receiver<Option<ServiceView>> {
        self.receiver.clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts discovering `service` under the handle's prefix.
pub fn spawn(etcd: Etcd, service: &str, options: DiscoveryOptions) -> Discovery {
    let (sender, receiver) = watch::channel(None);
    // Every line it logs names the service once, through the span.
    let span = tracing::info_span!("discovery", service = %service);
    let task = tokio::spawn(
        Watcher {
            prefix: key::service_prefix(&etcd.config().prefix, service),
            service: service.to_owned(),
            etcd,
            options,
            sender,
            live: Instances::new(),
            grace: None,
            revision: 0,
            cluster_id: 0,
            warned: HashMap::new(),
            reported_down: false,
            reported_tls: false,
        }
        .run()
        .instrument(span),
    );
    Discovery { receiver, task }
}

struct Watcher {
    etcd: Etcd,
    service: String,
    prefix: String,
    options: DiscoveryOptions,
    sender: watch::Sender<Option<ServiceView>>,
    /// What etcd lists.
    live: Instances,
    grace: Option<Grace>,
    revision: i64,
    cluster_id: u64,
    /// Keys already warned about, with the mod revision warned about.
    warned: HashMap<Vec<u8>, i64>,
    /// The current outage has been logged; later failed attempts only log at debug.
    reported_down: bool,
    /// A TLS refusal was logged in this outage (it may show after a first, vaguer error).
    reported_tls: bool,
}

enum Ended {
    /// Resync at once.
    Compacted,
    /// Resync after backoff; `generation` of the session to rotate away from.
    /// `established`: the watch delivered a message after its creation before it failed.
    Failed { generation: u64, established: bool },
}

/// Whether the reconnect backoff starts over before waiting after a round that ended so:
/// a sync whose watch was established is a success, and the failure that follows (maybe
/// hours later) is the first of a new outage.
fn backoff_starts_over(ended: &Ended) -> bool {
    match ended {
        Ended::Compacted => true,
        Ended::Failed { established, .. } => *established,
    }
}

impl Watcher {
    async fn run(mut self) {
        let mut backoff = self.options.backoff.start();
        // Unanswered attempts (etcd away, a partition) are retried on a shorter schedule
        // of their own: they cost etcd nothing, and etcd's return must be noticed soon.
        let mut reconnect = self.options.reconnect.start();
        let mut ever_synced = false;
        loop {
            let session = match self.etcd.session().await {
                Ok(s) => s,
                // No answer: etcd away or partitioned; retried on the short schedule.
                Err(e) if crate::etcd::is_transient(&e) => {
                    self.disconnected(&e.to_string(), ever_synced, true);
                    reconnect.wait().await;
                    continue;
                }
                // An answered refusal of the connection itself (wrong password, a user
                // etcd does not know): said as such, and retried on the long backoff.
                Err(e) => {
                    let error = format!(
                        "etcd refused the connection (check etcd.username/password or \
                         etcd.tls): {e}"
                    );
                    self.disconnected(&error, ever_synced, false);
                    backoff.wait().await;
                    continue;
                }
            };
            if let Err(e) = self.sync(&session.client).await {
                let unreachable = e.is_unreachable();
                self.disconnected(&e.to_string(), ever_synced, unreachable);
                // A member that answered with an error is not moved away from: another
                // member would give the same answer (permission denied, bad request).
                if unreachable {
                    self.etcd.failed(session.generation).await;
                    reconnect.wait().await;
                } else {
                    backoff.wait().await;
                }
                continue;
            }
            reconnect.reset();
            if !ever_synced {
                tracing::info!(
                    instances = self.live.len(),
                    revision = self.revision,
                    "discovered"
                );
            } else if self.reported_down {
                tracing::info!(
                    instances = self.live.len(),
                    revision = self.revision,
                    "resynced with etcd"
                );
            }
            ever_synced = true;
            self.reported_down = false;
            self.reported_tls = false;
            let ended = self.watch(session.client, session.generation).await;
            if backoff_starts_over(&ended) {
                backoff.reset();
            }
            if let Ended::Failed { generation, .. } = ended {
                self.etcd.failed(generation).await;
                backoff.wait().await;
            }
        }
    }

    /// The registry cannot be followed right now: `unreachable` when etcd did not answer
    /// (rather than answering with an error, which is reported as what it is).
    fn disconnected(&mut self, error: &str, ever_synced: bool, unreachable: bool) {
        // A TLS refusal reaches us as a transport error, like a dead member: say what it is.
        let hinted;
        let mut tls = false;
        let error = match crate::etcd::tls_refusal(error) {
            Some(hint) => {
                hinted = format!("{hint}: {error}");
                tls = true;
                hinted.as_str()
            }
            None => error,
        };
        // Once per outage: a retry loop against a dead etcd must not log every attempt. A
        // TLS refusal is said once too, even after another error opened the outage.
        let first_down = !std::mem::replace(&mut self.reported_down, true);
        let first_tls = tls && !std::mem::replace(&mut self.reported_tls, true);
        let first = first_down || first_tls;
        if !first {
            tracing::debug!(%error, "registry still unreadable");
        } else if ever_synced {
            let instances = self.served_count();
            tracing::warn!(%error, instances, "watch lost; serving the last known instances while retrying");
        } else if unreachable {
            tracing::warn!(%error, "etcd unreachable; no instances known yet, retrying");
        } else {
            tracing::warn!(%error, "cannot read the registry; no instances known yet, retrying");
        }
        self.sender.send_if_modified(|view| match view {
            Some(v) if v.connected => {
                v.connected = false;
                true
            }
            _ => false,
        });
    }

    fn served_count(&self) -> usize {
        self.live.len() + self.grace.as_ref().map_or(0, |g| g.held.len())
    }

    /// Full read of the prefix; replaces etcd's instances with what it holds, unless that
    /// looks like a lost registry (then a grace period holds the instances known before).
    async fn sync(&mut self, client: &etcd_client::Client) -> Result<(), snapshot::SnapshotError> {
        let limit = self.etcd.config().request_timeout.get();
        let snapshot = snapshot::read(client, &self.prefix, limit).await?;
        let mut live = Instances::new();
        let mut seen = std::collections::HashSet::with_capacity(snapshot.kvs.len());
        for kv in &snapshot.kvs {
            seen.insert(kv.key());
            match decode(&self.prefix, kv.key(), Some(kv.value())) {
                Ok(Some(change)) => {
                    apply(&mut live, change);
                }
                Ok(None) => {}
                Err(skipped) => self.warn_skipped(kv.key(), kv.mod_revision(), &skipped.reason),
            }
        }
        for key in &snapshot.unreadable {
            seen.insert(key);
            let reason = format!(
                "value too large to read (over {} bytes); records are at most {MAX_RECORD_BYTES} bytes",
                snapshot::PAGE_BYTES
            );
            self.warn_skipped(key, snapshot.revision, &reason);
        }
        self.warned.retain(|k, _| seen.contains(k.as_slice()));
        let known = Known {
            instances: self.served_count(),
            revision: self.revision,
            cluster_id: self.cluster_id,
        };
        let served = self.served();
        match judge_resync(known, live.len(), snapshot.revision, snapshot.cluster_id) {
            Some(reason) if !served.is_empty() => self.start_grace(reason, &served, &live),
            _ => {
                if let Some(g) = &mut self.grace {
                    g.keep_missing(&live);
                }
            }
        }
        self.live = live;
        self.revision = snapshot.revision;
        self.cluster_id = snapshot.cluster_id;
        self.end_grace_if_over();
        self.publish(true);
        Ok(())
    }

    /// Holds what was `served` and etcd (`live`) lacks, for the grace period (a second loss
    /// during one does not extend it).
    fn start_grace(&mut self, reason: GraceReason, served: &Instances, live: &Instances) {
        if self.options.grace_period.is_zero() {
            return;
        }
        let until = match &self.grace {
            Some(g) => g.until,
            None => Instant::now() + self.options.grace_period,
        };
        let grace = Grace::start(reason, until, served, live);
        let (held, listed) = (grace.held.len(), live.len());
        let period = until.saturating_duration_since(Instant::now());
        tracing::warn!(reason = %grace.reason, held, listed, ?period,
            "registry lost instances; serving the last known ones while it refills");
        self.grace = Some(grace);
    }

    fn warn_skipped(&mut self, key: &[u8], mod_revision: i64, reason: &str) {
        if self.warned.insert(key.to_vec(), mod_revision) != Some(mod_revision) {
            tracing::warn!(key = %Untrusted(key), %reason, "skipping registration");
        }
    }

    /// etcd's instances plus the held ones.
    fn served(&self) -> Instances {
        match &self.grace {
            Some(g) => g.served(&self.live),
            None => self.live.clone(),
        }
    }

    /// Ends the grace period when everything held has settled or its time is up; whether
    /// it ended.
    fn end_grace_if_over(&mut self) -> bool {
        let Some(grace) = &self.grace else {
            return false;
        };
        if !grace.is_over(Instant::now()) {
            return false;
        }
        if grace.held.is_empty() {
            tracing::info!(
                instances = self.live.len(),
                "registry refilled; grace period over"
            );
        } else {
            tracing::warn!(
                dropped = grace.held.len(),
                instances = self.live.len(),
                "grace period over; dropping the instances etcd did not list again"
            );
        }
        self.grace = None;
        true
    }

    fn publish(&mut self, connected: bool) {
        let view = ServiceView {
            service: self.service.clone(),
            instances: Arc::new(self.served()),
            revision: self.revision,
            connected,
            last_sync: SystemTime::now(),
            grace: self.grace.as_ref().map(|g| GraceStatus {
                reason: g.reason.to_string(),
                held: g.held.len(),
                until: SystemTime::now() + g.until.saturating_duration_since(Instant::now()),
            }),
        };
        self.sender.send_modify(|v| *v = Some(view));
    }

    /// Watches from the revision after the view's until the stream ends.
    async fn watch(&mut self, client: etcd_client::Client, generation: u64) -> Ended {
        let failed = |established| Ended::Failed {
            generation,
            established,
        };
        let Some(mut stream) = self.open_stream(client).await else {
            return failed(false);
        };
        let mut established = false;
        let interval = self.options.progress_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence_limit = interval * 2;
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        loop {
            let grace_ends = self.grace.as_ref().map(|g| g.until);
            tokio::select! {
                message = stream.message() => {
                    silence.as_mut().reset(tokio::time::Instant::now() + silence_limit);
                    match self.take_waiting(message, &mut stream) {
                        Ok(batch) => {
                            established |= batch.beyond_creation;
                            self.publish_batch(batch);
                        }
                        Err(Resync::Compacted) => return Ended::Compacted,
                        Err(Resync::Failed) => return failed(established),
                    }
                }
                _ = &mut silence => {
                    self.disconnected(&format!("watch stream silent for {silence_limit:?}"), true, true);
                    return failed(established);
                }
                _ = ticker.tick() => {
                    if let Err(e) = stream.request_progress().await {
                        self.disconnected(&format!("progress request: {e}"), true, true);
                        return failed(established);
                    }
                }
                _ = sleep_until_some(grace_ends) => {
                    if self.end_grace_if_over() {
                        self.publish(true);
                    }
                }
            }
        }
    }

    /// Creates the watch from the revision after the view's; `None` (logged) if etcd
    /// did not in time.
    async fn open_stream(&mut self, client: etcd_client::Client) -> Option<WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1)
            .with_progress_notify()
            .with_fragment();
        let limit = self.etcd.config().request_timeout.get();
        let mut watcher = client
            .watch_client()
            .max_decoding_message_size(snapshot::PAGE_BYTES);
        let created = watcher.watch(self.prefix.as_str(), Some(options));
        match tokio::time::timeout(limit, created).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                self.disconnected(&format!("watch: {e}"), true, true);
                None
            }
            Err(_) => {
                self.disconnected("watch creation timed out", true, true);
                None
            }
        }
    }

    /// Applies `first` and every message already waiting behind it, as one batch (at most
    /// [`MAX_BATCH_EVENTS`] events), so that a burst is published once.
    fn take_waiting(
        &mut self,
        first: Result<Option<WatchResponse>, etcd_client::Error>,
        stream: &mut WatchStream,
    ) -> Result<Batch, Resync> {
        let mut batch = Batch {
            served: self.served(),
            ..Batch::default()
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.disconnected("watch stream closed by etcd", true, true);
                    return Err(Resync::Failed);
                }
                Err(e) => {
                    self.disconnected(&format!("watch stream: {e}"), true, true);
                    return Err(Resync::Failed);
                }
            };
            self.take(response, &mut batch)?;
            if batch.events < MAX_BATCH_EVENTS {
                next = stream.message().now_or_never();
            }
        }
        Ok(batch)
    }

    /// Applies one watch response to etcd's instances, noting what the batch changed.
    fn take(&mut self, response: WatchResponse, batch: &mut Batch) -> Result<(), Resync> {
        let changes = self.changes_of(&response);
        let created = response.created();
        let message = WatchMessage {
            created,
            canceled: response.canceled(),
            compact_revision: response.compact_revision(),
            cancel_reason: response.cancel_reason().to_owned(),
            header_revision: response.header().map(|h| h.revision()).unwrap_or(0),
            changes,
        };
        match step(self.revision, message) {
            Step::Resync {
                compacted: true,
                reason,
            } => {
                tracing::info!(%reason, "resyncing");
                Err(Resync::Compacted)
            }
            Step::Resync {
                compacted: false,
                reason,
            } => {
                self.disconnected(&reason, true, true);
                Err(Resync::Failed)
            }
            Step::Apply { changes, revision } => {
                // A creation alone proves little: a member that drops every watch right
                // after creating it must not reset the backoff (a reconnect storm of full
                // gets). A later message (progress, event) does.
                batch.beyond_creation |= !created;
                batch.events += changes.len();
                for change in changes {
                    if let Some(g) = &mut self.grace {
                        batch.changed |= g.settled(change.id());
                    }
                    let removal = matches!(change, Change::Remove { .. });
                    let applied = apply(&mut self.live, change);
                    batch.removed += usize::from(removal && applied);
                    batch.changed |= applied;
                }
                self.revision = revision;
                Ok(())
            }
        }
    }

    /// The changes of a response's events; invalid puts become removals.
    fn changes_of(&mut self, response: &WatchResponse) -> Vec<Change> {
        let mut changes = Vec::with_capacity(response.events().len());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let value = match event.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            match decode(&self.prefix, kv.key(), value) {
                Ok(Some(change)) => {
                    if value.is_none() {
                        self.warned.remove(kv.key());
                    }
                    changes.push(change);
                }
                Ok(None) => {}
                Err(skipped) => {
                    self.warn_skipped(kv.key(), kv.mod_revision(), &skipped.reason);
                    if let Some(id) = skipped.id {
                        changes.push(Change::Remove { id });
                    }
                }
            }
        }
        changes
    }

    /// Publishes what a batch of watch messages changed, or only the confirmation.
    fn publish_batch(&mut self, batch: Batch) {
        if let Some(reason) = judge_batch(batch.served.len(), batch.removed, self.served_count()) {
            let live = self.live.clone();
            self.start_grace(reason, &batch.served, &live);
        }
        let ended = self.end_grace_if_over();
        let was_connected = self.sender.borrow().as_ref().is_some_and(|v| v.connected);
        if !was_connected {
            tracing::info!(revision = self.revision, "watch established");
        }
        if batch.changed || ended || !was_connected {
            self.publish(true);
        } else {
            let revision = self.revision;
            self.sender.send_if_modified(|v| {
                if let Some(v) = v {
                    v.revision = revision;
                    v.last_sync = SystemTime::now();
                }
                false
            });
        }
    }
}

/// Events applied together at most before they are published (and the task yields).
const MAX_BATCH_EVENTS: usize = 2048;

/// What the watch messages applied together did.
#[derive(Default)]
struct Batch {
    /// What was served before them.
    served: Instances,
    events: usize,
    /// Instances they removed.
    removed: usize,
    changed: bool,
    beyond_creation: bool,
}

enum Resync {
    Compacted,
    Failed,
}

/// Sleeps until `at`, or forever.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::record::test_record as record;

    fn any_change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0u8..6, 1u16..4).prop_map(|(id, port)| Change::Put {
                id: format!("i{id}"),
                record: record(port)
            }),
            (0u8..6).prop_map(|id| Change::Remove {
                id: format!("i{id}")
            }),
        ]
    }

    proptest! {
        /// The view after a sequence of events equals the last write per key, whatever
        /// the order of the other keys' writes: what a fresh `get` would return.
        #[test]
        fn applying_events_yields_the_last_write_per_key(changes in proptest::collection::vec(any_change(), 0..40)) {
            let mut view = Instances::new();
            for c in changes.clone() {
                apply(&mut view, c);
            }
            let mut expected: std::collections::BTreeMap<String, Option<InstanceRecord>> = Default::default();
            for c in changes {
                match c {
                    Change::Put { id, record } => { expected.insert(id, Some(record)); }
                    Change::Remove { id } => { expected.insert(id, None); }
                }
            }
            let expected: Instances = expected.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
            prop_assert_eq!(view, expected);
        }

        /// `apply` reports a change exactly when the set differs afterwards.
        #[test]
        fn apply_reports_real_changes_only(start in proptest::collection::vec(any_change(), 0..10), c in any_change()) {
            let mut view = Instances::new();
            for s in start { apply(&mut view, s); }
            let before = view.clone();
            let changed = apply(&mut view, c);
            prop_assert_eq!(changed, before != view);
        }

        /// A resumed watch never moves the view's revision backwards.
        #[test]
        fn revisions_never_go_backwards(current in 0i64..1000, header in 0i64..1000) {
            let message = WatchMessage {
                created: false,
                canceled: false,
                compact_revision: 0,
                cancel_reason: String::new(),
                header_revision: header,
                changes: vec![],
            };
            match step(current, message) {
                Step::Apply { revision, .. } => prop_assert_eq!(revision, current.max(header)),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }

    #[test]
    fn a_compacted_watch_resyncs_without_backoff_and_other_cancels_with() {
        let cancel = |compact_revision| WatchMessage {
            created: true,
            canceled: true,
            compact_revision,
            cancel_reason: String::new(),
            header_revision: 10,
            changes: vec![],
        };
        assert!(matches!(
            step(5, cancel(8)),
            Step::Resync {
                compacted: true,
                ..
            }
        ));
        assert!(matches!(
            step(5, cancel(0)),
            Step::Resync {
                compacted: false,
                ..
            }
        ));
    }

    #[test]
    fn an_unreachable_etcd_is_retried_at_least_every_second() {
        // However long etcd was away, the next attempt after it is back comes within a
        // second (plus the attempt's own dial timeout); an etcd that answers with errors
        // is still left alone for up to 5 s.
        let options = DiscoveryOptions::default();
        for failures in 1..100 {
            assert!(options.reconnect.delay(failures, 1.0) <= Duration::from_secs(1));
        }
        assert_eq!(options.backoff.delay(100, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn the_backoff_starts_over_once_a_watch_was_established() {
        assert!(backoff_starts_over(&Ended::Compacted));
        assert!(backoff_starts_over(&Ended::Failed {
            generation: 1,
            established: true
        }));
        assert!(!backoff_starts_over(&Ended::Failed {
            generation: 1,
            established: false
        }));
    }

    #[test]
    fn decode_reads_keys_of_the_service_only() {
        let p = "/s/web/";
        assert_eq!(decode(p, b"/s/web/a/b", Some(b"{}")), Ok(None));
        assert_eq!(
            decode(p, b"/s/web/a", None),
            Ok(Some(Change::Remove { id: "a".into() }))
        );
        assert!(decode(p, b"/s/web/a", Some(b"nope"))
            .unwrap_err()
            .reason
            .contains("invalid record"));
        let forged = decode(
            p,
            b"/s/web/a\nlevel=ERROR",
            Some(br#"{"host":"h","port":1}"#),
        )
        .unwrap_err();
        assert_eq!(forged.id, None);
        assert!(
            forged.reason.contains("control characters"),
            "{}",
            forged.reason
        );
        assert!(decode(p, b"/s/web/a b", None).is_err());
        assert_eq!(
            decode(p, b"/s/web/a", Some(br#"{"host":"h","port":1}"#)).map(|c| c.is_some()),
            Ok(true)
        );
    }
}
