//! What the `--import-smartstack` converters of nerve and synapse share: reading an Airbnb
//! SmartStack JSON file into a tree whose every node knows its JSON path, so that errors and
//! warnings name the path (`services.web.checks[0].timeout`); keeping track of the keys a
//! converter used, so that none is dropped without a warning; and the pieces of YAML both
//! converters write (quoted strings, durations, the `etcd:` placeholder).
//!
//! Objects keep the file's order (the converted services come out in the order they were
//! written) and a key written twice is an error: serde_json would silently keep the last.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::config::{ConfigDuration, MAX_CONFIG_BYTES};

/// A JSON value; objects keep their keys in the file's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What kind of value this is, for "expected ..., found ..." messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "a list",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(v)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
                Ok(Json::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
                Ok(Json::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut entries: Vec<(String, Json)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!(
                            "the key {key:?} is written twice in one object"
                        )));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Json::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A problem found at one JSON path, before the file is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted JSON path, e.g. `services.web.port`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn in_file(self, file: &Path) -> ImportError {
        ImportError {
            file: file.to_owned(),
            path: self.path,
            message: self.message,
        }
    }
}

/// Why a file could not be converted: the file, the JSON path, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub file: PathBuf,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.path.is_empty() {
            // Paths hold the file's keys: a newline in one must not start a forged line.
            write!(f, "{}: ", comment(&self.path))?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ImportError {}

/// Something of the source that the converted file does not carry over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", comment(&self.path), self.message)
    }
}

/// A converted configuration: the YAML text and everything that was not carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub yaml: String,
    pub warnings: Vec<Warning>,
}

/// Parses the JSON text of `file`; the document must be an object.
pub fn read(file: &Path, text: &str) -> Result<Json, ImportError> {
    let whole = |message: String| ImportError {
        file: file.to_owned(),
        path: String::new(),
        message,
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(whole(format!(
            "{} bytes is more than a configuration may hold ({MAX_CONFIG_BYTES})",
            text.len()
        )));
    }
    let value: Json = serde_json::from_str(text)
        .map_err(|e| whole(format!("not a SmartStack JSON configuration: {e}")))?;
    match value {
        Json::Object(_) => Ok(value),
        other => Err(whole(format!(
            "expected an object at the top, found {}",
            other.kind()
        ))),
    }
}

/// The path of `key` inside `parent`.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `i` of a loader error's key `services[i]...`: which converted service it is about.
pub fn service_index(key: &str) -> Option<usize> {
    let rest = key.strip_prefix("services[")?;
    let (index, _) = rest.split_once(']')?;
    index.parse().ok()
}

/// A value and where it is in the document.
#[derive(Debug, Clone)]
pub struct At<'a> {
    pub path: String,
    pub value: &'a Json,
}

impl<'a> At<'a> {
    pub fn root(value: &'a Json) -> Self {
        At {
            path: String::new(),
            value,
        }
    }

    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub fn warning(&self, message: impl Into<String>) -> Warning {
        Warning {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The object's keys, to be taken one by one.
    pub fn fields(&self) -> Result<Fields<'a>, Problem> {
        let entries = self.entries()?;
        Ok(Fields {
            path: self.path.clone(),
            taken: vec![false; entries.len()],
            entries,
        })
    }

    /// The object's entries in the file's order, for an object used as a map (name ->
    /// service).
    pub fn entries(&self) -> Result<Vec<(&'a str, At<'a>)>, Problem> {
        match self.value {
            Json::Object(entries) => Ok(entries
                .iter()
                .map(|(k, v)| {
                    let at = At {
                        path: child(&self.path, k),
                        value: v,
                    };
                    (k.as_str(), at)
                })
                .collect()),
            other => Err(self.expected("an object", other)),
        }
    }

    /// The list's items, each with its `[i]` path.
    pub fn items(&self) -> Result<Vec<At<'a>>, Problem> {
        match self.value {
            Json::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, value)| At {
                    path: format!("{}[{i}]", self.path),
                    value,
                })
                .collect()),
            other => Err(self.expected("a list", other)),
        }
    }

    pub fn str(&self) -> Result<&'a str, Problem> {
        match self.value {
            Json::String(s) => Ok(s),
            other => Err(self.expected("a string", other)),
        }
    }

    pub fn bool(&self) -> Result<bool, Problem> {
        match self.value {
            Json::Bool(b) => Ok(*b),
            other => Err(self.expected("true or false", other)),
        }
    }

    /// A whole number from `min` to `max`.
    pub fn whole(&self, min: u64, max: u64) -> Result<u64, Problem> {
        let range = || format!("a whole number from {min} to {max}");
        match self.value {
            Json::Number(n) => match n.as_u64() {
                Some(v) if (min..=max).contains(&v) => Ok(v),
                _ => Err(self.problem(format!("{n} is not {}", range()))),
            },
            other => Err(self.expected(&range(), other)),
        }
    }

    pub fn port(&self) -> Result<u16, Problem> {
        let port = self.whole(1, u64::from(u16::MAX))?;
        u16::try_from(port).map_err(|_| self.problem(format!("{port} is not a port")))
    }

    /// A number of seconds, as Airbnb's programs write durations (`2`, `0.2`).
    pub fn seconds(&self) -> Result<Duration, Problem> {
        match self.value {
            Json::Number(n) => n
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| self.problem(format!("{n} is not a number of seconds"))),
            other => Err(self.expected("a number of seconds (e.g. 0.5)", other)),
        }
    }

    /// A string, or a list of strings (how Airbnb's programs take HAProxy lines and hosts).
    pub fn strings(&self) -> Result<Vec<(String, &'a str)>, Problem> {
        match self.value {
            Json::String(s) => Ok(vec![(self.path.clone(), s.as_str())]),
            Json::Array(_) => self
                .items()?
                .into_iter()
                .map(|item| item.str().map(|s| (item.path.clone(), s)))
                .collect(),
            other => Err(self.expected("a string or a list of strings", other)),
        }
    }

    fn expected(&self, what: &str, found: &Json) -> Problem {
        self.problem(format!("expected {what}, found {}", found.kind()))
    }
}

/// The keys of one object. A converter takes the keys it maps, names those it drops with
/// the reason, and [`Fields::finish`] reports whatever is left as unknown: no key can
/// go unmentioned.
#[derive(Debug)]
pub struct Fields<'a> {
    path: String,
    entries: Vec<(&'a str, At<'a>)>,
    taken: Vec<bool>,
}

impl<'a> Fields<'a> {
    /// The value of `key`, if written; the key counts as used.
    pub fn take(&mut self, key: &str) -> Option<At<'a>> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        self.taken[i] = true;
        Some(self.entries[i].1.clone())
    }

    /// The value of `key`, which must be written.
    pub fn require(&mut self, key: &str, why: &str) -> Result<At<'a>, Problem> {
        self.take(key).ok_or_else(|| Problem {
            path: child(&self.path, key),
            message: format!("missing; {why}"),
        })
    }

    /// `key`, if written, has no equivalent: one warning saying why.
    pub fn drop(&mut self, key: &str, why: &str, warnings: &mut Vec<Warning>) {
        if let Some(at) = self.take(key) {
            warnings.push(at.warning(format!("no equivalent ({why}); dropped")));
        }
    }

    /// Every key not taken has no equivalent, for the same reason.
    pub fn drop_rest(self, why: &str, warnings: &mut Vec<Warning>) {
        for ((_, at), taken) in self.entries.into_iter().zip(self.taken) {
            if !taken {
                warnings.push(at.warning(format!("no equivalent ({why}); dropped")));
            }
        }
    }

    /// Every key not taken: one warning each, `unknown` saying whose key it is not.
    pub fn finish(self, unknown: &str, warnings: &mut Vec<Warning>) {
        for ((_, at), taken) in self.entries.into_iter().zip(self.taken) {
            if !taken {
                warnings.push(at.warning(format!("not a key {unknown} documents; dropped")));
            }
        }
    }
}

/// `s` as a YAML double-quoted scalar that reads back as exactly `s`: what YAML does not
/// count as printable (controls, C1 codes, U+FEFF, U+FFFE/F) is written as an escape.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if yaml_printable(c) => out.push(c),
            c if u32::from(c) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// YAML 1.2's `c-printable`, less what a reader may take for a line break (U+0085, U+2028,
/// U+2029: YAML 1.1 breaks lines there) or strip (U+FEFF, a byte order mark).
fn yaml_printable(c: char) -> bool {
    matches!(u32::from(c),
        0x20..=0x7E
        | 0xA0..=0x2027
        | 0x202A..=0xD7FF
        | 0xE000..=0xFEFE
        | 0xFF00..=0xFFFD
        | 0x10000..=0x10FFFF)
}

/// `s` made safe for a YAML comment: one line, whatever is not printable escaped.
pub fn comment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if yaml_printable(c) {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// `d` as our configuration writes durations (`"250ms"`, `"2s"`), rounded to the
/// millisecond; at least 1ms when `d` is not zero, so a tiny duration does not become 0.
pub fn duration(d: Duration) -> ConfigDuration {
    let ms = (d.as_secs_f64() * 1000.0).round();
    let ms = if ms < 1.0 && !d.is_zero() { 1.0 } else { ms };
    // `as` saturates: a duration beyond u64 milliseconds cannot come from a parsed file.
    ConfigDuration::from_millis(ms as u64)
}

/// Where the source found its registry (ZooKeeper hosts and path, ...), for a comment the
/// operator replaces with the etcd cluster that takes its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// E.g. `zookeeper zk1:2181,zk2:2181 /nerve/services/web/services`.
    pub was: String,
    /// The JSON path it was read from, e.g. `services.web`.
    pub at: String,
}

/// Where the placeholder etcd block points: the default local member.
pub const PLACEHOLDER_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The `etcd:` block of a converted file: the placeholder endpoint and one "fill in"
/// comment per source the services used.
pub fn etcd_placeholder(sources: &[Source]) -> String {
    let mut out = String::from("etcd:\n");
    for s in sources {
        out.push_str(&format!(
            "  # fill in: was {} ({})\n",
            comment(&s.was),
            comment(&s.at)
        ));
    }
    out.push_str(&format!(
        "  endpoints: [{}]\n",
        quoted(PLACEHOLDER_ENDPOINT)
    ));
    out
}

/// The comment opening a converted file.
/// Checks the importer's own output: `loaded` is our loader's verdict on the written YAML
/// (whether it read back as the converted services under the placeholder etcd block, or
/// why it refused). A refusal is reported at the JSON path (`origins`, by service index) of
/// the service it concerns.
pub fn verify(
    file: &Path,
    origins: &[String],
    loaded: Result<bool, crate::ConfigError>,
) -> Result<(), ImportError> {
    let error = |path: String, message: String| ImportError {
        file: file.to_owned(),
        path,
        message,
    };
    match loaded {
        Ok(true) => Ok(()),
        Ok(false) => Err(error(
            String::new(),
            "the written YAML does not read back as converted (a bug of the importer)".into(),
        )),
        Err(e) => {
            let path = service_index(&e.key)
                .and_then(|i| origins.get(i).cloned())
                .unwrap_or_default();
            Err(error(
                path,
                format!(
                    "our configuration refuses the result: {}: {}",
                    e.key, e.message
                ),
            ))
        }
    }
}

/// The etcd block the placeholder text loads as.
pub fn placeholder_etcd() -> crate::EtcdConfig {
    crate::EtcdConfig::new(vec![PLACEHOLDER_ENDPOINT.to_owned()])
}

pub fn header(program: &str, file: &Path) -> String {
    format!(
        "# Converted by `{program} --import-smartstack` from {}.\n\
         # Keys with no equivalent were listed on stderr. Replace the etcd endpoint below\n\
         # (see the \"fill in\" lines) before use; check with `{program} -c FILE --check-config`.\n",
        comment(&file.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc(text: &str) -> Json {
        read(Path::new("/etc/x.json"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn objects_keep_their_order_and_a_repeated_key_is_an_error() {
        let v = doc(r#"{"b": 1, "a": {"z": true, "y": null}}"#);
        let Json::Object(entries) = &v else {
            panic!("not an object: {v:?}")
        };
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
        let e = read(Path::new("/etc/x.json"), r#"{"a": 1, "a": 2}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("/etc/x.json: ") && e.contains("\"a\" is written twice"),
            "{e}"
        );
    }

    #[test]
    fn bad_json_and_a_top_level_list_name_the_file() {
        for (text, says) in [
            ("{\"a\": ", "not a SmartStack JSON configuration"),
            ("[1]", "expected an object at the top, found a list"),
        ] {
            let e = read(Path::new("/etc/x.json"), text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with("/etc/x.json: ") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn paths_name_keys_and_list_items() {
        let v = doc(r#"{"services": {"web": {"checks": [{"timeout": "fast"}]}}}"#);
        let mut top = At::root(&v).fields().unwrap_or_else(|e| panic!("{e:?}"));
        let services = top
            .take("services")
            .unwrap_or_else(|| panic!("no services"));
        let mut web = services.fields().unwrap_or_else(|e| panic!("{e:?}"));
        let web = web.take("web").unwrap_or_else(|| panic!("no web"));
        let mut fields = web.fields().unwrap_or_else(|e| panic!("{e:?}"));
        let checks = fields.take("checks").unwrap_or_else(|| panic!("no checks"));
        let items = checks.items().unwrap_or_else(|e| panic!("{e:?}"));
        let mut check = items[0].fields().unwrap_or_else(|e| panic!("{e:?}"));
        let timeout = check
            .take("timeout")
            .unwrap_or_else(|| panic!("no timeout"));
        let e = timeout.seconds().err();
        assert_eq!(
            e,
            Some(Problem {
                path: "services.web.checks[0].timeout".into(),
                message: "expected a number of seconds (e.g. 0.5), found a string".into()
            })
        );
    }

    #[test]
    fn keys_not_taken_are_warned_about_and_dropped_ones_say_why() {
        let v = doc(r#"{"a": 1, "b": 2, "c": 3}"#);
        let mut f = At::root(&v).fields().unwrap_or_else(|e| panic!("{e:?}"));
        let mut warnings = Vec::new();
        assert!(f.take("a").is_some());
        f.drop("b", "nothing like it", &mut warnings);
        f.drop("absent", "never written", &mut warnings);
        f.finish("Airbnb's nerve", &mut warnings);
        let shown: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "b: no equivalent (nothing like it); dropped",
                "c: not a key Airbnb's nerve documents; dropped"
            ]
        );
    }

    #[test]
    fn a_key_with_a_newline_cannot_forge_a_line_of_output() {
        let v = doc(r#"{"a\nwarning: b": 1}"#);
        let mut warnings = Vec::new();
        At::root(&v)
            .fields()
            .unwrap_or_else(|e| panic!("{e:?}"))
            .finish("x", &mut warnings);
        let shown: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a\\nwarning: b: not a key x documents; dropped"]);
    }

    #[test]
    fn numbers_are_checked_against_their_range() {
        let v = doc(r#"{"p": 70000, "q": -1, "r": 1.5, "s": 8080}"#);
        let mut f = At::root(&v).fields().unwrap_or_else(|e| panic!("{e:?}"));
        for key in ["p", "q", "r"] {
            let at = f.take(key).unwrap_or_else(|| panic!("{key}"));
            assert!(at.port().is_err(), "{key}");
        }
        let s = f.take("s").map(|at| at.port());
        assert_eq!(s, Some(Ok(8080)));
    }

    #[test]
    fn durations_round_to_the_millisecond_and_never_to_zero() {
        assert_eq!(duration(Duration::from_secs_f64(0.2)).to_string(), "200ms");
        assert_eq!(duration(Duration::from_secs(2)).to_string(), "2s");
        assert_eq!(duration(Duration::from_micros(100)).to_string(), "1ms");
        assert_eq!(duration(Duration::ZERO).to_string(), "0s");
    }

    #[test]
    fn comments_stay_on_one_line() {
        let block = etcd_placeholder(&[Source {
            was: "zookeeper a:2181 /x\nservices: []".into(),
            at: "services.web".into(),
        }]);
        assert_eq!(
            block,
            "etcd:\n  # fill in: was zookeeper a:2181 /x\\nservices: [] (services.web)\n  \
             endpoints: [\"http://127.0.0.1:2379\"]\n"
        );
    }

    proptest! {
        /// Whatever the text, a comment made of it stays one comment line.
        #[test]
        fn a_comment_stays_one_line(s in any::<String>()) {
            let yaml = format!("# {}\nv: 1\n", comment(&s));
            let back: std::collections::BTreeMap<String, u32> =
                serde_norway::from_str(&yaml).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.len(), 1);
        }

        /// Whatever the text, the quoted scalar reads back as that text.
        #[test]
        fn quoted_reads_back_as_itself(s in any::<String>()) {
            let yaml = format!("v: {}\n", quoted(&s));
            let back: std::collections::BTreeMap<String, String> =
                serde_norway::from_str(&yaml).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.get("v"), Some(&s));
        }
    }
}
