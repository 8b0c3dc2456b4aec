//! Configuration pieces shared by both programs: the `etcd:` block, durations, and loading a
//! YAML (or JSON) file so that every error names the file and the key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::key;

/// A problem with a configuration file: which file, which key, what is wrong, on which
/// line; and the further problems found in the same file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key, e.g. `services[0].port`; empty for the whole file.
    pub key: String,
    pub message: String,
    /// 1-based line of the key (or of the parser's position when the key cannot be found).
    pub line: Option<usize>,
    /// Further problems in the same file, in the order found (at most [`MAX_REPORTED`] - 1).
    pub more: Vec<ConfigError>,
}

/// Problems reported from one file at most.
pub const MAX_REPORTED: usize = 10;

impl ConfigError {
    fn whole_file(path: &Path, message: String) -> Self {
        ConfigError {
            file: path.to_owned(),
            key: String::new(),
            message,
            line: None,
            more: Vec::new(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        for other in &self.more {
            write!(f, "\n{other}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A problem found by semantic validation, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks the meaning of a parsed configuration (ranges, combinations) after serde has
/// checked its shape.
pub trait Validate {
    fn validate(&self) -> Result<(), FieldError>;
}

/// Reads, parses and validates a configuration file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::whole_file(path, format!("cannot read: {e}")))?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` only names it in errors.
///
/// Every problem is reported, not only the first (up to [`MAX_REPORTED`]): after one, the
/// lines of the offending key are blanked out (so line numbers stay) and the text is read
/// again, which either finds the next problem or uses the key's default. A problem that
/// only follows from a blanked key (its required field now missing) ends the search.
pub fn parse<T: DeserializeOwned + Validate>(path: &Path, text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::whole_file(path, "the file is empty".into()));
    }
    check_bounds(text).map_err(|m| ConfigError::whole_file(path, m))?;
    let mut first = match parse_once::<T>(path, text) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let mut current = text.to_owned();
    let mut blanked = vec![first.key.clone()];
    let mut last_message = first.message.clone();
    // A missing field cannot be blanked out: what follows it is not known.
    while first.more.len() + 1 < MAX_REPORTED && !last_message.starts_with("missing field") {
        let Some(lines) = crate::yaml_lines::key_lines(&current, blanked.last().map_or("", |k| k))
        else {
            break;
        };
        current = blank_lines(&current, &lines);
        let next = match parse_once::<T>(path, &current) {
            Ok(_) => break,
            Err(e) => e,
        };
        let seen = std::iter::once(&first)
            .chain(&first.more)
            .any(|e| e.key == next.key);
        if seen || next.key.is_empty() || follows_from_blanking(&next, &blanked) {
            break;
        }
        blanked.push(next.key.clone());
        last_message.clone_from(&next.message);
        first.more.push(next);
    }
    Err(first)
}

/// One read of `text`: the first problem, with its key's line.
fn parse_once<T: DeserializeOwned + Validate>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let value: T = serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text))
        .map_err(|e| yaml_error(path, text, e))?;
    value.validate().map_err(|e| ConfigError {
        file: path.to_owned(),
        line: crate::yaml_lines::locate(text, &e.key),
        key: e.key,
        message: e.message,
        more: Vec::new(),
    })?;
    Ok(value)
}

/// `text` with the given 1-based lines emptied (numbering unchanged).
fn blank_lines(text: &str, lines: &[usize]) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| if lines.contains(&(i + 1)) { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `error` is only the consequence of a blanked key: a required field missing.
fn follows_from_blanking(error: &ConfigError, blanked: &[String]) -> bool {
    error.message.starts_with("missing field")
        && blanked.iter().any(|k| {
            let (parent, name) = k.rsplit_once('.').unwrap_or(("", k));
            error.key == parent && error.message.contains(&format!("`{name}`"))
        })
}

/// Largest configuration file read: a real one is a few kilobytes.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Deepest nesting of `[`/`{` accepted. The YAML parser's time grows with the square of the
/// depth (40,000 levels took seconds), and no configuration needs more than a handful.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Rejects text too large or too deeply nested to be a configuration, before the parser
/// spends time on it. Brackets inside quotes and comments do not count; block nesting is
/// bounded by the size (each level costs a line of indentation).
fn check_bounds(text: &str) -> Result<(), String> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "the file is {} bytes, more than the {MAX_CONFIG_BYTES} a configuration may have",
            text.len()
        ));
    }
    let depth = flow_depth(text);
    if depth > MAX_FLOW_DEPTH {
        return Err(format!(
            "nested {depth} levels deep, more than the {MAX_FLOW_DEPTH} a configuration may use"
        ));
    }
    Ok(())
}

/// The deepest nesting of flow collections (`[`, `{`) outside quotes and comments.
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut previous = '\n';
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if previous.is_whitespace() => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            (None, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
        previous = c;
    }
    deepest
}

/// serde_path_to_error knows the full key, even for errors raised inside a field's own
/// deserializer (a bad duration); serde_norway adds the line and column to the message.
fn yaml_error(
    path: &Path,
    text: &str,
    e: serde_path_to_error::Error<serde_norway::Error>,
) -> ConfigError {
    // A syntax error inside a mapping leaves a `?` for the key it did not reach.
    let key = e.path().to_string().trim_end_matches(".?").to_owned();
    let key = if key == "." || key == "?" {
        String::new()
    } else {
        key
    };
    let inner = e.into_inner();
    let parser_line = inner.location().map(|l| l.line());
    let inner = inner.to_string();
    // serde_norway prefixes nested messages with its own (shorter) path; drop it, and its
    // position: the line is reported apart, the key's own where it can be found.
    let message = match inner.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') && key.starts_with(prefix) => rest.to_owned(),
        _ => inner,
    };
    let message = match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => message[..at].to_owned(),
        _ => message,
    };
    let line = match key.is_empty() {
        true => parser_line,
        false => crate::yaml_lines::locate(text, &key).or(parser_line),
    };
    ConfigError {
        file: path.to_owned(),
        key,
        message: plain_types(&message),
        line,
        more: Vec::new(),
    }
}

/// serde names Rust types (`expected u16`); operators get what the value may be.
fn plain_types(message: &str) -> String {
    const NAMES: [(&str, &str); 10] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut out = message.to_owned();
    for (rust, plain) in NAMES {
        if let Some(at) = out.find(rust) {
            let end = at + rust.len();
            // Whole words only: `u16` must not match the start of `u160`.
            if !out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                out.replace_range(at..end, plain);
            }
        }
    }
    out
}

/// A duration written as a string with a unit: `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn from_millis(ms: u64) -> Self {
        ConfigDuration(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {s:?}: write a number and a unit (ms, s, m or h), e.g. \"500ms\" or \"2s\""
            )
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_secs = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let secs = number * unit_secs;
        if !secs.is_finite() || secs > 1e9 {
            return Err(bad());
        }
        Ok(ConfigDuration(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A listen address (synapse's service ports, both admin APIs): `IP:PORT`, or a bare
/// `PORT` meaning 127.0.0.1, written as a string or a number. Host names are not accepted:
/// a listener binds an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ListenAddr(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
            )));
        }
        s.parse::<SocketAddr>().map(ListenAddr).map_err(|_| {
            format!("{s:?} is not an address like \"127.0.0.1:3000\" (or a bare port for loopback)")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A bare port is written as a number in YAML; accept both spellings.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Port(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Port(p) => u16::try_from(p)
                .map_err(|_| serde::de::Error::custom(format!("port {p} is out of range")))
                .and_then(|p| p.to_string().parse().map_err(serde::de::Error::custom)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// TLS towards etcd. `ca` alone verifies the server; `cert` + `key` add a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the endpoint's host.
    pub domain: Option<String>,
}

/// The `etcd:` block of both configuration files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Members to talk to, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long to wait for a TCP (and TLS) connection to a member.
    #[serde(default = "default_dial_timeout")]
    pub dial_timeout: ConfigDuration,
    /// Deadline of each unary request (get, put, grant...), so a stalled member cannot hang us.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: ConfigDuration,
    /// HTTP/2 ping interval; a member that does not answer within `keepalive_timeout` is
    /// considered dead, which is what ends a silently hung watch.
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: ConfigDuration,
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: ConfigDuration,
}

fn default_prefix() -> String {
    key::DEFAULT_PREFIX.to_owned()
}
fn default_dial_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_request_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_keepalive_interval() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_keepalive_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(3)
}

impl EtcdConfig {
    /// A configuration with every default, for the given endpoints.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: default_prefix(),
            username: None,
            password: None,
            tls: None,
            dial_timeout: default_dial_timeout(),
            request_timeout: default_request_timeout(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
        }
    }

    /// Validates the block; keys in errors start with `etcd.`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.endpoints.is_empty() {
            return Err(FieldError::new(
                "etcd.endpoints",
                "at least one endpoint is required, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            let valid = match rest.rsplit_once(':') {
                Some((host, port)) => {
                    !host.is_empty()
                        && !host.contains('/')
                        && port.parse::<u16>().map(|p| p > 0).unwrap_or(false)
                }
                None => false,
            };
            if !valid {
                return Err(FieldError::new(
                    format!("etcd.endpoints[{i}]"),
                    format!("{e:?} is not an endpoint like \"http://127.0.0.1:2379\""),
                ));
            }
            if e.starts_with("https://") && self.tls.is_none() {
                return Err(FieldError::new(
                    format!("etcd.endpoints[{i}]"),
                    format!("{e:?} uses https but there is no etcd.tls block (with ca: the CA that signed the \
                        members' certificates)"),
                ));
            }
            // etcd-client refuses TLS options on an http:// URL, so this would never connect.
            if e.starts_with("http://") && self.tls.is_some() {
                return Err(FieldError::new(
                    format!("etcd.endpoints[{i}]"),
                    format!("{e:?} uses plain http but etcd.tls is set: write https:// (or no scheme) to use TLS"),
                ));
            }
        }
        key::check_prefix(&self.prefix).map_err(|m| FieldError::new("etcd.prefix", m))?;
        match (&self.username, &self.password) {
            (Some(_), None) => {
                return Err(FieldError::new(
                    "etcd.password",
                    "etcd.username is set, so etcd.password is required",
                ))
            }
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "etcd.username",
                    "etcd.password is set, so etcd.username is required",
                ))
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(FieldError::new(
                    "etcd.tls",
                    "cert and key go together: set both or neither",
                ));
            }
            // etcd-client is built without the system or webpki root stores, so without
            // `ca` no server certificate can be verified and no connection would ever succeed.
            if tls.ca.is_none() {
                return Err(FieldError::new(
                    "etcd.tls.ca",
                    "is required with etcd.tls: the members' certificates are verified only against this CA file \
                    (system root certificates are not used)",
                ));
            }
            for (name, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if let Some(p) = path {
                    if !p.is_file() {
                        return Err(FieldError::new(
                            format!("etcd.tls.{name}"),
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
        }
        for (name, d) in [
            ("dial_timeout", self.dial_timeout),
            ("request_timeout", self.request_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if d.get() < Duration::from_millis(10) {
                return Err(FieldError::new(
                    format!("etcd.{name}"),
                    format!("{d} is too short: use at least 10ms"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod reporting_tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read by serde only: its errors are what is tested
    struct Item {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        every: Option<ConfigDuration>,
        #[serde(default)]
        share: u32,
    }

    impl Validate for File {
        fn validate(&self) -> Result<(), FieldError> {
            for (i, item) in self.items.iter().enumerate() {
                if item.share > 100 {
                    return Err(FieldError::new(
                        format!("items[{i}].share"),
                        "is not a percentage",
                    ));
                }
            }
            Ok(())
        }
    }

    fn problems(text: &str) -> Vec<(String, String, Option<usize>)> {
        let e = parse::<File>(Path::new("f.yaml"), text).unwrap_err();
        std::iter::once(&e)
            .chain(&e.more)
            .map(|e| (e.key.clone(), e.message.clone(), e.line))
            .collect()
    }

    #[test]
    fn every_problem_is_reported_at_the_line_of_its_key() {
        let text = "items:\n  - name: a\n    port: 70000\n    every: 5 parsecs\n\
                    \x20 - name: b\n    share: 300\n    colour: red\n";
        let found = problems(text);
        let keys: Vec<&str> = found.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "items[0].port",
                "items[0].every",
                "items[1].colour",
                "items[1].share"
            ]
        );
        let lines: Vec<Option<usize>> = found.iter().map(|(_, _, l)| *l).collect();
        assert_eq!(lines, [Some(3), Some(4), Some(7), Some(6)]);
        assert!(
            found[0]
                .1
                .contains("expected a whole number from 0 to 65535"),
            "{}",
            found[0].1
        );
        assert!(
            !found.iter().any(|(_, m, _)| m.contains(" at line ")),
            "{found:?}"
        );
        let shown = parse::<File>(Path::new("f.yaml"), text)
            .unwrap_err()
            .to_string();
        assert_eq!(shown.lines().count(), 4, "{shown}");
        assert!(
            shown.starts_with("f.yaml: items[0].port: invalid value"),
            "{shown}"
        );
        assert!(shown.contains("(line 7)"), "{shown}");
    }

    #[test]
    fn a_missing_required_field_ends_the_report() {
        let found = problems("items:\n  - port: 1\n  - name: b\n    share: 300\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.starts_with("missing field `name`"), "{found:?}");
        assert_eq!(found[0].2, Some(2));
    }

    #[test]
    fn json_files_keep_the_parser_position() {
        let found = problems("{\"items\": [{\"name\": \"a\", \"port\": \"x\"}]}");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "items[0].port");
        assert_eq!(found[0].2, Some(1));
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;

    #[test]
    fn nesting_is_measured_outside_quotes_and_comments() {
        assert_eq!(flow_depth("a: [1, {b: [2]}]\n"), 3);
        assert_eq!(flow_depth("a: \"[[[[\" # [[[[[\nb: '{{'\n"), 0);
        assert_eq!(flow_depth("a: \"x\\\"[\"\n"), 0);
        assert_eq!(
            flow_depth("a: b#[c\n"),
            1,
            "a # inside a word is not a comment"
        );
    }

    #[test]
    fn deep_or_huge_files_are_rejected_quickly() {
        let deep = format!("a: {}", "[".repeat(40_000));
        let started = std::time::Instant::now();
        let e = check_bounds(&deep).unwrap_err();
        assert!(e.contains("40000 levels deep"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        let huge = "#".repeat(MAX_CONFIG_BYTES + 1);
        assert!(check_bounds(&huge).unwrap_err().contains("bytes"));
        assert!(check_bounds(&format!("a: {}1{}", "[".repeat(64), "]".repeat(64))).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        etcd: EtcdConfig,
        #[serde(default)]
        interval: Option<ConfigDuration>,
        #[serde(default)]
        #[allow(dead_code)] // only its parse errors matter
        items: Vec<Item>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        port: u16,
    }
    impl Validate for Sample {
        fn validate(&self) -> Result<(), FieldError> {
            self.etcd.validate()
        }
    }

    fn err(text: &str) -> ConfigError {
        match parse::<Sample>(Path::new("/etc/x.yaml"), text) {
            Ok(s) => panic!("{text:?} was accepted: {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn durations_parse_with_units() {
        let ms = |s: &str| s.parse::<ConfigDuration>().map(|d| d.get().as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2s"), Ok(2000));
        assert_eq!(ms("1.5s"), Ok(1500));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        for bad in ["", "5", "s", "5 parsecs", "-1s", "1e400s", "ms5"] {
            assert!(bad.parse::<ConfigDuration>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(ConfigDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(ConfigDuration::from_secs(2).to_string(), "2s");
    }

    #[test]
    fn listen_addresses_take_an_address_or_a_bare_port() {
        #[derive(Deserialize)]
        struct L {
            listen: ListenAddr,
        }
        let parse = |text: &str| serde_norway::from_str::<L>(text).map(|l| l.listen.0.to_string());
        assert_eq!(parse("listen: 127.0.0.2:3000").unwrap(), "127.0.0.2:3000");
        assert_eq!(parse("listen: 3000").unwrap(), "127.0.0.1:3000");
        assert_eq!(parse("listen: \"3000\"").unwrap(), "127.0.0.1:3000");
        assert_eq!(parse("listen: \"[::1]:3000\"").unwrap(), "[::1]:3000");
        for bad in ["listen: 70000", "listen: localhost:3000", "listen: \"\""] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults_fill_the_etcd_block() {
        let s: Sample = parse(
            Path::new("x"),
            "etcd: {endpoints: [\"http://127.0.0.1:2379\"]}",
        )
        .unwrap();
        assert_eq!(
            s.etcd,
            EtcdConfig::new(vec!["http://127.0.0.1:2379".into()])
        );
        assert_eq!(s.etcd.prefix, "/smartstack/services");
    }

    #[test]
    fn tls_with_a_ca_file_is_accepted_with_https_or_bare_endpoints() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        for endpoint in ["https://h:1", "h:1"] {
            let text = format!(
                "etcd: {{endpoints: [{endpoint:?}], tls: {{ca: {:?}}}}}",
                ca.path()
            );
            let s: Sample = parse(Path::new("x"), &text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.etcd.tls.and_then(|t| t.ca).as_deref(), Some(ca.path()));
        }
    }

    #[test]
    fn json_files_load_too() {
        let s: Sample = parse(
            Path::new("x.json"),
            r#"{"etcd": {"endpoints": ["127.0.0.1:2379"], "prefix": "/p"}, "interval": "2s"}"#,
        )
        .unwrap();
        assert_eq!(s.etcd.prefix, "/p");
        assert_eq!(s.interval, Some(ConfigDuration::from_secs(2)));
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "", "empty"),
            ("etcd: {endpoints: []}", "etcd.endpoints", "at least one"),
            (
                "etcd: {endpoints: [\"nonsense\"]}",
                "etcd.endpoints[0]",
                "not an endpoint",
            ),
            (
                "etcd: {endpoints: [\"http://h:0\"]}",
                "etcd.endpoints[0]",
                "not an endpoint",
            ),
            (
                "etcd: {endpoints: [\"https://h:1\"]}",
                "etcd.endpoints[0]",
                "no etcd.tls",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], prefix: \"x\"}",
                "etcd.prefix",
                "start with",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], username: u}",
                "etcd.password",
                "required",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], tls: {cert: /c}}",
                "etcd.tls",
                "together",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], tls: {ca: /nonexistent/ca.pem}}",
                "etcd.tls.ca",
                "not a readable file",
            ),
            (
                "etcd: {endpoints: [\"https://h:1\"], tls: {domain: etcd.internal}}",
                "etcd.tls.ca",
                "system root certificates are not used",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], tls: {}}",
                "etcd.tls.ca",
                "is required",
            ),
            (
                "etcd: {endpoints: [\"http://h:1\"], tls: {ca: /ca.pem}}",
                "etcd.endpoints[0]",
                "plain http but etcd.tls is set",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], dial_timeout: 1ms}",
                "etcd.dial_timeout",
                "too short",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], dial_timeout: fast}",
                "etcd.dial_timeout",
                "invalid duration",
            ),
            (
                "etcd: {endpoints: [\"h:1\"], colour: red}",
                "etcd.colour",
                "unknown field `colour`",
            ),
            (
                "etcd: {endpoints: [\"h:1\"]}\nitems: [{port: 99999}]",
                "items[0].port",
                "invalid value",
            ),
            (
                "etcd: {endpoints: [\"h:1\"]}\nitems: [{}]",
                "items[0]",
                "missing field `port`",
            ),
            ("items: []", "", "missing field `etcd`"),
            ("etcd: [", "etcd", "sequence"),
            ("etcd: {endpoints: [\"h:1\"]", "etcd", "line 2 column 1"),
        ];
        for (text, key, message) in cases {
            let e = err(text);
            assert_eq!(&e.key, key, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
            assert!(e.to_string().starts_with("/etc/x.yaml: "), "{e}");
        }
    }
}
