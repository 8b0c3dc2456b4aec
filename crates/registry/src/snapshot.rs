//! A consistent read of every key under a prefix, however much it holds.
//!
//! One `get` of a whole prefix fails once its answer passes the client's message limit
//! (4 MiB by default: ~8,000 ordinary records, or a few junk values), and then a consumer
//! never learns any instance. So the prefix is read in pages: `limit` keys at a time, each
//! page continuing after the last key of the one before, every page pinned to the revision
//! of the first so that together they are one snapshot. A page whose answer is still too
//! large (big values) is asked again with half the keys, down to one; a single value too
//! large to receive at all is skipped by key (read with `keys_only`), like any invalid record.

use std::time::Duration;

use etcd_client::{GetOptions, KeyValue};

/// Keys asked for per page: ~0.5 MiB of ordinary records.
pub const PAGE_KEYS: i64 = 1000;

/// Largest answer accepted for one page. Above etcd's default request limit (1.5 MiB), so a
/// page of values etcd accepted is received; bounded, so junk cannot cost unbounded memory.
pub const PAGE_BYTES: usize = 16 * 1024 * 1024;

/// Everything under a prefix at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    /// etcd's cluster id, to notice a different cluster answering.
    pub cluster_id: u64,
    pub kvs: Vec<KeyValue>,
    /// Keys whose value alone was too large to receive; not in `kvs`.
    pub unreadable: Vec<Vec<u8>>,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("get {prefix} (page {page}) took longer than {limit:?}")]
    Timeout {
        prefix: String,
        page: usize,
        limit: Duration,
    },
    #[error("get {prefix} (page {page}): {source}")]
    Etcd {
        prefix: String,
        page: usize,
        #[source]
        source: etcd_client::Error,
    },
    #[error("get {prefix}: answer without a header")]
    NoHeader { prefix: String },
}

impl SnapshotError {
    /// Whether etcd did not answer (down, partitioned, hung), rather than answering with
    /// an error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            SnapshotError::Timeout { .. } => true,
            SnapshotError::Etcd { source, .. } => crate::etcd::is_transient(source),
            SnapshotError::NoHeader { .. } => false,
        }
    }

    /// The underlying etcd error, to tell a transient failure from a refusal.
    pub fn etcd_error(&self) -> Option<&etcd_client::Error> {
        match self {
            SnapshotError::Etcd { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Whether `e` says the answer was larger than the client accepts.
pub fn is_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large"))
}

/// The end of the range of keys starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): the range runs to the end of the key space.
    vec![0]
}

/// The first key after `key` in etcd's byte order.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The page size to use after a page of `limit` keys came back too large (`None`: a
/// single key is already too large) or was received (`Some` bigger, back towards
/// [`PAGE_KEYS`]).
pub fn next_limit(limit: i64, too_large: bool) -> Option<i64> {
    if too_large {
        (limit > 1).then_some(limit / 2)
    } else {
        Some((limit * 2).min(PAGE_KEYS))
    }
}

/// Reads every key under `prefix` at one revision; each page has `timeout`.
pub async fn read(
    client: &etcd_client::Client,
    prefix: &str,
    timeout: Duration,
) -> Result<Snapshot, SnapshotError> {
    let mut kv = client.kv_client().max_decoding_message_size(PAGE_BYTES);
    let end = prefix_end(prefix.as_bytes());
    let mut snapshot = Snapshot::default();
    let mut start = prefix.as_bytes().to_vec();
    let mut limit = PAGE_KEYS;
    let mut page = 0;
    loop {
        page += 1;
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if snapshot.revision > 0 {
            options = options.with_revision(snapshot.revision);
        }
        let answer = tokio::time::timeout(timeout, kv.get(start.clone(), Some(options)))
            .await
            .map_err(|_| SnapshotError::Timeout {
                prefix: prefix.to_owned(),
                page,
                limit: timeout,
            })?;
        let mut response = match answer {
            Ok(r) => r,
            Err(e) if is_too_large(&e) => {
                match next_limit(limit, true) {
                    Some(smaller) => limit = smaller,
                    None => {
                        // One value alone is too large: learn its key and go on after it.
                        let options = GetOptions::new()
                            .with_range(end.clone())
                            .with_limit(1)
                            .with_keys_only()
                            .with_revision(snapshot.revision);
                        let keys =
                            tokio::time::timeout(timeout, kv.get(start.clone(), Some(options)))
                                .await
                                .map_err(|_| SnapshotError::Timeout {
                                    prefix: prefix.to_owned(),
                                    page,
                                    limit: timeout,
                                })?
                                .map_err(|source| SnapshotError::Etcd {
                                    prefix: prefix.to_owned(),
                                    page,
                                    source,
                                })?;
                        let Some(key) = keys.kvs().first().map(|kv| kv.key().to_vec()) else {
                            return Err(SnapshotError::Etcd {
                                prefix: prefix.to_owned(),
                                page,
                                source: e,
                            });
                        };
                        start = key_after(&key);
                        snapshot.unreadable.push(key);
                    }
                }
                continue;
            }
            Err(source) => {
                return Err(SnapshotError::Etcd {
                    prefix: prefix.to_owned(),
                    page,
                    source,
                })
            }
        };
        let header = response.header().ok_or_else(|| SnapshotError::NoHeader {
            prefix: prefix.to_owned(),
        })?;
        if snapshot.revision == 0 {
            snapshot.revision = header.revision();
            snapshot.cluster_id = header.cluster_id();
        }
        let more = response.more();
        let kvs = response.take_kvs();
        let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else {
            return Ok(snapshot);
        };
        snapshot.kvs.extend(kvs);
        if !more {
            return Ok(snapshot);
        }
        start = key_after(&last);
        limit = next_limit(limit, false).unwrap_or(PAGE_KEYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/s/web/"), b"/s/web0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn a_page_too_large_is_halved_down_to_one_key_then_grows_back() {
        assert_eq!(next_limit(PAGE_KEYS, true), Some(PAGE_KEYS / 2));
        assert_eq!(next_limit(1, true), None);
        assert_eq!(next_limit(8, false), Some(16));
        assert_eq!(next_limit(PAGE_KEYS, false), Some(PAGE_KEYS));
    }

    proptest! {
        /// Every key that starts with the prefix sorts in [prefix, prefix_end), and
        /// `key_after` is the next possible key.
        #[test]
        fn the_range_holds_the_prefixed_keys(
            prefix in proptest::collection::vec(any::<u8>(), 1..6),
            rest in proptest::collection::vec(any::<u8>(), 0..6),
        ) {
            let key = [prefix.clone(), rest].concat();
            let end = prefix_end(&prefix);
            prop_assert!(key.as_slice() >= prefix.as_slice());
            prop_assert!(end == vec![0] || key < end);
            prop_assert!(key_after(&key) > key);
        }
    }
}
