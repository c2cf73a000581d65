//! The admin server's `/metrics`, `/connz` and `/varz` after known traffic through the edge
//! to a real nats-server, counted exactly.

mod common;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use nats_edge::Edge;
use nats_edge_filters::DenialKind;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

fn admin(edge: &Edge) -> std::net::SocketAddr {
    edge.admin_addr().expect("admin server")
}

/// Bytes a raw client received after the first INFO line.
fn after_info(reply: &[u8]) -> usize {
    match reply.iter().position(|b| *b == b'\n') {
        Some(i) if reply.starts_with(b"INFO ") => reply.len() - i - 1,
        _ => reply.len(),
    }
}

/// The admin server's JSON answer at `path`.
async fn get_json(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (_, body) = http_get(admin, path).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_connz_and_varz_count_known_traffic() {
    let (server, edge) = server_and_edge(ADMIN).await;
    let admin = admin(&edge);

    // Verbose mode: every op is acknowledged with +OK, which keeps the clients in step
    // without a PING (nats-server answers a first PING with an extra INFO whose length the
    // edge rewrites, which would make the byte counts depend on the server version).
    let sub_sent: &[u8] =
        b"CONNECT {\"verbose\":true,\"user\":\"alice\",\"name\":\"orders\",\"lang\":\"raw\",\"version\":\"1.2\"}\r\nSUB foo 1\r\n";
    let mut sub = RawConn::connect(edge_addr(&edge)).await;
    sub.send(sub_sent).await;
    let sub_acks = sub.read_until(b"+OK\r\n+OK\r\n").await;

    let publish: &[u8] = b"PUB foo 5\r\nhello\r\n";
    let mut publisher = RawConn::connect(edge_addr(&edge)).await;
    publisher.send(b"CONNECT {\"verbose\":true}\r\n").await;
    let mut pub_received = after_info(&publisher.read_until(b"+OK\r\n").await.bytes);
    for _ in 0..3 {
        publisher.send(publish).await;
        pub_received += publisher.read_until(b"+OK\r\n").await.bytes.len();
    }
    let delivered = b"MSG foo 1 5\r\nhello\r\n";
    let msgs = sub.read_until(&delivered.repeat(3)).await;
    assert_eq!(msgs.bytes, delivered.repeat(3), "{}", msgs.text());
    let pub_sent = b"CONNECT {\"verbose\":true}\r\n".len() + 3 * publish.len();

    // Both connections are listed, with their live counters (and, with `auth`, their user).
    let connz = poll_http(admin, "/connz?auth=true", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let conns = v["connections"].as_array()?;
        (conns.len() == 2 && conns[1]["in_msgs"] == 3 && conns[0]["out_msgs"] == 3).then_some(v)
    })
    .await;
    assert_eq!(connz["total"], 2, "{connz}");
    assert_eq!(connz["num_connections"], 2, "{connz}");
    assert_eq!(connz["offset"], 0, "{connz}");
    assert_eq!(connz["limit"], 1024, "{connz}");
    let (s, p) = (&connz["connections"][0], &connz["connections"][1]);
    assert_eq!(s["listener"], "default", "{s}");
    assert_eq!(s["transport"], "tcp", "{s}");
    assert_eq!(s["ip"], "127.0.0.1", "{s}");
    assert_eq!(
        s["port"],
        sub.stream().local_addr().unwrap().port(),
        "the client's own port: {s}"
    );
    assert_eq!(s["upstream"], server.url(), "{s}");
    assert_eq!(s["subscriptions"], 1, "{s}");
    assert_eq!(
        (&s["name"], &s["lang"], &s["version"]),
        (&"orders".into(), &"raw".into(), &"1.2".into()),
        "from the CONNECT: {s}"
    );
    assert!(p.get("name").is_none(), "{p}");
    assert_eq!(
        s["authorized_user"], "alice",
        "the user the client presented (passthrough): {s}"
    );
    assert!(p.get("authorized_user").is_none(), "{p}");
    assert_eq!(s["in_bytes"], sub_sent.len(), "{s}");
    assert_eq!(s["out_msgs"], 3, "{s}");
    assert!(s["start"].as_str().unwrap().ends_with('Z'), "{s}");
    assert_eq!(p["in_msgs"], 3, "{p}");
    assert_eq!(p["in_bytes"], pub_sent, "{p}");
    assert_eq!(p["subscriptions"], 0, "{p}");
    assert!(
        s["cid"].as_u64() < p["cid"].as_u64(),
        "listed by cid: {connz}"
    );

    // Paging, as nats-server does it.
    let (status, body) = http_get(admin, "/connz?offset=1&limit=1").await;
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["offset"], 1, "{page}");
    assert_eq!(page["limit"], 1, "{page}");
    assert_eq!(page["num_connections"], 1, "{page}");
    assert_eq!(page["connections"][0]["cid"], p["cid"], "{page}");

    // Without `auth`, no user is shown, as nats-server does.
    let (status, body) = http_get(admin, "/connz").await;
    assert_eq!(status, 200);
    let plain: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        plain["connections"][0].get("authorized_user").is_none(),
        "{plain}"
    );

    // varz sums the live connections.
    let (status, body) = http_get(admin, "/varz").await;
    assert_eq!(status, 200);
    let varz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(varz["connections"], 2, "{varz}");
    assert_eq!(varz["total_connections"], 2, "{varz}");
    assert_eq!(varz["in_msgs"], 3, "{varz}");
    assert_eq!(varz["out_msgs"], 3, "{varz}");
    assert_eq!(varz["subscriptions"], 1, "{varz}");
    assert_eq!(varz["slow_consumers"], 0, "{varz}");
    // What nats-top shows of a server's load: memory, CPU, cores.
    assert!(varz["mem"].as_u64().unwrap() > 1 << 20, "{varz}");
    assert!(varz["cpu"].as_f64().unwrap() >= 0.0, "{varz}");
    assert!(varz["cores"].as_u64().unwrap() >= 1, "{varz}");
    assert_eq!(varz["version"], env!("CARGO_PKG_VERSION"), "{varz}");
    assert_eq!(varz["upstreams"][0], server.url(), "{varz}");
    assert_eq!(varz["listeners"][0]["name"], "default", "{varz}");
    assert_eq!(varz["draining"], false, "{varz}");
    assert!(
        varz["server_id"].as_str().unwrap().starts_with("EDGE"),
        "{varz}"
    );

    // The live sessions' traffic is in /metrics already, as in /varz.
    let (_, live) = http_get(admin, "/metrics").await;
    for direction in ["client_to_upstream", "upstream_to_client"] {
        let name = format!("nats_edge_messages_total{{direction=\"{direction}\"}}");
        assert_eq!(sample(&live, &name), 3.0, "{name}");
    }

    // Both clients leave; the totals stay in /metrics once the sessions end.
    drop(sub);
    drop(publisher);
    let text = poll_http(admin, "/metrics", |_, body| {
        let open = "nats_edge_connections_open{listener=\"default\",transport=\"tcp\"}";
        let closed = "nats_edge_connections_closed_total{reason=\"client_closed\"}";
        (metric(body, open) == Some(0.0) && metric(body, closed) == Some(2.0))
            .then(|| body.to_string())
    })
    .await;
    let m = |name: &str| sample(&text, name);
    assert_eq!(
        m("nats_edge_messages_total{direction=\"client_to_upstream\"}"),
        3.0
    );
    assert_eq!(
        m("nats_edge_messages_total{direction=\"upstream_to_client\"}"),
        3.0
    );
    assert_eq!(
        m("nats_edge_bytes_total{direction=\"client_to_upstream\"}"),
        (sub_sent.len() + pub_sent) as f64
    );
    let sub_received = after_info(&sub_acks.bytes) + msgs.bytes.len();
    assert_eq!(
        m("nats_edge_bytes_total{direction=\"upstream_to_client\"}"),
        (sub_received + pub_received) as f64
    );
    assert_eq!(
        m("nats_edge_connections_total{listener=\"default\",transport=\"tcp\"}"),
        2.0
    );
    assert_eq!(
        m("nats_edge_connections_closed_total{reason=\"shutdown\"}"),
        0.0,
        "every reason is registered"
    );
    let upstream = format!("{{upstream=\"{}\"}}", server.url());
    assert_eq!(m(&format!("nats_edge_upstream_dials_total{upstream}")), 2.0);
    assert_eq!(
        m(&format!("nats_edge_upstream_dial_failures_total{upstream}")),
        0.0
    );
    assert_eq!(
        m("nats_edge_handshake_duration_seconds_count{transport=\"tcp\"}"),
        2.0
    );
    assert_eq!(
        m("nats_edge_handshake_failures_total{transport=\"tls\",reason=\"tls\"}"),
        0.0
    );
    assert_eq!(
        m(&format!(
            "nats_edge_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(m("nats_edge_draining"), 0.0);
    assert_eq!(m("nats_edge_config_reloads_total{result=\"failed\"}"), 0.0);
    // With the default configuration filters look only at the two CONNECTs (the ACL filter
    // names the user); no PUB or MSG was timed.
    assert_eq!(m("nats_edge_filter_duration_seconds_count"), 2.0);
    // `+Inf` holds every observation, no more.
    assert_eq!(
        m("nats_edge_filter_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    within("edge shutdown", edge.shutdown()).await;
}

/// `/connz` shows each connection's last activity, idle time and pending bytes, and sorts
/// by them, as nats-server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connz_shows_last_activity_idle_and_pending_bytes() {
    let (_server, edge) = server_and_edge(ADMIN).await;
    let admin = admin(&edge);
    let mut sub = RawConn::connect(edge_addr(&edge)).await;
    sub.send(b"CONNECT {\"verbose\":true}\r\nSUB foo 1\r\n")
        .await;
    sub.read_until(b"+OK\r\n+OK\r\n").await;
    let mut publisher = RawConn::connect(edge_addr(&edge)).await;
    publisher
        .send(b"CONNECT {\"verbose\":true}\r\nPUB foo 5\r\nhello\r\n")
        .await;
    publisher.read_until(b"+OK\r\n+OK\r\n").await;
    sub.read_until(b"MSG foo 1 5\r\nhello\r\n").await;
    let connz = poll_http(admin, "/connz", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let conns = v["connections"].as_array()?;
        (conns.len() == 2 && conns[0]["out_msgs"] == 1).then_some(v)
    })
    .await;
    let (s, p) = (&connz["connections"][0], &connz["connections"][1]);
    for c in [s, p] {
        // From the INFO to the CONNECT, as nats-server measures it first.
        let rtt = c["rtt"].as_str().unwrap();
        assert!(rtt != "0s" && rtt.ends_with('s'), "a round trip: {c}");
        assert_eq!(c["pending_bytes"], 0, "all written: {c}");
        assert!(c["idle"].as_str().unwrap().ends_with('s'), "{c}");
        assert!(
            c["last_activity"].as_str().unwrap() >= c["start"].as_str().unwrap(),
            "{c}"
        );
    }

    // Activity is a message either way or a subscription: the publisher publishes where no
    // one listens (its activity alone) until its last activity is later than the
    // subscriber's, at the millisecond /connz shows. Then `last` puts it first and `idle`
    // last, as nats-server sorts them.
    let mut later = false;
    for _ in 0..2000 {
        publisher.send(b"PUB nobody 1\r\nx\r\n").await;
        publisher.read_until(b"+OK\r\n").await;
        let v = get_json(admin, "/connz").await;
        let last = |i: usize| {
            v["connections"][i]["last_activity"]
                .as_str()
                .unwrap()
                .to_string()
        };
        if last(1) > last(0) {
            later = true;
            break;
        }
    }
    assert!(
        later,
        "the publisher's activity never passed the subscriber's"
    );
    let cids = |sort: &'static str| async move {
        let v = get_json(admin, &format!("/connz?sort={sort}")).await;
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cid"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let (sid, pid) = (s["cid"].as_u64().unwrap(), p["cid"].as_u64().unwrap());
    assert_eq!(cids("last").await, [pid, sid]);
    assert_eq!(cids("idle").await, [sid, pid]);
}

/// `/connz` takes nats-server's query parameters: it sorts, looks up a cid, filters by state,
/// and refuses bad values with the status and text nats-server's own monitor answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connz_takes_nats_servers_query_parameters() {
    let server = NatsServer::start_with_args(&["-m", "-1"]);
    let monitor = server.monitor_port();
    let edge = start_edge(&[server.url()], ADMIN).await;
    let admin = admin(&edge);

    // Connected in this order: name, subscriptions, messages published.
    let mut clients = Vec::new();
    for (name, subs, msgs) in [("a", 3, 1), ("b", 1, 3), ("c", 2, 2)] {
        let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
        let mut ops =
            format!("CONNECT {{\"verbose\":false,\"name\":\"{name}\",\"user\":\"u{name}\"}}\r\n");
        for sid in 0..subs {
            ops += &format!("SUB {name}.{sid} {sid}\r\n");
        }
        ops += &"PUB nowhere 1\r\nx\r\n".repeat(msgs);
        // Once the PONG is back, the edge has handled every op before it.
        let reply = raw.roundtrip(ops.as_bytes()).await;
        assert!(!reply.closed, "{}", reply.text());
        clients.push(raw);
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    // Sessions publish their counters when their task goes idle.
    let all = poll_http(admin, "/connz", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let in_msgs: Vec<_> = v["connections"]
            .as_array()?
            .iter()
            .map(|c| c["in_msgs"].as_u64())
            .collect();
        (names(&v) == ["a", "b", "c"] && in_msgs == [Some(1), Some(3), Some(2)]).then_some(v)
    })
    .await;
    let cid_of_b = all["connections"][1]["cid"].as_u64().unwrap();
    let get = |path: String| async move {
        let (status, body) = http_get(admin, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v
    };

    // Counters sort descending, uptime the newest first; paging applies after the sort.
    let v = get("/connz?sort=subs".into()).await;
    assert_eq!(names(&v), ["a", "c", "b"], "{v}");
    let v = get("/connz?sort=msgs_from&limit=2".into()).await;
    assert_eq!(names(&v), ["b", "c"], "{v}");
    assert_eq!((&v["total"], &v["limit"]), (&3.into(), &2.into()), "{v}");
    let v = get("/connz?sort=msgs_from&offset=2".into()).await;
    assert_eq!(names(&v), ["a"], "{v}");
    let v = get("/connz?sort=uptime".into()).await;
    assert_eq!(names(&v), ["c", "b", "a"], "{v}");
    // The edge tracks no pending bytes: all tie, in cid order.
    let v = get("/connz?sort=pending".into()).await;
    assert_eq!(names(&v), ["a", "b", "c"], "{v}");

    // A cid: that connection alone, a page of one, `total` still counting every one.
    let v = get(format!("/connz?cid={cid_of_b}")).await;
    assert_eq!(names(&v), ["b"], "{v}");
    assert_eq!((&v["total"], &v["limit"]), (&3.into(), &1.into()), "{v}");
    let v = get("/connz?cid=999999".into()).await;
    assert_eq!(names(&v), Vec::<String>::new(), "{v}");
    assert_eq!(v["num_connections"], 0, "{v}");
    assert_eq!((&v["total"], &v["limit"]), (&3.into(), &1.into()), "{v}");

    // The edge keeps no closed connections.
    let v = get("/connz?state=closed".into()).await;
    assert_eq!(
        (&v["total"], &v["connections"]),
        (&0.into(), &serde_json::json!([]))
    );
    let v = get("/connz?state=any".into()).await;
    assert_eq!(names(&v), ["a", "b", "c"], "{v}");

    // `auth` adds the user, `user` selects by it; `subs` is accepted.
    let v = get("/connz?auth=1&user=uc".into()).await;
    assert_eq!(names(&v), ["c"], "{v}");
    assert_eq!(v["connections"][0]["authorized_user"], "uc", "{v}");
    let v = get("/connz?subs=true".into()).await;
    assert_eq!(names(&v), ["a", "b", "c"], "{v}");

    // Bad values: the same answer as from nats-server's monitor.
    let monitor = std::net::SocketAddr::from(([127, 0, 0, 1], monitor));
    for query in [
        "sort=bogus",
        "sort=stop",
        "sort=reason&state=any",
        "state=bogus",
        "auth=yes",
        "subs=x",
        "offset=x",
        "limit=1.5",
        "limit=99999999999999999999",
        "cid=-1",
        "sort=bogus&auth=x",
    ] {
        let path = format!("/connz?{query}");
        let expected = http_get(monitor, &path).await;
        assert_eq!(expected.0, 400, "nats-server, {query}: {}", expected.1);
        assert_eq!(http_get(admin, &path).await, expected, "{query}");
    }

    // A second CONNECT names the client anew, as in nats-server's connz.
    let cid_of_c = all["connections"][2]["cid"].as_u64().unwrap();
    let reply = clients[2]
        .roundtrip(
            b"CONNECT {\"verbose\":false,\"name\":\"c2\",\"lang\":\"raw\",\"user\":\"uc\"}\r\n",
        )
        .await;
    assert!(!reply.closed, "{}", reply.text());
    poll_http(admin, &format!("/connz?cid={cid_of_c}"), |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (names(&v) == ["c2"] && v["connections"][0]["lang"] == "raw").then_some(())
    })
    .await;
    drop(clients);
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_counters_are_exported_with_a_bounded_user_label() {
    let (_server, edge) = server_and_edge(ADMIN).await;
    let m = edge.metrics();
    m.acl_denied("alice", DenialKind::Publish);
    m.acl_denied("alice", DenialKind::Publish);
    m.acl_denied("bob", DenialKind::Subscribe);
    for i in 0..nats_edge::metrics::MAX_USER_LABELS {
        m.acl_denied(&format!("user-{i}"), DenialKind::Delivery);
    }
    m.rewritten(nats_edge_filters::RewriteDirection::ClientToUpstream);
    m.tag_applied();
    m.tag_applied();
    m.tag_spoof();
    let (status, text) = http_get(admin(&edge), "/metrics").await;
    assert_eq!(status, 200);
    let m = |name: &str| sample(&text, name);
    assert_eq!(
        m("nats_edge_acl_denials_total{user=\"alice\",direction=\"publish\"}"),
        2.0
    );
    assert_eq!(
        m("nats_edge_acl_denials_total{user=\"bob\",direction=\"subscribe\"}"),
        1.0
    );
    // A user's series appear per direction, with its first denial there.
    assert_eq!(
        metric(
            &text,
            "nats_edge_acl_denials_total{user=\"alice\",direction=\"subscribe\"}"
        ),
        None
    );
    // alice and bob took two of the labels: the last two users share `_other`.
    assert_eq!(
        m("nats_edge_acl_denials_total{user=\"_other\",direction=\"delivery\"}"),
        2.0
    );
    assert_eq!(
        m("nats_edge_rewrites_total{direction=\"client_to_upstream\"}"),
        1.0
    );
    assert_eq!(
        m("nats_edge_rewrites_total{direction=\"upstream_to_client\"}"),
        0.0
    );
    assert_eq!(m("nats_edge_tags_applied_total"), 2.0);
    assert_eq!(m("nats_edge_tag_spoofs_total"), 1.0);
    within("edge shutdown", edge.shutdown()).await;
}

/// The binary with `busy_poll` on: request/reply works through it as always, the start-up log
/// names the window, and the time the workers spend polling after reads is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_workers_forward_and_count_their_time() {
    let server = NatsServer::start();
    let edge = EdgeProcess::spawn(
        &["--listen", "127.0.0.1:0", "--upstream", &server.url()],
        &[
            ("NATS_EDGE_BUSY_POLL", "1ms"),
            ("NATS_EDGE_ADMIN__LISTEN", "127.0.0.1:0"),
        ],
    );
    let (_, started) = edge.wait_log(0, "workers busy-poll after each read");
    assert_eq!(started["window"], "1ms", "{started}");
    let admin = edge.admin_addr();

    let responder = client(&edge.url()).await;
    let mut requests = responder.subscribe("busy.echo").await.unwrap();
    // nats-server handles a connection's ops in order: once the responder's own message
    // comes back, its subscription is in place for the requester.
    responder
        .publish("busy.echo", "ready".into())
        .await
        .unwrap();
    let ready = within("the responder's own message", requests.next()).await;
    assert!(ready.is_some_and(|m| m.reply.is_none()));
    let answering = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                responder.publish(reply, request.payload).await.unwrap();
                responder.flush().await.unwrap();
            }
        }
    });
    let requester = client(&edge.url()).await;
    for i in 0..50u32 {
        let payload = Bytes::from(i.to_string());
        let reply = within(
            "a request through the busy-polling edge",
            requester.request("busy.echo", payload.clone()),
        )
        .await
        .unwrap();
        assert_eq!(reply.payload, payload);
    }
    // A window is counted when it ends, 1 ms after the last read.
    poll_http(admin, "/metrics", |_, body| {
        let seconds = sample(body, "nats_edge_busy_poll_seconds_total");
        (seconds > 0.0).then_some(())
    })
    .await;
    answering.abort();
}

/// Connections that hold every admin slot and send nothing do not starve the health probes:
/// past the slots, a connection is still answered for `/healthz` and `/readyz` (and told
/// the rest is busy). Answers carry nats-server monitor's CORS header; a 405 says which
/// methods are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_do_not_starve_the_probes() {
    let (_server, edge) = server_and_edge(ADMIN).await;
    let admin = admin(&edge);
    let (status, head, _) = http_request(admin, "GET", "/varz").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{head}"
    );
    let (status, head, _) = http_request(admin, "POST", "/metrics").await;
    assert_eq!(status, 405);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );

    // Ready first (its first upstream check done), so the probe below can be judged.
    poll_http(admin, "/readyz", |status, _| (status == 200).then_some(())).await;
    // Every full slot taken by a connection that sends nothing.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    assert_eq!(
        http_get(admin, "/healthz").await,
        (200, r#"{"status":"ok"}"#.to_string())
    );
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    assert_eq!(
        http_get(admin, "/connz").await,
        (503, "admin server busy: health probes only\n".to_string())
    );
    // A slot given back serves everything again.
    drop(idle);
    poll_http(admin, "/connz", |status, _| (status == 200).then_some(())).await;
}

/// A SUB the edge refuses (here past `limits.max_subscriptions`) is not a subscription in
/// `/connz`, as in nats-server's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions_are_not_counted() {
    let (_server, edge) =
        server_and_edge(&format!("{ADMIN}[limits]\nmax_subscriptions = 1\n")).await;
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.read_info().await;
    let reply = raw
        .roundtrip(b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\n")
        .await;
    assert_eq!(
        show(&reply.bytes),
        show(b"-ERR 'maximum subscriptions exceeded'\r\n")
    );
    // The counts are published as the session goes back to waiting: polled.
    poll_http(admin(&edge), "/connz", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (v["connections"][0]["subscriptions"] == 1).then_some(())
    })
    .await;
}

/// An auto-unsubscribe the ACL carries out itself (its subscription may receive subjects it
/// denies, so it counts the deliveries) is a removal all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_unsubscribe_the_acl_carries_out_is_counted() {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/filters/rules/acl/passthrough.toml"
    );
    let (_server, edge) = server_and_edge(&format!("{ADMIN}[auth]\nrules = [{rules:?}]\n")).await;
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.read_info().await;
    let reply = raw
        .roundtrip(b"CONNECT {\"user\":\"orders\",\"verbose\":false}\r\nSUB orders.* 1\r\n")
        .await;
    assert_eq!(show(&reply.bytes), "");
    let subscriptions = |n: u64| {
        poll_http(admin(&edge), "/connz", move |_, body| {
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            (v["connections"][0]["subscriptions"] == n).then_some(())
        })
    };
    // Counted first, so that the 0 below is the removal and not a count not yet published.
    subscriptions(1).await;
    // The ACL takes this UNSUB over (it counts the deliveries itself); it counts at once,
    // as any UNSUB with a max count does here.
    let reply = raw.roundtrip(b"UNSUB 1 5\r\n").await;
    assert_eq!(show(&reply.bytes), "");
    subscriptions(0).await;
}

/// Ended connections are kept for `/connz?state=closed` (and `any`), with when and why
/// they ended and their last counts, as nats-server keeps its closed clients; the default
/// state lists only the live ones, and a cid lookup finds a closed one only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connz_keeps_closed_connections_with_their_reason() {
    let (_server, edge) = server_and_edge(ADMIN).await;
    let admin = admin(&edge);
    let mut stays = RawConn::connect(edge_addr(&edge)).await;
    stays.send(b"CONNECT {\"verbose\":true}\r\n").await;
    stays.read_until(b"+OK\r\n").await;
    let mut leaves = RawConn::connect(edge_addr(&edge)).await;
    leaves
        .send(b"CONNECT {\"verbose\":true,\"name\":\"leaver\"}\r\nSUB bar 1\r\nPUB foo 2\r\nhi\r\n")
        .await;
    leaves.read_until(b"+OK\r\n+OK\r\n+OK\r\n").await;
    let mut oversized = RawConn::connect(edge_addr(&edge)).await;
    oversized
        .send(b"CONNECT {\"verbose\":false}\r\nPUB foo 99999999\r\n")
        .await;
    oversized.read_to_close().await;
    // Its session ends once it closes too (the edge reads on after its -ERR for a while):
    // before the other's, whose end is then the latest.
    drop(oversized);
    poll_http(admin, "/connz?state=closed", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (v["total"] == 1).then_some(())
    })
    .await;
    drop(leaves);

    let closed = poll_http(admin, "/connz?state=closed", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (v["connections"].as_array()?.len() == 2).then_some(v)
    })
    .await;
    assert_eq!(closed["total"], 2, "{closed}");
    let reasons: Vec<&str> = closed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["Client Closed", "Maximum Message Payload Exceeded"],
        "in cid order: {closed}"
    );
    let left = &closed["connections"][0];
    assert_eq!(left["name"], "leaver", "{left}");
    assert_eq!(left["in_msgs"], 1, "{left}");
    assert_eq!(
        left["subscriptions"], 1,
        "what it had when it ended: {left}"
    );
    assert_ne!(
        left["last_activity"], left["stop"],
        "its last activity is its publish, not its close: {left}"
    );
    assert!(
        left["stop"].as_str().unwrap() >= left["start"].as_str().unwrap(),
        "{left}"
    );
    let cid = left["cid"].as_u64().unwrap();

    let open = get_json(admin, "/connz").await;
    assert_eq!(open["total"], 1, "{open}");
    assert!(open["connections"][0].get("reason").is_none(), "{open}");
    let any = get_json(admin, "/connz?state=any").await;
    assert_eq!(any["total"], 3, "{any}");
    let lookup = get_json(admin, &format!("/connz?cid={cid}")).await;
    assert_eq!(
        lookup["connections"].as_array().unwrap().len(),
        0,
        "{lookup}"
    );
    let lookup = get_json(admin, &format!("/connz?cid={cid}&state=closed")).await;
    assert_eq!(lookup["connections"][0]["cid"], cid, "{lookup}");
    let by_reason = get_json(admin, "/connz?state=closed&sort=reason").await;
    assert_eq!(by_reason["connections"][0]["reason"], "Client Closed");
    let by_stop = get_json(admin, "/connz?state=closed&sort=stop").await;
    assert_eq!(
        by_stop["connections"][0]["cid"], cid,
        "the latest end first"
    );
    drop(stays);
}

/// A PING from nats-server passes to the client, and its PONG back gives the round trip
/// `/connz` shows, as nats-server measures its own. The client here takes 50 ms to answer,
/// so the round trip is at least that, and less than a second: not measured from the INFO
/// or the CONNECT, a second before the PING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connz_rtt_follows_the_upstreams_pings() {
    // Unanswered PINGs do not close the client while the test reads.
    let server = NatsServer::start_with_config("ping_interval: \"1s\"\nping_max: 100\n");
    let edge = start_edge(&[server.url()], ADMIN).await;
    let admin = admin(&edge);
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n").await;
    raw.read_until(b"PONG\r\n").await;
    raw.read_until(b"PING\r\n").await;
    // Shapes the measured round trip; nothing waits on it.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    raw.send(b"PONG\r\n").await;
    let connz = poll_http(admin, "/connz", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let rtt = v["connections"][0]["rtt"].as_str()?.to_string();
        let ms: f64 = rtt.strip_suffix("ms")?.parse().ok()?;
        (50.0..1000.0).contains(&ms).then_some(v)
    })
    .await;
    assert_eq!(connz["connections"].as_array().unwrap().len(), 1, "{connz}");
}
