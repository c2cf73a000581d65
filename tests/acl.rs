//! Identity and subject permissions through the edge, against a real nats-server.
//!
//! The centre of it is differential: nats-server is given the permissions of
//! `filters/rules/acl/passthrough.toml` in its own syntax, and every command sequence is sent
//! to it directly and, through the edge enforcing that rule file, to a nats-server that
//! enforces nothing. The bytes that come back must be the same.

mod common;
mod transport_support;

use common::*;
use nats_edge_filters::CloseReason;
use transport_support::{toml_path, Leaf, Pki};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/filters/rules/acl/passthrough.toml"
);
const EDGE_USERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/filters/rules/acl/edge-users.toml"
);

/// The users of passthrough.toml, with their permissions, as nats-server writes them.
const SERVER_PERMISSIONS: &str = r#"
authorization {
  default_permissions = { publish = { deny = [">"] }, subscribe = { allow = ["public.>"] } }
  users = [
    { user: orders, password: pw, permissions: {
        publish: { allow: ["orders.>"], deny: ["orders.audit.>"] },
        subscribe: { allow: ["orders.>", "jobs.> workers"], deny: ["orders.secret"] } } }
    { user: service, password: pw, permissions: {
        subscribe: { allow: ["rpc.>"] }, allow_responses: { max: 2, expires: "1m" } } }
    { user: admin, password: pw, permissions: { publish: ">", subscribe: ">" } }
    { user: anon, password: pw }
  ]
}
"#;

/// The same users without permissions: the edge enforces them.
const SERVER_USERS_ONLY: &str = r#"
authorization {
  users = [
    { user: orders, password: pw }
    { user: service, password: pw }
    { user: admin, password: pw }
    { user: anon, password: pw }
  ]
}
"#;

fn connect_as(user: &str) -> Vec<u8> {
    format!("CONNECT {{\"user\":\"{user}\",\"pass\":\"pw\",\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\n")
        .into_bytes()
}

struct Targets {
    _direct_server: NatsServer,
    _edge_server: NatsServer,
    /// The two servers' monitoring ports.
    monitors: [u16; 2],
    edge: nats_edge::Edge,
}

impl Targets {
    async fn start() -> Targets {
        let (direct, direct_monitor) = transport_support::server_with_monitor(SERVER_PERMISSIONS);
        let (behind, behind_monitor) = transport_support::server_with_monitor(SERVER_USERS_ONLY);
        let edge = start_edge(&[behind.url()], &format!("[auth]\nrules = [{RULES:?}]\n")).await;
        Targets {
            _direct_server: direct,
            _edge_server: behind,
            monitors: [direct_monitor, behind_monitor],
            edge,
        }
    }

    /// Waits until both servers have seen the last case's connections go. A queue
    /// subscription lives until its connection is gone upstream, and a later case's message
    /// to the same queue group may go to that member instead: the edge ends its upstream
    /// connection a round trip after its client leaves (to deliver what is still owed),
    /// nats-server its own a little sooner, so cases in a row would race otherwise.
    async fn settle(&self) {
        for monitor in self.monitors {
            transport_support::wait_for_connections(monitor, 0).await;
        }
    }

    fn direct(&self) -> std::net::SocketAddr {
        self._direct_server.addr()
    }

    fn edged(&self) -> std::net::SocketAddr {
        edge_addr(&self.edge)
    }
}

/// Sends `bytes` after a CONNECT as `user` in writes of `chunk` bytes, then a PING; returns
/// what came back before its PONG, and whether the connection closed.
async fn outcome(
    addr: std::net::SocketAddr,
    user: &str,
    bytes: &[u8],
    chunk: usize,
) -> (String, bool) {
    let (mut raw, _) = RawConn::connect_info(addr).await;
    let mut all = connect_as(user);
    all.extend_from_slice(bytes);
    all.extend_from_slice(b"PING\r\n");
    for part in all.chunks(chunk) {
        raw.send(part).await;
    }
    let reply = raw.read_until(b"PONG\r\n").await;
    (show(&reply.bytes), reply.closed)
}

/// Sends `bytes` as they are (CONNECT included), then a PING; returns what came back before
/// its PONG, and whether the connection closed.
async fn raw_outcome(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    let (mut raw, _) = RawConn::connect_info(addr).await;
    raw.send(bytes).await;
    raw.send(b"PING\r\n").await;
    let reply = raw.read_until(b"PONG\r\n").await;
    (show(&reply.bytes), reply.closed)
}

/// CONNECT JSON is read as nats-server's Go decoder reads it: keys in any case (and the two
/// Unicode letters that fold onto ASCII ones), a later key over an earlier one, `null` as
/// nothing, a second CONNECT over the first. A spelling that let the edge see another user,
/// or headers off where nats-server has them on, would let a refused publish through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_read_like_nats_server_reads_it() {
    let targets = Targets::start().await;
    let audit_hpub = "HPUB orders.audit.x 12 14\r\nNATS/1.0\r\n\r\nab\r\n";
    let audit_pub = "PUB orders.audit.x 1\r\na\r\n";
    let base = r#""pass":"pw","verbose":false,"pedantic":false"#;
    let cases = [
        format!("CONNECT {{\"user\":\"orders\",{base},\"Headers\":true}}\r\n{audit_hpub}"),
        format!("CONNECT {{\"user\":\"orders\",{base},\"headers\":true,\"headers\":null}}\r\n{audit_hpub}"),
        format!(
            "CONNECT {{\"user\":\"orders\",{base},\"headers\":true}}\r\n\
             CONNECT {{\"name\":\"again\"}}\r\n{audit_hpub}"
        ),
        format!("CONNECT {{\"user\":\"admin\",\"USER\":\"orders\",{base}}}\r\n{audit_pub}"),
        format!("CONNECT {{\"user\":\"admin\",\"u\u{17f}er\":\"orders\",{base}}}\r\n{audit_pub}"),
        format!("CONNECT {{\"user\":\"orders\",\"user\":null,{base}}}\r\n{audit_pub}"),
    ];
    for case in &cases {
        let expected = raw_outcome(targets.direct(), case.as_bytes()).await;
        assert!(
            expected.0.contains("Permissions Violation"),
            "nats-server itself refuses {}: {expected:?}",
            show(case.as_bytes())
        );
        let got = raw_outcome(targets.edged(), case.as_bytes()).await;
        assert_eq!(got, expected, "{}", show(case.as_bytes()));
        targets.settle().await;
    }
}

/// Attempts that must be refused, each with a legitimate twin that must pass. `user`, the
/// attempt, its twin.
fn bypass_table() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        // Publish: deny wins, case, separators, verbs, wildcards, empty tokens.
        ("orders", "PUB orders.audit.x 1\r\na\r\n", "PUB orders.new 1\r\na\r\n"),
        ("orders", "PUB orders.audit.x.y 1\r\na\r\n", "PUB orders.audit 1\r\na\r\n"),
        ("orders", "pub orders.audit.x 1\r\na\r\n", "pub orders.new 1\r\na\r\n"),
        ("orders", "Pub orders.audit.x 1\r\na\r\n", "Pub orders.new 1\r\na\r\n"),
        ("orders", "PUB\torders.audit.x\t1\r\na\r\n", "PUB\torders.new\t1\r\na\r\n"),
        ("orders", "PUB  orders.audit.x   1\r\na\r\n", "PUB  orders.new   1\r\na\r\n"),
        ("orders", "PUB orders.audit.x 1\na\r\n", "PUB orders.new 1\na\r\n"),
        ("orders", "PUB ORDERS.new 1\r\na\r\n", "PUB orders.NEW 1\r\na\r\n"),
        ("orders", "PUB Orders.audit.x 1\r\na\r\n", "PUB orders.Audit.x 1\r\na\r\n"),
        ("orders", "PUB orders..audit 1\r\na\r\n", "PUB orders.a.audit 1\r\na\r\n"),
        ("orders", "PUB .orders.new 1\r\na\r\n", "PUB orders.new.x 1\r\na\r\n"),
        ("orders", "PUB orders.new. 1\r\na\r\n", "PUB orders.new.y 1\r\na\r\n"),
        ("orders", "PUB orders.audit.> 1\r\na\r\n", "PUB orders.> 1\r\na\r\n"),
        ("orders", "PUB orders.audit.* 1\r\na\r\n", "PUB orders.* 1\r\na\r\n"),
        ("orders", "PUB > 1\r\na\r\n", "PUB orders.x 1\r\na\r\n"),
        ("orders", "PUB * 1\r\na\r\n", "PUB orders.y 1\r\na\r\n"),
        ("orders", "PUB billing 1\r\na\r\n", "PUB orders.billing 1\r\na\r\n"),
        ("orders", "PUB orders.audit.x reply.to 1\r\na\r\n", "PUB orders.new reply.to 1\r\na\r\n"),
        ("orders", "PUB orders.audit.x 0\r\n\r\n", "PUB orders.new 0\r\n\r\n"),
        ("orders", "PUB orders.audit.x\u{7f} 1\r\na\r\n", "PUB orders.new\u{7f} 1\r\na\r\n"),
        ("orders", "PUB ordersé.x 1\r\na\r\n", "PUB orders.é 1\r\na\r\n"),
        ("orders", "PUB orders.audit.\"q\" 1\r\na\r\n", "PUB orders.\"q\" 1\r\na\r\n"),
        // HPUB is checked like PUB; headers and payloads are opaque.
        ("orders", "HPUB orders.audit.x 12 14\r\nNATS/1.0\r\n\r\nab\r\n", "HPUB orders.new 12 14\r\nNATS/1.0\r\n\r\nab\r\n"),
        ("orders", "hpub orders.audit.x 12 12\r\nNATS/1.0\r\n\r\n\r\n", "hpub orders.new 12 12\r\nNATS/1.0\r\n\r\n\r\n"),
        ("orders", "HPUB orders.audit.x 36 36\r\nNATS/1.0\r\nNats-Subject: orders.n\r\n\r\n\r\n", "HPUB orders.new 36 36\r\nNATS/1.0\r\nNats-Subject: orders.a\r\n\r\n\r\n"),
        ("orders", "PUB orders.new 28\r\nx\r\nPUB orders.audit.x 1\r\nb\r\n\r\nPUB orders.audit.x 1\r\nc\r\n", "PUB orders.new 1\r\nx\r\n"),
        ("orders", "HPUB orders.new 12 34\r\nNATS/1.0\r\n\r\nPUB orders.audit.x 1\r\n\r\nPUB orders.audit.y 1\r\nz\r\n", "HPUB orders.new 12 13\r\nNATS/1.0\r\n\r\nz\r\n"),
        // Pipelined: one refused publish among allowed ones.
        ("orders", "PUB orders.a 1\r\na\r\nPUB orders.audit.b 1\r\nb\r\nPUB orders.c 1\r\nc\r\n", "PUB orders.a 1\r\na\r\nPUB orders.b 1\r\nb\r\n"),
        // Subscribe: deny entries, wildcards, queues.
        ("orders", "SUB orders.secret 1\r\n", "SUB orders.public 1\r\n"),
        ("orders", "sub orders.secret 1\r\n", "sub orders.public 1\r\n"),
        ("orders", "SUB\torders.secret\t1\r\n", "SUB\torders.public\t1\r\n"),
        ("orders", "SUB orders.secret workers 1\r\n", "SUB orders.public workers 1\r\n"),
        ("orders", "SUB billing.> 1\r\n", "SUB orders.> 1\r\n"),
        ("orders", "SUB > 1\r\n", "SUB orders.* 1\r\n"),
        ("orders", "SUB * 1\r\n", "SUB orders.x.> 1\r\n"),
        ("orders", "SUB *.secret 1\r\n", "SUB orders.*.x 1\r\n"),
        ("orders", "SUB ORDERS.x 1\r\n", "SUB orders.X 1\r\n"),
        ("orders", "SUB orders..x 1\r\n", "SUB orders.y.x 1\r\n"),
        ("orders", "SUB jobs.a 1\r\n", "SUB jobs.a workers 1\r\n"),
        ("orders", "SUB jobs.a others 1\r\n", "SUB jobs.b workers 1\r\n"),
        ("orders", "SUB jobs.> 1\r\n", "SUB jobs.> workers 1\r\n"),
        ("orders", "SUB jobs.* WORKERS 1\r\n", "SUB jobs.* workers 1\r\n"),
        ("orders", "SUB jobs.a _sys_ 1\r\n", "SUB jobs.c workers 2\r\n"),
        ("orders", "SUB orders.new _sys_ 1\r\n", "SUB orders.new q 1\r\n"),
        // Delivery-time filtering: the wildcard is accepted, `orders.secret` never arrives.
        ("orders", "SUB orders.* 1\r\nPUB orders.secret 1\r\na\r\n", "SUB orders.* 1\r\nPUB orders.open 1\r\na\r\n"),
        ("orders", "SUB orders.> 1\r\nPUB orders.secret 1\r\na\r\n", "SUB orders.> 1\r\nPUB orders.secret.x 1\r\na\r\n"),
        ("orders", "SUB orders.* q 1\r\nPUB orders.secret 1\r\na\r\n", "SUB orders.* q 1\r\nPUB orders.q 1\r\na\r\n"),
        ("orders", "SUB *.secret 1\r\nPUB orders.secret 1\r\na\r\n", "SUB orders.secret.* 1\r\nPUB orders.secret.x 1\r\na\r\n"),
        // Reply-subject tricks: a reply subject is not a publish.
        ("orders", "SUB orders.r 1\r\nPUB orders.r orders.audit.x 1\r\na\r\nPUB orders.audit.x 1\r\nb\r\n", "SUB orders.r 1\r\nPUB orders.r orders.audit.x 1\r\na\r\n"),
        // The default permissions, for a user without permissions of its own.
        ("anon", "PUB public.x 1\r\na\r\n", "SUB public.x 1\r\n"),
        ("anon", "SUB private.x 1\r\n", "SUB public.> 1\r\n"),
        ("anon", "SUB > 1\r\n", "SUB public.* 1\r\n"),
        // allow_responses: nothing but answers.
        ("service", "PUB rpc.x 1\r\na\r\n", "SUB rpc.x 1\r\n"),
        ("service", "PUB _INBOX.abc 1\r\na\r\n", "SUB rpc.> 1\r\n"),
        ("service", "SUB _INBOX.> 1\r\n", "SUB rpc.* 1\r\n"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_are_refused_like_nats_server_and_twins_pass() {
    let targets = Targets::start().await;
    let table = bypass_table();
    assert!(table.len() >= 50, "{} cases", table.len());
    for (user, attempt, twin) in &table {
        for (what, bytes, refused) in [("attempt", attempt, true), ("twin", twin, false)] {
            for chunk in [usize::MAX, 7, 1] {
                let expected = outcome(targets.direct(), user, bytes.as_bytes(), chunk).await;
                let got = outcome(targets.edged(), user, bytes.as_bytes(), chunk).await;
                targets.settle().await;
                assert_eq!(
                    got,
                    expected,
                    "{what} as {user} in {chunk}-byte writes: {}",
                    show(bytes.as_bytes())
                );
                let denied = expected.0.contains("Permissions Violation")
                    || (bytes.starts_with("SUB orders")
                        && bytes.contains("PUB orders.secret 1")
                        && !expected.0.contains("MSG orders.secret "));
                assert_eq!(
                    denied,
                    refused,
                    "{what} as {user}: {} got {}",
                    show(bytes.as_bytes()),
                    expected.0
                );
            }
        }
    }
}

/// The users nats-server knows when the edge authenticates: the edge's own, and the one user
/// who goes upstream as itself. None of edge-users.toml's clients is among them.
const SERVER_FOR_EDGE_MODE: &str = r#"
authorization {
  users = [
    { user: edge, password: edge-pw }
    { user: bob-upstream, password: bob-upstream-pw, permissions: { publish: { deny: ["bob.denied"] } } }
  ]
}
"#;

fn edge_mode_toml(extra: &str) -> String {
    format!(
        "[auth]\nmode = \"edge\"\nrules = [{EDGE_USERS:?}]\nupstream = {{ user = \"edge\", password = \"edge-pw\" }}\n{extra}"
    )
}

fn connect_json(json: &str) -> Vec<u8> {
    format!("CONNECT {json}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_mode_authenticates_by_password_token_and_anonymous_default() {
    let server = NatsServer::start_with_config(SERVER_FOR_EDGE_MODE);
    let edge = start_edge(
        &[server.url()],
        &edge_mode_toml("[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .await;
    // edge-users.toml has a no_auth_user: as nats-server, the INFO does not ask for auth.
    let (_, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_eq!(info.get("auth_required"), None, "{info}");

    // bcrypt password: alice's secret is checked by the edge; nats-server only ever sees
    // the edge's own user.
    let alice = within(
        "alice connects",
        client_options()
            .user_and_password("alice".into(), "alice-secret".into())
            .connect(edge_url(&edge)),
    )
    .await
    .expect("alice is let in");
    let mut sub = alice.subscribe("orders.>").await.unwrap();
    alice.publish("orders.1", "one".into()).await.unwrap();
    assert_eq!(next_msg(&mut sub).await.subject.as_str(), "orders.1");
    // `/connz` names her, although her bcrypt check finished after the CONNECT was read.
    let admin = edge.admin_addr().expect("admin server");
    poll_http(admin, "/connz?auth=true&user=alice", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (v["connections"][0]["authorized_user"] == "alice").then_some(())
    })
    .await;

    // A token user.
    let ci = within(
        "ci connects",
        client_options()
            .token("ci-token-123".into())
            .connect(edge_url(&edge)),
    )
    .await
    .expect("the token is accepted");
    within("flush", ci.flush()).await.unwrap();

    // No credentials: the no_auth_user, with its permissions.
    let quiet = opts_raw(&edge, r#"{"verbose":false,"pedantic":false}"#).await;
    assert_eq!(
        quiet,
        "-ERR 'Permissions Violation for Publish to \"public.news\"'\r\n"
    );
}

/// nats-server lets a client whose first op is not a CONNECT in as its no_auth_user, with
/// the default options (verbose, pedantic); so does the edge in edge mode, which then sends
/// its own credentials upstream for it. The same bytes get the same answers, and the
/// handshake timeout leaves the client alone, as nats-server stops its auth timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_mode_takes_ops_before_connect_from_the_no_auth_user_like_nats_server() {
    let bytes = b"SUB public.news 1\r\nSUB private.x 2\r\nPUB public.news 1\r\na\r\n\
                  PUB public.* 1\r\nb\r\nUNSUB 1\r\n";
    // guest of edge-users.toml, as nats-server's no_auth_user.
    let direct = NatsServer::start_with_config(
        "authorization { users = [ { user: guest, password: unused, permissions: {\n\
           publish: { deny: [\">\"] }, subscribe: { allow: [\"public.>\"] } } } ] }\n\
         no_auth_user: guest\n",
    );
    let (mut raw, _) = RawConn::connect_info(direct.addr()).await;
    let expected = raw.roundtrip(bytes).await;

    let server = NatsServer::start_with_config(SERVER_FOR_EDGE_MODE);
    let edge = start_edge(
        &[server.url()],
        &edge_mode_toml("[limits]\nhandshake_timeout = \"1s\"\n"),
    )
    .await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let got = raw.roundtrip(bytes).await;
    assert_eq!(
        (show(&got.bytes), got.closed),
        (show(&expected.bytes), expected.closed)
    );
    // Watched past the second the timer would have run from the connection's start.
    assert!(
        !raw.closes_within(std::time::Duration::from_millis(1500))
            .await,
        "closed: {}",
        show(&raw.take_buffered())
    );
    assert!(raw.is_open().await);
}

/// CONNECTs as `json`, publishes to public.news, and returns what came back before the PONG.
async fn opts_raw(edge: &nats_edge::Edge, json: &str) -> String {
    let (mut raw, _) = RawConn::connect_info(edge_addr(edge)).await;
    let mut bytes = connect_json(json);
    bytes.extend_from_slice(b"SUB public.news 1\r\nPUB public.news 1\r\na\r\n");
    let reply = raw.roundtrip(&bytes).await;
    assert!(!reply.closed);
    String::from_utf8_lossy(&reply.bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_mode_refuses_bad_credentials_as_nats_server_does() {
    // nats-server itself, given alice with the same bcrypt hash.
    let hash = "$2a$04$iDqDO/vTE4gfZIiowtJoZOKe2H9DwvZgAgxAV2yWtQz.5NeMqj64e";
    let direct = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ user: alice, password: \"{hash}\" }} ] }}\n"
    ));
    let server = NatsServer::start_with_config(SERVER_FOR_EDGE_MODE);
    let edge = start_edge(&[server.url()], &edge_mode_toml("")).await;
    for bad in [
        r#"{"user":"alice","pass":"wrong","verbose":false}"#,
        r#"{"user":"mallory","pass":"alice-secret","verbose":false}"#,
        r#"{"auth_token":"nope","verbose":false}"#,
        r#"{"user":"alice","verbose":false}"#,
    ] {
        let mut replies = Vec::new();
        for addr in [direct.addr(), edge_addr(&edge)] {
            let (mut raw, _) = RawConn::connect_info(addr).await;
            raw.send(&connect_json(bad)).await;
            raw.send(b"PING\r\n").await;
            replies.push(show(&raw.read_to_close().await));
        }
        assert_eq!(replies[1], replies[0], "{bad}");
        assert_eq!(
            replies[0],
            show(b"-ERR 'Authorization Violation'\r\n"),
            "{bad}"
        );
    }
    // The edge's own refusals, not the upstream's: nothing went upstream for them.
    let m = edge.metrics().clone();
    within("edge shutdown", edge.shutdown()).await;
    assert_eq!(m.closes(CloseReason::AuthorizationViolation), 4);
    assert_eq!(m.closes(CloseReason::UpstreamClosed), 0);
    // An op before CONNECT: nats-server requires CONNECT first from a client it authenticates.
    // (edge-users.toml has a no_auth_user, so use a rule file without one.)
    let dir = tempfile::tempdir().unwrap();
    let strict = dir.path().join("strict.toml");
    std::fs::write(&strict, "[[users]]\nuser = \"alice\"\npassword = \"pw\"\n").unwrap();
    let edge = start_edge(
        &[server.url()],
        &format!("[auth]\nmode = \"edge\"\nrules = [{strict:?}]\nupstream = {{ user = \"edge\", password = \"edge-pw\" }}\n"),
    )
    .await;
    assert_eq!(
        RawConn::connect_info(edge_addr(&edge)).await.1["auth_required"],
        true
    );
    assert_pre_connect_ops_refused_alike(direct.addr(), edge_addr(&edge)).await;
}

/// Before the CONNECT of a client it must authenticate, nats-server looks only at the
/// first byte of an op: anything not starting with `C`, even garbage, is an authorization
/// violation; `C...` is parsed as usual.
async fn assert_pre_connect_ops_refused_alike(
    direct: std::net::SocketAddr,
    edge: std::net::SocketAddr,
) {
    for bytes in [
        &b"PING\r\n"[..],
        b"FOO bar\r\n",
        b"\r\n",
        b"MSG a 1 2\r\n",
        b"PUB x 1\r\na\r\n",
        b"CX\r\n",
        b"cONNECT {bad\r\n",
    ] {
        let mut replies = Vec::new();
        for addr in [direct, edge] {
            let (mut raw, _) = RawConn::connect_info(addr).await;
            raw.send(bytes).await;
            replies.push(show(&raw.read_to_close().await));
        }
        assert_eq!(replies[1], replies[0], "{}", show(bytes));
    }
}

/// Passthrough in front of a server with auth: the client sees its `auth_required`, and
/// the edge refuses what comes before the CONNECT as that server would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_refuses_ops_before_connect_like_an_auth_server() {
    let targets = Targets::start().await;
    assert_pre_connect_ops_refused_alike(targets.direct(), targets.edged()).await;
}

/// A bcrypt check runs off the session's thread: on a single thread, a client whose
/// password takes a costly hash to check does not hold up another client meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_bcrypt_check_does_not_stall_other_sessions() {
    // The hash of "slow-pw" at cost 12: about half a second to check here, well inside the
    // handshake timeout it counts against (10 s here, for a loaded machine).
    let hash = "$2b$12$cXuxv4jsDNqiM/1CeAeB2uq0CGPQmduBxHJZ92AnQftReR5TWoMzG";
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("users.toml");
    std::fs::write(
        &rules,
        format!(
            "[[users]]\nuser = \"slow\"\npassword = \"{hash}\"\n\
             [[users]]\nuser = \"fast\"\npassword = \"fast-pw\"\n"
        ),
    )
    .unwrap();
    let server = NatsServer::start_with_config(SERVER_FOR_EDGE_MODE);
    let edge = start_edge(
        &[server.url()],
        &format!(
            "[auth]\nmode = \"edge\"\nrules = [{rules:?}]\n\
             upstream = {{ user = \"edge\", password = \"edge-pw\" }}\n\
             [limits]\nhandshake_timeout = \"10s\"\n"
        ),
    )
    .await;
    let (mut slow, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut hello = connect_json(r#"{"user":"slow","pass":"slow-pw","verbose":false}"#);
    hello.extend_from_slice(b"PING\r\n");
    slow.send(&hello).await;
    let (mut fast, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut hello = connect_json(r#"{"user":"fast","pass":"fast-pw","verbose":false}"#);
    hello.extend_from_slice(b"PING\r\n");
    fast.send(&hello).await;
    assert!(!fast.read_until(b"PONG\r\n").await.closed);
    // The slow client's check is still running: nothing has come back to it yet.
    let mut byte = [0u8; 1];
    let pending = slow.stream().try_read(&mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{pending:?}"
    );
    let reply = slow.read_until(b"PONG\r\n").await;
    assert_eq!(show(&reply.bytes), "PONG\\r\\n");
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_mode_user_goes_upstream_with_its_own_credentials() {
    let server = NatsServer::start_with_config(SERVER_FOR_EDGE_MODE);
    let edge = start_edge(&[server.url()], &edge_mode_toml("")).await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let mut bytes = connect_json(r#"{"user":"bob","pass":"bob-secret","verbose":false}"#);
    // The edge allows bob everything but admin.> (and $SYS.REQ.>); nats-server denies
    // bob-upstream bob.denied.
    bytes.extend_from_slice(b"PUB bob.denied 1\r\na\r\nPUB admin.x 1\r\nb\r\n");
    let reply = raw.roundtrip(&bytes).await;
    assert_eq!(
        show(&reply.bytes),
        show(
            b"-ERR 'Permissions Violation for Publish to \"bob.denied\"'\r\n\
              -ERR 'Permissions Violation for Publish to \"admin.x\"'\r\n"
        )
    );
}

/// An edge whose one listener terminates TLS with `server_cert` and asks for client
/// certificates signed by `ca`, in front of `server`, with `auth` (an `[auth]` section).
async fn client_certificate_edge(
    server_cert: &transport_support::CertFiles,
    ca: &transport_support::Ca,
    server: &NatsServer,
    auth: &str,
) -> nats_edge::Edge {
    start_edge_toml(&format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\nkind = \"tls\"\n\
         tls = {{ cert_file = {}, key_file = {}, client_ca_file = {} }}\n\
         [upstream]\nurls = [{:?}]\n{auth}",
        toml_path(&server_cert.cert),
        toml_path(&server_cert.key),
        toml_path(&ca.cert),
        server.url(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_mode_maps_a_client_certificate_to_its_user() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let device = pki.leaf(&ca, "device", Leaf::client("device-7"));
    let stranger = pki.leaf(&ca, "stranger", Leaf::client("stranger"));
    let (server, monitor) = transport_support::server_with_monitor(SERVER_FOR_EDGE_MODE);
    let edge = client_certificate_edge(&server_cert, &ca, &server, &edge_mode_toml("")).await;
    let connect = |files: &transport_support::CertFiles| {
        client_options()
            .add_root_certificates(ca.cert.clone())
            .add_client_certificate(files.cert.clone(), files.key.clone())
            .connect(format!("tls://{}", edge_addr(&edge)))
    };
    let client = within("device-7 connects", connect(&device))
        .await
        .expect("the certificate maps to device-7");
    let mut sub = client.subscribe("commands.device-7.>").await.unwrap();
    within("flush", client.flush()).await.unwrap();
    transport_support::wait_for_subscription(monitor, "commands.device-7.>").await;
    let admin = client_options()
        .user_and_password("edge".into(), "edge-pw".into())
        .connect(server.url())
        .await
        .unwrap();
    admin
        .publish("commands.device-7.reboot", "now".into())
        .await
        .unwrap();
    admin.flush().await.unwrap();
    let command = within("device-7's command", futures::StreamExt::next(&mut sub)).await;
    assert_eq!(
        command.expect("a message").subject.as_str(),
        "commands.device-7.reboot"
    );
    // A certificate no user claims, and no credentials: the no_auth_user.
    let guest = within("a stranger connects", connect(&stranger))
        .await
        .expect("the stranger is the guest");
    let mut public = guest.subscribe("public.>").await.unwrap();
    within("flush", guest.flush()).await.unwrap();
    transport_support::wait_for_subscription(monitor, "public.>").await;
    admin.publish("public.news", "hi".into()).await.unwrap();
    admin.flush().await.unwrap();
    let news = within("the guest's message", futures::StreamExt::next(&mut public)).await;
    assert_eq!(news.expect("a message").subject.as_str(), "public.news");
    within("edge shutdown", edge.shutdown()).await;
}

/// A certificate mapped to a user with a password logs in only with that password too,
/// and a password sent for a mapped user without one is refused, as nats-server's
/// `verify_and_map` compares the mapped user's password with the CONNECT's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_certificate_needs_its_users_password_too() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let alice = pki.leaf(&ca, "alice", Leaf::client("alice"));
    let bob = pki.leaf(&ca, "bob", Leaf::client("bob"));
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[users]]\nuser = \"alice\"\npassword = \"alice-pw\"\ntls_san = \"email:alice@example.com\"\n\
         [[users]]\nuser = \"bob\"\ntls_san = \"email:bob@example.com\"\n",
    )
    .unwrap();
    let server = NatsServer::start_with_config(SERVER_FOR_EDGE_MODE);
    let auth = format!(
        "[auth]\nmode = \"edge\"\nrules = [{rules:?}]\nupstream = {{ user = \"edge\", password = \"edge-pw\" }}\n"
    );
    let edge = client_certificate_edge(&server_cert, &ca, &server, &auth).await;
    let connect = |files: &transport_support::CertFiles, password: Option<&str>| {
        let mut options = client_options()
            .add_root_certificates(ca.cert.clone())
            .add_client_certificate(files.cert.clone(), files.key.clone());
        if let Some(password) = password {
            options = options.user_and_password("whoever".into(), password.into());
        }
        options.connect(format!("tls://{}", edge_addr(&edge)))
    };
    for (who, files, password, admitted) in [
        ("alice with her password", &alice, Some("alice-pw"), true),
        ("alice without a password", &alice, None, false),
        ("alice with a wrong password", &alice, Some("nope"), false),
        ("bob without a password", &bob, None, true),
        ("bob with a password", &bob, Some("x"), false),
    ] {
        let outcome = within(who, connect(files, password)).await;
        match (outcome, admitted) {
            (Ok(client), true) => within("flush", client.flush()).await.unwrap(),
            (Err(e), false) => assert_eq!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation,
                "{who}: {e}"
            ),
            (Ok(_), false) => panic!("{who}: admitted"),
            (Err(e), true) => panic!("{who}: refused: {e}"),
        }
    }
    within("edge shutdown", edge.shutdown()).await;
}

/// In passthrough mode an nkey names the client only with its signature of the nonce. In
/// front of a nats-server that has no nkey users (so it sends no nonce and ignores the nkey,
/// admitting the client as its no_auth_user), a client that claims the key of a well-off
/// user of the edge's rules gets the defaults, not that user's permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_does_not_take_an_unsigned_nkey_for_a_name() {
    let key = nkeys::KeyPair::new_user().public_key();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[default_permissions]\npublish = {{ deny = [\">\"] }}\n\
             [[users]]\nuser = \"{key}\"\n[users.permissions]\npublish = [\">\"]\n"
        ),
    )
    .unwrap();
    let server = NatsServer::start_with_config(
        "authorization { users = [ { user: guest, password: x } ] }\nno_auth_user: guest\n",
    );
    let edge = start_edge(&[server.url()], &format!("[auth]\nrules = [{rules:?}]\n")).await;
    let connect = format!(r#"CONNECT {{"nkey":"{key}","verbose":false}}"#) + "\r\n";
    let (got, closed) = raw_outcome(
        edge_addr(&edge),
        format!("{connect}PUB admin.x 1\r\nx\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        got,
        show(b"-ERR 'Permissions Violation for Publish to \"admin.x\"'\r\nPONG\r\n")
    );
    assert!(!closed);
}

/// Passthrough in front of a server with a `no_auth_user`: a client that presents no
/// credentials is that user on nats-server, so the rules' `no_auth_user` (the same user)
/// gives it that user's permissions at the edge, not the defaults, with or without a
/// CONNECT before its ops. A client with a name keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_gives_a_client_without_credentials_the_no_auth_users_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "no_auth_user = \"guest\"\n\
         [default_permissions]\npublish = \">\"\nsubscribe = \">\"\n\
         [[users]]\nuser = \"guest\"\n[users.permissions]\n\
         publish = { deny = [\">\"] }\nsubscribe = [\"public.>\"]\n\
         [[users]]\nuser = \"adm\"\n",
    )
    .unwrap();
    let users = |guest_permissions: &str| {
        format!(
            "authorization {{ users = [ {{ user: adm, password: pw }}\n\
               {{ user: guest, password: \"\" {guest_permissions} }} ]\n\
               default_permissions = {{ publish = \">\", subscribe = \">\" }} }}\n\
             no_auth_user: guest\n"
        )
    };
    let direct = NatsServer::start_with_config(&users(
        ", permissions: { publish: { deny: [\">\"] }, subscribe: { allow: [\"public.>\"] } }",
    ));
    let behind = NatsServer::start_with_config(&users(""));
    let edge = start_edge(&[behind.url()], &format!("[auth]\nrules = [{rules:?}]\n")).await;
    let ops = "PUB admin.shutdown 4\r\nboom\r\nSUB secret.> 1\r\nSUB public.> 2\r\n";
    for bytes in [
        format!("CONNECT {{\"verbose\":false}}\r\n{ops}"),
        format!("CONNECT {{\"verbose\":false,\"user\":\"\"}}\r\n{ops}"),
        ops.to_string(),
        format!("CONNECT {{\"verbose\":false,\"user\":\"adm\",\"pass\":\"pw\"}}\r\n{ops}"),
    ] {
        let expected = raw_outcome(direct.addr(), bytes.as_bytes()).await;
        let got = raw_outcome(edge_addr(&edge), bytes.as_bytes()).await;
        assert_eq!(got, expected, "{bytes}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_signature_lets_proxy_required_users_in() {
    let key = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("edge.nk");
    std::fs::write(&seed, key.seed().unwrap()).unwrap();
    let server = NatsServer::start_with_config(&format!(
        "proxies {{ trusted = [ {{ key: \"{}\" }} ] }}\n\
         authorization {{ users = [ {{ user: app, password: pw, proxy_required: true }} ] }}\n",
        key.public_key()
    ));
    let connect = r#"{"user":"app","pass":"pw","verbose":false}"#;
    // Direct: refused.
    let (mut raw, _) = RawConn::connect_info(server.addr()).await;
    raw.send(&connect_json(connect)).await;
    raw.send(b"PING\r\n").await;
    let direct = raw.read_to_close().await;
    assert!(
        show(&direct).contains("Authorization Violation") || show(&direct).contains("Proxy"),
        "{}",
        show(&direct)
    );
    // Through the edge, in passthrough mode: the edge signs, nats-server lets app in.
    let signing = format!("[auth.trusted_proxy]\nseed_file = {seed:?}\n");
    let edge = start_edge(&[server.url()], &signing).await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let reply = raw.roundtrip(&connect_json(connect)).await;
    assert!(!reply.closed, "{}", show(&reply.bytes));
    assert_eq!(show(&reply.bytes), "");
    // The key is read at start-up only: a reload does not need its file (moved away here),
    // and the edge goes on signing with the key it has.
    let moved = dir.path().join("moved.nk");
    std::fs::rename(&seed, &moved).unwrap();
    let again = nats_edge::config::Config::from_toml_str(&edge_toml(&[server.url()], "", &signing))
        .unwrap();
    edge.shared()
        .reloader
        .reload(again, "test")
        .expect("a reload without the key file");
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(!raw.roundtrip(&connect_json(connect)).await.closed);
    std::fs::rename(&moved, &seed).unwrap();
    // A signature from a key nats-server does not trust does not help.
    let other = nkeys::KeyPair::new_user();
    std::fs::write(&seed, other.seed().unwrap()).unwrap();
    let edge = start_edge(
        &[server.url()],
        &format!("[auth.trusted_proxy]\nseed_file = {seed:?}\n"),
    )
    .await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(&connect_json(connect)).await;
    raw.send(b"PING\r\n").await;
    let refused = raw.read_to_close().await;
    assert!(show(&refused).starts_with("-ERR"), "{}", show(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_responses_lets_a_service_answer_a_bounded_number_of_times() {
    let targets = Targets::start().await;
    let mut outcomes = Vec::new();
    for addr in [targets.direct(), targets.edged()] {
        let (mut service, _) = RawConn::connect_info(addr).await;
        assert!(service
            .roundtrip(&[connect_as("service"), b"SUB rpc.> 1\r\n".to_vec()].concat())
            .await
            .bytes
            .is_empty());
        let (mut admin, _) = RawConn::connect_info(addr).await;
        admin
            .roundtrip(
                &[
                    connect_as("admin"),
                    b"SUB _INBOX.r1 9\r\nPUB rpc.echo _INBOX.r1 2\r\nhi\r\n".to_vec(),
                ]
                .concat(),
            )
            .await;
        let request = service.read_until(b"hi\r\n").await;
        assert_eq!(
            show(&request.bytes),
            show(b"MSG rpc.echo 1 _INBOX.r1 2\r\nhi\r\n")
        );
        let answers = service
            .roundtrip(b"PUB _INBOX.r1 1\r\n1\r\nPUB _INBOX.r1 1\r\n2\r\nPUB _INBOX.r1 1\r\n3\r\nPUB _INBOX.other 1\r\nx\r\n")
            .await;
        let received = admin.roundtrip(b"").await;
        outcomes.push((show(&answers.bytes), show(&received.bytes)));
    }
    assert_eq!(outcomes[1], outcomes[0]);
    assert_eq!(
        outcomes[0].0,
        show(
            b"-ERR 'Permissions Violation for Publish to \"_INBOX.r1\"'\r\n\
              -ERR 'Permissions Violation for Publish to \"_INBOX.other\"'\r\n"
        )
    );
    assert_eq!(
        outcomes[0].1,
        show(b"MSG _INBOX.r1 9 1\r\n1\r\nMSG _INBOX.r1 9 1\r\n2\r\n")
    );
}

/// What nats-server and the edge answer to `CONNECT connect` then `bytes`, up to the PONG
/// that follows them, and whether each closed.
async fn direct_and_edged(targets: &Targets, connect: &str, bytes: &str) -> [(String, bool); 2] {
    let replies = replies_of([targets.direct(), targets.edged()], connect, bytes).await;
    targets.settle().await;
    replies
}

/// What nats-server (`addrs[0]`) answers `orders`, quiet and then verbose, to `bytes`, after
/// asserting the edge (`addrs[1]`) answers the same.
async fn orders_replies_alike(
    addrs: [std::net::SocketAddr; 2],
    bytes: &str,
) -> [(String, bool); 2] {
    let mut answers: [(String, bool); 2] = Default::default();
    for (verbose, answer) in [false, true].into_iter().zip(&mut answers) {
        let connect = format!(r#"{{"user":"orders","pass":"pw","verbose":{verbose}}}"#);
        let [direct, edged] = replies_of(addrs, &connect, bytes).await;
        assert_eq!(edged, direct, "verbose {verbose}");
        *answer = direct;
    }
    answers
}

/// What each of `addrs` answers to `CONNECT connect` then `bytes`, up to the PONG that
/// follows them, and whether each closed.
async fn replies_of(
    addrs: [std::net::SocketAddr; 2],
    connect: &str,
    bytes: &str,
) -> [(String, bool); 2] {
    let mut replies = [(String::new(), false), (String::new(), false)];
    for (addr, out) in addrs.into_iter().zip(&mut replies) {
        let (mut raw, _) = RawConn::connect_info(addr).await;
        let reply = raw
            .roundtrip(&[connect_json(connect), bytes.as_bytes().to_vec()].concat())
            .await;
        *out = (show(&reply.bytes), reply.closed);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_pedantic_and_pre_connect_ops_keep_nats_server_order() {
    let targets = Targets::start().await;
    for (user, connect, bytes) in [
        // HPUB without negotiated headers: nats-server closes before it checks permissions.
        (
            "orders",
            r#"{"user":"orders","pass":"pw","verbose":false}"#,
            "HPUB orders.audit.x 12 12\r\nNATS/1.0\r\n\r\n\r\n",
        ),
        (
            "orders",
            r#"{"user":"orders","pass":"pw","verbose":true}"#,
            "PUB orders.audit.x 1\r\na\r\nPUB orders.ok 1\r\nb\r\n",
        ),
    ] {
        let replies = direct_and_edged(&targets, connect, bytes).await;
        assert_eq!(replies[1], replies[0], "{user}: {bytes:?}");
    }
    // A pedantic client's publish to a subject with a wildcard or an empty token: nats-server
    // says the subject is invalid on the control line, then judges the permission, so a
    // refused one gets both errors, and an allowed one is delivered after the first. A
    // CONNECT without the field is pedantic, nats-server's default.
    for connect in [
        r#"{"user":"orders","pass":"pw","verbose":false,"pedantic":true}"#,
        r#"{"user":"orders","pass":"pw","verbose":false}"#,
    ] {
        for bytes in [
            "PUB orders.audit.* 1\r\na\r\n",
            "PUB orders.audit..x 1\r\na\r\n",
            "PUB secret.> 1\r\na\r\n",
            "SUB orders.> 1\r\nPUB orders.* 1\r\na\r\n",
        ] {
            let replies = direct_and_edged(&targets, connect, bytes).await;
            assert_eq!(replies[1], replies[0], "{connect}: {bytes:?}");
            assert!(
                replies[0]
                    .0
                    .starts_with(&show(b"-ERR 'Invalid Publish Subject'\r\n")),
                "{bytes:?}: {replies:?}"
            );
        }
    }
}

/// An auto-unsubscribe (`UNSUB sid max`) on a subscription whose deliveries a deny entry
/// filters: nats-server counts toward `max` only the messages it delivers, and so does the
/// edge, which keeps the max and ends the subscription upstream itself (the upstream would
/// count the dropped ones too). Verbose clients get the same `+OK`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_auto_unsubscribe_counts_only_delivered_messages() {
    let targets = Targets::start().await;
    let publish = |subjects: &[&str]| -> String {
        subjects
            .iter()
            .map(|s| format!("PUB {s} 1\r\nx\r\n"))
            .collect()
    };
    let cases = [
        // The max before any delivery; denied messages between allowed ones.
        format!(
            "SUB orders.* 1\r\nUNSUB 1 3\r\n{}",
            publish(&[
                "orders.secret",
                "orders.a",
                "orders.secret",
                "orders.b",
                "orders.c",
                "orders.d",
            ])
        ),
        // The max after some deliveries, one of them denied.
        format!(
            "SUB orders.* 1\r\n{}UNSUB 1 2\r\n{}",
            publish(&["orders.a", "orders.secret"]),
            publish(&["orders.b", "orders.c"])
        ),
        // A max the deliveries have already reached ends it at once.
        format!(
            "SUB orders.* 1\r\n{}UNSUB 1 1\r\n{}",
            publish(&["orders.a"]),
            publish(&["orders.b"])
        ),
        // A max raised before it is reached; then a plain UNSUB.
        format!(
            "SUB orders.* 1\r\nUNSUB 1 1\r\nUNSUB 1 2\r\n{}SUB orders.> 2\r\nUNSUB 2 5\r\nUNSUB 2\r\n{}",
            publish(&["orders.secret", "orders.a", "orders.b", "orders.c"]),
            publish(&["orders.e"])
        ),
    ];
    for verbose in [false, true] {
        let connect = format!(r#"{{"user":"orders","pass":"pw","verbose":{verbose}}}"#);
        for bytes in &cases {
            let replies = direct_and_edged(&targets, &connect, bytes).await;
            assert_eq!(replies[1], replies[0], "verbose {verbose}: {bytes:?}");
        }
        // The subscription is gone upstream too: the same sid subscribes again, afresh.
        let mut seen = Vec::new();
        for addr in [targets.direct(), targets.edged()] {
            let (mut raw, _) = RawConn::connect_info(addr).await;
            let subscribe = format!(
                "SUB orders.* 7\r\nUNSUB 7 1\r\n{}",
                publish(&["orders.secret", "orders.a", "orders.b"])
            );
            let first = raw
                .roundtrip(&[connect_json(&connect), subscribe.into_bytes()].concat())
                .await;
            let again = raw
                .roundtrip(format!("SUB orders.* 7\r\n{}", publish(&["orders.c"])).as_bytes())
                .await;
            seen.push((show(&first.bytes), show(&again.bytes)));
        }
        assert_eq!(seen[1], seen[0], "verbose {verbose}");
        assert_eq!(seen[0].0.matches("MSG ").count(), 1, "{:?}", seen[0]);
        assert!(seen[0].0.contains("MSG orders.a 7 1"), "{:?}", seen[0]);
        assert!(seen[0].1.contains("MSG orders.c 7 1"), "{:?}", seen[0]);
    }
}

/// With a subscription limit too: the filtered auto-unsubscribe frees its slot at its last
/// delivered message, as on nats-server, so a SUB right after it is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_auto_unsubscribe_frees_its_subscription_slot() {
    let direct =
        NatsServer::start_with_config(&format!("max_subscriptions: 2\n{SERVER_PERMISSIONS}"));
    let behind = NatsServer::start_with_config(SERVER_USERS_ONLY);
    let edge = start_edge(
        &[behind.url()],
        &format!("[auth]\nrules = [{RULES:?}]\n[limits]\nmax_subscriptions = 2\n"),
    )
    .await;
    let bytes = "SUB orders.x 1\r\nSUB orders.* 2\r\nUNSUB 2 1\r\nPUB orders.secret 1\r\nx\r\n\
                 PUB orders.a 1\r\nx\r\nSUB orders.y 3\r\nSUB orders.z 4\r\nPUB orders.y 1\r\nx\r\n";
    // A SUB refused at the limit is no subscription: an auto-unsubscribe for its sid is
    // ignored, and the sid then subscribes afresh, with every message delivered.
    let refused = format!(
        "SUB orders.x 1\r\nSUB orders.y 2\r\nSUB orders.* 3\r\nUNSUB 3 2\r\nUNSUB 1\r\n\
         SUB orders.* 3\r\n{}",
        "PUB orders.a 1\r\nx\r\n".repeat(4)
    );
    let addrs = [direct.addr(), edge_addr(&edge)];
    for (text, _) in orders_replies_alike(addrs, &refused).await {
        assert_eq!(text.matches("MSG orders.a 3 1").count(), 4, "{text}");
    }
    for (text, _) in orders_replies_alike(addrs, bytes).await {
        assert!(
            text.contains("MSG orders.a 2 1")
                && text.contains("maximum subscriptions exceeded")
                && text.contains("MSG orders.y 3 1"),
            "{text}"
        );
    }
}

/// A SUB that nats-server's own permissions refuse takes no subscription slot there. Behind
/// the edge, whose rules allow it, the edge's limit must not count it either: it reads the
/// upstream's refusal and frees the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_the_upstream_refuses_takes_no_subscription_slot() {
    let permissions = SERVER_PERMISSIONS.replace(
        r#"deny: ["orders.secret"]"#,
        r#"deny: ["orders.secret", "orders.hidden"]"#,
    );
    assert_ne!(permissions, SERVER_PERMISSIONS);
    let direct = NatsServer::start_with_config(&format!("max_subscriptions: 2\n{permissions}"));
    let behind = NatsServer::start_with_config(&SERVER_USERS_ONLY.replace(
        "{ user: orders, password: pw }",
        r#"{ user: orders, password: pw, permissions: { subscribe: { deny: ["orders.hidden"] } } }"#,
    ));
    let edge = start_edge(
        &[behind.url()],
        &format!("[auth]\nrules = [{RULES:?}]\n[limits]\nmax_subscriptions = 2\n"),
    )
    .await;
    let bytes = "SUB orders.hidden 1\r\nSUB orders.a 2\r\nSUB orders.b 3\r\nSUB orders.c 4\r\n\
                 PUB orders.b 1\r\nx\r\n";
    let addrs = [direct.addr(), edge_addr(&edge)];
    for (text, _) in orders_replies_alike(addrs, bytes).await {
        assert!(
            text.contains("orders.hidden")
                && text.contains("maximum subscriptions exceeded")
                && text.contains("MSG orders.b 3 1"),
            "{text}"
        );
    }
}

/// nats-server sends a client no INFO before the PONG to its first PING, then the INFO that
/// answers its CONNECT. Through the edge the order is the same, even when a PING of the
/// edge's own (ordering its `-ERR` for a refused PUB) reached the upstream first and drew
/// that INFO out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_info_before_the_first_pong() {
    let targets = Targets::start().await;
    let bytes =
        b"CONNECT {\"user\":\"orders\",\"pass\":\"pw\",\"verbose\":false,\"protocol\":1}\r\n\
                  PUB other.x 1\r\nx\r\nPING\r\n";
    for addr in [targets.direct(), targets.edged()] {
        let (mut raw, _) = RawConn::connect_info(addr).await;
        raw.send(bytes).await;
        assert_eq!(
            show(&raw.read_until(b"PONG\r\n").await.bytes),
            show(b"-ERR 'Permissions Violation for Publish to \"other.x\"'\r\nPONG\r\n"),
            "{addr}"
        );
        let info = raw.read_until(b"\r\n").await.text();
        assert!(
            info.starts_with("INFO {") && info.contains("\"connect_info\":true"),
            "{addr}: {info}"
        );
    }
}

/// SUBs before the CONNECT, to a nats-server with a `no_auth_user`: it takes the first op
/// for a CONNECT, so the client's own CONNECT is a second one, which drops those
/// subscriptions (nats-server 2.11.17 and later). A sid reused after it names a new
/// subscription, whose deliveries the edge judges as nats-server does: a queue
/// subscription's deny entry keeps `jobs.secret` from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_before_the_connect_end_with_it_as_on_nats_server() {
    let permissions = r#"{ publish: ">", subscribe: { allow: [">"], deny: ["jobs.secret bad"] } }"#;
    let direct = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ user: u, password: pw, permissions: {permissions} }} ] }}\n\
         no_auth_user: u\n"
    ));
    let behind = NatsServer::start_with_config(
        "authorization { users = [ { user: u, password: pw } ] }\nno_auth_user: u\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let edge_permissions =
        "publish = \">\"\nsubscribe = { allow = [\">\"], deny = [\"jobs.secret bad\"] }\n";
    std::fs::write(
        &rules,
        format!(
            "[default_permissions]\n{edge_permissions}\
             [[users]]\nuser = \"u\"\n[users.permissions]\n{edge_permissions}"
        ),
    )
    .unwrap();
    let edge = start_edge(&[behind.url()], &format!("[auth]\nrules = [{rules:?}]\n")).await;
    let bytes = b"SUB public.x 1\r\nCONNECT {\"user\":\"u\",\"pass\":\"pw\",\"verbose\":false}\r\n\
                  SUB jobs.* bad 1\r\nPUB jobs.secret 1\r\nx\r\nPUB jobs.ok 1\r\ny\r\n\
                  PUB public.x 1\r\nz\r\n";
    let mut seen = Vec::new();
    for addr in [direct.addr(), edge_addr(&edge)] {
        let (mut raw, _) = RawConn::connect_info(addr).await;
        let reply = raw.roundtrip(bytes).await;
        seen.push((show(&reply.bytes), reply.closed));
    }
    assert_eq!(
        seen[0],
        (show(b"+OK\r\nMSG jobs.ok 1 1\r\ny\r\n"), false),
        "nats-server's behaviour changed"
    );
    assert_eq!(seen[1], seen[0]);
}

/// A request delivered twice (the service has two subscriptions that match it): nats-server
/// counts the second delivery against the reply's answers, as the edge does, so the service
/// may answer once where `max` is 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_delivered_twice_counts_against_its_answers() {
    let targets = Targets::start().await;
    let mut outcomes = Vec::new();
    for addr in [targets.direct(), targets.edged()] {
        let (mut service, _) = RawConn::connect_info(addr).await;
        let subscribed = service
            .roundtrip(
                &[
                    connect_as("service"),
                    b"SUB rpc.> 1\r\nSUB rpc.echo 2\r\n".to_vec(),
                ]
                .concat(),
            )
            .await;
        assert_eq!(show(&subscribed.bytes), "");
        let (mut admin, _) = RawConn::connect_info(addr).await;
        admin
            .roundtrip(
                &[
                    connect_as("admin"),
                    b"SUB _INBOX.r2 9\r\nPUB rpc.echo _INBOX.r2 2\r\nhi\r\n".to_vec(),
                ]
                .concat(),
            )
            .await;
        let requests = service.read_until(b"hi\r\nMSG").await;
        let second = service.read_until(b"hi\r\n").await;
        let mut both = requests.bytes;
        both.extend_from_slice(&second.bytes);
        assert_eq!(
            both.windows(2).filter(|w| w == b"hi").count(),
            2,
            "{}",
            show(&both)
        );
        let answers = service
            .roundtrip(b"PUB _INBOX.r2 1\r\n1\r\nPUB _INBOX.r2 1\r\n2\r\n")
            .await;
        let received = admin.roundtrip(b"").await;
        outcomes.push((show(&answers.bytes), show(&received.bytes)));
    }
    assert_eq!(outcomes[1], outcomes[0]);
    assert_eq!(
        outcomes[0],
        (
            show(b"-ERR 'Permissions Violation for Publish to \"_INBOX.r2\"'\r\n"),
            show(b"MSG _INBOX.r2 9 1\r\n1\r\n")
        ),
        "nats-server's behaviour changed"
    );
}

/// nats-server answers `$SYS.REQ.USER.INFO` for any account, its host in the body, which
/// the edge does not rewrite; the deny docs/acl.md gives keeps it from clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sys_request_deny_keeps_server_addresses_from_clients() {
    let server = NatsServer::start_with_config("client_advertise: \"10.9.8.7:4222\"\n");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[default_permissions]\npublish = { allow = [\">\"], deny = [\"$SYS.REQ.>\"] }\n",
    )
    .unwrap();
    let ask = b"CONNECT {\"verbose\":false}\r\nSUB r 1\r\nPUB $SYS.REQ.USER.INFO r 0\r\n\r\n";

    let open = start_edge(&[server.url()], "").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&open)).await;
    raw.send(ask).await;
    let reply = raw.read_until(b"10.9.8.7").await;
    assert!(!reply.closed, "{}", reply.text());

    let denied = start_edge(&[server.url()], &format!("[auth]\nrules = [{rules:?}]\n")).await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&denied)).await;
    let reply = raw.roundtrip(ask).await;
    assert_eq!(
        reply.text(),
        "-ERR 'Permissions Violation for Publish to \"$SYS.REQ.USER.INFO\"'\r\n"
    );
}
