//! Bad input on every transport: a plain client on a TLS listener, a TLS client on a plain
//! one, rejected client certificates, WebSocket upgrades with a bad key, version or origin,
//! truncated and forged PROXY headers, and handshakes that never finish. Each one gets a log
//! line naming the reason, a clean close and a counter; none panics, leaves a task behind or
//! leaks an upstream connection.

mod common;
mod transport_support;

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use common::*;
use nats_edge::config::ListenerKind;
use nats_edge::metrics::HandshakeFailure;
use nats_edge::Edge;
use nats_edge_filters::CloseReason;
use tokio::io::AsyncWriteExt;
use transport_support::*;

/// The edge's log (JSON, one object per line), shared by the tests of this binary. Lines
/// are told apart by the listener names, which are unique per test.
#[derive(Default)]
struct Captured {
    lines: Mutex<Vec<serde_json::Value>>,
    changed: Condvar,
    panics: Mutex<Vec<String>>,
}

struct Sink(Arc<Captured>, Vec<u8>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let mut lines = self.0.lines.lock().unwrap();
        for line in self.1.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(v) = serde_json::from_slice(line) {
                lines.push(v);
            }
        }
        self.0.changed.notify_all();
    }
}

fn captured() -> Arc<Captured> {
    static CAPTURED: OnceLock<Arc<Captured>> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Arc::new(Captured::default());
            let sink = captured.clone();
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_env_filter("nats_edge=debug")
                .with_writer(move || Sink(sink.clone(), Vec::new()))
                .init();
            let panics = captured.clone();
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                // Only the edge's own code counts; a failing assertion in a test is that
                // test's business.
                if info
                    .location()
                    .is_some_and(|l| l.file().starts_with("src/"))
                {
                    panics.panics.lock().unwrap().push(info.to_string());
                }
                default_hook(info);
            }));
            captured
        })
        .clone()
}

/// Waits for a `handshake failed` line from `listener`; returns it.
fn failure_line(listener: &str, reason: &str) -> serde_json::Value {
    wait_line(|v| {
        v["message"] == "handshake failed"
            && v["span"]["listener"] == listener
            && v["reason"] == reason
    })
    .unwrap_or_else(|| panic!("no `handshake failed` line with reason {reason} on {listener}"))
}

fn wait_line(pick: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
    let c = captured();
    let deadline = std::time::Instant::now() + WAIT;
    let mut lines = c.lines.lock().unwrap();
    loop {
        if let Some(v) = lines.iter().find(|v| pick(v)) {
            return Some(v.clone());
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return None;
        }
        lines = c.changed.wait_timeout(lines, deadline - now).unwrap().0;
    }
}

/// Waits until `n` lines match `pick`; false if they do not within [`WAIT`].
fn wait_lines(pick: impl Fn(&serde_json::Value) -> bool, n: usize) -> bool {
    let c = captured();
    let deadline = std::time::Instant::now() + WAIT;
    let mut lines = c.lines.lock().unwrap();
    loop {
        if lines.iter().filter(|v| pick(v)).count() >= n {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        lines = c.changed.wait_timeout(lines, deadline - now).unwrap().0;
    }
}

fn failures(edge: &Edge, kind: ListenerKind, why: HandshakeFailure) -> u64 {
    edge.metrics().handshake_failures(kind, why)
}

/// Waits until `n` failures of this kind are counted, then checks there are exactly `n`. A
/// failure is counted just before its log line, and the client may see its close (or a TLS
/// alert, or an HTTP answer) before either: so this waits on the log, never on a clock.
fn wait_failures(edge: &Edge, kind: ListenerKind, why: HandshakeFailure, n: u64) {
    let c = captured();
    let deadline = std::time::Instant::now() + WAIT;
    let mut lines = c.lines.lock().unwrap();
    while failures(edge, kind, why) < n {
        let now = std::time::Instant::now();
        assert!(
            now < deadline,
            "{} {} failures on {kind:?}, expected {n}",
            failures(edge, kind, why),
            why.as_str()
        );
        lines = c.changed.wait_timeout(lines, deadline - now).unwrap().0;
    }
    drop(lines);
    assert_eq!(failures(edge, kind, why), n, "{}", why.as_str());
}

struct Setup {
    _pki: Pki,
    ca: Ca,
    client_ca: Ca,
    stranger: CertFiles,
    expired: CertFiles,
    _server: NatsServer,
    monitor: u16,
    edge: Edge,
}

/// One edge with a listener of each kind, named `<prefix>-<kind>`, every handshake bounded
/// by 300ms, in front of a nats-server with monitoring.
async fn setup(prefix: &str) -> Setup {
    let _ = captured();
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client_ca = pki.ca("client-ca");
    let other_ca = pki.ca("other-ca");
    let cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let stranger = pki.leaf(&other_ca, "stranger", Leaf::client("stranger"));
    let mut expired = Leaf::client("old");
    expired.expired = true;
    let expired = pki.leaf(&client_ca, "old", expired);
    let (server, monitor) = server_with_monitor("");
    let files = format!(
        "cert_file = {}, key_file = {}",
        toml_path(&cert.cert),
        toml_path(&cert.key)
    );
    let listener = |kind: &str, extra: &str| {
        format!(
            "[[listeners]]\nname = \"{prefix}-{kind}\"\nbind = \"127.0.0.1:0\"\n\
             handshake_timeout = \"1s\"\n{extra}\n"
        )
    };
    let toml = [
        listener("tcp", ""),
        listener(
            "tls",
            &format!(
                "kind = \"tls\"\ntls = {{ {files}, handshake_first = true, client_ca_file = {} }}",
                toml_path(&client_ca.cert)
            ),
        ),
        listener("classic", &format!("kind = \"tls\"\ntls = {{ {files} }}")),
        listener(
            "ws",
            "kind = \"ws\"\nws = { allowed_origins = [\"https://app.example.com\"] }",
        ),
        listener("wss", &format!("kind = \"wss\"\ntls = {{ {files} }}")),
        listener("proxy", "proxy_protocol = true"),
        format!("[upstream]\nurls = [{:?}]\n", server.url()),
    ]
    .concat();
    let edge = start_edge_toml(&toml).await;
    Setup {
        _pki: pki,
        ca,
        client_ca,
        stranger,
        expired,
        _server: server,
        monitor,
        edge,
    }
}

impl Setup {
    fn addr(&self, prefix: &str, kind: &str) -> std::net::SocketAddr {
        self.edge.addr(&format!("{prefix}-{kind}")).unwrap()
    }

    /// No upstream connection is left, no session is open, no task is stuck (shutdown
    /// finishes), and nothing panicked.
    async fn assert_clean(self) {
        wait_for_connections(self.monitor, 0).await;
        let edge = self.edge;
        within("the edge to shut down", edge.shutdown()).await;
        let panics = captured().panics.lock().unwrap().clone();
        assert!(panics.is_empty(), "panics: {panics:?}");
    }
}

/// The edge closes `raw` with a FIN and sends nothing more: its next read is the end of the
/// stream, not a reset.
async fn assert_closed_not_reset(raw: RawConn) {
    use tokio::io::AsyncReadExt;
    let mut stream = raw.into_stream();
    let mut buf = [0u8; 64];
    let read = within("the close", stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(0)), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_on_tls_listeners() {
    let s = setup("plain").await;

    // TLS first: a client that speaks plain text is closed, as by nats-server, with a FIN
    // (not a reset, which the client would report as one).
    let mut raw = RawConn::connect(s.addr("plain", "tls")).await;
    raw.send(b"CONNECT {}\r\nPING\r\n").await;
    assert_closed_not_reset(raw).await;
    wait_failures(
        &s.edge,
        ListenerKind::Tls,
        HandshakeFailure::PlainOnTlsListener,
        1,
    );
    let line = failure_line("plain-tls", "plain_on_tls_listener");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("plain NATS client on a TLS listener"),
        "{line}"
    );
    assert_eq!(line["level"], "DEBUG", "{line}");

    // TLS first: a plain client waits for an INFO that never comes.
    let mut raw = RawConn::connect(s.addr("plain", "tls")).await;
    assert!(raw.closes_within(WAIT).await);
    wait_failures(&s.edge, ListenerKind::Tls, HandshakeFailure::Timeout, 1);
    let line = failure_line("plain-tls", "timeout");
    assert_eq!(
        line["error"], "timed out during the TLS handshake",
        "{line}"
    );
    // What probes and scanners cause on a TLS port is logged at debug, as nats-server does.
    assert_eq!(line["level"], "DEBUG", "{line}");

    // Classic: the INFO comes in the clear, but the client carries on in plain text. The
    // upstream (dialled for that INFO's nonce) is closed with it.
    let mut raw = RawConn::connect(s.addr("plain", "classic")).await;
    assert_eq!(raw.read_info().await["tls_required"], true);
    raw.send(b"CONNECT {}\r\nPING\r\n").await;
    assert_closed_not_reset(raw).await;
    wait_failures(
        &s.edge,
        ListenerKind::Tls,
        HandshakeFailure::PlainOnTlsListener,
        2,
    );
    failure_line("plain-classic", "plain_on_tls_listener");

    // Classic: a plain client that reads the INFO, sees tls_required and leaves without a
    // word (as nats.py does without a TLS context).
    let mut raw = RawConn::connect(s.addr("plain", "classic")).await;
    assert_eq!(raw.read_info().await["tls_required"], true);
    drop(raw);
    wait_failures(
        &s.edge,
        ListenerKind::Tls,
        HandshakeFailure::PlainOnTlsListener,
        3,
    );
    wait_line(|v| {
        v["span"]["listener"] == "plain-classic"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("after the INFO that requires TLS"))
    })
    .expect("a log line for the plain client that left after the INFO");

    // Classic: a TCP health check that closes without reading the INFO resets the
    // connection (the kernel resets a socket closed with unread data): the same case, not a
    // failed TLS handshake.
    let probe = tcp(s.addr("plain", "classic")).await;
    within("the INFO to arrive", probe.readable())
        .await
        .unwrap();
    drop(probe);
    wait_failures(
        &s.edge,
        ListenerKind::Tls,
        HandshakeFailure::PlainOnTlsListener,
        4,
    );
    assert_eq!(
        failures(&s.edge, ListenerKind::Tls, HandshakeFailure::Tls),
        0
    );

    // Classic: a client that reads the INFO and then never starts TLS is closed when the
    // listener's handshake timeout runs out, counted as a timeout, and its session (opened
    // for the INFO) ends as `handshake_timeout`, as one whose CONNECT never comes does.
    let timeouts = s.edge.metrics().closes(CloseReason::HandshakeTimeout);
    let mut raw = RawConn::connect(s.addr("plain", "classic")).await;
    assert_eq!(raw.read_info().await["tls_required"], true);
    assert!(raw.closes_within(WAIT).await);
    wait_failures(&s.edge, ListenerKind::Tls, HandshakeFailure::Timeout, 2);
    // The session's end is counted just before its log line, which is at debug: the
    // failure was logged once already.
    let closed = wait_line(|v| {
        v["span"]["listener"] == "plain-classic"
            && v["message"] == "connection closed"
            && v["reason"] == "handshake_timeout"
    })
    .expect("the classic client's session ends as handshake_timeout");
    assert_eq!(closed["level"], "DEBUG", "{closed}");
    assert_eq!(
        s.edge.metrics().closes(CloseReason::HandshakeTimeout),
        timeouts + 1
    );

    // A plain HTTP request on a wss listener gets what Go's HTTP server in front of
    // nats-server's websocket listener answers.
    let answer = http(
        tcp(s.addr("plain", "wss")).await,
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer,
        "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    );
    wait_failures(
        &s.edge,
        ListenerKind::Wss,
        HandshakeFailure::PlainOnTlsListener,
        1,
    );
    failure_line("plain-wss", "plain_on_tls_listener");
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_on_plain_listeners() {
    let s = setup("tlsplain").await;
    let config = client_config(&s.ca.cert, None);

    // TLS first on the NATS port: the client gets an INFO it cannot read as TLS.
    let refused = tls_over(tcp(s.addr("tlsplain", "tcp")).await, config.clone()).await;
    assert!(refused.is_err());
    let line = failure_line("tlsplain-tcp", "tls_on_plain_listener");
    assert_eq!(line["span"]["transport"], "tcp", "{line}");
    assert_eq!(
        line["error"], "the client started a TLS handshake on a plain listener",
        "{line}"
    );
    wait_failures(
        &s.edge,
        ListenerKind::Tcp,
        HandshakeFailure::TlsOnPlainListener,
        1,
    );

    // async-nats with tls_first against the plain port.
    let err = within(
        "async-nats tls_first to a plain listener",
        client_options()
            .add_root_certificates(s.ca.cert.clone())
            .tls_first()
            .max_reconnects(0)
            .connect(format!("tls://{}", s.addr("tlsplain", "tcp"))),
    )
    .await;
    assert!(err.is_err());

    // wss on a ws listener.
    let refused = tls_over(tcp(s.addr("tlsplain", "ws")).await, config).await;
    assert!(refused.is_err());
    failure_line("tlsplain-ws", "tls_on_plain_listener");
    wait_failures(
        &s.edge,
        ListenerKind::Ws,
        HandshakeFailure::TlsOnPlainListener,
        1,
    );
    s.assert_clean().await;
}

/// A TLS client of a `wss` listener that ends its TCP connection without a `close_notify`
/// before sending a request (a TLS health check, a killed client) has closed, as quietly as
/// on a `tls` listener: no warning, no failure count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_gone_without_close_notify_is_no_failure() {
    let s = setup("wssgone").await;
    let tls = tls_over(
        tcp(s.addr("wssgone", "wss")).await,
        client_config(&s.ca.cert, None),
    )
    .await
    .expect("TLS with the wss listener");
    let (tcp, _) = tls.into_inner();
    drop(tcp);
    let quiet = |v: &serde_json::Value| {
        v["message"] == "closed before the handshake" && v["span"]["listener"] == "wssgone-wss"
    };
    assert!(wait_line(quiet).is_some(), "no quiet close logged");
    let failed = captured()
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["message"] == "handshake failed" && v["span"]["listener"] == "wssgone-wss")
        .count();
    assert_eq!(failed, 0);
    assert_eq!(
        failures(&s.edge, ListenerKind::Wss, HandshakeFailure::WebSocket),
        0
    );
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_client_certificates() {
    let s = setup("certs").await;
    for (files, n) in [(None, 1), (Some(&s.stranger), 2), (Some(&s.expired), 3)] {
        let config = client_config(&s.ca.cert, files);
        // The client side may finish (TLS 1.3) before the edge refuses the certificate;
        // either way the connection ends without an INFO.
        if let Ok(tls) = tls_over(tcp(s.addr("certs", "tls")).await, config).await {
            let mut raw = Raw::new(tls);
            assert!(
                raw.read_line().await.is_none(),
                "a refused client got a line"
            );
        }
        wait_failures(&s.edge, ListenerKind::Tls, HandshakeFailure::Tls, n);
    }
    let line = failure_line("certs-tls", "tls");
    let error = line["error"].as_str().unwrap();
    assert!(error.starts_with("TLS handshake failed: "), "{line}");
    assert_eq!(line["level"], "WARN", "{line}");
    let _ = &s.client_ca;
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_websocket_upgrades() {
    let s = setup("wsbad").await;
    let addr = s.addr("wsbad", "ws");
    let request = |extra: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        )
    };
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (
            request("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not-a-key\r\n"),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            request(&format!("Sec-WebSocket-Version: 8\r\n{good_key}")),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            request(&format!(
                "Sec-WebSocket-Version: 13\r\n{good_key}Origin: https://evil.example.com\r\n"
            )),
            "HTTP/1.1 403 Forbidden",
        ),
        (
            "NOT HTTP AT ALL\r\n\r\n".to_string(),
            "HTTP/1.1 400 Bad Request",
        ),
    ];
    for (i, (req, status)) in cases.iter().enumerate() {
        let answer = http(tcp(addr).await, req).await;
        assert!(answer.starts_with(status), "{req:?}: {answer}");
        // As nats-server: the status text alone; the reason is the log's.
        let text = &status["HTTP/1.1 400 ".len()..];
        assert!(
            answer.ends_with(&format!("\r\n\r\n{text}\n")),
            "{req:?}: {answer}"
        );
        wait_failures(
            &s.edge,
            ListenerKind::Ws,
            HandshakeFailure::WebSocket,
            i as u64 + 1,
        );
    }
    let version = http(
        tcp(addr).await,
        &request(&format!("Sec-WebSocket-Version: 8\r\n{good_key}")),
    )
    .await;
    assert!(
        version.contains("\r\nSec-WebSocket-Version: 13\r\n"),
        "{version}"
    );
    let line = failure_line("wsbad-ws", "websocket");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .starts_with("WebSocket upgrade refused: "),
        "{line}"
    );
    wait_line(|v| {
        v["span"]["listener"] == "wsbad-ws"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("origin https://evil.example.com is not allowed"))
    })
    .expect("a log line naming the refused origin");

    // A request cut short.
    let mut stream = tcp(addr).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut raw = RawConn::from_stream(stream);
    assert_eq!(raw.read_to_close().await, b"");
    wait_line(|v| {
        v["span"]["listener"] == "wsbad-ws"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("closed the connection inside its request"))
    })
    .expect("a log line for the truncated request");

    // A request that never ends.
    let mut raw = RawConn::connect(addr).await;
    raw.send(b"GET / HTTP/1.1\r\n").await;
    assert!(raw.closes_within(WAIT).await);
    let line = failure_line("wsbad-ws", "timeout");
    assert_eq!(line["error"], "timed out during the WebSocket upgrade");
    s.assert_clean().await;
}

/// A refused upgrade whose client keeps its end open after the answer: the edge waits a
/// little for it to close (so the answer is not lost to a reset), and when the handshake
/// timeout ends that wait, the failure is still the refusal, with its reason, not a timeout.
/// The timeout here (300 ms) is shorter than that wait, so every such refusal meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_the_client_does_not_close_is_logged_as_the_refusal() {
    let _ = captured();
    let server = NatsServer::start();
    let edge = start_edge_toml(&format!(
        "[[listeners]]\nname = \"wslinger-ws\"\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\n\
         handshake_timeout = \"300ms\"\n\
         ws = {{ allowed_origins = [\"https://app.example.com\"] }}\n\
         [upstream]\nurls = [{:?}]\n",
        server.url()
    ))
    .await;
    let addr = edge.addr("wslinger-ws").unwrap();
    let mut raw = Raw::new(tcp(addr).await);
    raw.send(
        format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: https://evil.example.com\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(raw.read_until(b"\r\n\r\nForbidden\n").await);
    let line = failure_line("wslinger-ws", "websocket");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("origin https://evil.example.com is not allowed"),
        "{line}"
    );
    wait_failures(&edge, ListenerKind::Ws, HandshakeFailure::WebSocket, 1);
    assert_eq!(
        failures(&edge, ListenerKind::Ws, HandshakeFailure::Timeout),
        0
    );
    // The answer is whole, and the edge's end closed after it.
    assert!(raw.read_to_close().await.ends_with(b"Forbidden\n"));
    within("the edge to shut down", edge.shutdown()).await;
}

/// After a good upgrade, a client that breaks WebSocket framing (here an unmasked frame) gets
/// a close frame with status 1002 and nats-server's text, a warn line naming the rule, and
/// the session ends counted as a protocol violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_framing_violations() {
    let s = setup("wsframe").await;
    let addr = s.addr("wsframe", "ws");
    let mut raw = RawConn::connect(addr).await;
    raw.send(
        format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(!raw.read_until(b"\r\n\r\n").await.closed);
    assert!(!raw.read_until(b"INFO ").await.closed);
    let before = s.edge.metrics().closes(CloseReason::ProtocolViolation);
    // An unmasked binary frame: clients must mask (RFC 6455 section 5.1).
    raw.send(b"\x82\x06PING\r\n").await;
    let rest = raw.read_to_close().await;
    assert!(
        rest.ends_with(b"\x88\x12\x03\xEAmask bit missing"),
        "no close frame with 1002 at the end: {rest:?}"
    );
    let line = wait_line(|v| {
        v["message"] == "client WebSocket protocol violation"
            && v["span"]["listener"] == "wsframe-ws"
    })
    .expect("a warn line for the violation");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["error"], "mask bit missing");
    wait_line(|v| {
        v["message"] == "connection closed"
            && v["span"]["listener"] == "wsframe-ws"
            && v["reason"] == "protocol_violation"
    })
    .expect("the session closed as a protocol violation");
    assert_eq!(
        s.edge.metrics().closes(CloseReason::ProtocolViolation),
        before + 1
    );
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_forged_proxy_headers() {
    let s = setup("pp").await;
    let addr = s.addr("pp", "proxy");

    // Not a PROXY header at all: a peer that skipped the load balancer and speaks first (an
    // HTTP probe, a TLS-first client) is refused at once, with a FIN (what it sent is read
    // first), as nats-server closes.
    let mut raw = RawConn::connect(addr).await;
    raw.send(b"GET / HTTP/1.1\r\n").await;
    assert_closed_not_reset(raw).await;
    let line = failure_line("pp-proxy", "proxy_header");
    assert!(
        line["error"].as_str().unwrap().contains(
            "no PROXY protocol header: the connection starts with \"GET / HTTP/1.1\\r\\n\""
        ),
        "{line}"
    );

    // Forged: a v1 header with a port out of range; a v2 header with a bad version.
    for forged in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 4222\r\n"[..],
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c123456789012",
    ] {
        let mut raw = RawConn::connect(addr).await;
        raw.send(forged).await;
        assert_closed_not_reset(raw).await;
    }
    // Truncated: the connection ends inside the header.
    let mut stream = tcp(addr).await;
    stream.write_all(b"PROXY TCP4 203.0.113.9 ").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(RawConn::from_stream(stream).read_to_close().await, b"");
    wait_line(|v| {
        v["span"]["listener"] == "pp-proxy"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("closed inside the PROXY header (after 23 bytes)"))
    })
    .expect("a log line for the truncated header");
    wait_failures(&s.edge, ListenerKind::Tcp, HandshakeFailure::ProxyHeader, 4);

    // Truncated and left open: the handshake timeout closes it. So it closes a NATS client
    // that skipped the balancer: it waits for an INFO, which the edge sends only after the
    // header, and gets none.
    let mut raw = RawConn::connect(addr).await;
    raw.send(b"\r\n\r\n\0\r\nQU").await;
    let mut nats_client = RawConn::connect(addr).await;
    assert!(raw.closes_within(WAIT).await);
    assert_eq!(
        nats_client.read_to_close().await,
        b"",
        "no INFO before a header"
    );
    let line = failure_line("pp-proxy", "timeout");
    assert_eq!(line["error"], "timed out during the PROXY protocol header");

    // A load balancer's TCP health check (connect, close; or connect, reset, as HAProxy's
    // checks end) is not a failure.
    drop(tcp(addr).await);
    let check = tcp(addr).await;
    check.set_zero_linger().unwrap();
    drop(check);
    // Both handled (their debug lines) before the counts are read.
    assert!(
        wait_lines(
            |v| v["message"] == "closed before the handshake"
                && v["span"]["listener"] == "pp-proxy",
            2
        ),
        "the health checks were not handled"
    );
    let mut ok = RawConn::connect(addr).await;
    ok.send(b"PROXY UNKNOWN\r\n").await;
    ok.read_info().await;
    assert!(ok.is_open().await);
    drop(ok);
    wait_failures(&s.edge, ListenerKind::Tcp, HandshakeFailure::ProxyHeader, 4);
    wait_failures(&s.edge, ListenerKind::Tcp, HandshakeFailure::Timeout, 2);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_is_dialled_before_a_handshake_succeeds() {
    let s = setup("nodial").await;
    // Handshakes that fail or stall on every listener that has one before its INFO.
    let mut stalled = Vec::new();
    for kind in ["tls", "ws", "wss", "proxy"] {
        let raw = RawConn::connect(s.addr("nodial", kind)).await;
        stalled.push(raw);
    }
    let mut garbage = RawConn::connect(s.addr("nodial", "proxy")).await;
    garbage.send(b"garbage\r\n").await;
    assert_eq!(garbage.read_to_close().await, b"");
    // While they are stalled, the upstream has no connection from the edge.
    assert_eq!(connz(s.monitor).await["num_connections"], 0);
    for mut raw in stalled {
        assert!(raw.closes_within(WAIT).await);
    }
    // A counter, which no timing can miss: the edge never dialled for them.
    assert_eq!(s.edge.metrics().upstream_dials(), 0);
    assert_eq!(s.edge.metrics().connections_total(), 0);
    s.assert_clean().await;
}
