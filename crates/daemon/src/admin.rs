//! The admin HTTP server both programs run: loopback only, because it has no
//! authentication and a program may add routes that change what it does.
//!
//! - `GET /health`: `ok` while the process serves requests (a liveness probe).
//! - `GET /status`: the program's status document, as JSON.
//! - `GET /metrics`: the program's metrics in the OpenMetrics text format, where it has any.
//! - `GET /`: the program's live dashboard, where it has one ([`Routes::page`]), and the
//!   assets it loads (`GET /assets/...`, [`crate::dashboard`]).
//! - `POST /...`: the program's own routes ([`Routes::post`]).
//!
//! Every answer other than `/health`, `/metrics` and the dashboard is JSON; mistakes get 404
//! or 405 with an `error`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dashboard::{self, Page};

/// An answer: status code and JSON body.
pub type Reply = (StatusCode, Value);

/// What a program serves beyond `/health`. Called on the server's tasks: keep it quick.
pub trait Routes: Send + Sync + 'static {
    /// The `GET /status` document.
    fn status(&self) -> Value;

    /// The method (`POST`, `PUT`) the program's own route at `segments` (the path split at
    /// `/`, without the empty first one) takes, if it is one: another method there is
    /// answered 405 rather than 404.
    fn action_method(&self, _segments: &[&str]) -> Option<Method> {
        None
    }

    /// Carries out a call to `segments` with the request's `body` (at most
    /// [`MAX_BODY_BYTES`]); only called with the method [`Routes::action_method`] named.
    fn act(&self, _segments: &[&str], _body: &[u8]) -> Reply {
        (StatusCode::NOT_FOUND, json!({ "error": "not found" }))
    }

    /// What the program still waits for before it is ready for traffic (`GET /ready`:
    /// 200 when nothing, else 503 listing it); `None` where it has no such notion (404).
    fn waiting_for(&self) -> Option<Vec<String>> {
        None
    }

    /// The `GET /metrics` text (OpenMetrics); `None` where the program has none (404).
    fn metrics(&self) -> Option<String> {
        None
    }

    /// The dashboard served at `GET /`; `None` where the program has none (404).
    fn page(&self) -> Option<Page> {
        None
    }

    /// The routes, listed in a 404 answer (the dashboard's are added to them).
    fn endpoints(&self) -> Vec<&'static str> {
        vec!["GET /health", "GET /status"]
    }
}

/// [`Routes`] serving only a status document made by a closure.
pub struct StatusOnly<F>(pub F);

impl<F: Fn() -> Value + Send + Sync + 'static> Routes for StatusOnly<F> {
    fn status(&self) -> Value {
        (self.0)()
    }
}

/// A running admin server. Dropping it stops accepting at once; [`AdminServer::stop`]
/// also waits until the port is closed.
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (which must be loopback) and serves `routes` on it.
    pub async fn bind(addr: SocketAddr, routes: Arc<dyn Routes>) -> std::io::Result<Self> {
        refuse_beyond_loopback(addr)?;
        Self::start(TcpListener::bind(addr).await?, routes)
    }

    /// Serves `routes` on a listener bound already (which must be on loopback).
    pub fn start(listener: TcpListener, routes: Arc<dyn Routes>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        refuse_beyond_loopback(addr)?;
        Ok(Self::serve_bound(listener, addr, routes))
    }

    /// Serves `routes` on a listener already bound at `addr` and checked to be loopback:
    /// cannot fail, for the commit step of a reload whose prepare step bound it.
    pub fn serve_bound(listener: TcpListener, addr: SocketAddr, routes: Arc<dyn Routes>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, routes, stop.clone()));
        tracing::info!(%addr, "admin server listening");
        AdminServer {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server; on return the port is closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Configuration validation refuses other addresses with the key's name; this is the last
/// line for a server built in code.
fn refuse_beyond_loopback(addr: SocketAddr) -> std::io::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{addr} is not a loopback address: the admin server has no authentication"),
    ))
}

async fn accept(listener: TcpListener, routes: Arc<dyn Routes>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning; keep serving.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let routes = routes.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(respond(req, routes.as_ref()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "admin connection failed");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The largest request body the admin routes read (a weight, a small JSON object).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Routes one request, reading its body first where a program's route takes one.
pub async fn respond(req: Request<Incoming>, routes: &dyn Routes) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = segments(&path);
    if routes.action_method(&segments).as_ref() != Some(&parts.method) {
        return route(&parts.method, &path, &[], routes);
    }
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => route(&parts.method, &path, &collected.to_bytes(), routes),
        Err(e) => {
            let (code, why) = if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {MAX_BODY_BYTES} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            };
            json_reply(code, &json!({ "error": why }))
        }
    }
}

/// The path split at `/`, without the empty first segment and a trailing slash.
fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').skip(1).collect()
}

fn route(method: &Method, path: &str, body: &[u8], routes: &dyn Routes) -> Response<Full<Bytes>> {
    let segments = segments(path);
    if method == Method::GET && segments == ["metrics"] {
        if let Some(text) = routes.metrics() {
            return with_type(StatusCode::OK, OPENMETRICS, text.into_bytes());
        }
    }
    if method == Method::GET {
        if let Some(page) = routes.page() {
            if let Some(file) = dashboard::file(&page, path) {
                let mut response = with_type(StatusCode::OK, file.content_type, file.body.into());
                let headers = response.headers_mut();
                for (name, value) in dashboard::HEADERS {
                    headers.insert(
                        hyper::header::HeaderName::from_static(name),
                        hyper::header::HeaderValue::from_static(value),
                    );
                }
                return response;
            }
        }
    }
    let (code, body) = match (method, segments.as_slice()) {
        (&Method::GET, ["health"]) => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["status"]) => (StatusCode::OK, routes.status()),
        (&Method::GET, ["ready"]) => match routes.waiting_for() {
            Some(waiting) => {
                let ready = waiting.is_empty();
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, json!({ "ready": ready, "waiting_for": waiting }))
            }
            None => (StatusCode::NOT_FOUND, json!({ "error": "not found" })),
        },
        (m, s) if routes.action_method(s).as_ref() == Some(m) => routes.act(s, body),
        (_, ["health" | "status"]) => wrong_method("GET"),
        (_, ["ready"]) if routes.waiting_for().is_some() => wrong_method("GET"),
        (_, s) if routes.action_method(s).is_some() => {
            let allowed = routes.action_method(s).unwrap_or(Method::POST);
            wrong_method(allowed.as_str())
        }
        _ => (
            StatusCode::NOT_FOUND,
            json!({ "error": "not found", "endpoints": endpoints(routes) }),
        ),
    };
    json_reply(code, &body)
}

fn json_reply(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(body).unwrap_or_default();
    body.push(b'\n');
    with_type(code, "application/json", body)
}

/// The program's routes and, where it has a dashboard, the dashboard's.
fn endpoints(routes: &dyn Routes) -> Vec<&'static str> {
    let mut all = routes.endpoints();
    if routes.page().is_some() {
        all.extend(dashboard::ENDPOINTS);
    }
    all
}

/// The content type Prometheus asks for and prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn wrong_method(allowed: &str) -> Reply {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "error": format!("wrong method: use {allowed}") }),
    )
}

fn text(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(code, "text/plain", body.as_bytes().to_vec())
}

fn with_type(code: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Switch;

    impl Routes for Switch {
        fn status(&self) -> Value {
            json!({ "on": true })
        }
        fn action_method(&self, segments: &[&str]) -> Option<Method> {
            match segments {
                ["off"] => Some(Method::POST),
                ["level"] => Some(Method::PUT),
                _ => None,
            }
        }
        fn act(&self, segments: &[&str], body: &[u8]) -> Reply {
            match segments {
                ["level"] => (
                    StatusCode::OK,
                    json!({ "level": String::from_utf8_lossy(body) }),
                ),
                _ => (StatusCode::OK, json!({ "on": false })),
            }
        }
        fn waiting_for(&self) -> Option<Vec<String>> {
            Some(vec!["x".to_owned()])
        }
    }

    fn route(method: &Method, path: &str, routes: &dyn Routes) -> Response<Full<Bytes>> {
        super::route(method, path, &[], routes)
    }

    fn code(method: Method, path: &str) -> StatusCode {
        route(&method, path, &Switch).status()
    }

    #[test]
    fn routes_answer_by_method_and_path() {
        assert_eq!(code(Method::GET, "/health"), StatusCode::OK);
        assert_eq!(code(Method::GET, "/status/"), StatusCode::OK);
        assert_eq!(code(Method::POST, "/off"), StatusCode::OK);
        assert_eq!(code(Method::GET, "/off"), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            code(Method::POST, "/status"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(code(Method::GET, "/nothing"), StatusCode::NOT_FOUND);
        assert_eq!(code(Method::POST, "/nothing"), StatusCode::NOT_FOUND);
        assert_eq!(code(Method::PUT, "/level"), StatusCode::OK);
        assert_eq!(code(Method::POST, "/level"), StatusCode::METHOD_NOT_ALLOWED);
        let level = super::route(&Method::PUT, "/level", b"5", &Switch);
        assert_eq!(json_body(level)["level"], "5");
    }

    #[test]
    fn ready_answers_503_until_the_program_is_ready_and_404_where_it_has_no_notion() {
        let waiting = route(&Method::GET, "/ready", &Switch);
        assert_eq!(waiting.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json_body(waiting)["waiting_for"][0], "x");
        assert_eq!(code(Method::POST, "/ready"), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            route(&Method::GET, "/ready", &Counted).status(),
            StatusCode::NOT_FOUND
        );
    }

    struct Counted;

    impl Routes for Counted {
        fn status(&self) -> Value {
            json!({})
        }
        fn metrics(&self) -> Option<String> {
            Some("# EOF\n".into())
        }
    }

    #[test]
    fn metrics_are_served_as_openmetrics_where_a_program_has_them() {
        let with = route(&Method::GET, "/metrics", &Counted);
        assert_eq!(with.status(), StatusCode::OK);
        let content_type = with.headers().get(hyper::header::CONTENT_TYPE);
        assert_eq!(
            content_type.and_then(|v| v.to_str().ok()),
            Some(OPENMETRICS)
        );
        assert_eq!(code(Method::GET, "/metrics"), StatusCode::NOT_FOUND);
    }

    struct Shown;

    const PAGE: Page = Page {
        html: "<!DOCTYPE html><link rel=\"stylesheet\" href=\"assets/dashboard.css\">\
               <script src=\"assets/dashboard.js\"></script>\
               <script src=\"assets/page.js\"></script><a href=\"status\">status</a>",
        script: "Dash.poll({});",
    };

    impl Routes for Shown {
        fn status(&self) -> Value {
            json!({})
        }
        fn page(&self) -> Option<Page> {
            Some(PAGE)
        }
    }

    fn content_type(response: &Response<Full<Bytes>>) -> Option<&str> {
        let value = response.headers().get(hyper::header::CONTENT_TYPE);
        value.and_then(|v| v.to_str().ok())
    }

    #[test]
    fn the_dashboard_is_served_at_the_root_with_every_file_it_references() {
        let page = route(&Method::GET, "/", &Shown);
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(content_type(&page), Some("text/html; charset=utf-8"));
        let policy = page.headers().get("content-security-policy");
        let policy = policy.and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");

        for reference in dashboard::references(PAGE.html) {
            let answer = route(&Method::GET, &format!("/{reference}"), &Shown);
            assert_eq!(answer.status(), StatusCode::OK, "{reference}");
            let wanted = match reference.rsplit_once('.').map(|(_, ext)| ext) {
                Some("css") => "text/css; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                _ => "application/json",
            };
            assert_eq!(content_type(&answer), Some(wanted), "{reference}");
        }
        assert_eq!(
            code(Method::GET, "/"),
            StatusCode::NOT_FOUND,
            "a program without a page has none"
        );
        assert_eq!(
            route(&Method::POST, "/", &Shown).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_404_lists_the_dashboard_where_there_is_one() {
        let listed = |routes: &dyn Routes| {
            let response = route(&Method::GET, "/nothing", routes);
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            let body = json_body(response);
            let endpoints = body["endpoints"].as_array().cloned().unwrap_or_default();
            endpoints.iter().any(|e| e == "GET /")
        };
        assert!(listed(&Shown));
        assert!(!listed(&Switch));
    }

    /// The JSON body of an answer built in memory (a `Full` body is one ready frame).
    fn json_body(response: Response<Full<Bytes>>) -> Value {
        use http_body_util::BodyExt;
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(response.into_body().collect()));
        let bytes = match collected {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(never)) => match never {},
            Err(e) => panic!("runtime: {e}"),
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON: {e}"))
    }

    #[tokio::test]
    async fn only_loopback_is_served() {
        let routes: Arc<dyn Routes> = Arc::new(Switch);
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let refused = AdminServer::bind(any, routes.clone()).await.err();
        assert_eq!(
            refused.map(|e| e.kind()),
            Some(std::io::ErrorKind::InvalidInput)
        );
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let served = AdminServer::bind(local, routes).await;
        assert!(served.is_ok_and(|s| s.addr().ip().is_loopback()));
    }
}
