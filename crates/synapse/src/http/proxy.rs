//! One request in http mode: wait for a backend set, keep the body for a replay when it is
//! small, pick a backend, send over the pool, retry where [`super::retry`] allows, and
//! answer; or answer 503 (gRPC: UNAVAILABLE) naming synapse as the origin of the error.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::headers::{strip_hop_by_hop, wants_upgrade};
use super::retry::{may_retry, Budget, Failure, REPLAY_BODY_MAX};
use crate::backends::{Backend, BackendSet};
use crate::config::{ServiceConfig, UpstreamProtocol};
use crate::forward::{connect_failed, pick, ActiveGuard, Knobs};
use crate::state::ServiceState;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;
type Pool = Client<HttpConnector, ProxyBody>;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// A service's upstream connection pools and retry budget, made when its accept loop
/// starts.
pub struct Upstreams {
    http1: Pool,
    h2: Pool,
    budget: Budget,
}

impl Upstreams {
    pub fn new(config: &ServiceConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout.get()));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(POOL_IDLE);
        let http1 = builder.build(connector.clone());
        let h2 = builder.http2_only(true).build(connector);
        Upstreams {
            http1,
            h2,
            budget: Budget::default(),
        }
    }
}

/// The request as kept for sending (again): its head, and its body when small enough.
struct Kept {
    head: hyper::http::request::Parts,
    /// `Some` when the whole body is kept (replayable).
    body: Option<Bytes>,
    streamed: Option<Incoming>,
    /// The client side of a protocol upgrade (WebSocket), when the request asks for one.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

pub async fn handle(
    service: &ServiceState,
    upstreams: &Upstreams,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let response = answer(service, upstreams, request, started).await;
    service
        .traffic()
        .answered(response.status().as_u16(), started.elapsed());
    response
}

async fn answer(
    service: &ServiceState,
    upstreams: &Upstreams,
    request: Request<Incoming>,
    started: Instant,
) -> Response<ProxyBody> {
    let grpc = is_grpc(request.headers());
    if !service.wait_until_known().await {
        service.note_unserved("no backend set known yet");
        return unserved(grpc, "no backend set known yet");
    }
    upstreams.budget.deposit();
    let config = service.config().clone();
    let mut request = request;
    let upgrade = wants_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    let mut kept = match keep(request, upgrade).await {
        Ok(k) => k,
        Err(e) => return unserved(grpc, &format!("cannot read the request body: {e}")),
    };
    strip_hop_by_hop(&mut kept.head.headers, kept.upgrade.is_some());
    let knobs = Knobs::of(service);
    let set = service.set();
    let mut tried: Vec<usize> = Vec::new();
    let mut last_failure = None;
    let attempt_limit = knobs.retries() as usize + 1;
    let answer = loop {
        let Some(i) = pick(service, &set, &knobs, &tried).or_else(|| {
            (!tried.is_empty())
                .then(|| pick(service, &set, &knobs, &[]))
                .flatten()
        }) else {
            break None;
        };
        let backend = &set.active[i];
        let outcome = attempt(service, upstreams, &config, &mut kept, backend, &set).await;
        match outcome {
            Ok(response) => break Some(response),
            Err((failure, last)) => {
                tried.push(i);
                last_failure = Some(failure);
                let allowed = tried.len() < attempt_limit
                    && may_retry(&kept.head.method, kept.body.is_some(), failure)
                    && deadline_left(&config, started);
                if !allowed {
                    break last;
                }
                if !upstreams.budget.withdraw() {
                    service.traffic().budget_exhausted();
                    break last;
                }
                service.traffic().retried();
            }
        }
    };
    match (answer, last_failure) {
        (Some(response), _) => response,
        // It reached a backend that failed it, and it may not be sent again.
        (None, Some(Failure::NoResponse)) => {
            service.note_unserved("the backend failed before answering; not safe to resend");
            unserved(
                grpc,
                "the backend failed before answering; not safe to resend",
            )
            .with_status(StatusCode::BAD_GATEWAY, grpc)
        }
        (None, _) => {
            service.note_unserved("no backend could serve the request");
            unserved(grpc, "no backend could serve the request")
        }
    }
}

fn deadline_left(config: &ServiceConfig, started: Instant) -> bool {
    config
        .request_timeout
        .is_none_or(|t| started.elapsed() < t.get())
}

/// Reads the body into memory when it is known to be small (replayable); else leaves it
/// to be streamed.
async fn keep(
    request: Request<Incoming>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Kept, hyper::Error> {
    let (head, body) = request.into_parts();
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= REPLAY_BODY_MAX);
    if small {
        let bytes = body.collect().await?.to_bytes();
        return Ok(Kept {
            head,
            body: Some(bytes),
            streamed: None,
            upgrade,
        });
    }
    Ok(Kept {
        head,
        body: None,
        streamed: Some(body),
        upgrade,
    })
}

/// One attempt on `backend`: the response, or how it failed (with a response to give
/// the client if this was the last attempt).
async fn attempt(
    service: &ServiceState,
    upstreams: &Upstreams,
    config: &ServiceConfig,
    kept: &mut Kept,
    backend: &Backend,
    set: &BackendSet,
) -> Result<Response<ProxyBody>, (Failure, Option<Response<ProxyBody>>)> {
    let body: ProxyBody = match (&kept.body, kept.streamed.take()) {
        (Some(bytes), _) => Full::new(bytes.clone())
            .map_err(|never| match never {})
            .boxed(),
        (None, Some(streamed)) => streamed.boxed(),
        // A streamed body already went with an earlier attempt.
        (None, None) => return Err((Failure::NoResponse, None)),
    };
    let h2 = match config.upstream_protocol {
        UpstreamProtocol::H2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::SameAsClient => kept.head.version == Version::HTTP_2,
    };
    let mut request = Request::from_parts(kept.head.clone(), body);
    *request.uri_mut() = upstream_uri(backend, &kept.head.uri);
    *request.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if h2 {
        // HTTP/2 carries the authority in the URI; HTTP/1.1 in Host, which is kept as is.
        request.headers_mut().remove(hyper::header::HOST);
    }
    let guard = ActiveGuard::hold(backend.state.clone());
    let pool = if h2 { &upstreams.h2 } else { &upstreams.http1 };
    let sent = Instant::now();
    let response = match config.per_try_timeout {
        Some(t) => match tokio::time::timeout(t.get(), pool.request(request)).await {
            Ok(r) => r,
            Err(_) => {
                failed(service, backend, set, &"no response within per_try_timeout");
                return Err((Failure::NoResponse, None));
            }
        },
        None => pool.request(request).await,
    };
    match response {
        Ok(mut response) => {
            backend.state.latency().observe(sent.elapsed());
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client) = kept.upgrade.take() {
                    let upstream = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client, upstream, guard));
                    let (mut head, _) = response.into_parts();
                    strip_hop_by_hop(&mut head.headers, true);
                    return Ok(Response::from_parts(head, empty()));
                }
            }
            let status = response.status();
            let refused = response
                .headers()
                .get("grpc-status")
                .is_some_and(|v| matches!(v.as_bytes(), b"13" | b"14"));
            if status.is_server_error() || refused {
                failed(service, backend, set, &format!("answered {status}"));
            } else {
                service.ejector().connect_succeeded(
                    backend.state.ejection(),
                    crate::ejection::EjectionPolicy::of(config),
                    &backend.addr(),
                );
            }
            let grpc_unavailable = response
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"14");
            let answer = relay_response(response, guard);
            if grpc_unavailable {
                return Err((Failure::GrpcUnavailable, Some(answer)));
            }
            if config.retry_on.contains(&status.as_u16()) {
                return Err((Failure::RetryableStatus, Some(answer)));
            }
            Ok(answer)
        }
        Err(e) => {
            let failure = if e.is_connect() {
                Failure::NotSent
            } else {
                Failure::NoResponse
            };
            failed(service, backend, set, &e);
            Err((failure, None))
        }
    }
}

/// After a 101: bytes both ways between the client and the backend until either ends;
/// the backend counts the tunnel as in flight meanwhile.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _guard: ActiveGuard,
) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
    }
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A failed attempt counts against the backend like a failed connect in tcp mode.
fn failed(
    service: &ServiceState,
    backend: &Backend,
    set: &BackendSet,
    why: &dyn std::fmt::Display,
) {
    let policy = crate::ejection::EjectionPolicy::of(&service.config());
    connect_failed(service, set, backend, policy, why);
}

/// The backend's response for the client: hop-by-hop headers removed, the body streamed,
/// the backend counted busy until the body has been passed on.
fn relay_response(response: Response<Incoming>, guard: ActiveGuard) -> Response<ProxyBody> {
    let (mut head, body) = response.into_parts();
    let upgrade = head.status == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut head.headers, upgrade);
    let body = Guarded {
        body,
        _guard: guard,
    }
    .boxed();
    Response::from_parts(head, body)
}

/// A response body that keeps its backend's in-flight count until it is done.
struct Guarded {
    body: Incoming,
    _guard: ActiveGuard,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn upstream_uri(backend: &Backend, original: &Uri) -> Uri {
    let path = original.path_and_query().map_or("/", |p| p.as_str());
    let host = &backend.spec.host;
    let authority = if host.contains(':') {
        format!("[{host}]:{}", backend.spec.port)
    } else {
        format!("{host}:{}", backend.spec.port)
    };
    format!("http://{authority}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

fn is_grpc(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"))
}

/// Sets the status of a synapse-made answer (gRPC answers keep 200: the status is in
/// `grpc-status`).
trait WithStatus {
    fn with_status(self, status: StatusCode, grpc: bool) -> Self;
}

impl WithStatus for Response<ProxyBody> {
    fn with_status(mut self, status: StatusCode, grpc: bool) -> Self {
        if !grpc {
            *self.status_mut() = status;
        }
        self
    }
}

/// The answer when no backend could serve: 503 with a short text, or for gRPC a
/// trailers-only UNAVAILABLE; `x-synapse-error` says synapse answered, not a backend.
fn unserved(grpc: bool, why: &str) -> Response<ProxyBody> {
    let text = format!("synapse: {why}\n");
    let mut response = Response::new(
        Full::new(Bytes::from(if grpc { String::new() } else { text }))
            .map_err(|never| match never {})
            .boxed(),
    );
    if !grpc {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    let headers = response.headers_mut();
    let why_value = HeaderValue::from_str(why).unwrap_or(HeaderValue::from_static("unserved"));
    headers.insert("x-synapse-error", why_value.clone());
    if grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        headers.insert("grpc-message", why_value);
    } else {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}
