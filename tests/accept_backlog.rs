//! A burst of connections is queued by the kernel, not dropped: the listener asks for a long
//! accept queue (as nats-server does). With a short one, connections beyond it lose their
//! SYN and their clients wait a full second for the retransmission.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{start_edge, within, NatsServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_accepted_without_syn_retransmissions() {
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], "").await;
    let addr = edge.addr("default").expect("listener");
    // 600 connections as fast as one thread can open them, on a blocking thread so the edge's
    // accept loop competes for the CPU as it would under a real reconnect storm.
    let opened = tokio::task::spawn_blocking(move || {
        (0..600)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .expect("connect thread");
    let conns = opened.expect("every connection completes well within a SYN retransmission");
    assert_eq!(conns.len(), 600);
    drop(conns);
    within("edge shutdown", edge.shutdown()).await;
}
