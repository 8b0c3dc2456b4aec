//! Makes etcd hold exactly the wanted registrations, under the process's single lease.
//!
//! It follows three inputs: the wanted set ([`crate::state::Desired`]), the lease id in force
//! ([`registry::lease`]) and a reconcile timer. It remembers what it wrote (key, value, lease)
//! and writes only differences, so an unchanged registration is never re-written and its
//! `mod_revision` stays. A put abandoned before its answer came (an input changed while it
//! was in flight, as when instances turn healthy one after another at start) may have
//! landed, or may land later: every put is a transaction that writes only if etcd does not
//! hold that value under that lease already, so it is never written twice. When the lease changes
//! (lost and re-granted), everything wanted is put again under the new one, and what was
//! written under the old one but is no longer
//! wanted is deleted explicitly (a restarted etcd renews old leases), also while there is no
//! lease yet. Once everything is under the new lease it says so ([`LeaseHandle::settled`]),
//! so the old lease can be revoked without taking live keys along. Every
//! `reconcile_interval` each wanted key is read back; a key that is missing, holds another
//! value or another lease is put again.
//!
//! Requests go through [`Etcd::retry`] (backoff, member rotation, transition logging) and
//! are abandoned as soon as the wanted set or the lease changes, so a long outage never
//! leaves a stale write queued in front of a newer one, and when the lease keeper gets
//! through to etcd again, so none waits out a backoff step grown during the outage.
//!
//! Every write etcd took is counted ([`ProcessCounters::write`]) where it is logged (a delete
//! that found the key gone already changed nothing and counts as no write), and so is every
//! write etcd refused. Attempts while etcd does not answer are not: [`Etcd::retry`] repeats
//! them, and `nerve_etcd_connected` shows the outage.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use registry::lease::{is_lease_not_found, LeaseHandle};
use registry::Etcd;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::counters::{ProcessCounters, WriteOp};
use crate::state::{Desired, Shared};

/// What we know about a key we wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    value: String,
    lease: i64,
    /// `Some(verb)`: a put of `value` under `lease` was sent but its answer never came (the
    /// request was abandoned because an input changed), so etcd may or may not hold it, and
    /// nothing was logged yet; `verb` is what the put will be logged as once it is confirmed.
    unconfirmed: Option<&'static str>,
}

impl Written {
    /// Known to hold `value` (under the lease the caller keeps entries for).
    fn holds(&self, value: &str) -> bool {
        self.unconfirmed.is_none() && self.value == value
    }
}

pub struct Registrar {
    etcd: Etcd,
    lease: LeaseHandle,
    shared: Arc<Shared>,
    /// Read at every reschedule, so a reload's new interval applies from the next tick on.
    reconcile_interval: watch::Receiver<Duration>,
    written: BTreeMap<String, Written>,
    /// Keys written under a lease that was then given up. etcd may still hold them (a
    /// restarted etcd gives old leases a fresh TTL), so one still wanted is put under the
    /// new lease and one no longer wanted (an instance that died during the outage) is
    /// deleted explicitly, not left to the old lease's expiry.
    orphaned: BTreeSet<String>,
}

/// What the registrar follows, and what cuts a request short.
struct Inputs {
    desired: watch::Receiver<Desired>,
    lease: watch::Receiver<Option<i64>>,
    /// Changes when etcd answers the lease keeper again after failing: a request waiting
    /// out a long backoff step starts over at once.
    reconnected: watch::Receiver<u64>,
    stop: CancellationToken,
}

/// How one request ended.
enum Outcome<T> {
    Done(T),
    /// etcd answered with an error that retrying will not fix.
    Failed(etcd_client::Error),
    /// The wanted set or the lease changed first, or etcd answers again after an outage;
    /// start over from the new state.
    Interrupted,
    Stopped,
}

impl Registrar {
    pub fn new(
        etcd: Etcd,
        lease: LeaseHandle,
        shared: Arc<Shared>,
        reconcile_interval: Duration,
    ) -> Registrar {
        Registrar {
            etcd,
            lease,
            shared,
            // The sender is dropped: the receiver keeps the value, which then never changes.
            reconcile_interval: watch::channel(reconcile_interval).1,
            written: BTreeMap::new(),
            orphaned: BTreeSet::new(),
        }
    }

    /// Follows `interval` instead of the fixed interval given to [`Registrar::new`]; a new
    /// value takes effect when the tick already scheduled has fired.
    pub fn with_reconcile_interval(mut self, interval: watch::Receiver<Duration>) -> Registrar {
        self.reconcile_interval = interval;
        self
    }

    fn interval(&self) -> Duration {
        *self.reconcile_interval.borrow()
    }

    fn counters(&self) -> &ProcessCounters {
        self.shared.counters()
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let mut inputs = Inputs {
            desired: self.shared.subscribe_desired(),
            lease: self.lease.subscribe(),
            reconnected: self.lease.reconnected(),
            stop,
        };
        let mut next_reconcile = Instant::now() + self.interval();
        let mut reconcile_due = false;
        let mut backoff = registry::backoff::Backoff::default().start();
        loop {
            let lease = *inputs.lease.borrow_and_update();
            let desired = inputs.desired.borrow_and_update().clone();
            let result = self.pass(lease, &desired, reconcile_due, &mut inputs).await;
            self.publish(lease);
            let retry_in = match result {
                Ok(reconciled) => {
                    if reconciled {
                        reconcile_due = false;
                        next_reconcile = Instant::now() + self.interval();
                    }
                    backoff.reset();
                    None
                }
                Err(Stop::Stopped) => return,
                Err(Stop::Interrupted) => continue,
                Err(Stop::Failed) => Some(backoff.next_delay()),
            };
            let retry = retry_in.unwrap_or(Duration::MAX / 4);
            tokio::select! {
                // A closed channel disables its branch instead of spinning.
                Ok(()) = inputs.desired.changed() => {}
                Ok(()) = inputs.lease.changed() => {}
                _ = tokio::time::sleep_until(next_reconcile) => reconcile_due = true,
                _ = tokio::time::sleep(retry), if retry_in.is_some() => {}
                _ = inputs.stop.cancelled() => return,
            }
        }
    }

    /// One pass with the inputs as they are now. `Ok(true)` when a due reconcile was done.
    async fn pass(
        &mut self,
        lease: Option<i64>,
        desired: &Desired,
        reconcile_due: bool,
        inputs: &mut Inputs,
    ) -> Result<bool, Stop> {
        let Some(lease) = lease else {
            self.without_lease(desired, inputs).await?;
            return Ok(false);
        };
        self.sync(lease, desired, reconcile_due, inputs).await?;
        // Everything is under `lease` now: older leases may go.
        self.lease.settled(lease);
        Ok(reconcile_due)
    }

    /// Without a lease nothing we wrote can be assumed to exist, nor assumed gone. A delete
    /// needs no lease, so what is no longer wanted is deleted as soon as etcd answers,
    /// whenever the new lease comes.
    async fn without_lease(&mut self, desired: &Desired, inputs: &mut Inputs) -> Result<(), Stop> {
        self.forget_all();
        match self.delete_unwanted(desired, inputs).await? {
            false => Ok(()),
            true => Err(Stop::Failed),
        }
    }

    /// The lease is gone, and every key with it unless etcd renews it (see `orphaned`).
    fn forget_all(&mut self) {
        // Keys whose put had no answer yet may exist too.
        let written = std::mem::take(&mut self.written);
        self.orphaned.extend(written.into_keys());
    }

    fn publish(&self, lease: Option<i64>) {
        let keys: BTreeSet<String> = self
            .written
            .iter()
            .filter(|(_, w)| Some(w.lease) == lease && w.unconfirmed.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        self.shared.set_registered(lease, keys);
    }

    /// One pass: put what differs, delete what is no longer wanted, and read back when a
    /// reconcile is due.
    async fn sync(
        &mut self,
        lease: i64,
        desired: &Desired,
        reconcile: bool,
        inputs: &mut Inputs,
    ) -> Result<(), Stop> {
        // Keys written under an older lease went away with it, or will (see `orphaned`).
        let orphaned = &mut self.orphaned;
        self.written.retain(|k, w| {
            if w.lease != lease {
                orphaned.insert(k.clone());
            }
            w.lease == lease
        });
        let mut failed = self.put_wanted(lease, desired, inputs).await?;
        failed |= self.delete_unwanted(desired, inputs).await?;
        if reconcile && !failed {
            failed |= self.read_back(lease, desired, inputs).await?;
        }
        if failed {
            Err(Stop::Failed)
        } else {
            Ok(())
        }
    }

    /// Puts every wanted key not known to hold its value under `lease`; `Ok(true)` if etcd
    /// refused one.
    async fn put_wanted(
        &mut self,
        lease: i64,
        desired: &Desired,
        inputs: &mut Inputs,
    ) -> Result<bool, Stop> {
        let mut failed = false;
        for (key, value) in desired {
            let current = self.written.get(key);
            if current.is_some_and(|w| w.holds(value)) {
                continue;
            }
            let verb = match current.and_then(|w| w.unconfirmed) {
                // Nothing was logged for the abandoned put: it keeps its verb.
                Some(verb) => verb,
                None if self.orphaned.contains(key) => "re-registered under the new lease",
                None if current.is_some() => "updated",
                None => "registered",
            };
            failed |= self.put(key, value, lease, verb, inputs).await?;
        }
        Ok(failed)
    }

    /// Deletes every key we wrote (under any lease) that is no longer wanted; `Ok(true)` if
    /// etcd refused one.
    async fn delete_unwanted(
        &mut self,
        desired: &Desired,
        inputs: &mut Inputs,
    ) -> Result<bool, Stop> {
        let unwanted: BTreeSet<String> = self
            .written
            .keys()
            .chain(&self.orphaned)
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        let mut failed = false;
        for key in unwanted {
            let k = key.clone();
            let outcome = self
                .request("delete", inputs, move |mut c| {
                    let k = k.clone();
                    async move { c.delete(k, None).await }
                })
                .await;
            match outcome {
                Outcome::Done(resp) => {
                    self.written.remove(&key);
                    self.orphaned.remove(&key);
                    if resp.deleted() > 0 {
                        self.counters().write(WriteOp::Delete, true);
                        tracing::info!(key, "deregistered");
                    } else {
                        tracing::debug!(key, "deregistered: the key was gone already");
                    }
                }
                Outcome::Failed(e) => {
                    self.counters().write(WriteOp::Delete, false);
                    tracing::error!(key, error = %e, "etcd refused to delete the key");
                    failed = true;
                }
                Outcome::Interrupted => return Err(Stop::Interrupted),
                Outcome::Stopped => return Err(Stop::Stopped),
            }
        }
        Ok(failed)
    }

    /// Reads every wanted key back and puts again one that is missing, holds another value
    /// or another lease; `Ok(true)` if etcd refused something.
    async fn read_back(
        &mut self,
        lease: i64,
        desired: &Desired,
        inputs: &mut Inputs,
    ) -> Result<bool, Stop> {
        let mut failed = false;
        for (key, value) in desired {
            let k = key.clone();
            let outcome = self
                .request("reconcile get", inputs, move |mut c| {
                    let k = k.clone();
                    async move { c.get(k, None).await }
                })
                .await;
            let found = match outcome {
                Outcome::Done(resp) => resp
                    .kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.lease())),
                Outcome::Failed(e) => {
                    tracing::error!(key, error = %e, "etcd refused to read the key back");
                    failed = true;
                    continue;
                }
                Outcome::Interrupted => return Err(Stop::Interrupted),
                Outcome::Stopped => return Err(Stop::Stopped),
            };
            let problem = match found {
                None => "missing",
                Some((v, _)) if v != value.as_bytes() => "holds another value",
                Some((_, l)) if l != lease => "is bound to another lease",
                Some(_) => continue,
            };
            tracing::warn!(
                key,
                problem,
                "registration in etcd is wrong; putting it again"
            );
            failed |= self.put(key, value, lease, "re-registered", inputs).await?;
        }
        Ok(failed)
    }

    /// Puts one key under `lease`, unless etcd holds `value` under `lease` already;
    /// `Ok(true)` if etcd refused it.
    async fn put(
        &mut self,
        key: &str,
        value: &str,
        lease: i64,
        verb: &'static str,
        inputs: &mut Inputs,
    ) -> Result<bool, Stop> {
        // Until the answer arrives the key may or may not be written; remembering it as
        // unconfirmed makes a later pass delete it if it is no longer wanted, and confirm
        // rather than re-write it if it still is.
        let pending = Written {
            value: value.to_owned(),
            lease,
            unconfirmed: Some(verb),
        };
        self.written.insert(key.to_owned(), pending);
        let outcome = self.send_put_unless_held(key, value, lease, inputs).await;
        match outcome {
            Outcome::Done(()) => {
                self.orphaned.remove(key);
                let done = Written {
                    value: value.to_owned(),
                    lease,
                    unconfirmed: None,
                };
                self.written.insert(key.to_owned(), done);
                self.counters().write(WriteOp::Put, true);
                tracing::info!(key, lease = %registry::lease::LeaseId(lease), "{verb}");
                Ok(false)
            }
            Outcome::Failed(e) if is_lease_not_found(&e) => {
                // Logged by the lease keeper, which this report makes give the lease up.
                self.counters().write(WriteOp::Put, false);
                self.lease.report_lost(lease);
                self.forget_all();
                Err(Stop::Interrupted)
            }
            Outcome::Failed(e) => {
                self.written.remove(key);
                self.counters().write(WriteOp::Put, false);
                tracing::error!(key, error = %e, "etcd refused the registration");
                Ok(true)
            }
            Outcome::Interrupted => Err(Stop::Interrupted),
            Outcome::Stopped => Err(Stop::Stopped),
        }
    }

    /// One transaction: put unless the key holds `value` under `lease` already. A put whose
    /// answer was lost (abandoned when an input changed) may have landed, or may still land
    /// after the next one (etcd orders two requests in flight either way): written as this
    /// transaction, whichever comes second changes nothing, so a registration is never
    /// written twice.
    async fn send_put_unless_held(
        &self,
        key: &str,
        value: &str,
        lease: i64,
        inputs: &mut Inputs,
    ) -> Outcome<()> {
        let (k, v) = (key.to_owned(), value.to_owned());
        let outcome = self
            .request("put", inputs, move |mut c| {
                let held = [
                    Compare::value(k.clone(), CompareOp::Equal, v.clone()),
                    Compare::lease(k.clone(), CompareOp::Equal, lease),
                ];
                let put = TxnOp::put(
                    k.clone(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                );
                let txn = Txn::new().when(held).or_else([put]);
                async move { c.txn(txn).await }
            })
            .await;
        if let Outcome::Done(resp) = &outcome {
            if resp.succeeded() {
                tracing::debug!(
                    key,
                    lease,
                    "an unanswered put had landed; not writing it again"
                );
            }
        }
        match outcome {
            Outcome::Done(_) => Outcome::Done(()),
            Outcome::Failed(e) => Outcome::Failed(e),
            Outcome::Interrupted => Outcome::Interrupted,
            Outcome::Stopped => Outcome::Stopped,
        }
    }

    /// Runs `op` with retries until it is done, fails for good, or something it depends on
    /// changes.
    async fn request<T, F, Fut>(&self, what: &str, inputs: &mut Inputs, op: F) -> Outcome<T>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        // Only a reconnection after this request started may cut it short.
        inputs.reconnected.mark_unchanged();
        tokio::select! {
            r = self.etcd.retry(what, op) => match r {
                Ok(v) => Outcome::Done(v),
                Err(e) => Outcome::Failed(e),
            },
            Ok(()) = inputs.desired.changed() => Outcome::Interrupted,
            Ok(()) = inputs.lease.changed() => Outcome::Interrupted,
            Ok(()) = inputs.reconnected.changed() => Outcome::Interrupted,
            _ = inputs.stop.cancelled() => Outcome::Stopped,
        }
    }
}

/// Why a pass ended early.
enum Stop {
    Failed,
    Interrupted,
    Stopped,
}
