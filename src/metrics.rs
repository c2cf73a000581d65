//! Process-wide metrics, exported in the Prometheus (OpenMetrics) text format by the admin
//! server's `/metrics`.
//!
//! Forwarders count per session in plain fields and add them here once, when the session ends,
//! so the message path touches no shared cache line. Counters whose labels are known up front
//! (directions, close reasons, handshake failures) are registered at start-up, so they show as
//! 0 before anything happens and a label lookup never runs on a session's way out.
//!
//! The filters report rewrites, tags and ACL denials per message, through
//! [`nats_edge_filters::Events`]. Those counters are resolved once and kept as handles: a
//! rewrite or a tag is one atomic add, a denial a shared read lock, a lookup by the user's
//! name and an atomic add (no allocation, no label set built or hashed); the write lock and
//! the family's own lock are taken only at a user's first denial.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use nats_edge_filters::{CloseReason, DenialKind, RewriteDirection};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::config::ListenerKind;
use crate::registry::LiveCounts;

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
}

const KINDS: [ListenerKind; 4] = [
    ListenerKind::Tcp,
    ListenerKind::Tls,
    ListenerKind::Ws,
    ListenerKind::Wss,
];

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's `max_connections` was reached.
    MaxConnections,
    /// The listener's `max_connection_rate` was exceeded.
    RateLimited,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// The `direction` label of message, byte and rewrite counters.
pub const CLIENT_TO_UPSTREAM: &str = "client_to_upstream";
pub const UPSTREAM_TO_CLIENT: &str = "upstream_to_client";

/// At most this many distinct `user` label values; later users are counted as [`OTHER_USER`].
/// The user name can come from the client (a CONNECT `user`), and every label value is a
/// time series kept for the life of the process.
pub const MAX_USER_LABELS: usize = 1000;
pub const OTHER_USER: &str = "_other";

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

fn l1(k: &'static str, v: &str) -> Labels1 {
    [(k, label_value(v))]
}

fn l2(k1: &'static str, v1: &str, k2: &'static str, v2: &str) -> Labels2 {
    [(k1, label_value(v1)), (k2, label_value(v2))]
}

/// A label value escaped as the text exposition format requires (`\`, `"`, newline):
/// prometheus-client writes values as given, and a user name can come from a client's
/// CONNECT, where one quote would make every later scrape unparseable.
fn label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The counters of one listener, fetched once when it starts.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub open: Gauge,
    pub total: Counter,
    refused: [Counter; 2],
    handshake_duration: Histogram,
}

impl ListenerMetrics {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }

    /// Accept to the first INFO written to the client (on a classic TLS listener, to the end
    /// of the TLS handshake that follows it).
    pub fn handshake_done(&self, took: Duration) {
        self.handshake_duration.observe(took.as_secs_f64());
    }
}

/// Upper bounds (seconds) of the filter-time histogram: 1 µs to about 16 ms.
const FILTER_BUCKETS: [f64; 15] = [
    1e-6, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 64e-6, 128e-6, 256e-6, 512e-6, 1.024e-3, 2.048e-3,
    4.096e-3, 8.192e-3, 16.384e-3,
];

/// Time spent in the filter chain, counted by each session in plain fields
/// ([`LocalFilterTime`]) and added here when the session ends: the prometheus-client
/// histogram takes a lock per observation, which the op path must not.
#[derive(Debug, Default, Clone)]
pub struct FilterHistogram(Arc<FilterCounts>);

#[derive(Debug, Default)]
struct FilterCounts {
    buckets: [AtomicU64; FILTER_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// One op in this many that reach a filter is timed: reading the clock twice per op costs
/// more than what many filters do with it.
pub const FILTER_TIME_SAMPLE: u64 = 16;

/// A session's own filter-time histogram.
#[derive(Debug, Default, Clone)]
pub struct LocalFilterTime {
    buckets: [u64; FILTER_BUCKETS.len() + 1],
    sum_nanos: u64,
    /// Ops shown to the filters so far.
    seen: u64,
}

impl LocalFilterTime {
    /// Call before the filters see an op: the start time when this op is one of the sample
    /// (the session's first, and every [`FILTER_TIME_SAMPLE`]th after it).
    pub fn start(&mut self) -> Option<Instant> {
        let timed = self.seen % FILTER_TIME_SAMPLE == 0;
        self.seen = self.seen.wrapping_add(1);
        timed.then(Instant::now)
    }

    /// Call after the filters have seen the op, with what [`LocalFilterTime::start`] gave.
    pub fn finish(&mut self, started: Option<Instant>) {
        if let Some(started) = started {
            self.observe(started.elapsed());
        }
    }

    pub fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = FILTER_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FILTER_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_nanos = self
            .sum_nanos
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
}

impl FilterHistogram {
    fn add(&self, local: &LocalFilterTime) {
        if local.buckets.iter().all(|n| *n == 0) {
            return;
        }
        for (shared, n) in self.0.buckets.iter().zip(local.buckets) {
            shared.fetch_add(n, Ordering::Relaxed);
        }
        self.0
            .sum_nanos
            .fetch_add(local.sum_nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for FilterHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for FilterHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Each bucket's own count: the encoder sums them into the `le` series itself.
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.0.buckets.len());
        for (i, count) in self.0.buckets.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let upper = FILTER_BUCKETS.get(i).copied().unwrap_or(f64::MAX);
            buckets.push((upper, count));
        }
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `nats_edge_busy_poll_seconds`: read from the workers' shared total at each scrape, so
/// the busy-poll loop touches no registry.
#[derive(Debug)]
struct BusyPollTime;

impl TypedMetric for BusyPollTime {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for BusyPollTime {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let seconds = crate::busy_poll::polling_time().as_secs_f64();
        encoder.encode_counter::<NoLabelSet, _, f64>(&seconds, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// `nats_edge_messages` and `nats_edge_bytes`: read from the connection registry at each
/// scrape (every ended session, and the live ones as of their last wake-up), so a
/// long-lived connection's traffic shows while it lasts, not only when it ends. Until a
/// registry is attached, the counters of ended sessions.
#[derive(Debug)]
struct Traffic {
    connections: Arc<OnceLock<Arc<crate::registry::Registry>>>,
    /// The registry's totals, summed once for the scrape being encoded ([`Metrics::encode`]),
    /// so the two traffic families walk the connections once between them: the walk holds
    /// the lock a session starting or ending waits on.
    scrape_totals: Arc<Mutex<Option<LiveCounts>>>,
    /// The ended sessions' counters, by direction: the values without a registry.
    ended: [Counter; 2],
    bytes: bool,
}

impl Traffic {
    /// Client to upstream, then upstream to client.
    fn values(&self) -> [u64; 2] {
        match self.connections.get() {
            Some(registry) => {
                let summed = *self
                    .scrape_totals
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let t = summed.unwrap_or_else(|| registry.totals());
                if self.bytes {
                    [t.in_bytes, t.out_bytes]
                } else {
                    [t.in_msgs, t.out_msgs]
                }
            }
            None => [self.ended[0].get(), self.ended[1].get()],
        }
    }
}

impl TypedMetric for Traffic {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Traffic {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (direction, value) in [CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT]
            .into_iter()
            .zip(self.values())
        {
            encoder
                .encode_family(&l1("direction", direction))?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Every metric the edge exports.
pub struct Metrics {
    registry: Registry,
    connections_open: Family<Labels2, Gauge>,
    connections_total: Family<Labels2, Counter>,
    refused: Family<Labels2, Counter>,
    closes: Vec<Counter>,
    /// Index 0: client to upstream, 1: upstream to client. Added when a session ends.
    messages: [Counter; 2],
    bytes: [Counter; 2],
    /// The connection registry the exported traffic counters are read from.
    connections: Arc<OnceLock<Arc<crate::registry::Registry>>>,
    /// Its totals for the scrape being encoded (see [`Traffic::scrape_totals`]).
    scrape_totals: Arc<Mutex<Option<LiveCounts>>>,
    acl_denials: Family<Labels2, Counter>,
    /// The denial counters of each user with a label of their own (at most
    /// [`MAX_USER_LABELS`]), by [`DenialKind`]; each made at that user's first denial in
    /// that direction.
    acl_users: RwLock<HashMap<String, DenialCounters>>,
    /// Users past [`MAX_USER_LABELS`], by [`DenialKind`].
    acl_other: DenialCounters,
    /// By [`RewriteDirection`], resolved once: a rewrite is counted per message.
    rewrites: [Counter; 2],
    tags_applied: Counter,
    tag_spoofs: Counter,
    tag_reloads_held: Counter,
    upstream_dials: Family<Labels1, Counter>,
    upstream_dial_failures: Family<Labels1, Counter>,
    /// The upstreams dialled so far, for the totals tests read.
    upstreams_seen: Mutex<HashMap<String, (Counter, Counter)>>,
    handshake_failures: Family<Labels2, Counter>,
    handshake_duration: Family<Labels1, Histogram>,
    filter_duration: FilterHistogram,
    config_reloads: Family<Labels1, Counter>,
    draining: Gauge,
    ready: Gauge,
    listeners: Mutex<Vec<ListenerMetrics>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn handshake_buckets() -> Histogram {
    // 1 ms to about 8 s: a local TCP handshake to a slow TLS one across the world.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 14,
    ))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let connections_open = Family::<Labels2, Gauge>::default();
        let connections_total = Family::<Labels2, Counter>::default();
        let refused = Family::<Labels2, Counter>::default();
        let closed = Family::<Labels1, Counter>::default();
        let messages = [Counter::default(), Counter::default()];
        let bytes = [Counter::default(), Counter::default()];
        let connections = Arc::new(OnceLock::new());
        let scrape_totals = Arc::new(Mutex::new(None));
        let acl_denials = Family::<Labels2, Counter>::default();
        let rewrites = Family::<Labels1, Counter>::default();
        let tags_applied = Counter::default();
        let tag_spoofs = Counter::default();
        let tag_reloads_held = Counter::default();
        let upstream_dials = Family::<Labels1, Counter>::default();
        let upstream_dial_failures = Family::<Labels1, Counter>::default();
        let handshake_failures = Family::<Labels2, Counter>::default();
        let handshake_duration =
            Family::<Labels1, Histogram>::new_with_constructor(handshake_buckets as fn() -> _);
        let filter_duration = FilterHistogram::default();
        let config_reloads = Family::<Labels1, Counter>::default();
        let build_info = Family::<Labels1, Gauge>::default();
        let draining = Gauge::default();
        let ready = Gauge::default();

        registry.register(
            "nats_edge_connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        registry.register(
            "nats_edge_connections",
            "Client sessions started (after the transport handshake; on a classic TLS listener before the TLS upgrade, which may still fail)",
            connections_total.clone(),
        );
        registry.register(
            "nats_edge_connections_closed",
            "Client sessions ended, by close reason",
            closed.clone(),
        );
        registry.register(
            "nats_edge_connections_refused",
            "Client connections refused at accept",
            refused.clone(),
        );
        registry.register(
            "nats_edge_messages",
            "Message frames (PUB/HPUB, MSG/HMSG) read, by direction; live sessions as of their last wake-up",
            Traffic {
                connections: connections.clone(),
                scrape_totals: scrape_totals.clone(),
                ended: messages.clone(),
                bytes: false,
            },
        );
        registry.register(
            "nats_edge_bytes",
            "Bytes read, by direction; live sessions as of their last wake-up",
            Traffic {
                connections: connections.clone(),
                scrape_totals: scrape_totals.clone(),
                ended: bytes.clone(),
                bytes: true,
            },
        );
        registry.register(
            "nats_edge_acl_denials",
            "Operations an ACL refused, by user and direction",
            acl_denials.clone(),
        );
        registry.register(
            "nats_edge_rewrites",
            "Subjects rewritten, by direction",
            rewrites.clone(),
        );
        registry.register(
            "nats_edge_tags_applied",
            "Messages tagged with the sender's identity",
            tags_applied.clone(),
        );
        registry.register(
            "nats_edge_tag_spoofs",
            "Client-supplied reserved tag headers stripped",
            tag_spoofs.clone(),
        );
        registry.register(
            "nats_edge_tag_reloads_held",
            "Live connections that kept their tagging file at a reload, its tags needing more room than they were told",
            tag_reloads_held.clone(),
        );
        registry.register(
            "nats_edge_upstream_dials",
            "Upstream dials attempted, by upstream",
            upstream_dials.clone(),
        );
        registry.register(
            "nats_edge_upstream_dial_failures",
            "Upstream dials that failed, by upstream",
            upstream_dial_failures.clone(),
        );
        registry.register(
            "nats_edge_handshake_failures",
            "Transport handshakes that failed, by transport and reason",
            handshake_failures.clone(),
        );
        registry.register(
            "nats_edge_handshake_duration_seconds",
            "From accept to the first INFO written to the client",
            handshake_duration.clone(),
        );
        registry.register(
            "nats_edge_filter_duration_seconds",
            "Time in the filter chain per op a filter looked at, one op in 16 sampled; added when a session ends",
            filter_duration.clone(),
        );
        registry.register(
            "nats_edge_config_reloads",
            "Configuration reloads, by result",
            config_reloads.clone(),
        );
        registry.register(
            "nats_edge_build_info",
            "The running version (value 1)",
            build_info.clone(),
        );
        registry.register(
            "nats_edge_busy_poll_seconds",
            "Time worker threads spent awake busy-polling after reads (busy_poll), work included",
            BusyPollTime,
        );
        registry.register(
            "nats_edge_draining",
            "1 while the edge drains before exiting",
            draining.clone(),
        );
        registry.register(
            "nats_edge_ready",
            "1 while /readyz answers 200, else 0 (read at each scrape)",
            ready.clone(),
        );

        build_info
            .get_or_create(&l1("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        let closes = CloseReason::ALL
            .iter()
            .map(|r| closed.get_or_create(&l1("reason", r.as_str())).clone())
            .collect();
        for kind in KINDS {
            for why in HandshakeFailure::ALL {
                let _ = handshake_failures.get_or_create(&l2(
                    "transport",
                    kind.as_str(),
                    "reason",
                    why.as_str(),
                ));
            }
        }
        for result in ["ok", "failed"] {
            let _ = config_reloads.get_or_create(&l1("result", result));
        }
        let by_dir = |f: &Family<Labels1, Counter>| {
            [CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT]
                .map(|dir| f.get_or_create(&l1("direction", dir)).clone())
        };
        Metrics {
            messages,
            bytes,
            connections,
            scrape_totals,
            registry,
            connections_open,
            connections_total,
            refused,
            closes,
            acl_denials,
            acl_users: RwLock::new(HashMap::new()),
            acl_other: DenialCounters::default(),
            rewrites: by_dir(&rewrites),
            tags_applied,
            tag_spoofs,
            tag_reloads_held,
            upstream_dials,
            upstream_dial_failures,
            upstreams_seen: Mutex::new(HashMap::new()),
            handshake_failures,
            handshake_duration,
            filter_duration,
            config_reloads,
            draining,
            ready,
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// The counters of the listener called `name`, registered with every label set it can
    /// take so they read 0 before its first connection.
    pub fn listener(&self, name: &str, kind: ListenerKind) -> ListenerMetrics {
        let labels = l2("listener", name, "transport", kind.as_str());
        let refused = [Refusal::MaxConnections, Refusal::RateLimited]
            .map(|why| self.refused_counter(name, why));
        let metrics = ListenerMetrics {
            open: self.connections_open.get_or_create(&labels).clone(),
            total: self.connections_total.get_or_create(&labels).clone(),
            refused,
            handshake_duration: self
                .handshake_duration
                .get_or_create(&l1("transport", kind.as_str()))
                .clone(),
        };
        lock(&self.listeners).push(metrics.clone());
        metrics
    }

    fn refused_counter(&self, listener: &str, why: Refusal) -> Counter {
        self.refused
            .get_or_create(&l2("listener", listener, "reason", why.as_str()))
            .clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        let summed = self.connections.get().map(|registry| registry.totals());
        *self.scrape_totals_lock() = summed;
        let encoded = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        *self.scrape_totals_lock() = None;
        encoded?;
        Ok(out)
    }

    fn scrape_totals_lock(&self) -> std::sync::MutexGuard<'_, Option<LiveCounts>> {
        self.scrape_totals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A session's totals, added once when it ends.
    pub fn session_ended(&self, summary: &SessionTotals) {
        self.closes[summary.reason.index()].inc();
        self.messages[0].inc_by(summary.client_msgs);
        self.bytes[0].inc_by(summary.client_bytes);
        self.messages[1].inc_by(summary.upstream_msgs);
        self.bytes[1].inc_by(summary.upstream_bytes);
        self.filter_duration.add(&summary.filter_time);
    }

    /// Sessions ended for `reason` so far.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()].get()
    }

    pub fn handshake_failed(&self, kind: ListenerKind, why: HandshakeFailure) {
        self.handshake_failure_counter(kind, why).inc();
    }

    fn handshake_failure_counter(&self, kind: ListenerKind, why: HandshakeFailure) -> Counter {
        self.handshake_failures
            .get_or_create(&l2("transport", kind.as_str(), "reason", why.as_str()))
            .clone()
    }

    /// Handshakes on listeners of `kind` that failed for `why` so far.
    pub fn handshake_failures(&self, kind: ListenerKind, why: HandshakeFailure) -> u64 {
        self.handshake_failure_counter(kind, why).get()
    }

    /// Handshakes on listeners of `kind` that failed for any reason so far.
    pub fn handshake_failures_total(&self, kind: ListenerKind) -> u64 {
        HandshakeFailure::ALL
            .iter()
            .map(|why| self.handshake_failures(kind, *why))
            .sum()
    }

    /// One dial of `upstream` (a URL without credentials) and whether it failed.
    pub fn dialed(&self, upstream: &str, failed: bool) {
        let mut seen = lock(&self.upstreams_seen);
        let (dials, failures) = self.upstream_counters(&mut seen, upstream);
        dials.inc();
        if failed {
            failures.inc();
        }
    }

    /// Registers the dial counters of the configured upstreams (URLs without credentials),
    /// so they read 0 before the first dial and a first failed dial shows as an increase.
    /// Called at start-up and by every reload; counters of URLs no longer configured stay.
    pub fn upstreams_configured<I, S>(&self, upstreams: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen = lock(&self.upstreams_seen);
        for upstream in upstreams {
            self.upstream_counters(&mut seen, upstream.as_ref());
        }
    }

    fn upstream_counters<'a>(
        &self,
        seen: &'a mut HashMap<String, (Counter, Counter)>,
        upstream: &str,
    ) -> &'a (Counter, Counter) {
        if !seen.contains_key(upstream) {
            let labels = l1("upstream", upstream);
            let counters = (
                self.upstream_dials.get_or_create(&labels).clone(),
                self.upstream_dial_failures.get_or_create(&labels).clone(),
            );
            seen.insert(upstream.to_string(), counters);
        }
        &seen[upstream]
    }

    /// Upstream dials so far, failed or not, over every upstream.
    pub fn upstream_dials(&self) -> u64 {
        lock(&self.upstreams_seen).values().map(|c| c.0.get()).sum()
    }

    /// Failed upstream dials so far, over every upstream.
    pub fn upstream_dial_failures(&self) -> u64 {
        lock(&self.upstreams_seen).values().map(|c| c.1.get()).sum()
    }

    /// Client connections accepted so far, over every listener.
    pub fn connections_total(&self) -> u64 {
        lock(&self.listeners).iter().map(|l| l.total.get()).sum()
    }

    /// Client connections open now, over every listener.
    pub fn connections_open(&self) -> u64 {
        lock(&self.listeners)
            .iter()
            .map(|l| u64::try_from(l.open.get()).unwrap_or(0))
            .sum()
    }

    /// Exports the traffic counters from `registry` (ended and live sessions) rather than
    /// from the ended sessions alone. Once: a second registry is ignored.
    pub fn count_traffic_of(&self, registry: Arc<crate::registry::Registry>) {
        let _ = self.connections.set(registry);
    }

    /// Message frames the clients sent, over every ended session.
    pub fn client_msgs(&self) -> u64 {
        self.messages[0].get()
    }

    pub fn client_bytes(&self) -> u64 {
        self.bytes[0].get()
    }

    /// Message frames delivered to clients, over every ended session.
    pub fn upstream_msgs(&self) -> u64 {
        self.messages[1].get()
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.bytes[1].get()
    }

    /// An operation an ACL refused. At most [`MAX_USER_LABELS`] distinct users get a label
    /// of their own; later users are counted as [`OTHER_USER`].
    pub fn acl_denied(&self, user: &str, kind: DenialKind) {
        {
            let users = read(&self.acl_users);
            match users.get(user) {
                Some(counters) => return self.denied(counters, user, kind),
                None if users.len() >= MAX_USER_LABELS => {
                    return self.denied(&self.acl_other, OTHER_USER, kind)
                }
                None => {}
            }
        }
        // This user's first denial: give it a label of its own if there is room.
        let mut users = write(&self.acl_users);
        if !users.contains_key(user) && users.len() >= MAX_USER_LABELS {
            drop(users);
            return self.denied(&self.acl_other, OTHER_USER, kind);
        }
        let counters = users.entry(user.to_string()).or_default();
        self.denied(counters, user, kind);
    }

    /// Counts a denial on `label`'s counters, making its series at the first in `kind`.
    fn denied(&self, counters: &DenialCounters, label: &str, kind: DenialKind) {
        counters.0[DenialCounters::index(kind)]
            .get_or_init(|| self.denial_counter(label, kind))
            .inc();
    }

    fn denial_counter(&self, user: &str, kind: DenialKind) -> Counter {
        self.acl_denials
            .get_or_create(&l2("user", user, "direction", kind.as_str()))
            .clone()
    }

    /// A subject rewritten.
    pub fn rewritten(&self, direction: RewriteDirection) {
        self.rewrites[direction as usize].inc();
    }

    pub fn tag_applied(&self) {
        self.tags_applied.inc();
    }

    pub fn tag_spoof(&self) {
        self.tag_spoofs.inc();
    }

    pub fn tag_reload_held(&self) {
        self.tag_reloads_held.inc();
    }

    /// A configuration reload and whether it was applied.
    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.config_reloads
            .get_or_create(&l1("result", result))
            .inc();
    }

    pub fn config_reloads(&self, ok: bool) -> u64 {
        let result = if ok { "ok" } else { "failed" };
        self.config_reloads
            .get_or_create(&l1("result", result))
            .get()
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.set(i64::from(draining));
    }

    /// Called before each scrape: readiness can change with no event the metrics see (the
    /// admin server's upstream checks are not counted as dials).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }
}

/// What a session adds to the totals when it ends.
#[derive(Debug, Clone)]
pub struct SessionTotals {
    pub reason: CloseReason,
    pub client_msgs: u64,
    pub client_bytes: u64,
    pub upstream_msgs: u64,
    pub upstream_bytes: u64,
    pub filter_time: LocalFilterTime,
    /// The session ended in a transport handshake whose failure was logged already: its
    /// close is logged at debug, so each failure makes one line at its own level.
    pub handshake_failed: bool,
}

impl SessionTotals {
    pub fn early(reason: CloseReason) -> Self {
        SessionTotals {
            reason,
            client_msgs: 0,
            client_bytes: 0,
            upstream_msgs: 0,
            upstream_bytes: 0,
            filter_time: LocalFilterTime::default(),
            handshake_failed: false,
        }
    }

    /// Ended by a failed transport handshake (a classic TLS upgrade after the INFO).
    pub fn failed_handshake(reason: CloseReason) -> Self {
        SessionTotals {
            handshake_failed: true,
            ..SessionTotals::early(reason)
        }
    }
}

/// A poisoned lock only means another thread panicked while counting: the counts are
/// still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The denial counters of one `user` label, by [`DenialKind`]; a direction's counter (and
/// so its series) is made at the first denial in that direction.
#[derive(Debug, Default)]
struct DenialCounters([OnceLock<Counter>; 3]);

impl DenialCounters {
    fn index(kind: DenialKind) -> usize {
        match kind {
            DenialKind::Publish => 0,
            DenialKind::Subscribe => 1,
            DenialKind::Delivery => 2,
        }
    }
}

/// The filters report what they did here (ACL denials, rewrites, tags).
impl nats_edge_filters::Events for Metrics {
    fn acl_denied(&self, user: &str, direction: DenialKind) {
        Metrics::acl_denied(self, user, direction);
    }

    fn rewritten(&self, direction: RewriteDirection) {
        Metrics::rewritten(self, direction);
    }

    fn tag_applied(&self) {
        Metrics::tag_applied(self);
    }

    fn tag_spoof(&self) {
        Metrics::tag_spoof(self);
    }

    fn tag_reload_held(&self) {
        Metrics::tag_reload_held(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn events_from_many_threads_are_all_counted_once_per_series() {
        let metrics = Arc::new(Metrics::new());
        std::thread::scope(|scope| {
            for t in 0..4 {
                let m = metrics.clone();
                scope.spawn(move || {
                    for i in 0..1000 {
                        let user = if i % 2 == 0 { "alice" } else { "bob" };
                        nats_edge_filters::Events::acl_denied(&*m, user, DenialKind::Delivery);
                        nats_edge_filters::Events::rewritten(
                            &*m,
                            if t % 2 == 0 {
                                RewriteDirection::ClientToUpstream
                            } else {
                                RewriteDirection::UpstreamToClient
                            },
                        );
                    }
                });
            }
        });
        let text = metrics.encode().unwrap();
        let denials = |user: &str, dir: &str| {
            sample(
                &text,
                &format!("nats_edge_acl_denials_total{{user=\"{user}\",direction=\"{dir}\"}}"),
            )
        };
        assert_eq!(denials("alice", "delivery"), Some(2000));
        assert_eq!(denials("bob", "delivery"), Some(2000));
        assert_eq!(denials("alice", "publish"), None, "made by a first denial");
        assert_eq!(
            text.matches("nats_edge_acl_denials_total{").count(),
            2,
            "{text}"
        );
        for dir in [CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT] {
            assert_eq!(
                sample(
                    &text,
                    &format!("nats_edge_rewrites_total{{direction=\"{dir}\"}}")
                ),
                Some(2000)
            );
        }
    }

    /// A client-chosen user name cannot break the exposition: quotes, backslashes and
    /// newlines in a label value are escaped.
    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.acl_denied("x\"}\nfake_total 1\n\\", DenialKind::Publish);
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"nats_edge_acl_denials_total{user="x\"}\nfake_total 1\n\\",direction="publish"}"#
            ),
            Some(1),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("fake_total")), "{text}");
    }

    #[test]
    fn a_user_named_like_the_overflow_label_shares_its_series() {
        let metrics = Metrics::new();
        metrics.acl_denied(OTHER_USER, DenialKind::Publish);
        for i in 0..MAX_USER_LABELS {
            metrics.acl_denied(&format!("user-{i}"), DenialKind::Publish);
        }
        let text = metrics.encode().unwrap();
        let other =
            format!("nats_edge_acl_denials_total{{user=\"{OTHER_USER}\",direction=\"publish\"}}");
        // `_other` took a label of its own; the last user did not get one and shares it.
        assert_eq!(sample(&text, &other), Some(2), "{text}");
    }
}
