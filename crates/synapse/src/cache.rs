//! The cache file: the last backend set etcd gave for every service, so that a synapse
//! restarted while etcd is unreachable (or hung) serves at once instead of waiting.
//!
//! It is rewritten whenever a service's view from etcd changes, atomically (a temporary
//! file in the same directory, fsync, rename), so a crash mid-write leaves the previous
//! version. Writes happen on a background task that always writes the newest state: a
//! burst of registry events costs a few writes, not one per event. A write that fails
//! (directory missing or read-only, disk full) is retried with backoff until it succeeds,
//! without waiting for the registry to change again. A cache file that cannot be read or
//! parsed is ignored with a warning: it is an optimisation, never a reason not to start.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use registry::backoff::Backoff;
use registry::discovery::Instances;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Format version of the file; a different version is ignored.
const VERSION: u32 = 1;

/// Retries of a failed write: soon for a passing hiccup, at most every 5 s for a directory
/// that stays unwritable (each attempt is one failed `open`, cheap).
const RETRY: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// How long the writer task waits at most before checking whether its writer is gone.
const CHECK_DROPPED: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub version: u32,
    pub services: BTreeMap<String, CachedService>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedService {
    /// etcd revision the instances reflect.
    pub revision: i64,
    pub instances: Instances,
}

/// Why a cache file cannot be used (it is then ignored: it is only a cache).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a cache file", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has version {found}, expected {VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
}

/// Reads the cache file; a missing file is an empty cache, a broken one an error.
pub fn read(path: &Path) -> Result<BTreeMap<String, CachedService>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            let path = path.to_owned();
            return Err(CacheError::Read { path, source });
        }
    };
    let file: CacheFile = serde_json::from_slice(&bytes).map_err(|source| CacheError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if file.version != VERSION {
        return Err(CacheError::Version {
            path: path.to_owned(),
            found: file.version,
        });
    }
    Ok(file.services)
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every file system allows syncing a directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Keeps the cache file in line with the views it is given.
pub struct CacheWriter {
    path: PathBuf,
    state: Mutex<BTreeMap<String, CachedService>>,
    dirty: Notify,
    failed_writes: AtomicU64,
}

impl CacheWriter {
    /// Starts the writer task; `initial` is what the file holds now, so that services not
    /// yet heard from keep their entries.
    pub fn start(path: PathBuf, initial: BTreeMap<String, CachedService>) -> Arc<Self> {
        let writer = Arc::new(CacheWriter {
            path,
            state: Mutex::new(initial),
            dirty: Notify::new(),
            failed_writes: AtomicU64::new(0),
        });
        tokio::spawn(Self::run(Arc::downgrade(&writer)));
        writer
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every service's entry as the writer holds it (what the file holds once written).
    pub fn entries(&self) -> BTreeMap<String, CachedService> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Writes the file even though nothing changed since `start` (its initial state did
    /// not come from this file).
    pub fn write_soon(&self) {
        self.dirty.notify_one();
    }

    /// Writes that failed so far (each retry counts).
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    /// Records the current instances of `service`.
    pub fn store(&self, service: &str, instances: Arc<Instances>, revision: i64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = CachedService {
            revision,
            instances: instances.as_ref().clone(),
        };
        if state.get(service).map(|e| &e.instances) != Some(&entry.instances) {
            state.insert(service.to_owned(), entry);
            self.dirty.notify_one();
        }
    }

    /// Forgets a service that is no longer configured.
    pub fn remove(&self, service: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.remove(service).is_some() {
            self.dirty.notify_one();
        }
    }

    /// The file to write. Cheap: the instance maps are shared, not copied; serialising
    /// them (megabytes for a large service) is left to the blocking pool.
    fn snapshot(&self) -> CacheFile {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        CacheFile {
            version: VERSION,
            services: state.clone(),
        }
    }

    async fn run(writer: std::sync::Weak<Self>) {
        let mut failures = RETRY.start();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let Some(w) = writer.upgrade() else { return };
            let due = {
                // Wake up now and then without keeping the writer alive, so dropping it
                // ends this task.
                let check = tokio::time::Instant::now() + CHECK_DROPPED;
                let wake = retry_at.map_or(check, |at| at.min(check));
                tokio::select! {
                    _ = w.dirty.notified() => true,
                    _ = tokio::time::sleep_until(wake) => {
                        retry_at.is_some_and(|at| tokio::time::Instant::now() >= at)
                    }
                }
            };
            if !due {
                drop(w);
                continue;
            }
            let file = w.snapshot();
            let path = w.path.clone();
            match tokio::task::spawn_blocking(move || {
                let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
                write_atomic(&path, &bytes).map_err(|e| (path, e))
            })
            .await
            {
                Ok(Ok(())) => {
                    if failures.failures() > 0 {
                        tracing::info!(path = %w.path.display(), "cache file written again");
                    }
                    failures.reset();
                    retry_at = None;
                }
                Ok(Err((path, e))) => {
                    w.failed_writes.fetch_add(1, Ordering::Relaxed);
                    let delay = failures.next_delay();
                    // Once per failing spell, not once per retry.
                    if failures.failures() == 1 {
                        tracing::warn!(
                            path = %path.display(), error = %e,
                            "cannot write the cache file; retrying with backoff"
                        );
                    } else {
                        tracing::debug!(
                            path = %path.display(), error = %e, retry_in = ?delay,
                            "cache file still not writable"
                        );
                    }
                    retry_at = Some(tokio::time::Instant::now() + delay);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache writer task failed");
                    retry_at = Some(tokio::time::Instant::now() + failures.next_delay());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::InstanceRecord;

    fn instances(port: u16) -> Arc<Instances> {
        let mut i = Instances::new();
        i.insert(
            "a".into(),
            Arc::new(InstanceRecord {
                host: "127.0.0.1".into(),
                port,
                name: "a".into(),
                weight: 100,
                zone: Some("z".into()),
                labels: BTreeMap::new(),
            }),
        );
        Arc::new(i)
    }

    #[tokio::test]
    async fn the_file_follows_the_views_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        assert_eq!(read(&path).unwrap(), BTreeMap::new());
        let w = CacheWriter::start(path.clone(), BTreeMap::new());
        w.store("web", instances(1), 5);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Ok(c) = read(&path) {
                if c.get("web").map(|s| s.instances.clone()) == Some(instances(1).as_ref().clone())
                {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "cache never written");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        w.remove("web");
        loop {
            if read(&path).is_ok_and(|c| c.is_empty()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cache entry never removed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The directory appears only after the first write failed: the file follows without
    /// any further change to store.
    #[tokio::test]
    async fn a_failed_write_is_retried_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("later");
        let path = later.join("cache.json");
        let w = CacheWriter::start(path.clone(), BTreeMap::new());
        w.store("web", instances(1), 5);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while w.failed_writes() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never failed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        std::fs::create_dir(&later).unwrap();
        loop {
            if let Ok(c) = read(&path) {
                if c.get("web").map(|s| s.instances.clone()) == Some(instances(1).as_ref().clone())
                {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cache never written after the directory appeared"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_broken_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        std::fs::write(&path, "{half").unwrap();
        let e = read(&path).unwrap_err();
        assert!(matches!(e, CacheError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("not a cache file"), "{e}");
        std::fs::write(&path, r#"{"version": 9, "services": {}}"#).unwrap();
        let e = read(&path).unwrap_err();
        assert!(matches!(e, CacheError::Version { found: 9, .. }), "{e}");
        assert!(e.to_string().contains("version 9"), "{e}");
    }
}
