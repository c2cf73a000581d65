//! The configuration files shipped in deploy/ stay valid and in step with the code: the
//! binary's `check` accepts them, the reference file states the real defaults, and it (and
//! docs/configuration.md) mention every key the config understands.

use std::path::{Path, PathBuf};
use std::process::Command;

use nats_edge::config::{
    ByteSize, ClientAuth, Config, HandshakeFirst, ListenerTls, ProxyProtocolVersion, StringList,
    UpstreamTls, WsSection,
};

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs `nats-edge check -c <file>` with no `NATS_EDGE_*` variables from the caller's
/// environment, so only the file is judged.
fn check(file: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nats-edge"));
    cmd.arg("check").arg("-c").arg(file);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NATS_EDGE_") {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("running nats-edge check")
}

fn assert_check_passes(rel: &str) {
    let out = check(&repo_path(rel));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nats-edge check -c {rel} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

#[test]
fn reference_config_passes_check() {
    assert_check_passes("deploy/nats-edge.toml");
}

#[test]
fn demo_config_passes_check() {
    assert_check_passes("deploy/demo.toml");
}

#[test]
fn check_rejects_a_broken_file_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[upstream]\nurls = [\"nats://127.0.0.1:4223\"]\n[limits]\nmax_control_line = 10\n",
    )
    .unwrap();
    let out = check(&file);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.max_control_line"), "{stderr}");
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn reference_config_states_the_defaults() {
    let file = Config::from_toml_str(&read("deploy/nats-edge.toml")).unwrap();
    let defaults = Config::default();
    assert_eq!(file.listeners, defaults.listeners);
    assert_eq!(
        file.upstream.connect_timeout,
        defaults.upstream.connect_timeout
    );
    assert_eq!(file.limits, defaults.limits);
    assert_eq!(file.log, defaults.log);
    assert_eq!(file.worker_threads, defaults.worker_threads);
}

/// Every key path of the config, found by serialising one with every optional field set.
fn all_keys() -> Vec<String> {
    let mut config = Config::default();
    config.listeners[0].advertise = Some("edge.example.com:4222".into());
    config.listeners[0].connect_urls = StringList(vec!["edge.example.com:4222".into()]);
    config.upstream.urls = StringList(vec!["nats://127.0.0.1:4223".into()]);
    config.limits.max_payload = Some(ByteSize(1024));
    config.limits.handshake_timeout = Some(nats_edge::config::HumanDuration(
        std::time::Duration::from_secs(2),
    ));
    // The optional transport tables, every optional key set.
    config.listeners[0].tls = Some(ListenerTls {
        cert_file: "edge.pem".into(),
        key_file: "edge-key.pem".into(),
        client_ca_file: Some("clients-ca.pem".into()),
        client_auth: Some(ClientAuth::Required),
        handshake_first: HandshakeFirst::Off,
    });
    config.listeners[0].ws = Some(WsSection {
        jwt_cookie: Some("jwt".into()),
        user_cookie: Some("user".into()),
        pass_cookie: Some("pass".into()),
        token_cookie: Some("token".into()),
        ..WsSection::default()
    });
    config.upstream.tls = Some(UpstreamTls {
        ca_file: Some("ca.pem".into()),
        cert_file: Some("edge-client.pem".into()),
        key_file: Some("edge-client-key.pem".into()),
        server_name: Some("nats.internal".into()),
        handshake_first: false,
    });
    config.upstream.proxy_protocol = Some(ProxyProtocolVersion::V2);
    config.listeners[0].rewrite = Some("acme".into());
    config.rewrite.default = Some("acme".into());
    config.tagging.file = Some("rules/tagging/default.toml".into());
    let value = serde_json::to_value(&config).unwrap();
    let mut keys = Vec::new();
    collect_keys(&value, "", &mut keys);
    keys
}

/// Whether a top-level key holds a table (or an array of tables) rather than a value.
fn value_is_table(key: &str) -> bool {
    let value = serde_json::to_value(Config::default()).unwrap();
    matches!(
        value.get(key),
        Some(serde_json::Value::Object(_) | serde_json::Value::Array(_))
    )
}

fn collect_keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                collect_keys(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(first @ serde_json::Value::Object(_)) = items.first() {
                collect_keys(first, prefix, out);
            }
        }
        _ => {}
    }
}

/// The lines of `text` from the header of the top-level table `top` (`[top]`, `[[top]]`)
/// to the next header of another table; empty when there is no such header.
fn table_part<'a>(text: &'a str, top: &str) -> &'a str {
    let header_of = |line: &str| {
        let name = line.strip_prefix('[')?.trim_start_matches('[');
        let end = name.find(['.', ']'])?;
        Some(name[..end].trim().to_string())
    };
    let mut start = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some(name) = header_of(line) {
            match start {
                None if name == top => start = Some(offset),
                Some(from) if name != top => return &text[from..offset],
                _ => {}
            }
        }
        offset += line.len();
    }
    start.map_or("", |from| &text[from..])
}

#[test]
fn reference_config_and_docs_mention_every_key() {
    let reference = read("deploy/nats-edge.toml");
    let docs = read("docs/configuration.md");
    for key in all_keys() {
        let leaf = key.rsplit('.').next().unwrap();
        let is_table = value_is_table(&key);
        let in_reference = if is_table {
            reference.contains(&format!("[{key}]")) || reference.contains(&format!("[[{key}]]"))
        } else {
            // Inside its own table's part of the file: `upstream.tls.handshake_first` is
            // not described by the listeners' `handshake_first`.
            let top = key.split('.').next().unwrap();
            let part = if top == key {
                &reference[..reference.find("\n[").unwrap_or(reference.len())]
            } else {
                table_part(&reference, top)
            };
            part.contains(&format!("{leaf} ="))
        };
        assert!(
            in_reference,
            "deploy/nats-edge.toml does not describe `{key}`"
        );
        assert!(
            docs.contains(&format!("`{key}`")),
            "docs/configuration.md does not describe `{key}`"
        );
    }
}
