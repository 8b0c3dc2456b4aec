//! HAProxy configuration lines, as Airbnb's synapse takes them (`haproxy.defaults` and each
//! service's `listen`, `frontend` and `backend`), read for what has an equivalent in our
//! services: `balance`, `retries`, `timeout connect`, the inactivity timeouts and
//! `maxconn`. A pure reading for `--import-smartstack`; every other line is reported with
//! why it has no equivalent.

use std::time::Duration;

use crate::config::Balance;

/// What the lines of one service (its defaults, then its own lines) set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub balance: Option<Balance>,
    pub retries: Option<u32>,
    pub connect_timeout: Option<Duration>,
    /// `timeout client`, `timeout server` and `timeout tunnel`: kept apart so that a
    /// service's own line replaces the default of the same name only.
    pub client_timeout: Option<Duration>,
    pub server_timeout: Option<Duration>,
    pub tunnel_timeout: Option<Duration>,
    pub maxconn: Option<u32>,
}

impl Settings {
    /// Our `idle_timeout`: the longest of HAProxy's inactivity timeouts, since ours closes
    /// a connection only when neither side has sent anything for that long.
    pub fn idle_timeout(&self) -> Option<Duration> {
        [
            self.client_timeout,
            self.server_timeout,
            self.tunnel_timeout,
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

/// What became of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It set one of [`Settings`].
    Mapped,
    /// What it asks for is what synapse does anyway (`mode tcp`, `option redispatch`), or
    /// it is blank or a comment.
    Inherent,
    /// It has no equivalent; why.
    Dropped(String),
}

/// Reads one line into `settings`.
pub fn apply(line: &str, settings: &mut Settings) -> Outcome {
    let words: Vec<&str> = line.split_whitespace().collect();
    let word = |i: usize| words.get(i).copied().unwrap_or("");
    match (word(0), word(1)) {
        ("", _) => Outcome::Inherent,
        (w, _) if w.starts_with('#') => Outcome::Inherent,
        ("balance", algorithm) => match balance(algorithm) {
            Some(b) => {
                settings.balance = Some(b);
                Outcome::Mapped
            }
            None => dropped(
                "no equivalent (hash-based, sticky or ordered balancing): round_robin, \
                 the default, is used",
            ),
        },
        ("retries", n) => match n.parse::<u32>() {
            Ok(n) => {
                settings.retries = Some(n);
                Outcome::Mapped
            }
            Err(_) => dropped("not a number of retries"),
        },
        ("maxconn", n) => match n.parse::<u32>() {
            Ok(n) if n > 0 => {
                settings.maxconn = Some(n);
                Outcome::Mapped
            }
            _ => dropped("not a connection count"),
        },
        ("timeout", kind) => timeout(kind, word(2), settings),
        ("contimeout", t) => timeout("connect", t, settings),
        ("clitimeout", t) => timeout("client", t, settings),
        ("srvtimeout", t) => timeout("server", t, settings),
        ("mode", "tcp") => Outcome::Inherent,
        ("mode", "http") => dropped(
            "no equivalent (synapse relays TCP: the bytes of HTTP go through unchanged, \
             without HTTP-mode rewrites or per-request balancing)",
        ),
        ("option", "redispatch") => Outcome::Inherent,
        ("option", "httpchk") | ("http-check", _) => dropped(
            "no equivalent (synapse has no active health checks: nerve's checks decide \
             what is registered, and failed connects eject an instance)",
        ),
        ("log", _) | ("option", "tcplog" | "httplog" | "dontlognull" | "logasap") => dropped(
            "no equivalent (synapse logs events, not connections; the per-service counts \
             are in GET /metrics)",
        ),
        ("stats", _) => dropped("no equivalent (the admin API serves a dashboard and /metrics)"),
        _ => dropped("no equivalent"),
    }
}

fn dropped(why: &str) -> Outcome {
    Outcome::Dropped(why.to_owned())
}

/// HAProxy's `balance` algorithms that have an equivalent. HAProxy's `random` draws two
/// servers and takes the less loaded (its default `<draws>` is 2): our `least_conn`.
fn balance(algorithm: &str) -> Option<Balance> {
    match algorithm {
        "roundrobin" | "static-rr" => Some(Balance::RoundRobin),
        "leastconn" | "random" => Some(Balance::LeastConn),
        "random(1)" => Some(Balance::Random),
        a => {
            let draws = a.strip_prefix("random(")?.strip_suffix(')')?;
            match draws.parse::<u32>().ok()? {
                0 => None,
                1 => Some(Balance::Random),
                _ => Some(Balance::LeastConn),
            }
        }
    }
}

fn timeout(kind: &str, value: &str, settings: &mut Settings) -> Outcome {
    let slot = match kind {
        "connect" => &mut settings.connect_timeout,
        "client" => &mut settings.client_timeout,
        "server" => &mut settings.server_timeout,
        "tunnel" => &mut settings.tunnel_timeout,
        _ => {
            return dropped(
                "no equivalent (synapse has timeouts for connecting and for an idle \
                 connection only)",
            )
        }
    };
    match time(value) {
        Some(d) => {
            *slot = Some(d);
            Outcome::Mapped
        }
        None => dropped("not a HAProxy time such as 5000 or 5s"),
    }
}

/// A HAProxy time: a whole number, in milliseconds unless a unit follows (`us`, `ms`, `s`,
/// `m`, `h`, `d`).
pub fn time(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let micros_per = match unit {
        "us" => 1,
        "" | "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(micros_per).map(Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(lines: &[&str]) -> (Settings, Vec<Outcome>) {
        let mut s = Settings::default();
        let outcomes = lines.iter().map(|l| apply(l, &mut s)).collect();
        (s, outcomes)
    }

    #[test]
    fn the_lines_we_have_an_equivalent_for_are_read() {
        let (s, outcomes) = read(&[
            "balance  leastconn",
            "retries 3",
            "timeout  connect 5000",
            "timeout client 50s",
            "timeout server 1m",
            "maxconn 2000",
            "mode tcp",
            "option redispatch",
            "",
            "#timeout tunnel 1h",
        ]);
        assert_eq!(
            s,
            Settings {
                balance: Some(Balance::LeastConn),
                retries: Some(3),
                connect_timeout: Some(Duration::from_secs(5)),
                client_timeout: Some(Duration::from_secs(50)),
                server_timeout: Some(Duration::from_secs(60)),
                tunnel_timeout: None,
                maxconn: Some(2000),
            }
        );
        assert_eq!(s.idle_timeout(), Some(Duration::from_secs(60)));
        assert!(
            outcomes[..6].iter().all(|o| *o == Outcome::Mapped),
            "{outcomes:?}"
        );
        assert!(
            outcomes[6..].iter().all(|o| *o == Outcome::Inherent),
            "{outcomes:?}"
        );
    }

    #[test]
    fn each_balance_algorithm_maps_to_ours_or_is_dropped() {
        for (line, expected) in [
            ("balance roundrobin", Some(Balance::RoundRobin)),
            ("balance static-rr", Some(Balance::RoundRobin)),
            ("balance leastconn", Some(Balance::LeastConn)),
            ("balance random", Some(Balance::LeastConn)),
            ("balance random(3)", Some(Balance::LeastConn)),
            ("balance random(1)", Some(Balance::Random)),
            ("balance source", None),
            ("balance uri", None),
            ("balance hdr(host)", None),
            ("balance first", None),
        ] {
            let (s, outcomes) = read(&[line]);
            assert_eq!(s.balance, expected, "{line}");
            assert_eq!(
                outcomes[0] == Outcome::Mapped,
                expected.is_some(),
                "{line}: {outcomes:?}"
            );
        }
    }

    #[test]
    fn other_lines_are_dropped_with_a_reason() {
        for (line, says) in [
            ("option httpchk GET /health", "no active health checks"),
            ("http-check expect string OK", "no active health checks"),
            ("mode http", "relays TCP"),
            ("stats enable", "dashboard"),
            ("option tcplog", "logs events"),
            ("timeout queue 5s", "connecting and for an idle connection"),
            ("timeout connect soon", "not a HAProxy time"),
            ("retries many", "not a number"),
            ("fullconn 100", "no equivalent"),
        ] {
            match read(&[line]).1.first() {
                Some(Outcome::Dropped(why)) => assert!(why.contains(says), "{line}: {why}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_later_line_replaces_an_earlier_one_of_the_same_name() {
        let (s, _) = read(&[
            "timeout client 50s",
            "timeout server 5s",
            "timeout client 2s",
        ]);
        assert_eq!(s.idle_timeout(), Some(Duration::from_secs(5)));
        let (s, _) = read(&["contimeout 3000", "clitimeout 10s"]);
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(s.client_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn times_take_haproxys_units() {
        for (text, expected) in [
            ("5000", Some(Duration::from_secs(5))),
            ("250ms", Some(Duration::from_millis(250))),
            ("100us", Some(Duration::from_micros(100))),
            ("2s", Some(Duration::from_secs(2))),
            ("1m", Some(Duration::from_secs(60))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1d", Some(Duration::from_secs(86_400))),
            ("1.5s", None),
            ("5 s", None),
            ("", None),
            ("s", None),
            ("99999999999999999999d", None),
        ] {
            assert_eq!(time(text), expected, "{text:?}");
        }
    }

    proptest! {
        /// A time written with any unit reads back as the same duration.
        #[test]
        fn times_read_back(n in 0u64..1_000_000, unit in 0usize..6) {
            let (suffix, micros) = [("us", 1), ("ms", 1_000), ("s", 1_000_000),
                ("m", 60_000_000), ("h", 3_600_000_000), ("d", 86_400_000_000u64)][unit];
            prop_assert_eq!(time(&format!("{n}{suffix}")), Some(Duration::from_micros(n * micros)));
        }

        /// No line, however odd, panics, and whatever it sets is what the line says.
        #[test]
        fn any_line_is_read_without_panic(line in "\\PC{0,40}") {
            let mut s = Settings::default();
            if apply(&line, &mut s) != Outcome::Mapped {
                prop_assert_eq!(s, Settings::default());
            }
        }
    }
}
