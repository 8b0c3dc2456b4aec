//! Choosing a backend for a new connection: pure functions over a snapshot of the backends.
//!
//! A pick happens in two stages. [`pool`] decides which backends may be chosen at all
//! (weight above 0, not already tried for this connection, zone affinity, ejection with its
//! panic fallback); then the policy chooses within that pool:
//! - round robin walks a precomputed smooth weighted schedule ([`schedule`]) with a shared
//!   cursor, so concurrent picks need nothing but an atomic increment;
//! - least_conn samples two backends and takes the one with fewer active connections per
//!   unit of weight (power of two choices: close to least-loaded without a global scan
//!   that every pick would contend on);
//! - random is weighted random.
//!
//! Nothing here locks, allocates more than the pool (none with [`pick_in`] and a reused
//! buffer), or does I/O, which is what makes it
//! testable with properties and cheap on the accept path.

use rand::Rng;

use crate::config::Balance;
use crate::slow_start::FULL;

/// What a pick knows about one backend at this moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub weight: u32,
    /// Per mille of its share it takes now: [`FULL`] unless it warms up
    /// ([`crate::slow_start`]).
    pub ramp: u32,
    pub ejected: bool,
    /// Connections (tcp mode) or requests in flight (http mode).
    pub active: u64,
    /// Peak-EWMA response time in nanoseconds (http mode; see [`crate::latency`]).
    pub latency: u64,
    /// In synapse's own zone.
    pub local: bool,
}

/// Zone preference: prefer local backends while at least `min_local` of them are healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneAffinity {
    pub min_local: u32,
}

/// Total weight a schedule is scaled down to, bounding its length (and memory).
const SCHEDULE_WEIGHT_LIMIT: u64 = 4096;

/// The smooth weighted round-robin order (nginx's algorithm) over one full cycle: each
/// backend appears in proportion to its weight, interleaved rather than in runs, so a
/// heavy backend does not get bursts. Weight-0 backends never appear. Large weights are
/// scaled down (never below 1) so that the cycle stays short.
///
/// nginx's loop costs O(backends) per slot. Here backends of equal weight are walked as one
/// group, which yields the same order: within a group every member gains the same each
/// step, so they are picked in index order, round after round, and only the group's next
/// member can be the group's maximum. A slot then costs O(distinct weights): one or two
/// groups for a service of thousands of instances, even during a canary.
pub fn schedule(weights: &[u32]) -> Vec<usize> {
    let scaled = scale(weights);
    let total: i64 = scaled.iter().sum();
    let mut groups = weight_groups(&scaled);
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for g in 0..groups.len() {
            groups[g].current += groups[g].weight;
            let (a, b) = (&groups[g], &groups[best]);
            // The highest current wins; ties go to the lowest backend index, as in
            // nginx's loop over backends.
            if a.current > b.current || (a.current == b.current && a.next() < b.next()) {
                best = g;
            }
        }
        let group = &mut groups[best];
        order.push(group.next());
        group.position += 1;
        if group.position == group.members.len() {
            // Every member has had its turn: all of them now stand where the first did.
            group.position = 0;
            group.current -= total;
        }
    }
    order
}

/// Weights scaled so that their sum stays near [`SCHEDULE_WEIGHT_LIMIT`] (a weight above 0
/// stays at least 1).
fn scale(weights: &[u32]) -> Vec<i64> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    weights
        .iter()
        .map(|&w| {
            let w = u64::from(w);
            if w == 0 {
                0
            } else if total > SCHEDULE_WEIGHT_LIMIT {
                (w * SCHEDULE_WEIGHT_LIMIT / total).max(1) as i64
            } else {
                w as i64
            }
        })
        .collect()
}

/// Backends of one (scaled) weight, walked together by [`schedule`]. Members from
/// `position` on stand at `current`; those before it have had their turn this round and
/// stand one `total` lower.
struct WeightGroup {
    weight: i64,
    /// Backend indexes, ascending.
    members: Vec<usize>,
    position: usize,
    current: i64,
}

impl WeightGroup {
    fn next(&self) -> usize {
        self.members[self.position]
    }
}

fn weight_groups(scaled: &[i64]) -> Vec<WeightGroup> {
    let mut by_weight: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, &w) in scaled.iter().enumerate() {
        if w > 0 {
            by_weight.entry(w).or_default().push(i);
        }
    }
    by_weight
        .into_iter()
        .map(|(weight, members)| WeightGroup {
            weight,
            members,
            position: 0,
            current: 0,
        })
        .collect()
}

/// The backends a new connection may go to, best class first: untried backends with a
/// weight, then within them local healthy ones (when zone affinity holds), else healthy
/// ones, else (panic: everything looks dead) ejected ones too. Empty only when every
/// backend with a weight has been tried.
#[cfg(test)]
pub fn pool(candidates: &[Candidate], tried: &[usize], zone: Option<ZoneAffinity>) -> Vec<usize> {
    let mut out = Vec::new();
    pool_into(candidates, tried, zone, &mut out);
    out
}

/// [`pool`] into a caller's buffer (cleared first), so that the accept path can reuse one
/// buffer instead of allocating per pick.
pub fn pool_into(
    candidates: &[Candidate],
    tried: &[usize],
    zone: Option<ZoneAffinity>,
    out: &mut Vec<usize>,
) {
    out.clear();
    let open = |i: &usize| candidates[*i].weight > 0 && !tried.contains(i);
    let healthy = |i: &usize| !candidates[*i].ejected;
    if let Some(zone) = zone {
        // Whether affinity applies depends on the zone's health, not on this connection's
        // retries; once the local ones are tried, retries move to other zones.
        let local_healthy = candidates
            .iter()
            .filter(|c| c.local && !c.ejected && c.weight > 0)
            .count();
        if local_healthy as u64 >= u64::from(zone.min_local.max(1)) {
            out.extend(
                (0..candidates.len()).filter(|i| open(i) && healthy(i) && candidates[*i].local),
            );
            if !out.is_empty() {
                return;
            }
        }
    }
    out.extend((0..candidates.len()).filter(|i| open(i) && healthy(i)));
    if !out.is_empty() {
        return;
    }
    out.extend((0..candidates.len()).filter(open));
}

/// Round robin: takes schedule positions from `next_position` until one names a backend in
/// `pool`. Skipped positions are consumed too, so the backends in the pool keep their
/// relative shares whatever is excluded.
pub fn pick_round_robin(
    schedule: &[usize],
    pool: &[usize],
    mut next_position: impl FnMut() -> usize,
) -> Option<usize> {
    if schedule.is_empty() || pool.is_empty() {
        return None;
    }
    for _ in 0..schedule.len() {
        let backend = schedule[next_position() % schedule.len()];
        if pool.contains(&backend) {
            return Some(backend);
        }
    }
    None
}

/// Power of two choices: two distinct random members of the pool, the one with fewer
/// active connections per unit of weight wins; ties go either way at random.
pub fn pick_least_conn<R: Rng>(
    candidates: &[Candidate],
    pool: &[usize],
    rng: &mut R,
) -> Option<usize> {
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = pool[rng.random_range(0..n)];
            let mut b = pool[rng.random_range(0..n - 1)];
            if b == a {
                b = pool[n - 1];
            }
            let (ca, cb) = (&candidates[a], &candidates[b]);
            // active_a / weight_a vs active_b / weight_b without division.
            let load_a = u128::from(ca.active) * u128::from(cb.weight.max(1));
            let load_b = u128::from(cb.active) * u128::from(ca.weight.max(1));
            Some(match load_a.cmp(&load_b) {
                std::cmp::Ordering::Less => a,
                std::cmp::Ordering::Greater => b,
                std::cmp::Ordering::Equal => {
                    if rng.random_bool(0.5) {
                        a
                    } else {
                        b
                    }
                }
            })
        }
    }
}

/// Power of two choices on peak-EWMA latency times (requests in flight + 1), per unit of
/// weight: a slow backend, or one with a queue, loses most draws at once.
pub fn pick_peak_ewma<R: Rng>(
    candidates: &[Candidate],
    pool: &[usize],
    rng: &mut R,
) -> Option<usize> {
    let (a, b) = two_of(pool, rng)?;
    let cost =
        |c: &Candidate| c.latency as f64 * (c.active as f64 + 1.0) / f64::from(c.weight.max(1));
    let (ca, cb) = (cost(&candidates[a]), cost(&candidates[b]));
    Some(if ca < cb {
        a
    } else if cb < ca {
        b
    } else if rng.random_bool(0.5) {
        a
    } else {
        b
    })
}

/// Two distinct random members of `pool` (the same one twice when it has one member).
fn two_of<R: Rng>(pool: &[usize], rng: &mut R) -> Option<(usize, usize)> {
    match pool.len() {
        0 => None,
        1 => Some((pool[0], pool[0])),
        n => {
            let a = pool[rng.random_range(0..n)];
            let mut b = pool[rng.random_range(0..n - 1)];
            if b == a {
                b = pool[n - 1];
            }
            Some((a, b))
        }
    }
}

/// Weighted random within the pool.
pub fn pick_random<R: Rng>(candidates: &[Candidate], pool: &[usize], rng: &mut R) -> Option<usize> {
    let total: u64 = pool.iter().map(|&i| u64::from(candidates[i].weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for &i in pool {
        let w = u64::from(candidates[i].weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// One pick with `policy`: the pool, then the policy's choice within it.
#[cfg(test)]
pub fn pick<R: Rng>(
    policy: Balance,
    candidates: &[Candidate],
    tried: &[usize],
    zone: Option<ZoneAffinity>,
    schedule: &[usize],
    next_position: impl FnMut() -> usize,
    rng: &mut R,
) -> Option<usize> {
    let mut pool = Vec::new();
    pick_in(
        policy,
        candidates,
        tried,
        zone,
        schedule,
        next_position,
        rng,
        &mut pool,
    )
}

/// One pick with `policy` (the pool, then the policy's choice within it), with the pool
/// built in a caller's buffer (see [`pool_into`]).
#[allow(clippy::too_many_arguments)]
pub fn pick_in<R: Rng>(
    policy: Balance,
    candidates: &[Candidate],
    tried: &[usize],
    zone: Option<ZoneAffinity>,
    schedule: &[usize],
    next_position: impl FnMut() -> usize,
    rng: &mut R,
    pool: &mut Vec<usize>,
) -> Option<usize> {
    pool_into(candidates, tried, zone, pool);
    let mut next_position = next_position;
    let mut choose = |rng: &mut R| match policy {
        Balance::RoundRobin => pick_round_robin(schedule, pool, &mut next_position),
        Balance::LeastConn | Balance::LeastRequest => pick_least_conn(candidates, pool, rng),
        Balance::PeakEwma => pick_peak_ewma(candidates, pool, rng),
        Balance::Random => pick_random(candidates, pool, rng),
    };
    // Slow start: a warming backend keeps a choice only with probability `ramp`, else the
    // policy chooses again. Its share is then that of its weight scaled by `ramp` (exactly
    // for round robin and random, whose choices are independent of the refusal), with no
    // schedule rebuilt as it ramps. After a few refusals in a row (every backend warming)
    // the last choice stands.
    let mut chosen = choose(rng)?;
    for _ in 0..RAMP_REDRAWS {
        let ramp = candidates[chosen].ramp;
        if ramp >= FULL || rng.random_range(0..FULL) < ramp {
            break;
        }
        chosen = choose(rng)?;
    }
    Some(chosen)
}

/// How often a pick is drawn again after a warming backend refused it.
const RAMP_REDRAWS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn healthy(weight: u32) -> Candidate {
        Candidate {
            weight,
            ramp: FULL,
            ejected: false,
            active: 0,
            latency: 1_000_000,
            local: false,
        }
    }

    /// Picks `n` times with no retries and counts the choices per backend.
    fn counts(
        policy: Balance,
        cands: &[Candidate],
        zone: Option<ZoneAffinity>,
        n: usize,
        seed: u64,
    ) -> Vec<usize> {
        let sched = schedule(&cands.iter().map(|c| c.weight).collect::<Vec<_>>());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cursor = 0usize;
        let mut counts = vec![0; cands.len()];
        for _ in 0..n {
            let chosen = pick(
                policy,
                cands,
                &[],
                zone,
                &sched,
                || {
                    cursor += 1;
                    cursor - 1
                },
                &mut rng,
            );
            if let Some(i) = chosen {
                counts[i] += 1;
            }
        }
        counts
    }

    fn any_policy() -> impl Strategy<Value = Balance> {
        prop_oneof![
            Just(Balance::RoundRobin),
            Just(Balance::LeastConn),
            Just(Balance::Random),
            Just(Balance::PeakEwma),
            Just(Balance::LeastRequest)
        ]
    }

    fn any_candidate() -> impl Strategy<Value = Candidate> {
        let ramp = prop_oneof![Just(FULL), 100u32..=FULL];
        (0u32..20, ramp, any::<bool>(), 0u64..5, any::<bool>()).prop_map(
            |(weight, ramp, ejected, active, local)| Candidate {
                weight,
                ramp,
                ejected,
                active,
                latency: 1_000_000,
                local,
            },
        )
    }

    /// nginx's loop, one pass over every backend per slot: the reference [`schedule`]
    /// must agree with.
    fn schedule_by_nginx_loop(weights: &[u32]) -> Vec<usize> {
        let scaled = scale(weights);
        let total: i64 = scaled.iter().sum();
        let mut current = vec![0i64; scaled.len()];
        let mut order = Vec::new();
        for _ in 0..total {
            let mut best = 0;
            for i in 0..scaled.len() {
                current[i] += scaled[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best);
        }
        order
    }

    proptest! {
        #[test]
        fn grouping_equal_weights_gives_nginx_order(
            weights in proptest::collection::vec(
                prop_oneof![Just(0u32), Just(1), Just(5), Just(100), 0u32..300],
                0..40,
            ),
        ) {
            prop_assert_eq!(schedule(&weights), schedule_by_nginx_loop(&weights));
        }
    }

    #[test]
    fn large_sets_get_the_nginx_order_too() {
        let mut weights = vec![100u32; 3000];
        weights[7] = 5;
        weights[2999] = 0;
        assert_eq!(schedule(&weights), schedule_by_nginx_loop(&weights));
    }

    #[test]
    fn the_schedule_interleaves_by_weight() {
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(schedule(&[0, 2]), vec![1, 1]);
        assert!(schedule(&[0, 0]).is_empty());
        // Huge weights are scaled, keeping proportions and never dropping a backend.
        let s = schedule(&[u32::MAX, 1]);
        assert!(s.len() as u64 <= SCHEDULE_WEIGHT_LIMIT + 1);
        assert!(s.contains(&1));
    }

    proptest! {
        /// Round robin and random deliver each backend its share of weight within tolerance.
        #[test]
        fn picks_follow_weights(
            weights in proptest::collection::vec(0u32..50, 1..8),
            policy in prop_oneof![Just(Balance::RoundRobin), Just(Balance::Random)],
            seed in any::<u64>(),
        ) {
            let total: u32 = weights.iter().sum();
            prop_assume!(total > 0);
            let cands: Vec<Candidate> = weights.iter().map(|&w| healthy(w)).collect();
            let n = 20_000;
            let got = counts(policy, &cands, None, n, seed);
            for (i, &w) in weights.iter().enumerate() {
                let expected = f64::from(w) / f64::from(total);
                let share = got[i] as f64 / n as f64;
                let tolerance = if policy == Balance::RoundRobin { 0.002 } else { 0.03 };
                prop_assert!(
                    (share - expected).abs() <= tolerance,
                    "backend {} weight {} share {} expected {}", i, w, share, expected
                );
            }
        }

        /// Weight 0 is never chosen by any policy, whatever else is going on.
        #[test]
        fn weight_zero_is_never_picked(
            cands in proptest::collection::vec(any_candidate(), 1..8),
            policy in any_policy(),
            seed in any::<u64>(),
            zone in proptest::option::of(0u32..3),
        ) {
            let zone = zone.map(|min_local| ZoneAffinity { min_local });
            let got = counts(policy, &cands, zone, 500, seed);
            for (i, c) in cands.iter().enumerate() {
                if c.weight == 0 {
                    prop_assert_eq!(got[i], 0);
                }
            }
        }

        /// Ejected backends are chosen only when nothing healthy with a weight is left
        /// (the panic threshold); and then something is always chosen.
        #[test]
        fn ejected_backends_only_in_panic(
            cands in proptest::collection::vec(any_candidate(), 1..8),
            tried in proptest::collection::vec(0usize..8, 0..4),
            policy in any_policy(),
            seed in any::<u64>(),
        ) {
            let sched = schedule(&cands.iter().map(|c| c.weight).collect::<Vec<_>>());
            let mut rng = StdRng::seed_from_u64(seed);
            let mut cursor = 0;
            let healthy_left = (0..cands.len())
                .any(|i| cands[i].weight > 0 && !cands[i].ejected && !tried.contains(&i));
            let any_left = (0..cands.len()).any(|i| cands[i].weight > 0 && !tried.contains(&i));
            for _ in 0..50 {
                let chosen = pick(policy, &cands, &tried, None, &sched, || { cursor += 1; cursor }, &mut rng);
                match chosen {
                    Some(i) => {
                        prop_assert!(!tried.contains(&i), "a tried backend was picked again");
                        if healthy_left {
                            prop_assert!(!cands[i].ejected, "ejected backend {} picked while healthy ones remain", i);
                        }
                    }
                    None => prop_assert!(!any_left, "nothing picked although untried backends remain"),
                }
            }
        }

        /// Power of two choices never sends a connection to the single busiest backend,
        /// and idle backends get more than an even share.
        #[test]
        fn least_conn_favours_idle_backends(n in 2usize..8, busy in 1u64..100, seed in any::<u64>()) {
            let mut cands: Vec<Candidate> = (0..n).map(|_| healthy(100)).collect();
            cands[0].active = busy;
            let got = counts(Balance::LeastConn, &cands, None, 2000, seed);
            prop_assert_eq!(got[0], 0, "the busiest backend was picked");
            // One idle backend among busy ones gets well over its even share.
            let mut cands: Vec<Candidate> = (0..n).map(|_| Candidate { active: busy, ..healthy(100) }).collect();
            cands[0].active = 0;
            let got = counts(Balance::LeastConn, &cands, None, 2000, seed);
            prop_assert!(got[0] as f64 > 1.5 * 2000.0 / n as f64, "idle backend got {} of 2000 among {}", got[0], n);
        }

        /// With zone affinity, only local backends are chosen while enough of them are
        /// healthy; otherwise every zone is used.
        #[test]
        fn zone_affinity_prefers_local_backends(
            cands in proptest::collection::vec(any_candidate(), 1..8),
            min_local in 1u32..3,
            policy in any_policy(),
            seed in any::<u64>(),
        ) {
            let local_healthy = cands.iter().filter(|c| c.local && !c.ejected && c.weight > 0).count() as u32;
            let got = counts(policy, &cands, Some(ZoneAffinity { min_local }), 300, seed);
            if local_healthy >= min_local {
                for (i, c) in cands.iter().enumerate() {
                    if !c.local || c.ejected {
                        prop_assert_eq!(got[i], 0, "non-local or ejected backend {} picked under affinity", i);
                    }
                }
            }
        }
    }

    /// Peak EWMA: a backend answering in 1 s next to nine answering in 5 ms gets nothing
    /// (p2c always draws two distinct backends, and it loses to any fast one), and a busy
    /// one loses to an idle one of the same latency.
    #[test]
    fn peak_ewma_avoids_the_slow_and_the_busy() {
        let fast = Candidate {
            latency: 5_000_000,
            ..healthy(100)
        };
        let slow = Candidate {
            latency: 1_000_000_000,
            ..fast
        };
        let mut cands = vec![fast; 9];
        cands.push(slow);
        let got = counts(Balance::PeakEwma, &cands, None, 10_000, 3);
        assert_eq!(got[9], 0, "{got:?}");
        let busy = Candidate { active: 5, ..fast };
        let got = counts(Balance::PeakEwma, &[busy, fast], None, 1_000, 3);
        assert_eq!(got[0], 0, "{got:?}");
    }

    /// Slow start: a backend at 10 % of its ramp, next to one of the same weight at full
    /// share, gets about 10/110 of the picks under round robin and random (exact in
    /// expectation), and a small share under least_conn too; at full ramp, half.
    #[test]
    fn a_warming_backend_gets_its_weight_scaled_by_its_ramp() {
        let warming = Candidate {
            ramp: crate::slow_start::START_PERMILLE,
            ..healthy(100)
        };
        let n = 22_000;
        for policy in [Balance::RoundRobin, Balance::Random, Balance::LeastConn] {
            let got = counts(policy, &[warming, healthy(100)], None, n, 7);
            let share = got[0] as f64 / n as f64;
            let expected = 10.0 / 110.0;
            assert!(
                (share - expected).abs() < 0.02,
                "{policy:?}: warming share {share:.3}, expected about {expected:.3}"
            );
            let full = Candidate {
                ramp: FULL,
                ..warming
            };
            let got = counts(policy, &[full, healthy(100)], None, n, 7);
            let share = got[0] as f64 / n as f64;
            assert!((share - 0.5).abs() < 0.02, "{policy:?}: {share:.3}");
        }
        // Every backend warming alike: they still share alike.
        let got = counts(Balance::RoundRobin, &[warming, warming], None, 1000, 7);
        assert!(got[0].abs_diff(got[1]) < 100, "{got:?}");
    }

    #[test]
    fn zone_affinity_falls_back_when_too_few_local_backends_are_healthy() {
        let local = Candidate {
            local: true,
            ..healthy(1)
        };
        let cands = [
            local,
            Candidate {
                ejected: true,
                ..local
            },
            healthy(1),
        ];
        let zone = Some(ZoneAffinity { min_local: 2 });
        let got = counts(Balance::RoundRobin, &cands, zone, 100, 1);
        assert_eq!(got, vec![50, 0, 50]);
        let zone = Some(ZoneAffinity { min_local: 1 });
        let got = counts(Balance::RoundRobin, &cands, zone, 100, 1);
        assert_eq!(got, vec![100, 0, 0]);
        // Retries leave the zone once the local ones are tried.
        assert_eq!(pool(&cands, &[0], zone), vec![2]);
    }
}
