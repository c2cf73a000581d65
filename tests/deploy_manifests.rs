//! The deployment artifacts in deploy/ stay valid and consistent with each other:
//!
//! - every Kubernetes manifest in deploy/k8s passes `kubernetes-validate --strict` against
//!   Kubernetes [`KUBERNETES_VERSION`], and each kustomization lists exactly its directory's
//!   manifests;
//! - the nats-edge.toml in each ConfigMap, and the container image's default configuration,
//!   pass `nats-edge check`;
//! - the preStop sleep plus the drain timeout fit in terminationGracePeriodSeconds, and the
//!   systemd unit's TimeoutStopSec exceeds the drain timeout;
//! - the Dockerfile has the expected structure (multi-stage, the binary only, a non-root
//!   user), checked statically (nothing is built here);
//! - the systemd unit has the expected keys;
//! - the Grafana dashboard queries exactly the metric families docs/operations.md lists
//!   (tests/ops_dashboard.rs checks that list and the dashboard against a live scrape).
//!
//! `kubernetes-validate` is `$KUBERNETES_VALIDATE_BIN` if set, else `kubernetes-validate` from
//! `PATH` (`.ci/install` installs it with pip; its schemas are bundled, so it works offline).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

mod metrics_support;

use metrics_support::{dashboard, dashboard_metric_names, doc_metric_table, metric_names_in};

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.30.0";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The kubernetes-validate executable: `$KUBERNETES_VALIDATE_BIN`, or `kubernetes-validate`
/// from `PATH`.
fn kubernetes_validate_bin() -> String {
    std::env::var("KUBERNETES_VALIDATE_BIN").unwrap_or_else(|_| "kubernetes-validate".to_string())
}

/// The directories under deploy/k8s that hold manifests (one recipe each).
fn k8s_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_path("deploy/k8s"))
        .expect("deploy/k8s")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no recipes in deploy/k8s");
    dirs
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

/// The YAML files of one recipe directory, kustomization.yaml included.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Every Kubernetes resource manifest under deploy/k8s (kustomizations are not resources).
fn k8s_manifests() -> Vec<PathBuf> {
    k8s_dirs()
        .iter()
        .flat_map(|d| yaml_files(d))
        .filter(|p| !is_kustomization(p))
        .collect()
}

#[test]
fn k8s_manifests_pass_kubernetes_validate() {
    let manifests = k8s_manifests();
    assert!(!manifests.is_empty());
    let bin = kubernetes_validate_bin();
    let out = Command::new(&bin)
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&manifests)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {bin}: {e} (install it with `bash .ci/install`, or set KUBERNETES_VALIDATE_BIN)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate (Kubernetes {KUBERNETES_VERSION}) rejected the manifests ({}):\n{text}",
        out.status
    );
    // A kind without a schema is only a warning; here it means a manifest went unchecked.
    assert!(
        !text.contains("WARN") && !text.contains("ERROR"),
        "kubernetes-validate (Kubernetes {KUBERNETES_VERSION}) warned:\n{text}"
    );
}

/// The entries of a top-level YAML list (`key:` followed by `  - item` lines).
fn yaml_list(text: &str, key: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with(&format!("{key}:")) {
            inside = true;
            continue;
        }
        if inside {
            let trimmed = line.trim_start();
            if let Some(item) = trimmed.strip_prefix("- ") {
                items.push(item.trim().to_string());
            } else if !line.starts_with(' ') && !trimmed.is_empty() && !trimmed.starts_with('#') {
                break;
            }
        }
    }
    items
}

#[test]
fn kustomizations_list_every_manifest_of_their_directory() {
    for dir in k8s_dirs() {
        let kustomization = dir.join("kustomization.yaml");
        let text = std::fs::read_to_string(&kustomization)
            .unwrap_or_else(|e| panic!("{}: {e}", rel(&kustomization)));
        let listed: BTreeSet<String> = yaml_list(&text, "resources").into_iter().collect();
        let present: BTreeSet<String> = yaml_files(&dir)
            .iter()
            .filter(|p| !is_kustomization(p))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(listed, present, "{}: resources", rel(&kustomization));
    }
}

/// The body of the `nats-edge.toml: |` block scalar in a ConfigMap manifest, unindented.
fn configmap_toml(manifest: &str) -> Option<String> {
    let mut lines = manifest.lines();
    let header = lines.by_ref().find(|l| l.trim() == "nats-edge.toml: |")?;
    let key_indent = header.len() - header.trim_start().len();
    let mut body = Vec::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            body.push(String::new());
            continue;
        }
        let this = line.len() - line.trim_start().len();
        if this <= key_indent {
            break;
        }
        let block = *indent.get_or_insert(this);
        assert!(
            this >= block,
            "a less indented line inside the block: {line:?}"
        );
        body.push(line[block..].to_string());
    }
    Some(body.join("\n") + "\n")
}

/// Runs `nats-edge check -c <file>` with no `NATS_EDGE_*` variables from the caller's
/// environment, so only the file is judged.
fn assert_check_passes(toml: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats-edge.toml");
    std::fs::write(&file, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nats-edge"));
    cmd.arg("check").arg("-c").arg(&file);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NATS_EDGE_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().expect("running nats-edge check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("configuration OK"),
        "nats-edge check failed for {what} ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
}

/// The ConfigMap manifests that carry a nats-edge.toml, with that file.
fn configmap_configs() -> Vec<(PathBuf, String)> {
    k8s_manifests()
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.contains("\nkind: ConfigMap") {
                return None;
            }
            configmap_toml(&text).map(|toml| (path, toml))
        })
        .collect()
}

#[test]
fn configmap_configs_pass_check() {
    let configs = configmap_configs();
    assert_eq!(
        configs.len(),
        k8s_dirs().len(),
        "one ConfigMap with a nats-edge.toml per recipe"
    );
    for (path, toml) in configs {
        assert_check_passes(&toml, &rel(&path));
    }
}

#[test]
fn image_default_config_passes_check() {
    assert_check_passes(
        &read("deploy/docker/nats-edge.toml"),
        "deploy/docker/nats-edge.toml",
    );
}

/// A duration as the config writes it (`"30s"`, `"500ms"`, `"1m"`, `30`), in milliseconds.
fn duration_ms(value: &str) -> u64 {
    let v = value.trim().trim_matches('"');
    let (number, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration {value:?}"));
    match unit {
        "" | "s" => n * 1000,
        "ms" => n,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => panic!("duration {value:?}"),
    }
}

/// `key = value` inside `[table]` of a TOML text (line-based; enough for these files).
fn toml_value(toml: &str, table: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if current == table {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// The number after `key:` on the first line that has it, after line `from` matches.
fn yaml_number_after(text: &str, from: &str, key: &str) -> Option<u64> {
    let mut seen = from.is_empty();
    for line in text.lines().map(str::trim) {
        if !seen {
            seen = line.starts_with(from);
            continue;
        }
        if let Some(v) = line.strip_prefix(&format!("{key}:")) {
            return v.trim().parse().ok();
        }
    }
    None
}

#[test]
fn drain_fits_in_the_termination_grace_period() {
    for dir in k8s_dirs() {
        let name = rel(&dir);
        let deployment = std::fs::read_to_string(dir.join("deployment.yaml"))
            .unwrap_or_else(|e| panic!("{name}/deployment.yaml: {e}"));
        let (_, toml) = configmap_configs()
            .into_iter()
            .find(|(p, _)| p.parent() == Some(dir.as_path()))
            .unwrap_or_else(|| panic!("{name}: no ConfigMap with nats-edge.toml"));
        let grace = yaml_number_after(&deployment, "", "terminationGracePeriodSeconds")
            .unwrap_or_else(|| panic!("{name}: terminationGracePeriodSeconds"));
        let pre_stop = yaml_number_after(&deployment, "preStop:", "seconds")
            .unwrap_or_else(|| panic!("{name}: a preStop sleep"));
        let timeout = toml_value(&toml, "drain", "timeout")
            .unwrap_or_else(|| panic!("{name}: [drain] timeout in the ConfigMap"));
        let grace_period = toml_value(&toml, "drain", "grace_period")
            .unwrap_or_else(|| panic!("{name}: [drain] grace_period in the ConfigMap"));
        let timeout_ms = duration_ms(&timeout);
        assert!(
            duration_ms(&grace_period) < timeout_ms,
            "{name}: drain.grace_period {grace_period} must be below drain.timeout {timeout}"
        );
        assert!(
            pre_stop * 1000 + timeout_ms < grace * 1000,
            "{name}: preStop sleep {pre_stop}s + drain.timeout {timeout} must be below \
             terminationGracePeriodSeconds {grace}"
        );
        // The comments state the arithmetic; keep them in step with the numbers.
        let sum = format!(
            "preStop sleep ({pre_stop}) + drain.timeout ({}) = {} < terminationGracePeriodSeconds ({grace})",
            timeout_ms / 1000,
            pre_stop + timeout_ms / 1000
        );
        assert!(deployment.contains(&sum), "{name}: the comment `{sum}`");
    }
}

#[test]
fn deployments_have_probes_and_a_locked_down_security_context() {
    let mut sidecars = 0;
    for dir in k8s_dirs() {
        let name = rel(&dir);
        let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
        for needle in [
            "livenessProbe:",
            "readinessProbe:",
            "path: /healthz",
            "path: /readyz",
            "containerPort: 8222",
            "runAsNonRoot: true",
            "runAsUser: 65532",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "drop: [\"ALL\"]",
            "args: [\"-c\", \"/etc/nats-edge/nats-edge.toml\"]",
            "mountPath: /etc/nats-edge",
        ] {
            assert!(
                deployment.contains(needle),
                "{name}/deployment.yaml lacks `{needle}`"
            );
        }
        assert!(
            deployment.contains("resources:") && deployment.contains("requests:"),
            "{name}/deployment.yaml: resources"
        );
        if name.ends_with("sidecar") {
            sidecars += 1;
            // A native sidecar: an init container that keeps running, probed at start, so
            // the application's first connect finds the edge listening.
            let init = deployment
                .split_once("initContainers:")
                .map(|(_, rest)| {
                    rest.split_once("\n      containers:")
                        .map_or(rest, |(i, _)| i)
                })
                .unwrap_or_else(|| panic!("{name}/deployment.yaml: no initContainers"));
            for needle in [
                "- name: nats-edge",
                "restartPolicy: Always",
                "startupProbe:",
            ] {
                assert!(
                    init.contains(needle),
                    "{name}: the init container lacks `{needle}`"
                );
            }
        }
    }
    assert_eq!(sidecars, 1, "the sidecar layout was not checked");
}

/// One Dockerfile instruction: the keyword and its arguments, continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
        pending.clear();
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_ships_the_binary_only() {
    let instructions = dockerfile_instructions(&read("deploy/Dockerfile"));
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let build = &instructions[stages[0]..stages[1]];
    let runtime = &instructions[stages[1]..];

    assert!(
        build[0].1.starts_with("rust:1-slim-bookworm "),
        "builder: {}",
        build[0].1
    );
    let stage_name = build[0]
        .1
        .rsplit_once(" AS ")
        .or_else(|| build[0].1.rsplit_once(" as "))
        .map(|(_, n)| n.trim().to_string())
        .expect("the build stage is named");
    assert!(
        build.iter().any(
            |(k, a)| k == "RUN" && a.contains("cargo build --release --locked --bin nats-edge")
        ),
        "the builder runs cargo build --release --locked --bin nats-edge"
    );
    // The build context copied covers the workspace: both crates, the lock file and the
    // bench target the root manifest declares.
    let copied: BTreeSet<&str> = build
        .iter()
        .filter(|(k, _)| k == "COPY")
        .flat_map(|(_, a)| {
            let words: Vec<&str> = a.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "src", "filters", "benches"] {
        assert!(copied.contains(needed), "the builder copies {needed}");
        assert!(repo_path(needed).exists(), "{needed} exists");
    }

    let base = &runtime[0].1;
    assert!(
        base.starts_with("gcr.io/distroless/cc-debian12:nonroot")
            || base.starts_with("debian:bookworm-slim"),
        "runtime base: {base}"
    );
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(k, _)| k == "COPY" || k == "ADD")
        .map(|(_, a)| a)
        .collect();
    let from_build: Vec<&&String> = copies
        .iter()
        .filter(|a| a.starts_with(&format!("--from={stage_name} ")))
        .collect();
    assert_eq!(
        from_build.len(),
        1,
        "exactly one file comes from the builder"
    );
    let binary: Vec<&str> = from_build[0].split_whitespace().collect();
    assert_eq!(binary[1..], ["/nats-edge", "/nats-edge"], "the binary only");
    for other in copies.iter().filter(|a| !a.starts_with("--from=")) {
        let words: Vec<&str> = other.split_whitespace().collect();
        assert_eq!(words.len(), 2, "one file per COPY: {other}");
        assert!(
            words[0].starts_with("deploy/") && words[0].ends_with(".toml"),
            "the runtime gets the binary and a configuration only, not {other}"
        );
        assert!(repo_path(words[0]).is_file(), "{} exists", words[0]);
        assert_eq!(words[1], "/etc/nats-edge/nats-edge.toml");
    }

    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("the runtime stage has no {keyword}"))
    };
    let user = last("USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        !["root", "0", ""].contains(&uid),
        "the image runs as a non-root user, not {user}"
    );
    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert!(
        exposed.contains("4222") && exposed.contains("8222"),
        "{exposed:?}"
    );
    assert_eq!(last("ENTRYPOINT").replace(' ', ""), r#"["/nats-edge"]"#);
    assert_eq!(
        last("CMD").replace(' ', ""),
        r#"["-c","/etc/nats-edge/nats-edge.toml"]"#
    );

    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for entry in ["target/", "fuzz/target/", "node_modules/", ".git"] {
        assert!(ignored.contains(entry), ".dockerignore lacks {entry}");
    }
}

/// The systemd unit as section -> key -> values (a key may repeat).
fn systemd_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut unit: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

#[test]
fn systemd_unit_has_the_expected_keys() {
    let unit = systemd_unit(&read("deploy/systemd/nats-edge.service"));
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] lacks {key}="));
        values.last().unwrap()
    };
    assert_eq!(one("Type"), "simple");
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/nats-edge -c /etc/nats-edge/nats-edge.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("LimitNOFILE"), "65536");
    assert_eq!(one("CapabilityBoundingSet"), "");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    assert!(
        service.get("DynamicUser").is_some_and(|v| v == &["yes"])
            || service.get("User").is_some_and(|v| v != &["root"]),
        "a dynamic or dedicated user"
    );
    // systemd must not have to SIGKILL a draining edge.
    // The unit's install steps copy deploy/nats-edge.toml; the image's file is the other
    // shipped one.
    let stop = duration_ms(&one("TimeoutStopSec").replace("sec", "s"));
    for file in ["deploy/nats-edge.toml", "deploy/docker/nats-edge.toml"] {
        let drain = duration_ms(
            &toml_value(&read(file), "drain", "timeout")
                .unwrap_or_else(|| panic!("[drain] timeout in {file}")),
        );
        assert!(
            stop > drain,
            "TimeoutStopSec ({stop} ms) must exceed [drain] timeout ({drain} ms) of {file}"
        );
    }
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names_in(
        r#"histogram_quantile(0.99, sum by (le) (rate(nats_edge_filter_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) / my_nats_edge_x + nats_edge_draining"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "nats_edge_draining".to_string(),
            "nats_edge_filter_duration_seconds".to_string()
        ])
    );
}

#[test]
fn dashboard_uses_only_documented_metrics() {
    let used = dashboard_metric_names(&dashboard());
    let documented: BTreeSet<String> = doc_metric_table(&read("docs/operations.md"))
        .into_iter()
        .map(|m| m.name)
        .collect();
    let unknown: Vec<&String> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics docs/operations.md does not list: {unknown:?}"
    );
    let unused: Vec<&String> = documented.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "documented metrics no panel shows: {unused:?}"
    );
}

#[test]
fn dashboard_structure() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(d["uid"], "nats-edge");
    let vars = d["templating"]["list"]
        .as_array()
        .expect("template variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("listener")["type"], "query");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {}",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {}",
                panel["title"]
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("nats_edge_")),
                "panel {}",
                panel["title"]
            );
        }
    }
}
