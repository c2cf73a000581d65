//! `/healthz` and `/readyz`: ready while the listeners are bound and an upstream answers,
//! unready when the upstream goes away, and during a drain.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_upstream_and_the_drain() {
    let mut server = NatsServer::start();
    let mut edge = start_edge(
        &[server.url()],
        "[admin]\nlisten = \"127.0.0.1:0\"\nupstream_check_interval = \"100ms\"\n",
    )
    .await;
    let admin = edge.admin_addr().expect("admin server");
    assert_eq!(
        http_get(admin, "/healthz").await,
        (200, r#"{"status":"ok"}"#.into())
    );
    poll_http(admin, "/readyz", |status, _| (status == 200).then_some(())).await;

    // The upstream goes away: the checks (or client dials) make the edge unready once none
    // has succeeded for two check intervals.
    server.stop();
    let body = poll_http(admin, "/readyz", |status, body| {
        (status == 503).then(|| body.to_string())
    })
    .await;
    assert_eq!(body, "not ready: no upstream reachable\n");
    assert_eq!(http_get(admin, "/healthz").await.0, 200, "still alive");
    // No client dials: only the metric read at the scrape shows it.
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(metric(&text, "nats_edge_ready"), Some(0.0), "{text}");

    server.restart();
    poll_http(admin, "/readyz", |status, _| (status == 200).then_some(())).await;
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(metric(&text, "nats_edge_ready"), Some(1.0), "{text}");

    // A client that stays through the drain's grace period keeps the drain going while
    // /readyz and the metric say so.
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(
        !raw.roundtrip(b"CONNECT {\"verbose\":false}\r\n")
            .await
            .closed
    );
    let checks = async {
        let body = poll_http(admin, "/readyz", |status, body| {
            (status == 503).then(|| body.to_string())
        })
        .await;
        assert_eq!(body, "not ready: draining\n");
        let (_, text) = http_get(admin, "/metrics").await;
        assert_eq!(metric(&text, "nats_edge_draining"), Some(1.0), "{text}");
        assert_eq!(metric(&text, "nats_edge_ready"), Some(0.0), "{text}");
        let (_, varz) = http_get(admin, "/varz").await;
        assert!(varz.contains("\"draining\": true"), "{varz}");
        // Only now does the client leave, ending the drain before its grace period.
        drop(raw);
    };
    let (drained, ()) = within(
        "the drain",
        futures::future::join(
            nats_edge::drain::drain(&mut edge, Duration::from_secs(30), Duration::from_secs(35)),
            checks,
        ),
    )
    .await;
    assert_eq!(drained.closed_by_edge, 0, "the client left on its own");
    assert!(!drained.timed_out);
}

/// Connections that send nothing cannot hold the admin server's slots: each is closed after
/// the header-read timeout (5 s), so a health probe queued behind 64 of them is answered
/// well before a connection's 30 s lifetime would have freed a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_admin_connections_do_not_starve_the_probes() {
    use tokio::io::AsyncReadExt;
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], "[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let admin = edge.admin_addr().expect("admin server");
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    assert_eq!(
        within_for(
            Duration::from_secs(15),
            "a probe behind 64 silent connections",
            http_get(admin, "/healthz")
        )
        .await,
        (200, r#"{"status":"ok"}"#.into())
    );
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        let read = within("a silent connection closed", stream.read(&mut byte)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
