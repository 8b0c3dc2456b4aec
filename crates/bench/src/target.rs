//! The service in etcd that `register` and `probe` write to, named on the command line the
//! same way for both; keys and records come from the registry contract, not from here.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use anyhow::Context;
use registry::{key, InstanceRecord};

#[derive(Debug, clap::Args)]
pub struct Target {
    #[arg(long)]
    pub etcd: String,
    #[arg(long, default_value = key::DEFAULT_PREFIX)]
    pub prefix: String,
    #[arg(long)]
    pub service: String,
}

impl Target {
    pub async fn connect(&self) -> anyhow::Result<etcd_client::Client> {
        etcd_client::Client::connect([self.etcd.as_str()], None)
            .await
            .with_context(|| format!("cannot reach etcd at {}", self.etcd))
    }

    /// `<prefix>/<service>/`: every instance of the service.
    pub fn service_prefix(&self) -> String {
        key::service_prefix(&self.prefix, &self.service)
    }

    pub fn key(&self, instance_id: &str) -> String {
        key::instance_key(&self.prefix, &self.service, instance_id)
    }

    /// The record of an instance on 127.0.0.1:`port`, as nerve would write it.
    pub fn record(instance_id: &str, port: u16) -> String {
        InstanceRecord {
            host: "127.0.0.1".into(),
            port,
            name: instance_id.into(),
            weight: registry::record::DEFAULT_WEIGHT,
            zone: None,
            labels: BTreeMap::new(),
        }
        .to_json()
    }
}
