//! The last rounds of checks of an instance, as `/status` shows them (`recent_checks`, the
//! dashboard's strip): a ring that keeps the newest [`KEPT`], oldest first.

use std::collections::VecDeque;

use serde::Serialize;

/// How many rounds are kept: half a minute at the default `check_interval` (1 s), small
/// enough that `/status` stays short with many instances.
pub const KEPT: usize = 30;

/// One round of checks (all of an instance's checks, run together).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentCheck {
    pub passed: bool,
    /// When the round finished, Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// How long the round took (its slowest check).
    pub duration_ms: f64,
    /// The failure reason; `null` when passed.
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
pub struct RecentChecks(VecDeque<RecentCheck>);

impl RecentChecks {
    /// Adds the newest round, dropping the oldest beyond [`KEPT`].
    pub fn push(&mut self, round: RecentCheck) {
        if self.0.len() >= KEPT {
            self.0.pop_front();
        }
        self.0.push_back(round);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Oldest first.
    pub fn to_vec(&self) -> Vec<RecentCheck> {
        self.0.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(at_unix_ms: u64) -> RecentCheck {
        RecentCheck {
            passed: at_unix_ms % 2 == 0,
            at_unix_ms,
            duration_ms: 0.5,
            reason: None,
        }
    }

    #[test]
    fn keeps_the_newest_rounds_oldest_first() {
        let mut recent = RecentChecks::default();
        for at in 0..3 {
            recent.push(round(at));
        }
        let times = |r: &RecentChecks| r.to_vec().iter().map(|c| c.at_unix_ms).collect::<Vec<_>>();
        assert_eq!(times(&recent), [0, 1, 2]);
        for at in 3..100 {
            recent.push(round(at));
        }
        let kept = times(&recent);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept, (100 - KEPT as u64..100).collect::<Vec<_>>());
        recent.clear();
        assert!(recent.to_vec().is_empty());
    }

    #[test]
    fn a_round_is_written_with_the_documented_fields() {
        let failed = RecentCheck {
            passed: false,
            at_unix_ms: 1_795_000_000_000,
            duration_ms: 1.25,
            reason: Some("connect 127.0.0.1:1: refused".into()),
        };
        let json = serde_json::to_value(&failed).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"passed": false, "at_unix_ms": 1_795_000_000_000u64,
                               "duration_ms": 1.25, "reason": "connect 127.0.0.1:1: refused"})
        );
    }
}
