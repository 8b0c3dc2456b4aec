//! Helpers shared by synapse's integration tests: configs with short timings, registering
//! instances with etcdctl, and running synapse in-process.
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use registry::{ConfigDuration, EtcdConfig};
use synapse::{ServiceConfig, Synapse, SynapseConfig};
use testkit::backend::greeting;
use testkit::EtcdServer;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// etcd settings that notice failures within about a second.
pub fn etcd_config(endpoint: String) -> EtcdConfig {
    let mut c = EtcdConfig::new(vec![endpoint]);
    c.dial_timeout = ConfigDuration::from_millis(300);
    c.request_timeout = ConfigDuration::from_secs(1);
    c.keepalive_interval = ConfigDuration::from_millis(500);
    c.keepalive_timeout = ConfigDuration::from_millis(500);
    c
}

/// A service on a fresh loopback port with short timeouts.
pub fn service(name: &str) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap());
    s.connect_timeout = ConfigDuration::from_millis(300);
    s.ejection_time = ConfigDuration::from_millis(500);
    s
}

pub fn config(endpoint: String, services: Vec<ServiceConfig>) -> SynapseConfig {
    let mut c = SynapseConfig::new(etcd_config(endpoint));
    c.services = services;
    c.shutdown_timeout = ConfigDuration::from_secs(2);
    c
}

pub fn register(etcd: &EtcdServer, service: &str, id: &str, port: u16) {
    etcd.etcdctl(&[
        "put",
        &format!("/smartstack/services/{service}/{id}"),
        &format!(r#"{{"host":"127.0.0.1","port":{port},"name":"{id}"}}"#),
    ]);
}

pub fn register_json(etcd: &EtcdServer, service: &str, id: &str, json: &str) {
    etcd.etcdctl(&["put", &format!("/smartstack/services/{service}/{id}"), json]);
}

pub fn deregister(etcd: &EtcdServer, service: &str, id: &str) {
    etcd.etcdctl(&["del", &format!("/smartstack/services/{service}/{id}")]);
}

pub async fn greet(addr: SocketAddr) -> Result<String, String> {
    greeting(addr, Duration::from_secs(5)).await
}

/// The ports of the backends `synapse` routes `service` to (not draining or drained), as the
/// status shows.
pub fn backend_ports(synapse: &Synapse, service: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = synapse
        .status()
        .get(service)
        .map(|s| {
            s.backends
                .iter()
                .filter(|b| b.state != "draining" && b.state != "drained")
                .map(|b| b.port)
                .collect()
        })
        .unwrap_or_default();
    ports.sort();
    ports
}

/// Waits until `service` routes to exactly `ports`.
pub async fn wait_backends(synapse: &Synapse, service: &str, ports: &[u16]) {
    let mut expected = ports.to_vec();
    expected.sort();
    testkit::wait_until(
        &format!("{service} routes to {expected:?}"),
        DEADLINE,
        || async { backend_ports(synapse, service) == expected },
    )
    .await;
}

/// Opens `n` connections one after another; returns the greetings and the failures.
pub async fn connect_many(addr: SocketAddr, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match greet(addr).await {
            Ok(name) => ok.push(name),
            Err(e) => failed.push(e),
        }
    }
    (ok, failed)
}

pub async fn start(config: SynapseConfig) -> Synapse {
    Synapse::start(config)
        .await
        .unwrap_or_else(|e| panic!("synapse start: {e:#}"))
}

/// `GET /status` from an admin address, parsed; `None` if it cannot be had right now.
pub async fn admin_status(admin: SocketAddr) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut http = tokio::net::TcpStream::connect(admin).await.ok()?;
        http.write_all(b"GET /status HTTP/1.1\r\nHost: synapse\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        http.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}
