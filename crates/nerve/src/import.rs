//! `nerve --import-smartstack FILE`: an Airbnb nerve JSON configuration converted into
//! ours, as a pure function of the file's text. What has no equivalent is returned as
//! warnings naming its JSON path; nothing is dropped without one.
//!
//! Where Airbnb's nerve and ours differ in a default, its default is written out, so the
//! converted instance is checked as before: `check_interval` 0.5 s, check `timeout` 0.1 s,
//! `rise`/`fall` 1, HTTP checks passing on 2xx only. Weights are multiplied by 100: an
//! instance without one has HAProxy's weight 1 there and our default weight 100 here, so
//! every ratio between instances stays. The registry (ZooKeeper, or Airbnb's etcd v2
//! layout) becomes our `etcd:` block with a placeholder endpoint and a "fill in" comment
//! naming what it was.
//!
//! Documented for operators in docs/operations.md, "Migrating from SmartStack".

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use registry::import::{self, At, Converted, ImportError, Problem, Source, Warning};
use registry::ConfigDuration;

use crate::config::{
    self, default_method, CheckConfig, ExecCheckConfig, HttpCheckConfig, ServiceConfig, StatusSet,
    TcpCheckConfig,
};
use crate::config_yaml;

/// Whose keys the source holds, for "not a key ... documents" warnings.
const SOURCE: &str = "Airbnb's nerve";

/// Airbnb's nerve's defaults, written out where ours differ.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_millis(100);
const RISE_FALL: u32 = 1;

/// Our shortest `check_interval` and check `timeout`.
const MIN_DURATION: Duration = Duration::from_millis(10);

/// Airbnb's weights are HAProxy's (default 1); ours default to 100.
const WEIGHT_SCALE: u32 = 100;

/// Converts the nerve JSON `text` of `file` into our YAML and the list of what was dropped.
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
    services: Vec<ServiceConfig>,
    /// Comments written above each service.
    comments: Vec<Vec<String>>,
    /// The JSON path each service came from.
    origins: Vec<String>,
    sources: Vec<Source>,
}

fn convert(root: &At, warnings: &mut Vec<Warning>) -> Result<Conversion, Problem> {
    let mut top = root.fields()?;
    let instance_id = match top.take("instance_id") {
        Some(at) => Some(segment(&at, "instance_id")?),
        None => None,
    };
    let mut conversion = Conversion {
        services: Vec::new(),
        comments: Vec::new(),
        origins: Vec::new(),
        sources: Vec::new(),
    };
    if let Some(services) = top.take("services") {
        for (name, at) in services.entries()? {
            let (service, notes, source) = service(name, &at, instance_id, warnings)?;
            conversion.comments.push(
                std::iter::once(format!("from {}", at.path))
                    .chain(notes)
                    .collect(),
            );
            conversion.services.push(service);
            conversion.origins.push(at.path.clone());
            conversion.sources.push(source);
        }
    }
    top.drop(
        "service_conf_dir",
        "its files were not read: add each one to `services` under its file name \
         without .json, and convert again",
        warnings,
    );
    top.drop(
        "heartbeat_path",
        "a hung nerve shows in the admin API: GET /health and /metrics",
        warnings,
    );
    top.drop(
        "statsd",
        "metrics are served by the admin API, GET /metrics; set `admin`",
        warnings,
    );
    top.drop(
        "max_repeated_report_failures",
        "nerve never exits on registry failures: it retries with backoff",
        warnings,
    );
    top.finish(SOURCE, warnings);
    Ok(conversion)
}

/// One service, the comments to write above it and where it was registered.
fn service(
    name: &str,
    at: &At,
    instance_id: Option<&str>,
    warnings: &mut Vec<Warning>,
) -> Result<(ServiceConfig, Vec<String>, Source), Problem> {
    registry::key::check_segment("service name", name).map_err(|e| at.problem(e.to_string()))?;
    let mut f = at.fields()?;
    let host = f
        .require("host", "Airbnb's nerve requires it too")?
        .str()?
        .to_owned();
    let port = f
        .require("port", "Airbnb's nerve requires it too")?
        .port()?;
    let source = reporter(&mut f, at)?;
    let check_interval = match f.take("check_interval") {
        Some(a) => at_least_min(&a, a.seconds()?, warnings),
        None => CHECK_INTERVAL,
    };
    let weight = match f.take("weight") {
        Some(a) => {
            let max = u64::from(u32::MAX / WEIGHT_SCALE);
            let w = u32::try_from(a.whole(0, max)?).map_err(|_| a.problem("too large"))?;
            w * WEIGHT_SCALE
        }
        None => config::default_weight(),
    };
    f.drop(
        "haproxy_server_options",
        "synapse balances in-process",
        warnings,
    );
    let labels = match f.take("labels") {
        Some(a) => labels(&a, warnings)?,
        None => BTreeMap::new(),
    };
    let mut notes = Vec::new();
    let (checks, rise, fall) = match f.take("checks") {
        Some(a) => checks(&a, &host, port, &mut notes, warnings)?,
        None => {
            warnings.push(Warning {
                path: import::child(&at.path, "checks"),
                message: unchecked(),
            });
            notes.push(unchecked());
            (vec![always_passes()], RISE_FALL, RISE_FALL)
        }
    };
    f.finish(SOURCE, warnings);
    let service = ServiceConfig {
        name: name.to_owned(),
        host,
        port,
        instance_id: instance_id.map(str::to_owned),
        weight,
        zone: None,
        labels,
        check_interval: import::duration(check_interval),
        rise,
        fall,
        maintenance_file: None,
        checks,
    };
    Ok((service, notes, source))
}

/// Where Airbnb's nerve registered the service: its reporter and the keys that go with it,
/// all of which become the "fill in" comment of our `etcd:` block.
fn reporter(f: &mut import::Fields, at: &At) -> Result<Source, Problem> {
    let kind = match f.take("reporter_type") {
        Some(a) => a.str()?.to_owned(),
        None => "zookeeper".to_owned(),
    };
    let mut was = vec![kind];
    if let Some(a) = f.take("zk_hosts") {
        let hosts: Vec<&str> = a.strings()?.into_iter().map(|(_, h)| h).collect();
        was.push(hosts.join(","));
    }
    if let Some(a) = f.take("zk_path") {
        was.push(a.str()?.to_owned());
    }
    let etcd_host = f.take("etcd_host").map(|a| a.str().map(str::to_owned));
    let etcd_port = f.take("etcd_port").map(|a| a.port());
    match (etcd_host.transpose()?, etcd_port.transpose()?) {
        (Some(h), Some(p)) => was.push(format!("{h}:{p}")),
        (Some(h), None) => was.push(h),
        (None, Some(p)) => was.push(format!("port {p}")),
        (None, None) => {}
    }
    if let Some(a) = f.take("etcd_path") {
        was.push(a.str()?.to_owned());
    }
    Ok(Source {
        was: was.join(" "),
        at: at.path.clone(),
    })
}

/// `labels`: strings as they are, numbers and booleans as their text; anything else has no
/// equivalent in our string-to-string labels.
fn labels(at: &At, warnings: &mut Vec<Warning>) -> Result<BTreeMap<String, String>, Problem> {
    let mut out = BTreeMap::new();
    for (key, value) in at.entries()? {
        let text = match value.value {
            import::Json::String(s) => s.clone(),
            import::Json::Number(n) => n.to_string(),
            import::Json::Bool(b) => b.to_string(),
            other => {
                warnings.push(value.warning(format!(
                    "no equivalent (labels are text; this is {}); dropped",
                    other.kind()
                )));
                continue;
            }
        };
        out.insert(key.to_owned(), text);
    }
    Ok(out)
}

/// The checks, and the service's rise and fall: Airbnb's nerve counts rise and fall per
/// check, ours per round of all the checks; the largest of the checks' keeps a flapping
/// check from registering the instance sooner than before.
fn checks(
    at: &At,
    host: &str,
    port: u16,
    notes: &mut Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Result<(Vec<CheckConfig>, u32, u32), Problem> {
    let items = at.items()?;
    if items.is_empty() {
        warnings.push(at.warning(unchecked()));
        notes.push(unchecked());
        return Ok((vec![always_passes()], RISE_FALL, RISE_FALL));
    }
    let mut out = Vec::new();
    let (mut rises, mut falls) = (Vec::new(), Vec::new());
    for item in &items {
        if let Some((c, rise, fall)) = check(item, host, port, warnings)? {
            out.push(c);
            rises.push(rise);
            falls.push(fall);
        }
    }
    let rise = largest("rise", &rises, at, warnings);
    let fall = largest("fall", &falls, at, warnings);
    if out.is_empty() {
        let why = "none of the checks has an equivalent: a tcp check of the service's port \
                   stands in for them; replace it with a real check";
        warnings.push(at.warning(why));
        notes.push(why.to_owned());
        out.push(CheckConfig::Tcp(TcpCheckConfig {
            port: None,
            timeout: import::duration(CHECK_TIMEOUT),
        }));
    }
    Ok((out, rise, fall))
}

/// The largest of the checks' `rise` (or `fall`); a warning when they differ.
fn largest(what: &str, values: &[u32], at: &At, warnings: &mut Vec<Warning>) -> u32 {
    let max = values.iter().copied().max().unwrap_or(RISE_FALL);
    if values.iter().any(|&v| v != max) {
        let all: Vec<String> = values.iter().map(u32::to_string).collect();
        warnings.push(at.warning(format!(
            "the checks' {what} differ ({}): {what} counts rounds of all checks here, \
             the largest ({max}) is used",
            all.join(", ")
        )));
    }
    max
}

/// One check with its rise and fall, or `None` for a type we have no equivalent of.
fn check(
    at: &At,
    host: &str,
    port: u16,
    warnings: &mut Vec<Warning>,
) -> Result<Option<(CheckConfig, u32, u32)>, Problem> {
    let mut f = at.fields()?;
    let kind = f
        .require("type", "Airbnb's nerve requires it too")?
        .str()?
        .to_owned();
    if kind != "tcp" && kind != "http" {
        warnings.push(at.warning(format!(
            "a {kind:?} check has no equivalent (ours are tcp, http and exec: an exec \
             check can run a program that does it); dropped"
        )));
        return Ok(None);
    }
    f.drop(
        "name",
        "checks are named by type and address in the log and in /status",
        warnings,
    );
    f.drop(
        "module",
        "it loads custom check types, and tcp and http are built in",
        warnings,
    );
    if let Some(a) = f.take("host") {
        let h = a.str()?;
        if h != host {
            warnings.push(a.warning(format!(
                "no equivalent (checks connect to the service's host, {host:?}, not {h:?}); dropped"
            )));
        }
    }
    let check_port = match f.take("port") {
        Some(a) => Some(a.port()?).filter(|&p| p != port),
        None => None,
    };
    let timeout = match f.take("timeout") {
        Some(a) => at_least_min(&a, a.seconds()?, warnings),
        None => CHECK_TIMEOUT,
    };
    let timeout = import::duration(timeout);
    let mut count = |key: &str| -> Result<u32, Problem> {
        match f.take(key) {
            Some(a) => {
                u32::try_from(a.whole(1, u64::from(u32::MAX))?).map_err(|_| a.problem("too large"))
            }
            None => Ok(RISE_FALL),
        }
    };
    let (rise, fall) = (count("rise")?, count("fall")?);
    let converted = if kind == "tcp" {
        CheckConfig::Tcp(TcpCheckConfig {
            port: check_port,
            timeout,
        })
    } else {
        CheckConfig::Http(http(&mut f, check_port, timeout, warnings)?)
    };
    f.finish(SOURCE, warnings);
    Ok(Some((converted, rise, fall)))
}

/// The keys only an `http` check has.
fn http(
    f: &mut import::Fields,
    port: Option<u16>,
    timeout: ConfigDuration,
    warnings: &mut Vec<Warning>,
) -> Result<HttpCheckConfig, Problem> {
    let uri = f.require("uri", "Airbnb's nerve requires it too")?;
    let path = uri.str()?;
    if !path.starts_with('/') {
        return Err(uri.problem(format!("{path:?} is not a request path like \"/health\"")));
    }
    let mut headers = BTreeMap::new();
    if let Some(a) = f.take("headers") {
        for (name, value) in a.entries()? {
            headers.insert(name.to_owned(), value.str()?.to_owned());
        }
    }
    let expect_body = match f.take("expect") {
        Some(a) => Some(a.str()?.to_owned()),
        None => None,
    };
    if let Some(a) = f.take("ssl") {
        if a.bool()? {
            warnings.push(a.warning(
                "no equivalent (our http check speaks plain HTTP, so this check would fail \
                 against a TLS port: use an exec check running e.g. curl); dropped",
            ));
        }
    }
    for key in ["open_timeout", "read_timeout", "ssl_timeout"] {
        f.drop(key, "one `timeout` covers the whole check", warnings);
    }
    Ok(HttpCheckConfig {
        path: path.to_owned(),
        method: default_method(),
        host: None,
        port,
        headers,
        // Airbnb's http check passes on 2xx only; ours would also take 3xx.
        expect_status: StatusSet(vec![(200, 299)]),
        expect_body,
        timeout,
    })
}

/// What a service without checks gets: Airbnb's nerve registers such an instance without
/// checking anything, and so does an exec check of `true`.
fn always_passes() -> CheckConfig {
    CheckConfig::Exec(ExecCheckConfig {
        command: vec!["true".to_owned()],
        timeout: import::duration(CHECK_TIMEOUT),
    })
}

fn unchecked() -> String {
    "no checks: Airbnb's nerve registers the instance unchecked, so an exec check of `true` \
     does the same here; replace it with a real check"
        .to_owned()
}

/// `d`, raised to our minimum (with a warning) when shorter.
fn at_least_min(at: &At, d: Duration, warnings: &mut Vec<Warning>) -> Duration {
    if d >= MIN_DURATION {
        return d;
    }
    warnings.push(at.warning(format!(
        "{} is shorter than our minimum: raised to {}",
        import::duration(d),
        import::duration(MIN_DURATION)
    )));
    MIN_DURATION
}

/// A string that can be one segment of a key.
fn segment<'a>(at: &At<'a>, what: &str) -> Result<&'a str, Problem> {
    let s = at.str()?;
    registry::key::check_segment(what, s).map_err(|e| at.problem(e.to_string()))?;
    Ok(s)
}

fn render(file: &Path, c: &Conversion) -> String {
    let mut out = import::header("nerve", file);
    out.push_str(&import::etcd_placeholder(&c.sources));
    out.push_str(&config_yaml::services(&c.services, &c.comments));
    out
}

/// The written text must load, and load as what was converted.
fn verify(file: &Path, yaml: &str, c: &Conversion) -> Result<(), ImportError> {
    let loaded = config::parse(file, yaml)
        .map(|l| l.services == c.services && l.etcd == import::placeholder_etcd());
    import::verify(file, &c.origins, loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    const FILE: &str = "/etc/nerve/nerve.conf.json";

    /// Two services of one host as Airbnb's README describes them: an HTTP service with a
    /// weight and labels, a TCP service left to the defaults, both reporting to ZooKeeper.
    const HOST: &str = r#"{
      "instance_id": "app-7",
      "statsd": {"host": "localhost", "port": 8125},
      "services": {
        "catalog": {
          "host": "10.1.2.3",
          "port": 8080,
          "reporter_type": "zookeeper",
          "zk_hosts": ["zk-a:2181", "zk-b:2181"],
          "zk_path": "/nerve/services/catalog/services",
          "check_interval": 2,
          "weight": 3,
          "haproxy_server_options": "backup",
          "labels": {"az": "eu-west-1b", "canary": false},
          "checks": [
            {"type": "http", "uri": "/ping", "timeout": 0.25, "rise": 3, "fall": 2,
             "headers": {"X-Probe": "nerve"}, "expect": "pong"}
          ]
        },
        "cache": {
          "host": "10.1.2.3",
          "port": 11211,
          "zk_hosts": ["zk-a:2181"],
          "zk_path": "/nerve/services/cache/services",
          "checks": [{"type": "tcp"}]
        }
      }
    }"#;

    /// Keys with no equivalent, check types we do not have, an etcd reporter, a service
    /// without checks.
    const ODD: &str = r#"{
      "instance_id": "worker-1",
      "service_conf_dir": "/etc/nerve/services.d",
      "heartbeat_path": "/var/run/nerve.heartbeat",
      "colour": "blue",
      "services": {
        "queue": {
          "host": "10.9.9.9",
          "port": 5672,
          "reporter_type": "etcd",
          "etcd_host": "etcd-1",
          "etcd_port": 4001,
          "etcd_path": "/nerve/queue",
          "checks": [
            {"type": "rabbitmq", "username": "guest", "password": "guest"},
            {"type": "http", "name": "status page", "uri": "/status", "port": 15672,
             "ssl": true, "open_timeout": 0.5, "host": "10.0.0.1", "rise": 2, "retries": 4},
            {"type": "tcp", "host": "10.9.9.9", "timeout": 0.001}
          ],
          "flavour": "vanilla"
        },
        "batch": {"host": "10.9.9.9", "port": 7000, "zk_hosts": "zk:2181", "zk_path": "/b"},
        "legacy": {"host": "10.9.9.9", "port": 7001, "zk_hosts": ["zk:2181"],
                   "zk_path": "/l", "checks": [{"type": "redis"}]}
      }
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
    fn load(c: &Converted) -> crate::NerveConfig {
        config::parse(Path::new("converted.yaml"), &c.yaml)
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
    fn a_zookeeper_host_converts_to_a_file_our_loader_takes() {
        let c = convert(HOST);
        let loaded = load(&c);
        assert_eq!(loaded.etcd.endpoints, ["http://127.0.0.1:2379"]);
        let names: Vec<&str> = loaded.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["catalog", "cache"], "file order kept");
        let web = &loaded.services[0];
        assert_eq!((web.host.as_str(), web.port), ("10.1.2.3", 8080));
        assert_eq!(web.instance_id.as_deref(), Some("app-7"));
        assert_eq!(web.weight, 300);
        assert_eq!(web.labels.get("az").map(String::as_str), Some("eu-west-1b"));
        assert_eq!(web.labels.get("canary").map(String::as_str), Some("false"));
        assert_eq!(web.check_interval, ConfigDuration::from_secs(2));
        assert_eq!((web.rise, web.fall), (3, 2));
        let CheckConfig::Http(h) = &web.checks[0] else {
            panic!("not http: {:?}", web.checks)
        };
        assert_eq!(h.path, "/ping");
        assert_eq!(h.timeout, ConfigDuration::from_millis(250));
        assert_eq!(h.expect_status, StatusSet(vec![(200, 299)]));
        assert_eq!(h.expect_body.as_deref(), Some("pong"));
        assert_eq!(h.headers.get("X-Probe").map(String::as_str), Some("nerve"));
        let cache = &loaded.services[1];
        assert_eq!(cache.weight, 100, "no weight: ours, as HAProxy's 1 was");
        assert_eq!(cache.check_interval, ConfigDuration::from_millis(500));
        assert_eq!((cache.rise, cache.fall), (1, 1));
        assert_eq!(cache.checks[0].kind(), CheckKind::Tcp);
        assert_eq!(cache.checks[0].timeout(), Duration::from_millis(100));
        for fill_in in [
            "# fill in: was zookeeper zk-a:2181,zk-b:2181 /nerve/services/catalog/services (services.catalog)",
            "# fill in: was zookeeper zk-a:2181 /nerve/services/cache/services (services.cache)",
        ] {
            assert!(c.yaml.contains(fill_in), "{fill_in} not in:\n{}", c.yaml);
        }
        let w = warned(&c);
        assert!(has(&w, "statsd", "GET /metrics"), "{w:#?}");
        assert!(
            has(
                &w,
                "services.catalog.haproxy_server_options",
                "no equivalent"
            ),
            "{w:#?}"
        );
        assert_eq!(w.len(), 2, "{w:#?}");
    }

    #[test]
    fn every_key_without_an_equivalent_is_named() {
        let c = convert(ODD);
        let loaded = load(&c);
        let w = warned(&c);
        for (path, says) in [
            ("service_conf_dir", "were not read"),
            ("heartbeat_path", "no equivalent"),
            ("colour", "not a key Airbnb's nerve documents"),
            ("services.queue.flavour", "not a key"),
            (
                "services.queue.checks[0]",
                "\"rabbitmq\" check has no equivalent",
            ),
            ("services.queue.checks[1].name", "no equivalent"),
            ("services.queue.checks[1].ssl", "plain HTTP"),
            ("services.queue.checks[1].open_timeout", "one `timeout`"),
            ("services.queue.checks[1].host", "\"10.0.0.1\""),
            ("services.queue.checks[1].retries", "not a key"),
            ("services.queue.checks[2].timeout", "raised to 10ms"),
            ("services.queue.checks", "the checks' rise differ (2, 1)"),
            ("services.batch.checks", "exec check of `true`"),
            (
                "services.legacy.checks[0]",
                "\"redis\" check has no equivalent",
            ),
            (
                "services.legacy.checks",
                "a tcp check of the service's port stands in",
            ),
        ] {
            assert!(
                has(&w, path, says),
                "no warning {path}: ...{says}... in {w:#?}"
            );
        }
        assert_eq!(w.len(), 15, "{w:#?}");
        let queue = &loaded.services[0];
        let kinds: Vec<CheckKind> = queue.checks.iter().map(CheckConfig::kind).collect();
        assert_eq!(kinds, [CheckKind::Http, CheckKind::Tcp]);
        assert_eq!((queue.rise, queue.fall), (2, 1));
        let CheckConfig::Http(h) = &queue.checks[0] else {
            panic!("{:?}", queue.checks)
        };
        assert_eq!(h.port, Some(15672));
        assert!(c
            .yaml
            .contains("# fill in: was etcd etcd-1:4001 /nerve/queue (services.queue)"));
        assert!(c
            .yaml
            .contains("# fill in: was zookeeper zk:2181 /b (services.batch)"));
        let batch = &loaded.services[1];
        assert_eq!(
            batch.checks,
            [CheckConfig::Exec(ExecCheckConfig {
                command: vec!["true".into()],
                timeout: ConfigDuration::from_millis(100)
            })]
        );
        assert_eq!(loaded.services[2].checks[0].kind(), CheckKind::Tcp);
        assert!(c
            .yaml
            .contains("  # from services.legacy\n  # none of the checks"));
    }

    #[test]
    fn invalid_input_names_the_file_and_the_json_path() {
        for (text, says) in [
            ("{\"services\": ", "/etc/nerve/nerve.conf.json: not a SmartStack JSON"),
            (
                r#"{"services": [{"host": "a", "port": 1}]}"#,
                "nerve.conf.json: services: expected an object, found a list",
            ),
            (
                r#"{"services": {"web": {"host": "a", "port": "80"}}}"#,
                "nerve.conf.json: services.web.port: expected a whole number from 1 to 65535, found a string",
            ),
            (
                r#"{"services": {"web": {"port": 80}}}"#,
                "nerve.conf.json: services.web.host: missing",
            ),
            (
                r#"{"services": {"web": {"host": "a", "port": 80, "checks": [{"type": "http", "uri": "health"}]}}}"#,
                "services.web.checks[0].uri: \"health\" is not a request path",
            ),
            (
                r#"{"services": {"web": {"host": "a", "port": 80, "checks": [{"type": "tcp", "rise": 0}]}}}"#,
                "services.web.checks[0].rise: 0 is not a whole number from 1",
            ),
            (
                r#"{"instance_id": "my host", "services": {}}"#,
                "nerve.conf.json: instance_id: instance_id \"my host\" must not contain white space",
            ),
            (
                r#"{"services": {"a/b": {"host": "a", "port": 80}}}"#,
                "nerve.conf.json: services.a/b: service name \"a/b\" must not contain '/'",
            ),
            (
                r#"{"services": {"web": {"host": "a b", "port": 80}}}"#,
                "nerve.conf.json: services.web: our configuration refuses the result: services[0].host:",
            ),
        ] {
            let e = refused(text);
            assert!(e.contains(says), "{e}\ndoes not contain\n{says}");
        }
    }

    #[test]
    fn no_services_converts_to_an_empty_list() {
        let c = convert(r#"{"instance_id": "x"}"#);
        assert!(load(&c).services.is_empty());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
