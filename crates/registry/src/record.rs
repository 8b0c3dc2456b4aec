//! The instance record: the JSON value stored under each registration key.
//!
//! Field names follow SmartStack's nerve so that records written by other tools load too.
//! Unknown fields are ignored (other writers may add their own); known fields are checked
//! strictly, and a record that fails is reported with the reason so the caller can skip it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::untrusted::Untrusted;

/// The weight an instance gets when its record names none.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Largest value read as a record: a record is a few hundred bytes, and a consumer must not
/// pay for whatever anyone with write access stores under the prefix.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Longest `host`, `name` or `zone` (a DNS name is at most 253 bytes).
pub const MAX_FIELD_BYTES: usize = 255;

/// One registered instance of a service, as consumers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// IP address or DNS name that consumers dial.
    pub host: String,
    /// TCP port that consumers dial, 1-65535.
    pub port: u16,
    /// The instance id (the last segment of the key).
    pub name: String,
    /// Relative share of new connections; 0 means no new connections.
    pub weight: u32,
    /// Failure domain, for zone-affine balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Why a stored value is not a valid [`InstanceRecord`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("value is {0} bytes, more than the {MAX_RECORD_BYTES}-byte limit of a record")]
    TooLarge(usize),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// What is read off the wire before validation: every known field, loosely typed, so that
/// each problem can be named precisely.
#[derive(Deserialize)]
struct RawRecord {
    host: Option<serde_json::Value>,
    port: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
    weight: Option<serde_json::Value>,
    zone: Option<serde_json::Value>,
    labels: Option<serde_json::Value>,
}

impl InstanceRecord {
    /// Parses and validates a stored value. `instance_id` (from the key) fills `name` when
    /// the record has none, as a hand-written record may.
    pub fn parse(value: &[u8], instance_id: &str) -> Result<Self, RecordError> {
        if value.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(value.len()));
        }
        let raw: RawRecord = match serde_json::from_slice::<serde_json::Value>(value) {
            Ok(v @ serde_json::Value::Object(_)) => {
                serde_json::from_value(v).map_err(|e| RecordError::Json(e.to_string()))?
            }
            Ok(other) => {
                return Err(RecordError::Json(format!(
                    "expected a JSON object, found {}",
                    json_kind(&other)
                )))
            }
            Err(e) => return Err(RecordError::Json(e.to_string())),
        };
        let host = match raw.host {
            None | Some(serde_json::Value::Null) => return Err(RecordError::Missing("host")),
            Some(v) => string_field("host", v)?,
        };
        if host.is_empty()
            || host.len() > MAX_FIELD_BYTES
            || host.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "host",
                format!("{} is not a host name or IP address", Untrusted::str(&host)),
            ));
        }
        let port = match raw.port {
            None | Some(serde_json::Value::Null) => return Err(RecordError::Missing("port")),
            Some(v) => integer_field("port", v, 1, u16::MAX as u64)? as u16,
        };
        let name = match raw.name {
            None | Some(serde_json::Value::Null) => instance_id.to_owned(),
            Some(v) => one_line_field("name", v)?,
        };
        let weight = match raw.weight {
            None | Some(serde_json::Value::Null) => DEFAULT_WEIGHT,
            Some(v) => integer_field("weight", v, 0, u32::MAX as u64)? as u32,
        };
        let zone = match raw.zone {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(one_line_field("zone", v)?),
        };
        let labels = match raw.labels {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => Ok((k, s)),
                    other => Err(invalid(
                        "labels",
                        format!(
                            "value of {k:?} must be a string, found {}",
                            json_kind(&other)
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(invalid(
                    "labels",
                    format!("must be an object of strings, found {}", json_kind(&other)),
                ))
            }
        };
        Ok(InstanceRecord {
            host,
            port,
            name,
            weight,
            zone,
            labels,
        })
    }

    /// The JSON stored in etcd. Serialising this struct cannot fail (string keys only).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A string field that is printed in logs and `/status`: short, on one line.
fn one_line_field(field: &'static str, v: serde_json::Value) -> Result<String, RecordError> {
    let text = string_field(field, v)?;
    if text.len() > MAX_FIELD_BYTES || text.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!(
                "{} must be at most {MAX_FIELD_BYTES} bytes without control characters",
                Untrusted::str(&text)
            ),
        ));
    }
    Ok(text)
}

fn invalid(field: &'static str, problem: String) -> RecordError {
    RecordError::Invalid { field, problem }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn string_field(field: &'static str, v: serde_json::Value) -> Result<String, RecordError> {
    match v {
        serde_json::Value::String(s) => Ok(s),
        other => Err(invalid(
            field,
            format!("must be a string, found {}", json_kind(&other)),
        )),
    }
}

fn integer_field(
    field: &'static str,
    v: serde_json::Value,
    min: u64,
    max: u64,
) -> Result<u64, RecordError> {
    let n = match &v {
        serde_json::Value::Number(n) => n.as_u64(),
        _ => {
            return Err(invalid(
                field,
                format!("must be an integer, found {}", json_kind(&v)),
            ))
        }
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            field,
            format!("must be an integer from {min} to {max}, found {v}"),
        )),
    }
}

/// A record on loopback at `port` with the defaults, named `i<port>`: what the pure tests of
/// the modules reading records use.
#[cfg(test)]
pub(crate) fn test_record(port: u16) -> InstanceRecord {
    InstanceRecord {
        host: "127.0.0.1".into(),
        port,
        name: format!("i{port}"),
        weight: DEFAULT_WEIGHT,
        zone: None,
        labels: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<InstanceRecord, RecordError> {
        InstanceRecord::parse(s.as_bytes(), "key-id")
    }

    #[test]
    fn a_full_record_parses() {
        let r = parse(
            r#"{"host":"10.0.0.5","port":8080,"name":"web-1","weight":50,"zone":"a","labels":{"v":"2"}}"#,
        )
        .unwrap();
        assert_eq!(r.host, "10.0.0.5");
        assert_eq!(r.port, 8080);
        assert_eq!(r.name, "web-1");
        assert_eq!(r.weight, 50);
        assert_eq!(r.zone.as_deref(), Some("a"));
        assert_eq!(r.labels.get("v").map(String::as_str), Some("2"));
    }

    #[test]
    fn a_minimal_hand_written_record_gets_defaults() {
        let r = parse(r#"{"host":"db.internal","port":5432}"#).unwrap();
        assert_eq!(r.name, "key-id");
        assert_eq!(r.weight, DEFAULT_WEIGHT);
        assert_eq!(r.zone, None);
        assert!(r.labels.is_empty());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = parse(r#"{"host":"h","port":1,"haproxy_server_options":"backup"}"#).unwrap();
        assert_eq!(r.port, 1);
    }

    #[test]
    fn every_malformed_case_is_rejected_with_its_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "not valid JSON"),
            ("{", "not valid JSON"),
            ("[1,2]", "expected a JSON object, found an array"),
            ("\"host\"", "expected a JSON object, found a string"),
            (r#"{"port":80}"#, "missing required field `host`"),
            (r#"{"host":"h"}"#, "missing required field `port`"),
            (
                r#"{"host":null,"port":80}"#,
                "missing required field `host`",
            ),
            (r#"{"host":5,"port":80}"#, "field `host` must be a string"),
            (
                r#"{"host":"","port":80}"#,
                "field `host` \"\" is not a host",
            ),
            (
                r#"{"host":"a b","port":80}"#,
                "field `host` \"a b\" is not a host",
            ),
            (
                r#"{"host":"h","port":"80"}"#,
                "field `port` must be an integer, found a string",
            ),
            (
                r#"{"host":"h","port":0}"#,
                "field `port` must be an integer from 1 to 65535, found 0",
            ),
            (r#"{"host":"h","port":65536}"#, "found 65536"),
            (r#"{"host":"h","port":-1}"#, "found -1"),
            (r#"{"host":"h","port":80.5}"#, "found 80.5"),
            (r#"{"host":"h","port":80,"weight":-1}"#, "field `weight`"),
            (
                r#"{"host":"h","port":80,"weight":"x"}"#,
                "field `weight` must be an integer",
            ),
            (
                r#"{"host":"h","port":80,"name":1}"#,
                "field `name` must be a string",
            ),
            (
                r#"{"host":"h","port":80,"zone":[]}"#,
                "field `zone` must be a string",
            ),
            (
                r#"{"host":"h","port":80,"labels":"x"}"#,
                "field `labels` must be an object",
            ),
            (
                r#"{"host":"h","port":80,"labels":{"a":1}}"#,
                "value of \"a\" must be a string",
            ),
            (
                r#"{"host":"h","port":80,"zone":"a\nb"}"#,
                "field `zone` \"a\\nb\" must be at most 255 bytes",
            ),
            (r#"{"host":"h","port":80,"name":"a\u0000"}"#, "field `name`"),
        ];
        for (input, reason) in cases {
            match parse(input) {
                Ok(r) => panic!("{input:?} parsed as {r:?}"),
                Err(e) => assert!(
                    e.to_string().contains(reason),
                    "{input:?}: error {e} does not say {reason:?}"
                ),
            }
        }
    }

    #[test]
    fn oversized_values_and_hosts_are_refused_without_echoing_them() {
        let host = "h".repeat(1_000_000);
        let big = format!(r#"{{"host":"{host}","port":80}}"#);
        assert_eq!(parse(&big).unwrap_err(), RecordError::TooLarge(big.len()));
        let long_host = format!(r#"{{"host":"{}","port":80}}"#, "h".repeat(300));
        let e = parse(&long_host).unwrap_err().to_string();
        assert!(e.contains("is not a host name") && e.len() < 200, "{e}");
        let just_fits = format!(
            r#"{{"host":"h","port":80,"labels":{{"a":"{}"}}}}"#,
            "x".repeat(MAX_RECORD_BYTES - 40)
        );
        assert!(parse(&just_fits).is_ok());
    }

    fn any_record() -> impl Strategy<Value = InstanceRecord> {
        (
            "[a-z0-9.-]{1,30}",
            1u16..,
            "[a-z0-9:-]{1,20}",
            any::<u32>(),
            proptest::option::of("[a-z0-9-]{1,10}"),
            proptest::collection::btree_map("[a-z]{1,5}", ".{0,10}", 0..4),
        )
            .prop_map(|(host, port, name, weight, zone, labels)| InstanceRecord {
                host,
                port,
                name,
                weight,
                zone,
                labels,
            })
    }

    proptest! {
        #[test]
        fn serialised_records_parse_back_unchanged(r in any_record()) {
            let json = r.to_json();
            prop_assert_eq!(InstanceRecord::parse(json.as_bytes(), "other").unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = InstanceRecord::parse(&bytes, "x");
        }
    }
}
