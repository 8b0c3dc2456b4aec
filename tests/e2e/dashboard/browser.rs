//! Headless Chromium, driven over the Chrome DevTools Protocol: one browser process on a
//! temp profile, pages opened in it as targets, JavaScript evaluated in them and
//! screenshots taken, all over the one websocket Chromium names on stderr.
//!
//! The process and every child it forks (zygote, renderers, network service) are killed
//! through their process group, whose id is the browser's PID, and the profile is removed,
//! whenever a [`Chromium`] is dropped: on success, on a failed assertion, on a panic.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to open its DevTools endpoint.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long one protocol call may take.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
/// The viewport pages are laid out in (and screenshots are as wide as).
pub const WIDTH: u32 = 1280;

/// The flags that make headless Chromium work as root in a container and keep it off the
/// network (without them it tries to reach the internet on its own), plus those that keep
/// a page that is not in front running its timers at full speed: the test has two pages.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
];

/// A running headless Chromium; dropping it kills it and removes its profile.
pub struct Chromium {
    child: Child,
    endpoint: String,
    profile: Option<tempfile::TempDir>,
}

/// The Chromium binary: `$CHROMIUM`, else the first of Debian's and others' names on `PATH`.
pub fn find() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err("no chromium, chromium-browser or google-chrome on PATH (and CHROMIUM is not set)".into())
}

impl Chromium {
    /// Starts Chromium on a new temp profile and waits until it names its DevTools
    /// websocket. An error says why it could not be started.
    pub async fn start() -> Result<Chromium, String> {
        let exe = find()?;
        let profile = tempfile::tempdir().map_err(|e| format!("temp profile dir: {e}"))?;
        // Chromium puts its singleton socket in a dir under TMPDIR and leaves it behind when
        // killed: inside the profile, it goes with it.
        let tmp = profile.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.env("TMPDIR", &tmp)
            .args(FLAGS)
            .arg(format!("--window-size={WIDTH},900"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Its own process group, so that every process it forks can be killed with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let stderr = child.stderr.take();
        let mut chromium = Chromium {
            child,
            endpoint: String::new(),
            profile: Some(profile),
        };
        let Some(stderr) = stderr else {
            return Err("no stderr pipe".into());
        };
        let (found, endpoint) = tokio::sync::oneshot::channel();
        // Reads stderr to its end: the DevTools line is handed over, the rest kept for the
        // error message, and the pipe never fills (a full pipe would stall the browser).
        let reader = std::thread::spawn(move || {
            let mut found = Some(found);
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(found) = found.take() {
                        let _ = found.send(url.trim().to_owned());
                    }
                }
                if found.is_some() {
                    lines.push(line);
                }
            }
            lines
        });
        match tokio::time::timeout(START_DEADLINE, endpoint).await {
            Ok(Ok(url)) => {
                chromium.endpoint = url;
                Ok(chromium)
            }
            outcome => {
                drop(chromium);
                let said = reader.join().unwrap_or_default();
                let why = match outcome {
                    Err(_) => format!("no DevTools endpoint within {START_DEADLINE:?}"),
                    _ => "it exited before opening its DevTools endpoint".into(),
                };
                let tail: String = said[said.len().saturating_sub(10)..]
                    .iter()
                    .map(|line| format!("\n{line}"))
                    .collect();
                Err(format!("{} did not start: {why}{tail}", exe.display()))
            }
        }
    }

    /// A protocol connection to the browser.
    pub async fn connect(&self) -> Browser {
        let (ws, _) = tokio_tungstenite::connect_async(self.endpoint.as_str())
            .await
            .unwrap_or_else(|e| panic!("DevTools websocket {}: {e}", self.endpoint));
        Browser { ws, next_id: 0 }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        // The killed children may still hold files in the profile for a moment; the group
        // is gone once no member is left, which the kernel reports as ESRCH.
        for _ in 0..100 {
            if killpg(group, None).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(profile) = self.profile.take() {
            let path = profile.path().to_owned();
            if let Err(e) = profile.close() {
                eprintln!(
                    "could not remove Chromium's profile {}: {e}",
                    path.display()
                );
            }
        }
    }
}

/// One page (a target) of the browser, as the session attached to it.
#[derive(Debug, Clone)]
pub struct Page {
    session: String,
}

/// The protocol connection: calls are made one at a time and answered in order; events
/// (none are asked for) are skipped.
pub struct Browser {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Calls `method` on the browser (`page` None) or on a page; its `result`.
    pub async fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(page) = page {
            message["sessionId"] = json!(page.session);
        }
        let exchange = async {
            self.ws
                .send(Message::text(message.to_string()))
                .await
                .unwrap_or_else(|e| panic!("sending {method}: {e}"));
            loop {
                let frame = match self.ws.next().await {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => panic!("reading the answer to {method}: {e}"),
                    None => panic!("Chromium closed the DevTools connection during {method}"),
                };
                let Message::Text(text) = frame else { continue };
                let answer: Value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("DevTools sent non-JSON ({e}): {text}"));
                if answer["id"] != id {
                    continue;
                }
                if let Some(error) = answer.get("error") {
                    panic!("{method} failed: {error}");
                }
                return answer["result"].clone();
            }
        };
        tokio::time::timeout(CALL_DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within {CALL_DEADLINE:?}"))
    }

    /// Opens `url` in a new page and attaches to it.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!session.is_empty(), "no session for {url}: {attached}");
        Page { session }
    }

    /// The value of `expression` evaluated in `page` (`null` for what JSON cannot hold);
    /// panics on an exception.
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let answer = self.call(Some(page), "Runtime.evaluate", params).await;
        if let Some(exception) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        answer["result"]["value"].clone()
    }

    /// Writes a PNG of the whole of `page` (not only what fits the window) to `path`.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) {
        let height = self
            .eval(
                page,
                "Math.ceil(document.body.getBoundingClientRect().bottom)",
            )
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(300, 4000);
        let size =
            json!({ "width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call(Some(page), "Emulation.setDeviceMetricsOverride", size)
            .await;
        let shot = self
            .call(
                Some(page),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        self.call(
            Some(page),
            "Emulation.clearDeviceMetricsOverride",
            json!({}),
        )
        .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot is not base64: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
