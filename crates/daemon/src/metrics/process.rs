//! The process metrics every Prometheus client library exports under the same names
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), read from `/proc` at scrape time.
//! Elsewhere than Linux, or when `/proc` cannot be read, the families are left out.

use nix::sys::resource::{getrlimit, Resource};
use nix::unistd::{sysconf, SysconfVar};

use super::{gauge, Family, Sample};

/// The process families that could be read now.
pub fn families() -> Vec<Family> {
    let mut out = Vec::new();
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let stat = stat.as_deref().and_then(parse_stat);
    let tick = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0);
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|p| *p > 0);
    if let (Some(stat), Some(tick)) = (stat, tick) {
        let seconds = (stat.utime + stat.stime) as f64 / tick as f64;
        out.push(one(
            "process_cpu_seconds",
            "User and system CPU time spent.",
            Sample::FloatCounter(seconds),
        ));
        if let Some(boot) = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(boot_time)
        {
            let started = boot + stat.start_ticks / tick as u64;
            out.push(one(
                "process_start_time_seconds",
                "When the process started (Unix time).",
                gauge(started),
            ));
        }
    }
    if let (Some(stat), Some(page)) = (stat, page) {
        let rss = stat.rss_pages.saturating_mul(page as u64);
        out.push(one(
            "process_resident_memory_bytes",
            "Resident memory size.",
            gauge(rss),
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        let open = fds.count().saturating_sub(1);
        out.push(one(
            "process_open_fds",
            "Open file descriptors.",
            gauge(open),
        ));
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        out.push(one(
            "process_max_fds",
            "The open file descriptor limit.",
            gauge(soft),
        ));
    }
    out
}

fn one(name: &'static str, help: &'static str, sample: Sample) -> Family {
    Family {
        name,
        help,
        samples: vec![(Vec::new(), sample)],
    }
}

/// What is read from `/proc/self/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Clock ticks after boot at which the process started.
    start_ticks: u64,
    rss_pages: u64,
}

/// Parses `/proc/PID/stat`: fields after the command name, which is in parentheses and may
/// itself hold spaces and parentheses (so the text is cut at the last `)`).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of proc(5) (state) is fields[0]: utime is field 14, stime 15, starttime 22,
    // rss 24.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (Unix seconds) from `/proc/stat`'s `btime` line.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let text = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1234 \
                    10000000 700 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                utime: 250,
                stime: 50,
                start_ticks: 1234,
                rss_pages: 700
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_boot_time_is_read_from_its_line() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_memory_cpu_and_descriptors() {
        let names: Vec<&str> = families().iter().map(|f| f.name).collect();
        for name in [
            "process_cpu_seconds",
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let rss = families()
            .into_iter()
            .find(|f| f.name == "process_resident_memory_bytes")
            .and_then(|f| f.samples.first().map(|s| s.1.clone()));
        assert!(
            matches!(rss, Some(Sample::Gauge(v)) if v > 1_000_000),
            "{rss:?}"
        );
    }
}
