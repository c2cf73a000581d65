//! The wire seen byte by byte: what a client sends through the edge gets exactly the answer
//! nats-server would give, and the INFO a client sees describes the edge, never the upstream.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";

fn with_connect(rest: &[u8]) -> Vec<u8> {
    [CONNECT, rest].concat()
}

/// Fails if any string in `info` mentions one of `ports` as `:PORT`, or any number equals
/// one of them: the INFO must carry no upstream address.
fn assert_no_upstream_address(info: &Value, ports: &[u16], what: &str) {
    fn walk(v: &Value, ports: &[u16], path: &str, what: &str, whole: &Value) {
        match v {
            Value::String(s) => {
                for p in ports {
                    assert!(
                        !s.contains(&format!(":{p}")),
                        "{what}: `{path}` = {s:?} names upstream port {p}: {whole}"
                    );
                }
            }
            Value::Number(n) => {
                for p in ports {
                    assert!(
                        n.as_u64() != Some(u64::from(*p)),
                        "{what}: `{path}` = {n} is upstream port {p}: {whole}"
                    );
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, ports, &format!("{path}[{i}]"), what, whole);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    walk(item, ports, &format!("{path}.{k}"), what, whole);
                }
            }
            _ => {}
        }
    }
    walk(info, ports, "", what, info);
    assert!(info.get("ip").is_none(), "{what}: `ip` present: {info}");
    assert!(
        info.get("ws_connect_urls").is_none(),
        "{what}: ws_connect_urls present: {info}"
    );
}

fn assert_describes_edge(info: &Value, edge: SocketAddr, what: &str) {
    assert_eq!(info["host"], "127.0.0.1", "{what}: {info}");
    assert_eq!(info["port"], edge.port(), "{what}: {info}");
    assert_eq!(info["client_ip"], "127.0.0.1", "{what}: {info}");
}

// ---------------------------------------------------------------------------------------------
// INFO rewriting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_describes_the_edge_not_the_upstream() {
    let (server, edge) = server_and_edge("").await;
    let (_direct, direct_info) = RawConn::connect_info(server.addr()).await;
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;

    assert_describes_edge(&info, edge_addr(&edge), "first INFO");
    assert!(
        info.get("connect_urls").is_none(),
        "connect_urls must be absent: {info}"
    );
    assert_no_upstream_address(&info, &[server.port()], "first INFO");
    // What is not an address passes through untouched.
    for key in ["server_id", "version", "proto", "headers", "max_payload"] {
        assert_eq!(info[key], direct_info[key], "`{key}` differs: {info}");
    }

    // The INFO that follows CONNECT (nats-server >= 2.12) is rewritten too.
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
        .await;
    assert_eq!(raw.read_line().await.as_deref(), Some("PONG"));
    let second = raw.read_info().await;
    assert_describes_edge(&second, edge_addr(&edge), "second INFO");
    assert!(second.get("connect_urls").is_none(), "{second}");
    assert_no_upstream_address(&second, &[server.port()], "second INFO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_announces_configured_connect_urls() {
    let server = NatsServer::start();
    let edge = start_edge_toml(&edge_toml(
        &[server.url()],
        "connect_urls = [\"edge-a:4222\"]",
        "",
    ))
    .await;
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_eq!(info["connect_urls"], serde_json::json!(["edge-a:4222"]));
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
        .await;
    assert_eq!(raw.read_line().await.as_deref(), Some("PONG"));
    let second = raw.read_info().await;
    assert_eq!(second["connect_urls"], serde_json::json!(["edge-a:4222"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_advertise_overrides_host_and_port() {
    let server = NatsServer::start();
    let edge = start_edge_toml(&edge_toml(
        &[server.url()],
        "advertise = \"nats.example.com:4222\"",
        "",
    ))
    .await;
    let (_raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_eq!(info["host"], "nats.example.com");
    assert_eq!(info["port"], 4222);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_connect_urls_never_reach_the_client() {
    let (a, b) = NatsServer::start_cluster_pair().await;
    let upstream_ports = [a.port(), b.port()];

    // The upstream really does advertise its cluster, in both INFOs.
    let (mut direct, direct_info) = RawConn::connect_info(a.addr()).await;
    assert!(
        direct_info["connect_urls"]
            .as_array()
            .is_some_and(|u| !u.is_empty()),
        "the cluster INFO should list servers: {direct_info}"
    );
    direct
        .send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
        .await;
    assert_eq!(direct.read_line().await.as_deref(), Some("PONG"));
    let direct_second = direct.read_info().await;
    assert!(
        direct_second["connect_urls"]
            .as_array()
            .is_some_and(|u| !u.is_empty()),
        "{direct_second}"
    );

    let edge = start_edge(&[a.url()], "").await;
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(info.get("connect_urls").is_none(), "first INFO: {info}");
    assert_describes_edge(&info, edge_addr(&edge), "first INFO");
    assert_no_upstream_address(&info, &upstream_ports, "first INFO");
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
        .await;
    assert_eq!(raw.read_line().await.as_deref(), Some("PONG"));
    let second = raw.read_info().await;
    assert!(
        second.get("connect_urls").is_none(),
        "second INFO: {second}"
    );
    assert_describes_edge(&second, edge_addr(&edge), "second INFO");
    assert_no_upstream_address(&second, &upstream_ports, "second INFO");

    // With connect_urls configured, exactly those, in both.
    let edge = start_edge_toml(&edge_toml(
        &[a.url()],
        "connect_urls = [\"edge-a:4222\"]",
        "",
    ))
    .await;
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_eq!(info["connect_urls"], serde_json::json!(["edge-a:4222"]));
    assert_no_upstream_address(&info, &upstream_ports, "first INFO, configured");
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
        .await;
    assert_eq!(raw.read_line().await.as_deref(), Some("PONG"));
    let second = raw.read_info().await;
    assert_eq!(second["connect_urls"], serde_json::json!(["edge-a:4222"]));
    assert_no_upstream_address(&second, &upstream_ports, "second INFO, configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_info_from_a_cluster_change_is_rewritten() {
    let (a, b) = NatsServer::start_cluster_pair().await;
    let edge = start_edge(&[a.url()], "").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
        .await;
    assert_eq!(raw.read_line().await.as_deref(), Some("PONG"));
    let _second = raw.read_info().await;

    // A third server joins: A tells its clients with an INFO listing it.
    let route = a
        .log()
        .wait_for(0, WAIT, |l| {
            l.find("Listening for route connections on ")
                .map(|i| l[i + 35..].trim().to_string())
        })
        .expect("route address")
        .1;
    let c = NatsServer::start_with_args(&[
        "--cluster_name",
        "edge-test",
        "--cluster",
        "nats://127.0.0.1:-1",
        "--routes",
        &format!("nats://{route}"),
    ]);
    let update = within("the cluster-change INFO through the edge", async {
        loop {
            let line = raw.read_line().await.expect("edge closed the client");
            if let Some(json) = line.strip_prefix("INFO ") {
                return serde_json::from_str::<Value>(json).unwrap();
            }
        }
    })
    .await;
    assert!(update.get("connect_urls").is_none(), "{update}");
    assert_describes_edge(&update, edge_addr(&edge), "async INFO");
    assert_no_upstream_address(&update, &[a.port(), b.port(), c.port()], "async INFO");
    assert!(raw.is_open().await);
}

// ---------------------------------------------------------------------------------------------
// Framing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_mode_acknowledges_with_ok() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(b"CONNECT {\"verbose\":true}\r\nPUB foo 2\r\nhi\r\nPING\r\n")
        .await;
    let reply = raw.read_until(b"PONG\r\n").await;
    assert_eq!(show(&reply.bytes), show(b"+OK\r\n+OK\r\nPONG\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_in_one_write() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .exchange(&with_connect(
            b"SUB p.a 1\r\nSUB p.* 2\r\nPING\r\nPUB p.a 3\r\none\r\nPUB p.b r 3\r\ntwo\r\n\
              UNSUB 1\r\nPUB p.a 5\r\nthree\r\nPING\r\n",
        ))
        .await;
    assert!(!reply.closed);
    assert_eq!(
        show(&reply.bytes),
        show(
            b"PONG\r\nMSG p.a 1 3\r\none\r\nMSG p.a 2 3\r\none\r\nMSG p.b 2 r 3\r\ntwo\r\n\
              MSG p.a 2 5\r\nthree\r\nPONG\r\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_written_one_byte_at_a_time() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let bytes = with_connect(
        b"SUB b.one 7\r\nHPUB b.one 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\nPING\r\n",
    );
    let bytes = [
        b"CONNECT {\"verbose\":false,\"headers\":true}\r\n".as_slice(),
        &bytes[CONNECT.len()..],
    ]
    .concat();
    for b in &bytes {
        raw.send(std::slice::from_ref(b)).await;
    }
    let reply = raw.read_until(b"PONG\r\n").await;
    assert_eq!(
        show(&reply.bytes),
        show(b"HMSG b.one 7 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\nPONG\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowercase_verbs_and_tab_separators() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .exchange(b"connect {\"verbose\":false}\r\nsub\tlow.x\t1\r\npub low.x\t\t2\r\nhi\r\nSuB low.y  2\r\nPuB\tlow.y 1\r\nz\r\nping\r\n")
        .await;
    assert!(!reply.closed);
    assert_eq!(
        show(&reply.bytes),
        show(b"MSG low.x 1 2\r\nhi\r\nMSG low.y 2 1\r\nz\r\nPONG\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_without_headers_gets_them_stripped() {
    let (_server, edge) = server_and_edge("").await;
    let (mut sub, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(sub
        .roundtrip(b"CONNECT {\"verbose\":false,\"headers\":false}\r\nSUB h.s 1\r\n")
        .await
        .bytes
        .is_empty());
    let (mut publisher, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = publisher
        .roundtrip(
            b"CONNECT {\"verbose\":false,\"headers\":true}\r\n\
              HPUB h.s 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\nHPUB h.s 18 18\r\nNATS/1.0\r\nA: b\r\n\r\n\r\n",
        )
        .await;
    assert!(reply.bytes.is_empty(), "{}", reply.text());
    let got = sub.roundtrip(b"").await;
    assert_eq!(
        show(&got.bytes),
        show(b"MSG h.s 1 5\r\nhello\r\nMSG h.s 1 0\r\n\r\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_verb_is_refused_and_closed() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(&with_connect(b"PING\r\nFOO bar\r\nPING\r\n"))
        .await;
    let got = raw.read_to_close().await;
    assert_eq!(
        show(&got),
        show(b"PONG\r\n-ERR 'Unknown Protocol Operation'\r\n")
    );
}

/// A wrong byte after a payload is refused at once, with nothing after it, as nats-server
/// refuses it; and `CONNECT` with its JSON on the next line is a CONNECT. Sent to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_ends_and_split_connects_like_nats_server() {
    let (server, edge) = server_and_edge("").await;
    for addr in [server.addr(), edge_addr(&edge)] {
        let (mut raw, _) = RawConn::connect_info(addr).await;
        raw.send(b"CONNECT\n{\"verbose\":false}\r\nPING\r\nPUB foo 5\r\nhello\n")
            .await;
        let got = raw.read_to_close().await;
        assert_eq!(
            show(&got),
            show(b"PONG\r\n-ERR 'Unknown Protocol Operation'\r\n"),
            "{addr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_control_line_is_refused_and_closed() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut line = b"SUB ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 5000));
    line.extend_from_slice(b" 1\r\n");
    raw.send(&with_connect(&line)).await;
    let got = raw.read_to_close().await;
    assert_eq!(
        show(&got),
        show(b"-ERR 'maximum control line exceeded'\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_control_line_is_refused_before_its_newline() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut line = with_connect(b"PUB ");
    line.extend(std::iter::repeat_n(b'x', 8000));
    // No newline: the edge must not wait for one.
    raw.send(&line).await;
    let got = raw.read_to_close().await;
    assert_eq!(
        show(&got),
        show(b"-ERR 'maximum control line exceeded'\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_max_control_line_is_enforced() {
    let (_server, edge) = server_and_edge("[limits]\nmax_control_line = 100").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let ok = format!("SUB {} 1\r\n", "a".repeat(90));
    assert!(!raw.roundtrip(&with_connect(ok.as_bytes())).await.closed);
    let bad = format!("SUB {} 1\r\n", "a".repeat(120));
    raw.send(bad.as_bytes()).await;
    let got = raw.read_to_close().await;
    assert_eq!(
        show(&got),
        show(b"-ERR 'maximum control line exceeded'\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_subject_is_refused_and_the_connection_stays() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .roundtrip(&with_connect(
            b"SUB foo..bar 1\r\nSUB ok 2\r\nPUB ok 1\r\nx\r\n",
        ))
        .await;
    assert!(!reply.closed);
    assert_eq!(
        show(&reply.bytes),
        show(b"-ERR 'Invalid Subject'\r\nMSG ok 2 1\r\nx\r\n")
    );
    assert!(raw.is_open().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_is_enforced_and_the_connection_stays() {
    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 3").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .roundtrip(&with_connect(
            b"SUB s.1 1\r\nSUB s.2 2\r\nSUB s.3 3\r\nSUB s.4 4\r\nPUB s.1 1\r\na\r\nPUB s.4 1\r\nb\r\n",
        ))
        .await;
    assert!(!reply.closed, "{}", reply.text());
    assert_eq!(
        show(&reply.bytes),
        show(b"-ERR 'maximum subscriptions exceeded'\r\nMSG s.1 1 1\r\na\r\n")
    );
    // Freeing one makes room again.
    let reply = raw
        .roundtrip(b"UNSUB 1\r\nSUB s.4 4\r\nPUB s.4 1\r\nc\r\n")
        .await;
    assert_eq!(show(&reply.bytes), show(b"MSG s.4 4 1\r\nc\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_frees_a_slot_after_auto_unsubscribe() {
    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 2").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .roundtrip(&with_connect(
            b"SUB s.1 1\r\nSUB s.2 2\r\nUNSUB 2 1\r\nPUB s.2 1\r\na\r\n",
        ))
        .await;
    assert_eq!(show(&reply.bytes), show(b"MSG s.2 2 1\r\na\r\n"));
    // The delivery has come back through the edge: sid 2 is gone, so there is room.
    let reply = raw
        .roundtrip(b"SUB s.3 3\r\nPUB s.3 1\r\nb\r\nSUB s.4 4\r\n")
        .await;
    assert_eq!(
        show(&reply.bytes),
        show(b"MSG s.3 3 1\r\nb\r\n-ERR 'maximum subscriptions exceeded'\r\n")
    );
}

/// A client cannot pass `max_subscriptions` by reusing a sid while deliveries of the
/// subscription it ended are still on their way: counted toward the new subscription, they
/// would let its `UNSUB sid 1` end it at the edge, while nats-server, which counts per
/// subscription, keeps it, and the edge would then take one more. The reuse comes right
/// after the `UNSUB`, and after a `PING` whose `PONG` has not come back yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_sid_does_not_take_the_ended_subscriptions_deliveries() {
    for (reuse, pongs) in [
        (&b"UNSUB 5\r\nSUB idle 5\r\nPING\r\n"[..], 1),
        (&b"UNSUB 5\r\nPING\r\nSUB idle 5\r\nPING\r\n"[..], 2),
    ] {
        // The backlog waits while the client is not reading: no write deadline may end it.
        let server = NatsServer::start_with_config("write_deadline: \"60s\"\n");
        let edge = start_edge(
            &[server.url()],
            "[limits]\nmax_subscriptions = 1\nwrite_deadline = \"60s\"\n",
        )
        .await;
        let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
        let reply = raw.roundtrip(&with_connect(b"SUB big 5\r\n")).await;
        assert!(!reply.closed, "{}", reply.text());
        // A backlog for sid 5 larger than the edge and the sockets between hold, so that
        // part of it is still at nats-server when the client ends the subscription.
        let publisher = client(&server.url()).await;
        let payload = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
        for _ in 0..2048 {
            publisher.publish("big", payload.clone()).await.unwrap();
        }
        publisher.flush().await.unwrap();
        raw.send(reuse).await;
        let received = read_past_pongs(&raw, pongs).await;
        assert!(received > 16 * 1024 * 1024, "{received} bytes of backlog");
        // The new subscription has had no delivery: `UNSUB 5 1` keeps it, as nats-server
        // does, so the limit still refuses another.
        let reply = raw.roundtrip(b"UNSUB 5 1\r\nSUB other 6\r\n").await;
        assert_eq!(
            show(&reply.bytes),
            show(b"-ERR 'maximum subscriptions exceeded'\r\n"),
            "{}",
            show(reuse)
        );
    }
}

/// Reads a large backlog until `pongs` PONGs have come (its payloads must hold none);
/// returns how many bytes came.
async fn read_past_pongs(raw: &RawConn, pongs: usize) -> usize {
    let stream = raw.stream();
    let mut buf = vec![0u8; 256 * 1024];
    let mut window = Vec::new();
    let mut received = 0usize;
    let mut seen = 0;
    within("the backlog and the PONGs", async {
        loop {
            stream.readable().await.unwrap();
            let n = match stream.try_read(&mut buf) {
                Ok(0) => panic!("the edge closed the connection"),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            received += n;
            window.extend_from_slice(&buf[..n]);
            // The last five bytes stay: no PONG is counted twice, none is missed.
            seen += window.windows(6).filter(|w| *w == b"PONG\r\n").count();
            if seen >= pongs {
                return;
            }
            window.drain(..window.len().saturating_sub(5));
        }
    })
    .await;
    received
}

/// Reads until `pongs` PONGs have arrived (or the peer closes); returns everything.
async fn read_pongs(raw: &mut RawConn, pongs: usize) -> Reply {
    let mut all = Reply {
        bytes: Vec::new(),
        closed: false,
    };
    for _ in 0..pongs {
        let part = raw.read_until(b"PONG\r\n").await;
        all.bytes.extend_from_slice(&part.bytes);
        if part.closed {
            all.closed = true;
            break;
        }
    }
    all
}

/// Answers the edge makes itself (here the subscription limit's `-ERR`) keep their place among
/// the upstream's replies, exactly as nats-server orders its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_limit_errors_keep_their_place_like_nats_server() {
    let cases: &[(&str, &[u8], usize)] = &[
        (
            "ping then refused sub",
            b"SUB a 1\r\nPING\r\nSUB b 2\r\nPING\r\n",
            2,
        ),
        (
            "refused subs between pings",
            b"SUB a 1\r\nSUB b 2\r\nPING\r\nSUB c 3\r\nPING\r\nSUB d 4\r\nSUB e 5\r\nPING\r\n",
            3,
        ),
        (
            "refused sub between messages",
            b"SUB a 1\r\nPUB a 1\r\nx\r\nSUB b 2\r\nPUB a 1\r\ny\r\nPING\r\n",
            1,
        ),
        (
            "verbose",
            b"CONNECT {\"verbose\":true}\r\nSUB a 1\r\nSUB b 2\r\nPUB a 1\r\nx\r\nPING\r\n",
            1,
        ),
        (
            "unsub frees a slot",
            b"SUB a 1\r\nSUB b 2\r\nUNSUB 1\r\nSUB b 2\r\nPUB b 1\r\nz\r\nPING\r\n",
            1,
        ),
    ];
    let limited = NatsServer::start_with_config("max_subscriptions: 1\n");
    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 1").await;
    let mut mismatches = Vec::new();
    for (name, case, pongs) in cases {
        let bytes = if case.starts_with(b"CONNECT") {
            case.to_vec()
        } else {
            with_connect(case)
        };
        let mut outcome = Vec::new();
        for addr in [limited.addr(), edge_addr(&edge)] {
            let (mut raw, _) = RawConn::connect_info(addr).await;
            raw.send(&bytes).await;
            let reply = read_pongs(&mut raw, *pongs).await;
            outcome.push(format!("{} closed={}", show(&reply.bytes), reply.closed));
        }
        if outcome[0] != outcome[1] {
            mismatches.push(format!(
                "{name}:\n    nats-server: {}\n    edge:        {}",
                outcome[0], outcome[1]
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// nats-server PINGs its clients; through the edge the client sees those PINGs and its PONGs
/// reach the server, without disturbing the edge's own bookkeeping of PINGs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_reach_the_client_and_its_pongs_the_server() {
    let server = NatsServer::start_with_config("ping_interval: \"500ms\"\nping_max: 2\n");
    let edge = start_edge(&[server.url()], "[limits]\nmax_subscriptions = 1").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(&with_connect(b"SUB a 1\r\n")).await;
    for _ in 0..4 {
        // Each server PING is answered; unanswered, the server would close after two.
        let got = raw.read_until(b"PING\r\n").await;
        assert!(!got.closed, "closed: {}", show(&got.bytes));
        assert_eq!(show(&got.bytes), "PING\\r\\n");
        raw.send(b"PONG\r\n").await;
    }
    // The edge's own answers still land in order.
    let reply = raw.roundtrip(b"SUB b 2\r\nPUB a 1\r\nq\r\n").await;
    let text = reply.text().replace("PING\r\n", "");
    assert_eq!(
        text,
        "-ERR 'maximum subscriptions exceeded'\r\nMSG a 1 1\r\nq\r\n",
        "{}",
        show(&reply.bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_describes_itself() {
    let server = NatsServer::start();
    let toml = format!(
        "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nconnect_urls = [\"b.example:4222\"]\n\
         [upstream]\nurls = [\"{}\"]\n",
        server.url()
    );
    let edge = start_edge_toml(&toml).await;
    let a = edge.addr("a").unwrap();
    let b = edge.addr("b").unwrap();
    assert_ne!(a, b);
    let (_ra, info_a) = RawConn::connect_info(a).await;
    let (_rb, info_b) = RawConn::connect_info(b).await;
    assert_eq!(info_a["port"], a.port());
    assert_eq!(info_b["port"], b.port());
    assert!(info_a.get("connect_urls").is_none(), "{info_a}");
    assert_eq!(
        info_b["connect_urls"],
        serde_json::json!(["b.example:4222"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_max_payload_above_the_servers_gives_way_to_the_server() {
    let server = NatsServer::start_with_config("max_payload: 2048\n");
    let edge = start_edge(&[server.url()], "[limits]\nmax_payload = \"1MiB\"").await;
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_eq!(info["max_payload"], 2048);
    raw.send(&with_connect(b"PUB x 2049\r\n")).await;
    assert_eq!(
        show(&raw.read_to_close().await),
        show(b"-ERR 'Maximum Payload Violation'\r\n")
    );
}

/// Hundreds of refused subscriptions, each followed by a PING, in one write: the edge's
/// answers wait behind the upstream's PONGs (and its pending-answer queue fills and drains)
/// without losing or reordering anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_refused_subscriptions_between_pings_like_nats_server() {
    const N: usize = 500;
    let mut bytes = with_connect(b"");
    for i in 0..N {
        bytes.extend_from_slice(format!("SUB many.{i} {i}\r\nPING\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"PUB many.0 2\r\nok\r\n");
    let limited = NatsServer::start_with_config("max_subscriptions: 1\n");
    let (mut direct, _) = RawConn::connect_info(limited.addr()).await;
    direct.send(&bytes).await;
    let expected = read_pongs(&mut direct, N).await;
    let expected_tail = direct.roundtrip(b"").await;

    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 1").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(&bytes).await;
    let got = read_pongs(&mut raw, N).await;
    let got_tail = raw.roundtrip(b"").await;
    assert!(!got.closed && !got_tail.closed);
    assert_eq!(
        got.text()
            .matches("-ERR 'maximum subscriptions exceeded'")
            .count(),
        N - 1
    );
    assert_eq!(got.text(), expected.text());
    assert_eq!(show(&got_tail.bytes), show(&expected_tail.bytes));
    assert_eq!(show(&got_tail.bytes), show(b"MSG many.0 0 2\r\nok\r\n"));
}

/// Ten thousand PINGs in one write, then an edge-made answer: every PONG first, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_answer_waits_behind_ten_thousand_pongs() {
    const N: usize = 10_000;
    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 1").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut bytes = with_connect(b"SUB a 1\r\n");
    bytes.extend_from_slice(&b"PING\r\n".repeat(N));
    bytes.extend_from_slice(b"SUB b 2\r\nPING\r\n");
    raw.send(&bytes).await;
    let got = read_pongs(&mut raw, N + 1).await;
    let mut expected = b"PONG\r\n".repeat(N);
    expected.extend_from_slice(b"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n");
    assert!(
        got.bytes == expected,
        "{}",
        show(&got.bytes[got.bytes.len().saturating_sub(200)..])
    );
}

/// A client may write before it has read the INFO (many libraries pipeline CONNECT): the edge
/// sends its INFO first and then answers everything, even while it is still dialling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_bytes_sent_before_info_are_kept() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = NatsServer::start();
    let edge = start_edge(
        &[
            format!("nats://{}", silent.local_addr().unwrap()),
            server.url(),
        ],
        &format!("{IN_ORDER}connect_timeout = \"1s\""),
    )
    .await;
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.send(&with_connect(
        b"SUB early 1\r\nPUB early 3\r\nyes\r\nPING\r\n",
    ))
    .await;
    let info = raw.read_info().await;
    assert_eq!(info["port"], edge_addr(&edge).port());
    let got = raw.read_until(b"PONG\r\n").await;
    assert_eq!(show(&got.bytes), show(b"MSG early 1 3\r\nyes\r\nPONG\r\n"));
}

/// A client that publishes and then closes its writing side: everything it sent before the
/// end reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_eof_after_publishing_delivers_everything() {
    const N: usize = 2000;
    let (_server, edge) = server_and_edge("").await;
    let c = client(&edge_url(&edge)).await;
    let mut sub = c.subscribe("eof.t").await.unwrap();
    round_trip(&c).await;

    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut bytes = with_connect(b"");
    for i in 0..N {
        let body = format!("{i:05}");
        bytes.extend_from_slice(format!("PUB eof.t 5\r\n{body}\r\n").as_bytes());
    }
    raw.send(&bytes).await;
    raw.shutdown_write().await;
    for i in 0..N {
        let m = next_msg(&mut sub).await;
        assert_eq!(m.payload, bytes::Bytes::from(format!("{i:05}")));
    }
    assert!(raw.closes_within(WAIT).await);
}

/// A client that sends its ops and closes its writing side still reads the answers to
/// them, byte for byte as from nats-server (which writes out a closing client's pending
/// replies), and the session ends as a client close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_reads_its_answers() {
    let (server, edge) = server_and_edge("").await;
    let bytes = b"CONNECT {\"verbose\":true}\r\nSUB hc.t 1\r\nPUB hc.t 2\r\nhi\r\nPING\r\n";
    let mut replies = Vec::new();
    for addr in [server.addr(), edge_addr(&edge)] {
        let (mut raw, _) = RawConn::connect_info(addr).await;
        raw.send(bytes).await;
        raw.shutdown_write().await;
        replies.push(show(&raw.read_to_close().await));
    }
    assert_eq!(
        replies[0],
        show(b"+OK\r\n+OK\r\n+OK\r\nMSG hc.t 1 2\r\nhi\r\nPONG\r\n"),
        "nats-server's behaviour changed"
    );
    assert_eq!(replies[1], replies[0]);
    let m = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    assert_eq!(m.closes(nats_edge_filters::CloseReason::ClientClosed), 1);
}

/// The same pipelined bytes against nats-server's own `max_subscriptions` and through the
/// edge's `limits.max_subscriptions`: nats-server frees an auto-unsubscribed sid the moment
/// the PUB that completes it is processed, so a SUB right behind that PUB fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_matches_nats_server() {
    let bytes = with_connect(
        b"SUB s.1 1\r\nSUB s.2 2\r\nSUB s.1 2\r\nSUB s.3 3\r\nSUB s.4 4\r\nUNSUB 2 1\r\n\
          PUB s.2 1\r\na\r\nSUB s.5 5\r\nPUB s.5 1\r\nb\r\nSUB s.6 6\r\n",
    );
    let limited = NatsServer::start_with_config("max_subscriptions: 3\n");
    let (mut direct, _) = RawConn::connect_info(limited.addr()).await;
    let expected = direct.roundtrip(&bytes).await;
    assert_eq!(
        show(&expected.bytes),
        show(
            b"-ERR 'maximum subscriptions exceeded'\r\nMSG s.2 2 1\r\na\r\n\
              MSG s.5 5 1\r\nb\r\n-ERR 'maximum subscriptions exceeded'\r\n"
        ),
        "nats-server's behaviour changed"
    );

    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 3").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let got = raw.roundtrip(&bytes).await;
    assert_eq!(
        (show(&got.bytes), got.closed),
        (show(&expected.bytes), expected.closed)
    );
}

/// A SUB that nats-server's own permissions refuse, and behind it, before its refusal, a SUB
/// reusing its sid: nats-server checks permissions first, so the second SUB is the
/// subscription, and it counts toward the limit. Sent to nats-server with its own limit and
/// through the edge's limit (nats-server behind it with the same permissions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sid_reused_behind_a_refused_sub_counts_like_nats_server() {
    let users = "authorization { users = [ { user: u, password: p, \
                 permissions: { subscribe: { deny: [\"bar\"] } } } ] }\n";
    let bytes = b"CONNECT {\"user\":\"u\",\"pass\":\"p\",\"verbose\":false,\"pedantic\":false}\r\n\
                  SUB bar 1\r\nSUB foo 1\r\nSUB x 2\r\nSUB y 3\r\n";
    let limited = NatsServer::start_with_config(&format!("{users}max_subscriptions: 2\n"));
    let (mut direct, _) = RawConn::connect_info(limited.addr()).await;
    let expected = direct.roundtrip(bytes).await;
    assert_eq!(
        show(&expected.bytes),
        show(
            b"-ERR 'Permissions Violation for Subscription to \"bar\"'\r\n\
              -ERR 'maximum subscriptions exceeded'\r\n"
        ),
        "nats-server's behaviour changed"
    );

    let server = NatsServer::start_with_config(users);
    let edge = start_edge(&[server.url()], "[limits]\nmax_subscriptions = 2").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let got = raw.roundtrip(bytes).await;
    assert_eq!(
        (show(&got.bytes), got.closed),
        (show(&expected.bytes), expected.closed)
    );
}

/// nats-server's own `max_subscriptions` below the edge's: the client sees nats-server's
/// refusals, and subscribes again once a subscription ends, as on nats-server alone. (That
/// the refused SUBs take no slot at the edge is `limits`' unit test: here the edge's count
/// could not reach its own limit before nats-server's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subs_refused_at_the_upstreams_limit_take_no_edge_slot() {
    let bytes = with_connect(b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nSUB d 4\r\nSUB e 5\r\n");
    let again = b"UNSUB 1\r\nSUB f 6\r\nPUB f 1\r\nx\r\n";
    let server = NatsServer::start_with_config("max_subscriptions: 2\n");
    let edge = start_edge(&[server.url()], "[limits]\nmax_subscriptions = 3").await;
    let mut seen = Vec::new();
    for addr in [server.addr(), edge_addr(&edge)] {
        let (mut raw, _) = RawConn::connect_info(addr).await;
        let first = raw.roundtrip(&bytes).await;
        let second = raw.roundtrip(again).await;
        seen.push((show(&first.bytes), show(&second.bytes), second.closed));
    }
    assert_eq!(
        seen[0].0,
        show(
            b"-ERR 'maximum subscriptions exceeded'\r\n"
                .repeat(3)
                .as_slice()
        ),
        "nats-server's behaviour changed"
    );
    assert_eq!(
        seen[0].1,
        show(b"MSG f 6 1\r\nx\r\n"),
        "nats-server's behaviour changed"
    );
    assert_eq!(seen[1], seen[0]);
}

/// At the limit nats-server refuses every SUB before looking at its sid or subject: one that
/// reuses a live sid, and one with an invalid subject, get the same error; below it, the
/// invalid subject is nats-server's `Invalid Subject`. The edge's limit answers alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_refuses_reused_sids_and_bad_subjects_at_the_limit() {
    let bytes = with_connect(
        b"SUB a 1\r\nSUB a..b 9\r\nSUB b 2\r\nSUB a 1\r\nSUB c..d 3\r\nUNSUB 2\r\nSUB a 1\r\n",
    );
    let limited = NatsServer::start_with_config("max_subscriptions: 2\n");
    let (mut direct, _) = RawConn::connect_info(limited.addr()).await;
    let expected = direct.roundtrip(&bytes).await;
    assert_eq!(
        show(&expected.bytes),
        show(
            b"-ERR 'Invalid Subject'\r\n-ERR 'maximum subscriptions exceeded'\r\n\
              -ERR 'maximum subscriptions exceeded'\r\n"
        ),
        "nats-server's behaviour changed"
    );
    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 2").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let got = raw.roundtrip(&bytes).await;
    assert_eq!(
        (show(&got.bytes), got.closed),
        (show(&expected.bytes), expected.closed)
    );
}

/// A CONNECT after the first drops every subscription at nats-server (2.14 and later):
/// the edge's own count forgets them too, so a SUB that nats-server would take under its
/// `max_subscriptions` is not refused at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_drops_the_subscriptions_as_nats_server_does() {
    let bytes = b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\n\
                  CONNECT {\"verbose\":false}\r\nSUB c 3\r\nSUB d 4\r\nSUB e 5\r\n";
    let limited = NatsServer::start_with_config("max_subscriptions: 2\n");
    let (mut direct, _) = RawConn::connect_info(limited.addr()).await;
    let expected = direct.roundtrip(bytes).await;
    assert_eq!(
        show(&expected.bytes),
        show(b"-ERR 'maximum subscriptions exceeded'\r\n"),
        "nats-server's behaviour changed"
    );
    let (_server, edge) = server_and_edge("[limits]\nmax_subscriptions = 2").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let got = raw.roundtrip(bytes).await;
    assert_eq!(
        (show(&got.bytes), got.closed),
        (show(&expected.bytes), expected.closed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_without_connect() {
    // Where the upstream asks for auth, a client that sends nothing is timed out, as by
    // nats-server's auth timer; one that logs in in time is not.
    let server = NatsServer::start_with_args(&["--user", "u", "--pass", "p"]);
    let edge = start_edge(&[server.url()], "[limits]\nhandshake_timeout = \"1s\"").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let got = within("the handshake timeout to close", raw.read_to_close()).await;
    assert_eq!(show(&got), show(b"-ERR 'Authentication Timeout'\r\n"));
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let login = b"CONNECT {\"user\":\"u\",\"pass\":\"p\",\"verbose\":false}\r\n";
    assert!(!raw.roundtrip(login).await.closed);
    // Watched past the second the timer would have run from the connection's start.
    assert!(!raw.closes_within(Duration::from_millis(1500)).await);

    // Where it does not, nats-server runs no auth timer: a client may take its time, and so
    // it may through the edge. So may one that sends CONNECT, or starts with another op,
    // which nats-server takes as connected with its default options.
    let (_server, edge) = server_and_edge("[limits]\nhandshake_timeout = \"300ms\"").await;
    let (mut silent, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(
        !silent.closes_within(Duration::from_millis(900)).await,
        "a silent client was closed: {}",
        show(&silent.take_buffered())
    );
    assert!(silent.is_open().await);
    for first in [CONNECT, b"SUB foo 1\r\n"] {
        let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
        assert!(!raw.roundtrip(first).await.closed);
        assert!(
            !raw.closes_within(Duration::from_millis(900)).await,
            "closed after {}: {}",
            show(first),
            show(&raw.take_buffered())
        );
        assert!(raw.is_open().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_max_is_refused_and_closed() {
    const MAX: usize = 4096;
    let server = NatsServer::start_with_config(&format!("max_payload: {MAX}\n"));
    let edge = start_edge(&[server.url()], "").await;
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_eq!(info["max_payload"], MAX);

    let mut exact = with_connect(format!("SUB big 1\r\nPUB big {MAX}\r\n").as_bytes());
    exact.extend(std::iter::repeat_n(b'x', MAX));
    exact.extend_from_slice(b"\r\n");
    let reply = raw.roundtrip(&exact).await;
    assert!(!reply.closed);
    assert!(reply
        .bytes
        .starts_with(format!("MSG big 1 {MAX}\r\n").as_bytes()));

    // The server answers on the control line alone; so must the edge.
    raw.send(format!("PUB big {}\r\n", MAX + 1).as_bytes())
        .await;
    let got = raw.read_to_close().await;
    assert_eq!(show(&got), show(b"-ERR 'Maximum Payload Violation'\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpub_counts_headers_against_max_payload() {
    const MAX: usize = 100;
    let server = NatsServer::start_with_config(&format!("max_payload: {MAX}\n"));
    let edge = start_edge(&[server.url()], "").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let hdr = b"NATS/1.0\r\nA: b\r\n\r\n";
    let body = vec![b'y'; MAX + 1 - hdr.len()];
    let mut bytes = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nHPUB h {} {}\r\n",
        hdr.len(),
        MAX + 1
    )
    .into_bytes();
    bytes.extend_from_slice(hdr);
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(b"\r\n");
    raw.send(&bytes).await;
    let got = raw.read_to_close().await;
    assert_eq!(show(&got), show(b"-ERR 'Maximum Payload Violation'\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_max_payload_below_the_servers_is_announced_and_enforced() {
    let (server, edge) = server_and_edge("[limits]\nmax_payload = 1000").await;
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_eq!(info["max_payload"], 1000);

    let mut exact = with_connect(b"SUB m 1\r\nPUB m 1000\r\n");
    exact.extend(std::iter::repeat_n(b'x', 1000));
    exact.extend_from_slice(b"\r\n");
    let reply = raw.roundtrip(&exact).await;
    assert!(!reply.closed);
    assert!(reply.bytes.starts_with(b"MSG m 1 1000\r\n"));

    raw.send(b"PUB m 1001\r\n").await;
    let got = raw.read_to_close().await;
    assert_eq!(show(&got), show(b"-ERR 'Maximum Payload Violation'\r\n"));

    // async-nats reads the announced limit and refuses before sending.
    let c = client(&edge_url(&edge)).await;
    assert_eq!(c.server_info().max_payload, 1000);
    let err = c
        .publish("m", vec![0u8; 1001].into())
        .await
        .expect_err("over the edge's max_payload");
    assert_eq!(
        err.kind(),
        async_nats::client::PublishErrorKind::MaxPayloadExceeded
    );

    // The limit is for what clients send: larger messages from elsewhere still arrive.
    let mut sub = c.subscribe("from.direct").await.unwrap();
    round_trip(&c).await;
    let direct = client(&server.url()).await;
    direct
        .publish("from.direct", vec![5u8; 4000].into())
        .await
        .unwrap();
    round_trip(&direct).await;
    assert_eq!(next_msg(&mut sub).await.payload.len(), 4000);
}

// ---------------------------------------------------------------------------------------------
// Differential: the same bytes to nats-server and through the edge get the same answer.

/// Replaces every INFO line (which legitimately differs) with a placeholder.
fn normalise(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut at_line_start = true;
    while !rest.is_empty() {
        if at_line_start && rest.starts_with(b"INFO ") {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(rest.len(), |i| i + 2);
            out.extend_from_slice(b"INFO {..}\r\n");
            rest = &rest[end..];
            continue;
        }
        at_line_start = rest[0] == b'\n';
        out.push(rest[0]);
        rest = &rest[1..];
    }
    show(&out)
}

/// Gives each run its own subjects: every `foo` becomes a three-byte token unique to the run
/// (same length, so sizes and control-line lengths stay exact). Connections of earlier runs
/// that the server has not yet reaped cannot then take a queue message or reorder a delivery.
fn isolate(bytes: &[u8]) -> Vec<u8> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUN: AtomicUsize = AtomicUsize::new(0);
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let run = RUN.fetch_add(1, Ordering::Relaxed) % (36 * 36);
    let token = [b'f', DIGITS[run / 36], DIGITS[run % 36]];
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"foo") {
            out.extend_from_slice(&token);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Undoes [`isolate`] in a reply so runs compare.
fn unisolate(text: String) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let is_token = b.len() - i >= 3
            && b[i] == b'f'
            && b[i + 1].is_ascii_alphanumeric()
            && b[i + 2].is_ascii_alphanumeric()
            && !(b[i + 1].is_ascii_uppercase() || b[i + 2].is_ascii_uppercase())
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && (b.len() - i == 3 || !b[i + 3].is_ascii_alphanumeric());
        if is_token {
            out.push_str("foo");
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn differential_cases() -> Vec<(&'static str, Vec<u8>)> {
    let c = with_connect;
    let hc = |rest: &[u8]| {
        [
            b"CONNECT {\"verbose\":false,\"headers\":true}\r\n".as_slice(),
            rest,
        ]
        .concat()
    };
    let long_subject = {
        let mut v = b"SUB ".to_vec();
        v.extend(std::iter::repeat_n(b'a', 5000));
        v.extend_from_slice(b" 1\r\n");
        c(&v)
    };
    let sub_with_args_of = |n: usize| {
        // `SUB <subject> 1`: the arguments after the verb are the subject, a blank and the sid.
        let mut v = b"SUB ".to_vec();
        v.extend(std::iter::repeat_n(b'a', n - 2));
        v.extend_from_slice(b" 1\r\n");
        c(&v)
    };
    // nats-server skips what follows PING and PONG up to the newline, however long.
    let long_tail = |verb: &[u8], filler: u8| {
        let mut v = verb.to_vec();
        v.extend(std::iter::repeat_n(filler, 6000));
        v.extend_from_slice(b"\r\nSUB foo 1\r\nPUB foo 1\r\nx\r\n");
        c(&v)
    };
    let longish_ok = {
        let mut v = b"SUB ".to_vec();
        v.extend(std::iter::repeat_n(b'a', 4000));
        v.extend_from_slice(b" 1\r\n");
        c(&v)
    };
    vec![
        // Valid traffic.
        ("ping before connect", b"PING\r\n".to_vec()),
        (
            "sub and pub before connect",
            b"SUB foo 1\r\nPUB foo 2\r\nhi\r\n".to_vec(),
        ),
        (
            "connect {} is verbose",
            b"CONNECT {}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\n".to_vec(),
        ),
        (
            "verbose true",
            b"CONNECT {\"verbose\":true}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\n".to_vec(),
        ),
        ("pub sub", c(b"SUB foo 1\r\nPUB foo 5\r\nhello\r\n")),
        ("reply subject", c(b"SUB foo 1\r\nPUB foo bar 2\r\nhi\r\n")),
        ("empty payload", c(b"SUB foo 1\r\nPUB foo 0\r\n\r\n")),
        (
            "payload with CRLF inside",
            c(b"SUB foo 1\r\nPUB foo 9\r\n\r\nPUB x\r\n\r\n"),
        ),
        (
            "lowercase",
            b"connect {\"verbose\":false}\r\nsub foo 1\r\npub foo 1\r\nx\r\nping\r\n".to_vec(),
        ),
        (
            "tabs and runs of blanks",
            c(b"SUB\tfoo \t 1\r\nPUB  foo\t2\r\nhi\r\n"),
        ),
        (
            "bare newline control lines",
            c(b"SUB foo 1\nPUB foo 2\nhi\r\nPING\n"),
        ),
        (
            "queue group of one",
            c(b"SUB foo q 1\r\nPUB foo 1\r\nx\r\n"),
        ),
        (
            "star wildcard",
            c(b"SUB foo.* 1\r\nPUB foo.a 1\r\nx\r\nPUB foo.a.b 1\r\ny\r\nPUB foo 1\r\nz\r\n"),
        ),
        (
            "tail wildcard",
            c(b"SUB foo.> 2\r\nPUB foo.a 1\r\nx\r\nPUB foo.a.b 1\r\ny\r\nPUB foo 1\r\nz\r\n"),
        ),
        ("unsub", c(b"SUB foo 1\r\nUNSUB 1\r\nPUB foo 2\r\nhi\r\n")),
        (
            "auto unsub",
            c(b"SUB foo 1\r\nUNSUB 1 2\r\nPUB foo 1\r\na\r\nPUB foo 1\r\nb\r\nPUB foo 1\r\nc\r\n"),
        ),
        ("unsub unknown sid", c(b"UNSUB 99\r\n")),
        (
            "duplicate sid",
            c(b"SUB foo 1\r\nSUB foo 1\r\nPUB foo 1\r\nx\r\n"),
        ),
        ("pong", c(b"PONG\r\n")),
        ("several pings", c(b"PING\r\nPING\r\nPING\r\n")),
        (
            "headers",
            hc(b"SUB foo 1\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"),
        ),
        (
            "headers with reply",
            hc(b"SUB foo 1\r\nHPUB foo r 24 24\r\nNATS/1.0\r\nA: b\r\nC: d\r\n\r\n\r\n"),
        ),
        ("control line at 4000", longish_ok),
        ("control line at exactly 4096", sub_with_args_of(4096)),
        ("control line at 4097", sub_with_args_of(4097)),
        (
            "verbose then a violation",
            b"CONNECT {\"verbose\":true}\r\nSUB foo 1\r\nPUB foo 1\r\nx\r\nPUB foo 2000000\r\n"
                .to_vec(),
        ),
        (
            "verbose then an unknown verb",
            b"CONNECT {\"verbose\":true}\r\nPING\r\nSUB foo 1\r\nNOPE\r\n".to_vec(),
        ),
        (
            "verbose invalid subject",
            b"CONNECT {\"verbose\":true}\r\nSUB a..b 1\r\nSUB a 2\r\n".to_vec(),
        ),
        (
            "no responders",
            b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\n\
              SUB inbox.1 1\r\nPUB nobody inbox.1 0\r\n\r\n"
                .to_vec(),
        ),
        ("publish to a wildcard subject", c(b"PUB foo.* 2\r\nhi\r\n")),
        (
            "pedantic publish to a wildcard subject",
            b"CONNECT {\"verbose\":false,\"pedantic\":true}\r\nPUB foo.* 2\r\nhi\r\n".to_vec(),
        ),
        ("invalid subject", c(b"SUB foo..bar 1\r\nSUB .x 2\r\n")),
        ("PINGX is a PING", c(b"PINGX\r\n")),
        ("ping with 6000 bytes before its newline", long_tail(b"PING", b'x')),
        ("ping with 6000 blanks before its newline", long_tail(b"ping", b' ')),
        ("pong with 6000 bytes before its newline", long_tail(b"PONG", b'x')),
        ("trailing blank after size", c(b"SUB foo 1\r\nPUB foo 2 \r\nhi\r\n")),
        ("size with leading zeros", c(b"SUB foo 1\r\nPUB foo 0002\r\nhi\r\n")),
        ("ping with an argument", c(b"PING foo\r\n")),
        ("ping with a trailing blank", c(b"PING \r\n")),
        ("mixed-case verbs", c(b"SuB foo 1\r\nPuB foo 1\r\nx\r\npInG\r\n")),
        ("unsub with max 0", c(b"SUB foo 1\r\nUNSUB 1 0\r\nPUB foo 1\r\nx\r\n")),
        (
            "empty header block",
            hc(b"SUB foo 1\r\nHPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n"),
        ),
        ("control byte in a subject", c(b"SUB f\x01o 1\r\nPUB f\x01o 1\r\nx\r\n")),
        (
            "utf-8 subject",
            c("SUB f\u{e9}\u{e9} 1\r\nPUB f\u{e9}\u{e9} 1\r\nx\r\n".as_bytes()),
        ),
        (
            "CONNECT with unknown fields",
            b"CONNECT {\"verbose\":false,\"zzz\":[1,2,{\"a\":null}],\"lang\":\"x\",\"version\":\"9\"}\r\n"
                .to_vec(),
        ),
        (
            "CONNECT with a long integer in an unknown field",
            b"CONNECT {\"verbose\":false,\"x\":123456789012345678901234567890}\r\n".to_vec(),
        ),
        (
            "CONNECT with null verbose",
            b"CONNECT {\"verbose\":null,\"pedantic\":false}\r\nSUB foo 1\r\n".to_vec(),
        ),
        (
            "CONNECT with a bare newline",
            b"CONNECT {\"verbose\":false}\nSUB foo 1\n".to_vec(),
        ),
        (
            "CONNECT with an escaped string",
            b"CONNECT {\"verbose\":false,\"name\":\"a\\u00e9\\\"b\\\\\"}\r\n".to_vec(),
        ),
        (
            "CONNECT twice",
            b"CONNECT {\"verbose\":false}\r\nCONNECT {\"verbose\":true}\r\nSUB foo 1\r\n".to_vec(),
        ),
        (
            "CONNECT after a tab",
            b"CONNECT\t{\"verbose\":false}\r\nSUB foo 1\r\n".to_vec(),
        ),
        (
            "CONNECT after several blanks",
            b"CONNECT   {\"verbose\":false}\r\n".to_vec(),
        ),
        (
            "CONNECT keys in another case",
            b"CONNECT {\"VERBOSE\":false}\r\nSUB foo 1\r\n".to_vec(),
        ),
        (
            "CONNECT with null fields",
            b"CONNECT {\"verbose\":false,\"echo\":null,\"user\":null}\r\nSUB foo 1\r\n".to_vec(),
        ),
        ("nine-digit size", c(b"PUB foo 999999999\r\n")),
        // Violations.
        (
            "CONNECT with a raw tab in a string",
            b"CONNECT {\"verbose\":false,\"name\":\"a\tb\"}\r\n".to_vec(),
        ),
        (
            "CONNECT with a trailing comma",
            b"CONNECT {\"verbose\":false,}\r\n".to_vec(),
        ),
        (
            "CONNECT with two objects",
            b"CONNECT {\"verbose\":false}{}\r\n".to_vec(),
        ),
        (
            "CONNECT with a negative protocol",
            b"CONNECT {\"verbose\":false,\"protocol\":-1}\r\n".to_vec(),
        ),
        (
            "CONNECT with a huge protocol",
            b"CONNECT {\"verbose\":false,\"protocol\":99999999999}\r\n".to_vec(),
        ),
        ("CONNECT with a string", b"CONNECT \"x\"\r\n".to_vec()),
        ("CONNECT with a number", b"CONNECT 5\r\n".to_vec()),
        ("leading blank", c(b" PING\r\n")),
        ("payload ended by a bare newline", c(b"PUB foo 2\r\nhi\nPING\r\n")),
        ("size with a plus sign", c(b"PUB foo +2\r\nhi\r\n")),
        ("nineteen-digit size", c(b"PUB foo 9999999999999999999\r\n")),
        ("unsub with a non-numeric max", c(b"SUB foo 1\r\nUNSUB 1 x\r\n")),
        ("CONNECT without JSON", b"CONNECT\r\n".to_vec()),
        ("CONNECT with a blank only", b"CONNECT \r\n".to_vec()),
        ("CONNECT with an array", b"CONNECT []\r\n".to_vec()),
        (
            "CONNECT with a wrong type",
            b"CONNECT {\"verbose\":1}\r\n".to_vec(),
        ),
        (
            "CONNECT with a float protocol",
            b"CONNECT {\"verbose\":false,\"protocol\":1.0}\r\n".to_vec(),
        ),
        (
            "CONNECT with trailing garbage",
            b"CONNECT {\"verbose\":false} x\r\n".to_vec(),
        ),
        ("unknown verb", c(b"FOO bar\r\n")),
        ("pub prefix verb", c(b"PUBX foo 1\r\nx\r\n")),
        ("empty line", c(b"\r\n")),
        ("server verb MSG from a client", c(b"MSG foo 1 2\r\nhi\r\n")),
        ("+OK from a client", c(b"+OK\r\n")),
        ("-ERR from a client", c(b"-ERR 'x'\r\n")),
        ("sub without sid", c(b"SUB foo\r\n")),
        ("sub with too many args", c(b"SUB foo q 1 2\r\n")),
        ("unsub without sid", c(b"UNSUB\r\n")),
        ("pub without size", c(b"PUB foo\r\n")),
        ("pub non-numeric size", c(b"PUB foo x\r\nhi\r\n")),
        ("pub negative size", c(b"PUB foo -1\r\n")),
        ("payload longer than its size", c(b"PUB foo 2\r\nhiX\r\n")),
        ("payload over max", c(b"PUB foo 2000000\r\n")),
        ("control line over max", long_subject),
        (
            "malformed CONNECT JSON",
            b"CONNECT {bad\r\nPING\r\n".to_vec(),
        ),
        (
            "CONNECT without a blank",
            b"CONNECT{\"verbose\":false}\r\n".to_vec(),
        ),
        (
            "hpub without headers negotiated",
            c(b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"),
        ),
        (
            "oversized hpub without headers negotiated",
            c(b"HPUB foo 12 2000000\r\n"),
        ),
        (
            "hpub before CONNECT",
            b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n".to_vec(),
        ),
        // nats-server takes a client that starts with another op as one that sent a CONNECT
        // with the default options: verbose (a `+OK` for each op) and pedantic.
        (
            "ops before CONNECT",
            b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nUNSUB 1\r\nPUB foo 1\r\nx\r\n".to_vec(),
        ),
        (
            "lowercase op before CONNECT",
            b"sub foo 1\r\npub foo 1\r\nx\r\n".to_vec(),
        ),
        (
            "pedantic publish to a wildcard before CONNECT",
            b"PUB foo.* 1\r\nx\r\n".to_vec(),
        ),
        (
            "CONNECT after ops",
            b"SUB foo 1\r\nCONNECT {\"verbose\":false}\r\nPUB foo 1\r\nx\r\n".to_vec(),
        ),
        (
            "unknown op before CONNECT",
            b"FOO\r\n".to_vec(),
        ),
        (
            "hpub header size over total",
            hc(b"HPUB foo 20 10\r\n0123456789\r\n"),
        ),
        (
            "error after valid ops",
            c(b"SUB foo 1\r\nPUB foo 1\r\na\r\nPING\r\nBAD\r\n"),
        ),
    ]
}

fn describe(reply: Option<Reply>, leftover: Vec<u8>) -> String {
    unisolate(match reply {
        Some(reply) => format!(
            "{} [{}]",
            normalise(&reply.bytes),
            if reply.closed { "closed" } else { "open" }
        ),
        None => format!("{} [no sentinel, no close]", normalise(&leftover)),
    })
}

/// Sends `bytes` in one write, then the sentinel; describes the answer.
async fn one_write_outcome(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let (mut raw, _) = RawConn::connect_info(addr).await;
    let reply = raw.try_exchange(&isolate(bytes), limit).await;
    describe(reply, raw.take_buffered())
}

/// Sends `bytes` in writes of `chunk` bytes, then the sentinel unless the peer is expected
/// to close (writing after a close would reset the connection and lose the answer).
async fn chunked_outcome(
    addr: SocketAddr,
    bytes: &[u8],
    chunk: usize,
    closes: bool,
    limit: Duration,
) -> String {
    let bytes = isolate(bytes);
    let (mut raw, _) = RawConn::connect_info(addr).await;
    for part in bytes.chunks(chunk) {
        raw.send(part).await;
    }
    let reply = if closes {
        raw.closes_within(limit).await.then(|| Reply {
            bytes: raw.take_buffered(),
            closed: true,
        })
    } else {
        raw.try_exchange(b"", limit).await
    };
    describe(reply, raw.take_buffered())
}

/// The edge's answer must not depend on how the client splits its writes: for every case,
/// in 1-, 3- and 7-byte writes, it must equal nats-server's answer to the same bytes in one
/// write. (nats-server's own answer can depend on the split, e.g. a pedantic publish to a
/// wildcard subject sent byte by byte is refused twice; the edge re-frames, so the one-write
/// answer is the reference.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_against_nats_server_in_small_writes() {
    let direct_server = NatsServer::start();
    let upstream = NatsServer::start();
    let edge = start_edge(&[upstream.url()], "").await;
    let limit = Duration::from_secs(4);

    let mut mismatches = Vec::new();
    let cases = differential_cases();
    for (name, bytes) in &cases {
        let expected = one_write_outcome(direct_server.addr(), bytes, limit).await;
        let closes = expected.ends_with("[closed]");
        for chunk in [1usize, 3, 7] {
            if chunk == 1 && bytes.len() > 600 {
                continue;
            }
            let edged = chunked_outcome(edge_addr(&edge), bytes, chunk, closes, limit).await;
            if expected != edged {
                mismatches.push(format!(
                    "{name} in {chunk}-byte writes: sent {}\n    nats-server: {expected}\n    edge:        {edged}",
                    show(bytes)
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Sends `bytes` to a fresh nats-server and through an edge in front of another, in one write
/// each, and asserts the answers (and whether the connection closed) are identical.
async fn assert_same_as_nats_server(bytes: &[u8]) {
    let direct_server = NatsServer::start();
    let upstream = NatsServer::start();
    let edge = start_edge(&[upstream.url()], "").await;
    let limit = Duration::from_secs(4);
    let direct = one_write_outcome(direct_server.addr(), bytes, limit).await;
    let edged = one_write_outcome(edge_addr(&edge), bytes, limit).await;
    assert_eq!(
        edged,
        direct,
        "sent {}\n    nats-server: {direct}\n    edge:        {edged}",
        show(bytes)
    );
}

/// Go's JSON decoder takes the last of duplicate keys; nats-server accepts such a CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_duplicate_key_is_accepted_like_nats_server() {
    assert_same_as_nats_server(b"CONNECT {\"verbose\":true,\"verbose\":false}\r\nSUB foo 1\r\n")
        .await;
}

/// Of two spellings of one field, nats-server reads the last; the edge, which sends the
/// fields it does not read in key order, must not put the other one last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_two_spellings_of_a_field_is_read_like_nats_server() {
    assert_same_as_nats_server(
        b"CONNECT {\"verbose\":false,\"account\":\"x\",\"ACCOUNT\":\"\"}\r\n",
    )
    .await;
}

/// An unknown CONNECT field is skipped by nats-server whatever number it holds; the edge must
/// not refuse the connection because the number does not fit an f64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_an_out_of_range_number_is_accepted_like_nats_server() {
    assert_same_as_nats_server(b"CONNECT {\"verbose\":false,\"x\":1e400}\r\n").await;
}

/// `CONNECT null` decodes to "no options" in Go: nats-server keeps the connection, whether it
/// is the first CONNECT or a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_null_is_accepted_like_nats_server() {
    assert_same_as_nats_server(b"CONNECT null\r\n").await;
    assert_same_as_nats_server(&with_connect(b"CONNECT null\r\n")).await;
}

/// Go's JSON decoder replaces invalid UTF-8 and lone surrogate escapes in strings with U+FFFD;
/// nats-server accepts such a CONNECT (a client name, say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_invalid_unicode_is_accepted_like_nats_server() {
    assert_same_as_nats_server(b"CONNECT {\"verbose\":false,\"name\":\"\xff\"}\r\n").await;
    assert_same_as_nats_server(b"CONNECT {\"verbose\":false,\"name\":\"\\ud800\"}\r\n").await;
}

/// Go's decoder nests 10000 levels deep; 200 levels in an unknown field are fine for
/// nats-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_deep_nesting_is_accepted_like_nats_server() {
    let deep = format!(
        "CONNECT {{\"verbose\":false,\"x\":{}1{}}}\r\n",
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_same_as_nats_server(deep.as_bytes()).await;
}

/// nats-server's size parser takes at most nine digits: a longer size is a parse error (a
/// silent close), not a max_payload violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_digit_size_closes_silently_like_nats_server() {
    assert_same_as_nats_server(&with_connect(b"PUB foo 9999999999\r\n")).await;
    assert_same_as_nats_server(
        b"CONNECT {\"verbose\":false,\"headers\":true}\r\nHPUB foo 1 9999999999\r\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_against_nats_server() {
    let direct_server = NatsServer::start();
    let upstream = NatsServer::start();
    let edge = start_edge(&[upstream.url()], "").await;
    let limit = Duration::from_secs(4);

    let mut mismatches = Vec::new();
    let cases = differential_cases();
    for (name, bytes) in &cases {
        let outcome = [
            one_write_outcome(direct_server.addr(), bytes, limit).await,
            one_write_outcome(edge_addr(&edge), bytes, limit).await,
        ];
        if outcome[0] != outcome[1] {
            mismatches.push(format!(
                "{name}: sent {}\n    nats-server: {}\n    edge:        {}",
                show(bytes),
                outcome[0],
                outcome[1]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

/// nats-server closes a connection whose control line is longer than its own limit (here
/// below the edge's) with an `-ERR`; the client, still publishing, makes the edge's writes
/// to the closed upstream fail. The `-ERR` sent before the close still reaches the client,
/// as it would reach a client of nats-server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_last_error_survives_a_failed_upstream_write() {
    let server = NatsServer::start_with_config("max_control_line: 256\n");
    let edge = start_edge(&[server.url()], "").await;
    // Direct and through the edge, in turn, a few times: the race is the edge's.
    for i in 0..10 {
        let addr = if i % 2 == 0 {
            server.addr()
        } else {
            edge_addr(&edge)
        };
        let (mut raw, _) = RawConn::connect_info(addr).await;
        assert!(!raw.roundtrip(&with_connect(b"")).await.closed);
        let mut bytes = format!("SUB {} 1\r\n", "a".repeat(300)).into_bytes();
        let publish = format!("PUB x 1024\r\n{}\r\n", "x".repeat(1024));
        for _ in 0..64 {
            bytes.extend_from_slice(publish.as_bytes());
        }
        raw.send(&bytes).await;
        let got = raw.read_to_close().await;
        assert!(
            String::from_utf8_lossy(&got).contains("-ERR 'maximum control line exceeded'"),
            "{addr}: {}",
            show(&got)
        );
    }
}
