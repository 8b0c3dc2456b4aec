//! Requests to a daemon's admin HTTP server, the way an operator's `curl` makes them: one
//! request per connection, answered within 5 seconds.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An admin server's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `content-type` header (empty when there is none).
    pub content_type: String,
    pub body: String,
}

/// `method path` with `body` (`Content-Length` set), or why it got no answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Reply, String> {
    let attempt = async {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        exchange(s, method, path, body).await
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{method} {path}: no answer within 5 s")))
}

/// `method path` with `body` over a connection already open (e.g. one made inside a
/// simulated host, [`crate::netns::Host::admin`]), answered within 5 seconds.
pub async fn exchange(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Reply, String> {
    let attempt = async {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(format!("{head}{body}").as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        parse(&raw).ok_or_else(|| format!("not an HTTP response: {raw:?}"))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{method} {path}: no answer within 5 s")))
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    request(addr, "GET", path, "").await
}

fn parse(raw: &str) -> Option<Reply> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Some(Reply {
        status,
        content_type,
        body: body.to_owned(),
    })
}
