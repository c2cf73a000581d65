//! The `nats-edge` command: `check`, config files, environment and flag layering.

mod common;

use std::io::Write;
use std::process::Output;

use bytes::Bytes;
use common::*;

fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

fn check(file: &tempfile::NamedTempFile, envs: &[(&str, &str)]) -> Output {
    nats_edge_command()
        .arg("check")
        .arg("-c")
        .arg(file.path())
        .envs(envs.iter().copied())
        .output()
        .expect("run nats-edge check")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const VALID: &str = r#"
[[listeners]]
name = "default"
bind = "127.0.0.1:4222"
advertise = "nats.example.com:4222"
connect_urls = ["edge-a:4222", "edge-b:4222"]

[upstream]
urls = ["nats://127.0.0.5:4222", "nats://user:pass@127.0.0.6:4222"]
connect_timeout = "1500ms"

[limits]
max_payload = "512KiB"
max_control_line = "8KiB"
max_subscriptions = 1000
handshake_timeout = "2s"

[log]
format = "json"
level = "info"
"#;

#[test]
fn check_accepts_a_valid_file() {
    let f = config_file(VALID);
    let out = check(&f, &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    // Valid without starting: nothing is listening, nothing was dialled.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn check_rejects_an_unknown_key_naming_its_path() {
    let f = config_file(&VALID.replace("max_subscriptions = 1000", "max_subscriptionz = 1000"));
    let out = check(&f, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("limits.max_subscriptionz"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");
}

#[test]
fn check_rejects_an_unknown_listener_key_naming_its_path() {
    let f = config_file(&VALID.replace("advertise =", "advertize ="));
    let out = check(&f, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("listeners.0.advertize"), "{err}");
}

#[test]
fn check_rejects_a_bad_duration_naming_its_path() {
    let f =
        config_file(&VALID.replace("handshake_timeout = \"2s\"", "handshake_timeout = \"soon\""));
    let out = check(&f, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("limits.handshake_timeout"), "{err}");
    assert!(err.contains("soon"), "{err}");
}

#[test]
fn check_rejects_a_bad_size_naming_its_path() {
    let f = config_file(&VALID.replace("\"512KiB\"", "\"lots\""));
    let out = check(&f, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("limits.max_payload"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_rejects_an_invalid_value_naming_its_path() {
    let f = config_file(&VALID.replace("\"8KiB\"", "10"));
    let out = check(&f, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("limits.max_control_line"),
        "{}",
        stderr(&out)
    );
    let f = config_file(&VALID.replace("nats://127.0.0.5:4222", "http://127.0.0.5:4222"));
    let out = check(&f, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("upstream.urls"), "{}", stderr(&out));
}

/// A TLS listener whose `tls` table ends with `handshake_first = {value}`.
fn tls_listener_with_handshake_first(value: &str) -> String {
    VALID.replace(
        "advertise = \"nats.example.com:4222\"",
        &format!(
            "kind = \"tls\"\ntls = {{ cert_file = \"edge.pem\", key_file = \"edge-key.pem\", \
             handshake_first = {value} }}"
        ),
    )
}

#[test]
fn check_rejects_a_bad_handshake_first_naming_file_key_and_reason() {
    for (value, reason) in [
        (
            "\"soon\"",
            "`soon` is not true, false, \"auto\" or a fallback delay",
        ),
        (
            "1",
            "true, false, \"auto\" or a fallback delay such as \"50ms\"",
        ),
        (
            "\"5s\"",
            "must be shorter than the listener's handshake_timeout",
        ),
    ] {
        let f = config_file(&tls_listener_with_handshake_first(value));
        let out = check(&f, &[]);
        assert!(!out.status.success(), "{value} was accepted");
        let err = stderr(&out);
        assert!(err.contains("listeners.0.tls.handshake_first"), "{err}");
        assert!(err.contains(reason), "{value}: {err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }
}

#[test]
fn check_does_not_print_upstream_passwords() {
    let f = config_file(&VALID.replace("nats://127.0.0.5:4222", "ftp://u:hunter2@127.0.0.5:4222"));
    let out = check(&f, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("upstream.urls"), "{err}");
    assert!(!err.contains("hunter2"), "password printed: {err}");
}

/// A relative `seed_file` is found next to the config file, wherever the edge is started
/// from, as rule files are.
#[test]
fn a_relative_seed_file_is_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let seed = nkeys::KeyPair::new_account().seed().unwrap();
    std::fs::write(dir.path().join("proxy.nk"), seed).unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!("{VALID}\n[auth.trusted_proxy]\nseed_file = \"proxy.nk\"\n"),
    )
    .unwrap();
    let out = nats_edge_command()
        .arg("check")
        .arg("-c")
        .arg(&config)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run nats-edge check");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
}

/// `check` refuses a pid file `run` could not write for want of its directory.
#[test]
fn check_refuses_a_pid_file_in_a_missing_directory() {
    let f = config_file(VALID);
    let out = nats_edge_command()
        .arg("check")
        .arg("-c")
        .arg(f.path())
        .arg("--pid-file")
        .arg("/nonexistent-nats-edge-dir/edge.pid")
        .output()
        .expect("run nats-edge check");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("pid_file"), "{err}");
    assert!(err.contains("/nonexistent-nats-edge-dir"), "{err}");
}

#[test]
fn check_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = nats_edge_command()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&path.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_names_a_bad_environment_value() {
    let f = config_file(VALID);
    let out = check(&f, &[("NATS_EDGE_LIMITS__HANDSHAKE_TIMEOUT", "soon")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.to_lowercase().contains("limits.handshake_timeout"),
        "{err}"
    );
    assert!(err.contains("NATS_EDGE_"), "the source is named: {err}");

    // A whole list in one variable: that variable is named, not one per element.
    let out = check(
        &f,
        &[("NATS_EDGE_LISTENERS", "[{name=\"a\", bind=\"nope:1\"}]")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("listeners.0.bind"), "{err}");
    assert!(
        err.contains("environment variable NATS_EDGE_LISTENERS)"),
        "{err}"
    );

    let out = check(&f, &[("NATS_EDGE_LIMITS__MAX_PAYLOADZ", "1")]);
    assert!(!out.status.success(), "a misspelt variable is an error");
    assert!(
        stderr(&out).to_lowercase().contains("max_payloadz"),
        "{}",
        stderr(&out)
    );
}

/// A check of two keys names where each came from: here the file's timeout is fine, and the
/// grace period raised in the environment is what broke it.
#[test]
fn a_check_of_two_keys_names_both_origins() {
    let f = config_file(&format!("{VALID}\n[drain]\ntimeout = \"25s\"\n"));
    let out = check(&f, &[("NATS_EDGE_DRAIN__GRACE_PERIOD", "30s")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("drain.timeout: must be longer than drain.grace_period"),
        "{err}"
    );
    assert!(
        err.contains("drain.grace_period from environment variable NATS_EDGE_DRAIN__GRACE_PERIOD"),
        "{err}"
    );
}

/// A nested key written with one underscore is no key, so it is ignored; `check` says so and
/// names the variable meant. Kubernetes' service variables pass without a word.
#[test]
fn check_warns_of_a_nested_key_with_one_underscore() {
    let f = config_file(VALID);
    let out = check(
        &f,
        &[
            ("NATS_EDGE_DRAIN_TIMEOUT", "60s"),
            ("NATS_EDGE_ADMIN_SERVICE_HOST", "10.96.0.7"),
            ("NATS_EDGE_PORT_4222_TCP", "tcp://10.96.0.8:4222"),
            // Not ASCII where a section name could end: neither a key nor a panic.
            ("NATS_EDGE_LO\u{e9}_X", "1"),
        ],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("NATS_EDGE_DRAIN_TIMEOUT is not a configuration key")
            && err.contains("NATS_EDGE_DRAIN__TIMEOUT?"),
        "{err}"
    );
    assert!(
        !err.contains("SERVICE_HOST") && !err.contains("PORT_4222"),
        "{err}"
    );

    // Too many underscores leave an empty key segment, which the environment provider
    // skips without a word: named too.
    let out = check(&f, &[("NATS_EDGE_LOG____LEVEL", "debug")]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("NATS_EDGE_LOG____LEVEL is not a configuration key")
            && err.contains("NATS_EDGE_LOG__LEVEL?"),
        "{err}"
    );

    // The trusted proxy's seed variable is read, not ignored, whatever its name.
    let seed = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY";
    let f = config_file(&format!(
        "{VALID}\n[auth.trusted_proxy]\nseed_env = \"NATS_EDGE_AUTH_SEED\"\n"
    ));
    let out = check(&f, &[("NATS_EDGE_AUTH_SEED", seed)]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        !stderr(&out).contains("NATS_EDGE_AUTH_SEED"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn busy_poll_from_the_environment_is_configuration() {
    let f = config_file(VALID);
    let out = check(&f, &[("NATS_EDGE_BUSY_POLL", "200us")]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    // Read as the key, not ignored as an unknown variable: its limit applies.
    let out = check(&f, &[("NATS_EDGE_BUSY_POLL", "20ms")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("busy_poll: at most 10ms"),
        "{}",
        stderr(&out)
    );
}

async fn assert_works_through(url: &str) {
    let c = client(url).await;
    let mut sub = c.subscribe("cli").await.unwrap();
    round_trip(&c).await;
    c.publish("cli", Bytes::from_static(b"through the binary"))
        .await
        .unwrap();
    round_trip(&c).await;
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"through the binary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_sets_the_upstream() {
    let server = NatsServer::start();
    let url = server.url();
    let edge = EdgeProcess::spawn(
        &["--listen", "127.0.0.1:0"],
        &[("NATS_EDGE_UPSTREAM__URLS", url.as_str())],
    );
    assert_works_through(&edge.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_the_file_and_flags_override_both() {
    let server = NatsServer::start();
    let dead_port = dead_port();
    let dead = dead_port.url();
    let f = config_file(&format!(
        "[[listeners]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"{dead}\"]\n[limits]\nmax_payload = \"2KiB\"\n"
    ));
    let path = f.path().to_str().unwrap().to_string();

    // The file alone points at nothing.
    let edge = EdgeProcess::spawn(&["-c", &path], &[]);
    expect_upstream_unavailable(edge.addr()).await;
    drop(edge);

    // The environment wins over the file, key by key.
    let url = server.url();
    let edge = EdgeProcess::spawn(
        &["-c", &path],
        &[
            ("NATS_EDGE_UPSTREAM__URLS", url.as_str()),
            ("NATS_EDGE_LIMITS__MAX_PAYLOAD", "1000"),
        ],
    );
    let (_raw, info) = RawConn::connect_info(edge.addr()).await;
    assert_eq!(info["max_payload"], 1000);
    assert_works_through(&edge.url()).await;
    drop(edge);

    // Flags win over the environment.
    let edge = EdgeProcess::spawn(
        &["-c", &path, "--upstream", &url, "--listen", "127.0.0.1:0"],
        &[("NATS_EDGE_UPSTREAM__URLS", dead.as_str())],
    );
    let (_raw, info) = RawConn::connect_info(edge.addr()).await;
    assert_eq!(info["max_payload"], 2048, "the file's limit still applies");
    assert_works_through(&edge.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_alone_run_the_common_case() {
    let server = NatsServer::start();
    let edge = EdgeProcess::spawn(
        &["--listen", "127.0.0.1:0", "--upstream", &server.url()],
        &[],
    );
    assert_works_through(&edge.url()).await;
}

#[test]
fn check_without_an_upstream_names_the_key() {
    let out = nats_edge_command()
        .args(["check", "--listen", "127.0.0.1:4222"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("upstream.urls"), "{}", stderr(&out));
}

#[test]
fn a_listen_address_in_use_is_a_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = nats_edge_command()
        .args(["--listen", &addr, "--upstream", "nats://127.0.0.1:4222"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&addr), "{err}");
    assert!(err.contains("default"), "the listener is named: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_and_exits_cleanly() {
    let server = NatsServer::start();
    // The drain closes what is still open after its grace period.
    let mut edge = EdgeProcess::spawn(
        &["--listen", "127.0.0.1:0", "--upstream", &server.url()],
        &[
            ("NATS_EDGE_DRAIN__GRACE_PERIOD", "1s"),
            ("NATS_EDGE_DRAIN__TIMEOUT", "5s"),
        ],
    );
    let (mut raw, _) = RawConn::connect_info(edge.addr()).await;
    assert!(
        !raw.roundtrip(b"CONNECT {\"verbose\":false}\r\n")
            .await
            .closed
    );
    let status = edge.terminate().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        edge.log().dump()
    );
    assert!(raw.closes_within(WAIT).await, "session left open");
}

/// SIGHUP means "reload the configuration" (as for nats-server): the process must survive it,
/// and its sessions with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_the_edge_and_its_sessions_running() {
    let server = NatsServer::start();
    let f = config_file(&format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n[upstream]\nurls = [\"{}\"]\n",
        server.url()
    ));
    let mut edge = EdgeProcess::spawn(&["-c", f.path().to_str().unwrap()], &[]);
    let (mut raw, _) = RawConn::connect_info(edge.addr()).await;
    assert!(
        !raw.roundtrip(b"CONNECT {\"verbose\":false}\r\n")
            .await
            .closed
    );
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(from, "configuration reloaded");
    // The session answers after the reload, and so does a new one.
    assert!(raw.is_open().await, "session closed by SIGHUP");
    assert!(edge.is_running(), "nats-edge exited on SIGHUP");
    assert_works_through(&edge.url()).await;
}

/// `nats-edge reload -c FILE` reads only `pid_file` from the configuration: it works from a
/// shell without the service's environment (here, no upstream URL anywhere), and says what
/// is wrong with the pid file, not with the rest.
#[test]
fn reload_reads_only_the_pid_file_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nats-edge.pid");
    // A process id no process has (pid_max is at most 2^22).
    std::fs::write(&pid_file, "2147483646\n").unwrap();
    let file = config_file(&format!("pid_file = {:?}\n", pid_file.to_str().unwrap()));
    let out = nats_edge_command()
        .args(["reload", "-c"])
        .arg(file.path())
        .env_remove("NATS_EDGE_UPSTREAM__URLS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no process 2147483646"), "{err}");
}

/// Started with a soft limit on open files below its hard limit (a container runtime's
/// 1024), the edge raises it to the hard one, as nats-server (a Go program) does: each
/// proxied client takes two descriptors.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let read_limits = |pid: u32| -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string();
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[3].to_string(), fields[4].to_string())
    };
    let (_, hard) = read_limits(std::process::id());
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--nofile=256:", "--", env!("CARGO_BIN_EXE_nats-edge")])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "nats://127.0.0.1:1",
        ]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NATS_EDGE_") {
            cmd.env_remove(key);
        }
    }
    let edge = EdgeProcess::spawn_command(cmd);
    assert_eq!(read_limits(edge.pid()), (hard.clone(), hard));
}
