//! Subject rewrite through the edge, against a real nats-server with real async-nats
//! clients: a client in a mount sees its own namespace, a client connected to nats-server
//! directly sees the mapped one, and request/reply, no-responders and JetStream keep
//! working across the mount. Sets chosen per user keep tenants apart on one edge, and a
//! user's set wins over its listener's. The rule sets are the ones shipped in
//! filters/rules/rewrite.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;

fn rules(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("filters/rules")
        .join(name);
    format!("{:?}", path.display().to_string())
}

/// An edge whose sessions all use the shipped rule set `set` (a file in rules/rewrite).
/// A raw client of `addr` that has read its INFO and sent `ops` (a CONNECT first), in step
/// with the server.
async fn in_step(addr: std::net::SocketAddr, ops: &[u8]) -> RawConn {
    let (mut raw, _) = RawConn::connect_info(addr).await;
    raw.roundtrip(ops).await;
    raw
}

async fn mounted(server: &NatsServer, set: &str) -> nats_edge::Edge {
    let extra = format!(
        "[rewrite]\nsets = {{ s = {} }}\ndefault = \"s\"\n",
        rules(&format!("rewrite/{set}.toml"))
    );
    start_edge(&[server.url()], &extra).await
}

fn subjects(msgs: &[async_nats::Message]) -> Vec<String> {
    msgs.iter().map(|m| m.subject.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_client_sees_its_own_namespace() {
    let server = NatsServer::start();
    let edge = mounted(&server, "tenant-mount").await;
    let inside = client(&edge_url(&edge)).await;
    let direct = client(&server.url()).await;

    let mut star = inside.subscribe("orders.*").await.unwrap();
    let mut tail = inside.subscribe("orders.>").await.unwrap();
    let mut queue = inside
        .queue_subscribe("orders.eu.>", "workers".into())
        .await
        .unwrap();
    let mut upstream = direct.subscribe("tenant.acme.>").await.unwrap();
    let mut raw_orders = direct.subscribe("orders.>").await.unwrap();
    round_trip(&inside).await;
    round_trip(&direct).await;

    for s in ["orders.new", "orders.eu.created"] {
        inside.publish(s, Bytes::from(s)).await.unwrap();
    }
    // The mounted client's messages are delivered before the upstream publishes its own.
    round_trip(&inside).await;
    direct
        .publish("tenant.acme.orders.from-upstream", "u".into())
        .await
        .unwrap();
    direct
        .publish("orders.elsewhere", "x".into())
        .await
        .unwrap();
    round_trip(&direct).await;
    round_trip(&inside).await;

    assert_eq!(
        subjects(&drain_ready(&mut star)),
        ["orders.new", "orders.from-upstream"]
    );
    assert_eq!(
        subjects(&drain_ready(&mut tail)),
        ["orders.new", "orders.eu.created", "orders.from-upstream"]
    );
    assert_eq!(subjects(&drain_ready(&mut queue)), ["orders.eu.created"]);
    let seen: Vec<String> = subjects(&drain_ready(&mut upstream))
        .into_iter()
        .filter(|s| s.starts_with("tenant.acme.orders"))
        .collect();
    assert_eq!(
        seen,
        [
            "tenant.acme.orders.new",
            "tenant.acme.orders.eu.created",
            "tenant.acme.orders.from-upstream"
        ]
    );
    // Nothing the mounted client published escaped the mount.
    assert_eq!(
        subjects(&drain_ready(&mut raw_orders)),
        ["orders.elsewhere"]
    );
    assert!(
        metric_value(
            &edge,
            "nats_edge_rewrites_total{direction=\"client_to_upstream\"}"
        ) > 0.0
    );
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_across_the_mount_both_ways() {
    use futures::StreamExt;
    let server = NatsServer::start();
    let edge = mounted(&server, "tenant-mount").await;
    let inside = client(&edge_url(&edge)).await;
    let direct = client(&server.url()).await;

    // Requester inside, responder outside (on the mapped subject).
    let mut outside_service = direct.subscribe("tenant.acme.svc.echo").await.unwrap();
    // Responder inside, requester outside.
    let mut inside_service = inside.subscribe("svc.upper").await.unwrap();
    round_trip(&direct).await;
    round_trip(&inside).await;

    let responder_out = {
        let direct = direct.clone();
        tokio::spawn(async move {
            let req = outside_service.next().await.expect("a request");
            let reply = req.reply.expect("a reply subject");
            assert!(reply.starts_with("tenant.acme._INBOX."), "{reply}");
            direct.publish(reply, req.payload).await.unwrap();
            direct.flush().await.unwrap();
        })
    };
    let responder_in = {
        let inside = inside.clone();
        tokio::spawn(async move {
            let req = inside_service.next().await.expect("a request");
            assert_eq!(req.subject.as_str(), "svc.upper");
            // The requester's inbox is outside the mount: the client sees a subject of the
            // edge's that stands for it, and its answer to that goes to the inbox.
            let reply = req.reply.expect("a reply subject");
            assert!(reply.starts_with("_R_."), "{reply}");
            let upper = String::from_utf8_lossy(&req.payload).to_uppercase();
            inside.publish(reply, upper.into()).await.unwrap();
            inside.flush().await.unwrap();
        })
    };

    let answer = within(
        "request from inside",
        inside.request("svc.echo", "ping".into()),
    )
    .await
    .expect("an answer from outside the mount");
    assert_eq!(&answer.payload[..], b"ping");
    let answer = within(
        "request from outside",
        direct.request("tenant.acme.svc.upper", "hello".into()),
    )
    .await
    .expect("an answer from inside the mount");
    assert_eq!(&answer.payload[..], b"HELLO");
    within("responders", async {
        responder_out.await.unwrap();
        responder_in.await.unwrap();
    })
    .await;
    within("edge shutdown", edge.shutdown()).await;
}

/// nats-server's permissions errors quote the subject it saw; through a mount the client
/// reads the subject it sent, so the mount does not show and the error matches its op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_errors_name_the_subject_in_the_clients_view() {
    let server = NatsServer::start_with_config(
        "authorization { users = [ { user: app, password: pw, permissions: {\n\
           publish: { deny: [\"tenant.acme.orders.secret\"] },\n\
           subscribe: { deny: [\"tenant.acme.audit.>\"] } } } ] }\n",
    );
    let edge = mounted(&server, "tenant-mount").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .roundtrip(
            b"CONNECT {\"verbose\":false,\"user\":\"app\",\"pass\":\"pw\"}\r\n\
              PUB orders.secret 1\r\nx\r\nSUB audit.> 1\r\n",
        )
        .await;
    let text = reply.text();
    assert!(
        text.contains("-ERR 'Permissions Violation for Publish to \"orders.secret\"'\r\n"),
        "{text}"
    );
    assert!(
        text.contains("-ERR 'Permissions Violation for Subscription to \"audit.>\"'\r\n"),
        "{text}"
    );
    assert!(!text.contains("tenant.acme"), "{text}");
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_names_the_subject_in_the_clients_view() {
    let server = NatsServer::start();
    let edge = mounted(&server, "tenant-mount").await;
    let inside = client(&edge_url(&edge)).await;
    let err = within("request", inside.request("svc.none", "x".into()))
        .await
        .expect_err("nobody answers");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);

    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw
        .roundtrip(
            b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\n\
              SUB _INBOX.x.* 1\r\nPUB svc.none _INBOX.x.1 0\r\n\r\n",
        )
        .await;
    let text = reply.text();
    assert!(text.contains("HMSG _INBOX.x.1 1 "), "{text}");
    assert!(
        text.contains("NATS/1.0 503\r\nNats-Subject: svc.none\r\n\r\n"),
        "{text}"
    );
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_rules_map_both_ways() {
    let server = NatsServer::start();
    let edge = mounted(&server, "regex-devices").await;
    let inside = client(&edge_url(&edge)).await;
    let direct = client(&server.url()).await;
    let mut temps = inside.subscribe("dev.*.temp").await.unwrap();
    let mut upstream = direct.subscribe(">").await.unwrap();
    round_trip(&inside).await;
    round_trip(&direct).await;

    inside.publish("dev.s2.temp", "21".into()).await.unwrap();
    inside.publish("metrics.web1", "m".into()).await.unwrap();
    inside.publish("other.x", "o".into()).await.unwrap();
    round_trip(&inside).await;
    direct
        .publish("devices.s1.temp", "19".into())
        .await
        .unwrap();
    round_trip(&direct).await;
    round_trip(&inside).await;

    assert_eq!(
        subjects(&drain_ready(&mut temps)),
        ["dev.s2.temp", "dev.s1.temp"]
    );
    let seen: Vec<String> = subjects(&drain_ready(&mut upstream))
        .into_iter()
        .filter(|s| !s.starts_with("_INBOX."))
        .collect();
    assert_eq!(
        seen,
        [
            "devices.s2.temp",
            "telemetry.web1.metrics",
            "other.x",
            "devices.s1.temp"
        ]
    );
    within("edge shutdown", edge.shutdown()).await;
}

/// A nats-server with JetStream, its store in a directory of its own (kept as long as the
/// server runs), and an edge in front of it whose sessions use the shipped JetStream mount.
async fn jetstream_mount() -> (tempfile::TempDir, NatsServer, nats_edge::Edge) {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start_with_args(&["-js", "-sd", &store.path().display().to_string()]);
    let edge = mounted(&server, "jetstream-mount").await;
    (store, server, edge)
}

/// A key-value bucket created through the edge.
async fn create_bucket(
    inside: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> async_nats::jetstream::kv::Store {
    within("create the bucket", inside.create_key_value(config))
        .await
        .expect("bucket created through the mount")
}

/// The next message of a pull consumer, bounded.
async fn fetch_one(
    consumer: &async_nats::jetstream::consumer::Consumer<
        async_nats::jetstream::consumer::pull::Config,
    >,
) -> async_nats::jetstream::Message {
    use futures::StreamExt;
    let mut batch = within("fetch", consumer.fetch().max_messages(1).messages())
        .await
        .expect("fetch");
    within("the stored message", batch.next())
        .await
        .expect("a message")
        .expect("no error")
}

/// Publishes through JetStream and waits for the stream's acknowledgement.
async fn publish_acked(
    js: &async_nats::jetstream::Context,
    subject: &'static str,
    payload: &'static str,
) -> async_nats::jetstream::publish::PublishAck {
    within("publish", async {
        js.publish(subject, payload.into())
            .await
            .expect("publish")
            .await
    })
    .await
    .expect("acknowledged by the stream")
}

/// A stream's info, asked of nats-server directly.
async fn stream_info(
    direct: &async_nats::jetstream::Context,
    stream: &str,
) -> async_nats::jetstream::stream::Info {
    within("stream info", direct.get_stream(stream))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

/// A consumer's info, asked of nats-server directly.
async fn consumer_info(
    direct: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> async_nats::jetstream::consumer::Info {
    within("consumer info", async {
        direct
            .get_stream(stream)
            .await
            .unwrap()
            .consumer_info(consumer)
            .await
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_through_a_mount() {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let (_store, server, edge) = jetstream_mount().await;
    let inside = jetstream::new(client(&edge_url(&edge)).await);

    let mut orders = within(
        "create the stream",
        inside.create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        }),
    )
    .await
    .expect("stream created through the mount");
    let ack = publish_acked(&inside, "orders.new", "first").await;
    assert_eq!(ack.stream, "ORDERS");
    // Found by a subject in the client's view (how nats.go's `js.Subscribe` finds it).
    let found = within(
        "the stream by subject",
        inside.stream_by_subject("orders.new"),
    )
    .await;
    assert_eq!(found.expect("a stream captures orders.new"), "ORDERS");

    // Upstream, the stream captures the mapped subjects.
    let direct = jetstream::new(client(&server.url()).await);
    let info = stream_info(&direct, "ORDERS").await;
    assert_eq!(info.config.subjects, ["tenant.acme.orders.>"]);
    assert_eq!(info.state.messages, 1);
    let _ = &mut orders;

    let consumer = within(
        "create the consumer",
        orders.create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            ..Default::default()
        }),
    )
    .await
    .expect("consumer created");
    let msg = fetch_one(&consumer).await;
    assert_eq!(msg.subject.as_str(), "orders.new");
    assert_eq!(&msg.payload[..], b"first");
    within("ack", msg.double_ack())
        .await
        .expect("ack goes back unmapped");
    let info = consumer_info(&direct, "ORDERS", "worker").await;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.delivered.stream_sequence, 1);

    // A consumer filtered in the client's view selects the mapped subject upstream.
    publish_acked(&inside, "orders.other", "second").await;
    let picky = within(
        "create the filtered consumer",
        orders.create_consumer(pull::Config {
            durable_name: Some("picky".into()),
            filter_subject: "orders.new".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("filtered consumer created through the mount");
    let msg = fetch_one(&picky).await;
    assert_eq!(msg.subject.as_str(), "orders.new");
    assert_eq!(&msg.payload[..], b"first");
    within("ack", msg.double_ack()).await.expect("ack");
    let info = consumer_info(&direct, "ORDERS", "picky").await;
    assert_eq!(info.config.filter_subject, "tenant.acme.orders.new");
    assert_eq!(info.num_pending, 0, "orders.other is not selected");
    // Through the mount, the answers show the client's subjects, as it wrote them.
    let info = consumer_info(&inside, "ORDERS", "picky").await;
    assert_eq!(info.config.filter_subject, "orders.new");
    let info = stream_info(&inside, "ORDERS").await;
    assert_eq!(info.config.subjects, ["orders.>"]);

    // A stream created without subjects captures its name, as the client publishes it.
    within(
        "create a stream without subjects",
        inside.create_stream(stream::Config {
            name: "EVENTS".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("stream created through the mount");
    let ack = publish_acked(&inside, "EVENTS", "e").await;
    assert_eq!(ack.stream, "EVENTS");
    let info = stream_info(&direct, "EVENTS").await;
    assert_eq!(info.config.subjects, ["tenant.acme.EVENTS"]);
    within("edge shutdown", edge.shutdown()).await;
}

/// A key-value bucket through a mount: its stream captures the mapped `$KV` subjects, and a
/// read (a direct get of the key's subject) and a watch find the key the client put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_through_a_mount() {
    use async_nats::jetstream::{self, kv};
    use futures::StreamExt;
    let (_store, server, edge) = jetstream_mount().await;
    let inside = jetstream::new(client(&edge_url(&edge)).await);
    let bucket = create_bucket(
        &inside,
        kv::Config {
            bucket: "profiles".into(),
            history: 2,
            ..Default::default()
        },
    )
    .await;
    let mut watch = within("watch", bucket.watch("alice")).await.expect("watch");
    within("put", bucket.put("alice", "v1".into()))
        .await
        .expect("put");
    let got = within("get", bucket.get("alice")).await.expect("get");
    assert_eq!(got.as_deref(), Some(&b"v1"[..]));
    let entry = within("the watched entry", watch.next())
        .await
        .expect("an entry")
        .expect("no error");
    assert_eq!(entry.key, "alice");
    assert_eq!(&entry.value[..], b"v1");
    let stored = within("entry", bucket.entry("alice"))
        .await
        .expect("entry")
        .expect("the key");
    assert_eq!(
        (stored.key.as_str(), &stored.value[..]),
        ("alice", &b"v1"[..])
    );
    // A read by revision: the client compares the subject the answer names with its key's.
    let revision = within(
        "entry by revision",
        bucket.entry_for_revision("alice", stored.revision),
    )
    .await
    .expect("entry by revision")
    .expect("the revision");
    assert_eq!(&revision.value[..], b"v1");
    let keys: Vec<String> = within("keys", async {
        bucket
            .keys()
            .await
            .expect("keys")
            .map(|k| k.expect("a key"))
            .collect()
            .await
    })
    .await;
    assert_eq!(keys, ["alice"]);

    let direct = jetstream::new(client(&server.url()).await);
    let info = stream_info(&direct, "KV_profiles").await;
    assert_eq!(info.config.subjects, ["tenant.acme.$KV.profiles.>"]);
    assert_eq!(info.state.messages, 1);
    within("edge shutdown", edge.shutdown()).await;
}

/// A burst of JetStream API requests on one connection, as a service sharing its
/// connection sends them: every answer comes back in the client's view, however many
/// wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_jetstream_requests_through_a_mount_gets_every_answer_mapped() {
    use async_nats::jetstream::{self, kv};
    let (_store, _server, edge) = jetstream_mount().await;
    let inside = jetstream::new(client(&edge_url(&edge)).await);
    let bucket = create_bucket(
        &inside,
        kv::Config {
            bucket: "burst".into(),
            ..Default::default()
        },
    )
    .await;
    let revision = within("put", bucket.put("k", "v".into()))
        .await
        .expect("put");
    // A read by revision fails unless the answer names the key's subject in the client's
    // view; a stream's info shows its subjects as the client created them.
    let reads = (0..200).map(|_| bucket.entry_for_revision("k", revision));
    let infos = (0..200).map(|_| inside.get_stream("KV_burst"));
    let (reads, infos) = within(
        "200 reads and 200 stream infos at once",
        futures::future::join(
            futures::future::join_all(reads),
            futures::future::join_all(infos),
        ),
    )
    .await;
    for read in reads {
        let entry = read.expect("read by revision").expect("the key");
        assert_eq!((entry.key.as_str(), &entry.value[..]), ("k", &b"v"[..]));
    }
    for info in infos {
        let stream = info.expect("stream info");
        assert_eq!(stream.cached_info().config.subjects, ["$KV.burst.>"]);
    }
    within("edge shutdown", edge.shutdown()).await;
}

/// `nats-edge explain -c CONFIG --user alice pub SUBJECT`: what it prints, once it exits 0.
fn explain_as_alice(config: &std::path::Path, subject: &str) -> String {
    let out = nats_edge_command()
        .args(["explain", "-c"])
        .arg(config)
        .args(["--user", "alice", "pub", subject])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_rule_set_that_is_not_reversible() {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("filters/rules");
    // Relative rule paths are read from the config file's directory.
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    for (from, to) in [
        ("invalid/irreversible.toml", "rules/bad.toml"),
        ("rewrite/tenant-mount.toml", "rules/acme.toml"),
    ] {
        std::fs::copy(root.join(from), dir.path().join(to)).unwrap();
    }
    std::fs::write(
        dir.path().join("rules/users.toml"),
        "[[users]]\nuser = \"alice\"\n[users.permissions]\npublish = [\"orders.>\"]\n",
    )
    .unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[upstream]\nurls = [\"nats://127.0.0.1:4223\"]\n[auth]\nrules = [\"rules/users.toml\"]\n\
         [rewrite]\nsets = { acme = \"rules/acme.toml\" }\nusers = { alice = \"acme\" }\n",
    )
    .unwrap();
    let out = nats_edge_command()
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stdout = explain_as_alice(&good, "orders.new");
    // The ACL decision (in the client's view), then the rewrite, then the tags.
    let acl = stdout.find("[acl]").expect(&stdout);
    let rewrite = stdout.find("[rewrite]").expect(&stdout);
    assert!(acl < rewrite, "{stdout}");
    assert!(
        stdout.contains("publish orders.new: allowed: allow entry \"orders.>\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream subject: tenant.acme.orders.new"),
        "{stdout}"
    );
    let stdout = explain_as_alice(&good, "billing.new");
    assert!(
        stdout.contains("publish billing.new: denied: no allow entry matches"),
        "{stdout}"
    );
    assert!(stdout.contains("refused at the edge"), "{stdout}");
    assert!(!stdout.contains("[rewrite]"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[upstream]\nurls = [\"nats://127.0.0.1:4223\"]\n\
         [rewrite]\nsets = { devices = \"rules/bad.toml\" }\ndefault = \"devices\"\n",
    )
    .unwrap();
    let out = nats_edge_command()
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rules/bad.toml"), "{stderr}");
    assert!(
        stderr.contains("rule `lossy-devices` is not reversible"),
        "{stderr}"
    );
    assert!(stderr.contains("maps back to `dev.x."), "{stderr}");
}

/// nats-server authenticates the tenants' users (passthrough: the edge keys the rule set on
/// the user each client presents, the server checks its password); `ops` looks at the
/// upstream directly.
const TENANT_USERS: &str = r#"
authorization {
  users = [
    { user: acme, password: pw }
    { user: globex, password: pw }
    { user: plain, password: pw }
    { user: ops, password: pw }
  ]
}
"#;

/// `acme` and `globex` each mounted under their own prefix; nobody else has a set, except
/// (when `partners` is set) sessions on the listener `partners`, which get globex's.
fn per_user_config(server: &NatsServer, partners: bool) -> String {
    let partners = if partners {
        "[[listeners]]\nname = \"partners\"\nbind = \"127.0.0.1:0\"\nrewrite = \"globex\"\n"
    } else {
        ""
    };
    format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n{partners}\
         [upstream]\nurls = [{:?}]\n\
         [rewrite]\nsets = {{ acme = {}, globex = {} }}\n\
         users = {{ acme = \"acme\", globex = \"globex\" }}\n",
        server.url(),
        rules("rewrite/tenant-mount.toml"),
        rules("rewrite/tenant-globex-mount.toml"),
    )
}

async fn connect_as(url: &str, user: &str) -> async_nats::Client {
    within(
        &format!("{user} connects"),
        client_options()
            .user_and_password(user.into(), "pw".into())
            .connect(url),
    )
    .await
    .unwrap_or_else(|e| panic!("{user} connects to {url}: {e}"))
}

/// (subject, payload) of each message, leaving out the round-trip markers (which travel on
/// inboxes, mounted like any subject).
fn seen(msgs: &[async_nats::Message]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| !m.subject.contains("_INBOX."))
        .map(|m| {
            (
                m.subject.to_string(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(s, p)| (s.to_string(), p.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_sees_its_own_mount() {
    let server = NatsServer::start_with_config(TENANT_USERS);
    let edge = start_edge_toml(&per_user_config(&server, false)).await;
    let url = edge_url(&edge);
    let acme = connect_as(&url, "acme").await;
    let globex = connect_as(&url, "globex").await;
    let plain = connect_as(&url, "plain").await;
    let direct = connect_as(&server.url(), "ops").await;

    let mut acme_orders = acme.subscribe("orders.>").await.unwrap();
    let mut globex_orders = globex.subscribe("orders.>").await.unwrap();
    let mut plain_orders = plain.subscribe("orders.>").await.unwrap();
    let mut upstream_tenants = direct.subscribe("tenant.>").await.unwrap();
    let mut upstream_orders = direct.subscribe("orders.>").await.unwrap();
    for c in [&acme, &globex, &plain, &direct] {
        round_trip(c).await;
    }

    // The same code in every tenant: publish `orders.new`. Each round trip makes the server
    // take that message before the next client publishes, so every subscriber sees them in
    // this order.
    for (c, payload) in [
        (&acme, "from acme"),
        (&globex, "from globex"),
        (&plain, "from plain"),
    ] {
        c.publish("orders.new", payload.into()).await.unwrap();
        round_trip(c).await;
    }
    // The upstream writes into each namespace.
    for subject in [
        "tenant.acme.orders.up",
        "tenant.globex.orders.up",
        "orders.up",
    ] {
        direct
            .publish(subject, "from upstream".into())
            .await
            .unwrap();
    }
    round_trip(&direct).await;
    for c in [&acme, &globex, &plain] {
        round_trip(c).await;
    }

    assert_eq!(
        seen(&drain_ready(&mut upstream_tenants)),
        pairs(&[
            ("tenant.acme.orders.new", "from acme"),
            ("tenant.globex.orders.new", "from globex"),
            ("tenant.acme.orders.up", "from upstream"),
            ("tenant.globex.orders.up", "from upstream"),
        ]),
        "upstream, the tenants' messages are under their prefixes"
    );
    assert_eq!(
        seen(&drain_ready(&mut upstream_orders)),
        pairs(&[("orders.new", "from plain"), ("orders.up", "from upstream")]),
        "a user with no set is not mapped"
    );
    assert_eq!(
        seen(&drain_ready(&mut acme_orders)),
        pairs(&[("orders.new", "from acme"), ("orders.up", "from upstream")]),
        "acme sees only its own namespace, in its own view"
    );
    assert_eq!(
        seen(&drain_ready(&mut globex_orders)),
        pairs(&[
            ("orders.new", "from globex"),
            ("orders.up", "from upstream")
        ]),
        "globex sees only its own namespace, in its own view"
    );
    assert_eq!(
        seen(&drain_ready(&mut plain_orders)),
        pairs(&[("orders.new", "from plain"), ("orders.up", "from upstream")]),
        "plain sees the upstream's subjects as they are"
    );

    // Request/reply inside each mount: the responder and the requester are the same tenant.
    let acme_service = acme.subscribe("svc.whoami").await.unwrap();
    let globex_service = globex.subscribe("svc.whoami").await.unwrap();
    round_trip(&acme).await;
    round_trip(&globex).await;
    let answer =
        |client: async_nats::Client, mut sub: async_nats::Subscriber, name: &'static str| {
            tokio::spawn(async move {
                let req = next_msg(&mut sub).await;
                let reply = req.reply.expect("a reply subject");
                assert!(
                    reply.starts_with("_INBOX."),
                    "{name} gets its own view: {reply}"
                );
                client.publish(reply, name.into()).await.unwrap();
                client.flush().await.unwrap();
            })
        };
    let acme_responder = answer(acme.clone(), acme_service, "acme");
    let globex_responder = answer(globex.clone(), globex_service, "globex");
    let got = within("acme's request", acme.request("svc.whoami", "?".into()))
        .await
        .expect("an answer inside acme's mount");
    assert_eq!(&got.payload[..], b"acme");
    let got = within("globex's request", globex.request("svc.whoami", "?".into()))
        .await
        .expect("an answer inside globex's mount");
    assert_eq!(&got.payload[..], b"globex");
    within("responders", async {
        acme_responder.await.unwrap();
        globex_responder.await.unwrap();
    })
    .await;

    assert!(
        metric_value(
            &edge,
            "nats_edge_rewrites_total{direction=\"client_to_upstream\"}"
        ) > 0.0
    );
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_set_wins_over_its_listeners() {
    let server = NatsServer::start_with_config(TENANT_USERS);
    let edge = start_edge_toml(&per_user_config(&server, true)).await;
    let partners = format!(
        "nats://{}",
        edge.addr("partners").expect("a partners listener")
    );
    let direct = connect_as(&server.url(), "ops").await;
    let mut upstream = direct.subscribe(">").await.unwrap();
    round_trip(&direct).await;

    // On `partners`: acme keeps its own set, plain gets the listener's (globex).
    // On `default`: plain has none.
    for (url, user, payload) in [
        (&partners, "acme", "acme on partners"),
        (&partners, "plain", "plain on partners"),
        (&edge_url(&edge), "plain", "plain on default"),
    ] {
        let c = connect_as(url, user).await;
        c.publish("orders.new", payload.into()).await.unwrap();
        round_trip(&c).await;
    }
    round_trip(&direct).await;
    assert_eq!(
        seen(&drain_ready(&mut upstream)),
        pairs(&[
            ("tenant.acme.orders.new", "acme on partners"),
            ("tenant.globex.orders.new", "plain on partners"),
            ("orders.new", "plain on default"),
        ])
    );
    within("edge shutdown", edge.shutdown()).await;
}

/// A sender outside the mount picks the reply subject of its request. Were it shown to the
/// client as it is, the client's own publishes to that subject would follow it out of the
/// mount for as long as it is remembered: a reply `orders.new` would take the tenant's
/// orders to the upstream's `orders.new`. The client sees a subject of the edge's instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_subject_from_outside_does_not_divert_the_clients_publishes() {
    let server = NatsServer::start();
    let edge = mounted(&server, "tenant-mount").await;
    let mut direct = in_step(
        server.addr(),
        b"CONNECT {\"verbose\":false}\r\nSUB orders.new 1\r\nSUB tenant.acme.orders.new 2\r\n",
    )
    .await;
    let mut inside = in_step(
        edge_addr(&edge),
        b"CONNECT {\"verbose\":false}\r\nSUB svc 1\r\n",
    )
    .await;

    direct
        .roundtrip(b"PUB tenant.acme.svc orders.new 3\r\nreq\r\n")
        .await;
    let got = inside.roundtrip(b"").await.text();
    let reply = got
        .strip_prefix("MSG svc 1 ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{got}"))
        .to_string();
    assert!(reply.starts_with("_R_."), "{got}");

    // The tenant's own order stays in its namespace; its answer goes to the reply subject.
    let own = inside.roundtrip(b"PUB orders.new 5\r\norder\r\n").await;
    assert_eq!(own.text(), "");
    let answer = format!("PUB {reply} 6\r\nanswer\r\n");
    assert_eq!(inside.roundtrip(answer.as_bytes()).await.text(), "");
    assert_eq!(
        direct.roundtrip(b"").await.text(),
        "MSG tenant.acme.orders.new 2 5\r\norder\r\nMSG orders.new 1 6\r\nanswer\r\n"
    );
    within("edge shutdown", edge.shutdown()).await;
}

/// nats-server publishes a trace of a message to its `Nats-Trace-Dest` header, a report
/// that names its servers (their addresses), the upstream subject and the other clients the
/// message reached. Through a mount the destination is "trace disabled": no report goes
/// anywhere, and the message itself is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_traces_are_disabled_in_a_mount() {
    let server = NatsServer::start();
    let edge = mounted(&server, "tenant-mount").await;
    let mut direct = in_step(
        server.addr(),
        b"CONNECT {\"verbose\":false}\r\nSUB trace.out 1\r\n",
    )
    .await;
    let block = b"NATS/1.0\r\nNats-Trace-Dest: trace.out\r\n\r\n";
    // The control: published straight to nats-server, the message's trace report comes.
    let mut control =
        format!("HPUB orders.new {} {}\r\n", block.len(), block.len() + 2).into_bytes();
    control.extend_from_slice(block);
    control.extend_from_slice(b"hi\r\n");
    in_step(
        server.addr(),
        &[
            &b"CONNECT {\"verbose\":false,\"headers\":true}\r\n"[..],
            &control,
        ]
        .concat(),
    )
    .await;
    direct.read_until(b"trace.out").await;
    // The report is published after the message is handled: a round trip drains it.
    direct.roundtrip(b"").await;

    let (mut inside, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut ops = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB trace.out 1\r\nHPUB orders.new {} {}\r\n",
        block.len(),
        block.len() + 2
    )
    .into_bytes();
    ops.extend_from_slice(block);
    ops.extend_from_slice(b"hi\r\n");
    ops.extend_from_slice(b"SUB orders.new 2\r\n");
    let reply = inside.roundtrip(&ops).await;
    assert!(!reply.closed, "{}", reply.text());
    // The traced message itself comes to the client's subscription to its subject, and no
    // trace report anywhere, in the mount or outside it.
    let mut delivered = inside
        .roundtrip(&{
            let mut again =
                format!("HPUB orders.new {} {}\r\n", block.len(), block.len() + 2).into_bytes();
            again.extend_from_slice(block);
            again.extend_from_slice(b"hi\r\n");
            again
        })
        .await
        .text();
    delivered.retain(|c| c != '\r');
    assert!(delivered.contains("HMSG orders.new 2 "), "{delivered}");
    assert!(!delivered.contains("trace.out"), "{delivered}");
    assert_eq!(direct.roundtrip(b"").await.text(), "");
    within("edge shutdown", edge.shutdown()).await;
}

/// A push consumer created through the mount delivers to the client's subscription: its
/// deliver subject is mapped into the mount like the subjects of its stream. A client that
/// subscribes to the subject it chose (nats.go) and one that subscribes to the one it reads
/// in the consumer's info (async-nats' `messages()`) both get the deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumers_deliver_through_the_mount() {
    use async_nats::jetstream::{self, consumer::push, stream};
    let (_store, server, edge) = jetstream_mount().await;
    let nc = client(&edge_url(&edge)).await;
    let inside = jetstream::new(nc.clone());
    let direct = client(&server.url()).await;
    let mut outside = direct.subscribe("push.in").await.unwrap();
    round_trip(&direct).await;
    let mut pushed = nc.subscribe("push.in").await.unwrap();
    round_trip(&nc).await;

    let orders = within(
        "create the stream",
        inside.create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        }),
    )
    .await
    .expect("stream created");
    within(
        "create the push consumer",
        orders.create_consumer(push::Config {
            durable_name: Some("pusher".into()),
            deliver_subject: "push.in".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("push consumer created");
    within("publish", async {
        inside
            .publish("orders.new", "first".into())
            .await
            .expect("publish")
            .await
    })
    .await
    .expect("stored");
    let msg = next_msg(&mut pushed).await;
    assert_eq!(msg.subject.as_str(), "orders.new");
    assert_eq!(&msg.payload[..], b"first");
    round_trip(&direct).await;
    assert!(
        drain_ready(&mut outside).is_empty(),
        "nothing leaves the mount"
    );

    let reader = within(
        "create a second push consumer",
        orders.create_consumer(push::Config {
            durable_name: Some("reader".into()),
            deliver_subject: "push.two".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("push consumer created");
    let mut messages = within("its messages", reader.messages())
        .await
        .expect("subscribed to the deliver subject of its info");
    let msg = within(
        "the pushed message",
        futures::StreamExt::next(&mut messages),
    )
    .await
    .expect("a message")
    .expect("no error");
    assert_eq!(msg.subject.as_str(), "orders.new");
    assert_eq!(&msg.payload[..], b"first");
    within("edge shutdown", edge.shutdown()).await;
}

/// A JetStream request the mapping makes longer than max_payload is refused at the edge as
/// an oversized PUB is; it never reaches nats-server, which would close the upstream link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_mapping_pushes_over_max_payload_is_refused_at_the_edge() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start_with_config(&format!(
        "max_payload: 1024\njetstream {{ store_dir: {:?} }}\n",
        store.path().display().to_string()
    ));
    let edge = mounted(&server, "jetstream-mount").await;
    let subjects: Vec<String> = (0..60).map(|i| format!("s{i}")).collect();
    let request =
        serde_json::to_vec(&serde_json::json!({"name": "BIG", "subjects": subjects})).unwrap();
    assert!(request.len() < 500, "fits as sent");
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut ops = format!(
        "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.r 1\r\nPUB $JS.API.STREAM.CREATE.BIG _INBOX.r {}\r\n",
        request.len()
    )
    .into_bytes();
    ops.extend_from_slice(&request);
    ops.extend_from_slice(b"\r\n");
    raw.send(&ops).await;
    assert_eq!(
        raw.read_to_close().await,
        b"-ERR 'Maximum Payload Violation'\r\n"
    );
    let metrics = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    assert_eq!(
        metrics.closes(nats_edge_filters::CloseReason::MaxPayloadExceeded),
        1
    );
    assert!(
        !server.log().dump().contains("maximum payload exceeded"),
        "{}",
        server.log().dump()
    );
}

/// A reload that moves the mount leaves live subscriptions as they are at the upstream: their
/// deliveries still reach the client in its own namespace, never under the upstream's
/// subject, while its new subscriptions take the new mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_the_mount_keeps_live_subscriptions_in_the_clients_view() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.toml");
    let mount = |upstream: &str| {
        format!(
            "[[rule]]\nname = \"m\"\nkind = \"mount\"\nclient = \">\"\nupstream = \"{upstream}.>\"\n"
        )
    };
    std::fs::write(&set, mount("tenant.old")).unwrap();
    let config = dir.path().join("nats-edge.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
             [upstream]\nurls = [{:?}]\n\
             [rewrite]\nsets = {{ s = \"set.toml\" }}\ndefault = \"s\"\n",
            server.url()
        ),
    )
    .unwrap();
    let edge = EdgeProcess::spawn(&["-c", config.to_str().unwrap()], &[]);
    let inside = client(&edge.url()).await;
    let mut before = inside.subscribe("orders.>").await.unwrap();
    round_trip(&inside).await;

    std::fs::write(&set, mount("tenant.new")).unwrap();
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(from, "ACL, rewrite and tagging rules reloaded");
    let mut after = inside.subscribe("orders.>").await.unwrap();
    round_trip(&inside).await;

    let direct = client(&server.url()).await;
    direct
        .publish("tenant.old.orders.1", "x".into())
        .await
        .unwrap();
    direct
        .publish("tenant.new.orders.2", "y".into())
        .await
        .unwrap();
    round_trip(&direct).await;
    assert_eq!(next_msg(&mut before).await.subject.as_str(), "orders.1");
    assert_eq!(next_msg(&mut after).await.subject.as_str(), "orders.2");
}

/// A JSON request to `subject` through `nc`, bounded; its answer, parsed.
async fn request_json(
    nc: &async_nats::Client,
    subject: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let payload = Bytes::from(serde_json::to_vec(body).unwrap());
    let answer = within(subject, nc.request(subject.to_string(), payload))
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&answer.payload)
        .unwrap_or_else(|e| panic!("{subject}: {e}: {}", show(&answer.payload)))
}

/// A JetStream API request through `nc` that must succeed; its answer.
async fn js_api(
    nc: &async_nats::Client,
    subject: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let answer = request_json(nc, subject, &body).await;
    assert!(answer.get("error").is_none(), "{subject}: {answer}");
    answer
}

/// Payloads that do not compress, so that a snapshot of a few of them takes several chunks.
fn incompressible(seed: u64, len: usize) -> Bytes {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// A stream snapshot and restore through the JetStream mount: the snapshot's chunks reach
/// the client's inbox in the mount and its acks reach the server (one chunk in flight at
/// a time, so each waits for the ack of the one before), the restore's chunks reach the
/// subject the server names, and both answers show the stream's subjects in the client's
/// view while the restored stream captures the mapped subjects upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_snapshot_and_restore_through_the_jetstream_mount() {
    use serde_json::json;
    const N: u64 = 6;
    let (_store, server, edge) = jetstream_mount().await;
    let nc = client(&edge_url(&edge)).await;
    let direct = client(&server.url()).await;

    let created = js_api(
        &nc,
        "$JS.API.STREAM.CREATE.SNAP",
        json!({"name": "SNAP", "subjects": ["orders.>"]}),
    )
    .await;
    assert_eq!(created["config"]["subjects"], json!(["orders.>"]));
    for i in 1..=N {
        let subject = format!("orders.{i}");
        let ack = within(
            &subject,
            nc.request(subject.clone(), incompressible(i, 1000)),
        )
        .await
        .expect("acknowledged by the stream");
        let ack: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
        assert_eq!((&ack["stream"], &ack["seq"]), (&json!("SNAP"), &json!(i)));
    }
    let upstream = js_api(&direct, "$JS.API.STREAM.INFO.SNAP", json!({})).await;
    assert_eq!(
        upstream["config"]["subjects"],
        json!(["tenant.acme.orders.>"])
    );

    // The snapshot goes to the client's inbox, in the mount.
    let inbox = "_INBOX.snap.a1b2c3";
    let mut chunks_in = nc.subscribe(inbox).await.unwrap();
    round_trip(&nc).await;
    let snapshot = js_api(
        &nc,
        "$JS.API.STREAM.SNAPSHOT.SNAP",
        json!({"deliver_subject": inbox, "chunk_size": 1024, "window_size": 1024}),
    )
    .await;
    assert_eq!(snapshot["config"]["subjects"], json!(["orders.>"]));
    assert_eq!(snapshot["state"]["messages"], json!(N));
    let mut chunks = Vec::new();
    let mut acked = 0;
    let end = loop {
        let msg = next_msg(&mut chunks_in).await;
        assert_eq!(msg.subject.as_str(), inbox);
        if msg.payload.is_empty() {
            break msg;
        }
        // Every full chunk asks for an ack; the last, shorter one does not.
        if let Some(reply) = &msg.reply {
            assert!(reply.starts_with("$JS.SNAPSHOT.ACK.SNAP."), "{reply}");
            nc.publish(reply.clone(), Bytes::new()).await.unwrap();
            acked += 1;
        }
        chunks.push(msg.payload);
    };
    // The server ends a snapshot with an empty message, `NATS/1.0 204` once a full chunk
    // went out (an error would be a 408 or 500 status).
    assert_eq!(
        end.status,
        Some(async_nats::StatusCode::from_u16(204).unwrap()),
        "{end:?}"
    );
    assert!(acked > 1, "{acked} chunks acked of {}", chunks.len());

    // Restored under its name, once the stream is gone.
    let deleted = js_api(&nc, "$JS.API.STREAM.DELETE.SNAP", json!({})).await;
    assert_eq!(deleted["success"], json!(true));
    let restore = js_api(
        &nc,
        "$JS.API.STREAM.RESTORE.SNAP",
        json!({"config": snapshot["config"], "state": snapshot["state"]}),
    )
    .await;
    let deliver = restore["deliver_subject"]
        .as_str()
        .expect("a deliver subject");
    assert!(
        deliver.starts_with("$JS.SNAPSHOT.RESTORE.SNAP."),
        "{deliver}"
    );
    for chunk in chunks {
        let ack = within("a restore chunk", nc.request(deliver.to_string(), chunk))
            .await
            .expect("the chunk is acked");
        assert!(ack.payload.is_empty(), "{}", show(&ack.payload));
    }
    // The empty chunk ends the restore; its answer is the restored stream's info.
    let end = within(
        "the end of the restore",
        nc.request(deliver.to_string(), Bytes::new()),
    )
    .await
    .expect("the restore is answered");
    let restored: serde_json::Value = serde_json::from_slice(&end.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", show(&end.payload)));
    assert!(restored.get("error").is_none(), "{restored}");
    assert_eq!(restored["config"]["subjects"], json!(["orders.>"]));
    assert_eq!(restored["state"]["messages"], json!(N));

    let info = js_api(&nc, "$JS.API.STREAM.INFO.SNAP", json!({})).await;
    assert_eq!(info["config"]["subjects"], json!(["orders.>"]));
    assert_eq!(info["state"]["messages"], json!(N));
    let upstream = js_api(&direct, "$JS.API.STREAM.INFO.SNAP", json!({})).await;
    assert_eq!(
        upstream["config"]["subjects"],
        json!(["tenant.acme.orders.>"])
    );
    let stored = js_api(&nc, "$JS.API.STREAM.MSG.GET.SNAP", json!({"seq": 3})).await;
    assert_eq!(stored["message"]["subject"], json!("orders.3"));
    // The client's publishes land in the restored stream.
    let ack = within("publish", nc.request("orders.new", "after".into()))
        .await
        .expect("acknowledged by the restored stream");
    let ack: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
    assert_eq!(
        (&ack["stream"], &ack["seq"]),
        (&json!("SNAP"), &json!(N + 1))
    );
    within("edge shutdown", edge.shutdown()).await;
}

/// A stream that would capture every subject of the client's (`>`), or its JetStream API,
/// is refused through a mount as nats-server refuses it to a direct client, with the
/// server's own error: mapped to `tenant.acme.>` it would have been accepted, and would
/// have answered the client's every request with a publish acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_nats_server_refuses_are_refused_through_a_mount() {
    use serde_json::json;
    let (_store, server, edge) = jetstream_mount().await;
    let nc = client(&edge_url(&edge)).await;
    for (subjects, text) in [
        (
            json!([">"]),
            "capturing all subjects requires no-ack to be true",
        ),
        (
            json!(["*.>"]),
            "subjects that overlap with jetstream api require no-ack to be true",
        ),
    ] {
        let answer = request_json(
            &nc,
            "$JS.API.STREAM.CREATE.ALL",
            &json!({"name": "ALL", "subjects": subjects}),
        )
        .await;
        let description = answer["error"]["description"].as_str().unwrap_or_default();
        assert!(description.contains(text), "{subjects}: {answer}");
    }
    // Two JSON values one after the other, which nats-server reads into one config and the
    // edge cannot map: refused, rather than a stream on subjects outside the mount.
    let answer = within(
        "two values",
        nc.request(
            "$JS.API.STREAM.CREATE.TWO",
            Bytes::from_static(br#"{"name":"TWO","subjects":["elsewhere.>"]} {}"#),
        ),
    )
    .await
    .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert!(answer["error"]["code"].is_number(), "{answer}");
    // With no_ack, nats-server takes `>`: in the mount, it captures the namespace.
    let created = js_api(
        &nc,
        "$JS.API.STREAM.CREATE.ALL",
        json!({"name": "ALL", "subjects": [">"], "no_ack": true}),
    )
    .await;
    assert_eq!(created["config"]["subjects"], json!([">"]));
    let direct = client(&server.url()).await;
    let upstream = js_api(&direct, "$JS.API.STREAM.INFO.ALL", json!({})).await;
    assert_eq!(upstream["config"]["subjects"], json!(["tenant.acme.>"]));
    within("edge shutdown", edge.shutdown()).await;
}
