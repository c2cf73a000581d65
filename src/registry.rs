//! The live connections, for the admin server's `/connz`, `/varz` and the drain, and the
//! last ones that ended, for `/connz?state=closed`.
//!
//! Each session owns an `Arc<ConnEntry>` that it registers when its transport handshake is
//! done and removes when it ends (keeping it among the closed ones, with why it ended). Its live counters cost the op path nothing: the forwarders
//! count in plain fields, and the session stores those fields into the entry (Relaxed atomics,
//! a cache line only this session writes) once per wake-up of its task, that is once per
//! read batch, not per message. A reader sees counts at most one batch old.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// One live connection.
#[derive(Debug)]
pub struct ConnEntry {
    pub cid: u64,
    pub listener: String,
    pub transport: &'static str,
    pub client: SocketAddr,
    /// When it started, as `/connz` shows it.
    pub start: SystemTime,
    /// The same moment on the monotonic clock, for its uptime: a wall clock stepped back
    /// (NTP, a resumed VM) must not stop it.
    pub started: std::time::Instant,
    /// The authenticated user, set by whatever authenticates the connection (an auth
    /// filter); `None` until known.
    user: Mutex<Option<String>>,
    /// The upstream this connection was dialled to, without credentials.
    upstream: OnceLock<String>,
    /// What the client said about itself in its CONNECT.
    /// Replaced by each CONNECT, as nats-server's connz shows the last one's fields.
    client_info: Mutex<Option<ClientInfo>>,
    /// The client's TLS session, once its handshake is done (TLS and wss listeners).
    /// Boxed: a plain connection's entry carries only the pointer's room.
    tls: OnceLock<Box<crate::transport::tls::TlsSession>>,
    in_msgs: AtomicU64,
    out_msgs: AtomicU64,
    in_bytes: AtomicU64,
    out_bytes: AtomicU64,
    subscriptions: AtomicU64,
    /// Milliseconds from `started` to the client's last activity (a message either way, a
    /// subscription made or ended), as nats-server's `last_activity`; 0: its start.
    last_activity_ms: AtomicU64,
    /// Bytes queued for the client and not yet written (nats-server's `pending_bytes`).
    pending_bytes: AtomicU64,
    /// The last round trip measured to the client, in nanoseconds; 0: none yet.
    rtt_ns: AtomicU64,
    /// A drain's request to end this session now; it holds the request if the session is
    /// not yet waiting on it. Sessions look at it only once they are in lame-duck mode.
    close_requested: tokio::sync::Notify,
}

/// The client's own description, from its CONNECT (nats-server's connz `name`, `lang`,
/// `version`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub name: Option<String>,
    pub lang: Option<String>,
    pub version: Option<String>,
}

/// A connection's last activity and pending bytes ([`ConnEntry::activity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// On the monotonic clock.
    pub last: std::time::Instant,
    pub pending_bytes: u64,
    /// The last round trip measured to the client.
    pub rtt: Option<Duration>,
}

/// The counters a session publishes into its entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Message frames from the client (nats-server's `in_msgs`).
    pub in_msgs: u64,
    /// Message frames delivered to the client (`out_msgs`).
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// SUBs minus UNSUBs the client sent.
    pub subscriptions: u64,
}

impl ConnEntry {
    pub fn new(cid: u64, listener: &str, transport: &'static str, client: SocketAddr) -> ConnEntry {
        ConnEntry {
            cid,
            listener: listener.to_string(),
            transport,
            client,
            start: SystemTime::now(),
            started: std::time::Instant::now(),
            user: Mutex::new(None),
            upstream: OnceLock::new(),
            client_info: Mutex::new(None),
            tls: OnceLock::new(),
            in_msgs: AtomicU64::new(0),
            out_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            out_bytes: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            rtt_ns: AtomicU64::new(0),
            close_requested: tokio::sync::Notify::new(),
        }
    }

    /// Asks the session to end as at shutdown (a drain spreading its closes).
    pub fn request_close(&self) {
        self.close_requested.notify_one();
    }

    /// Resolves once [`ConnEntry::request_close`] was called, before or after this call.
    pub fn close_requested(&self) -> tokio::sync::futures::Notified<'_> {
        self.close_requested.notified()
    }

    pub fn set_user(&self, user: Option<String>) {
        *self
            .user
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = user;
    }

    pub fn user(&self) -> Option<String> {
        self.user
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_upstream(&self, upstream: String) {
        let _ = self.upstream.set(upstream);
    }

    pub fn upstream(&self) -> Option<&str> {
        self.upstream.get().map(String::as_str)
    }

    pub fn set_tls(&self, tls: crate::transport::tls::TlsSession) {
        let _ = self.tls.set(Box::new(tls));
    }

    pub fn tls(&self) -> Option<&crate::transport::tls::TlsSession> {
        self.tls.get().map(|tls| &**tls)
    }

    /// Cuts the CONNECT's `name`, `lang` and `version` to [`KEPT_CLIENT_TEXT`] bytes, for a
    /// connection kept among the closed ones: a client may make each as long as the control
    /// line allows, and thousands of closed connections are kept.
    fn trim_client_info(&self) {
        let mut info = self
            .client_info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(info) = info.as_mut() {
            for text in [&mut info.name, &mut info.lang, &mut info.version]
                .into_iter()
                .flatten()
            {
                if text.len() > KEPT_CLIENT_TEXT {
                    let mut end = KEPT_CLIENT_TEXT;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                }
            }
        }
    }

    pub fn set_client_info(&self, info: ClientInfo) {
        *self
            .client_info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(info);
    }

    pub fn client_info(&self) -> Option<ClientInfo> {
        self.client_info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stores the session's counts; called once per wake-up of the session's task. The
    /// message and byte counters never go down here, as the counters exported from them
    /// must not: a session takes back the bytes of a PONG that answered the edge's own PING
    /// once it has the whole frame, which can be after it counted the first part of it.
    pub fn publish(&self, counts: LiveCounts) {
        let in_msgs = self.in_msgs.fetch_max(counts.in_msgs, Ordering::Relaxed);
        let out_msgs = self.out_msgs.fetch_max(counts.out_msgs, Ordering::Relaxed);
        self.in_bytes.fetch_max(counts.in_bytes, Ordering::Relaxed);
        self.out_bytes
            .fetch_max(counts.out_bytes, Ordering::Relaxed);
        let subscriptions = self
            .subscriptions
            .swap(counts.subscriptions, Ordering::Relaxed);
        // What nats-server counts as activity: messages either way, and subscriptions.
        if counts.in_msgs > in_msgs
            || counts.out_msgs > out_msgs
            || counts.subscriptions != subscriptions
        {
            let since_start = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_activity_ms.store(since_start, Ordering::Relaxed);
        }
    }

    /// Stores the bytes queued for the client and the last round trip to it; called with
    /// [`ConnEntry::publish`].
    pub fn publish_link(&self, pending_bytes: usize, rtt: Option<Duration>) {
        self.pending_bytes.store(
            u64::try_from(pending_bytes).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(rtt) = rtt {
            // At least 1 ns: 0 means none yet.
            let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
            self.rtt_ns.store(ns, Ordering::Relaxed);
        }
    }

    /// The client's last activity and the bytes queued for it, as of the last wake-up.
    pub fn activity(&self) -> Activity {
        Activity {
            last: self.started
                + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed)),
            pending_bytes: self.pending_bytes.load(Ordering::Relaxed),
            rtt: match self.rtt_ns.load(Ordering::Relaxed) {
                0 => None,
                ns => Some(Duration::from_nanos(ns)),
            },
        }
    }

    pub fn counts(&self) -> LiveCounts {
        LiveCounts {
            in_msgs: self.in_msgs.load(Ordering::Relaxed),
            out_msgs: self.out_msgs.load(Ordering::Relaxed),
            in_bytes: self.in_bytes.load(Ordering::Relaxed),
            out_bytes: self.out_bytes.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
        }
    }
}

/// The longest `name`, `lang` or `version` a closed connection keeps, in bytes.
pub const KEPT_CLIENT_TEXT: usize = 256;

/// A connection that ended, as `/connz?state=closed` shows it: its entry and what it
/// last counted, when it ended and why.
#[derive(Debug)]
pub struct ClosedConn {
    pub entry: Arc<ConnEntry>,
    pub counts: LiveCounts,
    pub activity: Activity,
    pub stop: SystemTime,
    /// The same moment on the monotonic clock.
    pub stopped: std::time::Instant,
    pub reason: nats_edge_filters::CloseReason,
}

/// Every live connection, by connection id (so listings come in the order they connected),
/// and the last ones that ended.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnEntry>>>,
    /// The connections that ended, oldest first, at most `max_closed` of them.
    closed: Mutex<VecDeque<Arc<ClosedConn>>>,
    max_closed: usize,
    /// The last counts of every connection removed so far, added as it is removed (with
    /// `conns` held), so that [`Registry::totals`] never goes backwards when a connection
    /// moves from live to ended. Subscriptions are not summed: ended ones have none.
    ended: Mutex<LiveCounts>,
    /// Woken whenever the last connection goes (a drain waits on it).
    emptied: tokio::sync::Notify,
}

impl Registry {
    /// A registry that keeps the last `max_closed` connections that ended (none: 0).
    pub fn keeping_closed(max_closed: usize) -> Registry {
        Registry {
            max_closed,
            ..Registry::default()
        }
    }

    fn closed(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<ClosedConn>>> {
        self.closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connections that ended and are still kept, oldest first.
    pub fn closed_snapshot(&self) -> Vec<Arc<ClosedConn>> {
        self.closed().iter().cloned().collect()
    }

    /// The live connections and the closed ones, read together (under the live list's lock,
    /// which a connection's move from one to the other holds): each connection is in one.
    pub fn snapshot_with_closed(&self) -> (Vec<Arc<ConnEntry>>, Vec<Arc<ClosedConn>>) {
        let conns = self.conns();
        let closed = self.closed().iter().cloned().collect();
        (conns.values().cloned().collect(), closed)
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnEntry>>> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `entry`; the returned guard removes it when dropped.
    pub fn register(self: &Arc<Self>, entry: Arc<ConnEntry>) -> Registered {
        self.conns().insert(entry.cid, entry.clone());
        Registered {
            registry: self.clone(),
            entry,
        }
    }

    pub fn len(&self) -> usize {
        self.conns().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no connection is left.
    pub async fn until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check, so a removal in between still wakes us.
            emptied.as_mut().enable();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Every live connection, in connection id order (`/connz` sorts and pages a copy, so
    /// the lock is held only while the entries are cloned).
    pub fn snapshot(&self) -> Vec<Arc<ConnEntry>> {
        self.conns().values().cloned().collect()
    }

    fn ended(&self) -> std::sync::MutexGuard<'_, LiveCounts> {
        self.ended
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sums over every live connection (`subscriptions` included), and, in the message and
    /// byte counts, over every ended one: counters that only grow, as `/varz` reports them.
    pub fn totals(&self) -> LiveCounts {
        let conns = self.conns();
        let live = conns
            .values()
            .map(|c| c.counts())
            .fold(LiveCounts::default(), add);
        let ended = *self.ended();
        LiveCounts {
            subscriptions: live.subscriptions,
            ..add(live, ended)
        }
    }
}

/// A registration, undone on drop (however the session ends).
pub struct Registered {
    registry: Arc<Registry>,
    pub entry: Arc<ConnEntry>,
}

fn add(a: LiveCounts, b: LiveCounts) -> LiveCounts {
    LiveCounts {
        in_msgs: a.in_msgs + b.in_msgs,
        out_msgs: a.out_msgs + b.out_msgs,
        in_bytes: a.in_bytes + b.in_bytes,
        out_bytes: a.out_bytes + b.out_bytes,
        subscriptions: a.subscriptions + b.subscriptions,
    }
}

impl Registered {
    /// Removes the connection, keeping it among the closed ones with `reason` (a session
    /// that ends otherwise, by a panic, is only removed).
    pub fn close(self, reason: nats_edge_filters::CloseReason) {
        self.remove(Some(reason));
    }

    fn remove(&self, reason: Option<nats_edge_filters::CloseReason>) {
        let now_empty = {
            let mut conns = self.registry.conns();
            if conns.remove(&self.entry.cid).is_some() {
                let counts = self.entry.counts();
                let mut ended = self.registry.ended();
                *ended = add(*ended, counts);
                // Under the live list's lock: a listing of both sees the connection in one.
                if let (Some(reason), 1..) = (reason, self.registry.max_closed) {
                    self.entry.trim_client_info();
                    let mut closed = self.registry.closed();
                    if closed.len() >= self.registry.max_closed {
                        closed.pop_front();
                    }
                    closed.push_back(Arc::new(ClosedConn {
                        entry: self.entry.clone(),
                        counts,
                        activity: self.entry.activity(),
                        stop: SystemTime::now(),
                        stopped: std::time::Instant::now(),
                        reason,
                    }));
                }
            }
            conns.is_empty()
        };
        if now_empty {
            self.registry.emptied.notify_waiters();
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.remove(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed connection is kept with its reason and last counts, the oldest going first
    /// past the bound; one that ends without a reason (its session panicked) is only removed,
    /// and a registry that keeps none keeps none.
    #[test]
    fn the_last_closed_connections_are_kept_with_their_reason() {
        use nats_edge_filters::CloseReason;
        let registry = Arc::new(Registry::keeping_closed(2));
        let entry = |cid| Arc::new(ConnEntry::new(cid, "l", "tcp", ([127, 0, 0, 1], 1).into()));
        for cid in 1..=3 {
            let registered = registry.register(entry(cid));
            registered.entry.publish(LiveCounts {
                in_msgs: cid,
                ..LiveCounts::default()
            });
            registered.close(CloseReason::ClientClosed);
        }
        drop(registry.register(entry(4)));
        let closed = registry.closed_snapshot();
        let kept: Vec<(u64, u64)> = closed
            .iter()
            .map(|c| (c.entry.cid, c.counts.in_msgs))
            .collect();
        assert_eq!(kept, [(2, 2), (3, 3)], "the oldest went first");
        assert!(closed.iter().all(|c| c.reason == CloseReason::ClientClosed));
        assert!(registry.is_empty());

        // A client's own texts are cut for keeping, at a character's boundary.
        let long = registry.register(entry(6));
        long.entry.set_client_info(ClientInfo {
            name: Some("é".repeat(KEPT_CLIENT_TEXT)),
            ..ClientInfo::default()
        });
        long.close(CloseReason::ClientClosed);
        let kept = registry.closed_snapshot();
        let name = kept[1].entry.client_info().and_then(|i| i.name).unwrap();
        assert_eq!(name, "é".repeat(KEPT_CLIENT_TEXT / 2));

        let none = Arc::new(Registry::default());
        none.register(entry(5)).close(CloseReason::SlowConsumer);
        assert!(none.closed_snapshot().is_empty());
        assert!(none.is_empty());
    }

    /// A connection's counts move from live to ended as it is removed, in one step: the
    /// totals never go backwards, and its subscriptions go with it.
    #[test]
    fn totals_keep_what_ended_connections_counted() {
        let registry = Arc::new(Registry::default());
        let counts = |n: u64| LiveCounts {
            in_msgs: n,
            out_msgs: 2 * n,
            in_bytes: 10 * n,
            out_bytes: 20 * n,
            subscriptions: 1,
        };
        let entry = |cid| Arc::new(ConnEntry::new(cid, "l", "tcp", ([127, 0, 0, 1], 1).into()));
        let first = registry.register(entry(1));
        let second = registry.register(entry(2));
        first.entry.publish(counts(3));
        second.entry.publish(counts(4));
        assert_eq!(
            registry.totals(),
            LiveCounts {
                subscriptions: 2,
                ..counts(7)
            }
        );
        drop(first);
        assert_eq!(
            registry.totals(),
            LiveCounts {
                subscriptions: 1,
                ..counts(7)
            }
        );
        drop(second);
        assert_eq!(
            registry.totals(),
            LiveCounts {
                subscriptions: 0,
                ..counts(7)
            }
        );
        // A lower count published later (bytes taken back) leaves the counters where they
        // were; subscriptions follow the session.
        let third = registry.register(entry(3));
        third.entry.publish(counts(5));
        third.entry.publish(LiveCounts {
            subscriptions: 0,
            ..counts(4)
        });
        assert_eq!(
            third.entry.counts(),
            LiveCounts {
                subscriptions: 0,
                ..counts(5)
            }
        );
    }
}
