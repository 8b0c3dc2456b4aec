//! The contract between `nerve` and `synapse`, and the etcd plumbing both of them need.
//!
//! Layout, one file per concept:
//! - [`key`]: where registrations live in etcd (`<prefix>/<service>/<instance_id>`).
//! - [`record`]: the JSON value stored under each key ([`InstanceRecord`]) and its validation.
//! - [`config`]: configuration pieces both programs share: the `etcd:` block, durations
//!   written as `"500ms"`/`"2s"`, and YAML loading whose errors name the file and the key.
//! - `yaml_lines`: where a key is written in a YAML text, so errors name its line.
//! - [`backoff`]: jittered exponential backoff, a pure calculation.
//! - [`etcd`]: an [`Etcd`] handle that connects lazily, rotates across endpoints and retries
//!   transient failures, because etcd-client itself does neither.
//! - [`lease`]: one lease kept alive for a process, replaced when etcd loses it.
//! - [`untrusted`]: registry text made safe to print (escaped, clipped).
//! - [`snapshot`]: a consistent read of a whole prefix, in pages, whatever its size.
//! - [`grace`]: the grace period that keeps instances a resync says are gone (a rebuilt,
//!   rewound or different etcd) while the registry refills; a pure decision.
//! - [`import`]: what the `--import-smartstack` converters of both programs share: an Airbnb
//!   SmartStack JSON file read as a tree whose nodes know their JSON path, keys used or
//!   warned about, and the YAML pieces both write.
//! - [`discovery`]: the instances of one service, kept current by get + watch with resync,
//!   published on a `tokio::sync::watch` channel.
//!
//! Everything here is written down for operators in `docs/registry.md`.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod discovery;
pub mod etcd;
pub mod grace;
pub mod import;
pub mod key;
pub mod lease;
pub mod record;
pub mod snapshot;
pub mod untrusted;
mod yaml_lines;

pub use config::{ConfigDuration, ConfigError, EtcdConfig};
pub use etcd::Etcd;
pub use record::{InstanceRecord, RecordError};
