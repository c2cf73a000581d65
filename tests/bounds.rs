//! Memory stays bounded: a subscriber that never reads must not make the edge buffer what the
//! publisher sends. The edge runs as its own process so its resident memory can be read.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use nats_edge_filters::CloseReason;
use tokio::net::TcpSocket;

const MIB: u64 = 1024 * 1024;
/// What the edge's resident memory may grow by, at most, while 50 MiB go past a stalled
/// reader: well under what it would take to hold them.
const RSS_GROWTH: u64 = 16 * MIB;
const MESSAGE: usize = 64 * 1024;
const TOTAL: usize = 50 * 1024 * 1024;
/// Messages between checks.
const BATCH: usize = 16;

/// The edge as a process of its own in front of `server`, so its resident memory can be read.
fn edge_process(server: &NatsServer) -> EdgeProcess {
    EdgeProcess::spawn(
        &["--listen", "127.0.0.1:0", "--upstream", &server.url()],
        &[],
    )
}

/// A raw subscriber with a small receive buffer that subscribes to `subject` and then never
/// reads its socket again.
async fn stalled_subscriber(edge: std::net::SocketAddr, subject: &str) -> RawConn {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within("connect the stalled subscriber", socket.connect(edge))
        .await
        .unwrap();
    let mut raw = RawConn::from_stream(stream);
    raw.read_info().await;
    let reply = raw
        .roundtrip(format!("CONNECT {{\"verbose\":false}}\r\nSUB {subject} 1\r\n").as_bytes())
        .await;
    assert!(!reply.closed && reply.bytes.is_empty(), "{}", reply.text());
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_does_not_grow_the_edge() {
    // nats-server's defaults: it holds up to 64 MB for a slow consumer, so the stalled
    // subscriber stays subscribed while the 50 MB go by. Whether the server ends it is the
    // server's business; the edge must simply not buffer on its behalf.
    let server = NatsServer::start();
    let edge = edge_process(&server);
    let baseline = edge.rss_bytes();

    let _stalled = stalled_subscriber(edge.addr(), "firehose").await;

    // Another pair on another subject keeps talking throughout.
    let other_sub = client(&edge.url()).await;
    let mut other = other_sub.subscribe("other.pair").await.unwrap();
    round_trip(&other_sub).await;
    let other_pub = client(&edge.url()).await;

    let publisher = client(&edge.url()).await;
    let payload = Bytes::from(vec![0xA5u8; MESSAGE]);
    let mut peak = baseline;
    let mut exchanged = 0u32;
    let messages = TOTAL / MESSAGE;
    for i in 0..messages {
        within(
            "publishing to the stalled subscriber",
            publisher.publish("firehose", payload.clone()),
        )
        .await
        .unwrap();
        if i % BATCH == BATCH - 1 || i == messages - 1 {
            within("the publisher's round trip", round_trip(&publisher)).await;
            peak = peak.max(edge.rss_bytes());

            let body = Bytes::from(format!("ping {exchanged}"));
            other_pub.publish("other.pair", body.clone()).await.unwrap();
            let m = within("the other pair's message", next_msg(&mut other)).await;
            assert_eq!(m.payload, body);
            exchanged += 1;
        }
    }
    peak = peak.max(edge.rss_bytes());
    assert_rss_peak(
        &format!("{} MiB published", TOTAL as u64 / MIB),
        baseline,
        peak,
        baseline + RSS_GROWTH,
    );

    let slow_consumer = server
        .log()
        .wait_for(0, Duration::ZERO, |l| {
            l.contains("Slow Consumer").then_some(())
        })
        .is_some();
    eprintln!("nats-server reported a slow consumer: {slow_consumer}");

    // Still serving: the pair works and a new client gets in.
    assert!(exchanged as usize >= messages / BATCH);
    let late = client(&edge.url()).await;
    within_for(Duration::from_secs(10), "a late client", round_trip(&late)).await;
}

/// Publishes 16 MiB on `firehose` (where a stalled subscriber listens), with a round trip
/// every [`BATCH`] messages: none of it may hold the publisher up.
async fn publish_16_mib_of_firehose(publisher: &async_nats::Client) {
    let payload = Bytes::from(vec![1u8; MESSAGE]);
    within_for(Duration::from_secs(60), "publishing 16 MiB", async {
        for i in 0..256 {
            publisher
                .publish("firehose", payload.clone())
                .await
                .unwrap();
            if i % BATCH == BATCH - 1 {
                round_trip(publisher).await;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_is_not_held_by_a_stalled_subscriber_in_process() {
    // The same shape with the library edge: the other sessions of the process keep moving.
    let (_server, edge) = server_and_edge("").await;
    let _stalled = stalled_subscriber(edge_addr(&edge), "firehose").await;
    let publisher = client(&edge_url(&edge)).await;
    publish_16_mib_of_firehose(&publisher).await;
    let c = client(&edge_url(&edge)).await;
    round_trip(&c).await;
}

/// A subscriber that takes none of what is queued for it is closed once the write deadline
/// passes, as nats-server closes a slow consumer: nothing else would end its session, since
/// the edge stops reading the upstream for it. The others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_takes_nothing_is_closed_as_a_slow_consumer() {
    let server = NatsServer::start();
    let edge = start_edge_toml(&edge_toml(
        &[server.url()],
        "",
        // Long enough that nats-server, busy on a loaded machine, always takes the
        // publisher's bytes within it (the deadline bounds that direction too).
        "[limits]\nwrite_deadline = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    let _stalled = stalled_subscriber(edge_addr(&edge), "firehose").await;
    let publisher = client(&edge_url(&edge)).await;
    // Enough to fill the subscriber's socket and the edge's queue for it: well under the
    // 64 MB nats-server holds for the edge before it gives up on it itself.
    publish_16_mib_of_firehose(&publisher).await;
    let closed = "nats_edge_connections_closed_total{reason=\"slow_consumer\"}";
    poll_http(edge.admin_addr().unwrap(), "/metrics", |_, body| {
        (metric(body, closed) == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(edge.metrics().closes(CloseReason::SlowConsumer), 1);
    // The publisher was never held up, and is still served.
    round_trip(&publisher).await;
}

/// nats-server skips any number of bytes between `PING` and its newline. The edge answers such
/// a line too, and must not buffer what it skips while the newline is on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_ping_line_does_not_grow_the_edge() {
    let server = NatsServer::start();
    let edge = edge_process(&server);
    let baseline = edge.rss_bytes();
    let (mut raw, _) = RawConn::connect_info(edge.addr()).await;
    raw.send(b"CONNECT {\"verbose\":false}\r\nPING").await;
    let filler = vec![b'x'; MESSAGE];
    let mut peak = baseline;
    for i in 0..TOTAL / MESSAGE {
        raw.send(&filler).await;
        if i % BATCH == BATCH - 1 {
            peak = peak.max(edge.rss_bytes());
        }
    }
    // The line ends and is answered; the connection carries on.
    raw.send(b"\r\n").await;
    let answer = raw.read_until(b"PONG\r\n").await;
    assert_eq!(answer.text(), "PONG\r\n");
    let after = raw.roundtrip(b"").await;
    assert!(after.bytes.is_empty() && !after.closed, "{}", after.text());
    peak = peak.max(edge.rss_bytes());
    assert_rss_peak(
        &format!("a {} MiB PING line", TOTAL as u64 / MIB),
        baseline,
        peak,
        baseline + RSS_GROWTH,
    );
}

/// Reports the edge's RSS over `what` and checks that its peak stayed under `bound`.
fn assert_rss_peak(what: &str, baseline: u64, peak: u64, bound: u64) {
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    eprintln!(
        "edge RSS: baseline {:.1} MiB, peak {:.1} MiB over {what}",
        mib(baseline),
        mib(peak)
    );
    assert!(
        peak < bound,
        "edge RSS peaked at {:.1} MiB (baseline {:.1} MiB); bound {:.1} MiB",
        mib(peak),
        mib(baseline),
        mib(bound)
    );
}

/// A client receiving a firehose it reads as fast as it comes is still heard: its UNSUB and
/// PING reach the upstream while the upstream→client direction always has bytes to move,
/// and the PONG comes back in the stream (both directions share one task and its budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_heard_while_a_firehose_flows_to_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // The publisher below writes as fast as it can: room for nats-server to queue what the
    // edge (a debug build, on a loaded machine) has not read yet, rather than close it as a
    // slow consumer.
    let server = NatsServer::start_with_config("max_pending: 512MB\n");
    let edge = start_edge(&[server.url()], "").await;
    let mut sub = tokio::net::TcpStream::connect(edge_addr(&edge))
        .await
        .unwrap();
    sub.write_all(b"CONNECT {\"verbose\":false}\r\nSUB fire 1\r\nPING\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen = Vec::new();
    within("the subscription", async {
        while !seen.windows(6).any(|w| w == b"PONG\r\n") {
            let n = sub.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;

    // A publisher straight to nats-server, as fast as it can, until told to stop (or 60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut conn = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        tokio::spawn(async move {
            conn.write_all(b"CONNECT {\"verbose\":false}\r\n")
                .await
                .unwrap();
            let one = [b"PUB fire 1024\r\n".as_slice(), &[b'x'; 1024], b"\r\n"].concat();
            let batch = one.repeat(64);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                if conn.write_all(&batch).await.is_err() {
                    break;
                }
            }
        })
    };

    // Once the firehose flows, the client ends its subscription and asks for a PONG.
    within("the firehose to flow", async {
        let mut received = 0usize;
        while received < 8 * 1024 * 1024 {
            let n = sub.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed");
            received += n;
        }
    })
    .await;
    sub.write_all(b"UNSUB 1\r\nPING\r\n").await.unwrap();
    let mut tail = Vec::new();
    within("the PONG behind the firehose", async {
        loop {
            let n = sub.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed");
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(6).any(|w| w == b"PONG\r\n") {
                break;
            }
            // Only the last bytes can hold the start of a PONG split across reads.
            let keep = tail.len().saturating_sub(5);
            tail.drain(..keep);
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
}

/// An upstream that takes nothing (here a nats-server stopped with SIGSTOP, as a partition
/// would leave it) ends the session after the write deadline, as nats-server bounds its own
/// writes: past its queue's bound the edge no longer reads the client, and without the
/// deadline the session would last until TCP gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_takes_nothing_ends_the_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], "[limits]\nwrite_deadline = \"300ms\"\n").await;
    let (mut raw, _) = RawConn::connect_info(edge_addr(&edge)).await;
    assert!(
        !raw.roundtrip(b"CONNECT {\"verbose\":false}\r\n")
            .await
            .closed
    );
    send_signal(server.pid(), "STOP");
    let (mut reader, mut writer) = raw.into_stream().into_split();
    // Publishes until the edge stops taking them (a bounded amount: 256 MiB).
    let publishing = tokio::spawn(async move {
        let line = format!("PUB firehose 1024\r\n{}\r\n", "x".repeat(1024));
        for _ in 0..256 * 1024 {
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let ended = within("the session's end", async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    send_signal(server.pid(), "CONT");
    publishing.abort();
    let () = ended;
    // Counted once the session has let its client go: poll for it.
    within("the close counted", async {
        while edge.metrics().closes(CloseReason::UpstreamIoError) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(edge.metrics().closes(CloseReason::UpstreamIoError), 1);
}

/// One client flooding ops that cost the edge more than their bytes (CONNECTs, which it
/// parses and writes anew) does not hold up the other sessions on its worker: its session
/// gives the worker back after a turn of a couple of milliseconds. Before, each CONNECT sent
/// its session round its loop again, so it held the worker for as long as the flood came
/// (here, other clients' round trips took one to two seconds, in a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connects_does_not_hold_up_other_sessions_on_its_worker() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What one of the other sessions' round trips may take, at most, during the flood.
    const ROUND_TRIP_BOUND: Duration = Duration::from_millis(200);
    const FLOOD_CONNECTS: usize = 4000;
    let server = NatsServer::start();
    let edge = EdgeProcess::spawn(
        &["--listen", "127.0.0.1:0", "--upstream", &server.url()],
        // One worker: the two sessions share it.
        &[("NATS_EDGE_WORKER_THREADS", "1")],
    );
    let (mut healthy, _) = RawConn::connect_info(edge.addr()).await;
    healthy.roundtrip(b"CONNECT {\"verbose\":false}\r\n").await;
    let (flooder, _) = RawConn::connect_info(edge.addr()).await;
    let (mut reader, mut writer) = flooder.into_stream().into_split();
    let flood = tokio::spawn(async move {
        // Keys the edge keeps but does not know: each is read and written anew.
        let keys: String = (0..100).map(|i| format!(",\"k{i}\":{i}")).collect();
        let line = format!("CONNECT {{\"verbose\":false{keys}}}\r\n");
        // Seconds of work for the edge, several times what a turn may take.
        for _ in 0..FLOOD_CONNECTS {
            writer.write_all(line.as_bytes()).await.unwrap();
        }
        writer.write_all(b"PING\r\n").await.unwrap();
        writer
    });
    // The flood lasts until its PONG comes back: the edge has handled all of it then.
    let flooding = Arc::new(AtomicBool::new(true));
    let drain = tokio::spawn({
        let flooding = flooding.clone();
        async move {
            let mut buf = vec![0; 64 * 1024];
            let mut seen = Vec::new();
            while !seen.ends_with(b"PONG\r\n") {
                let n = reader.read(&mut buf).await.unwrap();
                assert!(n > 0, "the flooder was closed");
                seen.extend_from_slice(&buf[..n]);
                seen.drain(..seen.len().saturating_sub(8));
            }
            flooding.store(false, Ordering::Relaxed);
        }
    });
    let mut round_trips = 0;
    let mut slowest = Duration::ZERO;
    while flooding.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        // Whatever came before the PONG (nats-server's first PING) does not matter here.
        let reply = healthy.roundtrip(b"").await;
        assert!(!reply.closed, "{}", reply.text());
        slowest = slowest.max(started.elapsed());
        round_trips += 1;
    }
    within("the flood", flood).await.unwrap();
    within("the flooder's PONG", drain).await.unwrap();
    eprintln!("{round_trips} round trips during the flood, the slowest {slowest:?}");
    assert!(
        slowest < ROUND_TRIP_BOUND,
        "a round trip took {slowest:?} during the flood"
    );
}
