//! The dashboards in a real browser: headless Chromium keeps synapse's and nerve's pages
//! open (one page each, never reloaded) while real etcd, real backends, nerve and synapse
//! run under traffic. The pages must show the backends, follow one of them dying, say when
//! their program stops answering and recover when it answers again; a screenshot of
//! synapse's page with live traffic is saved under the target's tmp dir.
//!
//! Without a Chromium that starts, the test says loudly that it was SKIPPED, and passes.

mod browser;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use testkit::backend::EchoConnection;
use testkit::{free_port, Backend, Daemon, EtcdServer};
use tokio_util::sync::CancellationToken;

use browser::{Browser, Chromium, Page};

const DEADLINE: Duration = Duration::from_secs(30);

fn nerve_config(endpoint: &str, admin: u16, backends: &[(&str, u16)]) -> String {
    let mut s = format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\nadmin: 127.0.0.1:{admin}\nlease_ttl: 10s\nservices:\n"
    );
    // fall 10 at 500 ms: a dead backend stays registered for about 5 s, long enough for
    // synapse to eject it on the connections it fails first, and for the page to show it.
    for (id, port) in backends {
        s += &format!(
            "  - name: web\n    host: 127.0.0.1\n    port: {port}\n    instance_id: {id}\n\
             \x20   check_interval: 500ms\n    rise: 2\n    fall: 10\n    checks:\n      - type: tcp\n"
        );
    }
    s
}

fn synapse_config(endpoint: &str, admin: u16, listen: SocketAddr) -> String {
    format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\nadmin: 127.0.0.1:{admin}\nservices:\n\
         \x20 - name: web\n    listen: {listen}\n    connect_timeout: 300ms\n    eject_after: 2\n\
         \x20   ejection_time: 30s\n"
    )
}

/// Clients through synapse until dropped: a few connections held open (active
/// connections on the page) and a new one every 20 ms that exchanges a line (connection
/// rate and bytes). Failures are expected while a backend dies and are not counted.
struct Traffic {
    stop: CancellationToken,
}

impl Traffic {
    fn start(listen: SocketAddr) -> Traffic {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let line = "x".repeat(2_000);
            let work = async {
                let mut held = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                loop {
                    tick.tick().await;
                    if held.len() < 4 {
                        held.extend(EchoConnection::open(listen).await.ok());
                    }
                    if let Ok(mut c) = EchoConnection::open(listen).await {
                        let _ = c.round_trip(&line).await;
                    }
                }
            };
            tokio::select! {
                _ = token.cancelled() => {}
                _ = work => {}
            }
        });
        Traffic { stop }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Evaluates `expression` in `page` until it is true; panics with the page's text after
/// `DEADLINE`. The page is never reloaded: what changes is the page updating itself.
async fn wait_page(browser: &mut Browser, page: &Page, what: &str, expression: &str) {
    let start = tokio::time::Instant::now();
    loop {
        if browser.eval(page, expression).await == Value::Bool(true) {
            eprintln!("page shows {what} after {:?}", start.elapsed());
            return;
        }
        if start.elapsed() > DEADLINE {
            let text = browser.eval(page, "document.body.innerText").await;
            panic!(
                "timed out after {DEADLINE:?} waiting until the page shows {what}; it shows:\n{}",
                text.as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state the synapse page shows for backend `id` of service web (`gone`: no row).
fn backend_state(id: &str) -> String {
    format!(
        "(document.querySelector('section[data-service=\"web\"] tr[data-backend=\"{id}\"]') \
         || {{dataset: {{state: 'gone'}}}}).dataset.state"
    )
}

/// Whether the page shows the banner saying its program is not answering.
const BANNER_SHOWN: &str = "!document.getElementById('banner').hidden \
     && document.getElementById('banner').textContent.includes('not answering') \
     && document.body.classList.contains('stale')";
const BANNER_GONE: &str =
    "document.getElementById('banner').hidden && !document.body.classList.contains('stale')";

/// The number of answers the page has had from its program so far.
const ANSWERS: &str = "Number(document.body.dataset.answers || 0)";

fn screenshot_path(program: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{program}.png"))
}

#[tokio::test]
async fn the_dashboards_follow_a_backend_dying_in_a_real_browser() {
    let chromium = match Chromium::start().await {
        Ok(c) => c,
        Err(why) => {
            testkit::skipped(
                "the dashboard browser test",
                &why,
                "Install Debian's chromium (`make deps` does) to run it.",
            );
            return;
        }
    };
    eprintln!("chromium running as PID {}", chromium.pid());
    let etcd = EtcdServer::start().await;
    let mut a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let (nerve_admin, synapse_admin) = (free_port(), free_port());
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let instances = [
        ("web-a", a.port()),
        ("web-b", b.port()),
        ("web-c", c.port()),
    ];
    let nerve = Daemon::nerve(&nerve_config(&etcd.endpoint(), nerve_admin, &instances)).await;
    let synapse = Daemon::synapse(&synapse_config(&etcd.endpoint(), synapse_admin, listen)).await;
    let mut browser = chromium.connect().await;
    let synapse_page = browser
        .open(&format!("http://127.0.0.1:{synapse_admin}/"))
        .await;
    let nerve_page = browser
        .open(&format!("http://127.0.0.1:{nerve_admin}/"))
        .await;
    wait_page(
        &mut browser,
        &synapse_page,
        "web-a, web-b and web-c healthy",
        &format!(
            "{} === 'healthy' && {} === 'healthy' && {} === 'healthy'",
            backend_state("web-a"),
            backend_state("web-b"),
            backend_state("web-c")
        ),
    )
    .await;
    let title = browser
        .eval(
            &synapse_page,
            "document.querySelector('section[data-service=\"web\"] h2').textContent",
        )
        .await;
    let title = title.as_str().unwrap_or_default();
    assert!(title.contains(&listen.to_string()), "{title}");
    wait_page(
        &mut browser,
        &nerve_page,
        "every instance healthy and registered",
        "['web/web-a', 'web/web-b', 'web/web-c'].every(k => { \
           const row = document.querySelector(`tr[data-instance=\"${k}\"]`); \
           return row && row.dataset.healthy === 'true' && row.dataset.state === 'healthy'; })",
    )
    .await;

    // A mark a reload would wipe out (set once each page shows its program's state, so
    // that the page is the one loaded from the URL): checked at the end.
    for page in [&synapse_page, &nerve_page] {
        browser.eval(page, "window.openedOnce = true").await;
    }

    // Some seconds of traffic, so that the charts have a history.
    let traffic = Traffic::start(listen);
    let answers = browser.eval(&synapse_page, ANSWERS).await.as_u64();
    let later = answers.unwrap_or_default() + 15;
    wait_page(
        &mut browser,
        &synapse_page,
        "traffic in the table and a chart history",
        &format!(
            "{ANSWERS} >= {later} && [...document.querySelectorAll('section[data-service=\"web\"] \
             tr[data-backend]')].every(r => Number(r.cells[7].textContent.replace(/,/g, '')) > 0) \
             && document.querySelector('section[data-service=\"web\"] .chart b').textContent !== '0'"
        ),
    )
    .await;

    a.stop().await;
    wait_page(
        &mut browser,
        &synapse_page,
        "web-a ejected or gone",
        &format!(
            "['ejected', 'drained', 'gone'].includes({}) && {} === 'healthy' && {} === 'healthy'",
            backend_state("web-a"),
            backend_state("web-b"),
            backend_state("web-c")
        ),
    )
    .await;
    let shown = browser.eval(&synapse_page, &backend_state("web-a")).await;
    eprintln!("the synapse page shows web-a as {shown}");
    browser
        .screenshot(&synapse_page, &screenshot_path("synapse"))
        .await;
    eprintln!("screenshot: {}", screenshot_path("synapse").display());
    wait_page(
        &mut browser,
        &nerve_page,
        "web-a unhealthy with a failed check in its strip",
        "(() => { const row = document.querySelector('tr[data-instance=\"web/web-a\"]'); \
           return row !== null && row.dataset.healthy === 'false' \
             && row.dataset.state === 'unhealthy' && row.querySelector('.strip .sq.fail') !== null; \
         })()",
    )
    .await;

    browser
        .screenshot(&nerve_page, &screenshot_path("nerve"))
        .await;
    eprintln!("screenshot: {}", screenshot_path("nerve").display());

    // Each program stops answering (paused, so that it comes back as it was), then answers
    // again: the banner comes and goes on the page that stayed open.
    for (daemon, page) in [(&synapse, &synapse_page), (&nerve, &nerve_page)] {
        daemon.signal(Signal::SIGSTOP);
        wait_page(&mut browser, page, "the not-answering banner", BANNER_SHOWN).await;
        daemon.signal(Signal::SIGCONT);
        wait_page(&mut browser, page, "the banner gone again", BANNER_GONE).await;
    }

    for page in [&synapse_page, &nerve_page] {
        let kept = browser.eval(page, "window.openedOnce === true").await;
        assert_eq!(kept, Value::Bool(true), "a page was reloaded");
    }
    drop(traffic);
}
