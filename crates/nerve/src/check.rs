//! Health checks: `tcp`, `http` and `exec`. Each runs once per call, bounded by its
//! timeout, and answers pass or fail-with-reason. A check that cannot even run (name does
//! not resolve, program not found) is a failure with that reason: nothing here panics or
//! returns early to the caller with an error it would have to handle differently.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{
    CheckConfig, CheckKind, ExecCheckConfig, HttpCheckConfig, ServiceConfig, TcpCheckConfig,
};

/// The result of one check: `Ok` = pass, `Err` = why it failed.
pub type CheckResult = Result<(), CheckError>;

/// Why a check failed. Compared by value, so that a check failing the same way round after
/// round is logged once; its text is the reason shown in logs and `/status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No answer within the check's timeout; `output` is what an exec check wrote to stderr
    /// before it was killed.
    #[error(
        "{check}: timed out after {after:?}{}",
        output.as_deref().map(|o| format!(": {o}")).unwrap_or_default()
    )]
    TimedOut {
        check: String,
        after: Duration,
        output: Option<String>,
    },
    /// The TCP connection was refused or failed.
    #[error("connect {addr}: {error}")]
    Connect { addr: String, error: String },
    /// The check ran and the answer was wrong (HTTP error or status, body, exit status).
    #[error("{check}: {detail}")]
    Failed { check: String, detail: String },
    /// An exec check could not be started or waited for.
    #[error("{0}")]
    CannotRun(String),
}

impl CheckError {
    fn failed(check: &str, detail: impl std::fmt::Display) -> CheckError {
        CheckError::Failed {
            check: check.to_owned(),
            detail: detail.to_string(),
        }
    }
}

/// The most of a response body read for `expect_body`, so a huge page cannot eat memory.
const MAX_BODY: usize = 64 * 1024;
/// How much of an exec check's stderr is kept as its failure reason.
const STDERR_TAIL: usize = 300;
/// The most of an exec check's stderr read before it is no longer waited on.
const STDERR_LIMIT: usize = 1024 * 1024;

/// A check bound to the instance it checks.
#[derive(Debug, Clone)]
pub struct Check {
    host: String,
    port: u16,
    service: String,
    config: CheckConfig,
}

impl Check {
    pub fn new(service: &ServiceConfig, config: &CheckConfig) -> Check {
        Check {
            host: service.host.clone(),
            port: service.port,
            service: service.name.clone(),
            config: config.clone(),
        }
    }

    pub fn kind(&self) -> CheckKind {
        self.config.kind()
    }

    /// A short name for logs and /status, e.g. `tcp 10.0.0.5:8080`.
    pub fn describe(&self) -> String {
        match &self.config {
            CheckConfig::Tcp(c) => format!("tcp {}:{}", self.host, c.port.unwrap_or(self.port)),
            CheckConfig::Http(c) => format!(
                "http {} {}:{}{}",
                c.method,
                self.host,
                c.port.unwrap_or(self.port),
                c.path
            ),
            CheckConfig::Exec(c) => format!("exec {}", c.command.join(" ")),
        }
    }

    /// Runs the check once. Never takes much longer than its timeout.
    pub async fn run(&self) -> CheckResult {
        let timeout = self.config.timeout();
        let bounded = |outcome: Result<CheckResult, tokio::time::error::Elapsed>| {
            outcome.unwrap_or_else(|_| Err(self.timed_out(timeout, None)))
        };
        match &self.config {
            CheckConfig::Tcp(c) => bounded(tokio::time::timeout(timeout, self.tcp(c)).await),
            CheckConfig::Http(c) => bounded(tokio::time::timeout(timeout, self.http(c)).await),
            // Bounds itself, so that what the program wrote to stderr before it was killed
            // stays in the reason.
            CheckConfig::Exec(c) => self.exec(c, timeout).await,
        }
    }

    fn timed_out(&self, timeout: Duration, output: Option<String>) -> CheckError {
        CheckError::TimedOut {
            check: self.describe(),
            after: timeout,
            output,
        }
    }

    async fn connect(&self, port: u16) -> Result<TcpStream, CheckError> {
        TcpStream::connect((self.host.as_str(), port))
            .await
            .map_err(|e| CheckError::Connect {
                addr: format!("{}:{port}", self.host),
                error: e.to_string(),
            })
    }

    async fn tcp(&self, c: &TcpCheckConfig) -> CheckResult {
        self.connect(c.port.unwrap_or(self.port)).await.map(drop)
    }

    async fn http(&self, c: &HttpCheckConfig) -> CheckResult {
        let port = c.port.unwrap_or(self.port);
        let what = self.describe();
        let stream = self.connect(port).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| CheckError::failed(&what, e))?;
        // The connection is driven inside this future rather than in a spawned task, so a
        // timeout drops it (and closes the socket) even against a server that never answers.
        let exchange = async {
            let request = self.request(c, port, &what)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| CheckError::failed(&what, e))?;
            let status = response.status().as_u16();
            if !c.expect_status.contains(status) {
                let detail = format!("status {status}, expected {}", c.expect_status);
                return Err(CheckError::failed(&what, detail));
            }
            match &c.expect_body {
                Some(expected) => body_contains(&what, response.into_body(), expected).await,
                None => Ok(()),
            }
        };
        tokio::pin!(exchange);
        tokio::pin!(connection);
        tokio::select! {
            r = &mut exchange => r,
            c = &mut connection => match c {
                // Closed after the whole response arrived: what is buffered still reads.
                Ok(()) => exchange.await,
                Err(e) => Err(CheckError::failed(&what, e)),
            },
        }
    }

    /// The request of an http check against `port`.
    fn request(
        &self,
        c: &HttpCheckConfig,
        port: u16,
        what: &str,
    ) -> Result<hyper::Request<Empty<Bytes>>, CheckError> {
        let host = match &c.host {
            Some(h) => h.clone(),
            None if self.host.contains(':') => format!("[{}]:{port}", self.host),
            None => format!("{}:{port}", self.host),
        };
        let mut request = hyper::Request::builder()
            .method(c.method.as_str())
            .uri(c.path.as_str())
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "nerve")
            .header(hyper::header::CONNECTION, "close");
        for (name, value) in &c.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        request
            .body(Empty::<Bytes>::new())
            .map_err(|e| CheckError::failed(what, format!("cannot build the request: {e}")))
    }

    async fn exec(&self, c: &ExecCheckConfig, timeout: Duration) -> CheckResult {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some((program, args)) = c.command.split_first() else {
            return Err(CheckError::CannotRun("exec check without a command".into()));
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("NERVE_SERVICE", &self.service)
            .env("NERVE_HOST", &self.host)
            .env("NERVE_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // The timeout drops this future; the child must not outlive it, nor must
            // what it started (`sh -c "curl ... | grep ..."`): its own process group lets
            // the whole tree be killed at once.
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| CheckError::CannotRun(format!("cannot run {program:?}: {e}")))?;
        let mut group = KillGroupOnDrop(child.id());
        let mut stderr = Vec::new();
        let mut pipe = child.stderr.take();
        let finished = tokio::time::timeout_at(deadline, async {
            if let Some(pipe) = &mut pipe {
                read_stderr(pipe, &mut stderr).await;
            }
            child.wait().await
        })
        .await;
        let tail = stderr_tail(&stderr);
        let status = match finished {
            Ok(status) => status
                .map_err(|e| CheckError::CannotRun(format!("waiting for {program:?}: {e}")))?,
            // `group` and `child` are dropped on return: that kills the check.
            Err(_) if tail.is_empty() => return Err(self.timed_out(timeout, None)),
            Err(_) => return Err(self.timed_out(timeout, Some(tail))),
        };
        // Reaped: its pid, and with it the group id, may now belong to someone else.
        group.0 = None;
        if status.success() {
            return Ok(());
        }
        let code = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".into(),
        };
        if tail.is_empty() {
            Err(CheckError::failed(&self.describe(), code))
        } else {
            Err(CheckError::failed(
                &self.describe(),
                format!("{code}: {tail}"),
            ))
        }
    }
}

/// Whether the first [`MAX_BODY`] bytes of `body` contain `expected`.
async fn body_contains(what: &str, mut body: Incoming, expected: &str) -> CheckResult {
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| CheckError::failed(what, format!("reading the body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            seen.extend_from_slice(data);
        }
        if seen.len() >= MAX_BODY {
            break;
        }
    }
    if String::from_utf8_lossy(&seen).contains(expected) {
        return Ok(());
    }
    let detail = format!(
        "body does not contain {expected:?} (first {} bytes read)",
        seen.len()
    );
    Err(CheckError::failed(what, detail))
}

/// Reads an exec check's stderr chunk by chunk into `stderr` (not `read_to_end` into a
/// buffer of its own) so that what arrived before the deadline survives the timeout; stops
/// at EOF or [`STDERR_LIMIT`] (a check that writes more is cut, not waited on forever).
async fn read_stderr(pipe: &mut tokio::process::ChildStderr, stderr: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    while stderr.len() < STDERR_LIMIT {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => stderr.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The last [`STDERR_TAIL`] characters of an exec check's stderr, trimmed.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    match text.char_indices().rev().nth(STDERR_TAIL - 1) {
        Some((i, _)) => text[i..].to_owned(),
        None => text.to_owned(),
    }
}

/// Kills an exec check's process group (its leader's pid) when the check is abandoned at
/// its timeout. Only armed while the leader is not reaped: until then its pid cannot be
/// reused, so the signal cannot reach an unrelated group.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let Some(pgid) = self.0.and_then(|id| i32::try_from(id).ok()) else {
            return;
        };
        use nix::sys::signal::{killpg, Signal};
        if let Err(e) = killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL) {
            // ESRCH: everything in it has exited already.
            if e != nix::errno::Errno::ESRCH {
                tracing::warn!(pgid, error = %e, "cannot kill an exec check's processes");
            }
        }
    }
}

/// Runs every check of one round at once; the first failure (in configured order) is the
/// reason, so all checks must pass.
pub async fn run_all(checks: &[Check]) -> CheckResult {
    run_all_observed(checks, |_, _, _| {}).await
}

/// [`run_all`], telling `observe` about each check as it finishes: its kind, whether it
/// passed and how long it took (for the metrics; a round abandoned midway still reports
/// the checks that had finished).
pub async fn run_all_observed(
    checks: &[Check],
    observe: impl Fn(CheckKind, bool, Duration),
) -> CheckResult {
    let observe = &observe;
    let timed = checks.iter().map(|check| async move {
        let started = Instant::now();
        let result = check.run().await;
        observe(check.kind(), result.is_ok(), started.elapsed());
        result
    });
    let results = futures::future::join_all(timed).await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, CheckError>>()
        .map(drop)
}
