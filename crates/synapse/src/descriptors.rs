//! File descriptors (RLIMIT_NOFILE): raising the soft limit at start, what the configured
//! services need, and each service's share when the limit cannot cover them all.
//!
//! Every proxied connection holds two descriptors, the client's and the backend's. Out of
//! descriptors, a service that accepts a client cannot connect it upstream, and one that
//! cannot accept leaves it in the backlog: without shares, slow clients piling up on one
//! service would take every descriptor and the other services' connections would fail.
//! So when the limit is below what `max_connections` asks for, the budget left after
//! [`reserve`] is split between the services ([`shares`]): each can then exhaust only its
//! own share, and the accept loop stops at it (`crate::limit`) as at `max_connections`.
//!
//! The decisions ([`needed`], [`shares`], [`plan`]) are pure; [`raise_soft_limit`] and
//! [`soft_limit`] are the only system calls.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors held by one proxied connection: the client's and the backend's.
pub const PER_CONNECTION: u64 = 2;

/// Descriptors kept for synapse itself, besides one listener per service: standard
/// streams, the runtime and its signal pipe, etcd connections, the admin server and its
/// clients, cache file writes, DNS lookups, a reload binding new listeners, a request being
/// replayed (`retry_unanswered`) while its first backend connection is still open. A
/// running synapse uses about 15.
pub const RESERVE: u64 = 64;

/// The fewest connections a service is capped to, however short the limit: below that a
/// service would be unusable, so the sum of the caps may then exceed the budget.
pub const MIN_CAP: u32 = 8;

/// Descriptors kept aside from connections for `services` services.
pub fn reserve(services: usize) -> u64 {
    RESERVE + services as u64
}

/// Descriptors the services need at their `max_connections`, the reserve included.
pub fn needed(max_connections: &[u32]) -> u64 {
    let connections: u64 = max_connections.iter().map(|&m| u64::from(m)).sum();
    reserve(max_connections.len()) + PER_CONNECTION * connections
}

/// Connections that `limit` descriptors allow for `services` services altogether.
pub fn connection_budget(limit: u64, services: usize) -> u64 {
    limit.saturating_sub(reserve(services)) / PER_CONNECTION
}

/// Each service's cap (same order as `max_connections`) when `budget` connections are
/// shared between them: max-min fair (water-filling). A service that wants less than an
/// equal share keeps its `max_connections` and leaves the rest to the others; the others
/// split what is left equally. Never more than a service's `max_connections`, never less
/// than [`MIN_CAP`] (or its `max_connections`, if lower). When `budget` is at least
/// `MIN_CAP` per service, the caps add up to at most `budget`.
pub fn shares(max_connections: &[u32], budget: u64) -> Vec<u32> {
    let mut order: Vec<usize> = (0..max_connections.len()).collect();
    order.sort_by_key(|&i| max_connections[i]);
    let mut caps = vec![0; max_connections.len()];
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let max = max_connections[i];
        let share = left / (order.len() - k) as u64;
        // At most `max`, so it fits in a u32.
        let cap = share.min(u64::from(max)) as u32;
        left -= u64::from(cap);
        caps[i] = cap.max(MIN_CAP.min(max));
    }
    caps
}

/// What the descriptor limit means for the configured services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The soft RLIMIT_NOFILE; `None` when unlimited or unknown.
    pub limit: Option<u64>,
    /// Descriptors needed at every service's `max_connections` ([`needed`]).
    pub needed: u64,
    /// Per service, in the order given: its cap when lower than its `max_connections`.
    pub caps: Vec<Option<u32>>,
}

impl Plan {
    /// Whether the limit is below what `max_connections` needs.
    pub fn short(&self) -> bool {
        self.limit.is_some_and(|l| l < self.needed)
    }
}

/// The caps for services with these `max_connections` under `limit`: none when the limit
/// covers them all, else each service's [`shares`] of the [`connection_budget`].
pub fn plan(max_connections: &[u32], limit: Option<u64>) -> Plan {
    let needed = needed(max_connections);
    let caps = match limit {
        Some(limit) if limit < needed => {
            let budget = connection_budget(limit, max_connections.len());
            shares(max_connections, budget)
                .into_iter()
                .zip(max_connections)
                .map(|(cap, &max)| (cap < max).then_some(cap))
                .collect()
        }
        _ => vec![None; max_connections.len()],
    };
    Plan {
        limit,
        needed,
        caps,
    }
}

/// Logs a plan: a warning naming the numbers and the fix when the limit is short, with
/// one line per capped service; `was_short` (a reload) says when a shortage has ended.
pub fn report(plan: &Plan, services: &[(&str, u32)], was_short: bool) {
    if !plan.short() {
        if was_short {
            tracing::info!(
                limit = plan.limit,
                needed = plan.needed,
                "the descriptor limit now covers max_connections: no service is capped"
            );
        }
        return;
    }
    let connections: u64 = services.iter().map(|(_, m)| u64::from(*m)).sum();
    tracing::warn!(
        limit = plan.limit,
        needed = plan.needed,
        max_connections = connections,
        reserve = reserve(services.len()),
        "the descriptor limit (RLIMIT_NOFILE) is below what max_connections needs \
         ({PER_CONNECTION} per connection plus the reserve): each service is capped to its share; \
         raise the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn) to at least {}, \
         or lower max_connections",
        plan.needed
    );
    for ((name, max), cap) in services.iter().zip(&plan.caps) {
        if let Some(cap) = cap {
            tracing::warn!(
                service = %name, max_connections = max, effective_max_connections = cap,
                "max_connections capped to the service's share of the descriptor limit"
            );
        }
    }
}

/// The soft descriptor limit before and after [`raise_soft_limit`], and the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub old_soft: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as HAProxy and nginx do): the soft
/// limit is often 1024 (systemd's default) with a much higher hard limit, and nothing
/// synapse does needs the low one (it never uses `select`). Errors are the system's.
pub fn raise_soft_limit() -> nix::Result<Raised> {
    let (old_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if old_soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(Raised {
        old_soft,
        soft,
        hard,
    })
}

/// The soft RLIMIT_NOFILE now; `None` when unlimited or when it cannot be read.
pub fn soft_limit() -> Option<u64> {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => Some(soft),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit (RLIMIT_NOFILE); no service is capped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn needed_counts_two_per_connection_plus_the_reserve() {
        assert_eq!(needed(&[]), RESERVE);
        assert_eq!(needed(&[10_000]), RESERVE + 1 + 20_000);
        assert_eq!(needed(&[100, 50]), RESERVE + 2 + 300);
        // No overflow with many huge services.
        assert_eq!(
            needed(&vec![u32::MAX; 1000]),
            RESERVE + 1000 + 2 * 1000 * u64::from(u32::MAX)
        );
    }

    #[test]
    fn the_issue_8_case_splits_the_budget_between_two_services() {
        // Two services at the default 10,000 under soft = hard = 1024.
        let p = plan(&[10_000, 10_000], Some(1024));
        assert!(p.short());
        assert_eq!(p.needed, 40_066);
        let budget = (1024 - RESERVE - 2) / 2;
        assert_eq!(budget, 479);
        assert_eq!(p.caps, vec![Some(239), Some(240)]);
    }

    #[test]
    fn a_small_service_keeps_its_max_and_leaves_the_rest_to_the_others() {
        assert_eq!(shares(&[10_000, 20, 10_000], 200), vec![90, 20, 90]);
        let p = plan(&[10_000, 20, 10_000], Some(RESERVE + 3 + 400));
        assert_eq!(p.caps, vec![Some(90), None, Some(90)]);
    }

    #[test]
    fn a_limit_that_covers_everything_caps_nothing() {
        let p = plan(&[100, 200], Some(needed(&[100, 200])));
        assert!(!p.short());
        assert_eq!(p.caps, vec![None, None]);
        let p = plan(&[100, 200], Some(needed(&[100, 200]) - 1));
        assert!(p.short());
        assert_eq!(p.caps, vec![None, Some(199)]);
        let p = plan(&[100, 200], None);
        assert!(!p.short());
        assert_eq!(p.caps, vec![None, None]);
    }

    #[test]
    fn a_limit_below_the_reserve_gives_each_service_the_floor() {
        let p = plan(&[10_000, 3], Some(20));
        assert!(p.short());
        assert_eq!(p.caps, vec![Some(MIN_CAP), None]);
        assert_eq!(shares(&[10_000, 3], 0), vec![MIN_CAP, 3]);
    }

    fn maxes() -> impl Strategy<Value = Vec<u32>> {
        proptest::collection::vec(
            prop_oneof![1u32..20, 1u32..2_000, Just(10_000u32), Just(u32::MAX)],
            0..12,
        )
    }

    proptest! {
        #[test]
        fn shares_fit_the_budget_stay_under_max_and_are_fair(maxes in maxes(), budget in 0u64..50_000) {
            let caps = shares(&maxes, budget);
            prop_assert_eq!(caps.len(), maxes.len());
            let floor_fits = budget >= u64::from(MIN_CAP) * maxes.len() as u64;
            let total: u64 = caps.iter().map(|&c| u64::from(c)).sum();
            if floor_fits {
                prop_assert!(total <= budget, "caps {:?} add up to {} > budget {}", caps, total, budget);
            }
            for (i, (&cap, &max)) in caps.iter().zip(&maxes).enumerate() {
                prop_assert!(cap <= max, "cap {} above max_connections {}", cap, max);
                prop_assert!(cap >= MIN_CAP.min(max), "cap {} below the floor", cap);
                // Max-min fair: a service held below its max gets no less (give or take
                // the rounding) than any other service.
                if cap < max && floor_fits {
                    for &other in &caps {
                        prop_assert!(
                            other <= cap + 1,
                            "service {} capped at {} while another has {}: {:?}", i, cap, other, caps
                        );
                    }
                    // And the budget is used, up to rounding.
                    prop_assert!(
                        budget - total < maxes.len() as u64,
                        "{} of {} left unused: {:?}", budget - total, budget, caps
                    );
                }
            }
            if maxes.iter().map(|&m| u64::from(m)).sum::<u64>() <= budget {
                prop_assert_eq!(&caps, &maxes);
            }
        }

        #[test]
        fn a_plan_caps_only_when_the_limit_is_short(
            maxes in maxes(),
            limit in prop_oneof![0u64..100_000, Just(u64::MAX)],
        ) {
            let p = plan(&maxes, Some(limit));
            prop_assert_eq!(p.short(), limit < needed(&maxes));
            if !p.short() {
                prop_assert!(p.caps.iter().all(Option::is_none));
            }
            for (cap, &max) in p.caps.iter().zip(&maxes) {
                prop_assert!(cap.is_none_or(|c| c < max));
            }
            // With the budget covering the floor, the caps and the uncapped maxes fit in the
            // limit.
            let budget = connection_budget(limit, maxes.len());
            if p.short() && budget >= u64::from(MIN_CAP) * maxes.len() as u64 {
                let connections: u64 = p.caps.iter().zip(&maxes).map(|(c, &m)| u64::from(c.unwrap_or(m))).sum();
                prop_assert!(reserve(maxes.len()) + PER_CONNECTION * connections <= limit);
            }
        }

        #[test]
        fn more_budget_never_lowers_a_cap(maxes in maxes(), budget in 0u64..50_000, more in 0u64..5_000) {
            let (before, after) = (shares(&maxes, budget), shares(&maxes, budget + more));
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(a >= b, "{:?} -> {:?}", before, after);
            }
        }
    }
}
