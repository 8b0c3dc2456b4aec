//! http mode on a running synapse with real HTTP backends (hyper servers speaking HTTP/1.1
//! and h2c): each request of one client connection goes to a backend picked for it, a
//! backend answering 503 is ejected and its requests retried, a POST that reached a backend
//! that then failed is not sent again while a GET is, and h2c is balanced per request.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use synapse::config::{Balance, Mode};
use testkit::EtcdServer;
use tokio::net::{TcpListener, TcpStream};

/// How a test backend answers.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// 200 with its name.
    Ok,
    /// 503.
    Unavailable,
    /// Reads the request, then closes the connection without answering.
    Dies,
}

/// An HTTP/1.1 + h2c backend; counts the requests it received.
struct HttpBackend {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_backend(name: &'static str, behaviour: Behaviour) -> HttpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                if behaviour == Behaviour::Dies {
                    // Read a request's head, then vanish.
                    let mut buf = [0u8; 4096];
                    let _ = stream.readable().await;
                    let _ = stream.try_read(&mut buf);
                    counter.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let _ = req.into_body().collect().await;
                            let status = if behaviour == Behaviour::Unavailable {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::OK
                            };
                            let mut response = Response::new(Full::new(Bytes::from(name)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HttpBackend {
        addr,
        received,
        task,
    }
}

fn register_weighted(etcd: &EtcdServer, id: &str, port: u16, weight: u32) {
    register_json(
        etcd,
        "web",
        id,
        &format!(r#"{{"host":"127.0.0.1","port":{port},"name":"{id}","weight":{weight}}}"#),
    );
}

/// One client connection (HTTP/1.1 keepalive, or h2c with `h2`).
struct OneConnection {
    sender: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl OneConnection {
    async fn open(addr: SocketAddr, h2: bool) -> Self {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let sender = if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(s)
        };
        OneConnection { sender }
    }

    /// (status, body).
    async fn send(&mut self, method: &str, body: &'static str) -> (u16, String) {
        let request = Request::builder()
            .method(method)
            .uri("http://web/")
            .header("host", "web")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await
            }
        }
        .unwrap_or_else(|e| panic!("{method}: {e}"));
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn http_service(balance: Balance) -> synapse::ServiceConfig {
    let mut s = service("web");
    s.mode = Mode::Http;
    s.balance_choice = Some(balance);
    s
}

async fn shares(conn: &mut OneConnection, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (status, body) = conn.send("GET", "").await;
        assert_eq!(status, 200, "{body}");
        *got.entry(body).or_insert(0) += 1;
    }
    got
}

#[tokio::test]
async fn requests_of_one_keepalive_connection_are_spread_by_weight() {
    let etcd = EtcdServer::start().await;
    let (a, b, c) = (
        http_backend("a", Behaviour::Ok).await,
        http_backend("b", Behaviour::Ok).await,
        http_backend("c", Behaviour::Ok).await,
    );
    register_weighted(&etcd, "a", a.addr.port(), 100);
    register_weighted(&etcd, "b", b.addr.port(), 100);
    register_weighted(&etcd, "c", c.addr.port(), 200);
    let synapse = start(config(
        etcd.endpoint(),
        vec![http_service(Balance::RoundRobin)],
    ))
    .await;
    wait_backends(
        &synapse,
        "web",
        &[a.addr.port(), b.addr.port(), c.addr.port()],
    )
    .await;
    let addr = synapse.listen_addr("web").unwrap();
    for h2 in [false, true] {
        let mut conn = OneConnection::open(addr, h2).await;
        let got = shares(&mut conn, 400).await;
        println!("h2={h2}: {got:?}");
        assert_eq!(got.get("a"), Some(&100), "h2={h2}: {got:?}");
        assert_eq!(got.get("b"), Some(&100), "h2={h2}: {got:?}");
        assert_eq!(got.get("c"), Some(&200), "h2={h2}: {got:?}");
    }
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_backend_answering_503_is_ejected_and_its_requests_retried() {
    let etcd = EtcdServer::start().await;
    let (good, bad) = (
        http_backend("good", Behaviour::Ok).await,
        http_backend("bad", Behaviour::Unavailable).await,
    );
    register_weighted(&etcd, "good", good.addr.port(), 100);
    register_weighted(&etcd, "bad", bad.addr.port(), 100);
    let mut web = http_service(Balance::RoundRobin);
    web.retry_on = vec![503];
    web.eject_after = 2;
    web.ejection_time = registry::ConfigDuration::from_secs(60);
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    wait_backends(&synapse, "web", &[good.addr.port(), bad.addr.port()]).await;
    let mut conn = OneConnection::open(synapse.listen_addr("web").unwrap(), false).await;
    let got = shares(&mut conn, 50).await;
    assert_eq!(got.get("good"), Some(&50), "{got:?}");
    let status = synapse.status();
    let backends = &status["web"].backends;
    let bad_state = backends
        .iter()
        .find(|b| b.port == bad.addr.port())
        .map(|b| b.state);
    assert_eq!(bad_state, Some("ejected"));
    assert_eq!(
        bad.received.load(Ordering::Relaxed),
        2,
        "ejected after two 503s"
    );
    // Counted per request: 50 answered 2xx, the two 503s retried, none answered 5xx.
    let traffic = &status["web"].traffic;
    assert_eq!(traffic.requests.success, 50);
    assert_eq!(traffic.requests.server_error, 0);
    assert_eq!(traffic.retries_total, 2);
    assert_eq!(status["web"].durations.request.count, 50);
    let good_latency = backends
        .iter()
        .find(|b| b.port == good.addr.port())
        .map(|b| b.latency_ms);
    assert!(
        good_latency.is_some_and(|ms| ms > 0.0 && ms < 30.0),
        "{good_latency:?}"
    );
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_post_that_reached_a_failing_backend_is_not_resent_but_a_get_is() {
    let etcd = EtcdServer::start().await;
    let (good, dies) = (
        http_backend("good", Behaviour::Ok).await,
        http_backend("dies", Behaviour::Dies).await,
    );
    register_weighted(&etcd, "dies", dies.addr.port(), 100);
    register_weighted(&etcd, "good", good.addr.port(), 100);
    let mut web = http_service(Balance::RoundRobin);
    web.eject_after = 100;
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    wait_backends(&synapse, "web", &[good.addr.port(), dies.addr.port()]).await;
    let addr = synapse.listen_addr("web").unwrap();
    let mut posts_failed = 0;
    for _ in 0..10 {
        let mut conn = OneConnection::open(addr, false).await;
        let (status, _) = conn.send("POST", "order=1").await;
        if status != 200 {
            assert_eq!(
                status, 502,
                "a POST the backend failed is a 502, not resent"
            );
            posts_failed += 1;
        }
    }
    let died_on_posts = dies.received.load(Ordering::Relaxed);
    let good_after_posts = good.received.load(Ordering::Relaxed);
    assert_eq!(
        posts_failed, died_on_posts,
        "each POST the dying backend saw failed once"
    );
    assert_eq!(
        good_after_posts,
        10 - posts_failed,
        "no POST was sent on to the good one"
    );
    for _ in 0..10 {
        let mut conn = OneConnection::open(addr, false).await;
        let (status, body) = conn.send("GET", "").await;
        assert_eq!((status, body.as_str()), (200, "good"));
    }
    let died_on_gets = dies.received.load(Ordering::Relaxed) - died_on_posts;
    println!(
        "POSTs: {posts_failed} of 10 reached the dying backend and failed (502); \
         GETs: {died_on_gets} of 10 reached it and were sent again, all 10 answered"
    );
    assert!(
        posts_failed > 0 && died_on_gets > 0,
        "round robin never reached the dying backend"
    );
    synapse.shutdown().await;
}

/// A backend that accepts `Upgrade: echo` with 101, then echoes raw bytes (the shape of a
/// WebSocket handshake and stream).
async fn upgrade_backend() -> HttpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |mut req: Request<hyper::body::Incoming>| async move {
                        let upgraded = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(io) = upgraded.await {
                                let mut io = TokioIo::new(io);
                                let (mut r, mut w) = tokio::io::split(&mut io);
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            }
                        });
                        let response = Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    HttpBackend {
        addr,
        received,
        task,
    }
}

#[tokio::test]
async fn an_upgraded_connection_is_relayed_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let etcd = EtcdServer::start().await;
    let backend = upgrade_backend().await;
    register_weighted(&etcd, "ws", backend.addr.port(), 100);
    let synapse = start(config(
        etcd.endpoint(),
        vec![http_service(Balance::RoundRobin)],
    ))
    .await;
    wait_backends(&synapse, "web", &[backend.addr.port()]).await;
    let mut client = TcpStream::connect(synapse.listen_addr("web").unwrap())
        .await
        .unwrap();
    client
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            client.read(&mut byte).await.unwrap(),
            1,
            "closed in the head: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in ["ping", "pong, but longer"] {
        client.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut echoed),
        )
        .await
        .expect("the echo within 5 s")
        .unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    synapse.shutdown().await;
}

/// A gRPC-shaped h2 backend: `unavailable` answers every call trailers-only with
/// `grpc-status: 14`; otherwise a message and trailers `grpc-status: 0`.
async fn grpc_backend(name: &'static str, unavailable: bool) -> HttpBackend {
    use http_body_util::combinators::BoxBody;
    use hyper::body::Frame;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let _ = req.into_body().collect().await;
                            let builder =
                                Response::builder().header("content-type", "application/grpc");
                            let body: BoxBody<Bytes, Infallible> = if unavailable {
                                Full::new(Bytes::new()).boxed()
                            } else {
                                let mut trailers = hyper::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                let frames = vec![
                                    Ok::<_, Infallible>(Frame::data(Bytes::from(name))),
                                    Ok(Frame::trailers(trailers)),
                                ];
                                http_body_util::StreamBody::new(futures::stream::iter(frames))
                                    .boxed()
                            };
                            let builder = if unavailable {
                                builder.header("grpc-status", "14")
                            } else {
                                builder
                            };
                            Ok::<_, Infallible>(builder.body(body).unwrap())
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HttpBackend {
        addr,
        received,
        task,
    }
}

/// gRPC's shape over one h2c connection: trailers reach the client, and a call an instance
/// refused unrun (UNAVAILABLE, trailers only) is sent to another instance although it is a
/// POST.
#[tokio::test]
async fn grpc_trailers_pass_and_an_unavailable_call_is_sent_elsewhere() {
    let etcd = EtcdServer::start().await;
    let (ok, refusing) = (
        grpc_backend("ok", false).await,
        grpc_backend("refusing", true).await,
    );
    register_weighted(&etcd, "ok", ok.addr.port(), 100);
    register_weighted(&etcd, "refusing", refusing.addr.port(), 100);
    let mut web = http_service(Balance::RoundRobin);
    web.eject_after = 100;
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    wait_backends(&synapse, "web", &[ok.addr.port(), refusing.addr.port()]).await;
    let io = TokioIo::new(
        TcpStream::connect(synapse.listen_addr("web").unwrap())
            .await
            .unwrap(),
    );
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..20 {
        let request = Request::builder()
            .method("POST")
            .uri("http://web/pkg.Service/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(
            trailers
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("0".to_owned()),
            "call {i}: trailers {trailers:?}"
        );
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"ok"));
    }
    assert!(
        refusing.received.load(Ordering::Relaxed) > 0,
        "round robin never reached it"
    );
    synapse.shutdown().await;
}
