//! The admin HTTP server (loopback only): `GET /status` returns the state of every
//! service as JSON (see `docs/synapse.md` for the fields); `GET /health` answers `ok`.
//!
//! It reads the same lock-free snapshots the forwarder uses, so a busy status poller
//! never slows connections down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Produces the status document.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A running admin server; dropping it stops it.
pub struct Admin {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Admin {
    /// Serves on `listener`, bound at `addr`.
    pub fn start(listener: TcpListener, addr: SocketAddr, status: StatusFn) -> Self {
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, status, stop.clone()));
        tracing::info!(%addr, "admin server listening");
        Admin { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(listener: TcpListener, status: StatusFn, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let status = status.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(respond(req, &status)) }
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

fn respond(req: Request<Incoming>, status: &StatusFn) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, content_type: &str, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => {
            let body = serde_json::to_vec_pretty(&status()).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::GET, "/health") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        (_, "/status" | "/health") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"GET only\n".to_vec(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found: try GET /status\n".to_vec(),
        ),
    }
}
