//! The command line both programs take. Only the program's name, version, one-line
//! description and what a stop does differ.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

/// How a program presents itself on the command line.
#[derive(Debug, Clone, Copy)]
pub struct About {
    pub name: &'static str,
    /// `env!("CARGO_PKG_VERSION")` of the binary.
    pub version: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// What SIGTERM/SIGINT do, for `--help` (e.g. "deregister everything and exit").
    pub on_stop: &'static str,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal without `NO_COLOR`.
    Text,
    /// One JSON object per line: timestamp, level, message, fields, spans.
    Json,
}

#[derive(Debug, Parser)]
pub struct Cli {
    /// Configuration file (YAML or JSON).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: PathBuf,
    /// Validate the configuration, print "ok" or the problem, and exit (1 on a problem).
    #[arg(long)]
    pub check_config: bool,
    /// Format of the log lines written to stderr.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The text after the options in `--help`.
fn after_help(about: &About) -> String {
    format!(
        "Signals:\n  \
         SIGHUP           reload FILE; an invalid file is logged and the running configuration kept\n  \
         SIGTERM, SIGINT  {}\n\n\
         Environment:\n  \
         RUST_LOG  which log lines to write, e.g. \"info\" (the default), \"debug\", \"{}=debug,info\"\n  \
         NO_COLOR  when set and not empty: no colour, even on a terminal",
        about.on_stop, about.name
    )
}

impl Cli {
    /// Parses the process's arguments; prints help, version or the usage error and exits
    /// as clap does.
    pub fn parse_for(about: &About) -> Cli {
        Self::try_parse_from_for(about, std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name).
    pub fn try_parse_from_for<I, T>(about: &About, args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command()
            .name(about.name)
            .bin_name(about.name)
            .version(about.version)
            .about(about.about)
            .after_help(after_help(about))
            .try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABOUT: About = About {
        name: "prog",
        version: "1.2.3",
        about: "does things",
        on_stop: "stop",
    };

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from_for(&ABOUT, std::iter::once("prog").chain(args.iter().copied()))
    }

    #[test]
    fn short_and_long_config_both_work_and_one_is_required() {
        let short = parse(&["-c", "a.yaml"]).map(|c| c.config);
        let long = parse(&["--config", "a.yaml"]).map(|c| c.config);
        assert_eq!(short.ok(), Some(PathBuf::from("a.yaml")));
        assert_eq!(long.ok(), Some(PathBuf::from("a.yaml")));
        let missing = parse(&[]).err().map(|e| e.kind());
        assert_eq!(
            missing,
            Some(clap::error::ErrorKind::MissingRequiredArgument)
        );
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        let text = parse(&["-c", "a"]).map(|c| c.log_format).ok();
        let json = parse(&["-c", "a", "--log-format", "json"])
            .map(|c| c.log_format)
            .ok();
        assert_eq!((text, json), (Some(LogFormat::Text), Some(LogFormat::Json)));
        assert!(parse(&["-c", "a", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn help_names_the_signals_and_rust_log() {
        let help = parse(&["--help"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for word in [
            "SIGHUP", "SIGTERM", "SIGINT", "RUST_LOG", "NO_COLOR", "--config",
        ] {
            assert!(help.contains(word), "{word} missing from:\n{help}");
        }
    }
}
