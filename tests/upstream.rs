//! The edge's side of the connection: upstream down, restarted, failed over, and credentials
//! carried in the upstream URL.

mod common;

use std::time::Duration;

use async_nats::{ConnectErrorKind, Event};
use bytes::Bytes;
use common::*;
use tokio::sync::mpsc;

/// A URL nothing listens on.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_connect_is_reported_and_closed() {
    let dead = dead_port();
    let edge = start_edge(&[dead.url()], "").await;
    let text = error_after_info(edge_addr(&edge)).await;
    assert!(
        text.starts_with("-ERR 'Upstream Unavailable"),
        "expected an Upstream Unavailable error, got {text:?}"
    );
    assert!(text.ends_with("'\r\n"), "{text:?}");
    assert_eq!(text.matches("\r\n").count(), 1, "{text:?}");

    // A client library gets the INFO it expects first, so it reports the cause rather than a
    // protocol error.
    let err = within(
        "async-nats connect",
        client_options().connect(edge_url(&edge)),
    )
    .await
    .expect_err("no upstream, no connection");
    assert_ne!(err.kind(), ConnectErrorKind::TimedOut, "{err}");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("upstream unavailable"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dial_failures_are_counted() {
    let (dead, dead_too) = (dead_port(), dead_port());
    let edge = start_edge(&[dead.url(), dead_too.url()], IN_ORDER).await;
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    raw.read_to_close().await;
    assert_eq!(edge.metrics().upstream_dial_failures(), 2);
}

/// A URL that refused is counted as it fails, while the dial goes on to the next one: a
/// client that then gives up on a silent URL (and ends the dial) has not hidden it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_url_is_counted_while_the_dial_goes_on() {
    let dead = dead_port();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let edge = start_edge(
        &[dead.url(), silent_url],
        &format!("{IN_ORDER}connect_timeout = \"30s\"\n"),
    )
    .await;
    let client = tokio::net::TcpStream::connect(edge_addr(&edge))
        .await
        .unwrap();
    let _dialled = within("the edge dials the silent URL", silent.accept())
        .await
        .unwrap();
    // The dead URL was dialled first and refused: counted before the silent one answers.
    assert_eq!(edge.metrics().upstream_dial_failures(), 1);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_second_upstream() {
    let server = NatsServer::start();
    let dead = dead_port();
    let edge = start_edge(&[dead.url(), server.url()], IN_ORDER).await;
    let c = client(&edge_url(&edge)).await;
    let mut sub = c.subscribe("fo").await.unwrap();
    round_trip(&c).await;
    c.publish("fo", Bytes::from_static(b"via second"))
        .await
        .unwrap();
    round_trip(&c).await;
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"via second");

    // The same session is really on the live server: a direct client there sees it.
    let direct = client(&server.url()).await;
    direct
        .publish("fo", Bytes::from_static(b"direct"))
        .await
        .unwrap();
    round_trip(&direct).await;
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"direct");
}

/// Sends CONNECT on a connection through the edge and checks the session goes on (its
/// PING gets a PONG).
async fn assert_connects(raw: &mut RawConn) {
    let reply = raw.roundtrip(b"CONNECT {\"verbose\":false}\r\n").await;
    assert!(!reply.closed, "closed: {}", reply.text());
}

/// A URL that accepts but never answers (a server gone from under an address that drops
/// packets) costs one session the connect timeout; the sessions after it go to the next URL
/// without dialling it again, for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_failed_is_tried_last_for_a_while() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let server = NatsServer::start();
    let urls = [silent_url, server.url()];
    let extra = &format!("{IN_ORDER}connect_timeout = \"1s\"\n");
    let edge = start_edge(&urls, extra).await;
    for round in 0..4 {
        if round == 3 {
            // A reload that leaves the URLs as they were (a certificate rotation, say)
            // keeps what the sessions learnt of them.
            let again =
                nats_edge::config::Config::from_toml_str(&edge_toml(&urls, "", extra)).unwrap();
            edge.shared().reloader.reload(again, "test").unwrap();
        }
        let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
        assert_connects(&mut raw).await;
    }
    assert_eq!(
        edge.metrics().upstream_dial_failures(),
        1,
        "the silent URL was dialled again"
    );
    drop(silent);
}

/// When a failed URL's back-off ends, one session tries it again first. If it still does
/// not answer, that session's client (whose own connect timeout is about the edge's) must
/// still be served by the next URL in time: the URL tried again gets half the connect
/// timeout when others come after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_tried_again_after_its_backoff_leaves_time_for_the_next() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let server = NatsServer::start();
    let timeout = Duration::from_secs(2);
    let edge = start_edge(
        &[silent_url, server.url()],
        &format!("{IN_ORDER}connect_timeout = \"2s\"\n"),
    )
    .await;
    // The first session waits out the whole timeout on the silent URL, then is served.
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_connects(&mut raw).await;
    assert_eq!(edge.metrics().upstream_dial_failures(), 1);
    // The back-off is a span of time: waiting it out is what this tests.
    tokio::time::sleep(nats_edge::upstream::FAILED_URL_BACKOFF).await;
    let started = std::time::Instant::now();
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    let took = started.elapsed();
    assert_connects(&mut raw).await;
    assert_eq!(
        edge.metrics().upstream_dial_failures(),
        2,
        "the silent URL was tried again"
    );
    assert!(
        took < timeout,
        "the client waited {took:?}, as long as the whole connect timeout"
    );
    drop(silent);
}

/// A client that gives up on a URL that does not answer (its own connect timeout, about
/// as long as the edge's) ends the dial, and still marks the URL as failed: the next
/// session tries the other URL first, rather than every client timing out on the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_a_client_gave_up_on_is_tried_last() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let server = NatsServer::start();
    let edge = start_edge(
        &[silent_url, server.url()],
        &format!("{IN_ORDER}connect_timeout = \"4s\"\n"),
    )
    .await;
    let mut impatient = RawConn::connect(edge_addr(&edge)).await;
    let (mut dialled, _) = within("the edge dials the silent URL", silent.accept())
        .await
        .unwrap();
    // The client's own timeout for the INFO, past half the edge's connect timeout, with a
    // second to spare before the edge's own.
    let gave_up = tokio::time::timeout(Duration::from_secs(3), impatient.read_info()).await;
    assert!(gave_up.is_err(), "an INFO came from the silent URL");
    drop(impatient);
    // The edge drops the dial (after noting the URL failed).
    dial_closed_unwritten(&mut dialled).await;

    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_connects(&mut raw).await;
    // Had the edge dialled the silent URL again first, that connection would be waiting.
    let again = tokio::time::timeout(Duration::from_millis(100), silent.accept()).await;
    assert!(again.is_err(), "the silent URL was dialled again first");
}

/// A client that leaves while its upstream is still being dialled (a load balancer's TCP
/// probe, or a client that gave up on a slow upstream) ends the dial, rather than holding
/// an upstream connection for the whole connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_ends_the_dial() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let edge = start_edge(&[silent_url], "connect_timeout = \"30s\"\n").await;
    let client = tokio::net::TcpStream::connect(edge_addr(&edge))
        .await
        .unwrap();
    let (mut dialled, _) = within("the edge dials the upstream", silent.accept())
        .await
        .unwrap();
    drop(client);
    dial_closed_unwritten(&mut dialled).await;
}

/// The edge closes its dial of a URL (accepted here as `dialled`) without writing to it.
async fn dial_closed_unwritten(dialled: &mut tokio::net::TcpStream) {
    let mut byte = [0u8; 1];
    let read = within(
        "the edge closes the dial",
        tokio::io::AsyncReadExt::read(dialled, &mut byte),
    )
    .await;
    assert_eq!(read.unwrap(), 0, "the dial is closed, not written to");
}

/// The readiness check's dial of an upstream that does not answer (up to the connect
/// timeout) does not hold up a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_the_readiness_checks_dial() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let edge = start_edge(
        &[silent_url],
        "connect_timeout = \"60s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    // The check dials at once: it is waiting for an INFO that never comes.
    let _dialled = within("the readiness check dials", silent.accept())
        .await
        .unwrap();
    within("the edge shuts down", edge.shutdown()).await;
}

/// A full nats-server (at its `max_connections`) sends its INFO, then
/// `-ERR 'maximum connections exceeded'`, then closes. The edge sends the client to the next
/// URL: at once when the refusal came with the INFO, otherwise the client gets the refusal
/// (as from the server itself), and its reconnect goes elsewhere. Never more than once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upstream_sends_clients_to_the_next_url() {
    let full = NatsServer::start_with_config("max_connections: 1");
    let _holder = client(&full.url()).await;
    let server = NatsServer::start();
    let edge = start_edge(&[full.url(), server.url()], IN_ORDER).await;
    let direct = client(&server.url()).await;
    let mut seen = direct.subscribe("full.>").await.unwrap();
    round_trip(&direct).await;

    let mut refused = 0;
    for i in 0..4 {
        let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
        let publish = format!("CONNECT {{\"verbose\":false}}\r\nPUB full.{i} 1\r\na\r\n");
        let reply = raw.roundtrip(publish.as_bytes()).await;
        if reply.closed {
            // The refusal is passed on, unless the client's write raced the close.
            assert!(
                reply.bytes.is_empty() || reply.bytes == b"-ERR 'maximum connections exceeded'\r\n",
                "{}",
                show(&reply.bytes)
            );
            refused += 1;
            continue;
        }
        assert_eq!(reply.text(), "", "served");
        round_trip(&direct).await;
        assert_eq!(
            next_msg(&mut seen).await.subject.as_str(),
            format!("full.{i}")
        );
    }
    assert!(refused <= 1, "{refused} clients were refused");
}

/// Every event the client reports, in order.
fn client_with_events() -> (async_nats::ConnectOptions, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = client_options().event_callback(move |event| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
        }
    });
    (opts, rx)
}

async fn wait_event(
    events: &mut mpsc::UnboundedReceiver<Event>,
    what: &str,
    want: impl Fn(&Event) -> bool,
) {
    within_for(Duration::from_secs(20), what, async {
        loop {
            let e = events.recv().await.expect("event stream ended");
            if want(&e) {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_mid_session_reconnects_and_resubscribes() {
    let mut server = NatsServer::start();
    let edge = start_edge(&[server.url()], "").await;
    let url = edge_url(&edge);

    let (opts, mut sub_events) = client_with_events();
    let subscriber = within("connect", opts.connect(&url)).await.unwrap();
    let (opts, mut pub_events) = client_with_events();
    let publisher = within("connect", opts.connect(&url)).await.unwrap();
    let mut sub = subscriber.subscribe("restart.t").await.unwrap();
    round_trip(&subscriber).await;
    publisher
        .publish("restart.t", Bytes::from_static(b"before"))
        .await
        .unwrap();
    round_trip(&publisher).await;
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"before");

    // Kill the upstream: the edge ends each session, the clients notice.
    server.stop();
    wait_event(&mut sub_events, "subscriber disconnect", |e| {
        matches!(e, Event::Disconnected)
    })
    .await;
    wait_event(&mut pub_events, "publisher disconnect", |e| {
        matches!(e, Event::Disconnected)
    })
    .await;

    // Back on the same port: the clients reconnect through the edge.
    server.restart();
    wait_event(&mut sub_events, "subscriber reconnect", |e| {
        matches!(e, Event::Connected)
    })
    .await;
    wait_event(&mut pub_events, "publisher reconnect", |e| {
        matches!(e, Event::Connected)
    })
    .await;
    // The subscriber replayed its SUB on reconnect; a round trip makes sure it is in place.
    round_trip(&subscriber).await;
    publisher
        .publish("restart.t", Bytes::from_static(b"after"))
        .await
        .unwrap();
    round_trip(&publisher).await;
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_closes_the_raw_client() {
    let mut server = NatsServer::start();
    let edge = start_edge(&[server.url()], "").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(
        !raw.roundtrip(b"CONNECT {\"verbose\":false}\r\nSUB x 1\r\n")
            .await
            .closed
    );
    server.stop();
    assert!(
        raw.closes_within(WAIT).await,
        "the edge must close the client when its upstream goes"
    );
    // New connections are refused with the upstream error until it is back.
    expect_upstream_unavailable(edge_addr(&edge)).await;
    server.restart();
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert_connects(&mut raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_upstream_url() {
    let server = NatsServer::start_with_args(&["--user", "a", "--pass", "b"]);
    // Sanity: the server does require them.
    let direct = within("direct connect", client_options().connect(server.url()))
        .await
        .expect_err("the server requires credentials");
    assert_eq!(direct.kind(), ConnectErrorKind::AuthorizationViolation);

    let edge = start_edge(&[format!("nats://a:b@127.0.0.1:{}", server.port())], "").await;
    let url = edge_url(&edge);

    // A client without credentials of its own gets the URL's.
    let c = client(&url).await;
    let mut sub = c.subscribe("cred").await.unwrap();
    round_trip(&c).await;
    c.publish("cred", Bytes::from_static(b"ok")).await.unwrap();
    round_trip(&c).await;
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"ok");

    // Nothing of the URL's secret shows in the INFO.
    let (mut raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(!info.to_string().contains("\"b\""), "{info}");
    assert_connects(&mut raw).await;

    // A client with wrong credentials of its own is refused, as by the server.
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    raw.send(b"CONNECT {\"verbose\":false,\"user\":\"a\",\"pass\":\"wrong\"}\r\nPING\r\n")
        .await;
    let got = raw.read_to_close().await;
    assert_eq!(show(&got), show(b"-ERR 'Authorization Violation'\r\n"));

    let err = within(
        "async-nats connect with wrong credentials",
        client_options()
            .user_and_password("a".into(), "wrong".into())
            .connect(&url),
    )
    .await
    .expect_err("wrong credentials");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );

    // Right credentials of its own are passed through.
    let c = within(
        "async-nats connect with own credentials",
        client_options()
            .user_and_password("a".into(), "b".into())
            .connect(&url),
    )
    .await
    .unwrap();
    round_trip(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_upstream_url() {
    let server = NatsServer::start_with_args(&["--auth", "s3cret"]);
    let edge = start_edge(&[format!("nats://s3cret@127.0.0.1:{}", server.port())], "").await;
    let c = client(&edge_url(&edge)).await;
    round_trip(&c).await;
}

/// nkey clients sign the nonce in the server's INFO: the edge must pass it through unchanged
/// (and the signed CONNECT back), or authentication cannot work through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_client_signs_the_upstream_nonce_through_the_edge() {
    // The user pair from the NATS documentation's examples.
    const SEED: &str = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY";
    const PUBLIC: &str = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{PUBLIC}\" }} ] }}\n"
    ));
    let direct = within(
        "direct nkey connect",
        client_options().nkey(SEED.into()).connect(server.url()),
    )
    .await
    .expect("the seed matches the configured user");
    round_trip(&direct).await;

    let edge = start_edge(&[server.url()], "").await;
    let (_raw, info) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(
        info["nonce"].as_str().is_some_and(|n| !n.is_empty()),
        "{info}"
    );
    let c = within(
        "nkey connect through the edge",
        client_options().nkey(SEED.into()).connect(edge_url(&edge)),
    )
    .await
    .expect("nkey auth through the edge");
    let mut sub = c.subscribe("nk").await.unwrap();
    round_trip(&c).await;
    c.publish("nk", Bytes::from_static(b"signed"))
        .await
        .unwrap();
    assert_eq!(&next_msg(&mut sub).await.payload[..], b"signed");

    let err = within(
        "connect without the key",
        client_options().connect(edge_url(&edge)),
    )
    .await
    .expect_err("no key, no entry");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
}

/// Both of the edge's links carry TCP keepalive, as Go (nats-server, nats.go) sets it on
/// every connection: behind the edge, neither end's keepalive reaches the other side. Read
/// from `/proc/net/tcp`, where a socket whose only timer is keepalive's shows timer 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_links_carry_tcp_keepalive() {
    fn timer_of(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<String> {
        let hex = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(v4) => format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            ),
            std::net::SocketAddr::V6(_) => String::new(),
        };
        let (local, remote) = (hex(local), hex(remote));
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[1] == local && fields[2] == remote)
                .then(|| fields[5].split(':').next().unwrap().to_string())
        })
    }
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap();
    // The PROXY header is written after the socket's options are set: once it is read, they
    // are.
    let edge = start_edge(
        &[format!("nats://{upstream}")],
        "connect_timeout = \"30s\"\nproxy_protocol = \"v2\"\n",
    )
    .await;
    let client = tokio::net::TcpStream::connect(edge_addr(&edge))
        .await
        .unwrap();
    let (mut dialled, edge_side) = within("the edge dials the upstream", silent.accept())
        .await
        .unwrap();
    let mut first = [0u8; 1];
    within(
        "the PROXY header",
        tokio::io::AsyncReadExt::read_exact(&mut dialled, &mut first),
    )
    .await
    .unwrap();
    // Polled: a timer of the bytes just sent (retransmission, 1) shows until they are
    // acknowledged; without keepalive the timer stays 0.
    for (local, remote, link) in [
        (edge_side, upstream, "upstream"),
        (edge_addr(&edge), client.local_addr().unwrap(), "client"),
    ] {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let timer = timer_of(local, remote);
            if timer.as_deref() == Some("02") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the {link} link: timer {timer:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sessions are spread over the URLs, each starting at the next one in turn, as client
/// libraries spread their connections over a cluster (the edge keeps the servers'
/// `connect_urls` from its clients, who cannot rebalance themselves); with
/// `dont_randomize`, every session goes to the first URL that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_spread_over_the_urls_unless_in_order() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let direct_a = client(&a.url()).await;
    let direct_b = client(&b.url()).await;
    let mut seen_a = direct_a.subscribe("spread.>").await.unwrap();
    let mut seen_b = direct_b.subscribe("spread.>").await.unwrap();
    round_trip(&direct_a).await;
    round_trip(&direct_b).await;
    for (extra, landed) in [("", (2, 2)), (IN_ORDER, (4, 0))] {
        let edge = start_edge(&[a.url(), b.url()], extra).await;
        for i in 0..4 {
            let c = client(&edge_url(&edge)).await;
            c.publish(format!("spread.{i}"), Bytes::from_static(b"x"))
                .await
                .unwrap();
            round_trip(&c).await;
        }
        round_trip(&direct_a).await;
        round_trip(&direct_b).await;
        let on = (
            drain_ready(&mut seen_a).len(),
            drain_ready(&mut seen_b).len(),
        );
        assert_eq!(on, landed, "sessions on a and b with {extra:?}");
    }
}
