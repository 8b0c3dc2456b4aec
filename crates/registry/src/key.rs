//! Key layout: `<prefix>/<service>/<instance_id>`, default prefix `/smartstack/services`.
//!
//! Service names and instance ids are single path segments: non-empty, at most
//! [`MAX_SEGMENT_BYTES`], no `/`, no white space or control characters, so a key always
//! splits back into exactly one (service, instance) and prints on one line.

use crate::untrusted::Untrusted;

/// The prefix under which every registration lives unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/smartstack/services";

/// Longest service name or instance id (a DNS name plus a port fits).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a service name, instance id or prefix cannot be part of a key. The text names the
/// value escaped and clipped (it may come from the registry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{what} must not be empty")]
    EmptySegment { what: String },
    #[error("{what} {shown} is {len} bytes long, more than {MAX_SEGMENT_BYTES}")]
    SegmentTooLong {
        what: String,
        shown: String,
        len: usize,
    },
    #[error("{what} {shown} must not contain '/'")]
    SegmentWithSlash { what: String, shown: String },
    #[error("{what} {shown} must not contain white space or control characters")]
    SegmentWithSpace { what: String, shown: String },
    #[error("prefix {prefix:?} must start with '/'")]
    PrefixNotAbsolute { prefix: String },
    #[error("prefix {prefix:?} must not end with '/'")]
    PrefixTrailingSlash { prefix: String },
    #[error("prefix {prefix:?} must not contain '//'")]
    PrefixEmptySegment { prefix: String },
}

/// For callers that keep the message as text (`FieldError::new(key, error)`).
impl From<KeyError> for String {
    fn from(e: KeyError) -> String {
        e.to_string()
    }
}

/// Checks that `value` can be one segment of a key; `what` names it in the error.
pub fn check_segment(what: &str, value: &str) -> Result<(), KeyError> {
    let shown = || Untrusted::str(value).to_string();
    let what = what.to_owned();
    if value.is_empty() {
        return Err(KeyError::EmptySegment { what });
    }
    if value.len() > MAX_SEGMENT_BYTES {
        let len = value.len();
        return Err(KeyError::SegmentTooLong {
            what,
            shown: shown(),
            len,
        });
    }
    if value.contains('/') {
        return Err(KeyError::SegmentWithSlash {
            what,
            shown: shown(),
        });
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyError::SegmentWithSpace {
            what,
            shown: shown(),
        });
    }
    Ok(())
}

/// Checks a configured prefix: absolute, no trailing slash, no empty segments.
pub fn check_prefix(prefix: &str) -> Result<(), KeyError> {
    let owned = || prefix.to_owned();
    if !prefix.starts_with('/') {
        return Err(KeyError::PrefixNotAbsolute { prefix: owned() });
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Err(KeyError::PrefixTrailingSlash { prefix: owned() });
    }
    if prefix.len() > 1 && prefix[1..].split('/').any(str::is_empty) {
        return Err(KeyError::PrefixEmptySegment { prefix: owned() });
    }
    Ok(())
}

/// `<prefix>/<service>/`: the etcd prefix that holds every instance of `service`.
pub fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{}/{service}/", prefix.trim_end_matches('/'))
}

/// `<prefix>/<service>/<instance_id>`: the key of one registration.
pub fn instance_key(prefix: &str, service: &str, instance_id: &str) -> String {
    format!("{}{instance_id}", service_prefix(prefix, service))
}

/// The instance id of `key` if it lies directly under `service_prefix` (as made by
/// [`service_prefix`]); `None` for keys deeper down or with an empty id.
pub fn instance_id<'k>(service_prefix: &str, key: &'k str) -> Option<&'k str> {
    let id = key.strip_prefix(service_prefix)?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(
            instance_key(DEFAULT_PREFIX, "web", "web-1"),
            "/smartstack/services/web/web-1"
        );
        assert_eq!(service_prefix("/custom", "db"), "/custom/db/");
    }

    #[test]
    fn deeper_or_empty_keys_are_not_instances() {
        let p = service_prefix(DEFAULT_PREFIX, "web");
        assert_eq!(instance_id(&p, "/smartstack/services/web/a"), Some("a"));
        assert_eq!(instance_id(&p, "/smartstack/services/web/"), None);
        assert_eq!(instance_id(&p, "/smartstack/services/web/a/b"), None);
        assert_eq!(instance_id(&p, "/smartstack/services/webx/a"), None);
    }

    #[test]
    fn segments_and_prefixes_are_validated() {
        assert!(check_segment("service", "web").is_ok());
        assert!(check_segment("service", "10.0.0.5:8080").is_ok());
        assert!(check_segment("service", "").is_err());
        assert!(check_segment("service", "a/b").is_err());
        assert!(check_segment("service", "a b").is_err());
        assert!(check_segment("id", "a\nb").is_err());
        assert!(check_segment("id", &"a".repeat(MAX_SEGMENT_BYTES)).is_ok());
        let long = check_segment("id", &"a".repeat(100_000))
            .unwrap_err()
            .to_string();
        assert!(
            long.contains("100000 bytes long") && long.len() < 300,
            "{long}"
        );
        assert!(check_prefix("/smartstack/services").is_ok());
        assert!(check_prefix("smartstack").is_err());
        assert!(check_prefix("/smartstack/").is_err());
        assert!(check_prefix("/a//b").is_err());
    }

    /// The typed errors print exactly the texts the String versions always had (tests and
    /// operators match on them).
    #[test]
    fn typed_errors_keep_their_texts() {
        let text = |r: Result<(), KeyError>| r.unwrap_err().to_string();
        assert_eq!(
            text(check_segment("service", "")),
            "service must not be empty"
        );
        assert_eq!(
            text(check_segment("id", "a/b")),
            "id \"a/b\" must not contain '/'"
        );
        assert_eq!(
            text(check_segment("id", "a b")),
            "id \"a b\" must not contain white space or control characters"
        );
        assert_eq!(text(check_prefix("x")), "prefix \"x\" must start with '/'");
        assert_eq!(
            text(check_prefix("/x/")),
            "prefix \"/x/\" must not end with '/'"
        );
        assert_eq!(
            text(check_prefix("/a//b")),
            "prefix \"/a//b\" must not contain '//'"
        );
    }

    proptest! {
        #[test]
        fn a_key_splits_back_into_its_instance(service in "[a-z0-9_.:-]{1,20}", id in "[a-zA-Z0-9_.:-]{1,30}") {
            let key = instance_key(DEFAULT_PREFIX, &service, &id);
            let prefix = service_prefix(DEFAULT_PREFIX, &service);
            prop_assert_eq!(instance_id(&prefix, &key), Some(id.as_str()));
        }
    }
}
