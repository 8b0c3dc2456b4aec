//! `synapse --import-smartstack FILE`: an Airbnb synapse JSON configuration converted into
//! ours, as a pure function of the file's text. What has no equivalent is returned as
//! warnings naming its JSON path; nothing is dropped without one.
//!
//! Each service's `haproxy.port` becomes its `listen` address (on `bind_address`, default
//! loopback), `default_servers` stay, and the HAProxy lines of `haproxy.defaults` and of the
//! service's `listen`/`frontend`/`backend` give `balance`, `retries`, `connect_timeout`,
//! `idle_timeout` and `max_connections` (see `haproxy_lines`). HAProxy retries a failed
//! connect 3 times unless told otherwise, so `retries: 3` is written where no line says.
//! The discovery (ZooKeeper or another watcher) becomes our `etcd:` block with a
//! placeholder endpoint and a "fill in" comment naming what it was.
//!
//! Documented for operators in docs/operations.md, "Migrating from SmartStack".

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use registry::import::{self, At, Converted, ImportError, Problem, Source, Warning};

use crate::config::{DefaultServer, ServiceConfig, SynapseConfig, MAX_RETRIES};
use crate::config_yaml;
use crate::haproxy_lines::{self, Outcome, Settings};

/// Whose keys the source holds, for "not a key ... documents" warnings.
const SOURCE: &str = "Airbnb's synapse";

/// HAProxy's `retries` when no line sets it.
const HAPROXY_RETRIES: u32 = 3;

/// Why the keys that drive HAProxy itself have no equivalent.
const NO_HAPROXY: &str = "synapse is the proxy: there is no HAProxy to configure or reload";

/// Converts the synapse JSON `text` of `file` into our YAML and the list of what was dropped.
pub fn import_smartstack(file: &Path, text: &str) -> Result<Converted, ImportError> {
    let doc = import::read(file, text)?;
    let mut warnings = Vec::new();
    let conversion = convert(&At::root(&doc), &mut warnings).map_err(|p| p.in_file(file))?;
    let yaml = render(file, &conversion);
    verify(file, &yaml, &conversion)?;
    Ok(Converted { yaml, warnings })
}

/// What the file converts to, before it is written.
struct Conversion {
    cache_file: Option<PathBuf>,
    services: Vec<ServiceConfig>,
    /// Comments written above each service.
    comments: Vec<Vec<String>>,
    /// The JSON path each service came from.
    origins: Vec<String>,
    sources: Vec<Source>,
}

/// What the top-level `haproxy` block gives every service.
struct Shared {
    defaults: Settings,
    bind: IpAddr,
}

fn convert(root: &At, warnings: &mut Vec<Warning>) -> Result<Conversion, Problem> {
    let mut top = root.fields()?;
    let mut conversion = Conversion {
        cache_file: None,
        services: Vec::new(),
        comments: Vec::new(),
        origins: Vec::new(),
        sources: Vec::new(),
    };
    let shared = match top.take("haproxy") {
        Some(at) => haproxy(&at, &mut conversion.cache_file, warnings)?,
        None => Shared {
            defaults: Settings::default(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        },
    };
    if let Some(at) = top.take("services") {
        if let import::Json::Array(_) = at.value {
            return Err(at.problem(
                "expected an object of services by name, found a list (synapse's early \
                 list format: make it an object keyed by each service's name first)",
            ));
        }
        for (name, at) in at.entries()? {
            let Some((service, source)) = service(name, &at, &shared, warnings)? else {
                continue;
            };
            conversion.comments.push(vec![format!("from {}", at.path)]);
            conversion.services.push(service);
            conversion.origins.push(at.path.clone());
            conversion.sources.push(source);
        }
    }
    top.drop(
        "file_output",
        "GET /status of the admin API lists every service's backends; set `admin`",
        warnings,
    );
    top.drop(
        "service_conf_dir",
        "its files were not read: add each one to `services` under its file name \
         without .json, and convert again",
        warnings,
    );
    top.finish(SOURCE, warnings);
    Ok(conversion)
}

/// The top-level `haproxy` block: the defaults every service starts from, the listen
/// address, and the state file (our cache file).
fn haproxy(
    at: &At,
    cache_file: &mut Option<PathBuf>,
    warnings: &mut Vec<Warning>,
) -> Result<Shared, Problem> {
    let mut f = at.fields()?;
    let mut defaults = Settings::default();
    if let Some(a) = f.take("defaults") {
        lines(&a, &mut defaults, warnings)?;
    }
    let bind = match f.take("bind_address") {
        Some(a) => bind_address(&a)?,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    if let Some(a) = f.take("state_file_path") {
        *cache_file = Some(PathBuf::from(a.str()?));
    }
    f.drop(
        "state_file_ttl",
        "the cache file keeps each service's last view from etcd, whatever its age",
        warnings,
    );
    f.drop(
        "global",
        "HAProxy process settings; synapse raises its own descriptor limit",
        warnings,
    );
    for key in ["extra_sections", "shared_frontend"] {
        f.drop(
            key,
            "every service listens on its own port; there are no HAProxy sections",
            warnings,
        );
    }
    for key in [
        "reload_command",
        "config_file_path",
        "socket_file_path",
        "do_writes",
        "do_reloads",
        "do_socket",
        "restart_interval",
        "restart_jitter",
    ] {
        f.drop(key, NO_HAPROXY, warnings);
    }
    f.finish(SOURCE, warnings);
    Ok(Shared { defaults, bind })
}

/// HAProxy lines (a string or a list of them) read into `settings`; each line without an
/// equivalent is one warning.
fn lines(at: &At, settings: &mut Settings, warnings: &mut Vec<Warning>) -> Result<(), Problem> {
    for (path, line) in at.strings()? {
        if let Outcome::Dropped(why) = haproxy_lines::apply(line, settings) {
            warnings.push(Warning {
                path,
                message: format!("{:?}: {why}; dropped", line.trim()),
            });
        }
    }
    Ok(())
}

fn bind_address(at: &At) -> Result<IpAddr, Problem> {
    let text = at.str()?;
    if text == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    text.parse()
        .map_err(|_| at.problem(format!("{text:?} is not an IP address to listen on")))
}

/// One service and where it was discovered; `None` for a service that has no port of its
/// own (reached through a shared frontend), which we cannot serve.
fn service(
    name: &str,
    at: &At,
    shared: &Shared,
    warnings: &mut Vec<Warning>,
) -> Result<Option<(ServiceConfig, Source)>, Problem> {
    registry::key::check_segment("service name", name).map_err(|e| at.problem(e.to_string()))?;
    let mut f = at.fields()?;
    let haproxy = f.require("haproxy", "it holds the port the service listens on")?;
    let mut h = haproxy.fields()?;
    let Some(port) = h.take("port") else {
        warnings.push(haproxy.warning(
            "no `port`: the service is reached through a shared frontend only, and each of \
             ours listens on its own port; the whole service is left out",
        ));
        return Ok(None);
    };
    let port = port.port()?;
    let bind = match h.take("bind_address") {
        Some(a) => bind_address(&a)?,
        None => shared.bind,
    };
    let mut settings = shared.defaults.clone();
    for key in ["listen", "frontend", "backend"] {
        if let Some(a) = h.take(key) {
            lines(&a, &mut settings, warnings)?;
        }
    }
    h.drop("server_options", "synapse balances in-process", warnings);
    h.drop(
        "server_port_override",
        "records in etcd carry each instance's port",
        warnings,
    );
    h.drop("backend_name", NO_HAPROXY, warnings);
    h.drop(
        "shared_frontend",
        "every service listens on its own port",
        warnings,
    );
    h.finish(SOURCE, warnings);

    let source = discovery(&mut f, at, warnings)?;
    let default_servers = match f.take("default_servers") {
        Some(a) => a
            .items()?
            .iter()
            .map(|item| default_server(item, warnings))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    if let Some(a) = f.take("keep_default_servers") {
        if a.bool()? {
            warnings.push(a.warning(
                "no equivalent (default_servers are used only while the registry has no \
                 instance of the service); dropped",
            ));
        }
    }
    if let Some(a) = f.take("use_previous_backends") {
        if !a.bool()? {
            warnings.push(a.warning(
                "no equivalent (synapse always keeps serving the last instances it knew \
                 while etcd cannot be read); dropped",
            ));
        }
    }
    f.finish(SOURCE, warnings);

    let mut service = ServiceConfig::new(name, SocketAddr::new(bind, port));
    service.default_servers = default_servers;
    apply(&mut service, &settings, &haproxy, warnings);
    Ok(Some((service, source)))
}

/// The HAProxy settings, as our keys.
fn apply(service: &mut ServiceConfig, s: &Settings, at: &At, warnings: &mut Vec<Warning>) {
    if let Some(b) = s.balance {
        service.balance_choice = Some(b);
    }
    let retries = s.retries.unwrap_or(HAPROXY_RETRIES);
    if retries > MAX_RETRIES {
        warnings.push(at.warning(format!(
            "retries {retries} is more than our most, {MAX_RETRIES}: {MAX_RETRIES} is used"
        )));
    }
    service.retries = retries.min(MAX_RETRIES);
    if let Some(t) = s.connect_timeout {
        service.connect_timeout = import::duration(t);
    }
    service.idle_timeout = s.idle_timeout().map(import::duration);
    if let Some(n) = s.maxconn {
        service.max_connections = n;
    }
}

/// Where Airbnb's synapse discovered the service's instances, for the "fill in" comment.
fn discovery(
    f: &mut import::Fields,
    at: &At,
    warnings: &mut Vec<Warning>,
) -> Result<Source, Problem> {
    let discovery = f.require("discovery", "Airbnb's synapse requires it too")?;
    let mut d = discovery.fields()?;
    let method = d
        .require("method", "Airbnb's synapse requires it too")?
        .str()?
        .to_owned();
    let mut was = vec![method.clone()];
    match method.as_str() {
        "zookeeper" => {
            if let Some(a) = d.take("hosts") {
                let hosts: Vec<&str> = a.strings()?.into_iter().map(|(_, h)| h).collect();
                was.push(hosts.join(","));
            }
            if let Some(a) = d.take("path") {
                was.push(a.str()?.to_owned());
            }
            d.drop(
                "decode",
                "our registry holds one record format, see registry.md",
                warnings,
            );
            d.finish(SOURCE, warnings);
        }
        "base" => {
            was.push("(default_servers only: ours are used while etcd has no instance)".into());
            d.finish(SOURCE, warnings);
        }
        // Any other watcher (dns, ec2tag, docker, marathon, ...): its keys are named, but
        // not their values, which may be credentials.
        _ => d.drop_rest("the registry is etcd, which nerve writes", warnings),
    }
    Ok(Source {
        was: was.join(" "),
        at: at.path.clone(),
    })
}

fn default_server(at: &At, warnings: &mut Vec<Warning>) -> Result<DefaultServer, Problem> {
    let mut f = at.fields()?;
    let host = f
        .require("host", "Airbnb's synapse requires it too")?
        .str()?
        .to_owned();
    let port = f
        .require("port", "Airbnb's synapse requires it too")?
        .port()?;
    f.drop(
        "name",
        "default servers are known by their address",
        warnings,
    );
    f.finish(SOURCE, warnings);
    Ok(DefaultServer {
        host,
        port,
        weight: registry::record::DEFAULT_WEIGHT,
        zone: None,
    })
}

fn render(file: &Path, c: &Conversion) -> String {
    let mut out = import::header("synapse", file);
    out.push_str(&import::etcd_placeholder(&c.sources));
    if let Some(path) = &c.cache_file {
        out.push_str(&format!(
            "cache_file: {}\n",
            import::quoted(&path.to_string_lossy())
        ));
    }
    out.push_str(&config_yaml::services(&c.services, &c.comments));
    out
}

/// The written text must load, and load as what was converted.
fn verify(file: &Path, yaml: &str, c: &Conversion) -> Result<(), ImportError> {
    let loaded = SynapseConfig::parse(file, yaml)
        .map(|l| l.services == c.services && l.etcd == import::placeholder_etcd());
    import::verify(file, &c.origins, loaded)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Balance;
    use registry::ConfigDuration;

    const FILE: &str = "/etc/synapse/synapse.conf.json";

    /// Two ZooKeeper services and a top-level `haproxy` block as Airbnb's README describes
    /// them: defaults every service inherits, service lines overriding them.
    const ZK: &str = r#"{
      "services": {
        "users": {
          "discovery": {"method": "zookeeper", "hosts": ["zk1:2181", "zk2:2181"],
                        "path": "/nerve/services/users/services"},
          "default_servers": [{"name": "users-fallback", "host": "10.0.0.40", "port": 8000}],
          "haproxy": {
            "port": 3301,
            "server_options": "check inter 2s rise 3 fall 2",
            "listen": ["mode http", "option httpchk GET /health"],
            "backend": "balance leastconn"
          }
        },
        "orders": {
          "discovery": {"method": "zookeeper", "hosts": "zk1:2181", "path": "/nerve/services/orders/services"},
          "haproxy": {
            "port": 3302,
            "frontend": ["timeout client 10s"],
            "backend": ["retries 5", "timeout connect 250ms"]
          }
        }
      },
      "haproxy": {
        "bind_address": "localhost",
        "reload_command": "service haproxy reload",
        "config_file_path": "/etc/haproxy/haproxy.cfg",
        "global": ["daemon", "maxconn 4096"],
        "defaults": ["log global", "balance roundrobin", "retries 3", "timeout connect 5000",
                     "timeout client 50000", "timeout server 50000", "option redispatch",
                     "maxconn 2000"]
      }
    }"#;

    /// Other watchers, a service without a port of its own, keys we have no equivalent of.
    const ODD: &str = r#"{
      "services": {
        "db": {
          "discovery": {"method": "ec2tag", "tag_name": "proddb", "tag_value": "true",
                        "aws_secret_access_key": "SECRET-VALUE"},
          "default_servers": [{"name": "db-1", "host": "db.internal", "port": 5432, "id": 7}],
          "keep_default_servers": true,
          "use_previous_backends": false,
          "haproxy": {"port": 3219, "bind_address": "0.0.0.0", "backend": ["balance source", "retries 20"],
                      "server_port_override": 5432}
        },
        "static": {"discovery": {"method": "base"},
                   "default_servers": [{"host": "10.0.0.9", "port": 80}],
                   "haproxy": {"port": 3220, "colour": "red"}},
        "shared": {"discovery": {"method": "zookeeper", "hosts": ["zk:2181"], "path": "/s", "decode": {"method": "nerve"}},
                   "haproxy": {"shared_frontend": ["acl is_shared hdr_dom(host) -i shared"]}},
        "named": {"discovery": {"method": "dns", "servers": [{"name": "a", "host": "a.internal"}]},
                  "haproxy": {"port": 3221}, "leader_election": true}
      },
      "haproxy": {"state_file_path": "/var/lib/synapse/state.json", "state_file_ttl": 86400,
                  "do_socket": false},
      "file_output": {"output_directory": "/tmp/synapse"},
      "synapse": {"self_check_port": 3210}
    }"#;

    fn convert(text: &str) -> Converted {
        import_smartstack(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused(text: &str) -> String {
        match import_smartstack(Path::new(FILE), text) {
            Ok(c) => panic!("converted:\n{}", c.yaml),
            Err(e) => e.to_string(),
        }
    }

    /// The printed text, loaded by our own loader.
    fn load(c: &Converted) -> SynapseConfig {
        SynapseConfig::parse(Path::new("converted.yaml"), &c.yaml)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.yaml))
    }

    fn warned(c: &Converted) -> Vec<String> {
        c.warnings.iter().map(ToString::to_string).collect()
    }

    fn has(warnings: &[String], path: &str, says: &str) -> bool {
        warnings
            .iter()
            .any(|w| w.starts_with(&format!("{path}: ")) && w.contains(says))
    }

    #[test]
    fn zookeeper_services_convert_to_a_file_our_loader_takes() {
        let c = convert(ZK);
        let loaded = load(&c);
        assert_eq!(loaded.etcd.endpoints, ["http://127.0.0.1:2379"]);
        let users = &loaded.services[0];
        assert_eq!(users.name, "users");
        assert_eq!(users.listen.to_string(), "127.0.0.1:3301");
        assert_eq!(
            users.balance(),
            Balance::LeastConn,
            "the service's line wins"
        );
        assert_eq!(users.retries, 3);
        assert_eq!(users.connect_timeout, ConfigDuration::from_secs(5));
        assert_eq!(users.idle_timeout, Some(ConfigDuration::from_secs(50)));
        assert_eq!(users.max_connections, 2000);
        assert_eq!(
            users.default_servers,
            [DefaultServer {
                host: "10.0.0.40".into(),
                port: 8000,
                weight: 100,
                zone: None
            }]
        );
        let orders = &loaded.services[1];
        assert_eq!(orders.listen.to_string(), "127.0.0.1:3302");
        assert_eq!(orders.balance(), Balance::RoundRobin);
        assert_eq!(orders.retries, 5);
        assert_eq!(orders.connect_timeout, ConfigDuration::from_millis(250));
        assert_eq!(
            orders.idle_timeout,
            Some(ConfigDuration::from_secs(50)),
            "the longer of its client 10s and the default server 50s"
        );
        for fill_in in [
            "# fill in: was zookeeper zk1:2181,zk2:2181 /nerve/services/users/services (services.users)",
            "# fill in: was zookeeper zk1:2181 /nerve/services/orders/services (services.orders)",
        ] {
            assert!(c.yaml.contains(fill_in), "{fill_in} not in:\n{}", c.yaml);
        }
        let w = warned(&c);
        for (path, says) in [
            (
                "haproxy.defaults[0]",
                "\"log global\": no equivalent (synapse logs events",
            ),
            ("haproxy.global", "no equivalent"),
            ("haproxy.reload_command", "no HAProxy to configure"),
            ("haproxy.config_file_path", "no HAProxy to configure"),
            (
                "services.users.haproxy.server_options",
                "no equivalent (synapse balances in-process); dropped",
            ),
            (
                "services.users.haproxy.listen[0]",
                "\"mode http\": no equivalent",
            ),
            (
                "services.users.haproxy.listen[1]",
                "no active health checks",
            ),
            (
                "services.users.default_servers[0].name",
                "known by their address",
            ),
        ] {
            assert!(
                has(&w, path, says),
                "no warning {path}: ...{says}... in {w:#?}"
            );
        }
        assert_eq!(w.len(), 8, "{w:#?}");
    }

    #[test]
    fn other_watchers_and_keys_without_an_equivalent_are_named() {
        let c = convert(ODD);
        let loaded = load(&c);
        let names: Vec<&str> = loaded.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "static", "named"], "shared has no port");
        let db = &loaded.services[0];
        assert_eq!(db.listen.to_string(), "0.0.0.0:3219");
        assert_eq!((db.balance(), db.retries), (Balance::RoundRobin, 10));
        assert_eq!(db.default_servers[0].host, "db.internal");
        assert_eq!(
            loaded.cache_file.as_deref(),
            Some(Path::new("/var/lib/synapse/state.json"))
        );
        let w = warned(&c);
        for (path, says) in [
            ("services.db.discovery.tag_name", "the registry is etcd"),
            (
                "services.db.discovery.aws_secret_access_key",
                "the registry is etcd",
            ),
            (
                "services.db.default_servers[0].id",
                "not a key Airbnb's synapse documents",
            ),
            (
                "services.db.keep_default_servers",
                "only while the registry has no instance",
            ),
            ("services.db.use_previous_backends", "always keeps serving"),
            (
                "services.db.haproxy.backend[0]",
                "\"balance source\": no equivalent",
            ),
            (
                "services.db.haproxy",
                "retries 20 is more than our most, 10",
            ),
            (
                "services.db.haproxy.server_port_override",
                "carry each instance's port",
            ),
            ("services.static.haproxy.colour", "not a key"),
            ("services.shared.haproxy", "the whole service is left out"),
            ("services.named.discovery.servers", "the registry is etcd"),
            ("services.named.leader_election", "not a key"),
            ("haproxy.state_file_ttl", "whatever its age"),
            ("haproxy.do_socket", "no HAProxy"),
            ("file_output", "GET /status"),
            ("synapse", "not a key"),
        ] {
            assert!(
                has(&w, path, says),
                "no warning {path}: ...{says}... in {w:#?}"
            );
        }
        assert_eq!(w.len(), 18, "{w:#?}");
        for text in w.iter().chain([&c.yaml]) {
            assert!(
                !text.contains("SECRET-VALUE"),
                "a credential was printed: {text}"
            );
        }
        assert!(
            c.yaml.contains("# fill in: was ec2tag (services.db)"),
            "{}",
            c.yaml
        );
        assert!(
            c.yaml.contains("# fill in: was base (default_servers only"),
            "{}",
            c.yaml
        );
    }

    #[test]
    fn invalid_input_names_the_file_and_the_json_path() {
        let svc = |haproxy: &str| {
            format!(
                r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}, "haproxy": {haproxy}}}}}}}"#
            )
        };
        for (text, says) in [
            ("not json".to_owned(), "/etc/synapse/synapse.conf.json: not a SmartStack JSON"),
            (
                r#"{"services": [{"name": "web", "local_port": 3000}]}"#.to_owned(),
                "synapse.conf.json: services: expected an object of services by name, found a list",
            ),
            (
                svc(r#"{"port": "3000"}"#),
                "synapse.conf.json: services.web.haproxy.port: expected a whole number from 1 to 65535, found a string",
            ),
            (
                svc(r#"{"port": 3000, "bind_address": "nowhere"}"#),
                "services.web.haproxy.bind_address: \"nowhere\" is not an IP address",
            ),
            (
                svc(r#"{"port": 3000, "listen": [3]}"#),
                "services.web.haproxy.listen[0]: expected a string, found a number",
            ),
            (
                r#"{"services": {"web": {"haproxy": {"port": 3000}}}}"#.to_owned(),
                "services.web.discovery: missing",
            ),
            (
                r#"{"services": {"web": {"discovery": {"method": "base"}, "haproxy": {"port": 1},
                    "default_servers": [{"host": "a"}]}}}"#
                    .to_owned(),
                "services.web.default_servers[0].port: missing",
            ),
            (
                r#"{"services": {"a": {"discovery": {"method": "base"}, "haproxy": {"port": 3000}},
                                 "b": {"discovery": {"method": "base"}, "haproxy": {"port": 3000}}}}"#
                    .to_owned(),
                "synapse.conf.json: services.b: our configuration refuses the result: services[1].listen: 127.0.0.1:3000 is already used",
            ),
        ] {
            let e = refused(&text);
            assert!(e.contains(says), "{e}\ndoes not contain\n{says}");
        }
    }

    #[test]
    fn haproxys_default_retries_are_written_out() {
        let c = convert(
            r#"{"services": {"web": {"discovery": {"method": "base"}, "haproxy": {"port": 3000}}}}"#,
        );
        let web = &load(&c).services[0];
        assert_eq!(web.retries, 3);
        assert_eq!(web.connect_timeout.get(), Duration::from_secs(1), "ours");
        assert_eq!(web.idle_timeout, None);
    }
}
