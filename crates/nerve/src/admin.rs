//! The admin HTTP server: `/status` for people and scripts, and the maintenance switches.
//!
//! - `GET /status`: JSON `{"lease": id|null, "instances": [InstanceStatus...]}`.
//! - `POST /services/{name}/disable` | `/enable`: maintenance for every instance of a service.
//! - `POST /disable` | `/enable`: the same for every service.
//!
//! Maintenance set here lives in memory: it survives SIGHUP but not a restart (use
//! `maintenance_file` for maintenance that must survive one). Binds loopback unless told
//! otherwise, because it has no authentication.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Binds `addr` and serves until `stop`. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(%local, "admin API listens beyond loopback and has no authentication");
    }
    tracing::info!(%local, "admin API listening");
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let shared = shared.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
    Ok((local, task))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["status"]) => {
            let instances = shared.statuses();
            let lease = shared.lease();
            json(
                StatusCode::OK,
                serde_json::json!({ "lease": lease, "instances": instances }),
            )
        }
        (&Method::POST, [action @ ("disable" | "enable")]) => {
            shared.set_disabled(None, *action == "disable");
            json(
                StatusCode::OK,
                serde_json::json!({ "scope": "all", "maintenance": *action == "disable" }),
            )
        }
        (&Method::POST, ["services", name, action @ ("disable" | "enable")]) => {
            if shared.set_disabled(Some(name), *action == "disable") {
                json(
                    StatusCode::OK,
                    serde_json::json!({ "scope": name, "maintenance": *action == "disable" }),
                )
            } else {
                json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({ "error": format!("nerve runs no service named {name:?}") }),
                )
            }
        }
        (_, ["status"] | ["disable" | "enable"] | ["services", _, "disable" | "enable"]) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({ "error": "wrong method: GET /status, POST for the rest" }),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "error": "not found",
                "endpoints": ["GET /status", "POST /disable", "POST /enable",
                              "POST /services/{name}/disable", "POST /services/{name}/enable"],
            }),
        ),
    }
}
