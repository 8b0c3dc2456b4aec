//! Helpers shared by nerve's integration tests: configs, reading etcd, the admin API.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use nerve::NerveConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PREFIX: &str = "/smartstack/services";

/// The YAML of a nerve config against `endpoints`, with short timings; `top` is extra
/// top-level YAML and `services` the YAML list items.
pub fn yaml(endpoints: &[String], top: &str, services: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        "etcd:\n  endpoints: [{}]\n  dial_timeout: 300ms\n  request_timeout: 1s\n  keepalive_interval: 1s\n  \
        keepalive_timeout: 1s\nlease_ttl: 2s\nreconcile_interval: 500ms\n{top}\nservices:\n{services}",
        endpoints.join(", ")
    )
}

pub fn config(endpoints: &[String], top: &str, services: &str) -> NerveConfig {
    let text = yaml(endpoints, top, services);
    nerve::config::parse(Path::new("test.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Test-only tweaks of a parsed config.
pub trait ConfigExt {
    fn with_reconcile(self, every: Duration) -> Self;
}

impl ConfigExt for NerveConfig {
    fn with_reconcile(mut self, every: Duration) -> Self {
        self.reconcile_interval = registry::ConfigDuration(every);
        self
    }
}

/// A service list item with a tcp check on `port`, checked every 100 ms.
pub fn tcp_service(name: &str, id: &str, port: u16) -> String {
    format!(
        "  - {{name: {name}, instance_id: {id}, host: 127.0.0.1, port: {port}, check_interval: 100ms, rise: 2, fall: \
        2, checks: [{{type: tcp, timeout: 200ms}}]}}\n"
    )
}

pub fn key(service: &str, id: &str) -> String {
    registry::key::instance_key(PREFIX, service, id)
}

pub async fn client(endpoints: &[String]) -> Client {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    Client::connect(endpoints, Some(options))
        .await
        .unwrap_or_else(|e| panic!("connect {endpoints:?}: {e}"))
}

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// Runs a read until etcd answers (an election or a dead member makes single requests
/// fail), so that "absent" never stands for "could not ask".
async fn read<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let start = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), op()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) if start.elapsed() > Duration::from_secs(10) => panic!("{what}: {e}"),
            Err(_) if start.elapsed() > Duration::from_secs(10) => panic!("{what}: timed out"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Reads `key`; `None` if absent.
pub async fn get(client: &Client, key: &str) -> Option<Stored> {
    let resp = read(&format!("get {key}"), || {
        let mut c = client.clone();
        async move { c.get(key, None).await }
    })
    .await;
    resp.kvs().first().map(|kv| Stored {
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

/// Every key under the prefix.
pub async fn keys(client: &Client) -> Vec<String> {
    let resp = read("get the prefix", || {
        let mut c = client.clone();
        async move {
            c.get(
                PREFIX,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        }
    })
    .await;
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

pub async fn exists(client: &Client, key: &str) -> bool {
    get(client, key).await.is_some()
}

/// One HTTP/1.1 request to the admin API; returns (status, body).
/// Waits (15 s at most: some callers start the binary first) until `key` exists.
pub async fn wait_registered(client: &Client, key: &str) {
    testkit::wait_until(
        &format!("{key} is registered"),
        Duration::from_secs(15),
        || async { exists(client, key).await },
    )
    .await;
}

pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: nerve\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad response {raw:?}"))?;
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("admin request timed out".into()))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The `/status` entry of one instance.
pub async fn status_of(addr: SocketAddr, service: &str, id: &str) -> serde_json::Value {
    let (code, body) = http(addr, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["instances"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i["service"] == service && i["instance_id"] == id)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no {service}/{id} in {body}"))
}

/// Logs of the nerve under test appear with `--nocapture`; only the first call installs.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A tiny HTTP server for http checks: answers every request with the current status and
/// body, and keeps the head of the last request it got.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub last_request: std::sync::Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(status: u16, body: &'static str) -> HttpServer {
        use std::sync::atomic::{AtomicU16, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let last_request = Arc::new(Mutex::new(String::new()));
        let (s, l) = (status.clone(), last_request.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, l) = (s.clone(), l.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    *l.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
                    let code = s.load(Ordering::Relaxed);
                    let response = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        HttpServer {
            addr,
            status,
            last_request,
            task,
        }
    }

    pub fn set_status(&self, code: u16) {
        self.status
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn last_request(&self) -> String {
        self.last_request.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `key` was deleted at any revision after `from` (etcd's history, so a delete
/// followed at once by a put is seen too, which polling could miss).
pub async fn deleted_since(c: &Client, key: &str, from: i64) -> bool {
    let now = read("current revision", || {
        let mut c = c.clone();
        async move { c.get(key, None).await }
    })
    .await
    .header()
    .map(|h| h.revision())
    .unwrap_or_else(|| panic!("no header in a get of {key}"));
    for revision in from..=now {
        let resp = read(&format!("get {key} at {revision}"), || {
            let mut c = c.clone();
            async move {
                c.get(key, Some(GetOptions::new().with_revision(revision)))
                    .await
            }
        })
        .await;
        if resp.kvs().is_empty() {
            return true;
        }
    }
    false
}

/// The current revision of the store, read through `c`.
pub async fn revision(c: &Client) -> i64 {
    read("current revision", || {
        let mut c = c.clone();
        async move { c.get("/", None).await }
    })
    .await
    .header()
    .map(|h| h.revision())
    .unwrap_or_else(|| panic!("no header in a get"))
}

/// How many times each key under the prefix was put, from revision 1 up to now, read from
/// etcd's history (every revision, so no write can slip between two reads): the number of
/// distinct `mod_revision`s each key had.
pub async fn puts_per_key(c: &Client) -> std::collections::BTreeMap<String, usize> {
    let now = revision(c).await;
    let mut seen = std::collections::BTreeSet::new();
    for rev in 1..=now {
        let resp = read(&format!("get the prefix at {rev}"), || {
            let mut c = c.clone();
            async move {
                c.get(
                    PREFIX,
                    Some(GetOptions::new().with_prefix().with_revision(rev)),
                )
                .await
            }
        })
        .await;
        for kv in resp.kvs() {
            seen.insert((
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            ));
        }
    }
    let mut puts = std::collections::BTreeMap::new();
    for (key, _) in seen {
        *puts.entry(key).or_insert(0) += 1;
    }
    puts
}
