//! The filter driven through a chain, as a session drives it.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;

use super::*;
use crate::chain::Chain;
use crate::op::{Msg, Pub, Sub};

#[derive(Default)]
struct Recorded(Mutex<Vec<(String, DenialKind)>>);

impl Events for Recorded {
    fn acl_denied(&self, user: &str, direction: DenialKind) {
        if let Ok(mut v) = self.0.lock() {
            v.push((user.to_string(), direction));
        }
    }
}

const RULES: &str = r#"
[default_permissions]
publish = { deny = [">"] }

[[users]]
user = "alice"
password = "pw"
[users.permissions]
publish = { allow = ["orders.>"], deny = ["orders.audit"] }
subscribe = { allow = ["orders.*", "jobs.> workers"], deny = ["orders.secret"] }

[[users]]
user = "svc"
token = "tok"
[users.permissions]
subscribe = ["rpc.>"]
allow_responses = true
"#;

fn setup(mode: AuthMode, text: &str) -> (Chain, SessionCtx, Arc<Recorded>, Arc<RuleSource>) {
    setup_with(mode, text, false)
}

/// [`setup`], in front of a nats-server in operator mode or not.
fn setup_with(
    mode: AuthMode,
    text: &str,
    operator_mode: bool,
) -> (Chain, SessionCtx, Arc<Recorded>, Arc<RuleSource>) {
    let source = Arc::new(RuleSource::new(AclRules::from_str("t.toml", text).unwrap()));
    let events = Arc::new(Recorded::default());
    let factory = AclFactory::new(AclSettings {
        mode,
        operator_mode,
        upstream: None,
        rules: source.clone(),
        events: events.clone(),
    });
    let addr: SocketAddr = "127.0.0.1:5555".parse().unwrap();
    let conn = ConnFacts {
        conn_id: 1,
        listener: "l".into(),
        client_addr: addr,
        transport: "tcp",
        tls_peer: None,
        tls_handshake_pending: false,
    };
    let chain = Chain::new(vec![factory.build(&conn)]);
    let mut ctx = SessionCtx::new(conn);
    // Past the first op, as a session that has had its CONNECT: an end recorded now is not
    // answered before a PING after it has had its PONG.
    ctx.client_op = 1;
    (chain, ctx, events, source)
}

fn connect(json: &str) -> ClientOp {
    ClientOp::Connect(Box::new(serde_json::from_str(json).unwrap()))
}

fn publish(subject: &'static str) -> ClientOp {
    ClientOp::Pub(Pub {
        subject: Bytes::from_static(subject.as_bytes()),
        reply: None,
        headers: None,
        payload: Bytes::new(),
    })
}

fn sub(subject: &'static str, queue: Option<&'static str>, sid: &'static str) -> ClientOp {
    ClientOp::Sub(Sub {
        subject: Bytes::from_static(subject.as_bytes()),
        queue: queue.map(|q| Bytes::from_static(q.as_bytes())),
        sid: Bytes::from_static(sid.as_bytes()),
    })
}

fn msg(subject: &'static str, sid: &'static str, reply: Option<&'static str>) -> ServerOp {
    ServerOp::Msg(Msg {
        subject: Bytes::from_static(subject.as_bytes()),
        sid: Bytes::from_static(sid.as_bytes()),
        reply: reply.map(|r| Bytes::from_static(r.as_bytes())),
        headers: None,
        payload: Bytes::new(),
    })
}

fn err(text: &str) -> Verdict {
    Verdict::error(text.to_string())
}

/// A CONNECT with two kinds of credential is refused: nats-server checks only one of them,
/// and the edge cannot know which.
#[test]
fn passthrough_refuses_two_kinds_of_credential() {
    for json in [
        r#"{"auth_token":"t0k3n","user":"alice"}"#,
        r#"{"nkey":"UABC","user":"alice","pass":"x"}"#,
        r#"{"jwt":"e30.e30.x","auth_token":"t"}"#,
        r#"{"jwt":"e30.e30.x","user":"alice"}"#,
    ] {
        let (mut chain, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
        let verdict = chain.on_client_op(&mut connect(json), &mut ctx);
        assert_eq!(
            verdict,
            Verdict::close_with(
                CloseReason::AuthorizationViolation,
                errors::AUTHORIZATION_VIOLATION
            ),
            "{json}"
        );
    }

    // A JWT with an nkey (nats.js's creds) is one credential, keyed on the JWT's subject,
    // which the nkey must be.
    let claims = |sub: &str| {
        let payload = format!(r#"{{"sub":"{sub}"}}"#);
        format!("e30.{}.sig", base64url(payload.as_bytes()))
    };
    let refused = Verdict::close_with(
        CloseReason::AuthorizationViolation,
        errors::AUTHORIZATION_VIOLATION,
    );
    let alice = nkeys::KeyPair::new_user();
    let nonce = "n0nce";
    let signed = base64url(&alice.sign(nonce.as_bytes()).unwrap());
    let other = nkeys::KeyPair::new_user().public_key();
    for (nkey, verdict) in [(alice.public_key(), Verdict::Forward), (other, refused)] {
        let (mut chain, mut ctx, _, _) = setup_with(AuthMode::Passthrough, RULES, true);
        ctx.upstream_nonce = Some(nonce.into());
        let creds = format!(
            r#"{{"jwt":"{}","nkey":"{nkey}","sig":"{signed}"}}"#,
            claims(&alice.public_key())
        );
        assert_eq!(chain.on_client_op(&mut connect(&creds), &mut ctx), verdict);
        if verdict == Verdict::Forward {
            assert_eq!(
                ctx.identity.as_ref().unwrap().user_name(),
                alice.public_key()
            );
        }
    }
    let (mut chain, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
    // Blank fields are no credential: a user and an empty token is one kind.
    let mut c = connect(r#"{"user":"alice","pass":"x","auth_token":""}"#);
    assert_eq!(chain.on_client_op(&mut c, &mut ctx), Verdict::Forward);
    assert_eq!(ctx.identity.as_ref().unwrap().user_name(), "alice");
}

/// base64url without padding, as client libraries encode signatures.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An nkey, or a user JWT's subject, names a passthrough client only when the CONNECT's
/// signature of the upstream's nonce is that key's: otherwise anyone could claim the edge
/// permissions of a key-named user while nats-server admits them as someone else.
#[test]
fn passthrough_names_a_key_only_when_its_signature_checks_out() {
    let key = nkeys::KeyPair::new_user();
    let public = key.public_key();
    let rules = format!(
        "{RULES}\n[[users]]\nuser = \"{public}\"\n[users.permissions]\npublish = [\"admin.>\"]\n"
    );
    let good = base64url(&key.sign(b"n0nce").unwrap());
    let forged = base64url(&nkeys::KeyPair::new_user().sign(b"n0nce").unwrap());
    let named_in = |operator_mode: bool, json: String, nonce: Option<&str>| {
        let (mut chain, mut ctx, _, _) = setup_with(AuthMode::Passthrough, &rules, operator_mode);
        ctx.upstream_nonce = nonce.map(str::to_string);
        assert_eq!(
            chain.on_client_op(&mut connect(&json), &mut ctx),
            Verdict::Forward
        );
        chain.refresh_interest();
        let named = ctx.identity.as_ref().unwrap().user.clone();
        let admin = chain.on_client_op(&mut publish("admin.x"), &mut ctx);
        (named, admin)
    };
    let unproven = |json: String, nonce: Option<&str>| named_in(true, json, nonce);
    // Signed by the key: the key's user, and its permissions.
    let (named, admin) = unproven(
        format!(r#"{{"nkey":"{public}","sig":"{good}"}}"#),
        Some("n0nce"),
    );
    assert_eq!(named.as_deref(), Some(public.as_str()));
    assert_eq!(admin, Verdict::Forward);
    // No signature, another key's, or no nonce to sign: nameless, the defaults.
    for (json, nonce) in [
        (format!(r#"{{"nkey":"{public}"}}"#), Some("n0nce")),
        (
            format!(r#"{{"nkey":"{public}","sig":"{forged}"}}"#),
            Some("n0nce"),
        ),
        (format!(r#"{{"nkey":"{public}","sig":"{good}"}}"#), None),
        (
            format!(r#"{{"nkey":"{public}","sig":"{good}"}}"#),
            Some("other"),
        ),
    ] {
        let (named, admin) = unproven(json.clone(), nonce);
        assert_eq!(named, None, "{json} {nonce:?}");
        assert_eq!(
            admin,
            err(r#"Permissions Violation for Publish to "admin.x""#),
            "{json}"
        );
    }
    // A user JWT names the client the same way; a bearer JWT (nats.ws in a browser, which
    // holds no seed) needs no signature, as nats-server admits it without one.
    let jwt = |claims: &str| format!("e30.{}.sig", base64url(claims.as_bytes()));
    let plain = jwt(&format!(r#"{{"sub":"{public}"}}"#));
    let bearer = jwt(&format!(
        r#"{{"sub":"{public}","nats":{{"bearer_token":true}}}}"#
    ));
    let (named, _) = unproven(format!(r#"{{"jwt":"{plain}"}}"#), Some("n0nce"));
    assert_eq!(named, None);
    let (named, _) = unproven(
        format!(r#"{{"jwt":"{plain}","sig":"{good}"}}"#),
        Some("n0nce"),
    );
    assert_eq!(named.as_deref(), Some(public.as_str()));
    let (named, admin) = unproven(format!(r#"{{"jwt":"{bearer}"}}"#), Some("n0nce"));
    assert_eq!(named.as_deref(), Some(public.as_str()));
    assert_eq!(admin, Verdict::Forward);
    // A bearer JWT is read unverified: its `sub` names only a user key, never a user of the
    // rules known by name (nats-server outside operator mode ignores the JWT, and admits the
    // client as its `no_auth_user`). Nor does an account's key, signed or not.
    let forged = jwt(r#"{"sub":"alice","nats":{"bearer_token":true}}"#);
    let (named, _) = unproven(format!(r#"{{"jwt":"{forged}"}}"#), Some("n0nce"));
    assert_eq!(named, None);
    // Outside operator mode nats-server ignores JWTs: a bearer JWT naming a user's key
    // (which is no secret) gets no one's rules, nor does a signed one; the nkey beside a
    // JWT names the client as nats-server's nkey users would.
    for json in [
        format!(r#"{{"jwt":"{bearer}"}}"#),
        format!(r#"{{"jwt":"{plain}","sig":"{good}"}}"#),
    ] {
        let (named, admin) = named_in(false, json.clone(), Some("n0nce"));
        assert_eq!(named, None, "{json}");
        assert_eq!(
            admin,
            err(r#"Permissions Violation for Publish to "admin.x""#),
            "{json}"
        );
    }
    let (named, _) = named_in(
        false,
        format!(r#"{{"jwt":"{bearer}","nkey":"{public}","sig":"{good}"}}"#),
        Some("n0nce"),
    );
    assert_eq!(named.as_deref(), Some(public.as_str()));
    let account = nkeys::KeyPair::new_account();
    let signed = base64url(&account.sign(b"n0nce").unwrap());
    let (named, _) = unproven(
        format!(r#"{{"nkey":"{}","sig":"{signed}"}}"#, account.public_key()),
        Some("n0nce"),
    );
    assert_eq!(named, None);
}

#[test]
fn passthrough_keys_permissions_on_the_presented_user() {
    let (mut chain, mut ctx, events, _) = setup(AuthMode::Passthrough, RULES);
    // Before CONNECT, the defaults apply.
    assert_eq!(
        chain.on_client_op(&mut publish("x"), &mut ctx),
        err(r#"Permissions Violation for Publish to "x""#)
    );
    let mut c = connect(r#"{"user":"alice","pass":"whatever"}"#);
    assert_eq!(chain.on_client_op(&mut c, &mut ctx), Verdict::Forward);
    chain.refresh_interest();
    assert_eq!(ctx.identity.as_ref().unwrap().user_name(), "alice");
    assert_eq!(
        chain.on_client_op(&mut publish("orders.new"), &mut ctx),
        Verdict::Forward
    );
    assert_eq!(
        chain.on_client_op(&mut publish("orders.audit"), &mut ctx),
        err(r#"Permissions Violation for Publish to "orders.audit""#)
    );
    assert_eq!(
        chain.on_client_op(&mut sub("orders.secret", None, "1"), &mut ctx),
        err(r#"Permissions Violation for Subscription to "orders.secret""#)
    );
    assert_eq!(
        chain.on_client_op(&mut sub("jobs.a", Some("others"), "1"), &mut ctx),
        err(r#"Permissions Violation for Subscription to "jobs.a" using queue "others""#)
    );
    // The wildcard overlaps the deny entry: accepted, the denied subject dropped at delivery.
    assert_eq!(
        chain.on_client_op(&mut sub("orders.*", None, "2"), &mut ctx),
        Verdict::Forward
    );
    assert!(chain.interest().contains(OpKind::Msg));
    assert_eq!(
        chain.on_server_op(&mut msg("orders.new", "2", None), &mut ctx),
        Verdict::Forward
    );
    assert_eq!(
        chain.on_server_op(&mut msg("orders.secret", "2", None), &mut ctx),
        Verdict::Drop
    );
    let recorded = events.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 5);
    assert_eq!(recorded[4], ("alice".into(), DenialKind::Delivery));
}

/// A denial is counted under the user's name only for a user of the rule files: a name
/// the client made up (passthrough mode) is `_other`, no name at all `_anonymous`, so
/// clients cannot use up the metric's label slots.
#[test]
fn denials_are_labelled_by_known_users_only() {
    for (json, label) in [
        (r#"{"user":"alice"}"#, "alice"),
        (r#"{"user":"mallory-1234"}"#, "_other"),
        ("{}", "_anonymous"),
    ] {
        let (mut chain, mut ctx, events, _) = setup(AuthMode::Passthrough, RULES);
        chain.on_client_op(&mut connect(json), &mut ctx);
        chain.refresh_interest();
        assert!(chain.on_client_op(&mut publish("denied.x"), &mut ctx) != Verdict::Forward);
        let recorded = events.0.lock().unwrap().clone();
        assert_eq!(
            recorded,
            [(label.to_string(), DenialKind::Publish)],
            "{json}"
        );
    }
}

#[test]
fn responses_are_allowed_once() {
    let (mut chain, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
    chain.on_client_op(&mut connect(r#"{"user":"svc","pass":"x"}"#), &mut ctx);
    chain.refresh_interest();
    assert!(chain.on_client_op(&mut publish("_INBOX.1"), &mut ctx) != Verdict::Forward);
    chain.on_server_op(&mut msg("rpc.echo", "1", Some("_INBOX.1")), &mut ctx);
    assert_eq!(
        chain.on_client_op(&mut publish("_INBOX.1"), &mut ctx),
        Verdict::Forward
    );
    assert!(chain.on_client_op(&mut publish("_INBOX.1"), &mut ctx) != Verdict::Forward);
}

/// A reload that loads the rules again unchanged (a certificate rotation) keeps the replies
/// a client may still answer; one that changes any rule starts afresh, as nats-server's
/// reload resets them whenever authorization changed.
#[test]
fn a_reload_keeps_pending_responses_when_the_rules_are_unchanged() {
    let (mut chain, mut ctx, _, source) = setup(AuthMode::Passthrough, RULES);
    chain.on_client_op(&mut connect(r#"{"user":"svc","pass":"x"}"#), &mut ctx);
    chain.refresh_interest();
    chain.on_server_op(&mut msg("rpc.echo", "1", Some("_INBOX.1")), &mut ctx);
    chain.on_server_op(&mut msg("rpc.echo", "1", Some("_INBOX.2")), &mut ctx);
    source.store(AclRules::from_str("t.toml", RULES).unwrap());
    chain.on_reload(&ctx);
    assert_eq!(
        chain.on_client_op(&mut publish("_INBOX.1"), &mut ctx),
        Verdict::Forward
    );
    let other_users = format!("{RULES}\n[[users]]\nuser = \"someone\"\npassword = \"pw\"\n");
    source.store(AclRules::from_str("t.toml", &other_users).unwrap());
    chain.on_reload(&ctx);
    assert!(chain.on_client_op(&mut publish("_INBOX.2"), &mut ctx) != Verdict::Forward);
}

/// In edge mode a bcrypt password is checked off the session's thread: the CONNECT is
/// offloaded, the check leaves its result in the session's slot, and the CONNECT's second
/// showing is judged by it, a wrong password as much as a right one.
#[test]
fn edge_mode_offloads_bcrypt_checks() {
    let hash = bcrypt::hash_with_result("s3cret", 4).unwrap().to_string();
    let rules = format!("[[users]]\nuser = \"carol\"\npassword = \"{hash}\"\n");
    for (pass, judged) in [
        ("s3cret", Verdict::Changed),
        (
            "guess",
            Verdict::close_with(
                CloseReason::AuthorizationViolation,
                errors::AUTHORIZATION_VIOLATION,
            ),
        ),
    ] {
        let (mut chain, mut ctx, _, _) = setup(AuthMode::Edge, &rules);
        let json = format!(r#"{{"user":"carol","pass":"{pass}"}}"#);
        let Verdict::Offload(check) = chain.on_client_op(&mut connect(&json), &mut ctx) else {
            panic!("not offloaded");
        };
        check.run();
        assert_eq!(
            chain.on_client_op(&mut connect(&json), &mut ctx),
            judged,
            "{pass}"
        );
    }

    // A reload while the check runs: the CONNECT is judged by the rules now in force (carol
    // removed), not by the answer found under the old ones.
    let (mut chain, mut ctx, _, source) = setup(AuthMode::Edge, &rules);
    let json = r#"{"user":"carol","pass":"s3cret"}"#;
    let Verdict::Offload(check) = chain.on_client_op(&mut connect(json), &mut ctx) else {
        panic!("not offloaded");
    };
    let without_carol = "[[users]]\nuser = \"dave\"\npassword = \"pw\"\n";
    source.store(AclRules::from_str("t.toml", without_carol).unwrap());
    chain.on_reload(&ctx);
    check.run();
    assert_eq!(
        chain.on_client_op(&mut connect(json), &mut ctx),
        Verdict::close_with(
            CloseReason::AuthorizationViolation,
            errors::AUTHORIZATION_VIOLATION
        )
    );
}

#[test]
fn edge_mode_authenticates_and_replaces_credentials() {
    let (mut chain, mut ctx, _, _) = setup(AuthMode::Edge, RULES);
    let mut c = connect(r#"{"user":"alice","pass":"pw","name":"app"}"#);
    assert_eq!(chain.on_client_op(&mut c, &mut ctx), Verdict::Changed);
    let ClientOp::Connect(c) = c else { panic!() };
    assert_eq!(c.user, None);
    assert_eq!(c.pass, None);
    assert_eq!(c.name.as_deref(), Some("app"));
    assert_eq!(ctx.identity.as_ref().unwrap().method, AuthMethod::Password);

    let (mut chain, mut ctx, _, _) = setup(AuthMode::Edge, RULES);
    let mut c = connect(r#"{"user":"alice","pass":"nope"}"#);
    assert_eq!(
        chain.on_client_op(&mut c, &mut ctx),
        Verdict::close_with(
            CloseReason::AuthorizationViolation,
            "Authorization Violation"
        )
    );
    // An op before CONNECT, with no no_auth_user: refused as nats-server refuses it.
    let (mut chain, mut ctx, _, _) = setup(AuthMode::Edge, RULES);
    assert!(matches!(
        chain.on_client_op(&mut ClientOp::Ping, &mut ctx),
        Verdict::Close { .. }
    ));
}

/// `ctx` for a new client op (not one shown again after a deferral).
fn fresh(ctx: &mut SessionCtx) -> &mut SessionCtx {
    ctx.client_op += 1;
    ctx
}

fn unsub(sid: &'static str, max: Option<u64>) -> ClientOp {
    ClientOp::Unsub(crate::op::Unsub {
        sid: Bytes::from_static(sid.as_bytes()),
        max,
    })
}

/// One session's ACL filter, on its own, so a test can see its subscriptions.
fn lone_filter(text: &str) -> AclFilter {
    let source = Arc::new(RuleSource::new(AclRules::from_str("t.toml", text).unwrap()));
    let settings = AclSettings {
        mode: AuthMode::Passthrough,
        operator_mode: false,
        upstream: None,
        rules: source,
        events: Arc::new(Recorded::default()),
    };
    AclFilter::new(Arc::new(settings), Arc::new(SecretChecker::default()))
}

/// A subscription's entry lives as long as the upstream's subscription, as far as the edge
/// can tell: `UNSUB sid 0` ends it at once, `UNSUB sid N` after N deliveries where every
/// delivery is seen, and where deliveries were not watched after at most N more (they are
/// watched from the UNSUB on); a reused sid keeps the subscription it names.
#[test]
fn auto_unsubscribe_ends_the_tracked_subscription() {
    let (mut ctx, mut srv) = {
        let (_, ctx, _, _) = setup(AuthMode::Passthrough, RULES);
        let srv = SessionCtx::new(ctx.conn.clone());
        (ctx, srv)
    };
    // bob's deliveries are not watched: an auto-unsubscribe's count is not known, so its
    // entry stays (for a reload), and deliveries stay off the filter's interest.
    let mut bob = lone_filter(
        "[[users]]\nuser = \"bob\"\npassword = \"pw\"\n\
         [users.permissions]\nsubscribe = [\"jobs.>\"]\n",
    );
    bob.on_client_op(&mut connect(r#"{"user":"bob","pass":"pw"}"#), &mut ctx);
    bob.on_client_op(&mut sub("jobs.a", None, "1"), &mut ctx);
    assert!(!bob.interest().contains(OpKind::Msg));
    assert!(bob.subs.contains_key(&b"1"[..]));
    bob.on_client_op(&mut unsub("1", Some(2)), &mut ctx);
    assert!(bob.subs.get(&b"1"[..]).is_some_and(|s| s.maybe_ended));
    assert!(!bob.interest().contains(OpKind::Msg));
    // `UNSUB sid 0` ends one at once.
    bob.on_client_op(&mut unsub("1", Some(0)), &mut ctx);
    assert!(bob.subs.is_empty());
    // Past the bound, the oldest maybe-ended entries go.
    let sids: Vec<&'static str> = (0..MAX_MAYBE_ENDED + 2)
        .map(|i| &*Box::leak(format!("m{i}").into_boxed_str()))
        .collect();
    for sid in &sids {
        bob.on_client_op(&mut sub("jobs.a", None, sid), fresh(&mut ctx));
        bob.on_client_op(&mut unsub(sid, Some(1)), fresh(&mut ctx));
        // The client's PING after it has had its PONG.
        ctx.answered_op = ctx.client_op;
    }
    assert_eq!(bob.subs.len(), MAX_MAYBE_ENDED);
    assert!(!bob.subs.contains_key(sids[0].as_bytes()));
    assert!(bob.subs.contains_key(sids[MAX_MAYBE_ENDED + 1].as_bytes()));

    // alice has a subscribe deny list: deliveries are seen (and counted) from the first
    // subscription that can receive a denied subject on, not before.
    let mut alice = lone_filter(RULES);
    alice.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    alice.on_client_op(&mut sub("orders.new", None, "1"), &mut ctx);
    assert!(!alice.interest().contains(OpKind::Msg));
    alice.on_client_op(&mut sub("orders.*", None, "2"), &mut ctx);
    assert!(alice.interest().contains(OpKind::Msg));
    alice.on_server_op(&mut msg("orders.new", "2", None), &mut srv);
    // Its max already reached: gone now, as nats-server ends it.
    alice.on_client_op(&mut unsub("2", Some(1)), &mut ctx);
    assert!(!alice.subs.contains_key(&b"2"[..]));
    // Deliveries of `orders.*` may be dropped (`orders.secret` is denied), and nats-server
    // counts only those it makes: the edge keeps the max and ends it at the upstream itself.
    alice.on_client_op(&mut sub("orders.*", None, "3"), &mut ctx);
    assert_eq!(
        alice.on_client_op(&mut unsub("3", Some(2)), &mut ctx),
        Verdict::Answer(ServerOp::Ok),
        "a verbose client is answered for the UNSUB that goes no further"
    );
    fn deliver(f: &mut AclFilter, srv: &mut SessionCtx, subject: &'static str) -> Verdict {
        f.on_server_op(&mut msg(subject, "3", None), srv)
    }
    assert_eq!(
        deliver(&mut alice, &mut srv, "orders.new"),
        Verdict::Forward
    );
    assert_eq!(
        deliver(&mut alice, &mut srv, "orders.secret"),
        Verdict::Drop
    );
    assert!(
        srv.end_subscriptions.is_empty(),
        "a dropped one does not count"
    );
    assert_eq!(
        deliver(&mut alice, &mut srv, "orders.old"),
        Verdict::Forward
    );
    assert_eq!(srv.end_subscriptions, [Bytes::from_static(b"3")]);
    assert_eq!(
        deliver(&mut alice, &mut srv, "orders.late"),
        Verdict::Drop,
        "past the max"
    );
    assert!(alice.subs.contains_key(&b"3"[..]));
    alice.on_unsubscribed(&[Bytes::from_static(b"3")]);
    assert!(
        !alice.subs.contains_key(&b"3"[..]),
        "gone once the upstream has ended it"
    );
    // A queue subscription's count stays the upstream's: the edge ending it would drop
    // messages the group's other members should get.
    alice.on_client_op(&mut sub("orders.*", Some("q"), "7"), &mut ctx);
    assert_eq!(
        alice.on_client_op(&mut unsub("7", Some(2)), &mut ctx),
        Verdict::Forward
    );
    assert_eq!(alice.subs[&b"7"[..]].edge_max, None);
    // An invalid subject never becomes a subscription (the upstream refuses it).
    alice.on_client_op(&mut sub("orders..x", None, "8"), &mut ctx);
    assert!(!alice.subs.contains_key(&b"8"[..]));
    // On a subscription none of whose deliveries can be dropped, the upstream counts.
    alice.on_client_op(&mut sub("orders.new", None, "6"), &mut ctx);
    assert_eq!(
        alice.on_client_op(&mut unsub("6", Some(1)), &mut ctx),
        Verdict::Forward
    );
    alice.on_server_op(&mut msg("orders.new", "6", None), &mut srv);
    assert!(
        !alice.subs.contains_key(&b"6"[..]),
        "the last delivery ended it"
    );
    // `UNSUB sid 0` ends it at once.
    alice.on_client_op(&mut sub("orders.*", None, "4"), &mut ctx);
    alice.on_client_op(&mut unsub("4", Some(0)), &mut ctx);
    assert!(!alice.subs.contains_key(&b"4"[..]));
    // A reused sid keeps the subscription it names.
    alice.on_client_op(&mut sub("orders.*", None, "5"), &mut ctx);
    alice.on_client_op(&mut sub("orders.new", None, "5"), &mut ctx);
    assert_eq!(&alice.subs[&b"5"[..]].subject[..], b"orders.*");
}

/// A reload that refuses a subscription the client has already auto-unsubscribed says so,
/// so the session does not count its removal twice.
#[test]
fn reload_reports_subscriptions_already_unsubscribed() {
    let (mut chain, mut ctx, _, source) = setup(AuthMode::Passthrough, RULES);
    chain.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    chain.on_client_op(&mut sub("orders.*", None, "1"), &mut ctx);
    chain.on_client_op(&mut sub("orders.*", None, "2"), &mut ctx);
    assert_eq!(
        chain.on_client_op(&mut unsub("2", Some(5)), &mut ctx),
        Verdict::Answer(ServerOp::Ok),
        "the edge keeps the max"
    );
    let tighter = RULES.replace(
        r#"deny = ["orders.secret"]"#,
        r#"deny = ["orders.secret", "orders.*"]"#,
    );
    source.store(AclRules::from_str("t.toml", &tighter).unwrap());
    let reloaded = chain.on_reload(&ctx);
    assert_eq!(reloaded.unsubscribe.len(), 2, "{reloaded:?}");
    assert_eq!(reloaded.already_unsubscribed, 1, "{reloaded:?}");
}

/// An auto-unsubscribe sent while deliveries go unseen (an unrestricted subscriber) keeps
/// the subscription's entry, however many deliveries it asks for: a reload that refuses
/// the subscription still ends it, as nats-server's reload checks every one (without a
/// word to the client, for a subscription most likely over).
#[test]
fn a_reload_revokes_a_subscription_with_a_large_auto_unsubscribe() {
    let (mut chain, mut ctx, _, source) = setup(
        AuthMode::Passthrough,
        &bob_subscribing(r#"["secret.>", "public.>"]"#),
    );
    chain.on_client_op(&mut connect(r#"{"user":"bob"}"#), &mut ctx);
    chain.on_client_op(&mut sub("secret.>", None, "1"), &mut ctx);
    chain.refresh_interest();
    assert!(!chain.interest().contains(OpKind::Msg), "deliveries unseen");
    assert_eq!(
        chain.on_client_op(&mut unsub("1", Some(999_999_999)), &mut ctx),
        Verdict::Forward
    );
    let tighter = AclRules::from_str("t.toml", &bob_subscribing(r#"["public.>"]"#)).unwrap();
    source.store(tighter);
    let reloaded = chain.on_reload(&ctx);
    assert_eq!(
        reloaded,
        Reloaded {
            unsubscribe: vec![Bytes::from_static(b"1")],
            already_unsubscribed: 1,
            ..Reloaded::default()
        }
    );
    // Its last deliveries on the way are dropped until the upstream has ended it.
    chain.refresh_interest();
    assert_eq!(
        chain.on_server_op(&mut msg("secret.x", "1", None), &mut ctx),
        Verdict::Drop
    );
}

/// Maybe-ended subscriptions stay within a reload's reach, each on its own subject.
#[test]
fn maybe_ended_auto_unsubscribes_stay_within_a_reloads_reach() {
    let (mut chain, mut ctx, _, source) = setup(
        AuthMode::Passthrough,
        &bob_subscribing(r#"["a.>", "b.>", "secret.>"]"#),
    );
    chain.on_client_op(&mut connect(r#"{"user":"bob"}"#), &mut ctx);
    chain.on_client_op(&mut sub("a.x", None, "1"), &mut ctx);
    chain.on_client_op(&mut unsub("1", Some(1)), &mut ctx);
    chain.on_client_op(&mut sub("b.x", None, "2"), &mut ctx);
    chain.on_client_op(&mut unsub("2", Some(999_999_999)), &mut ctx);
    chain.refresh_interest();
    assert!(!chain.interest().contains(OpKind::Msg));
    source.store(AclRules::from_str("t.toml", &bob_subscribing(r#"["a.>"]"#)).unwrap());
    let reloaded = chain.on_reload(&ctx);
    assert_eq!(
        reloaded.unsubscribe,
        [Bytes::from_static(b"2")],
        "{reloaded:?}"
    );
}

/// A sid reused after an auto-unsubscribe sent while deliveries went unseen is a new
/// subscription, judged on its own subject at a reload; `UNSUB sid 0` ends a maybe-ended
/// one at once.
#[test]
fn a_sid_reused_after_a_maybe_ended_auto_unsubscribe_is_a_new_subscription() {
    let (mut chain, mut ctx, _, source) = setup(
        AuthMode::Passthrough,
        &bob_subscribing(r#"["a.>", "secret.>"]"#),
    );
    chain.on_client_op(&mut connect(r#"{"user":"bob"}"#), &mut ctx);
    chain.on_client_op(&mut sub("a.y", None, "3"), fresh(&mut ctx));
    chain.on_client_op(&mut unsub("3", Some(5)), fresh(&mut ctx));
    // It waits for the upstream to answer the UNSUB (what was on its way is then in).
    assert_eq!(
        chain.on_client_op(&mut sub("secret.x", None, "3"), fresh(&mut ctx)),
        Verdict::Defer
    );
    ctx.upstream_caught_up = true;
    chain.on_client_op(&mut sub("secret.x", None, "3"), &mut ctx);
    ctx.upstream_caught_up = false;
    chain.on_client_op(&mut sub("a.z", None, "4"), fresh(&mut ctx));
    chain.on_client_op(&mut unsub("4", Some(5)), &mut ctx);
    chain.on_client_op(&mut unsub("4", Some(0)), &mut ctx);
    source.store(AclRules::from_str("t.toml", &bob_subscribing(r#"["a.>"]"#)).unwrap());
    let reloaded = chain.on_reload(&ctx);
    assert_eq!(
        reloaded.unsubscribe,
        [Bytes::from_static(b"3")],
        "{reloaded:?}"
    );
    let reloaded = chain.on_reload(&ctx);
    assert!(reloaded.unsubscribe.is_empty(), "{reloaded:?}");
}

/// Rules in which the user `bob` may subscribe to `subscribe` (a TOML list), and no more.
fn bob_subscribing(subscribe: &str) -> String {
    format!("[[users]]\nuser = \"bob\"\n[users.permissions]\nsubscribe = {subscribe}\n")
}

/// What a reload that refuses the one live subscription `sid` on `subject` reports.
fn one_subscription_refused(subject: &str, sid: &'static str) -> Reloaded {
    Reloaded {
        notices: vec![ServerOp::Err(format!(
            r#"Permissions Violation for Subscription to "{subject}" (sid "{sid}")"#
        ))],
        unsubscribe: vec![Bytes::from_static(sid.as_bytes())],
        already_unsubscribed: 0,
        close: None,
    }
}

/// A reload refuses a live subscription: the client is told in nats-server's words, once,
/// the session is asked to end it at the upstream, and its deliveries still on the way are
/// dropped until the upstream has ended it.
#[test]
fn reload_applies_to_the_live_session() {
    let (mut chain, mut ctx, events, source) = setup(AuthMode::Passthrough, RULES);
    chain.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    chain.refresh_interest();
    assert_eq!(
        chain.on_client_op(&mut sub("orders.new", None, "7"), &mut ctx),
        Verdict::Forward
    );
    let tighter = RULES.replace(
        r#"deny = ["orders.secret"]"#,
        r#"deny = ["orders.secret", "orders.new"]"#,
    );
    source.store(AclRules::from_str("t.toml", &tighter).unwrap());
    assert_eq!(
        chain.on_reload(&ctx),
        one_subscription_refused("orders.new", "7")
    );
    assert_eq!(chain.on_reload(&ctx), Reloaded::default());
    // Counted once, as a refused SUB is.
    assert_eq!(
        *events.0.lock().unwrap(),
        [("alice".to_string(), DenialKind::Subscribe)]
    );
    // Another reload that still refuses it says nothing more, and one that allows it again
    // does not bring back what is being ended.
    let tighter_still = tighter.replace(
        r#"deny = ["orders.secret", "orders.new"]"#,
        r#"deny = ["orders.secret", "orders.new", "orders.other"]"#,
    );
    source.store(AclRules::from_str("t.toml", &tighter_still).unwrap());
    assert_eq!(chain.on_reload(&ctx), Reloaded::default());
    source.store(AclRules::from_str("t.toml", RULES).unwrap());
    assert_eq!(chain.on_reload(&ctx), Reloaded::default());
    assert_eq!(
        chain.on_server_op(&mut msg("orders.new", "7", None), &mut ctx),
        Verdict::Drop
    );
    // The client's own UNSUB meanwhile changes nothing: the upstream's end does.
    chain.on_client_op(&mut unsub("7", None), &mut ctx);
    assert_eq!(
        chain.on_server_op(&mut msg("orders.new", "7", None), &mut ctx),
        Verdict::Drop
    );
    chain.on_unsubscribed(&[Bytes::from_static(b"7")]);
    assert_eq!(
        chain.on_server_op(&mut msg("orders.new", "7", None), &mut ctx),
        Verdict::Forward,
        "the sid is free again"
    );
}

/// Without rules (the default configuration) the ACL looks at nothing but the CONNECT:
/// subscriptions are not tracked, so they cost nothing.
#[test]
fn without_rules_subscriptions_are_not_tracked() {
    let (_, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
    let mut nobody = lone_filter("");
    nobody.on_client_op(&mut connect(r#"{"user":"ops"}"#), &mut ctx);
    assert_eq!(nobody.interest(), Interest::of(&[OpKind::Connect]));
}

/// A user with no permissions is unrestricted, but its subscriptions are tracked all the
/// same (deliveries stay off the filter's interest): a reload that restricts the user ends
/// the ones it refuses, as nats-server checks every client's subscriptions on a reload.
#[test]
fn reload_restricting_an_unrestricted_user_ends_its_refused_subscriptions() {
    let unrestricted = "[[users]]\nuser = \"ops\"\npassword = \"pw\"\n";
    let (_, mut ctx, _, _) = setup(AuthMode::Passthrough, unrestricted);
    let mut ops = lone_filter(unrestricted);
    ops.on_client_op(&mut connect(r#"{"user":"ops","pass":"pw"}"#), &mut ctx);
    for (subject, sid) in [("orders.new", "1"), ("jobs.a", "2"), ("orders.old", "3")] {
        assert_eq!(
            ops.on_client_op(&mut sub(subject, None, sid), &mut ctx),
            Verdict::Forward
        );
    }
    // Without permissions the edge leaves `_sys_` to the upstream, which refuses it; a
    // reload before its `-ERR` arrives does not refuse it a second time.
    assert_eq!(
        ops.on_client_op(&mut sub("jobs.b", Some("_sys_"), "4"), &mut ctx),
        Verdict::Forward
    );
    ops.on_client_op(&mut unsub("3", None), &mut ctx);
    assert!(!ops.interest().contains(OpKind::Msg));
    assert!(!ops.interest().contains(OpKind::Pub));

    let restricted = format!("{unrestricted}[users.permissions]\nsubscribe = [\"jobs.>\"]\n");
    ops.settings
        .rules
        .store(AclRules::from_str("t.toml", &restricted).unwrap());
    assert_eq!(
        ops.on_reload(&ctx),
        one_subscription_refused("orders.new", "1")
    );
}

/// A SUB that reuses the sid of a subscription being ended at the upstream makes a new
/// subscription (the upstream's is gone), where a reused live sid keeps the old one.
#[test]
fn a_sid_being_ended_can_be_reused() {
    let (_, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
    let mut alice = lone_filter(RULES);
    alice.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    alice.on_client_op(&mut sub("orders.new", None, "1"), &mut ctx);
    let tighter = RULES.replace(
        r#"deny = ["orders.secret"]"#,
        r#"deny = ["orders.secret", "orders.new"]"#,
    );
    alice
        .settings
        .rules
        .store(AclRules::from_str("t.toml", &tighter).unwrap());
    assert_eq!(alice.on_reload(&ctx).unsubscribe.len(), 1);
    assert!(alice.subs_need_deliveries);
    // It waits for the upstream first: deliveries of the old one may still be on their
    // way, and must not count toward the new one.
    assert_eq!(
        alice.on_client_op(&mut sub("orders.old", None, "1"), fresh(&mut ctx)),
        Verdict::Defer
    );
    ctx.upstream_caught_up = true;
    alice.on_client_op(&mut sub("orders.old", None, "1"), &mut ctx);
    ctx.upstream_caught_up = false;
    assert_eq!(&alice.subs[&b"1"[..]].subject[..], b"orders.old");
    assert!(!alice.subs_need_deliveries);
    // The upstream's end of the old one leaves the new one alone.
    alice.on_unsubscribed(&[Bytes::from_static(b"1")]);
    assert!(alice.subs.contains_key(&b"1"[..]));
}

/// In edge mode a reload checks every client's credentials again, as nats-server does
/// (`reloadAuthorization`): a client whose user by name is gone, or now goes upstream with
/// other credentials (nats-server's client moved to another account), is closed without a
/// word; one whose credentials no longer pass (a changed password or token, a bcrypt hash
/// replaced, a token user removed) gets `Authorization Violation` and nothing else. A reload
/// that leaves a user's credentials as they were (a bcrypt hash included, which is not
/// checked again) keeps the client.
#[test]
fn reload_closes_clients_whose_credentials_no_longer_pass() {
    let hash = bcrypt::hash_with_result("s3cret", 4).unwrap().to_string();
    let other_hash = bcrypt::hash_with_result("s3cret", 4).unwrap().to_string();
    let users = |carol: &str, dave: &str| {
        format!(
            "[[users]]\nuser = \"carol\"\npassword = \"{carol}\"\n\
             [[users]]\nuser = \"dave\"\npassword = \"{dave}\"\n\
             [[users]]\nuser = \"erin\"\ntoken = \"tok\"\n"
        )
    };
    let before = users(&hash, "pw");
    let refused = Reloaded {
        close: Some((
            CloseReason::AuthorizationViolation,
            Some(errors::AUTHORIZATION_VIOLATION),
        )),
        ..Reloaded::default()
    };
    let moved = Reloaded {
        close: Some((CloseReason::UserChanged, None)),
        ..Reloaded::default()
    };
    let kept = Reloaded::default();
    let only_carol = format!("[[users]]\nuser = \"carol\"\npassword = \"{hash}\"\n");
    let cases = [
        // (who connects, the rules after, what the reload does)
        (
            r#"{"user":"carol","pass":"s3cret"}"#,
            users(&hash, "pw2"),
            &kept,
        ),
        (
            r#"{"user":"carol","pass":"s3cret"}"#,
            users(&other_hash, "pw"),
            &refused,
        ),
        (r#"{"user":"dave","pass":"pw"}"#, users(&hash, "pw"), &kept),
        (
            r#"{"user":"dave","pass":"pw"}"#,
            users(&hash, "pw2"),
            &refused,
        ),
        (
            r#"{"auth_token":"tok"}"#,
            before.replace("\"tok\"", "\"tok2\""),
            &refused,
        ),
        // A token user has no name to look up: its token no longer passes.
        (r#"{"auth_token":"tok"}"#, only_carol.clone(), &refused),
        (r#"{"user":"dave","pass":"pw"}"#, only_carol.clone(), &moved),
        (
            r#"{"user":"dave","pass":"pw"}"#,
            before.replace(
                "password = \"pw\"\n",
                "password = \"pw\"\nupstream = { user = \"restricted\", password = \"r\" }\n",
            ),
            &moved,
        ),
    ];
    for (json, after, expected) in cases {
        let (mut chain, mut ctx, _, source) = setup(AuthMode::Edge, &before);
        if let Verdict::Offload(check) = chain.on_client_op(&mut connect(json), &mut ctx) {
            check.run();
        }
        assert_eq!(
            chain.on_client_op(&mut connect(json), &mut ctx),
            Verdict::Changed,
            "{json}"
        );
        // A subscription no rule allows after the reload: a client that is closed is not
        // told about it first, as nats-server judges subscriptions only of clients it keeps.
        chain.on_client_op(&mut sub("orders.x", None, "1"), &mut ctx);
        let after =
            format!("[default_permissions]\nsubscribe = {{ allow = [\"public.>\"] }}\n{after}");
        source.store(AclRules::from_str("t.toml", &after).unwrap());
        let reloaded = chain.on_reload(&ctx);
        if expected.close.is_some() {
            assert_eq!(&reloaded, expected, "{json} under {after}");
            assert!(matches!(
                chain.on_client_op(&mut ClientOp::Ping, &mut ctx),
                Verdict::Close { .. }
            ));
        } else {
            assert!(reloaded.close.is_none(), "{json} under {after}");
            assert_eq!(reloaded.unsubscribe, [Bytes::from_static(b"1")]);
        }
    }
}

/// A client given the `no_auth_user` stays that user while the user's credentials stand,
/// whoever `no_auth_user` names after a reload, as nats-server logs it in as that user.
#[test]
fn a_no_auth_user_client_stays_its_user_across_a_reload() {
    let rules = |anonymous: &str| {
        format!(
            "no_auth_user = \"{anonymous}\"\n\
             [[users]]\nuser = \"guest\"\n[[users]]\nuser = \"visitor\"\n"
        )
    };
    let (mut chain, mut ctx, _, source) = setup(AuthMode::Edge, &rules("guest"));
    assert_eq!(
        chain.on_client_op(&mut connect("{}"), &mut ctx),
        Verdict::Changed
    );
    // One that named it is judged by its name, as a new login: with no password, only the
    // no_auth_user may be named.
    let (mut named, mut named_ctx, _, named_source) = setup(AuthMode::Edge, &rules("guest"));
    assert_eq!(
        named.on_client_op(&mut connect(r#"{"user":"guest"}"#), &mut named_ctx),
        Verdict::Changed
    );
    source.store(AclRules::from_str("t.toml", &rules("visitor")).unwrap());
    named_source.store(AclRules::from_str("t.toml", &rules("visitor")).unwrap());
    assert_eq!(
        named.on_reload(&named_ctx).close,
        Some((
            CloseReason::AuthorizationViolation,
            Some(errors::AUTHORIZATION_VIOLATION)
        ))
    );
    assert_eq!(chain.on_reload(&ctx), Reloaded::default());
    assert_eq!(
        ctx.identity.as_ref().unwrap().user.as_deref(),
        Some("guest")
    );
    // Gone: closed without a word.
    source.store(
        AclRules::from_str(
            "t.toml",
            "no_auth_user = \"visitor\"\n[[users]]\nuser = \"visitor\"\n",
        )
        .unwrap(),
    );
    assert_eq!(
        chain.on_reload(&ctx).close,
        Some((CloseReason::UserChanged, None))
    );
}

/// After the upstream dropped every subscription (a second CONNECT), a reused sid is a new
/// subscription: its entry names its new subject, which a reload then judges.
#[test]
fn dropped_subscriptions_are_forgotten() {
    let mut alice = lone_filter(RULES);
    let mut ctx = setup(AuthMode::Passthrough, RULES).1;
    alice.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    alice.on_client_op(&mut sub("orders.a", None, "1"), &mut ctx);
    alice.on_subscriptions_dropped();
    assert!(alice.subs.is_empty());
    // It waits for the upstream first: deliveries of the dropped one may be on their way.
    assert_eq!(
        alice.on_client_op(&mut sub("orders.b", None, "1"), fresh(&mut ctx)),
        Verdict::Defer
    );
    ctx.upstream_caught_up = true;
    alice.on_client_op(&mut sub("orders.b", None, "1"), &mut ctx);
    ctx.upstream_caught_up = false;
    assert_eq!(&alice.subs[&b"1"[..]].subject[..], b"orders.b");
}

/// The bcrypt check a reload skips: a hash the reload left as it was still admits the client,
/// even once the check's cached result is gone.
#[test]
fn reload_keeps_a_client_whose_bcrypt_hash_is_unchanged() {
    let hash = bcrypt::hash_with_result("s3cret", 4).unwrap().to_string();
    let rules = format!("[[users]]\nuser = \"carol\"\npassword = \"{hash}\"\n");
    let (_, mut ctx, _, _) = setup(AuthMode::Edge, &rules);
    let source = Arc::new(RuleSource::new(
        AclRules::from_str("t.toml", &rules).unwrap(),
    ));
    let settings = AclSettings {
        mode: AuthMode::Edge,
        operator_mode: false,
        upstream: None,
        rules: source.clone(),
        events: Arc::new(Recorded::default()),
    };
    let mut carol = AclFilter::new(Arc::new(settings), Arc::new(SecretChecker::default()));
    let json = r#"{"user":"carol","pass":"s3cret"}"#;
    let Verdict::Offload(check) = carol.on_client_op(&mut connect(json), &mut ctx) else {
        panic!("not offloaded");
    };
    check.run();
    assert_eq!(
        carol.on_client_op(&mut connect(json), &mut ctx),
        Verdict::Changed
    );
    carol.checker = Arc::new(SecretChecker::default());
    source
        .store(AclRules::from_str("t.toml", &format!("{rules}[[users]]\nuser = \"x\"\n")).unwrap());
    assert_eq!(carol.on_reload(&ctx), Reloaded::default());
}

/// nats-server refuses a SUB the edge's rules allowed (its own permissions, in passthrough
/// mode): the entry goes, so refused SUBs cannot grow the table, a reused sid names its new
/// subject, and a later reload does not end the new subscription for the refused one.
#[test]
fn a_subscription_the_upstream_refuses_leaves_no_entry() {
    let (mut chain, mut ctx, _, source) = setup(AuthMode::Passthrough, RULES);
    chain.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    chain.refresh_interest();
    let refusal = |text: &str| ServerOp::Err(text.to_string());
    for sid in ["1", "2", "3"] {
        assert_eq!(
            chain.on_client_op(&mut sub("orders.x", None, sid), &mut ctx),
            Verdict::Forward
        );
    }
    // One refusal per SUB, as nats-server sends them.
    for _ in 0..3 {
        assert_eq!(
            chain.on_server_op(
                &mut refusal(r#"Permissions Violation for Subscription to "orders.x""#),
                &mut ctx
            ),
            Verdict::Forward,
            "the client reads the refusal"
        );
    }
    // The sid reused on a subject nats-server takes.
    chain.on_client_op(&mut sub("orders.y", None, "1"), &mut ctx);
    let tighter = RULES.replace(
        r#"deny = ["orders.secret"]"#,
        r#"deny = ["orders.secret", "orders.x"]"#,
    );
    source.store(AclRules::from_str("t.toml", &tighter).unwrap());
    assert_eq!(chain.on_reload(&ctx), Reloaded::default());

    let mut alice = lone_filter(RULES);
    alice.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    alice.on_client_op(&mut sub("jobs.a", Some("workers"), "1"), &mut ctx);
    alice.on_client_op(&mut sub("orders.a", None, "2"), &mut ctx);
    alice.on_client_op(&mut sub("orders.z", None, "3"), &mut ctx);
    alice.on_client_op(&mut sub("orders.z", None, "4"), &mut ctx);
    // Other errors, and refusals of something else, change nothing.
    for text in [
        "Maximum Payload Violation",
        r#"Permissions Violation for Publish to "jobs.a""#,
        r#"Permissions Violation for Subscription to "jobs.a" using queue "other""#,
        r#"Permissions Violation for Subscription to "jobs.a""#,
        r#"Permissions Violation for Subscription to "orders.a" (sid "9")"#,
        r#"Permissions Violation for Subscription to "orders.a"x"#,
    ] {
        alice.on_server_op(&mut refusal(text), &mut ctx);
        assert_eq!(alice.subs.len(), 4, "{text}");
    }
    alice.on_server_op(
        &mut refusal(r#"Permissions Violation for Subscription to "jobs.a" using queue "workers""#),
        &mut ctx,
    );
    assert!(!alice.subs.contains_key(&b"1"[..]));
    alice.on_server_op(
        &mut refusal(r#"Permissions Violation for Subscription to "orders.a""#),
        &mut ctx,
    );
    assert!(!alice.subs.contains_key(&b"2"[..]));
    // nats-server's reload names the sid it removed.
    alice.on_server_op(
        &mut refusal(r#"Permissions Violation for Subscription to "orders.z" (sid "4")"#),
        &mut ctx,
    );
    assert!(alice.subs.contains_key(&b"3"[..]) && !alice.subs.contains_key(&b"4"[..]));
    alice.on_client_op(&mut sub("jobs.b", Some("workers"), "5"), &mut ctx);
    alice.on_server_op(
        &mut refusal(
            r#"Permissions Violation for Subscription to "jobs.b" using queue "workers" (sid "5")"#,
        ),
        &mut ctx,
    );
    assert!(!alice.subs.contains_key(&b"5"[..]));

    // A refusal is for the earliest SUB on its subject: a later one may be live upstream.
    let mut bob = lone_filter(RULES);
    bob.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    for sid in ["9", "1", "5"] {
        bob.on_client_op(&mut sub("orders.w", None, sid), &mut ctx);
    }
    bob.on_server_op(
        &mut refusal(r#"Permissions Violation for Subscription to "orders.w""#),
        &mut ctx,
    );
    let mut left: Vec<_> = bob.subs.keys().map(|k| k.to_vec()).collect();
    left.sort();
    assert_eq!(left, [b"1".to_vec(), b"5".to_vec()]);
    bob.on_server_op(
        &mut refusal(r#"Permissions Violation for Subscription to "orders.w", too many tokens"#),
        &mut ctx,
    );
    assert_eq!(bob.subs.keys().collect::<Vec<_>>(), [&b"5"[..]]);
}

/// SUBs nats-server refuses at its own subscription limit leave no entry: a client could
/// otherwise grow the table without end with refused SUBs. A refusal takes the newest entry
/// of a SUB not yet answered; at the size the limit was met, each SUB then waits for the
/// upstream to answer the ones before it, so that a refusal is the latest SUB's.
#[test]
fn subs_refused_at_the_upstreams_limit_leave_no_entry() {
    let (_, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
    let mut alice = lone_filter(RULES);
    alice.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    let limit = || ServerOp::Err("maximum subscriptions exceeded".into());
    let sids = |alice: &AclFilter| {
        let mut sids: Vec<_> = alice.subs.keys().cloned().collect();
        sids.sort();
        sids
    };
    // The upstream's limit is 2: of four SUBs sent together, it refuses the last two.
    for (subject, sid) in [
        ("orders.a", "1"),
        ("orders.b", "2"),
        ("orders.c", "3"),
        ("orders.d", "4"),
    ] {
        assert_eq!(
            alice.on_client_op(&mut sub(subject, None, sid), fresh(&mut ctx)),
            Verdict::Forward
        );
    }
    for _ in 0..2 {
        assert_eq!(alice.on_server_op(&mut limit(), &mut ctx), Verdict::Forward);
    }
    assert_eq!(sids(&alice), [&b"1"[..], &b"2"[..]]);

    // At that size each SUB waits for the upstream to catch up, then goes; its refusal
    // takes its entry, and only its.
    let alone = |alice: &mut AclFilter, ctx: &mut SessionCtx, subject, sid| {
        assert_eq!(
            alice.on_client_op(&mut sub(subject, None, sid), fresh(ctx)),
            Verdict::Defer
        );
        ctx.upstream_caught_up = true;
        assert_eq!(
            alice.on_client_op(&mut sub(subject, None, sid), ctx),
            Verdict::Forward
        );
        ctx.upstream_caught_up = false;
    };
    alone(&mut alice, &mut ctx, "orders.e", "5");
    alice.on_server_op(&mut limit(), &mut ctx);
    assert_eq!(sids(&alice), [&b"1"[..], &b"2"[..]]);
    // A refused SUB that reused a live sid took nothing: the subscription it names stays.
    alone(&mut alice, &mut ctx, "orders.a", "1");
    alice.on_server_op(&mut limit(), &mut ctx);
    assert_eq!(sids(&alice), [&b"1"[..], &b"2"[..]]);
    // Below that size SUBs go as they come again.
    alice.on_client_op(&mut unsub("2", None), fresh(&mut ctx));
    assert_eq!(
        alice.on_client_op(&mut sub("orders.f", None, "6"), fresh(&mut ctx)),
        Verdict::Forward
    );
}

/// A SUB the ACL took, then held by a filter after it (the limits') and shown again once
/// the upstream caught up, has not gone upstream: a refusal at the upstream's limit that
/// follows is its, and takes its entry.
#[test]
fn a_sub_shown_again_is_the_one_a_following_refusal_takes() {
    let (_, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
    let mut alice = lone_filter(RULES);
    alice.on_client_op(&mut connect(r#"{"user":"alice"}"#), fresh(&mut ctx));
    alice.on_client_op(&mut sub("orders.a", None, "1"), fresh(&mut ctx));
    assert_eq!(
        alice.on_client_op(&mut sub("orders.b", None, "2"), fresh(&mut ctx)),
        Verdict::Forward
    );
    ctx.upstream_caught_up = true;
    assert_eq!(
        alice.on_client_op(&mut sub("orders.b", None, "2"), &mut ctx),
        Verdict::Forward
    );
    ctx.upstream_caught_up = false;
    alice.on_server_op(
        &mut ServerOp::Err("maximum subscriptions exceeded".into()),
        &mut ctx,
    );
    assert_eq!(alice.subs.keys().collect::<Vec<_>>(), [&b"1"[..]]);
}

/// A first refusal at the upstream's limit for a SUB that made no entry (it reused a live
/// sid, so it waited for the upstream to answer everything before it) takes no entry: the
/// subscriptions already answered are not the refused SUB's.
#[test]
fn a_refused_sub_that_reused_a_sid_takes_no_entry() {
    let (_, mut ctx, _, _) = setup(AuthMode::Passthrough, RULES);
    let mut alice = lone_filter(RULES);
    alice.on_client_op(&mut connect(r#"{"user":"alice"}"#), &mut ctx);
    for (subject, sid) in [("orders.a", "1"), ("orders.b", "2"), ("orders.c", "3")] {
        alice.on_client_op(&mut sub(subject, None, sid), fresh(&mut ctx));
    }
    assert_eq!(
        alice.on_client_op(&mut sub("orders.a", None, "1"), fresh(&mut ctx)),
        Verdict::Defer
    );
    ctx.upstream_caught_up = true;
    assert_eq!(
        alice.on_client_op(&mut sub("orders.a", None, "1"), &mut ctx),
        Verdict::Forward
    );
    ctx.upstream_caught_up = false;
    alice.on_server_op(
        &mut ServerOp::Err("maximum subscriptions exceeded".into()),
        &mut ctx,
    );
    assert_eq!(alice.subs.len(), 3);
}
