//! One listener: its accept loop, its connection limits, and the task per client connection
//! that runs the transport handshake and then the session.
//!
//! What a listener serves new connections with (its transport settings and certificates, the
//! session environment with limits and upstreams, its connection limits) sits behind a lock in
//! [`ListenerCell`], read once per accepted connection, so a configuration reload swaps it for
//! new connections while live ones keep what they started with.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nats_edge_filters::{errors, Info, ServerOp};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::ListenerKind;
use crate::metrics::{ListenerMetrics, Refusal};
use crate::proto::encode_server_op;
use crate::session::{self, info::encode_info_before_error, SessionEnv};
use crate::transport::{self, Accepted, ListenerTransport, StageCell};

/// What a listener serves new connections with; swapped whole by a reload.
pub struct ListenerRuntime {
    pub transport: Arc<ListenerTransport>,
    pub env: Arc<SessionEnv>,
    /// 0: unlimited.
    pub max_connections: usize,
    /// New connections per second; 0: unlimited.
    pub max_connection_rate: u32,
}

/// A bound listener.
pub struct ListenerCell {
    pub name: String,
    pub addr: SocketAddr,
    pub kind: ListenerKind,
    current: RwLock<Arc<ListenerRuntime>>,
    /// Connections holding a slot: from accept (before the transport handshake, as
    /// nats-server counts from its INFO) to the end of the session. A counter checked
    /// against the current limit rather than a Semaphore's permits, so a reload can lower or
    /// raise `max_connections` without reclaiming permits held by live connections; only this
    /// listener's accept loop adds to it, so check-then-add does not race.
    open: Arc<AtomicUsize>,
    /// Connections over `max_connections` being refused (their handshake, then nats-server's
    /// INFO and `-ERR`): at most [`MAX_REFUSALS_IN_PROGRESS`], past which they are closed at
    /// once, or a flood would cost a TLS handshake and two descriptors each.
    refusing: Arc<AtomicUsize>,
    pub metrics: ListenerMetrics,
    /// The INFO of the upstream server this listener's sessions reached last (rewritten for
    /// one of them), used for the INFO that precedes a refusal, as nats-server sends its
    /// INFO before the error.
    pub last_info: Arc<Mutex<Option<Info>>>,
}

impl ListenerCell {
    pub fn new(
        name: &str,
        addr: SocketAddr,
        kind: ListenerKind,
        runtime: ListenerRuntime,
        metrics: ListenerMetrics,
        last_info: Arc<Mutex<Option<Info>>>,
    ) -> ListenerCell {
        ListenerCell {
            name: name.to_string(),
            addr,
            kind,
            current: RwLock::new(Arc::new(runtime)),
            open: Arc::new(AtomicUsize::new(0)),
            refusing: Arc::new(AtomicUsize::new(0)),
            metrics,
            last_info,
        }
    }

    /// Connections holding a slot now: in their transport handshake or in their session.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn current(&self) -> Arc<ListenerRuntime> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// New connections get `runtime` from now on.
    pub fn swap(&self, runtime: ListenerRuntime) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(runtime);
    }
}

/// An accept error that says the process or the system is out of something (descriptors,
/// buffers, memory): the only kind worth backing off for.
fn is_resource_error(e: &std::io::Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(
        e.raw_os_error(),
        Some(ENOMEM | ENFILE | EMFILE | ENOBUFS) | None
    )
}

/// Refusals past `max_connections` in progress at once on one listener; more are closed
/// without a handshake or a word.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;

/// A connection's place under `max_connections` (or among the refusals in progress), given
/// back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts new connections in one-second windows for `max_connection_rate`. A fixed window
/// needs no clock read per connection beyond the one `Instant::now()`, and a burst of at most
/// twice the rate across a window edge is acceptable for shedding a reconnect storm.
struct RateWindow {
    start: Instant,
    count: u32,
}

impl RateWindow {
    fn admit(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= rate
    }
}

pub async fn accept_loop(
    listener: TcpListener,
    cell: Arc<ListenerCell>,
    conn_ids: Arc<AtomicU64>,
    workers: Arc<[tokio::runtime::Handle]>,
    mut stop_accepting: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let mut next_worker = 0usize;
    let mut window = RateWindow {
        start: Instant::now(),
        count: 0,
    };
    let mut accept_backoff = ACCEPT_MIN_SLEEP;
    loop {
        tokio::select! {
            // A stop comes first: a drain must not take a connection from the backlog after
            // it stopped accepting.
            biased;
            _ = crate::edge::until_stopped(&mut stop_accepting) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_backoff = ACCEPT_MIN_SLEEP;
                    let accepted_at = Instant::now();
                    let runtime = cell.current();
                    if !window.admit(runtime.max_connection_rate, accepted_at) {
                        // Shedding load: no handshake, no INFO, no task; the client's own
                        // reconnect back-off spreads the retries.
                        cell.metrics.refused(Refusal::RateLimited);
                        tracing::debug!(listener = %cell.name, %peer, "connection rate exceeded: closed");
                        drop(stream);
                        continue;
                    }
                    let (slot, refusing) = if runtime.max_connections > 0
                        && cell.open.load(Ordering::Relaxed) >= runtime.max_connections
                    {
                        if cell.refusing.load(Ordering::Relaxed) >= MAX_REFUSALS_IN_PROGRESS {
                            cell.metrics.refused(Refusal::MaxConnections);
                            tracing::debug!(listener = %cell.name, %peer, "maximum connections exceeded, refusals in progress at their bound: closed");
                            drop(stream);
                            continue;
                        }
                        cell.refusing.fetch_add(1, Ordering::Relaxed);
                        (None, Some(Slot(cell.refusing.clone())))
                    } else {
                        cell.open.fetch_add(1, Ordering::Relaxed);
                        (Some(Slot(cell.open.clone())), None)
                    };
                    // Nothing here waits on the client: its handshake runs in its own task.
                    let conn_id = conn_ids.fetch_add(1, Ordering::Relaxed) + 1;
                    let conn = Conn { peer, conn_id, accepted_at, slot, _refusing: refusing, cell: cell.clone(), runtime };
                    if workers.is_empty() {
                        sessions.spawn(serve_conn(stream, conn));
                    } else {
                        let worker = &workers[next_worker % workers.len()];
                        next_worker = next_worker.wrapping_add(1);
                        // The socket moves to the worker's reactor.
                        match stream.into_std() {
                            Ok(stream) => {
                                sessions.spawn_on(serve_std_conn(stream, conn), worker);
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot hand the connection to a worker"),
                        }
                    }
                }
                // One connection's own failure (reset while it waited, say): the next may
                // be fine, so no back-off, as Go's accept retries such errors.
                Err(e) if !is_resource_error(&e) => {
                    tracing::debug!(listener = %cell.name, error = %e, "accept failed for one connection");
                }
                Err(e) => {
                    // Out of file descriptors and the like: the listener stays, the client
                    // is lost. Backing off, doubling up to a second as nats-server does,
                    // keeps the loop from spinning and the log from filling.
                    tracing::warn!(listener = %cell.name, error = %e, retry_in_ms = accept_backoff.as_millis() as u64, "accept failed");
                    let stopped = tokio::select! {
                        () = tokio::time::sleep(accept_backoff) => false,
                        () = crate::edge::until_stopped(&mut stop_accepting) => true,
                    };
                    if stopped {
                        break;
                    }
                    accept_backoff = (accept_backoff * 2).min(ACCEPT_MAX_SLEEP);
                }
            },
        }
    }
    // Closing the socket makes new clients' connects fail at once (a drain relies on it).
    drop(listener);
    tracing::info!(listener = %cell.name, "stopped accepting");
    while sessions.join_next().await.is_some() {}
}

/// An accepted connection on its way to its task.
struct Conn {
    peer: SocketAddr,
    conn_id: u64,
    accepted_at: Instant,
    /// `None`: over `max_connections`, to be refused.
    slot: Option<Slot>,
    /// Held while it is refused.
    _refusing: Option<Slot>,
    cell: Arc<ListenerCell>,
    runtime: Arc<ListenerRuntime>,
}

async fn serve_std_conn(stream: std::net::TcpStream, conn: Conn) {
    match TcpStream::from_std(stream) {
        Ok(stream) => serve_conn(stream, conn).await,
        Err(e) => tracing::warn!(error = %e, "cannot register the connection with its worker"),
    }
}

/// One client connection: its transport handshake, then its session or its refusal.
async fn serve_conn(stream: TcpStream, conn: Conn) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    crate::transport::keep_alive(&stream);
    let Conn {
        peer,
        conn_id,
        accepted_at,
        slot,
        _refusing,
        cell,
        runtime,
    } = conn;
    let env = runtime.env.clone();
    // Boxed: the accepted connection is large, and this task keeps whatever it holds for the
    // connection's whole life.
    let Some(accepted) = accept(stream, peer, conn_id, &runtime.transport, &env).await else {
        return;
    };
    match slot {
        Some(_slot) => session::run(accepted, env, accepted_at).await,
        None => refuse(accepted.stream, &cell, accepted.conn.client_addr).await,
    }
}

/// The transport handshake, bounded by the listener's `handshake_timeout` and cut short by a
/// shutdown. `None` when there is no session to run; a failure is counted and logged here.
async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    lt: &ListenerTransport,
    env: &SessionEnv,
) -> Option<Box<Accepted>> {
    let stage = StageCell::default();
    // Boxed, in both branches: the handshake's state (a TLS or WebSocket accept) is large,
    // and awaited in place it would size the connection's task for its whole life.
    if !lt.has_handshake() {
        // A plain listener's handshake has nothing to wait for.
        let handshake = Box::pin(transport::handshake(stream, peer, conn_id, lt, &stage));
        return handshake.await.ok().flatten().map(Box::new);
    }
    let span = tracing::info_span!(
        "conn",
        id = conn_id,
        peer = %peer,
        listener = %lt.name,
        transport = lt.kind.as_str()
    );
    let mut shutdown = env.shutdown.clone();
    let _guard = transport::CloseGuard::new(&stream);
    let handshake = tokio::time::timeout(
        lt.handshake_timeout,
        Box::pin(transport::handshake(stream, peer, conn_id, lt, &stage)),
    )
    .instrument(span.clone());
    let result = tokio::select! {
        result = handshake => result.unwrap_or_else(|_| Err(stage.timed_out())),
        _ = crate::edge::until_stopped(&mut shutdown) => return None,
    };
    match result {
        Ok(Some(accepted)) => Some(Box::new(accepted)),
        Ok(None) => {
            span.in_scope(|| tracing::debug!("HTTP request answered"));
            None
        }
        Err(e) if e.is_silent() => {
            span.in_scope(|| tracing::debug!(error = %e, "closed before the handshake"));
            None
        }
        Err(e) => {
            env.metrics.handshake_failed(lt.kind, e.failure());
            span.in_scope(|| e.log());
            None
        }
    }
}

/// How long a refused client may take to read its INFO and error.
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

/// The pause after a failed accept, doubled at each failure in a row up to the maximum
/// (nats-server's `ACCEPT_MIN_SLEEP` and `ACCEPT_MAX_SLEEP`).
const ACCEPT_MIN_SLEEP: Duration = Duration::from_millis(10);
const ACCEPT_MAX_SLEEP: Duration = Duration::from_secs(1);

/// What nats-server does past `max_connections`: its INFO, then
/// `-ERR 'maximum connections exceeded'`, then the close (see [`info_before_error`]).
async fn refuse(
    mut stream: crate::transport::ClientStream,
    cell: &ListenerCell,
    client: SocketAddr,
) {
    cell.metrics.refused(Refusal::MaxConnections);
    tracing::info!(listener = %cell.name, %client, "maximum connections exceeded: refused");
    let mut buf = BytesMut::new();
    let rewrite = &cell.current().env.info_rewrite;
    encode_info_before_error(&cell.last_info, rewrite, client, &mut buf);
    encode_server_op(
        &ServerOp::Err(errors::MAX_CONNECTIONS_EXCEEDED.to_string()),
        &mut buf,
    );
    stream.close_with(crate::transport::ws::MAX_CONNECTIONS_CLOSE);
    let written = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(&buf).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
    if let Ok(Ok(())) = written {
        // A client that answered the INFO (its CONNECT and PING) would otherwise get a
        // reset in place of the error.
        crate::transport::linger(&mut stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only running out of something is worth backing off for; a connection that failed on
    /// its own (reset or aborted while it waited) is not.
    #[test]
    fn only_resource_errors_back_off() {
        let os = std::io::Error::from_raw_os_error;
        for code in [12, 23, 24, 105] {
            assert!(is_resource_error(&os(code)), "{code}");
        }
        for code in [103, 104, 110, 71] {
            assert!(!is_resource_error(&os(code)), "{code}");
        }
        assert!(is_resource_error(&std::io::Error::other("unknown")));
    }

    #[test]
    fn rate_window_admits_the_rate_per_second() {
        let start = Instant::now();
        let mut w = RateWindow { start, count: 0 };
        assert!(w.admit(2, start));
        assert!(w.admit(2, start + Duration::from_millis(10)));
        assert!(!w.admit(2, start + Duration::from_millis(20)));
        // A new window.
        assert!(w.admit(2, start + Duration::from_millis(1000)));
        // 0: unlimited.
        assert!((0..100).all(|_| w.admit(0, start)));
    }
}
