//! TLS toward the upstream: nats-server with TLS (classic and handshake_first), with client
//! certificate verification, a `tls://` URL with a server-name override, and the failures a
//! client is told about.

mod common;
mod transport_support;

use common::*;
use transport_support::*;

/// nats-server's `tls { ... }` block.
fn server_tls_block(files: &CertFiles, extra: &str) -> String {
    format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n{extra}\n}}\n",
        toml_path(&files.cert),
        toml_path(&files.key)
    )
}

/// The edge's `[upstream]` table with `tls` set to `tls_table`, its URLs tried in order.
fn upstream_toml(urls: &[String], tls_table: &str) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [{urls}]\n{IN_ORDER}connect_timeout = \"2s\"\ntls = {{ {tls_table} }}\n"
    )
}

async fn pub_sub_works(client: &async_nats::Client) {
    let mut sub = client.subscribe("up.tls").await.unwrap();
    client.publish("up.tls", "over tls".into()).await.unwrap();
    assert_eq!(next_msg(&mut sub).await.payload, "over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_upstream_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_files = pki.leaf(&ca, "nats", Leaf::server("nats"));
    let edge_files = pki.leaf(&ca, "edge", Leaf::client("edge"));
    let (server, monitor) = server_with_monitor(&server_tls_block(
        &server_files,
        &format!("  ca_file: {}\n  verify: true", toml_path(&ca.cert)),
    ));
    let edge = start_edge_toml(&upstream_toml(
        &[server.url()],
        &format!(
            "ca_file = {}, cert_file = {}, key_file = {}",
            toml_path(&ca.cert),
            toml_path(&edge_files.cert),
            toml_path(&edge_files.key)
        ),
    ))
    .await;

    // The client's listener is plain TCP: its INFO says nothing of the upstream's TLS.
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(info.get("tls_required").is_none(), "{info}");
    assert!(info.get("tls_verify").is_none(), "{info}");
    assert!(!raw.roundtrip(b"CONNECT {}\r\n").await.closed);

    let client = client(&edge_url(&edge)).await;
    pub_sub_works(&client).await;
    let connz = connz(monitor).await;
    let conns = connz["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{connz}");
    for c in conns {
        assert!(c["tls_version"].as_str().is_some(), "not TLS: {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_first_upstream() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_files = pki.leaf(&ca, "nats", Leaf::server("nats"));
    let server =
        NatsServer::start_with_config(&server_tls_block(&server_files, "  handshake_first: true"));
    let edge = start_edge_toml(&upstream_toml(
        &[server.url()],
        &format!("ca_file = {}, handshake_first = true", toml_path(&ca.cert)),
    ))
    .await;
    pub_sub_works(&client(&edge_url(&edge)).await).await;
}

/// A full nats-server refuses a client before its TLS handshake, in plain text: at once
/// with TLS first, after its INFO with classic TLS. The edge reads the refusal out of the
/// failed handshake: the client hears `maximum connections exceeded`, not a TLS failure,
/// and with another URL the edge goes on to it as for a full server without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tls_upstream_is_full_not_a_tls_failure() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_files = pki.leaf(&ca, "nats", Leaf::server("nats"));
    for (server_extra, edge_extra) in [
        ("  handshake_first: true", ", handshake_first = true"),
        ("", ""),
    ] {
        let full = NatsServer::start_with_config(&format!(
            "max_connections: 1\n{}",
            server_tls_block(&server_files, server_extra)
        ));
        let tls_table = format!("ca_file = {}{edge_extra}", toml_path(&ca.cert));
        let edge = start_edge_toml(&upstream_toml(&[full.url()], &tls_table)).await;
        // The first client through the edge takes the server's one connection.
        let (mut holder, _) = RawConn::connect_info(edge_addr(&edge)).await;
        assert!(
            !holder
                .roundtrip(b"CONNECT {\"verbose\":false}\r\n")
                .await
                .closed
        );
        // Every upstream full: nats-server's own refusal, as from a full server.
        let got = error_after_info(edge_addr(&edge)).await;
        assert_eq!(
            got, "-ERR 'maximum connections exceeded'\r\n",
            "{server_extra:?}"
        );

        let server = NatsServer::start_with_config(&server_tls_block(&server_files, server_extra));
        let edge = start_edge_toml(&upstream_toml(&[full.url(), server.url()], &tls_table)).await;
        pub_sub_works(&client(&edge_url(&edge)).await).await;
        assert_eq!(edge.metrics().upstream_dial_failures(), 1);
        drop(holder);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_url_with_a_server_name_override() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let mut leaf = Leaf::server("nats");
    leaf.sans = vec![rcgen::SanType::DnsName("nats.internal".try_into().unwrap())];
    let server_files = pki.leaf(&ca, "nats", leaf);
    let server = NatsServer::start_with_config(&server_tls_block(&server_files, ""));
    let url = format!("tls://127.0.0.1:{}", server.port());

    let edge = start_edge_toml(&upstream_toml(
        std::slice::from_ref(&url),
        &format!(
            "ca_file = {}, server_name = \"nats.internal\"",
            toml_path(&ca.cert)
        ),
    ))
    .await;
    pub_sub_works(&client(&edge_url(&edge)).await).await;

    // Without the override the certificate (for nats.internal only) does not match.
    let edge = start_edge_toml(&upstream_toml(
        &[url],
        &format!("ca_file = {}", toml_path(&ca.cert)),
    ))
    .await;
    let got = error_after_info(edge_addr(&edge)).await;
    assert_eq!(got, "-ERR 'Upstream Unavailable: TLS failed'\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_missing_upstream_tls_is_reported() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let other = pki.ca("other");
    let server_files = pki.leaf(&ca, "nats", Leaf::server("nats"));
    let tls_server = NatsServer::start_with_config(&server_tls_block(&server_files, ""));
    let plain_server = NatsServer::start();

    // An upstream certificate from a CA the edge does not trust.
    let edge = start_edge_toml(&upstream_toml(
        &[tls_server.url()],
        &format!("ca_file = {}", toml_path(&other.cert)),
    ))
    .await;
    let got = error_after_info(edge_addr(&edge)).await;
    assert_eq!(got, "-ERR 'Upstream Unavailable: TLS failed'\r\n");
    assert_eq!(edge.metrics().upstream_dial_failures(), 1);

    // An upstream that requires TLS, and an edge not configured for it.
    let edge = start_edge(&[tls_server.url()], "").await;
    let got = error_after_info(edge_addr(&edge)).await;
    assert_eq!(got, "-ERR 'Upstream Unavailable: TLS failed'\r\n");

    // An edge configured for TLS, and an upstream that does not offer it.
    let edge = start_edge_toml(&upstream_toml(
        &[plain_server.url()],
        &format!("ca_file = {}", toml_path(&ca.cert)),
    ))
    .await;
    let got = error_after_info(edge_addr(&edge)).await;
    assert_eq!(got, "-ERR 'Upstream Unavailable: TLS failed'\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_from_a_tls_failure_to_the_next_upstream() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let other = pki.ca("other");
    let good = pki.leaf(&ca, "good", Leaf::server("good"));
    let bad = pki.leaf(&other, "bad", Leaf::server("bad"));
    let bad_server = NatsServer::start_with_config(&server_tls_block(&bad, ""));
    let good_server = NatsServer::start_with_config(&server_tls_block(&good, ""));
    let edge = start_edge_toml(&upstream_toml(
        &[bad_server.url(), good_server.url()],
        &format!("ca_file = {}", toml_path(&ca.cert)),
    ))
    .await;
    pub_sub_works(&client(&edge_url(&edge)).await).await;
    // The first URL was tried, and failed, before the second served.
    assert_eq!(edge.metrics().upstream_dial_failures(), 1);
}

/// Runs the edge process with `toml` written to `config`: a client gets `client_error`, and
/// the log has a line holding every one of `hint`.
async fn fails_with_hint(config: &std::path::Path, toml: &str, client_error: &str, hint: &[&str]) {
    std::fs::write(config, toml).unwrap();
    let process = EdgeProcess::spawn(&["-c", config.to_str().unwrap()], &[]);
    let got = error_after_info(process.addr()).await;
    assert_eq!(got, client_error);
    tokio::task::block_in_place(|| {
        process.log().wait_for(0, WAIT, |line| {
            hint.iter().all(|h| line.contains(h)).then_some(())
        })
    })
    .unwrap_or_else(|| panic!("no hint in the log:\n{}", process.log().dump()));
}

/// A PROXY header ahead of classic upstream TLS, as nats-server (2.12.9 and later) reads it:
/// the real client's address reaches nats-server over TLS. A nats-server in TLS-first
/// fallback mode takes the header for the start of a TLS handshake and holds its INFO back:
/// the dial's error says what to set, and with `handshake_first` the edge works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_ahead_of_upstream_tls() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_files = pki.leaf(&ca, "nats", Leaf::server("nats"));
    let ca_file = format!("ca_file = {}", toml_path(&ca.cert));
    let with_header = |upstream: String| format!("{upstream}proxy_protocol = \"v2\"\n");

    let (server, monitor) = server_with_monitor(&format!(
        "proxy_protocol: true\n{}",
        server_tls_block(&server_files, "")
    ));
    let edge = start_edge_toml(&with_header(upstream_toml(&[server.url()], &ca_file))).await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let client_port = raw.stream().local_addr().unwrap().port();
    assert!(!raw.roundtrip(b"CONNECT {}\r\n").await.closed);
    let connz = connz(monitor).await;
    let conn = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["port"] == client_port)
        .unwrap_or_else(|| panic!("the client's address is not in {connz}"));
    assert!(conn["tls_version"].as_str().is_some(), "not TLS: {conn}");

    let fallback = NatsServer::start_with_config(&format!(
        "proxy_protocol: true\n{}",
        server_tls_block(&server_files, "  handshake_first: \"300ms\"")
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats-edge.toml");
    let classic = with_header(upstream_toml(&[fallback.url()], &ca_file))
        .replace("connect_timeout = \"2s\"", "connect_timeout = \"1s\"");
    fails_with_hint(
        &config,
        &classic,
        "-ERR 'Upstream Unavailable: timed out'\r\n",
        &["set upstream.tls.handshake_first = true"],
    )
    .await;

    // A server whose own TLS timeout ends first closes the connection instead: the same
    // hint.
    let quick = NatsServer::start_with_config(&format!(
        "proxy_protocol: true\n{}",
        server_tls_block(
            &server_files,
            "  handshake_first: \"300ms\"\n  timeout: 0.5"
        )
    ));
    let classic = with_header(upstream_toml(&[quick.url()], &ca_file))
        .replace("connect_timeout = \"2s\"", "connect_timeout = \"10s\"");
    fails_with_hint(
        &config,
        &classic,
        "-ERR 'Upstream Unavailable: connection closed'\r\n",
        &[
            "closed before sending INFO",
            "set upstream.tls.handshake_first = true",
        ],
    )
    .await;

    let tls_first = upstream_toml(
        &[fallback.url()],
        &format!("{ca_file}, handshake_first = true"),
    );
    let edge = start_edge_toml(&with_header(tls_first)).await;
    pub_sub_works(&client(&edge_url(&edge)).await).await;
}

/// `upstream.tls.handshake_first` set the other way from the server's `handshake_first`:
/// each mismatch fails the dial with a log line that says what to set. A TLS-first server
/// sends nothing before the TLS handshake, so a classic dial waits for an INFO until either
/// side gives up; a classic server sends its INFO in the clear, which a TLS-first dial reads
/// as a broken TLS record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_first_mismatch_says_what_to_set() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_files = pki.leaf(&ca, "nats", Leaf::server("nats"));
    let ca_file = format!("ca_file = {}", toml_path(&ca.cert));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats-edge.toml");

    // The edge gives up first.
    let patient = NatsServer::start_with_config(&server_tls_block(
        &server_files,
        "  handshake_first: true\n  timeout: 10",
    ));
    fails_with_hint(
        &config,
        &upstream_toml(&[patient.url()], &ca_file)
            .replace("connect_timeout = \"2s\"", "connect_timeout = \"1s\""),
        "-ERR 'Upstream Unavailable: timed out'\r\n",
        &["with no INFO", "set upstream.tls.handshake_first = true"],
    )
    .await;

    // The server gives up first, at the end of its TLS timeout.
    let quick = NatsServer::start_with_config(&server_tls_block(
        &server_files,
        "  handshake_first: true\n  timeout: 0.5",
    ));
    fails_with_hint(
        &config,
        &upstream_toml(&[quick.url()], &ca_file)
            .replace("connect_timeout = \"2s\"", "connect_timeout = \"10s\""),
        "-ERR 'Upstream Unavailable: connection closed'\r\n",
        &[
            "closed before sending INFO",
            "set upstream.tls.handshake_first = true",
        ],
    )
    .await;

    let classic = NatsServer::start_with_config(&server_tls_block(&server_files, ""));
    fails_with_hint(
        &config,
        &upstream_toml(
            &[classic.url()],
            &format!("{ca_file}, handshake_first = true"),
        ),
        "-ERR 'Upstream Unavailable: TLS failed'\r\n",
        &[
            "sent its INFO in the clear",
            "set upstream.tls.handshake_first = false",
        ],
    )
    .await;
}
