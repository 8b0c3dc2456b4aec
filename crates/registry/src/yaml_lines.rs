//! Where a key is written in a YAML text, so a configuration error can name the line of
//! the key itself. The parser's own positions point at the start of the enclosing mapping
//! for errors raised after a value was read (a bad duration, an address, a range check),
//! which in a list of services is the `- name:` line, not the line to fix.
//!
//! This reads block-style YAML by indentation only: enough for configuration files as
//! people write them. Keys inside flow collections (`{a: 1}`, JSON) are located at the
//! line of the nearest block key above them. Pure, and never fails: `None` means "not found".

/// One step of a key path as [`crate::config::ConfigError::key`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `services[0].checks[1].timeout` -> services, 0, checks, 1, timeout.
fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut indexes) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(rest) = indexes.strip_prefix('[') {
            let end = rest.find(']')?;
            out.push(Segment::Index(rest[..end].parse().ok()?));
            indexes = &rest[end + 1..];
        }
    }
    Some(out)
}

/// A line that holds content: its 1-based number, indentation and text after it.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

fn content_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let trimmed = raw.trim_start();
            let blank = trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---";
            (!blank).then(|| Line {
                number: i + 1,
                indent: raw.len() - trimmed.len(),
                text: trimmed,
            })
        })
        .collect()
}

/// Whether `text` (a line without its indentation) is the key `key` of a mapping.
fn is_key(text: &str, key: &str) -> bool {
    let bare = text.strip_prefix(key);
    let quoted = |q: char| {
        text.strip_prefix(q)
            .and_then(|t| t.strip_prefix(key))
            .and_then(|t| t.strip_prefix(q))
    };
    [bare, quoted('"'), quoted('\'')]
        .into_iter()
        .flatten()
        .any(|rest| rest.trim_start().starts_with(':'))
}

/// The lines below `lines[at]` that are nested deeper than it.
fn children<'a>(lines: &[Line<'a>], at: usize) -> Vec<Line<'a>> {
    let indent = lines[at].indent;
    lines[at + 1..]
        .iter()
        .take_while(|l| l.indent > indent)
        .copied()
        .collect()
}

/// Item `index` of the sequence in `lines`, its dash line turned into plain content.
fn item<'a>(lines: &[Line<'a>], index: usize) -> Option<Vec<Line<'a>>> {
    let indent = lines.first()?.indent;
    let dashes: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].indent == indent && lines[i].text.starts_with('-'))
        .collect();
    let start = *dashes.get(index)?;
    let end = dashes.get(index + 1).copied().unwrap_or(lines.len());
    let mut out = lines[start..end].to_vec();
    let dash = out[0];
    let rest = dash.text[1..].trim_start();
    if rest.is_empty() {
        out.remove(0);
    } else {
        out[0] = Line {
            number: dash.number,
            indent: dash.indent + (dash.text.len() - rest.len()),
            text: rest,
        };
    }
    Some(out)
}

/// The 1-based line where the key at `path` is written, or the line of its nearest
/// enclosing key found; `None` when not even the first key is found.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    walk(text, path).line
}

/// Every line of the key at `path` (its own and those nested below it), when the whole
/// path is written in block style; `None` otherwise.
pub fn key_lines(text: &str, path: &str) -> Option<Vec<usize>> {
    let found = walk(text, path);
    let line = found.line.filter(|_| found.complete)?;
    Some(std::iter::once(line).chain(found.below).collect())
}

/// How far a path was followed.
struct Found {
    /// The line of the deepest segment found.
    line: Option<usize>,
    /// Every segment was found.
    complete: bool,
    /// The lines nested below the last segment found.
    below: Vec<usize>,
}

fn walk(text: &str, path: &str) -> Found {
    let mut found = Found {
        line: None,
        complete: false,
        below: Vec::new(),
    };
    let Some(segments) = segments(path) else {
        return found;
    };
    let mut scope = content_lines(text);
    for (n, segment) in segments.iter().enumerate() {
        let Some(indent) = scope.first().map(|l| l.indent) else {
            return found;
        };
        match *segment {
            Segment::Key(key) => {
                let Some(at) = scope
                    .iter()
                    .position(|l| l.indent == indent && is_key(l.text, key))
                else {
                    return found;
                };
                found.line = Some(scope[at].number);
                scope = children(&scope, at);
                found.below = scope.iter().map(|l| l.number).collect();
            }
            Segment::Index(index) => match item(&scope, index) {
                Some(lines) if !lines.is_empty() => {
                    found.line = Some(lines[0].number);
                    found.below = lines[1..].iter().map(|l| l.number).collect();
                    scope = lines;
                }
                _ => return found,
            },
        }
        found.complete = n + 1 == segments.len();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
etcd:
  endpoints: [\"http://127.0.0.1:2379\"]   # a comment
services:
  - name: web
    listen: 3000

    connect_timeout: 5 parsecs
  - name: api
    checks:
      - type: tcp
      -
        type: http
        headers:
          X-A: b
\"quoted\": 1
";

    #[test]
    fn keys_are_found_on_their_own_line() {
        assert_eq!(locate(TEXT, "etcd.endpoints"), Some(2));
        assert_eq!(locate(TEXT, "services[0].connect_timeout"), Some(7));
        assert_eq!(locate(TEXT, "services[0].name"), Some(4));
        assert_eq!(locate(TEXT, "services[1]"), Some(8));
        assert_eq!(locate(TEXT, "services[1].checks[0].type"), Some(10));
        assert_eq!(locate(TEXT, "services[1].checks[1].type"), Some(12));
        assert_eq!(locate(TEXT, "services[1].checks[1].headers.X-A"), Some(14));
        assert_eq!(locate(TEXT, "quoted"), Some(15));
    }

    #[test]
    fn a_key_owns_the_lines_nested_below_it() {
        assert_eq!(
            key_lines(TEXT, "services[0].connect_timeout"),
            Some(vec![7])
        );
        assert_eq!(
            key_lines(TEXT, "services[1].checks[1].headers"),
            Some(vec![13, 14])
        );
        assert_eq!(key_lines(TEXT, "services[0].retries"), None);
    }

    #[test]
    fn what_is_not_written_falls_back_to_the_nearest_key() {
        assert_eq!(locate(TEXT, "services[0].retries"), Some(4));
        assert_eq!(locate(TEXT, "services[5].name"), Some(3));
        assert_eq!(locate(TEXT, "nothing"), None);
        assert_eq!(locate("{etcd: {endpoints: []}}", "etcd.endpoints"), None);
        assert_eq!(locate("", "a"), None);
        assert_eq!(locate(TEXT, "a[x]"), None);
    }
}
