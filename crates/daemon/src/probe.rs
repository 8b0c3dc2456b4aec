//! `--probe-ready ADDR`: asks a running program's admin server whether it is ready
//! (`GET /ready`) and exits 0 if so, 1 if not. The admin port listens on loopback only, so
//! an orchestrator's probe must run inside the program's network namespace; this lets the
//! binary itself be that probe (a Kubernetes `exec` startupProbe) in an image with no shell
//! or curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the probe waits to connect, and for the answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes `addr`; prints the answer's body (or why there was none) and returns the exit code.
pub fn probe_ready(addr: SocketAddr) -> ExitCode {
    match ask(addr) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("not ready ({status}): {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("no answer from {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /ready` on `addr`: (status, body).
fn ask(addr: SocketAddr) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    parse(&text)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

fn parse(text: &str) -> Option<(u16, String)> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_and_body_are_read_from_the_answer() {
        let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\r\n{\"ready\": false}\n";
        assert_eq!(
            parse(answer),
            Some((503, "{\"ready\": false}\n".to_owned()))
        );
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn a_closed_port_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(ask(addr).is_err());
    }
}
