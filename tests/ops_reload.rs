//! Configuration reload on SIGHUP and `nats-edge reload`: a changed limit applies to new
//! connections, a broken file keeps the running configuration and is counted, and a key
//! that cannot change live is named in the log.

mod common;

use std::io::Write;

use common::*;

fn write_config(path: &std::path::Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

fn config(upstream: &str, pid_file: &std::path::Path, extra: &str) -> String {
    format!(
        "pid_file = {:?}\n[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [{upstream:?}]\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}",
        pid_file.display().to_string()
    )
}

async fn max_payload_seen(addr: std::net::SocketAddr) -> (RawConn, i64) {
    let (raw, info) = RawConn::connect_info(addr).await;
    (raw, info["max_payload"].as_i64().expect("max_payload"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_limits_to_new_connections_and_keeps_the_config_on_a_bad_file() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats-edge.toml");
    let pid_file = dir.path().join("nats-edge.pid");
    write_config(
        &file,
        &config(&server.url(), &pid_file, "[limits]\nmax_payload = 1024\n"),
    );
    let edge = EdgeProcess::spawn(&["-c", file.to_str().unwrap()], &[]);
    let admin = edge.admin_addr();
    let (mut before, seen) = max_payload_seen(edge.addr()).await;
    assert_eq!(seen, 1024);
    assert!(
        !before
            .roundtrip(b"CONNECT {\"verbose\":false}\r\n")
            .await
            .closed
    );

    // A new limit, through `nats-edge reload` (the pid file finds the process).
    write_config(
        &file,
        &config(&server.url(), &pid_file, "[limits]\nmax_payload = 2048\n"),
    );
    let from = edge.log().len();
    let out = nats_edge_command()
        .args(["reload", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    edge.wait_log(from, "configuration reloaded");
    let (_after, seen) = max_payload_seen(edge.addr()).await;
    assert_eq!(seen, 2048, "new connections get the new limit");
    // The live connection keeps going.
    assert!(!before.roundtrip(b"PUB x 3\r\nabc\r\n").await.closed);

    // A broken file: logged with the key, counted, and the running configuration stays.
    write_config(
        &file,
        &config(&server.url(), &pid_file, "[limits]\nmax_payloadz = 1\n"),
    );
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    let (_, line) = edge.wait_log(
        from,
        "configuration reload failed; keeping the running configuration",
    );
    assert!(
        line["error"].as_str().unwrap().contains("max_payloadz"),
        "{line}"
    );
    assert_eq!(line["file"], file.to_str().unwrap(), "{line}");
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&text, "nats_edge_config_reloads_total{result=\"failed\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "nats_edge_config_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    let (_still, seen) = max_payload_seen(edge.addr()).await;
    assert_eq!(seen, 2048, "the running configuration stays");

    // A key that cannot change live is named, and the rest applies.
    write_config(
        &file,
        &format!(
            "worker_threads = 3\n{}",
            config(&server.url(), &pid_file, "[limits]\nmax_payload = 4096\n")
        ),
    );
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    let (_, line) = edge.wait_log(from, "configuration changed but needs a restart to apply");
    assert_eq!(line["key"], "worker_threads", "{line}");
    edge.wait_log(from, "configuration reloaded");
    let (_, seen) = max_payload_seen(edge.addr()).await;
    assert_eq!(seen, 4096);
    assert!(
        !before.roundtrip(b"").await.closed,
        "the first connection survived every reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_new_connections_to_new_upstreams() {
    let first = NatsServer::start();
    let second = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats-edge.toml");
    let pid_file = dir.path().join("nats-edge.pid");
    write_config(&file, &config(&first.url(), &pid_file, ""));
    let edge = EdgeProcess::spawn(&["-c", file.to_str().unwrap()], &[]);
    let admin = edge.admin_addr();
    let (mut before, _) = RawConn::connect_info(edge.addr()).await;
    assert!(!before.roundtrip(b"CONNECT {}\r\n").await.closed);

    write_config(&file, &config(&second.url(), &pid_file, ""));
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(from, "configuration reloaded");
    // The new upstream's dial counters are there from the reload on, at zero.
    let (_, text) = http_get(admin, "/metrics").await;
    for name in [
        "nats_edge_upstream_dials_total",
        "nats_edge_upstream_dial_failures_total",
    ] {
        let series = format!("{name}{{upstream=\"{}\"}}", second.url());
        assert_eq!(metric(&text, &series), Some(0.0), "{series}:\n{text}");
    }
    let (mut after, _) = RawConn::connect_info(edge.addr()).await;
    assert!(!after.roundtrip(b"CONNECT {}\r\n").await.closed);

    let connz = poll_http(admin, "/connz", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (v["total"] == 2).then_some(v)
    })
    .await;
    assert_eq!(connz["connections"][0]["upstream"], first.url(), "{connz}");
    assert_eq!(connz["connections"][1]["upstream"], second.url(), "{connz}");
    let (_, varz) = http_get(admin, "/varz").await;
    let varz: serde_json::Value = serde_json::from_str(&varz).unwrap();
    assert_eq!(
        varz["upstreams"],
        serde_json::json!([second.url()]),
        "{varz}"
    );
    // The connection made before the reload stays on its upstream.
    assert!(!before.roundtrip(b"").await.closed);
}

/// A pid file that names another program (the edge was killed and its process id reused):
/// `nats-edge reload` refuses rather than send that program a SIGHUP, which ends most.
#[test]
fn reload_does_not_signal_a_process_that_is_not_nats_edge() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nats-edge.pid");
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep runs");
    std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
    let out = nats_edge_command()
        .args(["reload", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let alive = other.try_wait().unwrap().is_none();
    let _ = other.kill();
    let _ = other.wait();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not nats-edge"), "{stderr}");
    assert!(alive, "the other process was signalled");
}

/// A reload checks the new file as a whole, as a restart would load it: a listener it cannot
/// add until the restart, whose key file is missing, refuses the reload now rather than
/// fail that restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_a_listener_that_would_not_start() {
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], "").await;
    let broken = format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\nkind = \"tls\"\n\
         tls = {{ cert_file = \"/nonexistent/cert.pem\", key_file = \"/nonexistent/key.pem\" }}\n\
         [upstream]\nurls = [{:?}]\n",
        server.url()
    );
    let config = nats_edge::config::Config::from_toml_str(&broken).unwrap();
    let refused = edge
        .shared()
        .reloader
        .reload(config, "test")
        .expect_err("a listener that would not start");
    let text = refused.to_string();
    assert!(text.starts_with("listeners.1.tls: cert_file"), "{text}");
    assert_eq!(edge.metrics().config_reloads(false), 1);
    within("edge shutdown", edge.shutdown()).await;
}

/// A file a reload keeps until the restart (here tagging, turned off in the new file, which
/// needs a restart) may be gone: the rules loaded from it run on, and the reload applies.
/// Before, every later reload failed on the missing file until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_file_that_is_gone_does_not_fail_the_reload() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tags = dir.path().join("tags.toml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/filters/rules/tagging/default.toml"
        ),
        &tags,
    )
    .unwrap();
    let with_tagging = edge_toml(
        &[server.url()],
        "",
        &format!("[tagging]\nfile = {:?}\n", tags.to_str().unwrap()),
    );
    let edge = start_edge_toml(&with_tagging).await;
    std::fs::remove_file(&tags).unwrap();
    let without =
        nats_edge::config::Config::from_toml_str(&edge_toml(&[server.url()], "", "")).unwrap();
    let reloaded = edge
        .shared()
        .reloader
        .reload(without, "test")
        .expect("the reload applies");
    assert_eq!(reloaded.needs_restart, ["tagging.file (turned on or off)"]);
    // Still tagging: a message through the edge carries the edge's headers.
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .roundtrip(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB t 1\r\nPUB t 1\r\nx\r\n")
        .await;
    assert!(reply.text().contains("HMSG t 1"), "{}", reply.text());
    within("edge shutdown", edge.shutdown()).await;
}
