//! The relay's knobs ([`RelayOptions`], [`Strategy`]) and the `DATAPATH_STRATEGY`
//! environment override that benchmarks and tests use to force a path.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Per direction and per burst: messages that fit in the buffer are read and written
    /// (one `read` + one `write` each); a read that fills the buffer switches that
    /// direction to splice, until two bursts in a row move less than a quarter buffer.
    /// Buffers only where splice is unavailable.
    Auto,
    /// Always `splice(2)` through a pipe (Linux); falls back to buffers only when the
    /// kernel refuses splice for these sockets.
    Splice,
    /// Always read into a pooled buffer and write it out: the portable path.
    Buffered,
}

impl Strategy {
    /// The lower-case name used by `DATAPATH_STRATEGY` and the benchmark tool.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Splice => "splice",
            Strategy::Buffered => "buffered",
        }
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Strategy::Auto),
            "splice" => Ok(Strategy::Splice),
            "buffered" | "buffer" | "copy" => Ok(Strategy::Buffered),
            other => Err(format!(
                "unknown relay strategy {other:?} (expected auto, splice or buffered)"
            )),
        }
    }
}

/// Default size of a pooled read buffer (portable path and small messages).
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Pipe capacity requested with `F_SETPIPE_SZ`; when the kernel refuses, the pipe keeps
/// its default size (64 KiB on Linux) silently.
pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;

/// Every knob of [`crate::relay_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// End the relay with `TimedOut` when no byte moved either way for this long.
    pub idle_timeout: Option<Duration>,
    /// How bytes are moved; the default honours `DATAPATH_STRATEGY`, else [`Strategy::Auto`].
    pub strategy: Strategy,
    /// Size of each pooled buffer, at least 1 KiB.
    pub buffer_size: usize,
    /// Requested pipe capacity for splice, in bytes.
    pub pipe_size: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            idle_timeout: None,
            strategy: env_strategy().unwrap_or(Strategy::Auto),
            buffer_size: DEFAULT_BUFFER_SIZE,
            pipe_size: DEFAULT_PIPE_SIZE,
        }
    }
}

impl RelayOptions {
    /// The buffer size actually used (never below 1 KiB).
    pub(crate) fn effective_buffer_size(&self) -> usize {
        self.buffer_size.max(1024)
    }
}

/// `DATAPATH_STRATEGY` from the environment, read once per process. An unparsable value is
/// ignored (the default strategy is used) rather than failing connections.
pub fn env_strategy() -> Option<Strategy> {
    static STRATEGY: OnceLock<Option<Strategy>> = OnceLock::new();
    *STRATEGY.get_or_init(|| {
        std::env::var("DATAPATH_STRATEGY")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip() {
        for s in [Strategy::Auto, Strategy::Splice, Strategy::Buffered] {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert_eq!(" Buffered ".parse::<Strategy>(), Ok(Strategy::Buffered));
        assert!("zerocopy".parse::<Strategy>().is_err());
    }

    #[test]
    fn buffer_size_has_a_floor() {
        let o = RelayOptions {
            buffer_size: 0,
            ..RelayOptions::default()
        };
        assert_eq!(o.effective_buffer_size(), 1024);
    }
}
