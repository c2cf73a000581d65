//! The ACL from the command line and the process: the `acl explain` examples of
//! docs/acl.md run as written, `nats-edge check` on broken rule files, and rule reload on
//! SIGHUP for live connections.

mod common;

use std::path::Path;

use common::*;

/// nats-server knows the users and their passwords; the edge enforces the permissions.
const SERVER_USERS_ONLY: &str = r#"
authorization {
  users = [
    { user: orders, password: pw }
    { user: admin, password: pw }
  ]
}
"#;

/// Splits a console command line into words: whitespace separates, single quotes group.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    if in_word {
        out.push(word);
    }
    out
}

/// Every ```console block of `markdown` whose first line is an `acl explain` command: the
/// command line and the lines after it.
fn explain_examples(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut examples = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != "```console" {
            continue;
        }
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_end() != "```")
            .collect();
        let Some(first) = block.first() else { continue };
        if first.starts_with("$ nats-edge acl explain") {
            let output = block[1..].iter().map(|l| l.to_string()).collect();
            examples.push((first.to_string(), output));
        }
    }
    examples
}

#[test]
fn acl_explain_examples_in_the_docs_are_exact() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(Path::new(root).join("docs/acl.md")).unwrap();
    let examples = explain_examples(&doc);
    assert!(
        examples.len() >= 8,
        "docs/acl.md has {} `acl explain` examples; expected at least 8",
        examples.len()
    );
    for (command, expected) in &examples {
        let args = words(command.trim_start_matches('$'));
        assert_eq!(args[0], "nats-edge", "{command}");
        let out = nats_edge_command()
            .args(&args[1..])
            .current_dir(root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command}: {:?}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            got, *expected,
            "the output of `{command}` differs from docs/acl.md"
        );
        assert!(stdout.ends_with('\n'), "{command}: {stdout:?}");
    }
}

/// Runs `nats-edge check -c` on a config naming `rules.toml` (relative, beside it) with
/// `rules` as its text; returns the exit code and stderr.
fn check_rules(rules: &str) -> (Option<i32>, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats-edge.toml");
    std::fs::write(
        &config,
        "[upstream]\nurls = [\"nats://127.0.0.1:4223\"]\n[auth]\nrules = [\"rules.toml\"]\n",
    )
    .unwrap();
    let rule_file = dir.path().join("rules.toml");
    std::fs::write(&rule_file, rules).unwrap();
    let out = nats_edge_command()
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The tempdir is gone after this; only the path's text is compared.
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        rule_file,
    )
}

#[test]
fn check_names_the_rule_file_and_line() {
    let cases = [
        (
            "[[users]]\nuser = \"a\"\n\n[[users]]\nuser = \"a\"\n",
            5,
            "duplicate user `a`, first defined at",
        ),
        (
            "[[users]]\nuser = \"a\"\n[users.permissions]\npublish = [\"ok.>\", \"bad..subject\"]\n",
            4,
            "`users.0.permissions.publish.allow`: `bad..subject`: invalid subject",
        ),
        (
            "# anonymous clients\n\nno_auth_user = \"ghost\"\n[[users]]\nuser = \"a\"\n",
            3,
            "`no_auth_user`: unknown user `ghost`",
        ),
    ];
    for (rules, line, reason) in cases {
        let (code, stderr, file) = check_rules(rules);
        assert_eq!(code, Some(1), "{rules}\nstderr: {stderr}");
        let place = format!("{}:{line}:", file.display());
        assert!(stderr.contains(&place), "expected {place:?} in {stderr:?}");
        assert!(stderr.contains(reason), "expected {reason:?} in {stderr:?}");
        assert!(
            stderr.starts_with("nats-edge: invalid configuration: auth.rules: "),
            "{stderr}"
        );
    }
    // The duplicate names both places.
    let (_, stderr, file) = check_rules("[[users]]\nuser = \"a\"\n\n[[users]]\nuser = \"a\"\n");
    assert!(
        stderr.contains(&format!("first defined at {}:2", file.display())),
        "{stderr}"
    );
}

/// The JSON log line whose message is `message`, at or after line `from`.
fn wait_log(edge: &EdgeProcess, from: usize, message: &str) -> serde_json::Value {
    edge.log()
        .wait_for(from, WAIT, |line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["message"] == message).then_some(v)
        })
        .unwrap_or_else(|| panic!("no {message:?} log line:\n{}", edge.log().dump()))
        .1
}

/// An edge in front of `server` whose `[auth]` table has `auth` and the rule file `rules`
/// (`rules.toml` in the returned directory, to change before a reload).
fn edge_with_rules(
    server: &NatsServer,
    auth: &str,
    rules: &str,
) -> (tempfile::TempDir, EdgeProcess) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    let config = dir.path().join("nats-edge.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
             [upstream]\nurls = [{:?}]\n[log]\nformat = \"json\"\n\
             [auth]\n{auth}rules = [\"rules.toml\"]\n",
            server.url()
        ),
    )
    .unwrap();
    let edge = EdgeProcess::spawn(&["-c", config.to_str().unwrap()], &[]);
    (dir, edge)
}

fn hup(edge: &EdgeProcess) {
    send_signal(edge.pid(), "HUP");
}

async fn connect_as(edge: &EdgeProcess, user: &str) -> RawConn {
    connect_as_at(edge.addr(), user).await
}

/// A raw client logged in as `user` with password `pw`, at `addr` (the edge or a server).
async fn connect_as_at(addr: std::net::SocketAddr, user: &str) -> RawConn {
    let (mut raw, _) = RawConn::connect_info(addr).await;
    let reply = raw
        .roundtrip(
            format!(
                "CONNECT {{\"user\":\"{user}\",\"pass\":\"pw\",\"verbose\":false,\"pedantic\":false}}\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(show(&reply.bytes), "", "CONNECT as {user}");
    assert!(!reply.closed, "CONNECT as {user} closed the connection");
    raw
}

const RULES_BEFORE: &str = r#"
[[users]]
user = "orders"
[users.permissions]
publish = ["orders.>"]
subscribe = { allow = ["orders.>"], deny = ["orders.secret"] }

[[users]]
user = "admin"
[users.permissions]
publish = ">"
subscribe = ">"
"#;

const RULES_AFTER: &str = r#"
[[users]]
user = "orders"
[users.permissions]
publish = { allow = ["orders.>"], deny = ["orders.new"] }
subscribe = { allow = ["orders.>"], deny = ["orders.secret", "orders.watch"] }

[[users]]
user = "admin"
[users.permissions]
publish = ">"
subscribe = ">"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_for_live_connections_and_keeps_them_on_a_bad_file() {
    let server = NatsServer::start_opts(ServerOpts {
        args: vec!["-m".into(), "-1".into()],
        config: Some(SERVER_USERS_ONLY.to_string()),
    });
    let monitor = server.monitor_port();
    let (dir, edge) = edge_with_rules(&server, "", RULES_BEFORE);
    let rules = dir.path().join("rules.toml");

    let mut orders = connect_as(&edge, "orders").await;
    let mut admin = connect_as(&edge, "admin").await;
    let reply = orders
        .roundtrip(b"SUB orders.watch 1\r\nPUB orders.new 1\r\na\r\n")
        .await;
    assert_eq!(show(&reply.bytes), "", "before the reload");
    // A verbose client with the same subscription: the edge's own UNSUB at the reload must
    // not show it a `+OK` it did not ask for.
    let (mut loud, _) = RawConn::connect_info(edge.addr()).await;
    let reply = loud
        .roundtrip(
            b"CONNECT {\"user\":\"orders\",\"pass\":\"pw\",\"verbose\":true}\r\n\
              SUB orders.watch 9\r\n",
        )
        .await;
    assert_eq!(show(&reply.bytes), show(b"+OK\r\n+OK\r\n"));
    let watching = |connz: &serde_json::Value| -> usize {
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["authorized_user"] == "orders")
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|s| s == "orders.watch")
            .count()
    };
    let monitor_addr = std::net::SocketAddr::from(([127, 0, 0, 1], monitor));
    let upstream_subs = || async {
        let (status, body) = http_get(monitor_addr, "/connz?subs=1&auth=1").await;
        assert_eq!(status, 200, "{body}");
        watching(&serde_json::from_str(&body).unwrap())
    };
    assert_eq!(
        upstream_subs().await,
        2,
        "both subscriptions at nats-server"
    );
    // The subscription receives.
    assert_eq!(
        show(&admin.roundtrip(b"PUB orders.watch 2\r\nw1\r\n").await.bytes),
        ""
    );
    assert_eq!(
        show(&orders.roundtrip(b"").await.bytes),
        show(b"MSG orders.watch 1 2\r\nw1\r\n")
    );
    assert_eq!(
        show(&loud.roundtrip(b"").await.bytes),
        show(b"MSG orders.watch 9 2\r\nw1\r\n")
    );

    // New rules: orders.new may no longer be published, orders.watch no longer read.
    std::fs::write(&rules, RULES_AFTER).unwrap();
    let from = edge.log().len();
    hup(&edge);
    wait_log(&edge, from, "ACL, rewrite and tagging rules reloaded");

    // The client is told at once of its subscription the new rules refuse, in nats-server's
    // words, without having sent anything; the verbose one sees no `+OK` for the edge's
    // UNSUB.
    let notice = orders.read_until(b"\r\n").await;
    assert_eq!(
        show(&notice.bytes),
        show(b"-ERR 'Permissions Violation for Subscription to \"orders.watch\" (sid \"1\")'\r\n")
    );
    let notice = loud.read_until(b"\r\n").await;
    assert_eq!(
        show(&notice.bytes),
        show(b"-ERR 'Permissions Violation for Subscription to \"orders.watch\" (sid \"9\")'\r\n")
    );
    assert_eq!(show(&loud.roundtrip(b"").await.bytes), "", "a stray +OK");
    let reply = orders.roundtrip(b"PUB orders.new 1\r\na\r\n").await;
    assert_eq!(
        show(&reply.bytes),
        show(b"-ERR 'Permissions Violation for Publish to \"orders.new\"'\r\n")
    );
    assert!(!reply.closed, "a refused publish closed the connection");
    // Both subscriptions are gone at nats-server, as its own reload removes them (each
    // client's PING above went after the edge's UNSUB).
    assert_eq!(
        upstream_subs().await,
        0,
        "subscriptions left at nats-server"
    );
    assert_eq!(
        show(&orders.roundtrip(b"PUB orders.other 1\r\na\r\n").await.bytes),
        "",
        "a still-allowed publish after the reload"
    );
    // The subscription made before the reload stops receiving.
    assert_eq!(
        show(&admin.roundtrip(b"PUB orders.watch 2\r\nw2\r\n").await.bytes),
        ""
    );
    let reply = orders.roundtrip(b"").await;
    assert_eq!(
        show(&reply.bytes),
        "",
        "a subscription the new rules refuse still receives"
    );
    assert!(!reply.closed);
    // A new SUB to it is refused.
    assert_eq!(
        show(&orders.roundtrip(b"SUB orders.watch 2\r\n").await.bytes),
        show(b"-ERR 'Permissions Violation for Subscription to \"orders.watch\"'\r\n")
    );

    // A broken file: the reload fails, names the file and line, and the rules stay.
    std::fs::write(
        &rules,
        "[[users]]\nuser = \"orders\"\n[users.permissions]\npublish = [\"orders..bad\"]\n",
    )
    .unwrap();
    let from = edge.log().len();
    hup(&edge);
    let line = wait_log(
        &edge,
        from,
        "configuration reload failed; keeping the running configuration",
    );
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("auth.rules: {}:4:", rules.display())),
        "the error names the key, rules.toml and its line: {line}"
    );
    assert_eq!(
        show(&orders.roundtrip(b"PUB orders.new 1\r\na\r\n").await.bytes),
        show(b"-ERR 'Permissions Violation for Publish to \"orders.new\"'\r\n"),
        "the reloaded rules still apply"
    );
    assert_eq!(
        show(&orders.roundtrip(b"PUB orders.other 1\r\na\r\n").await.bytes),
        ""
    );
    // A connection made after the failed reload gets the same rules.
    let mut late = connect_as(&edge, "orders").await;
    assert_eq!(
        show(&late.roundtrip(b"PUB orders.new 1\r\na\r\n").await.bytes),
        show(b"-ERR 'Permissions Violation for Publish to \"orders.new\"'\r\n")
    );
    assert!(late.is_open().await);
    assert!(orders.is_open().await);
}

/// In `edge` mode a reload checks every live client's credentials again, as nats-server's
/// reload does, and the clients get the same bytes as from a nats-server whose own users
/// were reloaded the same way: a client whose user is gone is closed without a word (it
/// logs in again), one whose password changed is told `Authorization Violation`, at once,
/// without having sent anything; a client whose user is unchanged stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_closes_edge_clients_the_new_rules_no_longer_admit() {
    let server = NatsServer::start();
    let users = |names: &[(&str, &str)]| {
        names
            .iter()
            .map(|(user, pass)| format!("[[users]]\nuser = \"{user}\"\npassword = \"{pass}\"\n"))
            .collect::<String>()
    };
    let server_users = |names: &[(&str, &str)]| {
        let list: String = names
            .iter()
            .map(|(user, pass)| format!("{{ user: {user}, password: {pass} }}\n"))
            .collect();
        format!("authorization {{ users = [\n{list}] }}\n")
    };
    let before = [("carol", "pw"), ("dave", "pw"), ("erin", "pw")];
    let after = [("dave", "pw2"), ("erin", "pw")];
    let (dir, edge) = edge_with_rules(&server, "mode = \"edge\"\n", &users(&before));
    let rules = dir.path().join("rules.toml");
    let direct = NatsServer::start_with_config(&server_users(&before));
    let mut through_edge = Vec::new();
    let mut straight = Vec::new();
    for user in ["carol", "dave", "erin"] {
        through_edge.push(connect_as_at(edge.addr(), user).await);
        straight.push(connect_as_at(direct.addr(), user).await);
    }

    std::fs::write(&rules, users(&after)).unwrap();
    direct.rewrite_config(&server_users(&after));
    let from = edge.log().len();
    hup(&edge);
    direct.signal("HUP");
    let expected = ["", "-ERR 'Authorization Violation'\r\n"];
    for (i, expected) in expected.iter().enumerate() {
        assert_eq!(
            show(&straight[i].read_to_close().await),
            show(expected.as_bytes())
        );
        assert_eq!(
            show(&through_edge[i].read_to_close().await),
            show(expected.as_bytes())
        );
    }
    for (user, message) in [
        (
            "carol",
            "user changed by a reload; closing the connection for it to log in again",
        ),
        (
            "dave",
            "no longer authorized after a reload; closing the connection",
        ),
    ] {
        edge.log()
            .wait_for(from, WAIT, |line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == message && v["user"] == user).then_some(())
            })
            .unwrap_or_else(|| panic!("no log line for {user}:\n{}", edge.log().dump()));
    }
    assert!(
        through_edge[2].is_open().await,
        "an unchanged user was closed"
    );
    assert!(straight[2].is_open().await);
}

/// nats-server's own permissions (here `orders` may not read `orders.watch`) refuse a SUB the
/// edge's rules allow. The edge forgets that subscription on nats-server's `-ERR`, so a later
/// reload that refuses its subject does not end the subscription that reused its sid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_nats_server_refuses_is_forgotten() {
    let server = NatsServer::start_with_config(
        r#"
authorization {
  users = [
    { user: orders, password: pw, permissions: { subscribe: { deny: ["orders.watch"] } } }
    { user: admin, password: pw }
  ]
}
"#,
    );
    let (dir, edge) = edge_with_rules(&server, "", RULES_BEFORE);
    let mut orders = connect_as(&edge, "orders").await;
    let mut admin = connect_as(&edge, "admin").await;
    let reply = orders.roundtrip(b"SUB orders.watch 1\r\n").await;
    assert_eq!(
        show(&reply.bytes),
        show(b"-ERR 'Permissions Violation for Subscription to \"orders.watch\"'\r\n")
    );
    // The sid again, on a subject nats-server allows.
    assert_eq!(
        show(&orders.roundtrip(b"SUB orders.other 1\r\n").await.bytes),
        ""
    );

    // The new rules refuse orders.watch: no subscription of this client is on it.
    std::fs::write(dir.path().join("rules.toml"), RULES_AFTER).unwrap();
    let from = edge.log().len();
    hup(&edge);
    wait_log(&edge, from, "ACL, rewrite and tagging rules reloaded");
    assert_eq!(
        show(&admin.roundtrip(b"PUB orders.other 2\r\nhi\r\n").await.bytes),
        ""
    );
    let reply = orders.roundtrip(b"").await;
    assert_eq!(show(&reply.bytes), show(b"MSG orders.other 1 2\r\nhi\r\n"));
}

/// `nats-edge explain` in `edge` mode answers for the client the running edge would make:
/// with no `--user`, the `no_auth_user`; a user the rules do not know is refused at login.
/// Every rule file is loaded whatever the answer, so a broken one exits 1 even for a
/// subject the ACL refuses. Tagging comes before rewrite, as in the session.
#[test]
fn explain_answers_for_the_client_the_edge_would_make() {
    let dir = tempfile::tempdir().unwrap();
    let users = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/filters/rules/acl/edge-users.toml"
    );
    let config = dir.path().join("edge.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[upstream]\nurls = [\"nats://127.0.0.1:4223\"]\n\
                 [auth]\nmode = \"edge\"\nrules = [{users:?}]\n{extra}"
            ),
        )
        .unwrap()
    };
    let explain = |args: &[&str]| {
        let out = nats_edge_command()
            .args(["explain", "-c"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    write("");
    let (ok, anonymous, _) = explain(&["pub", "orders.x"]);
    assert!(ok);
    assert!(anonymous.contains("user: guest"), "{anonymous}");
    assert!(anonymous.contains("refused at the edge"), "{anonymous}");
    let (ok, unknown, _) = explain(&["--user", "mallory", "pub", "orders.x"]);
    assert!(ok);
    assert!(
        unknown.contains("unknown user `mallory`") && !unknown.contains("[acl]"),
        "{unknown}"
    );
    // A certificate-only user cannot log in on a listener that asks for no certificate.
    let (ok, device, _) = explain(&["--user", "device-7", "pub", "telemetry.device-7.t"]);
    assert!(ok);
    assert!(
        device.contains("only with a client certificate"),
        "{device}"
    );
    // `acl explain` with the configuration's rules refuses the same unknown user.
    let out = nats_edge_command()
        .args(["acl", "explain", "-c"])
        .arg(&config)
        .args(["--user", "mallory", "pub", "orders.x"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unknown user `mallory`"), "{text}");
    let (ok, alice, _) = explain(&["--user", "alice", "pub", "orders.x"]);
    assert!(ok);
    assert!(alice.contains("with its password"), "{alice}");
    let (tagging, rewrite) = (alice.find("[tagging]"), alice.find("[rewrite]"));
    assert!(tagging.is_some() && tagging < rewrite, "{alice}");

    // A rewrite set that does not load fails the command, refused subject or not.
    let broken = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/filters/rules/invalid/irreversible.toml"
    );
    write(&format!(
        "[rewrite]\nsets = {{ bad = {broken:?} }}\ndefault = \"bad\"\n"
    ));
    let (ok, _, err) = explain(&["pub", "orders.x"]);
    assert!(!ok, "{err}");

    // In passthrough mode a client that presents no name is the no_auth_user too, as
    // nats-server makes it its own, and is not refused at the edge.
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurls = [\"nats://127.0.0.1:4223\"]\n\
             [auth]\nmode = \"passthrough\"\nrules = [{users:?}]\n"
        ),
    )
    .unwrap();
    let (ok, anonymous, _) = explain(&["pub", "public.news"]);
    assert!(ok);
    assert!(
        anonymous.contains("user: guest") && anonymous.contains("passthrough mode: no name"),
        "{anonymous}"
    );
    assert!(
        !anonymous.contains("refused at the edge's login"),
        "{anonymous}"
    );
}
