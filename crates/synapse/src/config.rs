//! synapse's configuration file: its shape (serde, unknown keys rejected) and its meaning
//! ([`Validate`]), so that every mistake is reported with the file and the dotted key.
//!
//! Everything here is documented for operators in `docs/synapse.md`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use registry::config::ListenAddr;
use registry::config::{ConfigError, FieldError, Validate};
use registry::{ConfigDuration, EtcdConfig};
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SynapseConfig {
    pub etcd: EtcdConfig,
    /// This host's failure domain; backends of the same zone are preferred.
    #[serde(default)]
    pub zone: Option<String>,
    /// Address of the admin HTTP server (`GET /status`); none when absent.
    #[serde(default)]
    pub admin: Option<ListenAddr>,
    /// Where the last known backend set of every service is kept across restarts.
    #[serde(default)]
    pub cache_file: Option<PathBuf>,
    /// How long live connections may run on after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
    /// How long a resync that lost a service's instances (etcd rebuilt empty, rewound,
    /// replaced) is not believed: the instances known before are served meanwhile.
    #[serde(default = "default_registry_grace_period")]
    pub registry_grace_period: ConfigDuration,
    /// What `GET /metrics` exports.
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// The `metrics` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether the `synapse_backend_*` series (one per backend) are exported; off for
    /// services with thousands of instances, where they would swamp the scrape.
    #[serde(default = "default_per_backend")]
    pub per_backend: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            per_backend: default_per_backend(),
        }
    }
}

fn default_per_backend() -> bool {
    true
}

/// One local port forwarded to the instances of one service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service name in the registry (`<prefix>/<name>/...`).
    pub name: String,
    /// `127.0.0.1:3000`, or a bare port (`3000`) meaning loopback.
    pub listen: ListenAddr,
    /// `tcp`: each connection goes to one backend. `http`: each request does.
    #[serde(default)]
    pub mode: Mode,
    /// How a backend is picked; by default `round_robin` in tcp mode, `peak_ewma` in http
    /// mode ([`ServiceConfig::balance`]).
    #[serde(default, rename = "balance")]
    pub balance_choice: Option<Balance>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// How many other backends to try after a failed connect.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Send a request again to another backend when its backend closes or resets the
    /// connection before answering (only for requests that may be repeated).
    #[serde(default)]
    pub retry_unanswered: bool,
    /// Consecutive connect failures that eject a backend.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// Length of a first ejection; each repeat doubles it (up to 64 times).
    #[serde(default = "default_ejection_time")]
    pub ejection_time: ConfigDuration,
    /// At most this share of the service's backends is ejected at once.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// How long connections to a backend that left the registry may run on; forever if absent.
    #[serde(default)]
    pub drain_timeout: Option<ConfigDuration>,
    /// Live client connections at most; at the limit, accepting waits.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A connection with no bytes either way for this long is closed; never if absent.
    #[serde(default)]
    pub idle_timeout: Option<ConfigDuration>,
    /// Same-zone backends that must be healthy for zone affinity to apply.
    #[serde(default = "default_min_zone_backends")]
    pub min_zone_backends: u32,
    /// Backends used while the registry has no instance of this service.
    #[serde(default)]
    pub default_servers: Vec<DefaultServer>,
    /// How long a connection that arrives before any backend set is known waits for one.
    #[serde(default = "default_startup_wait")]
    pub startup_wait: ConfigDuration,
    /// How long a backend that joins (or is restored from ejection) takes to ramp up to
    /// its full share of new connections; off when absent or 0.
    #[serde(default)]
    pub slow_start: Option<ConfigDuration>,
    /// http mode: the protocol spoken to backends.
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// http mode: response statuses that are retried on another backend (besides
    /// connection failures), e.g. `[502, 503, 504]`.
    #[serde(default)]
    pub retry_on: Vec<u16>,
    /// http mode: the longest a whole request may take, retries included; none if absent.
    #[serde(default)]
    pub request_timeout: Option<ConfigDuration>,
    /// http mode: the longest one attempt may wait for its response headers.
    #[serde(default)]
    pub per_try_timeout: Option<ConfigDuration>,
}

/// Whether a service forwards connections or requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Tcp,
    Http,
}

/// The protocol http mode speaks to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 to a backend for HTTP/1.1 clients, HTTP/2 (h2c) for HTTP/2 clients.
    #[default]
    SameAsClient,
    Http1,
    H2,
}

/// A fallback backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultServer {
    pub host: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub zone: Option<String>,
}

/// How a backend is chosen for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two random choices on active connections.
    LeastConn,
    /// Weighted random.
    Random,
    /// http mode: power of two choices on each backend's peak-EWMA response time times its
    /// requests in flight (plus one).
    PeakEwma,
    /// http mode: power of two choices on requests in flight.
    LeastRequest,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Random => "random",
            Balance::PeakEwma => "peak_ewma",
            Balance::LeastRequest => "least_request",
        })
    }
}

fn default_registry_grace_period() -> ConfigDuration {
    ConfigDuration(registry::discovery::DEFAULT_GRACE_PERIOD)
}

fn default_shutdown_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
/// Retries at most per client connection: each one is a connect, and with every backend
/// refusing they come back to back.
pub const MAX_RETRIES: u32 = 10;

fn default_retries() -> u32 {
    2
}
fn default_eject_after() -> u32 {
    3
}
fn default_ejection_time() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_max_ejection_percent() -> u32 {
    50
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_min_zone_backends() -> u32 {
    1
}
fn default_startup_wait() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_weight() -> u32 {
    registry::record::DEFAULT_WEIGHT
}

impl ServiceConfig {
    /// A service with every default, for tests and programmatic use.
    pub fn new(name: &str, listen: SocketAddr) -> Self {
        ServiceConfig {
            name: name.to_owned(),
            listen: ListenAddr(listen),
            mode: Mode::Tcp,
            balance_choice: None,
            connect_timeout: default_connect_timeout(),
            retries: default_retries(),
            retry_unanswered: false,
            eject_after: default_eject_after(),
            ejection_time: default_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
            drain_timeout: None,
            max_connections: default_max_connections(),
            idle_timeout: None,
            min_zone_backends: default_min_zone_backends(),
            default_servers: Vec::new(),
            startup_wait: default_startup_wait(),
            slow_start: None,
            upstream_protocol: UpstreamProtocol::default(),
            retry_on: Vec::new(),
            request_timeout: None,
            per_try_timeout: None,
        }
    }

    /// How a backend is picked: the configured `balance`, else the mode's default.
    pub fn balance(&self) -> Balance {
        self.balance_choice.unwrap_or(match self.mode {
            Mode::Tcp => Balance::RoundRobin,
            Mode::Http => Balance::PeakEwma,
        })
    }

    /// The http-mode keys: only with `mode: http`, and sensible there.
    fn validate_http(&self, key: &dyn Fn(&str) -> String) -> Result<(), FieldError> {
        if self.mode == Mode::Tcp {
            if let Some(b @ (Balance::PeakEwma | Balance::LeastRequest)) = self.balance_choice {
                return Err(FieldError::new(
                    key("balance"),
                    format!(
                        "{b} balances requests: it needs `mode: http` (tcp mode has least_conn)"
                    ),
                ));
            }
            for (k, set) in [
                ("retry_on", !self.retry_on.is_empty()),
                ("request_timeout", self.request_timeout.is_some()),
                ("per_try_timeout", self.per_try_timeout.is_some()),
                (
                    "upstream_protocol",
                    self.upstream_protocol != UpstreamProtocol::default(),
                ),
            ] {
                if set {
                    return Err(FieldError::new(
                        key(k),
                        "applies to requests: it needs `mode: http`",
                    ));
                }
            }
        }
        if let Some(bad) = self.retry_on.iter().find(|s| !(500..=599).contains(*s)) {
            return Err(FieldError::new(
                key("retry_on"),
                format!("{bad} is not a 5xx status: only server errors are retried"),
            ));
        }
        Ok(())
    }

    fn validate(&self, i: usize) -> Result<(), FieldError> {
        let key = |k: &str| format!("services[{i}].{k}");
        registry::key::check_segment("service name", &self.name)
            .map_err(|e| FieldError::new(key("name"), e.to_string()))?;
        if self.connect_timeout.get() < Duration::from_millis(1) {
            return Err(FieldError::new(
                key("connect_timeout"),
                "must be at least 1ms",
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(FieldError::new(
                key("retries"),
                format!(
                    "{} is more than {MAX_RETRIES}: every client connection could make that many \
                     connects while its backends are down",
                    self.retries
                ),
            ));
        }
        if self.eject_after == 0 {
            return Err(FieldError::new(
                key("eject_after"),
                "must be at least 1 (one failure ejects)",
            ));
        }
        if self.ejection_time.get() < Duration::from_millis(10) {
            return Err(FieldError::new(
                key("ejection_time"),
                "must be at least 10ms",
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(FieldError::new(
                key("max_ejection_percent"),
                format!("{} is not a percentage (0-100)", self.max_ejection_percent),
            ));
        }
        if self.max_connections == 0 {
            return Err(FieldError::new(
                key("max_connections"),
                "must be at least 1",
            ));
        }
        if let Some(t) = self.idle_timeout {
            if t.get() < Duration::from_millis(10) {
                return Err(FieldError::new(
                    key("idle_timeout"),
                    "must be at least 10ms",
                ));
            }
        }
        self.validate_http(&key)?;
        if self
            .slow_start
            .is_some_and(|t| t.get() > Duration::from_secs(3600))
        {
            return Err(FieldError::new(
                key("slow_start"),
                "must be at most 1h: a backend would wait that long for its full share",
            ));
        }
        for (j, s) in self.default_servers.iter().enumerate() {
            let key = |k: &str| format!("services[{i}].default_servers[{j}].{k}");
            if s.host.is_empty() || s.host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(FieldError::new(
                    key("host"),
                    format!("{:?} is not a host name or IP address", s.host),
                ));
            }
            if s.port == 0 {
                return Err(FieldError::new(key("port"), "must be 1-65535"));
            }
        }
        Ok(())
    }
}

impl Validate for SynapseConfig {
    fn validate(&self) -> Result<(), FieldError> {
        self.etcd.validate()?;
        if let Some(zone) = &self.zone {
            if zone.is_empty() {
                return Err(FieldError::new("zone", "must not be empty when set"));
            }
        }
        if self.shutdown_timeout.get() > Duration::from_secs(24 * 3600) {
            return Err(FieldError::new("shutdown_timeout", "must be at most 24h"));
        }
        if self.registry_grace_period.get() > Duration::from_secs(3600) {
            return Err(FieldError::new(
                "registry_grace_period",
                "must be at most 1h (0s turns the grace period off)",
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut listens: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            s.validate(i)?;
            if let Some(first) = names.insert(&s.name, i) {
                return Err(FieldError::new(
                    format!("services[{i}].name"),
                    format!(
                        "service {:?} is already configured at services[{first}]",
                        s.name
                    ),
                ));
            }
            // Port 0 asks the system for a fresh port, so it never collides.
            if s.listen.0.port() != 0 {
                if let Some(first) = listens.insert(s.listen.0, i) {
                    return Err(FieldError::new(
                        format!("services[{i}].listen"),
                        format!("{} is already used by services[{first}]", s.listen),
                    ));
                }
            }
        }
        if let Some(admin) = self.admin {
            if admin.0.port() != 0 && listens.contains_key(&admin.0) {
                return Err(FieldError::new(
                    "admin",
                    format!("{admin} is also a service's listen address"),
                ));
            }
            if !admin.0.ip().is_loopback() {
                return Err(FieldError::new(
                    "admin",
                    format!(
                        "{admin} is not a loopback address: the admin port has no authentication"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl SynapseConfig {
    /// A configuration with every default and no services.
    pub fn new(etcd: EtcdConfig) -> Self {
        SynapseConfig {
            etcd,
            zone: None,
            admin: None,
            cache_file: None,
            shutdown_timeout: default_shutdown_timeout(),
            registry_grace_period: default_registry_grace_period(),
            metrics: MetricsConfig::default(),
            services: Vec::new(),
        }
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        registry::config::load(path)
    }

    /// Parses and validates text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        registry::config::parse(path, text)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Names of services whose listen address is not loopback, for a warning.
    pub fn exposed_services(&self) -> Vec<&ServiceConfig> {
        let mut seen = HashSet::new();
        self.services
            .iter()
            .filter(|s| !s.listen.0.ip().is_loopback() && seen.insert(&s.name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETCD: &str = "etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n";

    fn parse(text: &str) -> Result<SynapseConfig, ConfigError> {
        SynapseConfig::parse(Path::new("/etc/synapse.yaml"), text)
    }

    #[test]
    fn the_issue_2_config_loads_with_defaults() {
        let c = parse(&format!(
            "{ETCD}services:\n  - name: web\n    listen: 127.0.0.1:3000\n"
        ))
        .unwrap();
        assert_eq!(c.services.len(), 1);
        let s = &c.services[0];
        assert_eq!(
            s,
            &ServiceConfig::new("web", "127.0.0.1:3000".parse().unwrap())
        );
        assert_eq!(s.balance(), Balance::RoundRobin);
        assert_eq!(s.connect_timeout.get(), Duration::from_secs(1));
        assert_eq!(s.retries, 2);
        assert!(!s.retry_unanswered);
        assert_eq!(s.eject_after, 3);
        assert_eq!(s.max_ejection_percent, 50);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.min_zone_backends, 1);
        assert_eq!(c.shutdown_timeout.get(), Duration::from_secs(30));
        assert_eq!(c.registry_grace_period.get(), Duration::from_secs(20));
        assert!(c.metrics.per_backend);
    }

    #[test]
    fn every_key_loads() {
        let c = parse(&format!(
            "{ETCD}zone: a\nadmin: 127.0.0.1:9000\ncache_file: /tmp/c.json\nshutdown_timeout: 2s\n\
             registry_grace_period: 30s\nmetrics: {{per_backend: false}}\n\
             services:\n  - name: web\n    listen: 3000\n    balance: least_conn\n    connect_timeout: 200ms\n\
             \x20   retries: 1\n    retry_unanswered: true\n    eject_after: 2\n    ejection_time: 1s\n\
             \x20   max_ejection_percent: 30\n\
             \x20   drain_timeout: 5s\n    max_connections: 7\n    idle_timeout: 1m\n    min_zone_backends: 2\n\
             \x20   startup_wait: 1s\n    slow_start: 30s\n    default_servers: [{{host: 10.0.0.1, port: 80, weight: 5, zone: b}}]\n"
        ))
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(s.balance(), Balance::LeastConn);
        assert!(s.retry_unanswered);
        assert_eq!(s.slow_start.map(|t| t.get()), Some(Duration::from_secs(30)));
        assert_eq!(s.default_servers[0].weight, 5);
        assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(c.registry_grace_period.get(), Duration::from_secs(30));
        assert!(!c.metrics.per_backend);
        // JSON is YAML too, as SmartStack's configs are JSON.
        let j = parse(
            r#"{"etcd": {"endpoints": ["127.0.0.1:2379"]},
                "services": [{"name": "db", "listen": "127.0.0.1:5432", "balance": "random"}]}"#,
        )
        .unwrap();
        assert_eq!(j.services[0].balance(), Balance::Random);
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        let svc = |extra: &str| {
            format!("{ETCD}services:\n  - name: web\n    listen: 127.0.0.1:3000\n{extra}")
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (svc("    colour: red\n"), "services[0].colour", "unknown field"),
            (format!("{ETCD}colour: red\n"), "colour", "unknown field"),
            (format!("{ETCD}metrics: {{per_service: no}}\n"), "metrics.per_service", "unknown field"),
            (format!("{ETCD}metrics: {{per_backend: 3}}\n"), "metrics.per_backend", "expected true or false"),
            (svc("    balance: fastest\n"), "services[0].balance", "unknown variant"),
            (svc("    connect_timeout: soon\n"), "services[0].connect_timeout", "invalid duration"),
            (svc("    connect_timeout: 0ms\n"), "services[0].connect_timeout", "at least"),
            (svc("    retries: -1\n"), "services[0].retries", "expected a whole number from 0 to 4294967295"),
            (svc("    retries: 11\n"), "services[0].retries", "more than 10"),
            (svc("    eject_after: 0\n"), "services[0].eject_after", "at least 1"),
            (svc("    max_ejection_percent: 150\n"), "services[0].max_ejection_percent", "percentage"),
            (svc("    max_connections: 0\n"), "services[0].max_connections", "at least 1"),
            (svc("    idle_timeout: 1ms\n"), "services[0].idle_timeout", "at least"),
            (svc("    slow_start: 2h\n"), "services[0].slow_start", "at most 1h"),
            (svc("    balance: peak_ewma\n"), "services[0].balance", "needs `mode: http`"),
            (svc("    retry_on: [503]\n"), "services[0].retry_on", "needs `mode: http`"),
            (svc("    mode: http\n    retry_on: [404]\n"), "services[0].retry_on", "not a 5xx"),
            (svc("    mode: udp\n"), "services[0].mode", "unknown variant"),
            (svc("    default_servers: [{host: h}]\n"), "services[0].default_servers[0]", "missing field `port`"),
            (svc("    default_servers: [{host: '', port: 1}]\n"), "services[0].default_servers[0].host", "not a host"),
            (svc("    default_servers: [{host: h, port: 0}]\n"), "services[0].default_servers[0].port", "1-65535"),
            (format!("{ETCD}services:\n  - name: web\n    listen: nowhere\n"), "services[0].listen", "not an address"),
            (format!("{ETCD}services:\n  - name: web\n    listen: 70000\n"), "services[0].listen", "out of range"),
            (format!("{ETCD}services:\n  - listen: 3000\n"), "services[0]", "missing field `name`"),
            (format!("{ETCD}services:\n  - name: a/b\n    listen: 3000\n"), "services[0].name", "must not contain '/'"),
            (
                format!("{ETCD}services:\n  - {{name: web, listen: 3000}}\n  - {{name: web, listen: 3001}}\n"),
                "services[1].name",
                "already configured at services[0]",
            ),
            (
                format!("{ETCD}services:\n  - {{name: a, listen: 3000}}\n  - {{name: b, listen: '127.0.0.1:3000'}}\n"),
                "services[1].listen",
                "already used by services[0]",
            ),
            (format!("{ETCD}admin: 0.0.0.0:9000\n"), "admin", "not a loopback"),
            (format!("{ETCD}zone: ''\n"), "zone", "must not be empty"),
            ("etcd: {endpoints: []}\n".to_owned(), "etcd.endpoints", "at least one"),
            ("services: []\n".to_owned(), "", "missing field `etcd`"),
        ];
        for (text, key, message) in cases {
            let e = match parse(&text) {
                Ok(c) => panic!("accepted {text:?}: {c:?}"),
                Err(e) => e,
            };
            assert_eq!(e.key, key, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
            assert!(e.to_string().starts_with("/etc/synapse.yaml: "), "{e}");
        }
    }

    #[test]
    fn the_example_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/synapse.yaml");
        let c = SynapseConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.services.len(), 2);
        assert!(c.services[1].default_servers[0].zone.is_some());

        // The keys commented out (they need files or secrets) are spelled right too: with
        // every indented comment line uncommented and the files made, it still loads.
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| {
                let indent = l.len() - l.trim_start().len();
                match l.trim_start().strip_prefix("# ") {
                    Some(rest) if indent > 0 => format!("{}{rest}\n", &l[..indent]),
                    _ => format!("{l}\n"),
                }
            })
            .collect::<String>()
            .replace("/etc/synapse/", &format!("{}/", dir.path().display()))
            // The tls block is for https:// endpoints; plain http with tls is an error.
            .replace("http://", "https://");
        for file in ["etcd-ca.pem", "client.pem", "client-key.pem"] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        let full = SynapseConfig::parse(&path, &uncommented).unwrap_or_else(|e| panic!("{e}"));
        let tls = full.etcd.tls.as_ref().expect("the tls block");
        assert!(tls.domain.is_some() && tls.cert.is_some() && tls.key.is_some());
        assert!(full.etcd.username.is_some() && full.etcd.password.is_some());
    }

    #[test]
    fn port_zero_listens_never_collide() {
        parse(&format!(
            "{ETCD}services:\n  - {{name: a, listen: '127.0.0.1:0'}}\n  - {{name: b, listen: '127.0.0.1:0'}}\n"
        ))
        .unwrap();
    }
}
