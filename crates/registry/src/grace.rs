//! The grace period: when a resync says the registry lost what it held, keep serving the
//! instances known before, for a while, instead of believing it at once.
//!
//! An etcd rebuilt from an empty data dir, restored from an old backup, replaced by another
//! cluster, or one whose leases all expired at once after a long stop answers a resync
//! with few or no instances, although the instances themselves are fine: their nerves
//! re-register them within a lease TTL. Believing that answer empties (or rewinds) every
//! consumer's backend set until then; that is the outage static stability exists to prevent.
//!
//! So a resync starts a grace period when it would empty a service that had instances,
//! when etcd's revision went backwards, or when the cluster id changed; and so does a batch
//! of watch events that removes every instance at once (several leases expiring together
//! after etcd was stopped longer than their TTL). A single delete is believed at once. During it the
//! instances known before that are missing from etcd are *held*: served alongside what
//! etcd lists. A held instance leaves as soon as etcd lists it again (the registry refilled;
//! etcd's record wins) or when etcd deletes it with an event (an individual delete applies at
//! once), and all of them when the period ends. Pure: the caller passes the clock.

use std::time::Instant;

use crate::discovery::Instances;

/// Why a grace period started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraceReason {
    /// A resync found no instance where there were some.
    Emptied { before: usize },
    /// etcd's revision is lower than one already seen: a rebuilt or restored etcd.
    RevisionWentBack { from: i64, to: i64 },
    /// Another cluster answers (its cluster id differs).
    ClusterChanged { from: u64, to: u64 },
    /// Watch events arriving together removed every instance.
    AllRemovedAtOnce { removed: usize },
}

impl std::fmt::Display for GraceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraceReason::Emptied { before } => {
                write!(f, "etcd lists no instance (there were {before})")
            }
            GraceReason::RevisionWentBack { from, to } => {
                write!(f, "etcd's revision went back from {from} to {to}")
            }
            GraceReason::ClusterChanged { from, to } => {
                write!(f, "etcd's cluster id changed from {from:x} to {to:x}")
            }
            GraceReason::AllRemovedAtOnce { removed } => {
                write!(f, "{removed} instances, all there were, removed at once")
            }
        }
    }
}

/// What the view knew before a resync.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// Instances served (etcd's and held ones); 0 before the first sync.
    pub instances: usize,
    /// 0 before the first sync.
    pub revision: i64,
    /// 0 before the first sync.
    pub cluster_id: u64,
}

/// Whether a resync that found `instances` at `revision` of `cluster_id` starts a grace
/// period. The first sync never does: there is nothing to keep.
pub fn judge_resync(
    known: Known,
    instances: usize,
    revision: i64,
    cluster_id: u64,
) -> Option<GraceReason> {
    if known.revision == 0 {
        return None;
    }
    if known.cluster_id != 0 && cluster_id != 0 && known.cluster_id != cluster_id {
        return Some(GraceReason::ClusterChanged {
            from: known.cluster_id,
            to: cluster_id,
        });
    }
    if revision < known.revision {
        return Some(GraceReason::RevisionWentBack {
            from: known.revision,
            to: revision,
        });
    }
    if instances == 0 && known.instances > 0 {
        return Some(GraceReason::Emptied {
            before: known.instances,
        });
    }
    None
}

/// Whether watch events applied together start a grace period: they removed `removed`
/// instances, several, and left none of the `served` before them.
pub fn judge_batch(served: usize, removed: usize, left: usize) -> Option<GraceReason> {
    (served > 0 && left == 0 && removed >= 2).then_some(GraceReason::AllRemovedAtOnce { removed })
}

/// A grace period in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Grace {
    pub reason: GraceReason,
    pub until: Instant,
    /// Known before, not listed by etcd since.
    pub held: Instances,
}

impl Grace {
    /// Starts holding what was `served` and `live` (etcd's new answer) lacks.
    pub fn start(
        reason: GraceReason,
        until: Instant,
        served: &Instances,
        live: &Instances,
    ) -> Grace {
        let held = served
            .iter()
            .filter(|(id, _)| !live.contains_key(*id))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        Grace {
            reason,
            until,
            held,
        }
    }

    /// etcd listed or deleted `id`: it is no longer held.
    pub fn settled(&mut self, id: &str) -> bool {
        self.held.remove(id).is_some()
    }

    /// A later resync: only what etcd still lacks stays held.
    pub fn keep_missing(&mut self, live: &Instances) {
        let listed: Vec<String> = self
            .held
            .keys()
            .filter(|id| live.contains_key(*id))
            .cloned()
            .collect();
        for id in listed {
            self.held.remove(&id);
        }
    }

    /// Whether the period is over: every held instance settled, or time is up.
    pub fn is_over(&self, now: Instant) -> bool {
        self.held.is_empty() || now >= self.until
    }

    /// What consumers are given: etcd's instances, plus the held ones.
    pub fn served(&self, live: &Instances) -> Instances {
        live.clone().union(self.held.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::record::test_record as record;

    fn instances(ports: &[u16]) -> Instances {
        ports
            .iter()
            .map(|&p| (format!("i{p}"), Arc::new(record(p))))
            .collect()
    }

    const KNOWN: Known = Known {
        instances: 3,
        revision: 50,
        cluster_id: 7,
    };

    #[test]
    fn only_a_lost_registry_starts_a_grace_period() {
        assert_eq!(judge_resync(KNOWN, 3, 60, 7), None);
        assert_eq!(
            judge_resync(KNOWN, 1, 60, 7),
            None,
            "a smaller set is believed"
        );
        assert_eq!(
            judge_resync(KNOWN, 0, 60, 7),
            Some(GraceReason::Emptied { before: 3 })
        );
        assert_eq!(
            judge_resync(KNOWN, 2, 4, 7),
            Some(GraceReason::RevisionWentBack { from: 50, to: 4 })
        );
        assert_eq!(
            judge_resync(KNOWN, 3, 60, 8),
            Some(GraceReason::ClusterChanged { from: 7, to: 8 })
        );
        let first = Known {
            instances: 0,
            revision: 0,
            cluster_id: 0,
        };
        assert_eq!(judge_resync(first, 0, 1, 7), None);
        let empty_before = Known {
            instances: 0,
            ..KNOWN
        };
        assert_eq!(judge_resync(empty_before, 0, 60, 7), None);
    }

    #[test]
    fn only_several_removals_that_empty_a_service_start_a_grace_period() {
        assert_eq!(
            judge_batch(3, 3, 0),
            Some(GraceReason::AllRemovedAtOnce { removed: 3 })
        );
        assert_eq!(judge_batch(1, 1, 0), None, "a single delete is believed");
        assert_eq!(judge_batch(3, 2, 1), None, "an instance is left");
        assert_eq!(judge_batch(0, 2, 0), None);
    }

    #[test]
    fn held_instances_settle_one_by_one_as_the_registry_refills() {
        let now = Instant::now();
        let served = instances(&[1, 2, 3]);
        let mut grace = Grace::start(
            GraceReason::Emptied { before: 3 },
            now + Duration::from_secs(20),
            &served,
            &instances(&[]),
        );
        assert_eq!(grace.served(&instances(&[])), served);
        assert!(grace.settled("i1"));
        assert!(!grace.is_over(now));
        let live = instances(&[1, 4]);
        assert_eq!(grace.served(&live), instances(&[1, 2, 3, 4]));
        grace.keep_missing(&instances(&[2]));
        assert_eq!(grace.held, instances(&[3]));
        grace.settled("i3");
        assert!(grace.is_over(now), "everything held has settled");
    }

    #[test]
    fn the_period_ends_at_its_deadline() {
        let now = Instant::now();
        let grace = Grace::start(
            GraceReason::Emptied { before: 1 },
            now + Duration::from_secs(1),
            &instances(&[1]),
            &instances(&[]),
        );
        assert!(!grace.is_over(now));
        assert!(grace.is_over(now + Duration::from_secs(1)));
    }

    proptest! {
        /// etcd's record of an instance always wins over a held one, and nothing etcd
        /// lists is ever missing from what is served.
        #[test]
        fn etcd_wins_and_is_always_served(
            before in proptest::collection::btree_set(1u16..20, 0..10),
            live in proptest::collection::btree_set(1u16..20, 0..10),
        ) {
            let served = instances(&before.iter().copied().collect::<Vec<_>>());
            let live_set: Instances = instances(&live.iter().copied().collect::<Vec<_>>())
                .into_iter()
                .map(|(id, mut r)| { Arc::make_mut(&mut r).weight = 1; (id, r) })
                .collect();
            let grace = Grace::start(GraceReason::Emptied { before: served.len() }, Instant::now(), &served, &live_set);
            let out = grace.served(&live_set);
            for (id, r) in live_set.iter() {
                prop_assert_eq!(out.get(id), Some(r));
            }
            for id in served.keys() {
                prop_assert!(out.contains_key(id));
            }
            prop_assert_eq!(out.len(), before.union(&live).count());
        }
    }
}
