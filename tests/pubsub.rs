//! Messaging through the edge with a real client library (async-nats): what a user of the
//! proxy sees must be what they would see talking to nats-server directly.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use common::*;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe() {
    let (_server, edge) = server_and_edge("").await;
    let sub_client = client(&edge_url(&edge)).await;
    let pub_client = client(&edge_url(&edge)).await;
    let mut sub = sub_client.subscribe("greet.one").await.unwrap();
    round_trip(&sub_client).await;

    pub_client
        .publish("greet.one", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    round_trip(&pub_client).await;

    let msg = next_msg(&mut sub).await;
    assert_eq!(msg.subject.as_str(), "greet.one");
    assert_eq!(&msg.payload[..], b"hello");
    assert!(msg.reply.is_none());
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions() {
    let (_server, edge) = server_and_edge("").await;
    let c = client(&edge_url(&edge)).await;
    let mut star = c.subscribe("orders.*.created").await.unwrap();
    let mut tail = c.subscribe("orders.>").await.unwrap();
    round_trip(&c).await;

    for subject in [
        "orders.eu.created",
        "orders.us.created",
        "orders.eu.deleted",
        "orders.eu.created.late",
        "other.eu.created",
    ] {
        c.publish(subject, Bytes::from(subject)).await.unwrap();
    }
    round_trip(&c).await;

    let subjects = |msgs: Vec<async_nats::Message>| -> Vec<String> {
        msgs.iter().map(|m| m.subject.to_string()).collect()
    };
    let got_star = subjects(drain_ready(&mut star));
    let got_tail = subjects(drain_ready(&mut tail));
    assert_eq!(got_star, ["orders.eu.created", "orders.us.created"]);
    assert_eq!(
        got_tail,
        [
            "orders.eu.created",
            "orders.us.created",
            "orders.eu.deleted",
            "orders.eu.created.late"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_delivers_each_message_to_exactly_one_member() {
    const N: usize = 200;
    let (_server, edge) = server_and_edge("").await;
    let url = edge_url(&edge);
    let mut members = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let c = client(&url).await;
        subs.push(c.queue_subscribe("work", "workers".into()).await.unwrap());
        round_trip(&c).await;
        members.push(c);
    }
    // A plain subscriber next to the group sees every message.
    let watcher = client(&url).await;
    let mut all = watcher.subscribe("work").await.unwrap();
    round_trip(&watcher).await;

    let publisher = client(&url).await;
    for i in 0..N {
        publisher
            .publish("work", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    round_trip(&publisher).await;
    // Each member is in step once its own PING is answered: the server queued its messages
    // before that PONG.
    for m in &members {
        round_trip(m).await;
    }
    round_trip(&watcher).await;

    let mut seen = HashSet::new();
    let mut per_member = [0usize; 3];
    for (i, sub) in subs.iter_mut().enumerate() {
        for m in drain_ready(sub) {
            let n: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            assert!(seen.insert(n), "message {n} delivered twice");
            per_member[i] += 1;
        }
    }
    assert_eq!(
        seen.len(),
        N,
        "every message reaches the group once: {per_member:?}"
    );
    assert!(
        per_member.iter().all(|&c| c > 0),
        "distribution across members: {per_member:?}"
    );
    assert_eq!(drain_ready(&mut all).len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply() {
    let (_server, edge) = server_and_edge("").await;
    let url = edge_url(&edge);
    let responder = client(&url).await;
    let mut service = responder.subscribe("svc.echo").await.unwrap();
    round_trip(&responder).await;
    let handle = tokio::spawn(async move {
        for _ in 0..3 {
            let Some(req) = service.next().await else {
                return;
            };
            let mut body = b"echo:".to_vec();
            body.extend_from_slice(&req.payload);
            responder
                .publish(req.reply.expect("a reply subject"), body.into())
                .await
                .unwrap();
            responder.flush().await.unwrap();
        }
    });

    let requester = client(&url).await;
    for i in 0..3 {
        let resp = within(
            "request",
            requester.request("svc.echo", Bytes::from(format!("r{i}"))),
        )
        .await
        .expect("a response");
        assert_eq!(resp.payload, Bytes::from(format!("echo:r{i}")));
    }
    within("responder task", handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_responders_fails_fast() {
    let (_server, edge) = server_and_edge("").await;
    let c = client(&edge_url(&edge)).await;
    let started = Instant::now();
    let request = async_nats::Request::new()
        .payload(Bytes::from_static(b"anyone?"))
        .timeout(Some(Duration::from_secs(8)));
    let err = within("request", c.send_request("nobody.home", request))
        .await
        .expect_err("no one is subscribed");
    assert_eq!(err.kind(), RequestErrorKind::NoResponders, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no-responders should be immediate, took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_multiple_values_and_header_only_messages() {
    let (_server, edge) = server_and_edge("").await;
    let c = client(&edge_url(&edge)).await;
    let mut sub = c.subscribe("hdr").await.unwrap();
    round_trip(&c).await;

    let mut headers = HeaderMap::new();
    headers.insert("X-Single", "one");
    headers.append("X-Multi", "first");
    headers.append("X-Multi", "second");
    headers.append("X-Multi", "third");
    c.publish_with_headers("hdr", headers, Bytes::from_static(b"body"))
        .await
        .unwrap();

    let mut only = HeaderMap::new();
    only.insert("X-Only", "headers, no payload");
    c.publish_with_headers("hdr", only, Bytes::new())
        .await
        .unwrap();
    round_trip(&c).await;

    let m = next_msg(&mut sub).await;
    let h = m.headers.expect("headers arrive");
    assert_eq!(h.get("X-Single").map(|v| v.as_str()), Some("one"));
    let multi: Vec<&str> = h.get_all("X-Multi").map(|v| v.as_str()).collect();
    assert_eq!(multi, ["first", "second", "third"]);
    assert_eq!(&m.payload[..], b"body");

    let m = next_msg(&mut sub).await;
    let h = m.headers.expect("a header-only message keeps its headers");
    assert_eq!(
        h.get("X-Only").map(|v| v.as_str()),
        Some("headers, no payload")
    );
    assert!(m.payload.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_sizes_up_to_the_default_max() {
    let (_server, edge) = server_and_edge("").await;
    let c = client(&edge_url(&edge)).await;
    assert_eq!(c.server_info().max_payload, 1024 * 1024);
    let mut sub = c.subscribe("sizes").await.unwrap();
    round_trip(&c).await;

    for size in [0usize, 1, 2, 4095, 4096, 65_537, 1024 * 1024] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        c.publish("sizes", payload.clone().into()).await.unwrap();
        round_trip(&c).await;
        let m = next_msg(&mut sub).await;
        assert_eq!(m.payload.len(), size);
        assert!(m.payload[..] == payload[..], "payload of {size} B differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_max_payload_is_accepted_and_one_more_refused() {
    const MAX: usize = 4096;
    let server = NatsServer::start_with_config(&format!("max_payload: {MAX}\n"));
    let edge = start_edge(&[server.url()], "").await;
    let c = client(&edge_url(&edge)).await;
    assert_eq!(c.server_info().max_payload, MAX);
    let mut sub = c.subscribe("max").await.unwrap();
    round_trip(&c).await;

    c.publish("max", vec![7u8; MAX].into()).await.unwrap();
    round_trip(&c).await;
    assert_eq!(next_msg(&mut sub).await.payload.len(), MAX);

    let err = c
        .publish("max", vec![7u8; MAX + 1].into())
        .await
        .expect_err("one byte over max_payload");
    assert_eq!(
        err.kind(),
        async_nats::client::PublishErrorKind::MaxPayloadExceeded
    );
    // The connection is unharmed by the refused publish.
    c.publish("max", Bytes::from_static(b"after"))
        .await
        .unwrap();
    round_trip(&c).await;
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_that_look_like_protocol() {
    let (_server, edge) = server_and_edge("").await;
    let c = client(&edge_url(&edge)).await;
    let mut sub = c.subscribe("bin").await.unwrap();
    round_trip(&c).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let payloads: Vec<Vec<u8>> = vec![
        b"\r\nPUB foo 5\r\nhello\r\n".to_vec(),
        b"\r\nMSG bin 1 3\r\nabc\r\n".to_vec(),
        b"PING\r\nPONG\r\n-ERR 'Unknown Protocol Operation'\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"INFO {\"host\":\"10.0.0.1\"}\r\n".to_vec(),
        b"NATS/1.0\r\nX: y\r\n\r\n".to_vec(),
        all_bytes.clone(),
        all_bytes.repeat(300),
    ];
    for p in &payloads {
        c.publish("bin", p.clone().into()).await.unwrap();
    }
    // The same through headers too: a header value cannot hold CRLF, the payload can.
    let mut h = HeaderMap::new();
    h.insert("X-Kind", "binary");
    c.publish_with_headers("bin", h, b"\r\nHPUB x 1 2\r\n\r\n".to_vec().into())
        .await
        .unwrap();
    round_trip(&c).await;

    for p in &payloads {
        let m = next_msg(&mut sub).await;
        assert_eq!(show(&m.payload), show(p));
    }
    let m = next_msg(&mut sub).await;
    assert_eq!(&m.payload[..], b"\r\nHPUB x 1 2\r\n\r\n");
    assert_eq!(
        m.headers.unwrap().get("X-Kind").map(|v| v.as_str()),
        Some("binary")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_arrive_complete_and_in_order() {
    messages_arrive_complete_and_in_order(100_000, false).await;
}

/// The same with a header block on every message (`Nats-Msg-Id`, as JetStream publishers
/// send): runs of HPUBs and HMSGs whose control lines repeat while the numbers keep their
/// width, and change when they grow a digit, both ways through the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_messages_with_headers_arrive_complete_and_in_order() {
    messages_arrive_complete_and_in_order(50_000, true).await;
}

/// Publishes `n` messages numbered in their payload (and, `with_headers`, in a
/// `Nats-Msg-Id` header too) through the edge, and checks that every one arrives, in order,
/// as it was sent.
async fn messages_arrive_complete_and_in_order(n: u64, with_headers: bool) {
    let (_server, edge) = server_and_edge("").await;
    let url = edge_url(&edge);
    // Room for every message in the client's own queue, so a receiver task that falls behind
    // on a loaded machine cannot make async-nats drop messages; and any such drop is reported
    // as the client's, not blamed on the edge.
    let (slow_tx, mut slow_rx) = tokio::sync::mpsc::unbounded_channel();
    let subscriber = within(
        "connect",
        client_options()
            .subscription_capacity(2 * n as usize)
            .event_callback(move |e| {
                let slow_tx = slow_tx.clone();
                async move {
                    if let async_nats::Event::SlowConsumer(sid) = e {
                        let _ = slow_tx.send(sid);
                    }
                }
            })
            .connect(&url),
    )
    .await
    .unwrap();
    let mut sub = subscriber.subscribe("seq").await.unwrap();
    round_trip(&subscriber).await;

    let receiver = tokio::spawn(async move {
        let mut expected = 0u64;
        while expected < n {
            let m = sub.next().await.expect("subscription ended early");
            let got: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            assert_eq!(got, expected, "out of order or lost");
            let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
            assert_eq!(
                id.map(|v| v.as_str().to_string()),
                with_headers.then(|| expected.to_string()),
                "headers of message {expected}"
            );
            expected += 1;
        }
        expected
    });

    let publisher = client(&url).await;
    within_for(Duration::from_secs(60), "publishing", async {
        for i in 0..n {
            let payload = Bytes::from(i.to_string());
            if with_headers {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", i.to_string().as_str());
                publisher
                    .publish_with_headers("seq", headers, payload)
                    .await
            } else {
                publisher.publish("seq", payload).await
            }
            .unwrap();
            if i % 10_000 == 9_999 {
                publisher.flush().await.unwrap();
            }
        }
        publisher.flush().await.unwrap();
    })
    .await;
    let got = within_for(Duration::from_secs(60), "receiving", receiver).await;
    assert!(
        slow_rx.try_recv().is_err(),
        "async-nats itself dropped messages (client-side slow consumer)"
    );
    assert_eq!(got.unwrap(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_subscriptions_on_one_connection() {
    const N: usize = 5000;
    let (_server, edge) = server_and_edge("").await;
    let c = client(&edge_url(&edge)).await;
    let mut subs = Vec::with_capacity(N);
    for i in 0..N {
        subs.push(c.subscribe(format!("many.{i}")).await.unwrap());
    }
    round_trip(&c).await;
    for i in 0..N {
        c.publish(format!("many.{i}"), Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    round_trip(&c).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let m = next_msg(sub).await;
        assert_eq!(m.subject.as_str(), format!("many.{i}"));
        assert_eq!(m.payload, Bytes::from(i.to_string()));
    }
}

/// The subjects of the subscriptions nats-server holds for its one client (the edge's link),
/// from its monitoring port: async-nats drops what comes for a subscription it ended, so
/// only the server shows that the UNSUB went through the edge. Inboxes are left out: each
/// `round_trip` subscribes one and ends it when done, which the server may not have seen
/// yet.
async fn upstream_subscriptions(monitor: u16) -> Vec<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], monitor));
    let (status, body) = http_get(addr, "/connz?subs=1").await;
    assert_eq!(status, 200, "{body}");
    let connz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(connz["num_connections"], 1, "{connz}");
    let list = connz["connections"][0]["subscriptions_list"].as_array();
    list.into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .filter(|subject| !subject.starts_with("_INBOX."))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let server = NatsServer::start_with_args(&["-m", "-1"]);
    let edge = start_edge(&[server.url()], "").await;
    let c = client(&edge_url(&edge)).await;
    let mut gone = c.subscribe("unsub.t").await.unwrap();
    let mut kept = c.subscribe("unsub.t").await.unwrap();
    round_trip(&c).await;
    c.publish("unsub.t", Bytes::from_static(b"1"))
        .await
        .unwrap();
    round_trip(&c).await;
    assert_eq!(&next_msg(&mut gone).await.payload[..], b"1");
    assert_eq!(&next_msg(&mut kept).await.payload[..], b"1");

    let monitor = server.monitor_port();
    assert_eq!(
        upstream_subscriptions(monitor).await,
        ["unsub.t", "unsub.t"]
    );
    gone.unsubscribe().await.unwrap();
    round_trip(&c).await;
    assert_eq!(upstream_subscriptions(monitor).await, ["unsub.t"]);
    c.publish("unsub.t", Bytes::from_static(b"2"))
        .await
        .unwrap();
    round_trip(&c).await;
    assert_eq!(&next_msg(&mut kept).await.payload[..], b"2");
    assert!(within("the ended subscription", gone.next())
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_unsubscribe_delivers_exactly_n() {
    let server = NatsServer::start_with_args(&["-m", "-1"]);
    let edge = start_edge(&[server.url()], "").await;
    let c = client(&edge_url(&edge)).await;
    let mut sub = c.subscribe("auto").await.unwrap();
    sub.unsubscribe_after(3).await.unwrap();
    round_trip(&c).await;
    let monitor = server.monitor_port();
    assert_eq!(upstream_subscriptions(monitor).await, ["auto"]);
    for i in 0..10 {
        c.publish("auto", Bytes::from(i.to_string())).await.unwrap();
    }
    round_trip(&c).await;
    let mut got = Vec::new();
    while let Some(m) = within("auto-unsubscribed stream", sub.next()).await {
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["0", "1", "2"]);
    // nats-server ended it after the third: the UNSUB's count reached it.
    assert!(upstream_subscriptions(monitor).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_unsub_and_auto_unsub_on_the_wire() {
    let (_server, edge) = server_and_edge("").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .roundtrip(
            b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\nUNSUB 1\r\nUNSUB 2 3\r\n\
              PUB a 1\r\nx\r\nPUB b 1\r\n0\r\nPUB b 1\r\n1\r\nPUB b 1\r\n2\r\nPUB b 1\r\n3\r\nPUB b 1\r\n4\r\n",
        )
        .await;
    assert!(!reply.closed);
    assert_eq!(
        show(&reply.bytes),
        show(b"MSG b 2 1\r\n0\r\nMSG b 2 1\r\n1\r\nMSG b 2 1\r\n2\r\n")
    );
}
