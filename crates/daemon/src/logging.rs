//! The process's log subscriber, written to stderr.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Whether text logs get ANSI colour: only for a person at a terminal, and never when
/// `NO_COLOR` is set to something (https://no-color.org), because escape codes in a file
/// or a pipe are noise for every tool that reads it.
pub fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber on stderr: `RUST_LOG` filters (default `info`), `format`
/// shapes the lines.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    // `try_init` also forwards the `log` records of dependencies. An error means a
    // subscriber is installed already (only possible in tests): keep it.
    let _ = subscriber(format, ansi, filter, std::io::stderr).try_init();
}

/// The subscriber writing `format` lines to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // The event's message and fields at the top level (`jq .message` works), the spans
        // it happened in under "span" (innermost) and "spans" (outermost first).
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let mut bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
            bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(format, false, EnvFilter::new("info"), move || {
            writer.clone()
        });
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("service", service = "web");
            let _in = span.enter();
            tracing::info!(backend = "web-a", "backend added");
        });
        let bytes = buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn json_lines_carry_timestamp_level_message_fields_and_span_fields() {
        let text = lines_of(LogFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value =
            serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v["timestamp"].is_string(), "{v}");
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["message"], "backend added", "{v}");
        assert_eq!(v["backend"], "web-a", "{v}");
        assert_eq!(v["span"]["service"], "web", "{v}");
        assert_eq!(v["spans"][0]["name"], "service", "{v}");
    }

    #[test]
    fn text_lines_without_colour_hold_no_escape_codes() {
        let text = lines_of(LogFormat::Text);
        assert!(text.contains("backend added"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }
}
