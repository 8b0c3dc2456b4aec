//! What an operator installs: `make install` into a temporary DESTDIR and the `make dist`
//! tarball hold the binaries, the example configs, the systemd units and the docs, and the
//! installed programs run and accept the installed configs; the units pass
//! `systemd-analyze verify` and their `systemd-analyze security` exposure is at most 2.0;
//! the .deb installs with `dpkg -i` (as root), runs, and purges without a trace.
//!
//! The packages are built from the debug binaries `cargo build --bins` made (make test does
//! it first): deploy/package.sh takes any BIN_DIR, and what is checked here is the packaging,
//! not the build profile. Where a tool cannot run (no systemd-analyze, not root, no dpkg),
//! the test says loudly that it was SKIPPED, and passes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use testkit::process::workspace_bin;

const PACKAGE: &str = "smartstack-rs";
const PROGRAMS: [&str; 2] = ["nerve", "synapse"];
/// The exposure docs/deployment.md promises (`systemd-analyze security`, 0 best, 10 worst).
const MAX_EXPOSURE: f64 = 2.0;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("no parent of {}", env!("CARGO_MANIFEST_DIR")))
        .to_path_buf()
}

/// Where `cargo build --bins` put nerve and synapse.
fn bin_dir() -> PathBuf {
    let nerve = workspace_bin("nerve");
    workspace_bin("synapse");
    nerve
        .parent()
        .unwrap_or_else(|| panic!("no parent of {}", nerve.display()))
        .to_path_buf()
}

fn skipped(what: &str, why: &str, fix: &str) {
    testkit::skipped(what, why, fix);
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.to_string_lossy()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let name = program.as_ref().to_string_lossy().into_owned();
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("not UTF-8: {}", p.display()))
}

/// `--version` of an installed program names it and the workspace's version, and
/// `--check-config` accepts its installed example config.
fn assert_runs(program: &Path, config: &Path) {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = run_ok(program, &["--version"]);
    assert_eq!(
        version.trim(),
        format!("{name} {}", env!("CARGO_PKG_VERSION")),
        "{} --version",
        program.display()
    );
    let check = run(program, &["-c", path_str(config), "--check-config"]);
    assert!(
        check.status.success() && String::from_utf8_lossy(&check.stdout).trim() == "ok",
        "{} -c {} --check-config: {}",
        program.display(),
        config.display(),
        text(&check)
    );
}

fn assert_file(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(meta.is_file(), "{} is not a file", path.display());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        mode,
        "mode of {}",
        path.display()
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The tree deploy/package.sh installs under `root` (`DESTDIR` + `PREFIX`, with the configs
/// in `etc`), checked file by file; the units' paths point into `bin_prefix`.
fn assert_tree(root: &Path, etc: &Path, unit_dir: &Path, bin_prefix: &str, etc_prefix: &str) {
    for program in PROGRAMS {
        let bin = root.join("bin").join(program);
        assert_file(&bin, 0o755);
        let config = etc.join(program).join(format!("{program}.yaml"));
        assert_file(&config, 0o644);
        assert_eq!(
            read(&config),
            read(&repo_root().join("deploy").join(format!("{program}.yaml"))),
            "{} is deploy/{program}.yaml",
            config.display()
        );
        assert_runs(&bin, &config);
        let unit_path = unit_dir.join(format!("{program}.service"));
        assert_file(&unit_path, 0o644);
        let unit = read(&unit_path);
        let exec = format!(
            "ExecStart={bin_prefix}/bin/{program} -c {etc_prefix}/{program}/{program}.yaml"
        );
        assert!(
            unit.lines().any(|l| l == exec),
            "{} has no line {exec:?}",
            unit_path.display()
        );
        let doc = root
            .join("share/doc")
            .join(PACKAGE)
            .join(format!("{program}.md"));
        assert_file(&doc, 0o644);
    }
    let docs = root.join("share/doc").join(PACKAGE);
    for doc in [
        "README.md",
        "deployment.md",
        "operations.md",
        "examples/prometheus.yml",
        "examples/smartstack.json",
    ] {
        assert_file(&docs.join(doc), 0o644);
    }
    // The Kubernetes manifests, where the checkout has them.
    let manifests = repo_root().join("deploy/kubernetes");
    for entry in std::fs::read_dir(&manifests)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".yaml") {
            assert_file(&docs.join("examples/kubernetes").join(&name), 0o644);
        }
    }
}

#[test]
fn make_install_and_the_dist_tarball_hold_programs_that_run_with_their_configs() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let destdir = dir.path().join("destdir");
    let bins = bin_dir();
    run_ok(
        "make",
        &[
            "-s",
            "install",
            &format!("BIN_DIR={}", path_str(&bins)),
            "PREFIX=/usr/local",
            &format!("DESTDIR={}", path_str(&destdir)),
        ],
    );
    let root = destdir.join("usr/local");
    assert_tree(
        &root,
        &root.join("etc"),
        &root.join("lib/systemd/system"),
        "/usr/local",
        "/usr/local/etc",
    );
    // Nothing outside PREFIX.
    let top: Vec<_> = std::fs::read_dir(&destdir)
        .unwrap_or_else(|e| panic!("read_dir: {e}"))
        .map(|e| e.map(|e| e.file_name()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(top, ["usr"], "make install wrote outside PREFIX: {top:?}");

    // The tarball: one versioned directory, the same tree with PREFIX = that directory.
    let out = dir.path().join("dist");
    let tarball = run_ok(
        repo_root().join("deploy/package.sh"),
        &[
            "dist",
            "--bin-dir",
            path_str(&bins),
            "--out",
            path_str(&out),
        ],
    );
    let arch = run_ok("uname", &["-m"]);
    let base = format!("{PACKAGE}-{}-{}", env!("CARGO_PKG_VERSION"), arch.trim());
    let tarball = PathBuf::from(tarball.trim());
    assert_eq!(tarball, out.join(format!("{base}.tar.gz")), "tarball name");
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap_or_else(|e| panic!("mkdir: {e}"));
    run_ok(
        "tar",
        &["-xzf", path_str(&tarball), "-C", path_str(&unpacked)],
    );
    let root = unpacked.join(&base);
    assert_tree(
        &root,
        &root.join("etc"),
        &root.join("lib/systemd/system"),
        "",
        "/etc",
    );
    eprintln!(
        "make install + make dist checked in {:.1?}; tarball {} bytes (debug binaries, stripped of debug information)",
        started.elapsed(),
        std::fs::metadata(&tarball).map(|m| m.len()).unwrap_or(0)
    );
}

/// The exposure line of `systemd-analyze security`: "→ Overall exposure level for
/// nerve.service: 1.2 OK 🙂".
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_units_verify_and_are_hardened_to_an_exposure_of_at_most_2() {
    let Ok(analyze) = which("systemd-analyze") else {
        skipped(
            "the systemd unit test",
            "systemd-analyze is not installed.",
            "Install Debian's systemd (`make deps` does) to run it.",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // `systemd-analyze verify` checks that ExecStart's program exists and is executable, and
    // the units name /usr/bin, where nothing may be installed on this machine. So the units
    // are installed (make install) into a temporary root, and a copy of each, with ExecStart
    // pointing at the programs installed there, is verified. Only that path differs from
    // the shipped unit.
    let destdir = dir.path().join("root");
    run_ok(
        "make",
        &[
            "-s",
            "install",
            &format!("BIN_DIR={}", path_str(&bin_dir())),
            "PREFIX=/usr",
            "SYSCONFDIR=/etc",
            &format!("DESTDIR={}", path_str(&destdir)),
        ],
    );
    let verify_dir = dir.path().join("verify");
    std::fs::create_dir(&verify_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    for program in PROGRAMS {
        let shipped = read(&repo_root().join(format!("deploy/systemd/{program}.service")));
        for line in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "User=smartstack",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "SystemCallFilter=@system-service",
            "LimitNOFILE=65536",
        ] {
            assert!(
                shipped.lines().any(|l| l == line),
                "deploy/systemd/{program}.service has no line {line:?}"
            );
        }
        let installed = read(&destdir.join(format!("usr/lib/systemd/system/{program}.service")));
        let exec = format!("/usr/bin/{program} ");
        assert!(
            installed.contains(&exec),
            "{program}.service names no {exec}"
        );
        let copy = verify_dir.join(format!("{program}.service"));
        let real = format!("{}/usr/bin/{program} ", path_str(&destdir));
        std::fs::write(&copy, installed.replace(&exec, &real))
            .unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));

        let out = run(&analyze, &["verify", path_str(&copy)]);
        let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains(&format!("{program}.service")))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify {program}.service: {}",
            text(&out)
        );

        let out = run(&analyze, &["security", "--offline=yes", path_str(&copy)]);
        let report = text(&out);
        let level = exposure(&report)
            .unwrap_or_else(|| panic!("no exposure level in systemd-analyze security: {report}"));
        eprintln!("{program}.service: systemd-analyze security exposure {level}");
        assert!(
            level <= MAX_EXPOSURE,
            "{program}.service exposure {level} > {MAX_EXPOSURE}: {report}"
        );
    }
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

/// Whether dpkg knows the package as installed (any state but "not installed").
fn dpkg_knows(package: &str) -> bool {
    let out = run("dpkg-query", &["-W", "-f=${db:Status-Status}", package]);
    out.status.success()
        && !matches!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "" | "not-installed"
        )
}

/// Purges the package when dropped: also when an assertion failed after `dpkg -i`.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let out = run("dpkg", &["--purge", PACKAGE]);
        if !out.status.success() {
            let _ = writeln!(
                std::io::stderr(),
                "dpkg --purge {PACKAGE} failed: {}",
                text(&out)
            );
        }
    }
}

#[test]
fn the_deb_installs_runs_its_shipped_configs_and_purges_cleanly() {
    let root = nix::unistd::geteuid().is_root();
    if !root || which("dpkg").is_err() || which("dpkg-deb").is_err() {
        skipped(
            "the Debian package test",
            if root {
                "dpkg or dpkg-deb is missing."
            } else {
                "It needs root (dpkg -i)."
            },
            "Run it as root on a Debian machine.",
        );
        return;
    }
    if dpkg_knows(PACKAGE) {
        skipped(
            "the Debian package test",
            &format!("{PACKAGE} is already installed on this machine; the test does not touch an installation it did not make."),
            &format!("Purge it (dpkg --purge {PACKAGE}) to run the test."),
        );
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let deb = run_ok(
        "make",
        &[
            "-s",
            "deb",
            &format!("BIN_DIR={}", path_str(&bin_dir())),
            &format!("DIST_DIR={}", path_str(dir.path())),
        ],
    );
    let deb = PathBuf::from(deb.trim());
    let arch = run_ok("dpkg", &["--print-architecture"]);
    assert_eq!(
        deb,
        dir.path().join(format!(
            "{PACKAGE}_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            arch.trim()
        )),
        "package name"
    );
    let built = started.elapsed();
    let size = std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);

    let user_existed = run("getent", &["passwd", "smartstack"]).status.success();
    let installed = Installed;
    run_ok("dpkg", &["-i", path_str(&deb)]);
    for program in PROGRAMS {
        let bin = PathBuf::from(format!("/usr/bin/{program}"));
        let config = PathBuf::from(format!("/etc/{program}/{program}.yaml"));
        assert_runs(&bin, &config);
        assert!(
            Path::new(&format!("/lib/systemd/system/{program}.service")).is_file(),
            "{program}.service not installed"
        );
        assert!(
            Path::new(&format!("/usr/share/doc/{PACKAGE}/{program}.md")).is_file(),
            "{program}.md not installed"
        );
    }
    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    for config in ["/etc/nerve/nerve.yaml", "/etc/synapse/synapse.yaml"] {
        assert!(
            conffiles.contains(config),
            "{config} is not a conffile: {conffiles}"
        );
    }
    let user = run_ok("getent", &["passwd", "smartstack"]);
    assert!(
        user.trim_end().ends_with(":/nonexistent:/usr/sbin/nologin"),
        "the smartstack user is not a system user without a login: {user}"
    );
    let group = run_ok("stat", &["-c", "%G %a", "/etc/synapse/synapse.yaml"]);
    assert_eq!(
        group.trim(),
        "smartstack 640",
        "owner and mode of /etc/synapse/synapse.yaml"
    );

    drop(installed);
    assert!(
        !dpkg_knows(PACKAGE),
        "{PACKAGE} still known to dpkg after the purge"
    );
    for gone in [
        "/usr/bin/nerve",
        "/usr/bin/synapse",
        "/etc/nerve",
        "/etc/synapse",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after the purge");
    }
    // The package removes the user on purge only if it created it.
    assert_eq!(
        run("getent", &["passwd", "smartstack"]).status.success(),
        user_existed,
        "the smartstack user after the purge (it existed before: {user_existed})"
    );
    eprintln!(
        "deb: {size} bytes (debug binaries, stripped of debug information), built in {built:.1?}, \
         whole test {:.1?}",
        started.elapsed()
    );
}
