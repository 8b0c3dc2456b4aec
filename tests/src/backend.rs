//! TCP backends for tests: each accepted connection first receives the backend's name and a
//! newline, then everything it sends is echoed back. Stopping a backend closes its listener
//! and every open connection, as a crashed process would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct Backend {
    name: String,
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on a free loopback port.
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0").await
    }

    /// Starts a backend on `addr` (e.g. to come back on the port it had before).
    pub async fn start_on(name: &str, addr: &str) -> Self {
        Self::serve_on(name, bind(name, addr).await)
    }

    /// Starts a backend on `IP:port` inside a simulated host (see [`crate::netns`]), as an
    /// app in that host would listen on its own address.
    pub async fn start_in(host: &crate::netns::Host, name: &str, port: u16) -> Self {
        let addr = host.addr(port);
        let listener = host
            .bind(addr)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            })
            .unwrap_or_else(|e| {
                panic!("backend {name} cannot bind {addr} in {}: {e}", host.name())
            });
        Self::serve_on(name, listener)
    }

    fn serve_on(name: &str, listener: TcpListener) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let greeting = format!("{name}\n");
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting this task drops them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        counter.fetch_add(1, Ordering::Relaxed);
                        connections.spawn(serve(stream, greeting.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Backend {
            name: name.to_owned(),
            addr,
            accepted,
            task: Some(task),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Closes the listener and every open connection.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr`. A port given back a moment ago (a backend restarted on its port) can be
/// taken meanwhile as the local port of an outgoing connection of a busy test: that
/// connection is short, so the bind is retried for a while before the test fails.
async fn bind(name: &str, addr: &str) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("backend {name} cannot bind {addr}: {e}"),
        }
    }
}

async fn serve(mut stream: TcpStream, greeting: String) {
    if stream.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Connects to `addr` and returns the greeting line (the backend's name), or the reason it
/// failed. Bounded by `timeout`.
pub async fn greeting(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut line = String::new();
        let mut reader = BufReader::new(stream);
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr} closed the connection without a greeting"));
        }
        Ok(line.trim_end().to_owned())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no greeting from {addr} within {timeout:?}")))
}

/// An open connection through which a test can check that bytes still flow.
pub struct EchoConnection {
    pub backend: String,
    reader: BufReader<TcpStream>,
}

impl EchoConnection {
    pub async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read greeting: {e}"))?;
        if n == 0 {
            return Err(format!("{addr} closed the connection without a greeting"));
        }
        Ok(EchoConnection {
            backend: line.trim_end().to_owned(),
            reader,
        })
    }

    /// Sends a line and expects it echoed back within 5 s.
    pub async fn round_trip(&mut self, text: &str) -> Result<(), String> {
        let fut = async {
            self.reader
                .get_mut()
                .write_all(format!("{text}\n").as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if line.trim_end() == text {
                Ok(())
            } else {
                Err(format!("expected echo {text:?}, got {line:?}"))
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .unwrap_or_else(|_| Err("no echo within 5s".into()))
    }
}
