//! synapse's `services` written as YAML that [`SynapseConfig::parse`] reads back as the
//! same values, for `--import-smartstack`. Only what differs from a default
//! ([`ServiceConfig::new`]) is written, so the text says what was chosen and nothing else.
//!
//! [`SynapseConfig::parse`]: crate::SynapseConfig::parse

use registry::import::{comment, quoted};
use registry::ConfigDuration;

use crate::config::{DefaultServer, Mode, ServiceConfig, UpstreamProtocol};

/// The `services:` list; `comments[i]`, when given, are written above `services[i]`.
pub fn services(services: &[ServiceConfig], comments: &[Vec<String>]) -> String {
    if services.is_empty() {
        return "services: []\n".to_owned();
    }
    let mut out = String::from("services:\n");
    for (i, s) in services.iter().enumerate() {
        for c in comments.get(i).into_iter().flatten() {
            out.push_str(&format!("  # {}\n", comment(c)));
        }
        service(&mut out, s);
    }
    out
}

fn duration(d: ConfigDuration) -> String {
    quoted(&d.to_string())
}

fn service(out: &mut String, s: &ServiceConfig) {
    let d = ServiceConfig::new(&s.name, s.listen.0);
    out.push_str(&format!("  - name: {}\n", quoted(&s.name)));
    let mut line = |key: &str, value: String| out.push_str(&format!("    {key}: {value}\n"));
    line("listen", quoted(&s.listen.to_string()));
    if s.mode == Mode::Http {
        line("mode", "http".to_owned());
    }
    if let Some(balance) = s.balance_choice {
        line("balance", balance.to_string());
    }
    if s.connect_timeout != d.connect_timeout {
        line("connect_timeout", duration(s.connect_timeout));
    }
    if s.retries != d.retries {
        line("retries", s.retries.to_string());
    }
    if s.retry_unanswered != d.retry_unanswered {
        line("retry_unanswered", s.retry_unanswered.to_string());
    }
    if s.eject_after != d.eject_after {
        line("eject_after", s.eject_after.to_string());
    }
    if s.ejection_time != d.ejection_time {
        line("ejection_time", duration(s.ejection_time));
    }
    if s.max_ejection_percent != d.max_ejection_percent {
        line("max_ejection_percent", s.max_ejection_percent.to_string());
    }
    if let Some(t) = s.drain_timeout {
        line("drain_timeout", duration(t));
    }
    if s.max_connections != d.max_connections {
        line("max_connections", s.max_connections.to_string());
    }
    if let Some(t) = s.idle_timeout {
        line("idle_timeout", duration(t));
    }
    if s.min_zone_backends != d.min_zone_backends {
        line("min_zone_backends", s.min_zone_backends.to_string());
    }
    if s.startup_wait != d.startup_wait {
        line("startup_wait", duration(s.startup_wait));
    }
    if let Some(t) = s.slow_start {
        line("slow_start", duration(t));
    }
    if s.upstream_protocol != d.upstream_protocol {
        let protocol = match s.upstream_protocol {
            UpstreamProtocol::SameAsClient => "same_as_client",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
        };
        line("upstream_protocol", protocol.to_owned());
    }
    if !s.retry_on.is_empty() {
        let statuses: Vec<String> = s.retry_on.iter().map(u16::to_string).collect();
        line("retry_on", format!("[{}]", statuses.join(", ")));
    }
    if let Some(t) = s.request_timeout {
        line("request_timeout", duration(t));
    }
    if let Some(t) = s.per_try_timeout {
        line("per_try_timeout", duration(t));
    }
    if !s.default_servers.is_empty() {
        let servers: Vec<String> = s.default_servers.iter().map(default_server).collect();
        out.push_str("    default_servers:\n");
        for server in servers {
            out.push_str(&format!("      - {server}\n"));
        }
    }
}

/// One default server as a flow map: `{host: "10.0.0.1", port: 80}`.
fn default_server(s: &DefaultServer) -> String {
    let mut parts = vec![
        format!("host: {}", quoted(&s.host)),
        format!("port: {}", s.port),
    ];
    if s.weight != registry::record::DEFAULT_WEIGHT {
        parts.push(format!("weight: {}", s.weight));
    }
    if let Some(z) = &s.zone {
        parts.push(format!("zone: {}", quoted(z)));
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::config::{Balance, ListenAddr};
    use crate::SynapseConfig;

    fn duration(min_ms: u64) -> impl Strategy<Value = ConfigDuration> {
        (min_ms..3_600_000).prop_map(ConfigDuration::from_millis)
    }

    fn default_server() -> impl Strategy<Value = DefaultServer> {
        (
            "[^\\s\\p{C}]{1,12}",
            1u16..,
            any::<u32>(),
            prop::option::of(any::<String>()),
        )
            .prop_map(|(host, port, weight, zone)| DefaultServer {
                host,
                port,
                weight,
                zone,
            })
    }

    fn service() -> impl Strategy<Value = ServiceConfig> {
        (
            (
                "[^\\s\\p{C}/]{1,12}",
                any::<IpAddr>(),
                prop::sample::select(vec![
                    Balance::RoundRobin,
                    Balance::LeastConn,
                    Balance::Random,
                ]),
                duration(1),
                0u32..=10,
                any::<bool>(),
                1u32..10,
                duration(10),
            ),
            (
                0u32..=100,
                prop::option::of(duration(0)),
                1u32..,
                prop::option::of(duration(10)),
                0u32..5,
                prop::collection::vec(default_server(), 0..3),
                duration(0),
                prop::option::of(duration(0)),
            ),
        )
            .prop_map(
                |(
                    (name, listen, balance, connect, retries, unanswered, eject, ejection),
                    (percent, drain, max, idle, zone_min, servers, wait, slow),
                )| ServiceConfig {
                    balance_choice: Some(balance),
                    connect_timeout: connect,
                    retries,
                    retry_unanswered: unanswered,
                    eject_after: eject,
                    ejection_time: ejection,
                    max_ejection_percent: percent,
                    drain_timeout: drain,
                    max_connections: max,
                    idle_timeout: idle,
                    min_zone_backends: zone_min,
                    default_servers: servers,
                    startup_wait: wait,
                    slow_start: slow,
                    ..ServiceConfig::new(&name, SocketAddr::new(listen, 3000))
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
            // Names and listen addresses must be unique: an index makes them so.
            let services: Vec<ServiceConfig> = services
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut listen = s.listen.0;
                    listen.set_port(3000 + i as u16);
                    ServiceConfig { name: format!("{}{i}", s.name), listen: ListenAddr(listen), ..s }
                })
                .collect();
            let comments = vec![vec![comment]; services.len()];
            let text = format!(
                "etcd: {{endpoints: [\"http://127.0.0.1:2379\"]}}\n{}",
                super::services(&services, &comments)
            );
            let loaded = SynapseConfig::parse(Path::new("x.yaml"), &text)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(loaded.services, services, "{}", text);
        }
    }
}
