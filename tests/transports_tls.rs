//! TLS listeners: classic NATS TLS (INFO in the clear, then the client upgrades),
//! TLS-first, TLS-first with a fallback to classic for clients that wait, server keys of
//! each algorithm, client certificates (required, optional, rejected) and their identity in
//! ConnFacts and the log, and certificate reload on SIGHUP.

mod common;
mod transport_support;

use std::sync::mpsc;
use std::sync::Arc;

use common::*;
use nats_edge::config::{Config, ListenerKind};
use nats_edge::filters::filter::TlsPeer;
use nats_edge::filters::{
    ClientOp, CloseReason, ConnFacts, Filter, FilterFactory, Interest, OpKind, SessionCtx, Verdict,
};
use nats_edge::metrics::HandshakeFailure;
use nats_edge::Edge;
use transport_support::*;

/// An edge whose `default` listener is a TLS listener with `tls_table` (inline TOML).
fn tls_toml(server: &NatsServer, tls_table: &str) -> String {
    edge_toml(
        &[server.url()],
        &format!("kind = \"tls\"\ntls = {{ {tls_table} }}"),
        "",
    )
}

fn cert_keys(files: &CertFiles) -> String {
    format!(
        "cert_file = {}, key_file = {}",
        toml_path(&files.cert),
        toml_path(&files.key)
    )
}

fn tls_url(edge: &Edge) -> String {
    format!("tls://{}", edge_addr(edge))
}

async fn tls_client(
    edge: &Edge,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    within("async-nats TLS connect", options.connect(tls_url(edge))).await
}

/// async-nats over classic TLS, trusting `ca`.
async fn classic_tls_client(
    edge: &Edge,
    ca: &Ca,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = client_options()
        .add_root_certificates(ca.cert.clone())
        .require_tls(true);
    tls_client(edge, options).await
}

/// A client that starts with the TLS handshake gets an INFO saying TLS is required, and a
/// PONG for its CONNECT and PING.
async fn tls_first_client_is_served(edge: &Edge, ca: &Ca) {
    let tls = tls_over(tcp(edge_addr(edge)).await, client_config(&ca.cert, None))
        .await
        .expect("TLS first");
    let mut raw = Raw::new(tls);
    let info = raw.read_info().await;
    assert_eq!(info["tls_required"], true, "{info}");
    assert!(raw.connect_and_ping().await);
}

async fn pub_sub_works(client: &async_nats::Client) {
    let mut sub = client.subscribe("tls.test").await.unwrap();
    client.publish("tls.test", "hello".into()).await.unwrap();
    assert_eq!(next_msg(&mut sub).await.payload, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_tls_listener_sends_info_first_then_upgrades() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let server = NatsServer::start();
    let edge = start_edge_toml(&tls_toml(&server, &cert_keys(&server_cert))).await;

    // The INFO arrives in the clear and describes this listener.
    let mut raw = Raw::new(tcp(edge_addr(&edge)).await);
    let info = raw.read_info().await;
    assert_eq!(info["tls_required"], true, "{info}");
    assert!(info.get("tls_verify").is_none(), "{info}");
    assert!(info.get("tls_available").is_none(), "{info}");
    // Then TLS, then NATS.
    let tls = tls_over(raw.stream, client_config(&ca.cert, None))
        .await
        .expect("TLS after INFO");
    let mut raw = Raw::new(tls);
    assert!(raw.connect_and_ping().await);

    let client = classic_tls_client(&edge, &ca)
        .await
        .expect("async-nats over classic TLS");
    pub_sub_works(&client).await;
}

/// A shutdown does not wait for a classic TLS client that read the INFO and never starts its
/// handshake: the listener's handshake timeout (10 s here) would otherwise hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_a_tls_handshake_after_info() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let server = NatsServer::start();
    let toml = tls_toml(&server, &cert_keys(&server_cert)).replace(
        "kind = \"tls\"",
        "kind = \"tls\"\nhandshake_timeout = \"10s\"",
    );
    assert!(toml.contains("handshake_timeout"), "{toml}");
    let edge = start_edge_toml(&toml).await;
    let mut raw = Raw::new(tcp(edge_addr(&edge)).await);
    let info = raw.read_info().await;
    assert_eq!(info["tls_required"], true, "{info}");
    let started = std::time::Instant::now();
    within("edge shutdown", edge.shutdown()).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A reload whose file drops a TLS listener holds that listener until the restart, on the
/// certificates it loaded: their files may be gone with it, and the reload (of everything
/// else) still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tls_listener_runs_on_without_its_files() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let server = NatsServer::start();
    let plain = "[[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n";
    let both = format!("{}{plain}", tls_toml(&server, &cert_keys(&server_cert)));
    let edge = start_edge_toml(&both).await;
    std::fs::remove_file(&server_cert.cert).unwrap();
    std::fs::remove_file(&server_cert.key).unwrap();
    let only_plain = format!("{plain}[upstream]\nurls = [{:?}]\n", server.url());
    let again = Config::from_toml_str(&only_plain).unwrap();
    edge.shared()
        .reloader
        .reload(again, "test")
        .expect("a reload that drops the TLS listener");
    let client = classic_tls_client(&edge, &ca)
        .await
        .expect("the held TLS listener still serves");
    pub_sub_works(&client).await;
}

/// With no upstream to serve it, a client of a classic TLS listener still learns why: the
/// INFO asks it for TLS, so the error follows inside TLS, where its TLS stack reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_tls_client_reads_upstream_unavailable_inside_tls() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let dead_port = dead_port();
    let dead = dead_port.url();
    let edge = start_edge_toml(&edge_toml(
        &[dead],
        &format!("kind = \"tls\"\ntls = {{ {} }}", cert_keys(&server_cert)),
        "",
    ))
    .await;

    let mut raw = Raw::new(tcp(edge_addr(&edge)).await);
    let info = raw.read_info().await;
    assert_eq!(info["tls_required"], true, "{info}");
    // No session has reached an upstream: a nonce, so that an nkey client reads the error.
    assert!(
        info["nonce"].as_str().is_some_and(|n| n.len() == 15),
        "{info}"
    );
    let tls = tls_over(raw.stream, client_config(&ca.cert, None))
        .await
        .expect("TLS after INFO");
    let got = Raw::new(tls).read_to_close().await;
    assert_eq!(
        show(&got),
        show(b"-ERR 'Upstream Unavailable: connection refused'\r\n")
    );

    let err = classic_tls_client(&edge, &ca)
        .await
        .expect_err("no upstream, no connection");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("upstream unavailable"),
        "{err}"
    );
}

/// An edge with a TLS-first listener (its certificate from `ca`) in front of a nats-server;
/// the PKI's files live as long as the first value.
async fn tls_first_edge() -> (Pki, Ca, NatsServer, Edge) {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let server = NatsServer::start();
    let table = format!("{}, handshake_first = true", cert_keys(&server_cert));
    let edge = start_edge_toml(&tls_toml(&server, &table)).await;
    (pki, ca, server, edge)
}

/// A TLS client whose TCP connection ends without a `close_notify` (killed, or a library
/// that skips it) has closed, as nats-server (Go's TLS) reads that end: counted as
/// `client_closed`, not as a failed read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_gone_without_close_notify_has_closed() {
    let (_pki, ca, _server, edge) = tls_first_edge().await;
    let tls = tls_over(tcp(edge_addr(&edge)).await, client_config(&ca.cert, None))
        .await
        .expect("TLS first");
    let mut raw = Raw::new(tls);
    raw.read_info().await;
    assert!(raw.connect_and_ping().await);
    let (tcp, _) = raw.stream.into_inner();
    drop(tcp);
    within("the session to end", edge.shared().registry.until_empty()).await;
    let closes = |reason| edge.metrics().closes(reason);
    assert_eq!(
        (
            closes(CloseReason::ClientClosed),
            closes(CloseReason::ClientIoError)
        ),
        (1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_first_listener_starts_with_the_handshake() {
    let (_pki, ca, _server, edge) = tls_first_edge().await;

    tls_first_client_is_served(&edge, &ca).await;

    let client = tls_client(
        &edge,
        client_options()
            .add_root_certificates(ca.cert.clone())
            .tls_first(),
    )
    .await
    .expect("async-nats with tls_first");
    pub_sub_works(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_first_with_a_fallback_serves_tls_first_and_classic_clients() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let server = NatsServer::start();
    let delay = std::time::Duration::from_millis(1000);
    let table = format!("{}, handshake_first = \"1s\"", cert_keys(&server_cert));
    let edge = start_edge_toml(&tls_toml(&server, &table)).await;

    // A client that waits: nothing for the fallback delay, then the INFO in the clear, then
    // the classic upgrade.
    let started = std::time::Instant::now();
    let mut raw = Raw::new(tcp(edge_addr(&edge)).await);
    let info = raw.read_info().await;
    assert!(
        started.elapsed() >= delay,
        "INFO after {:?}, before the fallback delay",
        started.elapsed()
    );
    assert_eq!(info["tls_required"], true, "{info}");
    let tls = tls_over(raw.stream, client_config(&ca.cert, None))
        .await
        .expect("TLS after the fallback INFO");
    let mut raw = Raw::new(tls);
    assert!(raw.connect_and_ping().await);

    // A client that starts with TLS: the handshake at once, the INFO inside it.
    tls_first_client_is_served(&edge, &ca).await;

    // async-nats both ways, on the same listener, talking to each other.
    let classic = classic_tls_client(&edge, &ca)
        .await
        .expect("async-nats over classic TLS");
    let first = tls_client(
        &edge,
        client_options()
            .add_root_certificates(ca.cert.clone())
            .tls_first(),
    )
    .await
    .expect("async-nats with tls_first");
    pub_sub_works(&classic).await;
    pub_sub_works(&first).await;
    // A plain client that speaks before the INFO is taken for a TLS client, as by
    // nats-server: its bytes fail the handshake and it is closed without an INFO.
    let mut plain = Raw::new(tcp(edge_addr(&edge)).await);
    plain.send(b"CONNECT {}\r\nPING\r\n").await;
    let got = plain.read_to_close().await;
    assert!(
        !got.starts_with(b"INFO"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        edge.metrics()
            .handshake_failures(ListenerKind::Tls, HandshakeFailure::PlainOnTlsListener),
        1
    );
    let mut sub = first.subscribe("tls.across").await.unwrap();
    // The server has the subscription before the other client publishes.
    round_trip(&first).await;
    classic
        .publish("tls.across", "from classic".into())
        .await
        .unwrap();
    assert_eq!(next_msg(&mut sub).await.payload, "from classic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keys_of_every_algorithm() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = NatsServer::start();
    for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519, KeyAlg::Rsa] {
        let mut leaf = Leaf::server("edge");
        leaf.alg = alg;
        let files = pki.leaf(&ca, &format!("server-{alg:?}"), leaf);
        let edge = start_edge_toml(&tls_toml(&server, &cert_keys(&files))).await;
        let client = tls_client(
            &edge,
            client_options().add_root_certificates(ca.cert.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        pub_sub_works(&client).await;
        within("edge shutdown", edge.shutdown()).await;
    }
}

/// Reports, for each CONNECT, the TLS identity its factory saw and the one in SessionCtx.
struct IdentityProbe {
    built_with: Option<TlsPeer>,
    tx: mpsc::Sender<(Option<TlsPeer>, Option<TlsPeer>)>,
}

impl Filter for IdentityProbe {
    fn name(&self) -> &'static str {
        "identity_probe"
    }

    fn interest(&self) -> Interest {
        Interest::of(&[OpKind::Connect])
    }

    fn on_client_op(&mut self, op: &mut ClientOp, ctx: &mut SessionCtx) -> Verdict {
        if let ClientOp::Connect(_) = op {
            let _ = self
                .tx
                .send((self.built_with.clone(), ctx.conn.tls_peer.clone()));
        }
        Verdict::Forward
    }
}

async fn edge_with_probe(toml: &str) -> (Edge, mpsc::Receiver<(Option<TlsPeer>, Option<TlsPeer>)>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let factory = move |conn: &ConnFacts| -> Box<dyn Filter> {
        Box::new(IdentityProbe {
            built_with: conn.tls_peer.clone(),
            tx: tx.lock().unwrap().clone(),
        })
    };
    let filters: Vec<Arc<dyn FilterFactory>> = vec![Arc::new(factory)];
    let config = Config::from_toml_str(toml).unwrap();
    let edge = within("edge start", Edge::start_with_filters(config, filters))
        .await
        .unwrap();
    (edge, rx)
}

fn alice() -> TlsPeer {
    TlsPeer {
        subject: "CN=alice,O=Acme".into(),
        sans: vec!["email:alice@example.com".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_and_their_identity() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client_ca = pki.ca("client-ca");
    let other_ca = pki.ca("other-ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let alice_files = pki.leaf(&client_ca, "alice", Leaf::client("alice"));
    let stranger = pki.leaf(&other_ca, "stranger", Leaf::client("stranger"));
    let mut expired = Leaf::client("old");
    expired.expired = true;
    let expired = pki.leaf(&client_ca, "old", expired);
    let server = NatsServer::start();

    for handshake_first in [false, true] {
        let table = format!(
            "{}, client_ca_file = {}, handshake_first = {handshake_first}",
            cert_keys(&server_cert),
            toml_path(&client_ca.cert)
        );
        let (edge, identities) = edge_with_probe(&tls_toml(&server, &table)).await;
        let options = || {
            let o = client_options().add_root_certificates(ca.cert.clone());
            if handshake_first {
                o.tls_first()
            } else {
                o
            }
        };

        let client = tls_client(
            &edge,
            options().add_client_certificate(alice_files.cert.clone(), alice_files.key.clone()),
        )
        .await
        .expect("a client with a certificate from the client CA");
        pub_sub_works(&client).await;
        let (built_with, in_ctx) = identities.try_recv().expect("the CONNECT was seen");
        assert_eq!(in_ctx, Some(alice()), "handshake_first = {handshake_first}");
        // A factory runs before the INFO; with classic TLS that is before the handshake.
        let expected_at_build = handshake_first.then(alice);
        assert_eq!(
            built_with, expected_at_build,
            "handshake_first = {handshake_first}"
        );

        if !handshake_first {
            let mut raw = Raw::new(tcp(edge_addr(&edge)).await);
            let info = raw.read_info().await;
            assert_eq!(info["tls_verify"], true, "{info}");
        }

        let before = edge
            .metrics()
            .handshake_failures(ListenerKind::Tls, HandshakeFailure::Tls);
        for (what, files) in [
            ("no certificate", None),
            ("a certificate from another CA", Some(&stranger)),
            ("an expired certificate", Some(&expired)),
        ] {
            let mut o = options().max_reconnects(0);
            if let Some(f) = files {
                o = o.add_client_certificate(f.cert.clone(), f.key.clone());
            }
            // TLS 1.3 finishes the client's side of the handshake before the server judges
            // its certificate, so the refusal may surface as a failed connect or as the
            // connection closing right after it.
            if let Ok(c) = tls_client(&edge, o).await {
                let flushed = within("a flush on a refused connection", c.flush()).await;
                let rejected = flushed.is_err()
                    || c.connection_state() != async_nats::connection::State::Connected;
                assert!(
                    rejected,
                    "{what} was accepted (handshake_first = {handshake_first})"
                );
            }
        }
        // The client may see the TLS alert before the edge has counted the failure.
        let counted = || {
            edge.metrics()
                .handshake_failures(ListenerKind::Tls, HandshakeFailure::Tls)
        };
        within("three failures counted", async {
            while counted() < before + 3 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(counted(), before + 3, "handshake_first = {handshake_first}");
        assert!(
            identities.try_recv().is_err(),
            "a refused client reached CONNECT"
        );
        within("edge shutdown", edge.shutdown()).await;
    }
}

/// A TLS-first listener that verifies client certificates against a client CA, and alice's
/// certificate from it.
struct AliceSetup {
    _pki: Pki,
    ca: Ca,
    files: CertFiles,
    server: NatsServer,
    /// The listener's `tls` table.
    table: String,
}

impl AliceSetup {
    fn new(extra: &str) -> AliceSetup {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let client_ca = pki.ca("client-ca");
        let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
        let files = pki.leaf(&client_ca, "alice", Leaf::client("alice"));
        let table = format!(
            "{}, client_ca_file = {}{extra}, handshake_first = true",
            cert_keys(&server_cert),
            toml_path(&client_ca.cert)
        );
        AliceSetup {
            _pki: pki,
            ca,
            files,
            server: NatsServer::start(),
            table,
        }
    }
}

/// With client certificates, TLS sessions are not resumed: a resumed session would carry the
/// certificate it was made with, unchecked, so one expired since would go on naming its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_client_certificates_are_not_resumed() {
    let alice = AliceSetup::new("");
    let edge = start_edge_toml(&tls_toml(&alice.server, &alice.table)).await;
    // One client configuration, whose session cache would offer the first session again.
    let config = client_config(&alice.ca.cert, Some(&alice.files));
    for attempt in 0..2 {
        let tls = tls_over(tcp(edge_addr(&edge)).await, config.clone())
            .await
            .expect("TLS first");
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "attempt {attempt}"
        );
        // Reading the INFO takes in any session ticket sent after the handshake.
        let mut raw = Raw::new(tls);
        assert!(raw.read_info().await.get("tls_required").is_some());
        assert!(raw.connect_and_ping().await);
    }
    within("edge shutdown", edge.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates() {
    let AliceSetup {
        _pki,
        ca,
        files: alice_files,
        server,
        table,
    } = AliceSetup::new(", client_auth = \"optional\"");
    let (edge, identities) = edge_with_probe(&tls_toml(&server, &table)).await;

    let anonymous = tls_client(
        &edge,
        client_options()
            .add_root_certificates(ca.cert.clone())
            .tls_first(),
    )
    .await
    .expect("no certificate is fine when optional");
    pub_sub_works(&anonymous).await;
    assert_eq!(identities.try_recv().unwrap(), (None, None));

    let with_cert = tls_client(
        &edge,
        client_options()
            .add_root_certificates(ca.cert.clone())
            .add_client_certificate(alice_files.cert.clone(), alice_files.key.clone())
            .tls_first(),
    )
    .await
    .expect("a certificate is verified when presented");
    pub_sub_works(&with_cert).await;
    assert_eq!(
        identities.try_recv().unwrap(),
        (Some(alice()), Some(alice()))
    );

    let tls = tls_over(tcp(edge_addr(&edge)).await, client_config(&ca.cert, None))
        .await
        .unwrap();
    let info = Raw::new(tls).read_info().await;
    assert!(info.get("tls_verify").is_none(), "{info}");
}

/// The edge as a process, with its config in `dir`.
fn edge_process(dir: &Pki, toml: &str) -> EdgeProcess {
    let path = dir.path("edge.toml");
    std::fs::write(&path, toml).unwrap();
    EdgeProcess::spawn(&["-c", path.to_str().unwrap()], &[])
}

/// Waits for a JSON log line whose `message` is `message`; returns its index.
fn wait_log(edge: &EdgeProcess, from: usize, message: &str) -> (usize, serde_json::Value) {
    edge.log()
        .wait_for(from, WAIT, |line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["message"] == message).then_some(v)
        })
        .unwrap_or_else(|| panic!("no {message:?} log line:\n{}", edge.log().dump()))
}

fn copy(from: &CertFiles, to: &CertFiles) {
    std::fs::copy(&from.cert, &to.cert).unwrap();
    std::fs::copy(&from.key, &to.key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_and_live_connections_stay() {
    let pki = Pki::new();
    let old_ca = pki.ca("old-ca");
    let new_ca = pki.ca("new-ca");
    let old = pki.leaf(&old_ca, "old", Leaf::server("edge"));
    let new = pki.leaf(&new_ca, "new", Leaf::server("edge"));
    let live = CertFiles {
        cert: pki.path("live.pem"),
        key: pki.path("live-key.pem"),
    };
    copy(&old, &live);
    let server = NatsServer::start();
    let toml = format!(
        "[[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\nkind = \"tls\"\n\
         tls = {{ {}, handshake_first = true }}\n[upstream]\nurls = [{:?}]\n",
        cert_keys(&live),
        server.url()
    );
    let edge = edge_process(&pki, &toml);
    let url = format!("tls://{}", edge.addr());
    let trusting = |ca: &Ca| {
        client_options()
            .add_root_certificates(ca.cert.clone())
            .tls_first()
            .max_reconnects(0)
    };

    let before = within(
        "connect with the old certificate",
        trusting(&old_ca).connect(&url),
    )
    .await
    .expect("the old certificate is served");
    round_trip(&before).await;

    copy(&new, &live);
    let from = edge.log().len();
    server_signal(&edge, "HUP");
    let (_, line) = wait_log(&edge, from, "TLS certificates reloaded");
    assert_eq!(line["tls"], "listener secure", "{line}");
    wait_log(&edge, from, "configuration reloaded");

    let after = within(
        "connect with the new certificate",
        trusting(&new_ca).connect(&url),
    )
    .await
    .expect("the new certificate is served");
    round_trip(&after).await;
    assert!(
        within(
            "connect trusting the old CA",
            trusting(&old_ca).connect(&url)
        )
        .await
        .is_err(),
        "the old certificate is still served"
    );
    // The connection made before the reload is still there.
    round_trip(&before).await;

    // A broken file keeps the previous certificate.
    std::fs::write(&live.key, "not a key").unwrap();
    let from = edge.log().len();
    server_signal(&edge, "HUP");
    let (_, line) = wait_log(
        &edge,
        from,
        "configuration reload failed; keeping the running configuration",
    );
    let error = line["error"].as_str().unwrap();
    assert!(
        error.starts_with("listeners.0.tls: key_file ") && error.contains("live-key.pem"),
        "{line}"
    );
    let still = within(
        "connect after a failed reload",
        trusting(&new_ca).connect(&url),
    )
    .await
    .expect("the previous certificate is kept");
    round_trip(&still).await;
    round_trip(&before).await;
}

fn server_signal(edge: &EdgeProcess, name: &str) {
    send_signal(edge.pid(), name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_subject_is_in_the_log() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let alice_files = pki.leaf(&ca, "alice", Leaf::client("alice"));
    let server = NatsServer::start();
    let toml = format!(
        "[[listeners]]\nname = \"mtls\"\nbind = \"127.0.0.1:0\"\nkind = \"tls\"\n\
         tls = {{ {}, client_ca_file = {} }}\n[upstream]\nurls = [{:?}]\n",
        cert_keys(&server_cert),
        toml_path(&ca.cert),
        server.url()
    );
    let edge = edge_process(&pki, &toml);
    let client = within(
        "connect with a client certificate",
        client_options()
            .add_root_certificates(ca.cert.clone())
            .add_client_certificate(alice_files.cert.clone(), alice_files.key.clone())
            .connect(format!("tls://{}", edge.addr())),
    )
    .await
    .unwrap();
    round_trip(&client).await;
    drop(client);
    let (_, line) = wait_log(&edge, 0, "connection closed");
    assert_eq!(line["span"]["tls_subject"], "CN=alice,O=Acme", "{line}");
    assert_eq!(line["span"]["transport"], "tls", "{line}");
}

/// `/connz` describes a TLS client as nats-server's monitor does: its TLS version, cipher
/// suite, whether it started with TLS, and (with `auth`) its certificate chain with the
/// subject and the SHA-256 of its public key and of the whole certificate. The same
/// client certificate, presented to nats-server itself, gets the same fingerprints there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connz_shows_the_tls_session_as_nats_server_does() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client_ca = pki.ca("client-ca");
    let server_cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let alice = pki.leaf(&client_ca, "alice", Leaf::client("alice"));
    let (direct, monitor) = server_with_monitor(&format!(
        "tls {{\n cert_file: {:?}\n key_file: {:?}\n ca_file: {:?}\n verify: true\n handshake_first: true\n}}\n",
        server_cert.cert, server_cert.key, client_ca.cert
    ));
    let behind = NatsServer::start();
    let table = format!(
        "{}, client_ca_file = {}, handshake_first = true",
        cert_keys(&server_cert),
        toml_path(&client_ca.cert)
    );
    let edge = start_edge_toml(&edge_toml(
        &[behind.url()],
        &format!("kind = \"tls\"\ntls = {{ {table} }}"),
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    let options = || {
        client_options()
            .add_root_certificates(ca.cert.clone())
            .add_client_certificate(alice.cert.clone(), alice.key.clone())
            .tls_first()
    };
    let through_edge = tls_client(&edge, options())
        .await
        .expect("through the edge");
    within("a flush", through_edge.flush()).await.unwrap();
    let straight = within(
        "straight to nats-server",
        options().connect(format!("tls://{}", direct.addr())),
    )
    .await
    .expect("straight to nats-server");
    within("a flush", straight.flush()).await.unwrap();

    let theirs = connz_query(monitor, "auth=1").await;
    let theirs = &theirs["connections"][0];
    let (status, body) = http_get(edge.admin_addr().unwrap(), "/connz?auth=1").await;
    assert_eq!(status, 200);
    let ours: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ours = &ours["connections"][0];
    // Present on nats-server's side, so that two missing fields cannot compare equal.
    let peer = &theirs["tls_peer_certs"][0];
    for hash in ["cert_sha256", "spki_sha256"] {
        assert!(
            peer[hash].as_str().is_some_and(|h| h.len() == 64),
            "{hash}: {theirs}"
        );
    }
    assert!(
        peer["subject"].as_str().is_some_and(|s| !s.is_empty()),
        "{theirs}"
    );
    assert!(theirs["tls_version"].is_string(), "{theirs}");
    assert_eq!(theirs["tls_first"], true, "{theirs}");
    for field in ["tls_version", "tls_first"] {
        assert_eq!(ours[field], theirs[field], "{field}: {ours} / {theirs}");
    }
    // Each server picks the suite by its own preference: both name it the IANA way.
    let suite = ours["tls_cipher_suite"].as_str().unwrap_or_default();
    assert!(suite.starts_with("TLS_"), "{ours}");
    assert_eq!(
        ours["tls_peer_certs"][0]["cert_sha256"], theirs["tls_peer_certs"][0]["cert_sha256"],
        "{ours} / {theirs}"
    );
    assert_eq!(
        ours["tls_peer_certs"][0]["spki_sha256"], theirs["tls_peer_certs"][0]["spki_sha256"],
        "{ours} / {theirs}"
    );
    assert_eq!(
        ours["tls_peer_certs"][0]["subject"], theirs["tls_peer_certs"][0]["subject"],
        "{ours} / {theirs}"
    );
    // Without `auth`, no certificates, as nats-server.
    let (_, body) = http_get(edge.admin_addr().unwrap(), "/connz").await;
    let plain: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        plain["connections"][0].get("tls_peer_certs").is_none(),
        "{plain}"
    );
    assert_eq!(plain["connections"][0]["tls_version"], "1.3", "{plain}");
}
