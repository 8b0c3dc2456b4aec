//! nerve's configuration file: its shape (serde, unknown keys rejected) and its meaning
//! ([`Validate`]), so that every mistake is reported with the file and the dotted key.
//!
//! Everything here is documented for operators in `docs/nerve.md`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use registry::config::ListenAddr;
use registry::config::{ConfigError, FieldError, Validate};
use registry::{ConfigDuration, EtcdConfig, InstanceRecord};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NerveConfig {
    pub etcd: EtcdConfig,
    /// TTL of the process's single lease: how long registrations outlive a crashed nerve.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: ConfigDuration,
    /// How often every registration that should exist is read back and fixed if missing
    /// or different.
    #[serde(default = "default_reconcile_interval")]
    pub reconcile_interval: ConfigDuration,
    /// Address of the admin HTTP server; none when absent.
    #[serde(default)]
    pub admin: Option<ListenAddr>,
    /// Time to wait after deregistering on SIGTERM/SIGINT before exiting.
    #[serde(default)]
    pub shutdown_delay: Option<ConfigDuration>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// One instance to check and register.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// The address registered (and checked); `${NAME}` reads environment variable NAME.
    #[serde(deserialize_with = "host_or_env")]
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_check_interval")]
    pub check_interval: ConfigDuration,
    #[serde(default = "default_rise_fall")]
    pub rise: u32,
    #[serde(default = "default_rise_fall")]
    pub fall: u32,
    /// While this file exists the instance is in maintenance (deregistered).
    #[serde(default)]
    pub maintenance_file: Option<PathBuf>,
    pub checks: Vec<CheckConfig>,
}

/// A health check; `type` selects the kind. Deserialized by hand ([`CheckVisitor`]) so
/// that errors name the key inside the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckConfig {
    Tcp(TcpCheckConfig),
    Http(HttpCheckConfig),
    Exec(ExecCheckConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpCheckConfig {
    /// Port to connect to instead of the service's.
    pub port: Option<u16>,
    pub timeout: ConfigDuration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCheckConfig {
    pub path: String,
    pub method: String,
    /// `Host` header; `<host>:<port>` of the service when absent.
    pub host: Option<String>,
    /// Port to send the request to instead of the service's.
    pub port: Option<u16>,
    pub headers: BTreeMap<String, String>,
    pub expect_status: StatusSet,
    /// The response body must contain this text.
    pub expect_body: Option<String>,
    pub timeout: ConfigDuration,
}

impl Default for HttpCheckConfig {
    fn default() -> Self {
        HttpCheckConfig {
            path: default_path(),
            method: default_method(),
            host: None,
            port: None,
            headers: BTreeMap::new(),
            expect_status: StatusSet::default(),
            expect_body: None,
            timeout: default_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecCheckConfig {
    /// Program and arguments; no shell is involved.
    pub command: Vec<String>,
    pub timeout: ConfigDuration,
}

/// The value of a check's `type`; also the `check` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
    Exec,
}

/// Every key any kind of check takes.
const ALL_CHECK_KEYS: &[&str] = &[
    "type",
    "port",
    "timeout",
    "path",
    "method",
    "host",
    "headers",
    "expect_status",
    "expect_body",
    "command",
];

impl CheckKind {
    pub const ALL: [CheckKind; 3] = [CheckKind::Tcp, CheckKind::Http, CheckKind::Exec];

    /// Its place in [`CheckKind::ALL`], for arrays indexed by kind.
    pub fn index(self) -> usize {
        match self {
            CheckKind::Tcp => 0,
            CheckKind::Http => 1,
            CheckKind::Exec => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Exec => "exec",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            CheckKind::Tcp => &["type", "port", "timeout"],
            CheckKind::Http => &[
                "type",
                "path",
                "method",
                "host",
                "port",
                "headers",
                "expect_status",
                "expect_body",
                "timeout",
            ],
            CheckKind::Exec => &["type", "command", "timeout"],
        }
    }

    fn unknown_key<E: de::Error>(self, key: &str) -> E {
        let expected: Vec<String> = self.keys().iter().map(|k| format!("`{k}`")).collect();
        E::custom(format!(
            "unknown field `{key}` for a {} check, expected one of {}",
            self.name(),
            expected.join(", ")
        ))
    }
}

/// Reads a check key by key, each value through the deserializer it was handed.
///
/// Not `#[serde(tag = "type")]`: an internally tagged enum buffers the whole map and reads
/// the variant from that copy, out of sight of serde_path_to_error, so `timeout: fast` or
/// `port: 70000` were reported at `checks[0]` instead of `checks[0].timeout`. Here every value
/// is read under its own key, so the loader's one path mechanism names it, whatever order
/// the keys come in.
struct CheckVisitor;

/// What has been read of a check so far.
#[derive(Default)]
struct CheckFields {
    kind: Option<CheckKind>,
    seen: Vec<&'static str>,
    port: Option<u16>,
    timeout: Option<ConfigDuration>,
    path: Option<String>,
    method: Option<String>,
    host: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    expect_status: Option<StatusSet>,
    expect_body: Option<String>,
    command: Option<Vec<String>>,
}

/// Reads one key of a check. Rejecting a key here (rather than after the map) puts the
/// key itself in the error's path.
struct CheckKey<'a> {
    kind: Option<CheckKind>,
    seen: &'a [&'static str],
}

impl<'de> de::DeserializeSeed<'de> for CheckKey<'_> {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for CheckKey<'_> {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a check key such as `type` or `timeout`")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        let allowed = self.kind.map_or(ALL_CHECK_KEYS, CheckKind::keys);
        let Some(key) = allowed.iter().copied().find(|k| *k == v) else {
            return Err(match self.kind {
                Some(kind) => kind.unknown_key(v),
                None => E::unknown_field(v, ALL_CHECK_KEYS),
            });
        };
        if self.seen.contains(&key) {
            return Err(E::duplicate_field(key));
        }
        Ok(key)
    }
}

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = CheckConfig;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a check like {type: tcp}")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<CheckConfig, A::Error> {
        let mut c = CheckFields::default();
        while let Some(key) = map.next_key_seed(CheckKey {
            kind: c.kind,
            seen: &c.seen,
        })? {
            c.seen.push(key);
            match key {
                "type" => c.kind = Some(map.next_value()?),
                "port" => c.port = map.next_value()?,
                "timeout" => c.timeout = Some(map.next_value()?),
                "path" => c.path = Some(map.next_value()?),
                "method" => c.method = Some(map.next_value()?),
                "host" => c.host = map.next_value()?,
                "headers" => c.headers = Some(map.next_value()?),
                "expect_status" => c.expect_status = Some(map.next_value()?),
                "expect_body" => c.expect_body = map.next_value()?,
                "command" => c.command = Some(map.next_value()?),
                other => return Err(de::Error::unknown_field(other, ALL_CHECK_KEYS)),
            }
        }
        let kind = c.kind.ok_or_else(|| de::Error::missing_field("type"))?;
        // Only a key written before `type` can get here: it could not be checked when read.
        if let Some(key) = c.seen.iter().find(|k| !kind.keys().contains(k)) {
            return Err(kind.unknown_key(key));
        }
        let timeout = c.timeout.unwrap_or_else(default_timeout);
        Ok(match kind {
            CheckKind::Tcp => CheckConfig::Tcp(TcpCheckConfig {
                port: c.port,
                timeout,
            }),
            CheckKind::Http => {
                let defaults = HttpCheckConfig::default();
                CheckConfig::Http(HttpCheckConfig {
                    path: c.path.unwrap_or(defaults.path),
                    method: c.method.unwrap_or(defaults.method),
                    host: c.host,
                    port: c.port,
                    headers: c.headers.unwrap_or(defaults.headers),
                    expect_status: c.expect_status.unwrap_or(defaults.expect_status),
                    expect_body: c.expect_body,
                    timeout,
                })
            }
            CheckKind::Exec => CheckConfig::Exec(ExecCheckConfig {
                command: c
                    .command
                    .ok_or_else(|| de::Error::missing_field("command"))?,
                timeout,
            }),
        })
    }
}

impl<'de> Deserialize<'de> for CheckConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CheckVisitor)
    }
}

impl CheckConfig {
    pub fn kind(&self) -> CheckKind {
        match self {
            CheckConfig::Tcp(_) => CheckKind::Tcp,
            CheckConfig::Http(_) => CheckKind::Http,
            CheckConfig::Exec(_) => CheckKind::Exec,
        }
    }

    pub fn timeout(&self) -> Duration {
        match self {
            CheckConfig::Tcp(c) => c.timeout.get(),
            CheckConfig::Http(c) => c.timeout.get(),
            CheckConfig::Exec(c) => c.timeout.get(),
        }
    }
}

/// Accepted HTTP status codes, as inclusive ranges. Written as `200`, `"200-399"`, or a list
/// of those: `[200, "300-302"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl Default for StatusSet {
    fn default() -> Self {
        StatusSet(vec![(200, 399)])
    }
}

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    fn parse_item(s: &str) -> Result<(u16, u16), String> {
        let bad = || format!("{s:?} is not a status code or range like \"200-399\"");
        let code = |t: &str| -> Result<u16, String> {
            let n: u16 = t.trim().parse().map_err(|_| bad())?;
            if (100..=599).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is not an HTTP status code (100-599)"))
            }
        };
        match s.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (code(lo)?, code(hi)?);
                if lo > hi {
                    return Err(format!("range {s:?} is empty"));
                }
                Ok((lo, hi))
            }
            None => code(s).map(|c| (c, c)),
        }
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StatusSet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code (200), a range (\"200-399\") or a list of those")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusSet, E> {
                StatusSet::parse_item(&v.to_string())
                    .map(|r| StatusSet(vec![r]))
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusSet, E> {
                StatusSet::parse_item(&v.to_string())
                    .map(|r| StatusSet(vec![r]))
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusSet, E> {
                StatusSet::parse_item(v)
                    .map(|r| StatusSet(vec![r]))
                    .map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StatusSet, A::Error> {
                let mut ranges = Vec::new();
                while let Some(item) = seq.next_element::<StatusSet>()? {
                    ranges.extend(item.0);
                }
                if ranges.is_empty() {
                    return Err(de::Error::custom("the list of status codes is empty"));
                }
                Ok(StatusSet(ranges))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for StatusSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn default_lease_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_reconcile_interval() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
pub(crate) fn default_weight() -> u32 {
    registry::record::DEFAULT_WEIGHT
}
pub(crate) fn default_check_interval() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
pub(crate) fn default_rise_fall() -> u32 {
    2
}
pub(crate) fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
pub(crate) fn default_path() -> String {
    "/".into()
}
pub(crate) fn default_method() -> String {
    "GET".into()
}

/// The shortest lease TTL accepted: below it a single slow keepalive loses the lease.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

impl ServiceConfig {
    /// Whether both are at the address checks run against and consumers dial: health
    /// measured at one address says nothing about another.
    pub fn same_address(&self, other: &ServiceConfig) -> bool {
        (self.host.as_str(), self.port) == (other.host.as_str(), other.port)
    }

    /// The instance id: configured, or `<host>:<port>`.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.host, self.port))
    }

    /// The record this instance is registered with.
    pub fn record(&self) -> InstanceRecord {
        InstanceRecord {
            host: self.host.clone(),
            port: self.port,
            name: self.instance_id(),
            weight: self.weight,
            zone: self.zone.clone(),
            labels: self.labels.clone(),
        }
    }

    fn validate(&self, at: &str) -> Result<(), FieldError> {
        let key = |k: &str| format!("{at}.{k}");
        registry::key::check_segment("service name", &self.name)
            .map_err(|m| FieldError::new(key("name"), m))?;
        if self.host.is_empty()
            || self
                .host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(
                key("host"),
                format!("{:?} is not a host name or IP address", self.host),
            ));
        }
        if self.port == 0 {
            return Err(FieldError::new(key("port"), "must be from 1 to 65535"));
        }
        registry::key::check_segment("instance_id", &self.instance_id())
            .map_err(|m| FieldError::new(key("instance_id"), m))?;
        if self.check_interval.get() < Duration::from_millis(10) {
            return Err(FieldError::new(
                key("check_interval"),
                format!("{} is too short: use at least 10ms", self.check_interval),
            ));
        }
        for (name, n) in [("rise", self.rise), ("fall", self.fall)] {
            if n == 0 {
                return Err(FieldError::new(key(name), "must be at least 1"));
            }
        }
        if self.checks.is_empty() {
            return Err(FieldError::new(
                key("checks"),
                "at least one check is required, e.g. [{type: tcp}]",
            ));
        }
        for (i, check) in self.checks.iter().enumerate() {
            check.validate(&key(&format!("checks[{i}]")))?;
        }
        Ok(())
    }
}

impl CheckConfig {
    fn validate(&self, at: &str) -> Result<(), FieldError> {
        let key = |k: &str| format!("{at}.{k}");
        if self.timeout() < Duration::from_millis(10) {
            return Err(FieldError::new(
                key("timeout"),
                "too short: use at least 10ms",
            ));
        }
        match self {
            CheckConfig::Tcp(c) => {
                if c.port == Some(0) {
                    return Err(FieldError::new(key("port"), "must be from 1 to 65535"));
                }
            }
            CheckConfig::Http(c) => {
                if c.port == Some(0) {
                    return Err(FieldError::new(key("port"), "must be from 1 to 65535"));
                }
                if !c.path.starts_with('/') || c.path.parse::<hyper::Uri>().is_err() {
                    return Err(FieldError::new(
                        key("path"),
                        format!("{:?} is not a request path like \"/health\"", c.path),
                    ));
                }
                if hyper::Method::from_bytes(c.method.as_bytes()).is_err() {
                    return Err(FieldError::new(
                        key("method"),
                        format!("{:?} is not an HTTP method", c.method),
                    ));
                }
                if let Some(h) = &c.host {
                    if hyper::header::HeaderValue::from_str(h).is_err() || h.is_empty() {
                        return Err(FieldError::new(
                            key("host"),
                            format!("{h:?} is not a valid Host header"),
                        ));
                    }
                }
                for (name, value) in &c.headers {
                    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(FieldError::new(
                            key(&format!("headers.{name}")),
                            format!("{name:?} is not a valid header name"),
                        ));
                    }
                    if hyper::header::HeaderValue::from_str(value).is_err() {
                        return Err(FieldError::new(
                            key(&format!("headers.{name}")),
                            "is not a valid header value",
                        ));
                    }
                }
            }
            CheckConfig::Exec(c) => {
                if c.command.first().is_none_or(|p| p.is_empty()) {
                    return Err(FieldError::new(
                        key("command"),
                        "must name a program, e.g. [\"/usr/local/bin/check\", \"--quick\"]",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validate for NerveConfig {
    fn validate(&self) -> Result<(), FieldError> {
        self.etcd.validate()?;
        if self.lease_ttl.get() < MIN_LEASE_TTL {
            return Err(FieldError::new(
                "lease_ttl",
                format!("{} is too short: use at least 2s", self.lease_ttl),
            ));
        }
        if self.lease_ttl.get().subsec_nanos() != 0 {
            return Err(FieldError::new(
                "lease_ttl",
                format!(
                    "{} is not whole seconds (etcd leases count seconds)",
                    self.lease_ttl
                ),
            ));
        }
        if self.reconcile_interval.get() < Duration::from_millis(100) {
            return Err(FieldError::new(
                "reconcile_interval",
                format!(
                    "{} is too short: use at least 100ms",
                    self.reconcile_interval
                ),
            ));
        }
        if let Some(admin) = self.admin {
            // Its POSTs can take every registration out, and it has no authentication.
            if !admin.0.ip().is_loopback() {
                return Err(FieldError::new(
                    "admin",
                    format!(
                        "{admin} is not a loopback address: the admin API has no authentication"
                    ),
                ));
            }
        }
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            service.validate(&at)?;
            let id = (service.name.clone(), service.instance_id());
            if let Some(first) = seen.insert(id.clone(), i) {
                return Err(FieldError::new(
                    format!("{at}.instance_id"),
                    format!(
                        "service {:?} instance {:?} is already defined by services[{first}]; give one of them \
                        another instance_id",
                        id.0, id.1
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `host` as written, or for `${NAME}` the value of environment variable NAME: a
/// Kubernetes pod's IP from the downward API (`status.podIP`), so that one ConfigMap serves
/// every replica.
fn host_or_env<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    expand_env(&text, |name| std::env::var(name).ok()).map_err(de::Error::custom)
}

/// `text`, or the variable `lookup` finds for a whole-value `${NAME}`.
fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    match text.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        None => Ok(text.to_owned()),
        Some(name) => lookup(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            format!("{text:?} names environment variable {name}, which is not set (or empty)")
        }),
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<NerveConfig, ConfigError> {
    registry::config::load(path)
}

/// Parses and validates configuration text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<NerveConfig, ConfigError> {
    registry::config::parse(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
etcd: {endpoints: ["http://127.0.0.1:2379"]}
services:
  - name: web
    host: 10.0.0.5
    port: 8080
    checks: [{type: tcp}]
"#;

    #[test]
    fn a_host_can_come_from_the_environment() {
        let env = |name: &str| (name == "POD_IP").then(|| "10.1.2.3".to_owned());
        assert_eq!(expand_env("${POD_IP}", env).as_deref(), Ok("10.1.2.3"));
        assert_eq!(expand_env("10.0.0.5", env).as_deref(), Ok("10.0.0.5"));
        let missing = expand_env("${NODE_IP}", env).unwrap_err();
        assert!(missing.contains("NODE_IP, which is not set"), "{missing}");
        let e = err(&MINIMAL.replace("host: 10.0.0.5", "host: ${SMARTSTACK_TEST_UNSET_VARIABLE}"));
        let text = e.to_string();
        assert!(
            text.contains("services[0].host") && text.contains("not set"),
            "{text}"
        );
    }

    fn ok(text: &str) -> NerveConfig {
        parse(Path::new("/etc/nerve.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> ConfigError {
        match parse(Path::new("/etc/nerve.yaml"), text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = ok(MINIMAL);
        assert_eq!(c.lease_ttl, ConfigDuration::from_secs(10));
        assert_eq!(c.admin, None);
        assert_eq!(c.shutdown_delay, None);
        let s = &c.services[0];
        assert_eq!(s.instance_id(), "10.0.0.5:8080");
        assert_eq!(s.weight, 100);
        assert_eq!((s.rise, s.fall), (2, 2));
        assert_eq!(s.check_interval, ConfigDuration::from_secs(1));
        assert_eq!(
            s.checks[0],
            CheckConfig::Tcp(TcpCheckConfig {
                port: None,
                timeout: ConfigDuration::from_secs(1)
            })
        );
    }

    #[test]
    fn the_issue_2_example_loads() {
        let c = ok(r#"
etcd:
  endpoints: ["http://127.0.0.1:2379"]
  prefix: /smartstack/services        # optional, default shown
lease_ttl: 10s                        # optional
services:
  - name: web
    host: 10.0.0.5                    # what consumers dial
    port: 8080
    instance_id: web-1                # optional, default "<host>:<port>"
    weight: 100                       # optional
    check_interval: 1s
    rise: 2                           # consecutive passes to become healthy
    fall: 2                           # consecutive failures to become unhealthy
    checks:
      - type: tcp                     # connect to host:port within timeout
"#);
        assert_eq!(c.services[0].instance_id(), "web-1");
    }

    #[test]
    fn every_key_of_a_full_file_loads() {
        let c = ok(r#"
etcd: {endpoints: ["http://127.0.0.1:2379"]}
lease_ttl: 5s
reconcile_interval: 2s
admin: 127.0.0.1:8500
shutdown_delay: 3s
services:
  - name: web
    host: 10.0.0.5
    port: 8080
    zone: eu-1a
    labels: {version: "2"}
    maintenance_file: /run/web.down
    checks:
      - {type: http, path: /health, method: HEAD, host: web.internal, headers: {X-A: b},
         expect_status: [200, "300-302"], expect_body: ok, timeout: 500ms}
      - {type: exec, command: [/bin/true], timeout: 2s}
      - {type: tcp, port: 9090}
"#);
        assert_eq!(c.admin, Some(ListenAddr("127.0.0.1:8500".parse().unwrap())));
        let CheckConfig::Http(h) = &c.services[0].checks[0] else {
            panic!()
        };
        assert_eq!(h.expect_status.0, vec![(200, 200), (300, 302)]);
        assert!(h.expect_status.contains(301) && !h.expect_status.contains(204));
        let r = c.services[0].record();
        assert_eq!(r.zone.as_deref(), Some("eu-1a"));
        assert_eq!(r.labels["version"], "2");
    }

    #[test]
    fn admin_may_be_a_port_alone() {
        let c = ok(&format!("{MINIMAL}admin: 8500\n"));
        assert_eq!(c.admin, Some(ListenAddr("127.0.0.1:8500".parse().unwrap())));
    }

    #[test]
    fn json_files_load() {
        let c = ok(r#"{"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "services": [{"name": "db", "host": "h", "port": 5432, "checks": [{"type": "tcp"}]}]}"#);
        assert_eq!(c.services[0].name, "db");
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        // `extra` may override any of the other fields: they are only defaults here.
        let svc = |extra: &str| {
            let mut fields = vec![extra.to_owned()];
            for default in ["name: web", "host: h", "port: 80", "checks: [{type: tcp}]"] {
                let name = default.split(':').next().unwrap_or_default();
                if !extra.starts_with(&format!("{name}:")) {
                    fields.push(default.to_owned());
                }
            }
            format!(
                "etcd: {{endpoints: [\"http://127.0.0.1:2379\"]}}\nservices:\n  - {{{}}}\n",
                fields.join(", ")
            )
        };
        let check = |c: &str| {
            format!("etcd: {{endpoints: [\"http://127.0.0.1:2379\"]}}\nservices:\n  - {{name: web, host: h, port: \
                80, checks: [{c}]}}\n")
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (format!("{MINIMAL}colour: red\n"), "colour", "unknown field"),
            (format!("{MINIMAL}lease_ttl: 1s\n"), "lease_ttl", "at least 2s"),
            (format!("{MINIMAL}lease_ttl: 2500ms\n"), "lease_ttl", "whole seconds"),
            (format!("{MINIMAL}lease_ttl: soon\n"), "lease_ttl", "invalid duration"),
            (format!("{MINIMAL}admin: localhost:80\n"), "admin", "not an address"),
            (format!("{MINIMAL}admin: 0.0.0.0:8500\n"), "admin", "not a loopback address"),
            (format!("{MINIMAL}shutdown_delay: 5\n"), "shutdown_delay", "invalid"),
            (svc("colour: red"), "services[0].colour", "unknown field"),
            (svc("port: 0"), "services[0].port", "1 to 65535"),
            (svc("rise: 0"), "services[0].rise", "at least 1"),
            (svc("fall: -1"), "services[0].fall", "invalid type"),
            (svc("instance_id: a/b"), "services[0].instance_id", "'/'"),
            (svc("weight: lots"), "services[0].weight", "invalid type"),
            (svc("check_interval: 1ms"), "services[0].check_interval", "too short"),
            (
                "etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nservices: [{name: web, host: h, port: 80}]".into(),
                "services[0]",
                "missing field `checks`",
            ),
            (
                "etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nservices: [{name: web, host: h, port: 80, checks: \
                []}]".into(),
                "services[0].checks",
                "at least one check",
            ),
            (check("{type: ping}"), "services[0].checks[0].type", "unknown variant `ping`"),
            (
                check("{type: tcp, colour: red}"),
                "services[0].checks[0].colour",
                "unknown field `colour` for a tcp check",
            ),
            (check("{colour: red, type: tcp}"), "services[0].checks[0].colour", "unknown field `colour`"),
            (
                check("{type: tcp, command: [x]}"),
                "services[0].checks[0].command",
                "unknown field `command` for a tcp check",
            ),
            // Written before `type`, it could only be rejected once the type was known.
            (check("{command: [x], type: tcp}"), "services[0].checks[0]", "unknown field `command` for a tcp check"),
            (check("{port: 80}"), "services[0].checks[0]", "missing field `type`"),
            (check("tcp"), "services[0].checks[0]", "invalid type"),
            (check("{type: tcp, port: 80, port: 81}"), "services[0].checks[0].port", "duplicate field `port`"),
            (check("{type: exec}"), "services[0].checks[0]", "missing field `command`"),
            (check("{type: exec, command: []}"), "services[0].checks[0].command", "must name a program"),
            (check("{type: exec, command: /bin/true}"), "services[0].checks[0].command", "invalid type"),
            (check("{type: http, path: health}"), "services[0].checks[0].path", "request path"),
            (check("{type: http, method: \"G T\"}"), "services[0].checks[0].method", "HTTP method"),
            (
                check("{type: http, expect_status: 700}"),
                "services[0].checks[0].expect_status",
                "700 is not an HTTP status code",
            ),
            (check("{type: http, expect_status: \"399-200\"}"), "services[0].checks[0].expect_status", "empty"),
            (
                check("{type: http, expect_status: [200, ok]}"),
                "services[0].checks[0].expect_status[1]",
                "not a status code",
            ),
            (check("{type: http, headers: {\"a b\": c}}"), "services[0].checks[0].headers.a b", "header name"),
            (check("{type: http, headers: [X-A]}"), "services[0].checks[0].headers", "invalid type"),
            (check("{type: http, headers: {X-A: [b]}}"), "services[0].checks[0].headers.X-A", "invalid type"),
            (check("{type: tcp, timeout: 0ms}"), "services[0].checks[0].timeout", "too short"),
            (check("{type: tcp, timeout: fast}"), "services[0].checks[0].timeout", "invalid duration \"fast\""),
            (check("{timeout: fast, type: exec, command: [x]}"), "services[0].checks[0].timeout", "invalid duration"),
            (check("{type: http, timeout: 5}"), "services[0].checks[0].timeout", "invalid duration \"5\""),
            (check("{type: tcp, port: 70000}"), "services[0].checks[0].port", "invalid value: integer `70000`"),
            (check("{type: http, port: 0}"), "services[0].checks[0].port", "1 to 65535"),
            (
                "etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nservices:\n  - {name: web, host: h, port: 80, \
                checks: [{type: tcp}]}\n  - {name: web, host: h, port: 80, checks: [{type: tcp}]}\n".into(),
                "services[1].instance_id",
                "already defined by services[0]",
            ),
            ("services: []".into(), "", "missing field `etcd`"),
            ("etcd: {endpoints: []}\n".into(), "etcd.endpoints", "at least one"),
        ];
        for (text, key, message) in &cases {
            let e = err(text);
            assert_eq!(&e.key, key, "{text}\n=> {e}");
            assert!(e.message.contains(message), "{text}\n=> {e}");
            assert!(e.to_string().starts_with("/etc/nerve.yaml: "), "{e}");
        }
    }

    #[test]
    fn the_same_service_may_have_several_instances() {
        let c = ok("etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nservices:\n  - {name: web, host: h, port: 80, \
            checks: [{type: tcp}]}\n  - {name: web, host: h, port: 81, checks: [{type: tcp}]}\n");
        assert_eq!(c.services.len(), 2);
    }
}
