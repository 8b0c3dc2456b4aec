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

/// Checks that `value` can be one segment of a key; `what` names it in the error (which
/// shows the value escaped and clipped: it may come from the registry).
pub fn validate_segment(what: &str, value: &str) -> Result<(), String> {
    let shown = Untrusted::str(value);
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_SEGMENT_BYTES {
        return Err(format!(
            "{what} {shown} is {} bytes long, more than {MAX_SEGMENT_BYTES}",
            value.len()
        ));
    }
    if value.contains('/') {
        return Err(format!("{what} {shown} must not contain '/'"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what} {shown} must not contain white space or control characters"
        ));
    }
    Ok(())
}

/// Checks a configured prefix: absolute, no trailing slash, no empty segments.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?} must start with '/'"));
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Err(format!("prefix {prefix:?} must not end with '/'"));
    }
    if prefix.len() > 1 && prefix[1..].split('/').any(str::is_empty) {
        return Err(format!("prefix {prefix:?} must not contain '//'"));
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
        assert!(validate_segment("service", "web").is_ok());
        assert!(validate_segment("service", "10.0.0.5:8080").is_ok());
        assert!(validate_segment("service", "").is_err());
        assert!(validate_segment("service", "a/b").is_err());
        assert!(validate_segment("service", "a b").is_err());
        assert!(validate_segment("id", "a\nb").is_err());
        assert!(validate_segment("id", &"a".repeat(MAX_SEGMENT_BYTES)).is_ok());
        let long = validate_segment("id", &"a".repeat(100_000)).unwrap_err();
        assert!(
            long.contains("100000 bytes long") && long.len() < 300,
            "{long}"
        );
        assert!(validate_prefix("/smartstack/services").is_ok());
        assert!(validate_prefix("smartstack").is_err());
        assert!(validate_prefix("/smartstack/").is_err());
        assert!(validate_prefix("/a//b").is_err());
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
