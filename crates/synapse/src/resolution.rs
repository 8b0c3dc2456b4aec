//! What synapse keeps about a backend's DNS name: the addresses connections dial and the
//! lookup bookkeeping. Data only, so that the backend set can hold it without depending on
//! the resolver ([`crate::resolve`], which fills it in).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// The addresses a name resolved to, shared by every connection dialling them.
pub type Addrs = Arc<Vec<SocketAddr>>;

/// Whether `host` needs DNS at all.
pub fn is_name(host: &str) -> bool {
    host.parse::<IpAddr>().is_err()
}

/// One backend's resolved addresses and lookup bookkeeping (times from
/// [`crate::ejection::now_ms`], 0 for never).
#[derive(Debug, Default)]
pub struct Resolution {
    addrs: ArcSwapOption<Vec<SocketAddr>>,
    last_lookup: AtomicU64,
    /// A connect failed since the last lookup.
    stale: AtomicBool,
    /// The last lookup failed (for logging only the transitions).
    failing: AtomicBool,
}

impl Resolution {
    /// The addresses connections dial, if the name has resolved at least once.
    pub fn addrs(&self) -> Option<Addrs> {
        self.addrs.load_full()
    }

    /// A connect failed: look the name up again soon.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// When the last lookup started (0: never), whether the name has resolved, and whether
    /// a connect failed since.
    pub fn lookup_state(&self) -> (u64, bool, bool) {
        (
            self.last_lookup.load(Ordering::Relaxed),
            self.addrs.load().is_some(),
            self.stale.load(Ordering::Relaxed),
        )
    }

    /// A lookup starts at `now`.
    pub fn lookup_started(&self, now: u64) {
        self.last_lookup.store(now, Ordering::Relaxed);
        self.stale.store(false, Ordering::Relaxed);
    }

    /// A lookup answered `addrs`; whether they differ from those kept.
    pub fn resolved(&self, addrs: Addrs) -> bool {
        let changed = self.addrs().as_deref() != Some(&addrs);
        if changed {
            self.addrs.store(Some(addrs));
        }
        changed
    }

    /// Records whether the last lookup failed; whether the previous one did.
    pub fn set_failing(&self, failing: bool) -> bool {
        self.failing.swap(failing, Ordering::Relaxed)
    }
}
