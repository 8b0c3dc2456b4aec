//! End-to-end tests of `datapath::relay_with` over real loopback sockets: a test client,
//! the relay (accepting like a proxy would), and a test upstream. Every strategy must
//! deliver the same bytes, propagate half-closes both ways, end on resets and idle
//! timeouts, and the forced-buffer fallback must give exactly the splice path's results.

use std::io;
use std::time::{Duration, Instant};

use datapath::{path_counters, relay_with, RelayOptions, RelayStats, Strategy};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const STRATEGIES: [Strategy; 3] = [Strategy::Auto, Strategy::Splice, Strategy::Buffered];

/// The test's two ends and the running relay between them.
struct Setup {
    client: TcpStream,
    upstream: TcpStream,
    relay: JoinHandle<io::Result<RelayStats>>,
}

async fn setup(options: RelayOptions) -> Setup {
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(proxy.local_addr().unwrap())
        .await
        .unwrap();
    let (proxied_client, _) = proxy.accept().await.unwrap();
    let proxied_up = TcpStream::connect(up.local_addr().unwrap()).await.unwrap();
    let (upstream, _) = up.accept().await.unwrap();
    let relay = tokio::spawn(async move { relay_with(proxied_client, proxied_up, &options).await });
    Setup {
        client,
        upstream,
        relay,
    }
}

fn opts(strategy: Strategy) -> RelayOptions {
    RelayOptions {
        strategy,
        ..RelayOptions::default()
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes `data` in chunks of random sizes up to `max_chunk`, then sends FIN.
async fn send_chunked(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    data: Vec<u8>,
    max_chunk: usize,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut off = 0;
    while off < data.len() {
        let n = rng.random_range(1..=max_chunk).min(data.len() - off);
        w.write_all(&data[off..off + n]).await.unwrap();
        off += n;
    }
    w.shutdown().await.unwrap();
}

async fn read_all(mut r: tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

/// Sends `up` from the client and `down` from the upstream at the same time, each side
/// closing its write half when done; returns what each side received and the relay stats.
async fn exchange(
    options: RelayOptions,
    up: Vec<u8>,
    down: Vec<u8>,
    max_chunk: usize,
) -> (Vec<u8>, Vec<u8>, RelayStats) {
    let s = setup(options).await;
    let (cr, cw) = s.client.into_split();
    let (ur, uw) = s.upstream.into_split();
    let t1 = tokio::spawn(send_chunked(cw, up, max_chunk, 1));
    let t2 = tokio::spawn(send_chunked(uw, down, max_chunk, 2));
    let got_up = tokio::spawn(read_all(ur));
    let got_down = tokio::spawn(read_all(cr));
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, async {
        t1.await.unwrap();
        t2.await.unwrap();
    })
    .await
    .unwrap();
    let received_up = tokio::time::timeout(deadline, got_up)
        .await
        .unwrap()
        .unwrap();
    let received_down = tokio::time::timeout(deadline, got_down)
        .await
        .unwrap()
        .unwrap();
    let stats = tokio::time::timeout(deadline, s.relay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (received_up, received_down, stats)
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_random_payloads_arrive_intact_both_ways_with_every_strategy() {
    for (i, strategy) in STRATEGIES.into_iter().enumerate() {
        let up = random_bytes(24 << 20, 10 + i as u64);
        let down = random_bytes(24 << 20, 20 + i as u64);
        let (got_up, got_down, stats) =
            exchange(opts(strategy), up.clone(), down.clone(), 256 * 1024).await;
        assert_same(&format!("{strategy:?} client->upstream"), &got_up, &up);
        assert_same(&format!("{strategy:?} upstream->client"), &got_down, &down);
        assert_eq!(stats.client_to_upstream, up.len() as u64);
        assert_eq!(stats.upstream_to_client, down.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_strategy_really_splices_and_auto_splices_bulk() {
    for strategy in [Strategy::Splice, Strategy::Auto] {
        let before = path_counters();
        let data = random_bytes(8 << 20, 7);
        let (got, _, _) = exchange(opts(strategy), data.clone(), Vec::new(), 1 << 20).await;
        assert_same("payload", &got, &data);
        let after = path_counters();
        // Other tests run concurrently, so only a lower bound is exact.
        assert!(
            after.spliced - before.spliced >= 4 << 20,
            "{strategy:?}: most bulk bytes must be spliced: {before:?} -> {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_fallback_gives_the_same_results_as_splice() {
    let up = random_bytes(5 << 20, 3);
    let down = random_bytes(3 << 20, 4);
    let a = exchange(opts(Strategy::Splice), up.clone(), down.clone(), 100_000).await;
    let b = exchange(opts(Strategy::Buffered), up.clone(), down.clone(), 100_000).await;
    assert_same("splice up", &a.0, &up);
    assert_same("buffered up", &b.0, &up);
    assert_same("splice down", &a.1, &down);
    assert_same("buffered down", &b.1, &down);
    assert_eq!(a.2, b.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_exchange_ends_cleanly() {
    for strategy in STRATEGIES {
        let (a, b, stats) = exchange(opts(strategy), Vec::new(), Vec::new(), 1).await;
        assert!(a.is_empty() && b.is_empty());
        assert_eq!(stats, RelayStats::default());
    }
}

/// Client sends a request and FIN; the upstream sees EOF, then answers at length and
/// closes; the client gets the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_client_is_propagated_and_the_answer_still_flows() {
    for strategy in STRATEGIES {
        let mut s = setup(opts(strategy)).await;
        s.client.write_all(b"request").await.unwrap();
        s.client.shutdown().await.unwrap();
        let mut req = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.upstream.read_to_end(&mut req))
            .await
            .expect("upstream must see the client's FIN")
            .unwrap();
        assert_eq!(req, b"request");
        let answer = random_bytes(3 << 20, 5);
        s.upstream.write_all(&answer).await.unwrap();
        s.upstream.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.client.read_to_end(&mut got).await.unwrap();
        assert_same("answer", &got, &answer);
        let stats = s.relay.await.unwrap().unwrap();
        assert_eq!(stats.client_to_upstream, 7);
        assert_eq!(stats.upstream_to_client, answer.len() as u64);
    }
}

/// The upstream greets and sends FIN first; the client sees EOF and can still send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_upstream_is_propagated_and_the_client_can_still_send() {
    for strategy in STRATEGIES {
        let mut s = setup(opts(strategy)).await;
        s.upstream.write_all(b"greeting").await.unwrap();
        s.upstream.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.client.read_to_end(&mut got))
            .await
            .expect("client must see the upstream's FIN")
            .unwrap();
        assert_eq!(got, b"greeting");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!s.relay.is_finished(), "one direction is still open");
        let late = random_bytes(2 << 20, 6);
        s.client.write_all(&late).await.unwrap();
        s.client.shutdown().await.unwrap();
        let mut rx = Vec::new();
        s.upstream.read_to_end(&mut rx).await.unwrap();
        assert_same("late data", &rx, &late);
        let stats = s.relay.await.unwrap().unwrap();
        assert_eq!(stats.upstream_to_client, 8);
        assert_eq!(stats.client_to_upstream, late.len() as u64);
    }
}

/// A client that resets (SO_LINGER 0 + close) ends the relay with an error, and the
/// upstream sees its connection end rather than hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reset_ends_both_directions() {
    for strategy in STRATEGIES {
        let mut s = setup(opts(strategy)).await;
        // Keep the upstream streaming so the relay is busy writing towards the client.
        let (mut ur, mut uw) = s.upstream.into_split();
        let streamer = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..100_000 {
                if uw.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut first = [0u8; 1024];
        s.client.read_exact(&mut first).await.unwrap();
        socket2::SockRef::from(&s.client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s.client);
        let res = tokio::time::timeout(Duration::from_secs(5), s.relay)
            .await
            .expect("relay must end after a reset")
            .unwrap();
        assert!(res.is_err(), "{strategy:?}: a reset is an error: {res:?}");
        let mut sink = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), ur.read_to_end(&mut sink)).await;
        assert!(end.is_ok(), "upstream's connection must end");
        tokio::time::timeout(Duration::from_secs(5), streamer)
            .await
            .expect("upstream writer must fail, not hang")
            .unwrap();
    }
}

/// An upstream that resets mid-request ends the relay with an error, and the client sees
/// a reset too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_reaches_the_client() {
    for strategy in STRATEGIES {
        let mut s = setup(opts(strategy)).await;
        s.client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.upstream.read_exact(&mut buf).await.unwrap();
        socket2::SockRef::from(&s.upstream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s.upstream);
        let res = tokio::time::timeout(Duration::from_secs(5), s.relay)
            .await
            .expect("relay must end")
            .unwrap();
        assert!(res.is_err(), "{strategy:?}: {res:?}");
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), s.client.read_to_end(&mut rest))
            .await
            .expect("client's connection must end");
        // Passed on as a reset, not as a FIN that would look like a complete answer.
        let err = end.expect_err("the client must see a reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{strategy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_a_silent_connection_and_closes_both_sides() {
    for strategy in STRATEGIES {
        let mut o = opts(strategy);
        o.idle_timeout = Some(Duration::from_millis(300));
        let mut s = setup(o).await;
        let t0 = Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(5), s.relay)
            .await
            .unwrap()
            .unwrap();
        let err = res.expect_err("an idle relay times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(datapath::is_idle_timeout(&err));
        assert!(t0.elapsed() >= Duration::from_millis(290));
        let mut b = Vec::new();
        // Both sockets are closed: each peer reads EOF.
        assert_eq!(s.client.read_to_end(&mut b).await.unwrap(), 0);
        assert_eq!(s.upstream.read_to_end(&mut b).await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_in_either_direction_keeps_the_idle_timer_away() {
    let mut o = opts(Strategy::Auto);
    o.idle_timeout = Some(Duration::from_millis(800));
    let mut s = setup(o).await;
    let mut buf = [0u8; 1];
    for i in 0..8 {
        // Well under the timeout, so a slow CI machine does not make this flaky.
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Alternate directions: only one side talks each time.
        if i % 2 == 0 {
            s.client.write_all(b"x").await.unwrap();
            s.upstream.read_exact(&mut buf).await.unwrap();
        } else {
            s.upstream.write_all(b"y").await.unwrap();
            s.client.read_exact(&mut buf).await.unwrap();
        }
    }
    assert!(
        !s.relay.is_finished(),
        "1.2 s of trickle, 150 ms apart, must not time out"
    );
    s.client.shutdown().await.unwrap();
    s.upstream.shutdown().await.unwrap();
    let stats = s.relay.await.unwrap().unwrap();
    assert_eq!(stats.client_to_upstream + stats.upstream_to_client, 8);
}

/// Request/response on many connections at once, as a proxy under load sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_keepalive_exchanges() {
    let mut tasks = Vec::new();
    for c in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let mut s = setup(opts(Strategy::Auto)).await;
            for i in 0..20u64 {
                let msg = format!("request {c} {i}\n");
                s.client.write_all(msg.as_bytes()).await.unwrap();
                let mut buf = vec![0u8; msg.len()];
                s.upstream.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, msg.as_bytes());
                let answer = random_bytes(100 + (i as usize * 997) % 5000, c * 100 + i);
                s.upstream.write_all(&answer).await.unwrap();
                let mut got = vec![0u8; answer.len()];
                s.client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, answer);
            }
            drop(s.client);
            drop(s.upstream);
            s.relay.await.unwrap().is_ok()
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any payload size, any write chunking, any strategy and buffer size: bytes arrive
    /// intact and the stats count them.
    #[test]
    fn any_chunking_arrives_intact(
        up_len in 0usize..600_000,
        down_len in 0usize..600_000,
        max_chunk in 1usize..200_000,
        strategy in prop::sample::select(STRATEGIES.to_vec()),
        buffer_size in prop::sample::select(vec![1024usize, 4096, 65536]),
        pipe_size in prop::sample::select(vec![4096usize, 65536, 1 << 20]),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let up = random_bytes(up_len, seed);
        let down = random_bytes(down_len, seed ^ 1);
        let options = RelayOptions { strategy, buffer_size, pipe_size, ..RelayOptions::default() };
        let (got_up, got_down, stats) =
            rt.block_on(exchange(options, up.clone(), down.clone(), max_chunk));
        prop_assert!(got_up == up, "client->upstream differs");
        prop_assert!(got_down == down, "upstream->client differs");
        prop_assert_eq!(stats.client_to_upstream, up_len as u64);
        prop_assert_eq!(stats.upstream_to_client, down_len as u64);
    }
}

/// Bytes as a [`datapath::Meter`] saw them.
#[derive(Default)]
struct Counting {
    to_upstream: std::sync::atomic::AtomicU64,
    to_client: std::sync::atomic::AtomicU64,
}

impl datapath::Meter for Counting {
    fn moved(&self, to_upstream: bool, bytes: u64) {
        let c = if to_upstream {
            &self.to_upstream
        } else {
            &self.to_client
        };
        c.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Counting {
    fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.to_upstream.load(Relaxed), self.to_client.load(Relaxed))
    }
}

/// A meter sees the bytes of an open connection as they move (not only when it closes),
/// whatever the strategy, and its totals equal the relay's own count at the end.
#[tokio::test]
async fn a_meter_sees_bytes_while_the_connection_is_open() {
    for strategy in STRATEGIES {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(proxy.local_addr().unwrap())
            .await
            .unwrap();
        let (proxied_client, _) = proxy.accept().await.unwrap();
        let proxied_up = TcpStream::connect(up.local_addr().unwrap()).await.unwrap();
        let (mut upstream, _) = up.accept().await.unwrap();
        let meter = std::sync::Arc::new(Counting::default());
        let relay = tokio::spawn({
            let meter = meter.clone();
            async move {
                let options = opts(strategy);
                datapath::relay_metered(proxied_client, proxied_up, &options, &*meter).await
            }
        });
        let request = random_bytes(300_000, 7);
        client.write_all(&request).await.unwrap();
        let mut got = vec![0u8; request.len()];
        upstream.read_exact(&mut got).await.unwrap();
        upstream.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while meter.get() != (300_000, 6) {
            assert!(
                Instant::now() < deadline,
                "{strategy:?}: meter saw {:?} of (300000, 6) on an open connection",
                meter.get()
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(client);
        drop(upstream);
        let stats = relay.await.unwrap().unwrap();
        assert_eq!(
            meter.get(),
            (stats.client_to_upstream, stats.upstream_to_client),
            "{strategy:?}"
        );
    }
}
