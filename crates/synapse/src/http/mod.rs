//! http mode: synapse serves HTTP/1.1 and h2c (told apart by the HTTP/2 preface) on the
//! service's port and sends each request to a backend picked for that request, over
//! pooled upstream connections (HTTP/1.1 keepalive pools per backend, one multiplexed
//! HTTP/2 connection per backend).
//!
//! - `headers`: hop-by-hop headers (pure).
//! - `retry`: when a request may be sent again, and the retry budget (pure).
//! - `proxy`: one request: pick, send, retry, answer; the upstream client pools.
//!
//! The rest is tcp mode's: the same backend set, picks (plus `peak_ewma` and
//! `least_request`), slow start, ejection (also on 5xx responses) and drain.

mod headers;
mod proxy;
mod retry;

use std::convert::Infallible;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub use proxy::Upstreams;

use crate::state::ServiceState;

/// Serves one accepted client connection in http mode until the client closes it (or the
/// shutdown timeout cuts it).
pub async fn serve(service: Arc<ServiceState>, upstreams: Arc<Upstreams>, client: TcpStream) {
    let _counted = service.traffic().accepted();
    crate::forward::tune(&client);
    let handler = {
        let service = service.clone();
        hyper::service::service_fn(move |request| {
            let (service, upstreams) = (service.clone(), upstreams.clone());
            async move { Ok::<_, Infallible>(proxy::handle(&service, &upstreams, request).await) }
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(client), handler);
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "http client connection ended with an error");
            }
        }
        _ = service.cut().cancelled() => {
            tracing::debug!("http connection cut at the end of the shutdown timeout");
        }
    }
}
