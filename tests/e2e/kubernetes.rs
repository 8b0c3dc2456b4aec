//! The Kubernetes manifests in deploy/kubernetes/: valid against the Kubernetes schemas
//! (offline, `kubernetes-validate --strict`, installed from PyPI into a venv when missing),
//! shaped as docs/operations.md says (synapse a native sidecar with a startupProbe on
//! /ready; nerve registering the pod IP), and carrying configurations the real binaries
//! accept.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(file: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.split("\n---\n")
        .map(|doc| {
            serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        })
        .collect()
}

/// `kubernetes-validate`: on PATH, or installed into a venv under the target dir; `None`
/// (with the reason) where neither works.
fn validator() -> Result<PathBuf, String> {
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(PathBuf::from("kubernetes-validate"));
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("k8s-venv");
    let bin = venv.join("bin/kubernetes-validate");
    if bin.exists() {
        return Ok(bin);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "kubernetes-validate"]))?;
    Ok(bin)
}

#[test]
fn the_manifests_are_valid_kubernetes() {
    let validator = match validator() {
        Ok(v) => v,
        Err(why) => {
            testkit::skipped(
                "the Kubernetes schema validation",
                &why,
                "It needs python3 with venv and PyPI (`make deps` installs python3-venv).",
            );
            return;
        }
    };
    let files = manifests();
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        let out = Command::new(&validator)
            .arg("--strict")
            .arg(file)
            .output()
            .expect("run kubernetes-validate");
        let said = testkit::process::combined(&out);
        assert!(out.status.success(), "{}: {said}", file.display());
        println!("{said}");
    }
}

/// The container named `name` in a pod template, looked for in both lists.
fn container<'a>(template: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let spec = &template["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn config_map(docs: &[serde_json::Value], key: &str) -> String {
    docs.iter()
        .find_map(|d| d["data"][key].as_str())
        .unwrap_or_else(|| panic!("no ConfigMap with {key}"))
        .to_owned()
}

/// Runs `bin --check-config` on `text` with `env`; panics with what it said unless "ok".
fn check_config(bin: &str, text: &str, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(format!("{bin}.yaml"));
    std::fs::write(&file, text).expect("write config");
    let out = Command::new(testkit::process::workspace_bin(bin))
        .arg("--check-config")
        .arg("-c")
        .arg(&file)
        .envs(env.iter().copied())
        .output()
        .expect("run --check-config");
    assert!(
        out.status.success(),
        "{bin}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_pods_are_shaped_as_documented_and_their_configs_load() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let consumer = documents(&dir.join("consumer.yaml"));
    let deployment = consumer
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    let synapse = container(&deployment["spec"]["template"], "synapse");
    assert_eq!(
        synapse["restartPolicy"], "Always",
        "synapse is a native sidecar"
    );
    let probe = synapse["startupProbe"]["exec"]["command"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(probe.iter().any(|a| a == "--probe-ready"), "{probe:?}");
    check_config("synapse", &config_map(&consumer, "synapse.yaml"), &[]);

    let provider = documents(&dir.join("provider.yaml"));
    let deployment = provider
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    let nerve = container(&deployment["spec"]["template"], "nerve");
    let pod_ip = nerve["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "POD_IP");
    assert_eq!(
        pod_ip.map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone()),
        Some("status.podIP".into())
    );
    let app = container(&deployment["spec"]["template"], "app");
    assert!(
        app["lifecycle"]["preStop"].is_object(),
        "the app waits for nerve's deregistration"
    );
    let nerve_yaml = config_map(&provider, "nerve.yaml");
    assert!(nerve_yaml.contains("${POD_IP}"), "{nerve_yaml}");
    check_config("nerve", &nerve_yaml, &[("POD_IP", "10.1.2.3")]);
}
