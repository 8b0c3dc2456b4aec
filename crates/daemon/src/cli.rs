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

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run with this configuration file.
    Run(PathBuf),
    /// `--check-config`: validate this file and exit.
    CheckConfig(PathBuf),
    /// `--import-smartstack`: convert this Airbnb SmartStack JSON file, print it, exit.
    ImportSmartstack(PathBuf),
    /// `--probe-ready`: ask the admin server at this address whether it is ready, exit.
    ProbeReady(std::net::SocketAddr),
}

/// The parsed command line.
#[derive(Debug)]
pub struct Cli {
    pub action: Action,
    pub log_format: LogFormat,
}

/// The options as clap reads them; [`Cli`] is what they mean.
#[derive(Debug, Parser)]
struct Args {
    /// Configuration file (YAML or JSON).
    #[arg(
        short = 'c',
        long,
        value_name = "FILE",
        required_unless_present_any = ["import_smartstack", "probe_ready"]
    )]
    config: Option<PathBuf>,
    /// Validate the configuration, print "ok" or the problem, and exit (1 on a problem).
    #[arg(long)]
    check_config: bool,
    /// Convert FILE, an Airbnb SmartStack JSON configuration of this program, into ours:
    /// the YAML is printed on stdout, every key with no equivalent is listed on stderr;
    /// then exit (1 on invalid input).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["config", "check_config"]
    )]
    import_smartstack: Option<PathBuf>,
    /// Ask the running program whose `admin` address is ADDR whether it is ready
    /// (`GET /ready`): exit 0 if so, 1 if not; for an orchestrator's probe in an image
    /// without a shell.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with_all = ["config", "check_config", "import_smartstack"]
    )]
    probe_ready: Option<std::net::SocketAddr>,
    /// Format of the log lines written to stderr.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
        let mut command = Args::command()
            .name(about.name)
            .bin_name(about.name)
            .version(about.version)
            .about(about.about)
            .after_help(after_help(about));
        let matches = command.try_get_matches_from_mut(args)?;
        let args = Args::from_arg_matches(&matches)?;
        if let Some(addr) = args.probe_ready {
            return Ok(Cli {
                action: Action::ProbeReady(addr),
                log_format: args.log_format,
            });
        }
        let action = match (args.import_smartstack, args.config) {
            (Some(file), _) => Action::ImportSmartstack(file),
            (None, Some(file)) if args.check_config => Action::CheckConfig(file),
            (None, Some(file)) => Action::Run(file),
            // clap requires one of the two already; this keeps its error if it ever did not.
            (None, None) => {
                return Err(command.error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "the following required arguments were not provided:\n  --config <FILE>",
                ))
            }
        };
        Ok(Cli {
            action,
            log_format: args.log_format,
        })
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
        let run = |f: &str| Some(Action::Run(PathBuf::from(f)));
        assert_eq!(
            parse(&["-c", "a.yaml"]).ok().map(|c| c.action),
            run("a.yaml")
        );
        assert_eq!(
            parse(&["--config", "a.yaml"]).ok().map(|c| c.action),
            run("a.yaml")
        );
        assert_eq!(
            parse(&["-c", "a.yaml", "--check-config"])
                .ok()
                .map(|c| c.action),
            Some(Action::CheckConfig(PathBuf::from("a.yaml")))
        );
        for args in [&[][..], &["--check-config"][..]] {
            let missing = parse(args).err();
            assert_eq!(
                missing.as_ref().map(|e| e.kind()),
                Some(clap::error::ErrorKind::MissingRequiredArgument),
                "{args:?}"
            );
            let text = missing.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains("--config <FILE>"), "{text}");
        }
    }

    #[test]
    fn import_smartstack_needs_no_config_and_takes_no_other_mode() {
        assert_eq!(
            parse(&["--import-smartstack", "nerve.conf.json"])
                .ok()
                .map(|c| c.action),
            Some(Action::ImportSmartstack(PathBuf::from("nerve.conf.json")))
        );
        for args in [
            &["--import-smartstack", "x.json", "-c", "a.yaml"][..],
            &["--import-smartstack", "x.json", "--check-config"][..],
        ] {
            let kind = parse(args).err().map(|e| e.kind());
            assert_eq!(
                kind,
                Some(clap::error::ErrorKind::ArgumentConflict),
                "{args:?}"
            );
        }
        assert!(parse(&["--import-smartstack"]).is_err(), "FILE is required");
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
            "SIGHUP",
            "SIGTERM",
            "SIGINT",
            "RUST_LOG",
            "NO_COLOR",
            "--config",
            "--import-smartstack <FILE>",
        ] {
            assert!(help.contains(word), "{word} missing from:\n{help}");
        }
    }
}
