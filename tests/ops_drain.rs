//! SIGTERM drains: listeners close, live clients get nats-server's lame-duck INFO
//! (`"ldm":true`), the process exits 0 once they leave (within the grace period); SIGINT
//! during the drain exits at once, a second SIGTERM does not.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn spawn_edge(server: &NatsServer, grace: &str, timeout: &str) -> EdgeProcess {
    EdgeProcess::spawn(
        &["--listen", "127.0.0.1:0", "--upstream", &server.url()],
        &[
            ("NATS_EDGE_ADMIN__LISTEN", "127.0.0.1:0"),
            ("NATS_EDGE_DRAIN__GRACE_PERIOD", grace),
            ("NATS_EDGE_DRAIN__TIMEOUT", timeout),
        ],
    )
}

/// `raw` is still served while the edge drains (its PING gets its PONG); then, the last
/// client, it leaves, the drain ends and the edge exits 0.
async fn served_until_it_leaves(edge: &mut EdgeProcess, mut raw: RawConn) {
    let reply = raw.roundtrip(b"").await;
    assert!(!reply.closed, "{}", reply.text());
    drop(raw);
    let status = edge.wait_exit().await;
    assert!(status.success(), "{}", edge.log().dump());
}

/// A raw client that declared protocol 1 (it takes async INFOs) and is in step.
async fn protocol_one_client(edge: &EdgeProcess) -> (RawConn, serde_json::Value) {
    let (mut raw, info) = RawConn::connect_info(edge.addr()).await;
    let reply = raw
        .roundtrip(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\n")
        .await;
    assert!(!reply.closed, "{}", reply.text());
    (raw, info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_lame_duck_refuses_new_clients_and_exits_when_clients_leave() {
    let server = NatsServer::start();
    let grace = Duration::from_secs(30);
    let mut edge = spawn_edge(&server, "30s", "60s");
    let admin = edge.admin_addr();
    let (mut raw, first_info) = protocol_one_client(&edge).await;

    let signalled = Instant::now();
    send_signal(edge.pid(), "TERM");
    // nats-server's own INFO after the first PING may come first.
    let ldm = loop {
        let info = raw.read_info().await;
        if info.get("ldm").is_some() {
            break info;
        }
        assert_eq!(info["connect_info"], true, "an unexpected INFO: {info}");
    };
    assert_eq!(ldm["ldm"], true, "{ldm}");
    assert_eq!(
        ldm["port"], first_info["port"],
        "the edge's own address: {ldm}"
    );
    assert_eq!(ldm["server_id"], first_info["server_id"], "{ldm}");
    assert!(ldm.get("nonce").is_none(), "{ldm}");

    // The listener is closed: new clients are refused by the kernel.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(edge.addr()).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    // The live client is still served during the grace period.
    assert!(!raw.roundtrip(b"").await.closed);

    // It leaves, and the process exits 0 well within the grace period.
    drop(raw);
    let status = edge.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        edge.log().dump()
    );
    // Once the client has left, not at the end of the 30 s grace period.
    assert!(signalled.elapsed() < grace / 6, "{:?}", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_left_after_the_grace_period_are_closed_one_by_one() {
    let server = NatsServer::start();
    // 7.8 s left for the closes after the grace period and the last session's 2 s close
    // grace: five clients are closed 1 s apart (the most), as nats-server's lame-duck mode
    // spreads them, so that they do not all reconnect elsewhere at once; the drain ends
    // about 4 s before its timeout, room for a loaded machine.
    let mut edge = spawn_edge(&server, "200ms", "10s");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(protocol_one_client(&edge).await.0);
    }
    send_signal(edge.pid(), "TERM");
    let closed_at: Vec<Instant> =
        futures::future::join_all(clients.into_iter().map(|mut raw| async move {
            assert!(raw.closes_within(WAIT).await, "a client was not closed");
            Instant::now()
        }))
        .await;
    let first = closed_at.iter().min().copied();
    let last = closed_at.iter().max().copied();
    let spread = last.zip(first).map(|(l, f)| l - f).unwrap_or_default();
    // 4 s from the first close to the last; half of it, whatever the machine's load.
    assert!(
        spread >= Duration::from_secs(2),
        "closed within {spread:?} of each other"
    );
    let status = edge.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        edge.log().dump()
    );
    let (_, line) = edge.wait_log(0, "drained");
    assert_eq!(line["closed_by_edge"], 5, "{line}");
    assert_eq!(line["timed_out"], false, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let server = NatsServer::start();
    let mut edge = spawn_edge(&server, "50s", "60s");
    let (_raw, _) = protocol_one_client(&edge).await;
    send_signal(edge.pid(), "TERM");
    edge.wait_log(
        0,
        "draining: stopped accepting, lame-duck INFO sent to clients",
    );
    // A stop within a second of the first is taken as the same one delivered twice (the
    // test below): the second request comes after that, counted from when the edge logged
    // the first (it had handled it by then).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = Instant::now();
    send_signal(edge.pid(), "INT");
    let status = edge.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", edge.log().dump());
    // At once: not after the drain's 50 s grace period.
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
    edge.wait_log(0, "SIGINT during the drain: exiting at once");
}

/// As nats-server ignores SIGTERM in lame-duck mode: a supervisor that repeats it does not
/// close every client at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_does_not_cut_the_drain_short() {
    let server = NatsServer::start();
    let mut edge = spawn_edge(&server, "50s", "60s");
    let (raw, _) = protocol_one_client(&edge).await;
    send_signal(edge.pid(), "TERM");
    edge.wait_log(
        0,
        "draining: stopped accepting, lame-duck INFO sent to clients",
    );
    let from = edge.log().len();
    send_signal(edge.pid(), "TERM");
    edge.wait_log(
        from,
        "SIGTERM during the drain: draining on (SIGINT exits at once)",
    );
    assert!(edge.is_running());
    served_until_it_leaves(&mut edge, raw).await;
}

/// A stop is handled while a reload still reads its files (here an ACL rule file that became
/// a FIFO nobody writes, as a file on a stalled mount): the drain does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_not_held_by_a_reload_that_hangs() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("acl.toml");
    std::fs::write(&rules, "[[users]]\nuser = \"alice\"\n").unwrap();
    let file = dir.path().join("nats-edge.toml");
    std::fs::write(
        &file,
        format!(
            "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
             [upstream]\nurls = [\"{}\"]\n[auth]\nrules = [{:?}]\n\
             [drain]\ngrace_period = \"30s\"\ntimeout = \"60s\"\n",
            server.url(),
            rules.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut edge = EdgeProcess::spawn(&["-c", file.to_str().unwrap()], &[]);
    let (raw, _) = protocol_one_client(&edge).await;
    let fifo = dir.path().join("stalled.toml");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path that lives for the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    std::fs::rename(&fifo, &rules).unwrap();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(0, "SIGHUP: reloading the configuration");
    send_signal(edge.pid(), "TERM");
    edge.wait_log(
        0,
        "draining: stopped accepting, lame-duck INFO sent to clients",
    );
    drop(raw);
    let status = edge.wait_exit().await;
    assert!(status.success(), "{}", edge.log().dump());
    // The reload was still reading when the edge exited.
    let log = edge.log().dump();
    assert!(
        !log.contains("configuration reload"),
        "the reload ended:\n{log}"
    );
}

/// Reads lines until an INFO with `ldm`, and returns it with every line read before it.
async fn read_until_lame_duck(raw: &mut RawConn) -> (serde_json::Value, Vec<String>) {
    let mut before = Vec::new();
    loop {
        let line = raw.read_line().await.expect("closed before the ldm INFO");
        if let Some(json) = line.strip_prefix("INFO ") {
            let info: serde_json::Value = serde_json::from_str(json).unwrap();
            if info.get("ldm").is_some() {
                return (info, before);
            }
        }
        before.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lame_duck_info_names_no_upstream_address() {
    // A cluster: its INFOs list both servers' client addresses in connect_urls.
    let (a, b) = NatsServer::start_cluster_pair().await;
    let edge = spawn_edge(&a, "30s", "60s");
    let (mut raw, _) = protocol_one_client(&edge).await;
    // nats-server's answer to the CONNECT (after the first PONG), naming the account: the
    // INFO the edge keeps last before the signal.
    let answer = raw.read_info().await;
    assert_eq!(answer["connect_info"], true, "{answer}");
    assert!(answer.get("remote_account").is_some(), "{answer}");
    send_signal(edge.pid(), "TERM");
    let (ldm, _) = read_until_lame_duck(&mut raw).await;
    assert_eq!(ldm["ldm"], true, "{ldm}");
    let text = ldm.to_string();
    for port in [a.port(), b.port()] {
        assert!(!text.contains(&format!(":{port}")), "{text}");
    }
    assert!(ldm.get("connect_urls").is_none(), "{ldm}");
    assert!(ldm.get("ws_connect_urls").is_none(), "{ldm}");
    // Not the answer to the client's CONNECT, which named its account: nats-server's own
    // lame-duck INFO has none of those fields.
    for field in ["connect_info", "remote_account", "acc_is_sys"] {
        assert!(ldm.get(field).is_none(), "{field}: {ldm}");
    }
}

/// A client still waiting for the PONG to its first PING reads nothing else first (nats.go
/// fails its connect on it): nats-server sends no INFO of its own before that PONG, and the
/// lame-duck INFO waits for it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lame_duck_info_waits_for_the_clients_first_pong() {
    let server = NatsServer::start();
    let edge = spawn_edge(&server, "30s", "60s");
    let (mut pending, _) = RawConn::connect_info(edge.addr()).await;
    pending
        .send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\n")
        .await;
    let (mut witness, _) = protocol_one_client(&edge).await;
    send_signal(edge.pid(), "TERM");
    read_until_lame_duck(&mut witness).await;

    pending.send(b"PING\r\n").await;
    let (_, before) = read_until_lame_duck(&mut pending).await;
    let pong = before.iter().position(|line| line == "PONG");
    assert!(
        pong.is_some(),
        "the lame-duck INFO came before the PONG: {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_did_not_declare_protocol_1_get_no_lame_duck_info() {
    let server = NatsServer::start();
    let edge = spawn_edge(&server, "30s", "60s");
    // `protocol` absent means 0: such a client does not take async INFOs (nats-server sends
    // them its lame-duck INFO neither).
    let (mut old, _) = RawConn::connect_info(edge.addr()).await;
    let reply = old.roundtrip(b"CONNECT {\"verbose\":false}\r\n").await;
    assert!(!reply.closed, "{}", reply.text());
    let (mut witness, _) = protocol_one_client(&edge).await;

    send_signal(edge.pid(), "TERM");
    // The drain has told the clients: the witness has its ldm INFO.
    read_until_lame_duck(&mut witness).await;
    // The old client's session has seen the drain by the time it answers this PING.
    old.send(b"PING\r\n").await;
    let reply = old.read_until(b"PONG\r\n").await;
    assert!(!reply.closed, "{}", reply.text());
    assert_eq!(reply.text(), "PONG\r\n", "an INFO for a protocol 0 client");
}

/// The lame-duck INFO leaves the draining listener's own address out of `connect_urls`, as
/// nats-server leaves its own URLs out, so clients reconnect to the other edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_info_leaves_out_the_draining_edges_own_url() {
    let server = NatsServer::start();
    let mut edge = start_edge_toml(&edge_toml(
        &[server.url()],
        "advertise = \"edge-a.example.com:4222\"\n\
         connect_urls = [\"nats://edge-a.example.com:4222\", \"nats://edge-b.example.com:4222\"]",
        "",
    ))
    .await;
    let (mut raw, first_info) = RawConn::connect_info(edge_addr(&edge)).await;
    // Without their scheme, as nats-server sends its URLs.
    assert_eq!(
        first_info["connect_urls"],
        serde_json::json!(["edge-a.example.com:4222", "edge-b.example.com:4222"])
    );
    let reply = raw
        .roundtrip(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\n")
        .await;
    assert!(!reply.closed, "{}", reply.text());
    let client = async {
        let ldm = loop {
            let info = raw.read_info().await;
            if info.get("ldm").is_some() {
                break info;
            }
        };
        drop(raw);
        ldm
    };
    let (drained, ldm) = drain_beside(&mut edge, client).await;
    assert_eq!(ldm["ldm"], true, "{ldm}");
    assert_eq!(
        ldm["connect_urls"],
        serde_json::json!(["edge-b.example.com:4222"]),
        "{ldm}"
    );
    assert_eq!(drained.closed_by_edge, 0, "the client left on its own");
}

/// A drain with a 30 s grace period (35 s in all), beside `client`, bounded.
async fn drain_beside<T>(
    edge: &mut nats_edge::Edge,
    client: impl std::future::Future<Output = T>,
) -> (nats_edge::drain::Drained, T) {
    within(
        "the drain",
        futures::future::join(
            nats_edge::drain::drain(edge, Duration::from_secs(30), Duration::from_secs(35)),
            client,
        ),
    )
    .await
}

/// A connection still in its transport handshake when the drain starts (here, its PROXY
/// header not sent yet) is a client like the others: the grace period waits for it, and its
/// session, once the header comes, starts with the lame-duck INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_waits_for_a_handshake_in_flight() {
    let server = NatsServer::start();
    let mut edge = start_edge_toml(&edge_toml(&[server.url()], "proxy_protocol = true", "")).await;
    let shared = edge.shared().clone();
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    let poll = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| {
        within(what, async move {
            while !done() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let accepted = shared.clone();
    poll(
        "the accept",
        Box::new(move || accepted.open_connections() == 1),
    )
    .await;
    let draining = shared.clone();
    let client = async {
        poll(
            "the drain's start",
            Box::new(move || draining.health.is_draining()),
        )
        .await;
        raw.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 4222\r\n")
            .await;
        let info = raw.read_info().await;
        assert_eq!(info["client_ip"], "203.0.113.7", "{info}");
        raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
            .await;
        let (ldm, _) = read_until_lame_duck(&mut raw).await;
        drop(raw);
        ldm
    };
    let (drained, ldm) = drain_beside(&mut edge, client).await;
    assert_eq!(ldm["ldm"], true, "{ldm}");
    assert_eq!(drained.closed_by_edge, 0, "the client left on its own");
    assert!(!drained.timed_out);
}

/// The admin server answers until the last session has ended: here one still writing out
/// what is queued for a client that does not read, after the listeners have closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_answers_until_the_last_session_ends() {
    let server = NatsServer::start();
    let mut edge = start_edge_toml(&edge_toml(
        &[server.url()],
        "",
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    let admin = edge.admin_addr().expect("admin server");
    let addr = edge_addr(&edge);
    // A subscriber that never reads, and 16 MiB for it: the edge has them queued.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within("connect", socket.connect(addr)).await.unwrap();
    let mut stalled = RawConn::from_stream(stream);
    stalled.read_info().await;
    let reply = stalled
        .roundtrip(b"CONNECT {\"verbose\":false}\r\nSUB firehose 1\r\n")
        .await;
    assert!(!reply.closed, "{}", reply.text());
    let publisher = client(&server.url()).await;
    let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    for _ in 0..256 {
        publisher
            .publish("firehose", payload.clone())
            .await
            .unwrap();
    }
    round_trip(&publisher).await;

    let _ = edge.shutdown_handle().send(true);
    // The listeners are closed...
    within("the listeners' close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // ...the session is still writing to its client (for up to 2 s), and the admin server
    // answers.
    let (status, body) = http_get(admin, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    within("the edge's end", edge.wait()).await;
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
    drop(stalled);
}

/// A reload still applies while the edge drains, as nats-server reloads in lame-duck mode:
/// rules that revoke a user reach the clients still connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_during_the_drain() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let user = |name: &str| format!("[[users]]\nuser = {name:?}\npassword = \"pw\"\n");
    std::fs::write(&users, user("stays") + &user("leaves")).unwrap();
    let file = dir.path().join("nats-edge.toml");
    std::fs::write(
        &file,
        format!(
            "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
             [upstream]\nurls = [{:?}]\n[auth]\nmode = \"edge\"\nrules = [\"users.toml\"]\n\
             [drain]\ngrace_period = \"50s\"\ntimeout = \"60s\"\n",
            server.url()
        ),
    )
    .unwrap();
    let mut edge = EdgeProcess::spawn(&["-c", file.to_str().unwrap()], &[]);
    let login = |name: &str| {
        format!(
            "CONNECT {{\"verbose\":false,\"protocol\":1,\"user\":{name:?},\"pass\":\"pw\"}}\r\n"
        )
    };
    let (mut stays, _) = RawConn::connect_info(edge.addr()).await;
    assert!(!stays.roundtrip(login("stays").as_bytes()).await.closed);
    let (mut leaves, _) = RawConn::connect_info(edge.addr()).await;
    assert!(!leaves.roundtrip(login("leaves").as_bytes()).await.closed);

    send_signal(edge.pid(), "TERM");
    let (from, _) = edge.wait_log(
        0,
        "draining: stopped accepting, lame-duck INFO sent to clients",
    );
    // The user `leaves` is removed while the drain waits for its grace period.
    std::fs::write(&users, user("stays")).unwrap();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(from, "configuration reloaded");
    // Its client is closed, as nats-server closes a client whose user a reload removed;
    // the other stays (a round trip answers through the edge).
    let rest = within("the removed user's close", leaves.read_to_close()).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("-ERR"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    edge.wait_log(
        from,
        "user changed by a reload; closing the connection for it to log in again",
    );
    served_until_it_leaves(&mut edge, stays).await;
}

/// The same stop delivered twice (Ctrl-C's SIGINT to the process group, a wrapper's SIGTERM
/// to the process) drains once: only a stop a second or more after the first exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_delivered_twice_drains_once() {
    let server = NatsServer::start();
    let mut edge = spawn_edge(&server, "30s", "60s");
    let (raw, _) = protocol_one_client(&edge).await;
    // Back to back, as a terminal's Ctrl-C and a wrapper's kill would come.
    let pid = libc::pid_t::try_from(edge.pid()).unwrap();
    // SAFETY: kill(2) with a process id and a signal number; no memory is involved.
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGTERM), 0);
        assert_eq!(libc::kill(pid, libc::SIGINT), 0);
    }
    edge.wait_log(0, "a second stop signal right after the first: draining on");
    drop(raw);
    let status = edge.wait_exit().await;
    assert!(status.success(), "{}", edge.log().dump());
}

/// Whether some thread of process `pid` has SIGHUP, SIGINT and SIGTERM blocked.
fn holds_stop_and_reload_signals(pid: u32) -> bool {
    let held = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM]
        .iter()
        .fold(0u64, |mask, s| mask | 1 << (s - 1));
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|blocked| blocked & held == held)
    })
}

/// Signals sent while the edge starts wait for their handlers, held from the start of the
/// process: a SIGHUP does not end it, and a SIGTERM is not lost (a container's PID 1 loses
/// a signal it has no handler for, unless the signal is blocked). The edge starts,
/// reloads, drains and exits 0.
#[test]
fn signals_sent_while_the_edge_starts_wait_for_it() {
    use std::process::Stdio;
    let server = NatsServer::start();
    let mut child = nats_edge_command()
        .args(["--listen", "127.0.0.1:0", "--upstream", &server.url()])
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nats-edge");
    let pid = child.id();
    let log = LogLines::collect(child.stderr.take().unwrap());
    // As soon as the process holds them (its main thread from the start of `main`, its
    // workers from their start): a bounded poll of /proc.
    let deadline = Instant::now() + WAIT;
    while !holds_stop_and_reload_signals(pid) {
        assert!(
            Instant::now() < deadline,
            "the signals were never held:\n{}",
            log.dump()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    send_signal(pid, "HUP");
    send_signal(pid, "TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for nats-edge") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("nats-edge did not exit:\n{}", log.dump());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}\n{}", log.dump());
    let dump = log.dump();
    for line in [
        "listening",
        "SIGHUP: reloading the configuration",
        "drained",
    ] {
        assert!(dump.contains(line), "no `{line}`:\n{dump}");
    }
}
