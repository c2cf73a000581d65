//! One proxied connection: dial the upstream, hand the client a rewritten INFO, then run both
//! forwarders until either side ends, and log the end once with its reason and counters.

mod credentials;
mod forward;
pub mod info;
pub mod proxy_sig;
mod state;

use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nats_edge_filters::acl::AclFactory;
use nats_edge_filters::limits::{Limits, LimitsConfig};
use nats_edge_filters::{
    errors, Chain, CloseReason, Filter, FilterFactory, Info, ServerOp, SessionCtx,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::ListenerKind;
use crate::health::Health;
use crate::metrics::{HandshakeFailure, ListenerMetrics, Metrics, SessionTotals};
use crate::proto::{encode_server_op, Direction};
use crate::registry::{ClientInfo, ConnEntry, LiveCounts, Registry};
use crate::transport::{self, linger, proxy_protocol::ProxyAddrs, Accepted};
use crate::upstream::{self, Upstream};
use forward::{Forwarder, IoFailure};
use info::InfoRewrite;
use state::Shared;

/// How long a session that is closing may take to write its last words to the client.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often a session whose buffers grew under load checks whether it can give them back.
const SHRINK_INTERVAL: Duration = Duration::from_secs(10);

/// Everything a listener's sessions share.
pub struct SessionEnv {
    /// How to reach nats-server (shared by every listener).
    pub upstream: Arc<Upstream>,
    /// The listener's transport, for handshake failure counters.
    pub kind: ListenerKind,
    /// Bounds the TLS handshake that follows the INFO on a classic TLS listener.
    pub transport_timeout: Duration,
    /// How long a client has after INFO to send CONNECT.
    pub handshake_timeout: Duration,
    /// How long a client may take none of the bytes queued for it (`limits.write_deadline`).
    pub write_deadline: Duration,
    pub limits: LimitsConfig,
    pub info_rewrite: InfoRewrite,
    /// Identity and permissions. Always in the chain: it also names the connection's user.
    pub acl: Arc<AclFactory>,
    /// Signs CONNECTs sent upstream as a trusted proxy, when configured.
    pub proxy_signer: Option<Arc<proxy_sig::ProxySigner>>,
    /// Moves whenever rule files are reloaded: it wakes every live session, which then has
    /// its filters take the new rules.
    pub rules_epoch: watch::Receiver<u64>,
    /// The built-in policy filters (tagging, rewrite), in pipeline order.
    pub policy: Vec<Arc<dyn FilterFactory>>,
    /// Extra filters, after the built-in ones, in pipeline order.
    pub filters: Vec<Arc<dyn FilterFactory>>,
    pub metrics: Arc<Metrics>,
    /// The listener's own counters.
    pub listener_metrics: ListenerMetrics,
    /// Where the session lists itself for `/connz`.
    pub registry: Arc<Registry>,
    /// Told whether each upstream dial succeeded, for `/readyz`.
    pub health: Arc<Health>,
    /// The listener's client INFO from the upstream server reached last, for the INFO that
    /// precedes a refusal (see [`ListenerCell::last_info`](crate::listener::ListenerCell)).
    pub last_info: Arc<Mutex<Option<Info>>>,
    /// Turns true when the edge shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Turns true when the edge drains: the client gets a lame-duck INFO.
    pub lame_duck: watch::Receiver<bool>,
}

/// Resolves at the next rule reload, handing the receiver back for the one after.
async fn next_reload(mut epoch: watch::Receiver<u64>) -> watch::Receiver<u64> {
    if epoch.changed().await.is_err() {
        // The edge is gone, and no reload will come.
        std::future::pending::<()>().await;
    }
    epoch
}

/// Has the filters take reloaded rules and does what that means for the session, as
/// nats-server applies a reload to a client: a client no longer authorized is told and
/// closed; one whose subscriptions are no longer allowed is told, and they end upstream.
fn apply_reload(shared: &mut Shared, c2u: &mut Forwarder) {
    let reloaded = shared.chain.on_reload(&shared.ctx);
    for notice in &reloaded.notices {
        shared.send_now(notice);
    }
    if let Some((reason, text)) = reloaded.close {
        if shared.closing.is_none() {
            if let Some(text) = text {
                shared.send_now(&ServerOp::Err(text.to_string()));
            }
            shared.close(reason);
            c2u.stop();
        }
    }
    c2u.unsubscribe_upstream(reloaded.unsubscribe, reloaded.already_unsubscribed, shared);
}

/// Runs one client connection, its transport handshake done, to its end. `accepted_at` is
/// when its socket was accepted, for the handshake duration.
pub async fn run(client: Box<Accepted>, env: Arc<SessionEnv>, accepted_at: Instant) {
    let conn = &client.conn;
    let span = tracing::info_span!(
        "conn",
        id = conn.conn_id,
        client = %conn.client_addr,
        listener = %conn.listener,
        transport = conn.transport,
        peer = tracing::field::Empty,
        tls_subject = tracing::field::Empty,
        upstream = tracing::field::Empty,
    );
    if client.peer != conn.client_addr {
        span.record("peer", tracing::field::display(client.peer));
    }
    if let Some(tls) = &conn.tls_peer {
        span.record("tls_subject", tracing::field::display(&tls.subject));
    }
    let registered = env.registry.register(Arc::new(ConnEntry::new(
        conn.conn_id,
        &conn.listener,
        conn.transport,
        conn.client_addr,
    )));
    env.listener_metrics.total.inc();
    let open = OpenConnection::count(&env.listener_metrics.open);
    let started = Instant::now();
    let summary = serve(client, &env, &registered.entry, accepted_at)
        .instrument(span.clone())
        .await;
    // The final counts go into the entry before it leaves the registry, which adds them to
    // its ended totals as it removes it: `/varz` counters never dip at a session's end.
    // The subscriptions as last counted: a closed connection shows what it had, as
    // nats-server's closed clients do (the totals count only live connections' anyway).
    registered.entry.publish(LiveCounts {
        in_msgs: summary.client_msgs,
        out_msgs: summary.upstream_msgs,
        in_bytes: summary.client_bytes,
        out_bytes: summary.upstream_bytes,
        subscriptions: registered.entry.counts().subscriptions,
    });
    // Counted before the entry goes, so whoever sees the registry empty (a drain, a test)
    // sees the session's end counted.
    env.metrics.session_ended(&summary);
    registered.close(summary.reason);
    drop(open);
    // A client that closed without sending a byte is most likely a load balancer's probe
    // (a TCP check, or a PROXY `LOCAL` header and the close): its line is debug, as
    // nats-server logs every client close, so probes do not flood the log.
    let probe = summary.reason == CloseReason::ClientClosed && summary.client_bytes == 0;
    let quiet = probe || summary.handshake_failed;
    macro_rules! closed {
        ($level:expr) => {
            tracing::event!(
                $level,
                reason = %summary.reason,
                duration_ms = started.elapsed().as_millis() as u64,
                client_msgs = summary.client_msgs,
                client_bytes = summary.client_bytes,
                upstream_msgs = summary.upstream_msgs,
                upstream_bytes = summary.upstream_bytes,
                "connection closed"
            )
        };
    }
    span.in_scope(|| {
        if quiet {
            closed!(tracing::Level::DEBUG)
        } else {
            closed!(tracing::Level::INFO)
        }
    });
}

/// How a session ended.
type Summary = SessionTotals;

/// A session whose upstream is connected and whose client has its INFO: what the
/// forwarding phase needs, and nothing the opening phase used on the way.
struct Opened {
    client: transport::ClientStream,
    upstream: upstream::UpstreamStream,
    /// What the upstream sent after its INFO, not yet forwarded.
    leftover: BytesMut,
    /// The upstream's place in the edge's list of upstream URLs.
    upstream_index: usize,
    shared: Shared,
}

async fn serve(
    accepted: Box<Accepted>,
    env: &SessionEnv,
    entry: &ConnEntry,
    accepted_at: Instant,
) -> Summary {
    // Boxed, and so freed once the session is open: the opening phase's state (the
    // accepted connection, the dial, the INFO) would otherwise size this future, and so
    // every idle session, for the session's whole life.
    let mut opened = match Box::pin(open(accepted, env, entry, accepted_at)).await {
        Ok(opened) => opened,
        Err(summary) => return summary,
    };
    // Used through its fields rather than taken apart: the parts of a moved struct would be
    // stored in this future beside the struct itself.
    let mut c2u = Forwarder::new(Direction::ClientToServer, BytesMut::new());
    let mut u2c = Forwarder::new(
        Direction::ServerToClient,
        std::mem::take(&mut opened.leftover),
    );
    let reason = duplex(
        &mut opened.client,
        &mut opened.upstream,
        &mut opened.shared,
        &mut c2u,
        &mut u2c,
        env,
        entry,
    )
    .await;
    if opened.shared.upstream_full {
        tracing::info!(
            "upstream has reached its maximum connections; later sessions try the others first"
        );
        env.upstream.history.refused(opened.upstream_index);
    }
    // The upstream goes first; the client gets its last words and the end of the stream.
    drop(opened.upstream);
    match (reason, opened.shared.upstream_farewell) {
        (CloseReason::UpstreamClosed | CloseReason::UpstreamIoError, Some(frame)) => {
            opened.client.close_with(Some(frame))
        }
        _ => opened.client.ending_for(reason),
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, opened.client.shutdown()).await;
    linger(&mut opened.client).await;
    Summary {
        reason,
        client_msgs: c2u.msgs,
        client_bytes: c2u.bytes,
        upstream_msgs: u2c.msgs,
        upstream_bytes: u2c.bytes,
        filter_time: std::mem::take(&mut opened.shared.filter_time),
        handshake_failed: false,
    }
}

/// Opens the session: dials the upstream, builds the filter chain, sends the client its
/// INFO (and, on a classic TLS listener, upgrades the client). An early end is the
/// session's summary.
async fn open(
    accepted: Box<Accepted>,
    env: &SessionEnv,
    entry: &ConnEntry,
    accepted_at: Instant,
) -> Result<Opened, Summary> {
    let Accepted {
        stream: mut client,
        conn,
        local_addr,
        tls_after_info,
        filters: transport_filters,
        ..
    } = *accepted;
    let classic_tls = tls_after_info.is_some();
    // A TLS-first or wss client has its TLS session already: listed with it at once, as
    // nats-server lists a client once its handshake is done. (A classic one, after its
    // upgrade, below.)
    if let Some(tls) = client.tls_session(true) {
        entry.set_tls(tls);
    }
    let origin = ProxyAddrs {
        src: conn.client_addr,
        dst: local_addr,
    };
    // The dial (a TLS handshake, perhaps) and the after-INFO TLS upgrade are boxed: awaited
    // in place, their large states would size this future, and so every idle session.
    let mut shutdown = env.shutdown.clone();
    let count_dial = |url: &str, failed: bool| env.metrics.dialed(url, failed);
    let dialled = tokio::select! {
        biased;
        // A shutdown closes at once: it does not wait for a dial (up to the connect timeout
        // per URL) whose session it would close anyway.
        () = crate::edge::until_stopped(&mut shutdown) => {
            // A WebSocket client still gets nats-server's close frame for a shutdown.
            client.ending_for(CloseReason::Shutdown);
            let _ = tokio::time::timeout(CLOSE_GRACE, client.shutdown()).await;
            linger(&mut client).await;
            return Err(SessionTotals::early(CloseReason::Shutdown));
        }
        dialled = Box::pin(upstream::dial_any(
            &env.upstream,
            Some(origin),
            &count_dial,
        )) => dialled,
        () = left_before_speaking(&client) => {
            // A load balancer's TCP probe, or a client that gave up on a slow upstream: no
            // one is left to serve, so the dial (up to the connect timeout per URL) stops.
            tracing::debug!("client left while the upstream was dialled; dial abandoned");
            return Err(SessionTotals::early(CloseReason::ClientClosed));
        }
    };
    env.health.session_dialled(dialled.is_ok());
    let connected = match dialled {
        Ok(connected) => connected,
        Err(failed) => {
            tracing::warn!(failures = %failed, "no upstream available");
            let error = if failed.all_full() {
                // Every upstream is at its max_connections: the client gets nats-server's
                // own refusal, as it would from a full server it dialled itself, whether the
                // refusal came with the upstream's INFO (a failed dial) or after it (relayed).
                // nats.go knows that text (ErrMaxConnectionsExceeded), not the edge's.
                ServerOp::Err(errors::MAX_CONNECTIONS_EXCEEDED.to_string())
            } else {
                let cause = failed
                    .0
                    .last()
                    .map(|(_, e)| e.client_text())
                    .unwrap_or("none configured");
                ServerOp::Err(format!("Upstream Unavailable: {cause}"))
            };
            Box::pin(tell_and_close(
                client,
                env,
                conn.client_addr,
                tls_after_info,
                error,
            ))
            .await;
            return Err(SessionTotals::early(CloseReason::UpstreamUnavailable));
        }
    };
    let upstream_url = connected.url.to_string();
    tracing::Span::current().record("upstream", tracing::field::display(&upstream_url));
    entry.set_upstream(upstream_url);
    tracing::debug!("upstream connected");

    // Pipeline order. Transport filters first (WebSocket cookies are the client's
    // credentials); the ACL before the limits, as nats-server checks permissions before it
    // counts a subscription; then what the edge itself adds to the CONNECT.
    let mut filters: Vec<Box<dyn Filter>> = Vec::new();
    filters.extend(transport_filters);
    filters.push(env.acl.build(&conn));
    filters.push(Box::new(Limits::new(env.limits)));
    if let Some(creds) = &connected.url.credentials {
        filters.push(Box::new(credentials::UrlCredentialsFilter(creds.clone())));
    }
    if let Some(signer) = &env.proxy_signer {
        filters.push(Box::new(proxy_sig::ProxySigFilter(signer.clone())));
    }
    filters.extend(env.policy.iter().map(|f| f.build(&conn)));
    filters.extend(env.filters.iter().map(|f| f.build(&conn)));
    let mut shared = Shared::new(
        Chain::new(filters),
        SessionCtx::new(conn),
        env.limits,
        env.info_rewrite.clone(),
        connected.info.max_payload,
    );
    shared.auth_timer = env.acl.authenticates();

    let mut info = connected.info;
    forward::rewrite_info(&mut info, &mut shared);
    {
        // Kept for the INFO before a refusal, and kept again whenever the upstream is
        // another server (a failover, a restart), so that INFO names the server clients
        // would reach now; not cloned for every session.
        let mut last = env.last_info.lock().unwrap_or_else(|p| p.into_inner());
        let server_id = |info: &Info| info.extra.get("server_id").cloned();
        if last
            .as_ref()
            .is_none_or(|l| server_id(l) != server_id(&info))
        {
            *last = Some(info.clone());
        }
    }
    client.told_max_payload(info.max_payload);
    let mut first = BytesMut::new();
    encode_server_op(&ServerOp::Info(Box::new(info)), &mut first);
    let upstream_stream = connected.stream;
    // Flushed: a WebSocket client's frames leave on flush, not on write.
    let written = async {
        client.write_all(&first).await?;
        client.flush().await
    };
    // Bounded like the CONNECT that must follow: a client that never reads cannot hold the
    // session (and a shutdown waiting for it) here.
    match tokio::time::timeout(env.handshake_timeout, written).await {
        // On a classic TLS listener the handshake ends with the TLS handshake below.
        Ok(Ok(())) if tls_after_info.is_none() => {
            env.listener_metrics.handshake_done(accepted_at.elapsed());
        }
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "client went away before INFO");
            return Err(SessionTotals::early(CloseReason::ClientIoError));
        }
        Err(_) => {
            tracing::info!("client did not take the INFO within the handshake timeout");
            return Err(SessionTotals::early(CloseReason::HandshakeTimeout));
        }
    }
    // The first round trip to the client ends at its CONNECT (with classic TLS, after the
    // handshake, which nats-server's first measure includes too).
    shared.rtt_started = Some(Instant::now());
    if let Some(acceptor) = tls_after_info {
        // Classic NATS TLS: the client starts the handshake once it has read the INFO.
        let guard = match &client {
            transport::ClientStream::Tcp(tcp) => Some(transport::CloseGuard::new(tcp.get_ref())),
            _ => None,
        };
        let upgrade = Box::pin(transport::upgrade_after_info(
            client,
            acceptor,
            env.transport_timeout,
        ));
        let upgraded = tokio::select! {
            biased;
            // A shutdown does not wait for a client's TLS handshake (up to the listener's
            // handshake timeout): the client is closed with it.
            () = crate::edge::until_stopped(&mut shutdown) => {
                drop(upstream_stream);
                drop(guard);
                return Err(SessionTotals::early(CloseReason::Shutdown));
            }
            upgraded = upgrade => upgraded,
        };
        match upgraded {
            Ok((upgraded, tls_peer)) => {
                env.listener_metrics.handshake_done(accepted_at.elapsed());
                client = upgraded;
                if let Some(peer) = &tls_peer {
                    tracing::Span::current()
                        .record("tls_subject", tracing::field::display(&peer.subject));
                }
                shared.ctx.conn.tls_peer = tls_peer;
                shared.ctx.conn.tls_handshake_pending = false;
            }
            Err(e) => {
                if !e.is_silent() {
                    env.metrics.handshake_failed(env.kind, e.failure());
                    e.log();
                }
                // The upstream goes first, then the client sees its close.
                drop(upstream_stream);
                drop(guard);
                let reason = match e {
                    transport::HandshakeError::Timeout(_) => CloseReason::HandshakeTimeout,
                    _ => CloseReason::ClientIoError,
                };
                return Err(SessionTotals::failed_handshake(reason));
            }
        }
    }

    if classic_tls {
        if let Some(tls) = client.tls_session(false) {
            entry.set_tls(tls);
        }
    }
    Ok(Opened {
        client,
        upstream: upstream_stream,
        leftover: connected.leftover,
        upstream_index: connected.index,
        shared,
    })
}

/// Ends a connection that never became a session with `error`, after an INFO: nats-server
/// sends its INFO before its errors wherever it sends one first, and client libraries read
/// anything else first as a protocol error, not as this cause. On a classic TLS listener
/// the INFO asks for TLS, so the error follows the client's TLS handshake, inside TLS, where
/// its TLS stack would otherwise take it for a broken record. Best effort: the client is
/// closed either way.
async fn tell_and_close(
    mut client: transport::ClientStream,
    env: &SessionEnv,
    client_addr: std::net::SocketAddr,
    tls_after_info: Option<tokio_rustls::TlsAcceptor>,
    error: ServerOp,
) {
    let mut buf = BytesMut::new();
    info::encode_info_before_error(&env.last_info, &env.info_rewrite, client_addr, &mut buf);
    if let Some(acceptor) = tls_after_info {
        let written = tokio::time::timeout(CLOSE_GRACE, client.write_all(&buf)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        buf.clear();
        match transport::upgrade_after_info(client, acceptor, env.transport_timeout).await {
            Ok((upgraded, _)) => client = upgraded,
            Err(e) => {
                if !e.is_silent() {
                    env.metrics.handshake_failed(env.kind, e.failure());
                    e.log();
                }
                return;
            }
        }
    }
    encode_server_op(&error, &mut buf);
    client.ending_for(CloseReason::UpstreamUnavailable);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        client.write_all(&buf).await?;
        client.shutdown().await
    })
    .await;
    linger(&mut client).await;
}

/// Resolves when the client closes (or resets) its connection before sending a byte; never
/// otherwise. It only peeks at the socket, so what the client sends stays for the session
/// (and a TLS client on a plain listener is still recognised by its first read). A
/// WebSocket client has nothing to send until the INFO either: one that leaves while the
/// upstream is dialled (a browser tab closed) is seen this way too, unless it sent a frame
/// with its upgrade request. Under TLS, bytes the client sent may already sit in the TLS
/// layer, unseen by a peek, so only a reset counts there (a close might follow a CONNECT
/// that must still go upstream).
async fn left_before_speaking(client: &transport::ClientStream) {
    let (socket, end_counts) = match client {
        transport::ClientStream::Tcp(tcp) => (tcp.get_ref(), true),
        transport::ClientStream::Ws(ws) => (ws.get_ref(), !ws.has_buffered_input()),
        transport::ClientStream::Tls(tls) => (tls.get_ref().0.get_ref(), false),
        transport::ClientStream::Wss(wss) => (wss.get_ref().get_ref().0.get_ref(), false),
    };
    let mut byte = [0u8; 1];
    match socket.peek(&mut byte).await {
        Err(_) => return,
        Ok(0) if end_counts => return,
        _ => {}
    }
    std::future::pending().await
}

/// Polls both forwarders from this one task until the session ends.
async fn duplex<U>(
    client: &mut transport::ClientStream,
    upstream: &mut U,
    shared: &mut Shared,
    c2u: &mut Forwarder,
    u2c: &mut Forwarder,
    env: &SessionEnv,
    entry: &ConnEntry,
) -> CloseReason
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = tokio::time::sleep(env.handshake_timeout);
    tokio::pin!(handshake);
    let mut close_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    // Whether `close_deadline` is the longer backstop of a delivery after a failed upstream
    // write, to be cut to the close grace if the session starts closing.
    let mut close_deadline_long = false;
    let mut client_stall = WriteStall::default();
    let mut upstream_stall = WriteStall::default();
    // Armed only while a buffer is grown, so idle connections carry no timer.
    let mut shrink_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut shutdown = env.shutdown.clone();
    let shutdown_signal = async move { crate::edge::until_stopped(&mut shutdown).await };
    tokio::pin!(shutdown_signal);
    // The first poll lets the filters check they hold the latest rules, in case a reload
    // happened while this session was being set up.
    let mut rules_checked = false;
    let mut told_max_payload = shared.client_max_payload;
    let reload = next_reload(env.rules_epoch.clone());
    tokio::pin!(reload);
    let mut lame_duck = env.lame_duck.clone();
    let lame_duck_signal = async move { crate::edge::until_stopped(&mut lame_duck).await };
    tokio::pin!(lame_duck_signal);
    let mut lame_duck_sent = false;
    // A drain closes the sessions left after its grace period one by one, through here.
    let close_requested = entry.close_requested();
    tokio::pin!(close_requested);
    // What the registry was last told: after which CONNECT, and whether the user was known.
    // A CONNECT checked off the thread (bcrypt) names its user after it was first seen, and a
    // second CONNECT may name another, so both renew it.
    let mut client_info_published: Option<(u64, Option<String>)> = None;
    // The client's side reached its end after the CONNECT.
    let mut client_ended = false;
    // A write to the upstream failed (it closed, or reset): nothing more goes there, but
    // what it sent before (nats-server's `-ERR` before it closes a connection, whose unread
    // input then resets it) is still read and delivered, to its end: a write failure means
    // the connection is gone, so its reads end too. The client's write deadline bounds the
    // delivery, as any, with a grace as long as that deadline for a backstop.
    let mut upstream_write_failed = false;
    // The failed write found the connection reset (not closed): its end, read later, is that
    // reset's, whatever the read says (Linux hands the error to the write alone).
    let mut upstream_reset = false;

    poll_fn(|cx| {
        // One turn per task poll, however often the loop below goes round in it.
        c2u.new_turn();
        u2c.new_turn();
        loop {
            let generation = shared.generation;
            let mut reloaded = !std::mem::replace(&mut rules_checked, true);
            if let Poll::Ready(epoch) = reload.as_mut().poll(cx) {
                reload.set(next_reload(epoch));
                reloaded = true;
            }
            if reloaded {
                apply_reload(shared, c2u);
            }

            if shared.closing.is_none() {
                // The first CONNECT still being checked (off the thread) counts against the
                // timeout too, as a bcrypt check counts against nats-server's auth_timeout.
                let unchecked = (shared.ctx.connect.is_none() && shared.auth_timer)
                    || (shared.offloaded.is_some() && shared.ctx.identity.is_none());
                if unchecked && handshake.as_mut().poll(cx).is_ready() {
                    if shared.ctx.connect.is_none() {
                        tracing::info!("no CONNECT within the handshake timeout");
                    } else {
                        tracing::info!(
                        "the CONNECT's credentials were not checked within the handshake timeout"
                    );
                    }
                    shared.send_now(&ServerOp::Err(errors::AUTHENTICATION_TIMEOUT.to_string()));
                    shared.close(CloseReason::HandshakeTimeout);
                    c2u.stop();
                }
                if shutdown_signal.as_mut().poll(cx).is_ready() {
                    shared.close(CloseReason::Shutdown);
                    c2u.stop();
                }
                if !lame_duck_sent && lame_duck_signal.as_mut().poll(cx).is_ready() {
                    lame_duck_sent = true;
                    // Held until the client has had the PONG to its first PING, as nats-server
                    // holds its own INFOs: a client still waiting for that PONG fails on anything
                    // else. The forwarder sends it after that PONG.
                    if shared.client_ponged {
                        send_lame_duck(shared);
                    } else {
                        shared.lame_duck_pending = true;
                    }
                }
                // Only a drain asks, and only in lame-duck mode: before it, this costs nothing.
                // Polled in the same pass that saw lame-duck mode begin, so the task is woken
                // for the request.
                if lame_duck_sent
                    && shared.closing.is_none()
                    && close_requested.as_mut().poll(cx).is_ready()
                {
                    shared.close(CloseReason::Shutdown);
                    c2u.stop();
                }
            }
            shared.poll_offloaded(cx);
            // An async INFO with another max_payload (nats-server reloaded with a new one)
            // holds the frames written from here on; those the poll that queued it wrote after
            // it kept the old limit (a window of one batch).
            if shared.client_max_payload != told_max_payload {
                told_max_payload = shared.client_max_payload;
                client.told_max_payload(told_max_payload);
            }

            match u2c.poll(cx, upstream, client, shared) {
                Poll::Ready(Ok(())) => {
                    let ended = if upstream_reset {
                        CloseReason::UpstreamIoError
                    } else {
                        CloseReason::UpstreamClosed
                    };
                    return Poll::Ready(shared.closing.unwrap_or(ended));
                }
                Poll::Ready(Err(IoFailure::Read(e))) => {
                    tracing::debug!(error = %e, "upstream read failed");
                    return Poll::Ready(shared.closing.unwrap_or(CloseReason::UpstreamIoError));
                }
                Poll::Ready(Err(IoFailure::Write(e))) => {
                    tracing::debug!(error = %e, "client write failed");
                    // A session already ending ends for its reason; a client that closed both
                    // sides cannot take its last answers: still a client close.
                    return Poll::Ready(shared.closing.unwrap_or(if client_ended {
                        CloseReason::ClientClosed
                    } else {
                        CloseReason::ClientIoError
                    }));
                }
                Poll::Pending => {}
            }
            if shared.closing.is_some() && !c2u.is_stopped() {
                // Ending for what the upstream side saw (its protocol violation, a filter's close
                // of a delivery): only what the client sent before goes upstream.
                c2u.stop();
            }
            shared.client_queued = u2c.queued();
            if !shared.ctx.end_subscriptions.is_empty() && !upstream_write_failed {
                c2u.end_subscriptions_upstream(shared);
            }
            let c2u_polled = if upstream_write_failed {
                Poll::Pending
            } else {
                c2u.poll(cx, client, upstream, shared)
            };
            match c2u_polled {
                Poll::Ready(Ok(())) if !client_ended => {
                    if shared.closing.is_some() {
                        // Already ending: what is queued for the client (its closing `-ERR`)
                        // still goes, as below, within the close grace.
                        client_ended = true;
                    } else if shared.ctx.connect.is_none() {
                        return Poll::Ready(CloseReason::ClientClosed);
                    } else {
                        // The client closed its side after its CONNECT: the upstream's answers to
                        // what it sent still reach it (a half-closed client reads them), then the
                        // session ends, within the close grace.
                        client_ended = true;
                        c2u.finish_after_upstream(shared);
                        continue;
                    }
                }
                // Ended; waiting for the upstream's last answers.
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(IoFailure::Read(e))) => {
                    if transport::is_tls_on_plain(&e) {
                        let why = HandshakeFailure::TlsOnPlainListener;
                        env.metrics.handshake_failed(env.kind, why);
                        tracing::warn!(error = %e, reason = why.as_str(), "handshake failed");
                    } else if let Some(violation) = transport::ws_frame_violation(&e) {
                        tracing::warn!(error = %violation, "client WebSocket protocol violation");
                        return Poll::Ready(
                            shared.closing.unwrap_or(CloseReason::ProtocolViolation),
                        );
                    } else {
                        tracing::debug!(error = %e, "client read failed");
                    }
                    // A session already ending ends for its reason.
                    return Poll::Ready(shared.closing.unwrap_or(CloseReason::ClientIoError));
                }
                Poll::Ready(Err(IoFailure::Write(e))) => {
                    tracing::debug!(error = %e, "upstream write failed");
                    // A client's violation waiting on a barrier the upstream will never answer
                    // ends for it now.
                    if shared.closing.is_none() {
                        if let Some(reason) = ending_reason(shared, c2u) {
                            return Poll::Ready(reason);
                        }
                    }
                    // Not `shared.close`: a closing session reads no more from the upstream. One
                    // already closing still delivers what is queued for the client (its closing
                    // `-ERR`), within the close grace, and ends for its own reason.
                    upstream_write_failed = true;
                    upstream_reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                    c2u.stop();
                    continue;
                }
                Poll::Pending => {}
            }

            // A client that takes none of the bytes queued for it within the write deadline is
            // a slow consumer, and is closed as nats-server closes one. Nothing else would end
            // its session: the upstream, no longer read past the high-water mark, cannot tell
            // the edge that nats-server gave up on it.
            if client_stall.expired(cx, u2c.stalled_at(), env.write_deadline) {
                tracing::info!(
                    write_deadline = ?env.write_deadline,
                    queued_bytes = u2c.queued(),
                    "slow consumer: the client took nothing within the write deadline"
                );
                return Poll::Ready(CloseReason::SlowConsumer);
            }
            // Likewise an upstream that takes nothing (a partition, a zero window): past its
            // queue's bound the client is no longer read, so not even its close would be seen,
            // and the session would last until TCP gave up. nats-server bounds its own writes
            // the same way.
            if !upstream_write_failed
                && upstream_stall.expired(cx, c2u.stalled_at(), env.write_deadline)
            {
                tracing::warn!(
                    write_deadline = ?env.write_deadline,
                    queued_bytes = c2u.queued(),
                    "the upstream took nothing within the write deadline"
                );
                return Poll::Ready(CloseReason::UpstreamIoError);
            }

            // A session that is ending, or whose client reader stopped on a violation, gets a
            // bounded time to deliver its last words: to the client, and to the upstream what
            // the client sent before the end (taken off its socket, so nats-server would have
            // acted on it).
            let ending = ending_reason(shared, c2u)
                .or(upstream_write_failed.then_some(CloseReason::UpstreamIoError));
            if let Some(reason) = ending {
                // After a failed upstream write, only the upstream's end (or the grace) ends it:
                // its last words may not have been read yet. Unless the session is closing: then
                // the upstream is read no more, and what the client sent cannot go there.
                if shared.closing.is_some()
                    && u2c.is_drained()
                    && shared.to_client.is_empty()
                    && (c2u.is_drained() || upstream_write_failed)
                {
                    return Poll::Ready(reason);
                }
                // An upstream gone after a failed write has sent all it will: the session ends
                // when that is delivered (its end read), the client's write deadline bounding the
                // delivery; the longer grace is only a backstop.
                let long_grace = upstream_write_failed && shared.closing.is_none();
                if !long_grace && std::mem::take(&mut close_deadline_long) {
                    // Closing now: the close grace, not the backstop, bounds what is left.
                    close_deadline = None;
                }
                let deadline = close_deadline.get_or_insert_with(|| {
                    close_deadline_long = long_grace;
                    let grace = if long_grace {
                        env.write_deadline.max(CLOSE_GRACE)
                    } else {
                        CLOSE_GRACE
                    };
                    Box::pin(tokio::time::sleep(grace))
                });
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(reason);
                }
            }

            if shrink_timer.is_none() && (c2u.is_grown() || u2c.is_grown() || client.is_grown()) {
                shrink_timer = Some(Box::pin(tokio::time::sleep(SHRINK_INTERVAL)));
            }
            if let Some(timer) = shrink_timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    c2u.shrink_if_empty();
                    u2c.shrink_if_empty();
                    client.shrink_if_empty();
                    shrink_timer = None;
                    continue;
                }
            }

            // A direction that yielded its turn is polled again after the worker's other
            // sessions, whatever changed meanwhile: looping on here would let one client's ops
            // (a CONNECT changes the session's state each time) hold the worker.
            if shared.generation == generation || c2u.yielded() || u2c.yielded() {
                // Once per wake-up, not per message: see `crate::registry`.
                // The ACL filter names the user when it has judged a CONNECT.
                let user = shared.ctx.identity.as_ref().and_then(|i| i.user.as_deref());
                let stale = client_info_published
                    .as_ref()
                    .is_none_or(|(connects, published)| {
                        *connects != shared.connects || published.as_deref() != user
                    });
                if stale {
                    if let Some(connect) = &shared.ctx.connect {
                        entry.set_client_info(ClientInfo {
                            name: connect.name.clone(),
                            lang: connect.lang.clone(),
                            version: connect.version.clone(),
                        });
                        let user = user.map(str::to_string);
                        entry.set_user(user.clone());
                        client_info_published = Some((shared.connects, user));
                    }
                }
                entry.publish(LiveCounts {
                    in_msgs: c2u.msgs,
                    out_msgs: u2c.msgs,
                    in_bytes: c2u.bytes,
                    out_bytes: u2c.bytes,
                    subscriptions: c2u.subscriptions(),
                });
                entry.publish_link(u2c.queued(), shared.rtt);
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Why the session is ending, if it is: the reason it closes for, or the one a barrier
/// holds for after the upstream's last answers (the client's reader stopped on a
/// violation, or the client half-closed).
fn ending_reason(shared: &Shared, c2u: &Forwarder) -> Option<CloseReason> {
    shared.closing.or_else(|| {
        c2u.is_stopped()
            .then(|| shared.barriers.back().and_then(|b| b.close))
            .flatten()
    })
}

/// What nats-server sends its clients when it enters lame-duck mode: the INFO it sent last,
/// with `ldm: true`, only to clients whose CONNECT declared a protocol that takes async INFOs
/// (`protocol` 1 or more), as its `sendAsyncInfoToClients` does. The nonce belongs to the
/// first INFO only and is left out, as in nats-server's async INFOs.
pub(super) fn send_lame_duck(shared: &mut Shared) {
    let takes_async_info = shared
        .ctx
        .connect
        .as_ref()
        .is_some_and(|c| c.protocol.unwrap_or(0) >= 1);
    if !takes_async_info {
        return;
    }
    let Some(mut info) = shared
        .last_info
        .as_ref()
        .and_then(|json| serde_json::from_slice::<Info>(json).ok())
    else {
        return;
    };
    shared.info_rewrite.lame_duck(&mut info);
    info.nonce = None;
    // The fields of the INFO that answers a CONNECT (nats-server 2.12+), which this one is
    // not: nats-server's lame-duck INFO is its general one, without the client's account.
    for field in ["connect_info", "remote_account", "acc_is_sys"] {
        info.extra.remove(field);
    }
    tracing::debug!("lame-duck INFO sent");
    shared.send_now(&ServerOp::Info(Box::new(info)));
}

/// How long one direction's writer has taken none of what is queued for it. The timer is
/// made the first time it stalls, then reset: a fast peer never has one.
#[derive(Default)]
struct WriteStall {
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The writer's written-byte count when its current stall began.
    since: Option<u64>,
}

impl WriteStall {
    /// Whether the writer, stalled at `written` bytes (`None`: not stalled), has taken
    /// nothing for `deadline`.
    fn expired(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: Option<u64>,
        deadline: Duration,
    ) -> bool {
        let Some(written) = written else {
            self.since = None;
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        if self.since != Some(written) {
            self.since = Some(written);
            timer.as_mut().reset(tokio::time::Instant::now() + deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// One unit of a listener's `connections_open` gauge, given back when the session's task
/// ends, however it ends: a panic in a session must not leave the gauge high for good.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn count(open: &prometheus_client::metrics::gauge::Gauge) -> OpenConnection {
        open.inc();
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
        if std::thread::panicking() {
            tracing::error!("session ended by a panic; its close is not counted");
        }
    }
}
