//! Tagging through the edge, against a real nats-server: an upstream subscriber sees who
//! published (client address, connection id, TLS identity, static tags), headers a client
//! forges with reserved names never get through, JSON payloads get the field, and a message
//! the tags push over max_payload is refused at the edge as nats-server would refuse it.
//! The user tag carries the identity the ACL filter established: the presented user in
//! passthrough mode, the authenticated one in edge mode.

mod common;
mod transport_support;

use std::path::PathBuf;

use async_nats::HeaderMap;
use bytes::Bytes;
use common::*;
use nats_edge_filters::CloseReason;
use transport_support::*;

fn tag_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("filters/rules/tagging")
        .join(format!("{name}.toml"));
    format!("{:?}", path.display().to_string())
}

fn tagging(name: &str) -> String {
    format!("[tagging]\nfile = {}\n", tag_file(name))
}

fn header<'a>(msg: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    msg.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// A server, an edge tagging with the default set, a client through the edge, and a direct
/// client subscribed to `subject` upstream.
struct Tagged {
    _server: NatsServer,
    edge: nats_edge::Edge,
    inside: async_nats::Client,
    direct: async_nats::Client,
    upstream: async_nats::Subscriber,
}

async fn tagged(subject: &str) -> Tagged {
    tagged_as(subject, client_options()).await
}

/// Like [`tagged`], with the client through the edge connecting with `options`.
async fn tagged_as(subject: &str, options: async_nats::ConnectOptions) -> Tagged {
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], &tagging("default")).await;
    let inside = within("the client connects", options.connect(edge_url(&edge)))
        .await
        .expect("connects through the edge");
    let direct = client(&server.url()).await;
    let upstream = direct.subscribe(subject.to_string()).await.unwrap();
    round_trip(&direct).await;
    Tagged {
        _server: server,
        edge,
        inside,
        direct,
        upstream,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_subscribers_see_who_published() {
    let Tagged {
        _server,
        edge,
        inside,
        direct,
        mut upstream,
    } = tagged("orders.>").await;

    inside.publish("orders.new", "plain".into()).await.unwrap();
    let mut spoofed = HeaderMap::new();
    spoofed.insert("Nats-Edge-Conn-Id", "999");
    spoofed.insert("nats-edge-client-addr", "10.0.0.1:1");
    spoofed.insert("NATS-EDGE-USER", "mallory");
    spoofed.insert("Nats-Edge-Anything", "x");
    spoofed.insert("Keep", "me");
    inside
        .publish_with_headers("orders.spoofed", spoofed, "s".into())
        .await
        .unwrap();
    round_trip(&inside).await;
    round_trip(&direct).await;

    let got = drain_ready(&mut upstream);
    assert_eq!(got.len(), 2);
    let local = inside.server_info().client_ip.clone();
    for msg in &got {
        let addr = header(msg, "Nats-Edge-Client-Addr").expect("the client address");
        assert!(addr.starts_with("127.0.0.1:"), "{addr} ({local})");
        let conn_id: u64 = header(msg, "Nats-Edge-Conn-Id").unwrap().parse().unwrap();
        assert!(conn_id > 0);
        assert_eq!(header(msg, "Nats-Edge-Region"), Some("eu-west-1"));
        // The client presented no user name, so there is no user tag.
        assert_eq!(header(msg, "Nats-Edge-User"), None);
        assert_eq!(header(msg, "Nats-Edge-Tls-Subject"), None);
        assert_eq!(header(msg, "Nats-Edge-Anything"), None);
    }
    let spoofed = &got[1];
    assert_eq!(header(spoofed, "Keep"), Some("me"));
    let headers = spoofed.headers.as_ref().unwrap();
    assert_eq!(headers.get_all("Nats-Edge-Conn-Id").count(), 1);
    assert_ne!(header(spoofed, "Nats-Edge-Conn-Id"), Some("999"));
    assert_eq!(metric_value(&edge, "nats_edge_tag_spoofs_total"), 1.0);
    assert!(metric_value(&edge, "nats_edge_tags_applied_total") >= 2.0);
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_identity_is_tagged() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client_ca = pki.ca("client-ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let alice = pki.leaf(&client_ca, "alice", Leaf::client("alice"));
    let server = NatsServer::start();
    let listener = format!(
        "kind = \"tls\"\ntls = {{ cert_file = {}, key_file = {}, client_ca_file = {} }}",
        toml_path(&server_cert.cert),
        toml_path(&server_cert.key),
        toml_path(&client_ca.cert)
    );
    let edge = start_edge_toml(&edge_toml(&[server.url()], &listener, &tagging("default"))).await;
    // The INFO before the handshake (classic TLS) keeps room for the certificate's subject,
    // which is known only after it: on a `tcp` listener, with the same tags, no such room.
    let plain = start_edge(&[server.url()], &tagging("default")).await;
    let told_before_connect = |addr| async move {
        let mut raw = RawConn::connect(addr).await;
        raw.read_info().await["max_payload"].as_u64().unwrap()
    };
    let on_tls = told_before_connect(edge_addr(&edge)).await;
    let on_tcp = told_before_connect(edge_addr(&plain)).await;
    // Less a few bytes: the two connections' ids and ports may differ in length.
    assert!(
        on_tcp - on_tls >= 256 + "Nats-Edge-Tls-Subject: \r\n".len() as u64 - 8,
        "room for the subject: {on_tls} against {on_tcp}"
    );
    let inside = within(
        "TLS connect",
        client_options()
            .add_root_certificates(ca.cert.clone())
            .add_client_certificate(alice.cert.clone(), alice.key.clone())
            .connect(format!("tls://{}", edge_addr(&edge))),
    )
    .await
    .expect("TLS client connects");
    let direct = client(&server.url()).await;
    let mut upstream = direct.subscribe("tls.>").await.unwrap();
    round_trip(&direct).await;
    inside.publish("tls.hello", "hi".into()).await.unwrap();
    round_trip(&inside).await;
    round_trip(&direct).await;
    let got = drain_ready(&mut upstream);
    assert_eq!(got.len(), 1);
    assert_eq!(
        header(&got[0], "Nats-Edge-Tls-Subject"),
        Some("CN=alice,O=Acme")
    );
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_headers_can_refuse_the_message() {
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], &tagging("refuse-spoofed")).await;
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.read_info().await;
    let header = b"NATS/1.0\r\nnats-edge-user: mallory\r\n\r\n";
    let mut op = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nHPUB orders.x {} {}\r\n",
        header.len(),
        header.len() + 2
    )
    .into_bytes();
    op.extend_from_slice(header);
    op.extend_from_slice(b"hi\r\n");
    let reply = raw.roundtrip(&op).await;
    assert_eq!(
        reply.text(),
        "-ERR 'Permissions Violation for Publish to \"orders.x\"'\r\n"
    );
    assert!(raw.is_open().await);
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_payloads_get_the_field() {
    let Tagged {
        _server,
        edge,
        inside,
        direct,
        mut upstream,
    } = tagged("events.>").await;
    inside
        .publish("events.login", Bytes::from_static(br#"{"kind":"login"}"#))
        .await
        .unwrap();
    inside
        .publish("events.raw", Bytes::from_static(b"not json"))
        .await
        .unwrap();
    round_trip(&inside).await;
    round_trip(&direct).await;
    let got = drain_ready(&mut upstream);
    assert_eq!(got.len(), 2);
    let v: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(v["kind"], "login");
    assert_eq!(v["edge"]["Nats-Edge-Region"], "eu-west-1");
    assert!(v["edge"]["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(&got[1].payload[..], b"not json");
    within("edge shutdown", edge.shutdown()).await;
}

fn hpub(subject: &str, block: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut op = format!(
        "HPUB {subject} {} {}\r\n",
        block.len(),
        block.len() + payload.len()
    )
    .into_bytes();
    op.extend_from_slice(block);
    op.extend_from_slice(payload);
    op.extend_from_slice(b"\r\n");
    op
}

/// Header blocks some client library reads differently from the edge, or not at all, close
/// the connection and reach no one: nats.py reads fields from a fixed offset into the first
/// line and trims control bytes and Unicode spaces off names (a forged tag), nats.go drops
/// the headers of a block with a line without a colon, nats.js throws on a bare LF, and
/// async-nats drops its connection on a CR in a value (the edge's tags, lost). A JSON
/// payload the edge cannot read is refused rather than passed on with the field the client
/// wrote into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_the_edge_would_not_see_do_not_get_through() {
    let server = NatsServer::start_with_args(&["-m", "-1"]);
    let edge = start_edge(&[server.url()], &tagging("default")).await;
    let mut direct = RawConn::connect(server.addr()).await;
    direct.read_info().await;
    let ready = direct
        .roundtrip(
            b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB t.> 1\r\nSUB events.> 2\r\n",
        )
        .await;
    assert_eq!(ready.text(), "");
    const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"headers\":true}\r\n";

    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.read_info().await;
    let mut ops = CONNECT.to_vec();
    // No header block at all, to nats-server: tagged like a PUB.
    ops.extend(hpub("t.empty", b"", b"e"));
    // Control bytes in a value, as nats-server writes them into a sourced stream's
    // messages, which an application publishes again: passed on, tagged.
    ops.extend(hpub(
        "t.source",
        b"NATS/1.0\r\nNats-Stream-Source: S 4 a.*\x0cb.* >\x0c> a.1\r\n\r\n",
        b"s",
    ));
    // A key the edge cannot read (a lone surrogate escape), which a JavaScript or Python
    // consumer reads.
    let json = br#"{"edge":{"tls_subject":"CN=admin"},"\ud800":1}"#;
    ops.extend(format!("PUB events.x {}\r\n", json.len()).into_bytes());
    ops.extend_from_slice(json);
    ops.extend_from_slice(b"\r\n");
    let reply = raw.roundtrip(&ops).await;
    assert_eq!(
        reply.text(),
        "-ERR 'Permissions Violation for Publish to \"events.x\"'\r\n"
    );

    let blocks: [&[u8]; 7] = [
        b"NATS/1.0XXNats-Edge-Tls-Subject: CN=admin\r\n\r\n",
        b"NATS/1.0\r\n\x0bNats-Edge-Tls-Subject: CN=admin\r\n\r\n",
        b"NATS/1.0\r\nA: 1\rNats-Edge-Tls-Subject: CN=admin\r\n\r\n",
        "NATS/1.0\r\n\u{a0}Nats-Edge-Tls-Subject: CN=admin\r\n\r\n".as_bytes(),
        b"NATS/1.0\r\nno colon\r\n\r\n",
        b"NATS/1.0\r\nA: x\nB: y\r\n\r\n",
        b"NATS/1.0\r\nA: \xff\r\n\r\n",
    ];
    for block in blocks {
        let mut raw = RawConn::connect(edge_addr(&edge)).await;
        raw.read_info().await;
        let mut op = CONNECT.to_vec();
        op.extend(hpub("t.bad", block, b"x"));
        raw.send(&op).await;
        assert_eq!(raw.read_to_close().await, b"", "{}", block.escape_ascii());
    }
    drop(raw);
    // Once the clients' upstream links are gone (only `direct` left), nats-server has
    // handled all it read on them: anything it forwarded would be in `direct`'s stream
    // before the PONG below.
    wait_for_connections(server.monitor_port(), 1).await;

    let seen = direct.roundtrip(b"").await.text();
    assert!(seen.contains("HMSG t.empty 1 "), "{seen}");
    assert!(seen.contains("HMSG t.source 1 "), "{seen}");
    assert!(
        seen.contains("Nats-Stream-Source: S 4 a.*\u{c}b.* >\u{c}> a.1\r\n"),
        "{seen}"
    );
    assert!(!seen.contains("t.bad"), "{seen}");
    assert!(!seen.contains("events.x"), "{seen}");
    assert!(!seen.contains("CN=admin"), "{seen}");
    let m = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    assert_eq!(
        m.closes(CloseReason::ProtocolViolation),
        blocks.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_that_push_a_message_over_max_payload_are_refused_at_the_edge() {
    let server = NatsServer::start_with_config("max_payload: 1024");
    let edge = start_edge(&[server.url()], &tagging("default")).await;
    let direct = client(&server.url()).await;
    let mut upstream = direct.subscribe("big.>").await.unwrap();
    round_trip(&direct).await;

    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    let info = raw.read_info().await;
    // Clients size their messages by this: the room the tags take is kept out of it.
    let announced = info["max_payload"].as_u64().unwrap() as usize;
    assert!(announced < 1024 - 128, "{info}");
    // Fits as announced, so with its tags too; over the announced size, and over the
    // upstream's with the tags: the edge refuses it as nats-server refuses an oversized PUB.
    let mut op =
        format!("CONNECT {{\"verbose\":false}}\r\nPUB big.ok {announced}\r\n").into_bytes();
    op.extend_from_slice(&vec![b'o'; announced]);
    op.extend_from_slice(b"\r\nPUB big.no 1000\r\n");
    op.extend_from_slice(&[b'x'; 1000]);
    op.extend_from_slice(b"\r\n");
    raw.send(&op).await;
    let got = raw.read_to_close().await;
    assert_eq!(got, b"-ERR 'Maximum Payload Violation'\r\n");
    // `big.ok` came on the closed client's upstream connection, which nothing orders
    // against `direct`'s: wait for it, then check that nothing else came.
    let first = next_msg(&mut upstream).await;
    assert_eq!(first.subject.as_str(), "big.ok");
    assert_eq!(first.payload.len(), announced);
    assert!(header(&first, "Nats-Edge-Conn-Id").is_some());
    round_trip(&direct).await;
    let got = drain_ready(&mut upstream);
    assert!(
        got.is_empty(),
        "only the one that fits was forwarded: {got:?}"
    );
    // A client library that sizes its messages by the INFO it got (after its CONNECT, with
    // the room its user's name takes) publishes the largest one it may without an error.
    let inside = client(&edge_url(&edge)).await;
    let largest = inside.server_info().max_payload;
    assert!(largest < 1024, "{largest}");
    inside
        .publish("big.largest", vec![b'l'; largest].into())
        .await
        .unwrap();
    round_trip(&inside).await;
    assert_eq!(next_msg(&mut upstream).await.payload.len(), largest);
    // The upstream link of other clients was never at risk; a new client works.
    let again = client(&edge_url(&edge)).await;
    round_trip(&again).await;
    // Refused by the edge itself: nats-server never saw the oversized message, and its
    // link to the edge did not end with the client.
    let m = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    assert_eq!(m.closes(CloseReason::MaxPayloadExceeded), 1);
    assert_eq!(m.closes(CloseReason::UpstreamClosed), 0);
    assert!(
        !server.log().dump().contains("maximum payload exceeded"),
        "nats-server saw the oversized message: {}",
        server.log().dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_headers_is_tagged_and_gets_plain_messages() {
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], &tagging("default")).await;
    let direct = client(&server.url()).await;
    let mut upstream = direct.subscribe("plain.>").await.unwrap();
    round_trip(&direct).await;

    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.read_info().await;
    raw.roundtrip(b"CONNECT {\"verbose\":false}\r\nSUB plain.back 1\r\nPUB plain.out 2\r\nhi\r\n")
        .await;
    round_trip(&direct).await;
    let got = drain_ready(&mut upstream);
    assert_eq!(got.len(), 1);
    assert!(header(&got[0], "Nats-Edge-Conn-Id").is_some());

    let mut headers = HeaderMap::new();
    headers.insert("A", "1");
    direct
        .publish_with_headers("plain.back", headers, "yo".into())
        .await
        .unwrap();
    round_trip(&direct).await;
    let reply = raw.roundtrip(b"").await;
    assert_eq!(reply.text(), "MSG plain.back 1 2\r\nyo\r\n");
    within("edge shutdown", edge.shutdown()).await;
}

/// The edge asks the upstream for headers on behalf of a client that did not; a client that
/// wants no_responders without headers is still refused as nats-server refuses it, and
/// only once its credentials pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_without_headers_is_refused_like_nats_server() {
    let server = NatsServer::start_with_config("authorization { user: app, password: pw }\n");
    let edge = start_edge(&[server.url()], &tagging("default")).await;
    let asked = |pass: &str| {
        format!(
            "CONNECT {{\"verbose\":false,\"no_responders\":true,\"user\":\"app\",\"pass\":\"{pass}\"}}\r\n"
        )
    };
    // The same after a first CONNECT without it, for which the edge asked for headers.
    let second = format!(
        "CONNECT {{\"verbose\":false,\"user\":\"app\",\"pass\":\"pw\"}}\r\n{}",
        asked("pw")
    );
    for (connect, expected) in [
        (
            asked("pw"),
            "-ERR 'no responders requires headers support'\r\n",
        ),
        (asked("wrong"), "-ERR 'Authorization Violation'\r\n"),
        (second, "-ERR 'no responders requires headers support'\r\n"),
    ] {
        let mut replies = Vec::new();
        for addr in [server.addr(), edge_addr(&edge)] {
            let (mut raw, _) = RawConn::connect_info(addr).await;
            let reply = raw.roundtrip(connect.as_bytes()).await;
            replies.push((reply.text(), reply.closed));
        }
        assert_eq!(
            replies[0],
            (expected.to_string(), true),
            "nats-server's answer changed"
        );
        assert_eq!(replies[1], replies[0], "{connect}");
    }
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_tag_is_the_connection_identity() {
    // Passthrough: the user the client presented (nats-server without auth lets it in).
    let Tagged {
        _server,
        edge,
        inside: alice,
        direct,
        mut upstream,
    } = tagged_as(
        "who.>",
        client_options().user_and_password("alice".into(), "pw".into()),
    )
    .await;
    let mut forged = HeaderMap::new();
    forged.insert("Nats-Edge-User", "mallory");
    alice
        .publish_with_headers("who.am.i", forged, "x".into())
        .await
        .unwrap();
    round_trip(&alice).await;
    round_trip(&direct).await;
    let got = drain_ready(&mut upstream);
    assert_eq!(got.len(), 1);
    let users: Vec<&str> = got[0]
        .headers
        .as_ref()
        .unwrap()
        .get_all("Nats-Edge-User")
        .map(|v| v.as_str())
        .collect();
    assert_eq!(users, ["alice"]);
    within("edge shutdown", edge.shutdown()).await;
}

/// nats-server authenticates every CONNECT, so a connection that sends a second one with
/// another user's credentials is that user from then on: its messages carry that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_as_another_user_changes_the_user_tag() {
    let server = NatsServer::start_with_config(
        "authorization { users = [ {user: alice, password: a}, {user: bob, password: b} ] }\n",
    );
    let edge = start_edge(&[server.url()], &tagging("default")).await;
    let mut direct = RawConn::connect(server.addr()).await;
    direct.read_info().await;
    direct
        .roundtrip(b"CONNECT {\"verbose\":false,\"headers\":true,\"user\":\"alice\",\"pass\":\"a\"}\r\nSUB who 1\r\n")
        .await;
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.read_info().await;
    let reply = raw
        .roundtrip(
            b"CONNECT {\"verbose\":false,\"user\":\"alice\",\"pass\":\"a\"}\r\nPUB who 1\r\n1\r\n\
              CONNECT {\"verbose\":false,\"user\":\"bob\",\"pass\":\"b\"}\r\nPUB who 1\r\n2\r\n",
        )
        .await;
    assert_eq!(reply.text(), "");
    let seen = direct.roundtrip(b"").await.text();
    let users: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("Nats-Edge-User: "))
        .collect();
    assert_eq!(users, ["alice", "bob"], "{seen}");
    within("edge shutdown", edge.shutdown()).await;
}

/// Publishes on `subject` through the edge and returns what the upstream subscriber got.
async fn publish_and_see(
    inside: &async_nats::Client,
    upstream: &mut async_nats::Subscriber,
    subject: &str,
) -> async_nats::Message {
    inside
        .publish(subject.to_string(), "x".into())
        .await
        .unwrap();
    round_trip(inside).await;
    next_msg(upstream).await
}

/// The tagging file the project ships (`filters/rules/tagging/default.toml`).
fn shipped_tagging_file() -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("filters/rules/tagging/default.toml"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tagging_file_for_live_connections() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_tagging_file();
    assert!(shipped.contains("\"eu-west-1\""), "the shipped static tag");
    let tags = dir.path().join("tags.toml");
    std::fs::write(&tags, &shipped).unwrap();
    let config = dir.path().join("nats-edge.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
                 [upstream]\nurls = [{:?}]\n[tagging]\nfile = \"tags.toml\"\n{extra}",
                server.url()
            ),
        )
        .unwrap();
    };
    write_config("");
    let edge = EdgeProcess::spawn(&["-c", config.to_str().unwrap()], &[]);
    let inside = client(&edge.url()).await;
    let direct = client(&server.url()).await;
    let mut upstream = direct.subscribe("orders.>").await.unwrap();
    round_trip(&direct).await;

    let msg = publish_and_see(&inside, &mut upstream, "orders.a").await;
    assert_eq!(header(&msg, "Nats-Edge-Region"), Some("eu-west-1"));

    // A new static value, and a file that does not parse: the first applies to the live
    // connection, the second keeps it.
    std::fs::write(&tags, shipped.replace("\"eu-west-1\"", "\"us-east-2\"")).unwrap();
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(from, "ACL, rewrite and tagging rules reloaded");
    let msg = publish_and_see(&inside, &mut upstream, "orders.b").await;
    assert_eq!(&msg.subject[..], "orders.b");
    assert_eq!(header(&msg, "Nats-Edge-Region"), Some("us-east-2"));

    std::fs::write(&tags, "[headers]\nuser = \"bad name\"\n").unwrap();
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    let (_, line) = edge.wait_log(
        from,
        "configuration reload failed; keeping the running configuration",
    );
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .starts_with("tagging.file: "),
        "the failure names the key: {line}"
    );
    let msg = publish_and_see(&inside, &mut upstream, "orders.c").await;
    assert_eq!(header(&msg, "Nats-Edge-Region"), Some("us-east-2"));

    // A lower max_payload reaches the tagging of new connections: a message that fits as
    // sent but not with its tags is refused at the edge, not forwarded over the new limit.
    std::fs::write(&tags, &shipped).unwrap();
    write_config("[limits]\nmax_payload = 1024\n");
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(from, "configuration reloaded");
    let mut raw = RawConn::connect(edge.addr()).await;
    let announced = raw.read_info().await["max_payload"].as_u64().unwrap();
    assert!(
        announced < 1024 - 128,
        "the tags' room is kept out: {announced}"
    );
    let mut op = b"CONNECT {\"verbose\":false}\r\nPUB orders.big 1000\r\n".to_vec();
    op.extend_from_slice(&[b'x'; 1000]);
    op.extend_from_slice(b"\r\n");
    raw.send(&op).await;
    assert_eq!(
        raw.read_to_close().await,
        b"-ERR 'Maximum Payload Violation'\r\n"
    );
    let msg = publish_and_see(&inside, &mut upstream, "orders.d").await;
    assert_eq!(
        &msg.subject[..],
        "orders.d",
        "nothing else reached the upstream"
    );
}

/// A reload whose tags take more room than a live client was told about (a longer value)
/// leaves that client on the file it had: a message of the announced `max_payload` still
/// goes through, tagged as before, where the new tags would have pushed it over the limit
/// (and nats.go closes for good on that `-ERR`). A new connection is told the new room and
/// gets the new tags; a reload whose tags fit the room applies to the live client at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_tags_need_more_room_keeps_live_clients_within_theirs() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_tagging_file();
    let tags = dir.path().join("tags.toml");
    std::fs::write(&tags, &shipped).unwrap();
    let config = dir.path().join("nats-edge.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
             [upstream]\nurls = [{:?}]\n[limits]\nmax_payload = 4096\n\
             [tagging]\nfile = \"tags.toml\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            server.url()
        ),
    )
    .unwrap();
    let edge = EdgeProcess::spawn(&["-c", config.to_str().unwrap()], &[]);
    let inside = client(&edge.url()).await;
    let direct = client(&server.url()).await;
    let mut upstream = direct.subscribe("orders.>").await.unwrap();
    round_trip(&direct).await;
    round_trip(&inside).await;
    let told = inside.server_info().max_payload;
    assert!(told < 4096, "the tags' room is kept out: {told}");

    let reload = |tags_file: String| {
        std::fs::write(&tags, tags_file).unwrap();
        let from = edge.log().len();
        send_signal(edge.pid(), "HUP");
        edge.wait_log(from, "ACL, rewrite and tagging rules reloaded");
    };
    reload(shipped.replace("\"eu-west-1\"", "\"eu-west-1-with-a-longer-name\""));
    inside
        .publish("orders.full", vec![b'x'; told].into())
        .await
        .unwrap();
    round_trip(&inside).await;
    let msg = next_msg(&mut upstream).await;
    assert_eq!(&msg.subject[..], "orders.full");
    assert_eq!(msg.payload.len(), told);
    assert_eq!(header(&msg, "Nats-Edge-Region"), Some("eu-west-1"));
    let (_, metrics) = http_get(edge.admin_addr(), "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "nats_edge_tag_reloads_held_total 1"),
        "{metrics}"
    );

    let newer = client(&edge.url()).await;
    round_trip(&newer).await;
    assert!(newer.server_info().max_payload < told);
    let msg = publish_and_see(&newer, &mut upstream, "orders.new").await;
    assert_eq!(
        header(&msg, "Nats-Edge-Region"),
        Some("eu-west-1-with-a-longer-name")
    );

    reload(shipped.replace("\"eu-west-1\"", "\"eu-west-2\""));
    let msg = publish_and_see(&inside, &mut upstream, "orders.live").await;
    assert_eq!(header(&msg, "Nats-Edge-Region"), Some("eu-west-2"));
}
