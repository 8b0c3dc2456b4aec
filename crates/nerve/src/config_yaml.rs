//! nerve's `services` written as YAML that [`crate::config::parse`] reads back as the same
//! values, for `--import-smartstack`. Only what differs from a default is written, so the
//! text says what was chosen and nothing else.

use registry::import::quoted;

use crate::config::{
    default_check_interval, default_method, default_path, default_rise_fall, default_timeout,
    default_weight, CheckConfig, HttpCheckConfig, ServiceConfig, StatusSet,
};

/// The `services:` list; `comments[i]`, when given, are written above `services[i]`.
pub fn services(services: &[ServiceConfig], comments: &[Vec<String>]) -> String {
    if services.is_empty() {
        return "services: []\n".to_owned();
    }
    let mut out = String::from("services:\n");
    for (i, s) in services.iter().enumerate() {
        for c in comments.get(i).into_iter().flatten() {
            out.push_str(&format!("  # {}\n", registry::import::comment(c)));
        }
        service(&mut out, s);
    }
    out
}

fn service(out: &mut String, s: &ServiceConfig) {
    out.push_str(&format!("  - name: {}\n", quoted(&s.name)));
    let mut line = |key: &str, value: String| out.push_str(&format!("    {key}: {value}\n"));
    line("host", quoted(&s.host));
    line("port", s.port.to_string());
    if let Some(id) = &s.instance_id {
        line("instance_id", quoted(id));
    }
    if s.weight != default_weight() {
        line("weight", s.weight.to_string());
    }
    if let Some(z) = &s.zone {
        line("zone", quoted(z));
    }
    if !s.labels.is_empty() {
        let pairs: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{}: {}", quoted(k), quoted(v)))
            .collect();
        line("labels", format!("{{{}}}", pairs.join(", ")));
    }
    if s.check_interval != default_check_interval() {
        line("check_interval", quoted(&s.check_interval.to_string()));
    }
    if s.rise != default_rise_fall() {
        line("rise", s.rise.to_string());
    }
    if s.fall != default_rise_fall() {
        line("fall", s.fall.to_string());
    }
    if let Some(f) = &s.maintenance_file {
        line("maintenance_file", quoted(&f.to_string_lossy()));
    }
    if s.checks.is_empty() {
        line("checks", "[]".to_owned());
        return;
    }
    out.push_str("    checks:\n");
    for c in &s.checks {
        check(out, c);
    }
}

fn check(out: &mut String, c: &CheckConfig) {
    let mut first = true;
    let mut line = |key: &str, value: String| {
        let lead = if first { "      - " } else { "        " };
        first = false;
        out.push_str(&format!("{lead}{key}: {value}\n"));
    };
    line("type", c.kind().name().to_owned());
    match c {
        CheckConfig::Tcp(t) => {
            if let Some(p) = t.port {
                line("port", p.to_string());
            }
        }
        CheckConfig::Http(h) => http(&mut line, h),
        CheckConfig::Exec(e) => {
            let argv: Vec<String> = e.command.iter().map(|a| quoted(a)).collect();
            line("command", format!("[{}]", argv.join(", ")));
        }
    }
    if c.timeout() != default_timeout().get() {
        line(
            "timeout",
            quoted(&registry::ConfigDuration(c.timeout()).to_string()),
        );
    }
}

fn http(line: &mut impl FnMut(&str, String), h: &HttpCheckConfig) {
    if h.path != default_path() {
        line("path", quoted(&h.path));
    }
    if h.method != default_method() {
        line("method", quoted(&h.method));
    }
    if let Some(host) = &h.host {
        line("host", quoted(host));
    }
    if let Some(p) = h.port {
        line("port", p.to_string());
    }
    if !h.headers.is_empty() {
        let pairs: Vec<String> = h
            .headers
            .iter()
            .map(|(k, v)| format!("{}: {}", quoted(k), quoted(v)))
            .collect();
        line("headers", format!("{{{}}}", pairs.join(", ")));
    }
    if h.expect_status != StatusSet::default() {
        // One item per range: the set's Display joins them with commas, which no item
        // of the list reads.
        let items: Vec<String> = h
            .expect_status
            .0
            .iter()
            .map(|&(lo, hi)| StatusSet(vec![(lo, hi)]).to_string())
            .map(|t| quoted(&t))
            .collect();
        line("expect_status", format!("[{}]", items.join(", ")));
    }
    if let Some(b) = &h.expect_body {
        line("expect_body", quoted(b));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;
    use registry::ConfigDuration;

    use super::*;
    use crate::config::{ExecCheckConfig, TcpCheckConfig};

    /// Text with no white space or control character: a key segment, a host.
    const WORD: &str = "[^\\s\\p{C}/]{1,12}";

    fn duration() -> impl Strategy<Value = ConfigDuration> {
        (10u64..200_000).prop_map(ConfigDuration::from_millis)
    }

    fn status_set() -> impl Strategy<Value = StatusSet> {
        prop::collection::vec((100u16..=599, 0u16..100), 1..4).prop_map(|ranges| {
            StatusSet(
                ranges
                    .into_iter()
                    .map(|(lo, len)| (lo, (lo + len).min(599)))
                    .collect(),
            )
        })
    }

    fn check() -> impl Strategy<Value = CheckConfig> {
        let tcp = (prop::option::of(1u16..), duration())
            .prop_map(|(port, timeout)| CheckConfig::Tcp(TcpCheckConfig { port, timeout }));
        let http = (
            "/[a-z0-9/?=&%.-]{0,12}",
            prop::sample::select(vec!["GET", "HEAD", "POST", "OPTIONS"]),
            prop::option::of("[a-z0-9.:-]{1,12}"),
            prop::option::of(1u16..),
            prop::collection::btree_map(
                "[A-Za-z][A-Za-z0-9-]{0,8}",
                "[!-~]([ -~]{0,8}[!-~])?",
                0..3,
            ),
            status_set(),
            prop::option::of(any::<String>()),
            duration(),
        )
            .prop_map(
                |(path, method, host, port, headers, expect_status, expect_body, timeout)| {
                    CheckConfig::Http(HttpCheckConfig {
                        path,
                        method: method.to_owned(),
                        host,
                        port,
                        headers,
                        expect_status,
                        expect_body,
                        timeout,
                    })
                },
            );
        let exec = (
            "\\PC{1,10}",
            prop::collection::vec(any::<String>(), 0..3),
            duration(),
        )
            .prop_map(|(program, args, timeout)| {
                CheckConfig::Exec(ExecCheckConfig {
                    command: std::iter::once(program).chain(args).collect(),
                    timeout,
                })
            });
        prop_oneof![tcp, http, exec]
    }

    fn service() -> impl Strategy<Value = ServiceConfig> {
        (
            (WORD, WORD, 1u16.., prop::option::of(WORD), any::<u32>()),
            (
                prop::option::of(any::<String>()),
                prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
                duration(),
                1u32..10,
                1u32..10,
                prop::option::of("/[a-z0-9/._-]{1,20}"),
                prop::collection::vec(check(), 1..4),
            ),
        )
            .prop_map(
                |(
                    (name, host, port, instance_id, weight),
                    (zone, labels, check_interval, rise, fall, maintenance_file, checks),
                )| ServiceConfig {
                    name,
                    host,
                    port,
                    instance_id,
                    weight,
                    zone,
                    labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                    check_interval,
                    rise,
                    fall,
                    maintenance_file: maintenance_file.map(PathBuf::from),
                    checks,
                },
            )
    }

    proptest! {
        /// Whatever the services, the written text loads as exactly those services.
        #[test]
        fn written_services_read_back_as_themselves(
            services in prop::collection::vec(service(), 0..4),
            comment in any::<String>(),
        ) {
            // (name, instance_id) pairs must be unique; a suffix makes the names so.
            let services: Vec<ServiceConfig> = services
                .into_iter()
                .enumerate()
                .map(|(i, s)| ServiceConfig { name: format!("{}{i}", s.name), ..s })
                .collect();
            let comments = vec![vec![comment]; services.len()];
            let text = format!(
                "etcd: {{endpoints: [\"http://127.0.0.1:2379\"]}}\n{}",
                super::services(&services, &comments)
            );
            let loaded = crate::config::parse(Path::new("x.yaml"), &text)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(loaded.services, services, "{}", text);
        }
    }
}
