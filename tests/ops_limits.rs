//! Per-listener connection limits: `max_connections` refuses exactly as nats-server does past
//! its own `max_connections`, and `max_connection_rate` sheds connections over the rate.

mod common;

use std::net::SocketAddr;

use common::*;

/// Connects a first client that stays (CONNECT and a PING answered), then a second one,
/// and returns everything the second one received before its connection closed.
async fn second_client_gets(addr: SocketAddr) -> (RawConn, Vec<u8>) {
    let (mut first, _) = RawConn::connect_info(addr).await;
    let reply = first.roundtrip(b"CONNECT {\"verbose\":false}\r\n").await;
    assert!(!reply.closed, "{}", reply.text());
    let mut second = RawConn::connect(addr).await;
    let got = second.read_to_close().await;
    (first, got)
}

/// An edge with an admin server in front of a fresh nats-server, with `listener_limit` in
/// its listener's table.
async fn limited_edge(listener_limit: &str) -> (NatsServer, nats_edge::Edge) {
    let server = NatsServer::start();
    let edge = start_edge_toml(&edge_toml(
        &[server.url()],
        listener_limit,
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    (server, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_the_servers_exact_bytes() {
    // What nats-server itself sends past its max_connections.
    let limited = NatsServer::start_with_config("max_connections: 1\n");
    let (_kept, direct) = second_client_gets(limited.addr()).await;
    let (_, direct_rest) = split_info(&direct);

    let (_server, edge) = limited_edge("max_connections = 1").await;
    let (kept, through_edge) = second_client_gets(edge_addr(&edge)).await;
    let (info, rest) = split_info(&through_edge);
    assert_eq!(
        show(rest),
        show(direct_rest),
        "after the INFO, the edge sends what nats-server sends"
    );
    assert_eq!(rest, b"-ERR 'maximum connections exceeded'\r\n");
    // The refusal's INFO is the edge's, never the upstream's addresses, and has no nonce.
    assert_eq!(info["port"], edge_addr(&edge).port(), "{info}");
    assert!(info.get("nonce").is_none(), "{info}");

    // The first client is untouched; once it leaves, a new client is served.
    drop(kept);
    let (status, text) = poll_http(edge.admin_addr().unwrap(), "/metrics", |_, body| {
        let open = "nats_edge_connections_open{listener=\"default\",transport=\"tcp\"}";
        (metric(body, open) == Some(0.0)).then(|| (200, body.to_string()))
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &text,
            "nats_edge_connections_refused_total{listener=\"default\",reason=\"max_connections\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "nats_edge_connections_total{listener=\"default\",transport=\"tcp\"}"
        ),
        Some(1.0),
        "a refused client is not a session: {text}"
    );
    let (mut again, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = again.roundtrip(b"CONNECT {\"verbose\":false}\r\n").await;
    assert!(!reply.closed, "{}", reply.text());
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_rate_closes_connections_over_the_rate() {
    let (_server, edge) = limited_edge("max_connection_rate = 1").await;
    // Three connections at once: at most one per second is admitted, and the window can
    // turn over at most once in between, so at least one is shed.
    let mut shed = 0;
    let mut served = Vec::new();
    // All three connected before any is read, so they are accepted within one window or two.
    let mut opened = Vec::new();
    for _ in 0..3 {
        opened.push(RawConn::connect(edge_addr(&edge)).await);
    }
    for mut raw in opened {
        let got = raw.read_until(b"\r\n").await.bytes;
        if got.is_empty() {
            shed += 1;
        } else {
            assert!(got.starts_with(b"INFO "), "{}", show(&got));
            served.push(raw);
        }
    }
    assert!(shed >= 1, "no connection was shed");
    let text = poll_http(edge.admin_addr().unwrap(), "/metrics", |_, body| {
        let refused =
            "nats_edge_connections_refused_total{listener=\"default\",reason=\"rate_limited\"}";
        (metric(body, refused) == Some(shed as f64)).then(|| body.to_string())
    })
    .await;
    assert_eq!(
        metric(
            &text,
            "nats_edge_connections_refused_total{listener=\"default\",reason=\"max_connections\"}"
        ),
        Some(0.0)
    );
    within("edge shutdown", edge.shutdown()).await;
}

/// Refusals past `max_connections` run the transport handshake first (a WebSocket client
/// must read its refusal in a frame), but only so many at once: past them a connection is
/// closed at once, so a flood of silent connections cannot hold a handshake and two
/// descriptors each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_in_progress_are_bounded() {
    use tokio::io::AsyncReadExt;
    let (_server, edge) =
        limited_edge("kind = \"ws\"\nmax_connections = 1\nhandshake_timeout = \"30s\"").await;
    // One silent connection holds the slot; 64 more are being refused, their upgrade
    // requests awaited.
    let mut silent = Vec::new();
    for _ in 0..65 {
        silent.push(
            tokio::net::TcpStream::connect(edge_addr(&edge))
                .await
                .unwrap(),
        );
    }
    let refused =
        "nats_edge_connections_refused_total{listener=\"default\",reason=\"max_connections\"}";
    // The next is closed without a word, long before the handshake timeout.
    let mut over = tokio::net::TcpStream::connect(edge_addr(&edge))
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let read = within("the connection over the bound closed", over.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    poll_http(edge.admin_addr().unwrap(), "/metrics", |_, body| {
        (metric(body, refused) == Some(1.0)).then_some(())
    })
    .await;
    drop(silent);
}
