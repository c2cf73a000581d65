//! Graceful drain (SIGTERM, SIGINT), as nats-server's lame-duck mode does it: stop accepting,
//! tell every client (an INFO with `ldm: true`, so client libraries can reconnect elsewhere),
//! give them `drain.grace_period` to leave, then close the rest and wait for their sessions,
//! all within `drain.timeout`.

use std::time::{Duration, Instant};

use crate::edge::Edge;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the grace period ended, closed by the edge.
    pub closed_by_edge: usize,
    /// Whether sessions were still ending when the timeout came.
    pub timed_out: bool,
}

pub async fn drain(edge: &mut Edge, grace_period: Duration, timeout: Duration) -> Drained {
    let started = Instant::now();
    let shared = edge.shared().clone();
    shared.health.set_draining();
    shared.metrics.set_draining(true);
    shared.stop_accepting();
    shared.enter_lame_duck();
    tracing::info!(
        clients = shared.registry.len(),
        grace_period_ms = grace_period.as_millis() as u64,
        "draining: stopped accepting, lame-duck INFO sent to clients"
    );
    let _ = tokio::time::timeout(grace_period, shared.registry.until_empty()).await;
    let closed_by_edge = shared.registry.len();
    if closed_by_edge > 0 {
        tracing::info!(
            clients = closed_by_edge,
            "grace period over: closing the remaining clients"
        );
    }
    let left = timeout.saturating_sub(started.elapsed());
    let _ = edge.shutdown_handle().send(true);
    let timed_out = tokio::time::timeout(left, edge.wait()).await.is_err();
    if timed_out {
        tracing::warn!(
            clients = shared.registry.len(),
            "drain timeout: exiting with sessions still ending"
        );
    }
    Drained {
        closed_by_edge,
        timed_out,
    }
}
