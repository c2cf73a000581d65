//! Process-wide counters. Forwarders count per session in plain fields and add them here once,
//! when the session ends, so the message path touches no shared cache line.

use std::sync::atomic::{AtomicU64, Ordering};

use nats_edge_filters::CloseReason;

use crate::config::ListenerKind;

/// Why a connection's transport handshake failed; counted per listener kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// A missing, malformed or truncated PROXY protocol header.
    ProxyHeader,
    /// A TLS handshake that failed: a rejected or missing client certificate, no common
    /// protocol version or cipher, a corrupt record.
    Tls,
    /// A plain-text client on a TLS listener.
    PlainOnTlsListener,
    /// A TLS client on a plain (tcp or ws) listener.
    TlsOnPlainListener,
    /// A refused WebSocket upgrade (bad key, version, origin, path or request).
    WebSocket,
    /// The handshake did not finish within the listener's `handshake_timeout`.
    Timeout,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::ProxyHeader,
        HandshakeFailure::Tls,
        HandshakeFailure::PlainOnTlsListener,
        HandshakeFailure::TlsOnPlainListener,
        HandshakeFailure::WebSocket,
        HandshakeFailure::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::ProxyHeader => "proxy_header",
            HandshakeFailure::Tls => "tls",
            HandshakeFailure::PlainOnTlsListener => "plain_on_tls_listener",
            HandshakeFailure::TlsOnPlainListener => "tls_on_plain_listener",
            HandshakeFailure::WebSocket => "websocket",
            HandshakeFailure::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const KINDS: usize = 4;

fn kind_index(kind: ListenerKind) -> usize {
    match kind {
        ListenerKind::Tcp => 0,
        ListenerKind::Tls => 1,
        ListenerKind::Ws => 2,
        ListenerKind::Wss => 3,
    }
}

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
    handshake_failures: [[AtomicU64; HandshakeFailure::ALL.len()]; KINDS],
    /// Ops whose subjects the rewrite filter changed, client to upstream.
    pub rewritten_client_to_upstream: AtomicU64,
    /// Deliveries whose subjects the rewrite filter mapped back.
    pub rewritten_upstream_to_client: AtomicU64,
    /// Published messages that were tagged.
    pub tags_applied: AtomicU64,
    /// Published messages that carried a reserved tag header of the client's own.
    pub tag_spoofs: AtomicU64,
}

/// The filters report what they did here. These events are per message, so they are
/// counted with relaxed atomics; a spoof attempt is also logged, in the session's span.
impl nats_edge_filters::Events for Metrics {
    fn rewritten(&self, direction: &'static str) {
        let counter = if direction == "client_to_upstream" {
            &self.rewritten_client_to_upstream
        } else {
            &self.rewritten_upstream_to_client
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn tag_applied(&self) {
        self.tags_applied.fetch_add(1, Ordering::Relaxed);
    }

    fn tag_spoof(&self) {
        self.tag_spoofs.fetch_add(1, Ordering::Relaxed);
        tracing::info!("client sent a header with a reserved tag name");
    }
}

impl Metrics {
    pub fn closed(&self, reason: CloseReason) {
        self.closes[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions ended for `reason` so far.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()].load(Ordering::Relaxed)
    }

    pub fn handshake_failed(&self, kind: ListenerKind, why: HandshakeFailure) {
        self.handshake_failures[kind_index(kind)][why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Handshakes on listeners of `kind` that failed for `why` so far.
    pub fn handshake_failures(&self, kind: ListenerKind, why: HandshakeFailure) -> u64 {
        self.handshake_failures[kind_index(kind)][why.index()].load(Ordering::Relaxed)
    }

    /// Handshakes on listeners of `kind` that failed for any reason so far.
    pub fn handshake_failures_total(&self, kind: ListenerKind) -> u64 {
        self.handshake_failures[kind_index(kind)]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
