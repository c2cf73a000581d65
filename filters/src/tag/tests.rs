use std::path::Path;

use super::*;
use crate::events::NoEvents;
use crate::filter::TlsPeer;
use crate::identity::{AuthMethod, Identity};
use crate::op::{Connect, Msg};
use serde_json::{Map, Value};

fn config(name: &str) -> TagConfig {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("rules/tagging/{name}.toml"));
    TagConfig::load(&file).unwrap()
}

fn conn() -> ConnFacts {
    ConnFacts {
        conn_id: 42,
        listener: "public".into(),
        client_addr: "192.0.2.7:51000".parse().unwrap(),
        transport: "tls",
        tls_peer: Some(TlsPeer {
            subject: "CN=alice,O=Acme".into(),
            sans: vec![],
        }),
        tls_handshake_pending: false,
    }
}

fn session(name: &str, max_payload: Option<u64>) -> (Box<dyn Filter>, SessionCtx) {
    session_with(config(name), max_payload)
}

/// A session's tagging filter before the client's CONNECT, behind an upstream with headers.
fn unconnected(config: TagConfig) -> (Box<dyn Filter>, SessionCtx) {
    let factory = TagFactory {
        source: Arc::new(TagSource::new(config)),
        events: Arc::new(NoEvents),
    };
    let mut ctx = SessionCtx::new(conn());
    ctx.upstream_headers = true;
    (factory.build(&conn()), ctx)
}

fn session_with(config: TagConfig, max_payload: Option<u64>) -> (Box<dyn Filter>, SessionCtx) {
    let (mut f, mut ctx) = unconnected(config);
    if let Some(max) = max_payload {
        ctx.max_payload = max;
    }
    let mut connect = ClientOp::Connect(Box::new(Connect {
        headers: Some(true),
        ..Connect::default()
    }));
    assert_eq!(f.on_client_op(&mut connect, &mut ctx), Verdict::Forward);
    (f, ctx)
}

fn publish(subject: &str, headers: Option<&'static [u8]>, payload: &'static [u8]) -> ClientOp {
    ClientOp::Pub(Pub {
        subject: Bytes::from(subject.to_string()),
        reply: None,
        headers: headers.map(Bytes::from_static),
        payload: Bytes::from_static(payload),
    })
}

fn headers_of(op: &ClientOp) -> String {
    let ClientOp::Pub(p) = op else { unreachable!() };
    String::from_utf8(p.headers.clone().unwrap().to_vec()).unwrap()
}

#[test]
fn tags_every_publish_with_the_sender() {
    let (mut f, mut ctx) = session("default", None);
    ctx.identity = Some(Identity {
        user: Some("alice".into()),
        method: AuthMethod::Certificate,
    });
    let mut op = publish("orders.new", None, b"hello");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    assert_eq!(
        headers_of(&op),
        "NATS/1.0\r\nNats-Edge-User: alice\r\nNats-Edge-Client-Addr: 192.0.2.7:51000\r\n\
         Nats-Edge-Conn-Id: 42\r\nNats-Edge-Tls-Subject: CN=alice,O=Acme\r\n\
         Nats-Edge-Region: eu-west-1\r\n\r\n"
    );
}

#[test]
fn spoofed_headers_are_stripped_in_any_casing() {
    let (mut f, mut ctx) = session("default", None);
    let mut op = publish(
        "orders.new",
        Some(b"NATS/1.0\r\nnats-edge-user: mallory\r\nKeep: me\r\nNATS-EDGE-CONN-ID: 1\r\nNats-Edge-Other: x\r\nX: y\r\n\r\n"),
        b"p",
    );
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let h = headers_of(&op);
    assert!(!h.contains("mallory") && !h.contains("Other"), "{h}");
    // The edge's tags first, then the client's own lines in their order.
    assert!(h.starts_with("NATS/1.0\r\nNats-Edge-"), "{h}");
    assert!(h.ends_with("\r\nKeep: me\r\nX: y\r\n\r\n"), "{h}");
    assert!(h.contains("Nats-Edge-Conn-Id: 42\r\n"), "{h}");
    assert!(
        !h.contains("Nats-Edge-User"),
        "no identity, no user tag: {h}"
    );
}

#[test]
fn spoofed_headers_can_refuse_the_message() {
    let (mut f, mut ctx) = session("refuse-spoofed", None);
    let mut op = publish(
        "a.\"b",
        Some(b"NATS/1.0\r\nNats-Edge-User: x\r\n\r\n"),
        b"p",
    );
    assert_eq!(
        f.on_client_op(&mut op, &mut ctx),
        Verdict::error("Permissions Violation for Publish to \"a.\\\"b\"")
    );
}

#[test]
fn json_field_only_for_json_objects_on_its_subjects() {
    let (mut f, mut ctx) = session("default", None);
    let mut op = publish(
        "events.login",
        None,
        br#"{"kind":"login","edge":"forged","id":123456789012345678901234567890,"a":[1, 2.50]}"#,
    );
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    // The client's members keep their order and their text, digits and all; the field
    // comes last.
    assert!(
        p.payload.starts_with(
            br#"{"kind":"login","id":123456789012345678901234567890,"a":[1, 2.50],"edge":{"#
        ),
        "{}",
        p.payload.escape_ascii()
    );
    // The tags in their documented order: the client's own keys, then the static tags.
    assert!(
        p.payload.ends_with(
            br#""edge":{"client_addr":"192.0.2.7:51000","conn_id":"42","tls_subject":"CN=alice,O=Acme","Nats-Edge-Region":"eu-west-1"}}"#
        ),
        "{}",
        p.payload.escape_ascii()
    );
    let v: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["kind"], "login");
    assert_eq!(v["edge"]["conn_id"], "42");
    assert_eq!(v["edge"]["client_addr"], "192.0.2.7:51000");
    assert_eq!(v["edge"]["tls_subject"], "CN=alice,O=Acme");

    for payload in [&b"[1,2]"[..], b"not json"] {
        let mut op = ClientOp::Pub(Pub {
            subject: Bytes::from_static(b"events.x"),
            reply: None,
            headers: None,
            payload: Bytes::from_static(payload),
        });
        f.on_client_op(&mut op, &mut ctx);
        let ClientOp::Pub(p) = &op else {
            unreachable!()
        };
        assert_eq!(&p.payload[..], payload);
    }
    // Other subjects keep their payload, even JSON.
    let mut op = publish("orders.x", None, br#"{"a":1}"#);
    f.on_client_op(&mut op, &mut ctx);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    assert_eq!(&p.payload[..], br#"{"a":1}"#);
}

/// Header blocks a client library reads differently from the edge, or not at all, close
/// the connection: a tag could be forged past the edge, or its own tags lost.
#[test]
fn header_blocks_read_differently_elsewhere_cannot_forge_tags() {
    let (mut f, mut ctx) = session("default", None);
    // First lines nats.py reads a field from (it reads from a fixed offset); names and
    // lines some library reads otherwise, or not at all: control bytes or Unicode spaces
    // around a name (nats.py trims them off, to a forged tag), a CR inside a line, the
    // Kelvin sign (lower-cased to `k` by JavaScript and Python), a line without a colon
    // (nats.go then drops every header, the edge's too), a bare LF.
    for block in [
        &b"NATS/1.0XXNats-Edge-Tls-Subject: CN=admin\r\n\r\n"[..],
        b"NATS/1.0 1Nats-Edge-Tls-Subject: CN=admin\r\n\r\n",
        b"NATS/1.0\rNats-Edge-Tls-Subject: CN=admin\r\n\r\n",
        b"NATS/1.0 503:\r\n\r\n",
        b"NATS/1.0 50\r\n\r\n",
        b"NATS/1.0 042 x\r\n\r\n",
        b"NATS/1.0 503 a\x0bb\r\n\r\n",
        b"NATS/1.0\r\n\x0bNats-Edge-Tls-Subject: CN=admin\r\nKeep: me\r\n\r\n",
        b"NATS/1.0\r\nNats-Edge-Conn-Id\x0c: 1\r\n\r\n",
        b"NATS/1.0\r\nA: 1\rNats-Edge-User: mallory\r\n\r\n",
        "NATS/1.0\r\n\u{a0}Nats-Edge-Tls-Subject: CN=admin\r\n\r\n".as_bytes(),
        "NATS/1.0\r\nNats-Edge-User\u{3000}: mallory\r\n\r\n".as_bytes(),
        "NATS/1.0\r\nNats-Edge-\u{212a}ey: forged\r\n\r\n".as_bytes(),
        b"NATS/1.0\r\nno colon\r\n\r\n",
        b"NATS/1.0\r\nA: x\nNats-Edge-User: mallory\r\n\r\n",
    ] {
        let mut op = ClientOp::Pub(Pub {
            subject: Bytes::from_static(b"a"),
            reply: None,
            headers: Some(Bytes::copy_from_slice(block)),
            payload: Bytes::from_static(b"p"),
        });
        assert_eq!(
            f.on_client_op(&mut op, &mut ctx),
            Verdict::Close {
                reason: CloseReason::ProtocolViolation,
                error: None
            },
            "{}",
            block.escape_ascii()
        );
    }
    for block in [
        &b"NATS/1.0\r\n"[..],
        b"NATS/1.0 503\r\n",
        b"NATS/1.0 408 Request Timeout\r\n",
    ] {
        let mut op = publish("a", Some(leak(block, b"Keep: me\r\n\r\n")), b"p");
        assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
        assert!(headers_of(&op).starts_with(std::str::from_utf8(block).unwrap()));
    }
}

fn leak(a: &[u8], b: &[u8]) -> &'static [u8] {
    Box::leak([a, b].concat().into_boxed_slice())
}

/// A payload that opens like an object but whose members the edge cannot read may still be
/// read by a consumer's parser, with the field the client put in it: it is refused. A key Go would
/// read as the field (in another casing) does not survive next to the edge's.
#[test]
fn json_the_edge_cannot_read_is_refused() {
    let (mut f, mut ctx) = session("default", None);
    for payload in [
        &br#"{"edge":{"user":"admin"},"\ud800":1}"#[..],
        b"{\"edge\":{\"user\":\"admin\"},\"x\":\"\xff\"}",
        b"{broken",
        b"\x00{\x00\"\x00e\x00\"\x00:\x001\x00}",
    ] {
        let mut op = publish("events.x", None, leak(payload, b""));
        assert_eq!(
            f.on_client_op(&mut op, &mut ctx),
            Verdict::error("Permissions Violation for Publish to \"events.x\""),
            "{}",
            payload.escape_ascii()
        );
    }
    // Values are not read, only carried: deep nesting or a lone surrogate in one does not
    // hide a field.
    let nested = format!(
        r#"{{"edge":{{"user":"admin"}},"x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let mut op = publish("events.x", None, leak(nested.as_bytes(), b""));
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    assert!(!p.payload.windows(5).any(|w| w == b"admin"));
    let mut op = publish(
        "events.x",
        None,
        br#"{"edge":{"user":"admin"},"x":"\ud800"}"#,
    );
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    assert!(
        p.payload.starts_with(br#"{"x":"\ud800","edge":{"#),
        "{}",
        p.payload.escape_ascii()
    );

    let mut op = publish(
        "events.x",
        None,
        b"\xEF\xBB\xBF{\"EDGE\":{\"user\":\"admin\"},\"Edge\":1,\"kind\":\"k\"}",
    );
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    let v: Map<String, Value> = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(
        v.keys().collect::<Vec<_>>(),
        ["edge", "kind"],
        "{}",
        p.payload.escape_ascii()
    );
    assert_eq!(v["edge"]["conn_id"], "42");
    // Go folds these too.
    assert!(folds_to("ta\u{17F}k", "TASK") && folds_to("\u{212A}ey", "key"));
    assert!(!folds_to("edges", "edge") && !folds_to("edga", "edge"));
}

#[test]
fn tags_that_push_over_max_payload_refuse_the_message() {
    let (mut f, mut ctx) = session("default", Some(400));
    let mut op = publish("a", None, &[b'x'; 350]);
    assert_eq!(
        f.on_client_op(&mut op, &mut ctx),
        Verdict::close_with(
            CloseReason::MaxPayloadExceeded,
            errors::MAX_PAYLOAD_VIOLATION
        )
    );
    let mut op = publish("a", None, b"small");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
}

#[test]
fn a_client_without_headers_is_upgraded_and_its_deliveries_stripped() {
    let (mut f, mut ctx) = unconnected(config("default"));
    let mut connect = ClientOp::Connect(Box::default());
    assert_eq!(f.on_client_op(&mut connect, &mut ctx), Verdict::Changed);
    let ClientOp::Connect(c) = &connect else {
        unreachable!()
    };
    assert_eq!(c.headers, Some(true));
    let mut op = publish("a", None, b"p");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let mut hpub = publish("a", Some(b"NATS/1.0\r\n\r\n"), b"p");
    assert!(matches!(
        f.on_client_op(&mut hpub, &mut ctx),
        Verdict::Close { error: None, .. }
    ));
    let mut msg = ServerOp::Msg(Msg {
        subject: Bytes::from_static(b"a"),
        sid: Bytes::from_static(b"1"),
        reply: None,
        headers: Some(Bytes::from_static(b"NATS/1.0\r\nA: 1\r\n\r\n")),
        payload: Bytes::from_static(b"p"),
    });
    assert_eq!(f.on_server_op(&mut msg, &mut ctx), Verdict::Changed);
    let ServerOp::Msg(m) = &msg else {
        unreachable!()
    };
    assert!(m.headers.is_none());
}

#[test]
fn bad_files_name_the_key() {
    let err = TagConfig::from_toml(Path::new("t.toml"), "[headers]\nuser = \"Bad Name\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.toml") && err.contains("headers.user"),
        "{err}"
    );
    let err = TagConfig::from_toml(Path::new("t.toml"), "[static]\nA = \"x\\ny\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("static.A"), "{err}");
    let err = TagConfig::from_toml(Path::new("t.toml"), "bogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
    // A static tag named as one of the JSON field's own keys, in any casing.
    let err = TagConfig::from_toml(Path::new("t.toml"), "[static]\nUser = \"svc\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("static.User") && err.contains("`user` is a key of the JSON field's own"),
        "{err}"
    );
    let err = TagConfig::from_toml(Path::new("t.toml"), "[headers]\nconn_id = 5\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.toml:2: `headers.conn_id`: invalid type"),
        "{err}"
    );
}

/// With no header tag to add (here every header name is off, and only JSON payloads are
/// tagged), a message keeps its form: a PUB is not turned into an HPUB with an empty block,
/// and a block the client sent is not rewritten.
#[test]
fn no_header_tags_leave_the_headers_alone() {
    let json_only = TagConfig::from_toml(
        Path::new("json-only.toml"),
        "[headers]\nuser = \"\"\nclient_addr = \"\"\nconn_id = \"\"\ntls_subject = \"\"\n\
         [[json]]\nsubjects = [\"events.>\"]\nfield = \"edge\"\n",
    )
    .unwrap();
    let (mut f, mut ctx) = session_with(json_only, None);
    let mut op = publish("orders.x", None, b"hi");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Forward);
    let mut op = publish("events.x", None, br#"{"a":1}"#);
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    assert_eq!(p.headers, None);
    assert!(
        p.payload.starts_with(br#"{"a":1,"edge":"#),
        "{:?}",
        p.payload
    );
    let mut op = publish("orders.x", Some(b"NATS/1.0\r\nA: b\r\n\r\n"), b"hi");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Forward);
}

/// The edge asks the upstream for headers for a client that did not, except for one that
/// wants `no_responders` without them: the upstream refuses that one as nats-server does,
/// after its own credential checks.
#[test]
fn no_responders_without_headers_is_left_for_the_upstream_to_refuse() {
    let (mut f, mut ctx) = unconnected(config("default"));
    let mut connect = ClientOp::Connect(Box::new(Connect {
        no_responders: Some(true),
        ..Connect::default()
    }));
    assert_eq!(f.on_client_op(&mut connect, &mut ctx), Verdict::Changed);
    let ClientOp::Connect(c) = &connect else {
        unreachable!()
    };
    assert_eq!(c.headers, Some(false), "not asked for on its behalf");
}

/// Clients size their messages by the announced `max_payload`: the room the tags take is
/// kept out of it, so a message of the announced size still fits once tagged, whether the
/// INFO came before the CONNECT named the user or after.
#[test]
fn the_announced_max_payload_keeps_room_for_the_tags() {
    let (mut f, mut ctx) = unconnected(config("default"));
    ctx.max_payload = 4096;
    let announce = |f: &mut Box<dyn Filter>, ctx: &SessionCtx| {
        let mut info = Info {
            max_payload: Some(4096),
            ..Info::default()
        };
        f.on_info(&mut info, ctx);
        usize::try_from(info.max_payload.unwrap()).unwrap()
    };
    let before = announce(&mut f, &ctx);
    assert!(before < 4096 - 2 * USER_NAME_ROOM, "{before}");
    let mut connect = ClientOp::Connect(Box::new(Connect {
        headers: Some(true),
        ..Connect::default()
    }));
    f.on_client_op(&mut connect, &mut ctx);
    ctx.identity = Some(Identity {
        user: Some("u".repeat(USER_NAME_ROOM).into()),
        method: AuthMethod::Password,
    });
    let after = announce(&mut f, &ctx);
    assert!(after >= before, "{after} < {before}");
    for (subject, size) in [("events.x", before), ("events.x", after), ("other", after)] {
        let payload = format!("{{\"k\":\"{}\"}}", "x".repeat(size - 8));
        assert_eq!(payload.len(), size);
        let mut op = ClientOp::Pub(Pub {
            subject: Bytes::from_static(subject.as_bytes()),
            reply: None,
            headers: None,
            payload: Bytes::from(payload),
        });
        assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
        let ClientOp::Pub(tagged) = &op else {
            unreachable!()
        };
        let total = tagged.headers.as_ref().map_or(0, Bytes::len) + tagged.payload.len();
        assert!(total <= 4096, "{subject}, {size}: {total}");
    }
    // Without tags to add, the limit is the upstream's.
    let none = TagFile {
        headers: TagHeaders {
            user: String::new(),
            client_addr: String::new(),
            conn_id: String::new(),
            tls_subject: String::new(),
        },
        ..TagFile::default()
    };
    let (mut plain, mut ctx) = unconnected(TagConfig::new(none).unwrap());
    ctx.max_payload = 4096;
    assert_eq!(announce(&mut plain, &ctx), 4096);
}

/// With classic TLS the INFO goes before the handshake: its room keeps space for the
/// certificate's subject, which a message of the announced size still fits once the
/// handshake has named it. Where the handshake is over (TLS first), no such space is kept.
#[test]
fn the_room_before_a_classic_tls_handshake_holds_the_subject() {
    let announce = |pending: bool, peer: Option<TlsPeer>| {
        let (mut f, mut ctx) = unconnected(config("default"));
        ctx.max_payload = 4096;
        ctx.conn.tls_handshake_pending = pending;
        ctx.conn.tls_peer = peer;
        let mut info = Info {
            max_payload: Some(4096),
            ..Info::default()
        };
        f.on_info(&mut info, &ctx);
        (usize::try_from(info.max_payload.unwrap()).unwrap(), f, ctx)
    };
    let (settled, _, _) = announce(false, None);
    let (before, mut f, mut ctx) = announce(true, None);
    assert!(
        before + TLS_SUBJECT_ROOM <= settled,
        "{before} against {settled}"
    );
    ctx.conn.tls_handshake_pending = false;
    ctx.conn.tls_peer = Some(TlsPeer {
        subject: format!("CN={},O=Acme", "a".repeat(TLS_SUBJECT_ROOM - 10)),
        sans: vec![],
    });
    let mut connect = ClientOp::Connect(Box::new(Connect {
        headers: Some(true),
        ..Connect::default()
    }));
    f.on_client_op(&mut connect, &mut ctx);
    let mut op = ClientOp::Pub(Pub {
        subject: Bytes::from_static(b"events.x"),
        reply: None,
        headers: None,
        payload: Bytes::from(format!("{{\"k\":\"{}\"}}", "x".repeat(before - 8))),
    });
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(tagged) = &op else {
        unreachable!()
    };
    let total = tagged.headers.as_ref().map_or(0, Bytes::len) + tagged.payload.len();
    assert!(total <= 4096, "{total}");
}

/// A header tag whose value readers would not all read alike (blank, as a certificate's
/// empty subject; white space at an end; a control byte) is not written, and such a static
/// value is refused at load; values as they come are kept.
#[test]
fn no_tag_line_is_blank() {
    let load = |toml: &str| {
        let file: TagFile = toml::from_str(toml).unwrap();
        TagConfig::new(file).map(|_| ()).map_err(|(key, _)| key)
    };
    // As TOML writes them: empty, a space, a tab and a vertical tab, white space at an end
    // (Unicode's too), a NUL inside.
    for value in [
        r#""""#,
        r#"" ""#,
        r#""\t\u000b""#,
        r#""eu-west-1 ""#,
        r#""\u00a0eu""#,
        r#""\ufeffeu""#,
        r#""eu\u0000x""#,
    ] {
        assert_eq!(
            load(&format!("[static]\nTeam = {value}")),
            Err("static.Team".to_string()),
            "{value}"
        );
    }
    let mut facts = conn();
    facts.tls_peer = Some(TlsPeer {
        subject: String::new(),
        sans: vec!["URI:spiffe://example.com/alice".into()],
    });
    let tags = config("default").tags(&facts, Some("alice\t"));
    assert!(
        tags.iter().all(|(name, value)| !value.trim().is_empty()
            && name != "Nats-Edge-Tls-Subject"
            && name != "Nats-Edge-User"),
        "{tags:?}"
    );
    assert!(tags.iter().any(|(name, _)| name == "Nats-Edge-Conn-Id"));
    assert!(config("default")
        .tags(&facts, Some("alice "))
        .iter()
        .all(|(name, _)| name != "Nats-Edge-User"));
    // Values as they come are kept: an IPv6 address, a name and a subject with spaces
    // inside.
    facts.client_addr = "[2001:db8::1]:4222".parse().unwrap();
    facts.tls_peer = Some(TlsPeer {
        subject: "CN=alice,O=Acme Inc.".into(),
        sans: vec![],
    });
    let tags = config("default").tags(&facts, Some("alice smith"));
    for (name, value) in [
        ("Nats-Edge-User", "alice smith"),
        ("Nats-Edge-Client-Addr", "[2001:db8::1]:4222"),
        ("Nats-Edge-Tls-Subject", "CN=alice,O=Acme Inc."),
    ] {
        assert!(
            tags.iter().any(|(n, v)| n == name && v == value),
            "{name}: {tags:?}"
        );
    }

    // A client's blank value comes after every tag, so it can take no tag for its value.
    let (mut f, mut ctx) = session("default", None);
    let mut op = publish("orders.new", Some(b"NATS/1.0\r\nX:\x0c\r\n\r\n"), b"p");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let h = headers_of(&op);
    assert!(h.starts_with("NATS/1.0\r\nNats-Edge-"), "{h}");
    assert!(h.ends_with("\r\nX:\u{c}\r\n\r\n"), "{h}");
}

/// A configuration that would take headers NATS reads itself, or give two tags one name, is
/// refused when it loads, naming the key.
#[test]
fn tags_stay_out_of_natss_own_headers() {
    let load = |toml: &str| {
        let file: TagFile = toml::from_str(toml).unwrap();
        TagConfig::new(file).map(|_| ()).map_err(|(key, _)| key)
    };
    for prefix in ["Nats-", "nats", "N", "Nats-Ex", "NATS-MSG-"] {
        assert_eq!(
            load(&format!("reserved_prefix = {prefix:?}")),
            Err("reserved_prefix".to_string()),
            "{prefix}"
        );
    }
    for prefix in ["Nats-Edge-", "nats-edge", "X-Edge-", "Natsy-"] {
        assert_eq!(
            load(&format!("reserved_prefix = {prefix:?}")),
            Ok(()),
            "{prefix}"
        );
    }
    assert_eq!(
        load("[static]\n\"Nats-Msg-Id\" = \"1\""),
        Err("static.Nats-Msg-Id".to_string())
    );
    assert_eq!(
        load("[headers]\nuser = \"nats-ttl\""),
        Err("headers.user".to_string())
    );
    assert_eq!(
        load("[headers]\nuser = \"X-User\"\n[static]\n\"x-user\" = \"a\""),
        Err("static.x-user".to_string())
    );
    // Names nats.c gives a block's status line.
    assert_eq!(
        load("[static]\nSTATUS = \"a\""),
        Err("static.STATUS".to_string())
    );
    assert_eq!(
        load("[headers]\nuser = \"Description\""),
        Err("headers.user".to_string())
    );
    assert_eq!(
        load("[headers]\nuser = \"X-User\"\nconn_id = \"X-USER\""),
        Err("headers.conn_id".to_string())
    );
}

/// `HPUB subject 0 size` is a message without headers to nats-server: it is tagged as one.
#[test]
fn an_empty_header_block_is_no_headers() {
    let (mut f, mut ctx) = session("default", None);
    let mut op = publish("orders.new", Some(b""), b"hi");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    assert!(headers_of(&op).starts_with("NATS/1.0\r\nNats-Edge-Client-Addr: "));
}

/// Deliveries are looked at only when the edge asked the upstream for headers on behalf of
/// a client that did not: a client that asked itself, or one whose upstream sends none,
/// keeps its deliveries on the fast path.
#[test]
fn deliveries_are_looked_at_only_where_headers_may_need_stripping() {
    for (client_headers, upstream_headers, looks) in [
        (true, true, false),
        (false, false, false),
        (false, true, true),
    ] {
        let (mut f, mut ctx) = unconnected(config("default"));
        ctx.upstream_headers = upstream_headers;
        let mut connect = ClientOp::Connect(Box::new(Connect {
            headers: Some(client_headers),
            ..Connect::default()
        }));
        f.on_client_op(&mut connect, &mut ctx);
        assert_eq!(
            f.interest().contains(OpKind::Msg),
            looks,
            "client headers {client_headers}, upstream headers {upstream_headers}"
        );
    }
}
