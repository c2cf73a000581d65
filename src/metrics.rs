//! Process-wide counters. Forwarders count per session in plain fields and add them here once,
//! when the session ends, so the message path touches no shared cache line.

use std::sync::atomic::{AtomicU64, Ordering};

use nats_edge_filters::CloseReason;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    closes: [AtomicU64; CloseReason::ALL.len()],
    pub client_msgs: AtomicU64,
    pub client_bytes: AtomicU64,
    pub upstream_msgs: AtomicU64,
    pub upstream_bytes: AtomicU64,
    pub upstream_dial_failures: AtomicU64,
}

impl Metrics {
    pub fn closed(&self, reason: CloseReason) {
        self.closes[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions ended for `reason` so far.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()].load(Ordering::Relaxed)
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
