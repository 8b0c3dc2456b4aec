//! A TCP link between a program under test and a server (etcd, a backend) that a test can
//! partition: while cut, bytes stop flowing both ways and new connections are accepted but
//! go nowhere, the way a network partition looks to both ends (no RST, no FIN). Healing
//! lets new connections through; connections that lived through the cut are closed, as
//! their peers' keepalives would have ended them.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Link {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("link bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("link addr: {e}"));
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(carry(inbound, target, cut_rx.clone()));
            }
        });
        Link { addr, cut, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for etcd endpoints.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn carry(mut inbound: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow() {
        // Hold the connection silently until healed, then drop it.
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let partitioned = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = cut.wait_for(|c| *c) => true,
    };
    if partitioned {
        // Go silent, keep both sockets open, and close once healed.
        let _ = cut.wait_for(|c| !*c).await;
        let _ = inbound.shutdown().await;
    }
}
