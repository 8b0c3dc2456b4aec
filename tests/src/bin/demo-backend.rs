//! A tiny HTTP backend for the demo and benchmarks: answers every request on every
//! connection with `hello from NAME`, keeping connections alive unless asked not to.
//!
//! Usage: `demo-backend NAME LISTEN_ADDR`
#![forbid(unsafe_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(listen)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: demo-backend NAME LISTEN_ADDR");
    };
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let body = format!("hello from {name}\n");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, body.clone()));
    }
}

async fn serve(mut stream: TcpStream, body: String) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Answer each complete request head in the buffer.
        while let Some(end) = find_head_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let close = head.contains("connection: close") || head.starts_with("get / http/1.0");
            buf.drain(..end);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            if stream.write_all(response.as_bytes()).await.is_err() || close {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
