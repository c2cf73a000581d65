//! Sessions from the edge's point of view: many at once, ended by the client, by the edge's
//! shutdown, by upstream lame duck mode; and the counters that record them.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use nats_edge::filters::CloseReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    const N: usize = 200;
    let (_server, edge) = server_and_edge("").await;
    let addr = edge_addr(&edge);
    let mut tasks = Vec::new();
    for i in 0..N {
        tasks.push(tokio::spawn(async move {
            let (mut raw, info) = RawConn::connect_info(addr).await;
            assert_eq!(info["port"], addr.port());
            let reply = raw
                .roundtrip(
                    format!(
                        "CONNECT {{\"verbose\":false}}\r\nSUB c.{i} 1\r\nPUB c.{i} {}\r\n{i}\r\n",
                        i.to_string().len()
                    )
                    .as_bytes(),
                )
                .await;
            assert_eq!(
                reply.text(),
                format!("MSG c.{i} 1 {}\r\n{i}\r\n", i.to_string().len())
            );
            raw
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(within("a concurrent session", t).await.unwrap());
    }
    assert_eq!(edge.metrics().connections_open(), N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_session_and_stops_listening() {
    let (_server, edge) = server_and_edge("").await;
    let addr = edge_addr(&edge);
    let mut raws = Vec::new();
    for _ in 0..3 {
        let (mut raw, _) = RawConn::connect_info(addr).await;
        assert!(
            !raw.roundtrip(b"CONNECT {\"verbose\":false}\r\n")
                .await
                .closed
        );
        raws.push(raw);
    }
    let c = client(&edge_url(&edge)).await;
    round_trip(&c).await;

    let metrics = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    for raw in &mut raws {
        assert!(
            raw.closes_within(WAIT).await,
            "session left open by shutdown"
        );
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    assert_eq!(metrics.connections_open(), 0);
    assert_eq!(metrics.connections_total(), 4);
    assert_eq!(metrics.closes(CloseReason::Shutdown), 4);
}

/// A shutdown closes a session whose upstream dial is still waiting for the server's INFO
/// at once, not after the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_dial() {
    // An "upstream" that accepts and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let edge = start_edge(&[url], "connect_timeout = \"30s\"").await;
    let _client = tokio::net::TcpStream::connect(edge_addr(&edge))
        .await
        .unwrap();
    let (_dialled, _) = within("the edge's dial", silent.accept()).await.unwrap();
    let metrics = edge.metrics().clone();
    within_for(Duration::from_secs(3), "edge shutdown", edge.shutdown()).await;
    assert_eq!(metrics.closes(CloseReason::Shutdown), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reasons_are_counted() {
    // A server that asks for auth, so that a client that sends nothing is timed out.
    let server = NatsServer::start_with_args(&["--user", "u", "--pass", "p"]);
    let edge = start_edge(&[server.url()], "[limits]\nhandshake_timeout = \"1s\"").await;
    let addr = edge_addr(&edge);
    const LOGIN: &str = r#"CONNECT {"user":"u","pass":"p","verbose":false}"#;

    let (mut raw, _) = RawConn::connect_info(addr).await;
    raw.send(format!("{LOGIN}\r\nBOGUS\r\n").as_bytes()).await;
    raw.read_to_close().await;

    let (mut raw, _) = RawConn::connect_info(addr).await;
    raw.send(format!("{LOGIN}\r\nPUB x 99999999\r\n").as_bytes())
        .await;
    raw.read_to_close().await;

    let (mut raw, _) = RawConn::connect_info(addr).await;
    raw.send(format!("{LOGIN}\r\nSUB {} 1\r\n", "s".repeat(5000)).as_bytes())
        .await;
    raw.read_to_close().await;

    let (mut raw, _) = RawConn::connect_info(addr).await;
    raw.read_to_close().await;

    let (mut raw, _) = RawConn::connect_info(addr).await;
    assert!(
        !raw.roundtrip(format!("{LOGIN}\r\n").as_bytes())
            .await
            .closed
    );
    drop(raw);

    let m = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    assert_eq!(m.closes(CloseReason::ProtocolViolation), 1);
    assert_eq!(m.closes(CloseReason::MaxPayloadExceeded), 1);
    assert_eq!(m.closes(CloseReason::MaxControlLineExceeded), 1);
    assert_eq!(m.closes(CloseReason::HandshakeTimeout), 1);
    assert_eq!(
        m.closes(CloseReason::ClientClosed) + m.closes(CloseReason::Shutdown),
        1
    );
    assert_eq!(m.connections_total(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_info_is_rewritten() {
    let server = NatsServer::start_with_config(
        "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"10s\"\n",
    );
    let edge = start_edge(&[server.url()], "").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
        .await;
    assert_eq!(raw.read_line().await.as_deref(), Some("PONG"));
    let _second = raw.read_info().await;

    server.signal("USR2");
    let info = within("the lame duck INFO", async {
        loop {
            let line = raw.read_line().await.expect("closed before the ldm INFO");
            if let Some(json) = line.strip_prefix("INFO ") {
                let info: serde_json::Value = serde_json::from_str(json).unwrap();
                if info["ldm"] == true {
                    return info;
                }
            }
        }
    })
    .await;
    assert_eq!(info["host"], "127.0.0.1");
    assert_eq!(info["port"], edge_addr(&edge).port());
    assert!(info.get("connect_urls").is_none(), "{info}");
    assert!(
        !info.to_string().contains(&format!(":{}", server.port())),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sees_lame_duck_mode_through_the_edge() {
    let server = NatsServer::start_with_config(
        "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"10s\"\n",
    );
    let edge = start_edge(&[server.url()], "").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let c = within(
        "connect",
        client_options()
            .event_callback(move |e| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(e);
                }
            })
            .connect(edge_url(&edge)),
    )
    .await
    .unwrap();
    round_trip(&c).await;
    server.signal("USR2");
    within("the LameDuckMode event", async {
        loop {
            if let async_nats::Event::LameDuckMode = rx.recv().await.unwrap() {
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_past_an_upstream_that_never_answers() {
    // Accepts TCP (the kernel does, into the backlog) but never sends INFO.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let server = NatsServer::start();
    let edge = start_edge(
        &[silent_url, server.url()],
        &format!("{IN_ORDER}connect_timeout = \"1s\""),
    )
    .await;
    let c = client(&edge_url(&edge)).await;
    let mut sub = c.subscribe("fo").await.unwrap();
    round_trip(&c).await;
    c.publish("fo", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_is_not_nats_is_unavailable() {
    // Something that answers like a web server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            // Keep it open: the edge must not wait for more.
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
            });
        }
    });
    let edge = start_edge(&[url], "connect_timeout = \"1s\"").await;
    expect_upstream_unavailable(edge_addr(&edge)).await;
    assert!(within_for(
        Duration::from_secs(5),
        "async-nats connect",
        client_options().connect(edge_url(&edge))
    )
    .await
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_and_byte_counters_are_exact() {
    let (_server, edge) = server_and_edge("").await;
    let addr = edge_addr(&edge);
    let (mut sub, _) = RawConn::connect_info(addr).await;
    let sub_bytes = b"CONNECT {\"verbose\":false}\r\nSUB k 1\r\nPING\r\n";
    sub.send(sub_bytes).await;
    sub.read_until(b"PONG\r\n").await;

    let (mut publisher, _) = RawConn::connect_info(addr).await;
    let mut pub_bytes = b"CONNECT {\"verbose\":false,\"headers\":true}\r\n".to_vec();
    for i in 0..5 {
        pub_bytes.extend_from_slice(format!("PUB k 1\r\n{i}\r\n").as_bytes());
    }
    pub_bytes.extend_from_slice(b"HPUB k 12 13\r\nNATS/1.0\r\n\r\nh\r\nPING\r\n");
    publisher.send(&pub_bytes).await;
    assert!(!publisher.read_until(b"PONG\r\n").await.closed);
    let sub_ping = b"PING\r\n";
    sub.send(sub_ping).await;
    let got = sub.read_until(b"PONG\r\n").await;
    // Five MSGs; the HPUB reaches a client without headers as a sixth MSG.
    assert_eq!(got.text().matches("MSG k 1 ").count(), 6, "{}", got.text());

    let m = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    assert_eq!(m.client_msgs(), 6, "PUB and HPUB frames");
    assert_eq!(m.upstream_msgs(), 6, "MSG frames");
    assert_eq!(
        m.client_bytes(),
        (sub_bytes.len() + pub_bytes.len() + sub_ping.len()) as u64
    );
}
