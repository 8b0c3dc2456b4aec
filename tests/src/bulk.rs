//! Many registrations at once, as a deploy or an etcd rebuild produces them: written in
//! transactions of [`TXN_OPS`] puts (etcd's default `--max-txn-ops` is 128), so 10,000
//! records take about a second, not 10,000 `etcdctl` runs.

use etcd_client::{Client, Txn, TxnOp};

/// Puts per transaction.
pub const TXN_OPS: usize = 100;

/// A record of the size real ones have (~540 bytes): labels as a deploy system writes them.
pub fn realistic_record(i: usize, host: &str, port: u16) -> String {
    let sha = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let short = i.wrapping_mul(2_654_435_761) as u32;
    let labels = format!(
        concat!(
            r#"{{"version":"2026.11.{i:05}","sha":"{sha:040x}","#,
            r#""image":"registry.internal.example/platform/web-frontend:2026.11.{i:05}-{short:08x}","#,
            r#""team":"platform-web-frontend","pod":"web-frontend-7d9f8c6b5-{i:08}","#,
            r#""node":"ip-198-18-{a}-{b}.eu-west-1.compute.internal","#,
            r#""owner":"web-frontend-oncall@example.com","deployed_by":"deployer-pipeline-{i:06}","#,
            r#""cluster":"prod-eu-west-1-blue","region":"eu-west-1","tier":"frontend"}}"#,
        ),
        i = i,
        sha = sha,
        short = short,
        a = (i / 256) % 256,
        b = i % 256,
    );
    format!(
        r#"{{"host":"{host}","port":{port},"name":"web-{i}","weight":100,"zone":"zone-{zone}","labels":{labels}}}"#,
        zone = i % 3,
    )
}

/// Writes every (key, value) through `endpoint`, in transactions; panics on failure
/// (tests only).
pub async fn put_all(endpoint: &str, kvs: Vec<(String, String)>) {
    let mut client = Client::connect([endpoint], None)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
    for chunk in kvs.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .unwrap_or_else(|e| panic!("bulk put through {endpoint}: {e}"));
    }
}
