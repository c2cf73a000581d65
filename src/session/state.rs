//! State both forwarders of one session share. Both are polled from the session's single task,
//! so this is plain data behind `&mut`, with no lock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nats_edge_filters::limits::LimitsConfig;
use nats_edge_filters::{Chain, CloseReason, ServerOp, SessionCtx};

use super::info::InfoRewrite;
use crate::metrics::LocalFilterTime;
use crate::proto::{encode_server_op, ScanLimits};

/// The largest message accepted from the upstream: nats-server's own ceiling on max_payload.
pub const MAX_DELIVERED_PAYLOAD: u64 = 64 * 1024 * 1024;

/// How many barriers (each holding the answers that wait behind one upstream PING) may be
/// outstanding before the client reader pauses; checked before each read, so one read's
/// ops may go past it.
pub const MAX_PENDING_BARRIERS: usize = 64;

/// How many bytes of answers may wait behind upstream replies before the client reader
/// pauses (checked before each read, as the barrier count is). Answers in a row share one
/// barrier, so the count of barriers alone does not bound them: a client that never reads,
/// sending op after refused op, would grow the newest.
pub const MAX_HELD_ANSWER_BYTES: usize = 64 * 1024;

/// Answers the edge made itself, held until the upstream has answered everything sent
/// before them: the edge sends a PING upstream and releases them on its PONG, so an `-ERR`
/// never overtakes a `+OK` or `PONG` the upstream still owes. The same PINGs frame the
/// UNSUBs the edge sends of its own (after a reload), so their answers stay hidden.
#[derive(Default)]
pub struct Barrier {
    /// The number of the PING (counting every PING sent upstream) whose PONG releases this.
    pub ping_seq: u64,
    /// The encoded answers.
    pub answers: BytesMut,
    /// Set when the session ends once the answers are written.
    pub close: Option<CloseReason>,
    /// Set when a deferred client op waits for this barrier.
    pub resume: bool,
    /// How many `+OK`s right after this PONG answer the edge's own UNSUBs, not the client's.
    pub hide_oks: usize,
    /// Subscriptions the edge ended at the upstream before this PING: at its PONG, their
    /// last delivery has gone past.
    pub ended: Vec<Bytes>,
}

/// A session's shared state.
pub struct Shared {
    pub chain: Chain,
    pub ctx: SessionCtx,
    pub limits: LimitsConfig,
    pub info_rewrite: InfoRewrite,
    /// Limits for frames from the client; max_payload follows the upstream's INFO.
    pub client_scan: ScanLimits,
    /// Limits for frames from the upstream.
    pub server_scan: ScanLimits,
    /// PINGs sent upstream so far (the client's and the edge's barriers).
    pub pings_sent: u64,
    /// A PING on its way upstream (its number among `pings_sent`; the client's or the
    /// edge's) and the newest client op that went before it: its PONG means the upstream
    /// has answered every op up to that one.
    pub ping_checkpoint: Option<(u64, u64)>,
    /// The newest client op (by [`nats_edge_filters::SessionCtx::client_op`]) the filters
    /// have settled: gone upstream, or answered or dropped at the edge (not one held).
    pub settled_op: u64,
    /// The client's PINGs that went upstream before any CONNECT and are not answered yet:
    /// their PONGs are not the first PONG nats-server counts (it counts only after a
    /// CONNECT), so they release no held INFO.
    pub early_pings: u64,
    /// PONGs received from upstream so far.
    pub pongs_seen: u64,
    pub barriers: VecDeque<Barrier>,
    /// Bytes of answers held in `barriers`, against [`MAX_HELD_ANSWER_BYTES`].
    pub held_answer_bytes: usize,
    /// Whether an op has gone upstream since the newest barrier's PING, so a new answer
    /// needs a barrier of its own.
    pub forwarded_since_barrier: bool,
    /// Whether any client op has gone upstream: until one has, the upstream owes the
    /// client nothing (it sent its INFO), and an answer needs no barrier.
    forwarded_any: bool,
    /// Bytes for the client that need no barrier, written at the next frame boundary.
    pub to_client: VecDeque<Bytes>,
    /// Set when the barrier a deferred client op waits for has been released (and taken
    /// back into a later barrier when the edge sends UNSUBs before the op is shown again).
    pub resume_deferred: bool,
    /// Set when the session is ending for this reason; forwarders stop reading.
    pub closing: Option<CloseReason>,
    /// Bumped whenever one direction changes what the other may do, so the session re-polls.
    pub generation: u64,
    /// CONNECTs read from the client so far (an implied one included): the registry's copy
    /// of the client's name and user is renewed after each.
    pub connects: u64,
    /// CONNECTs that went upstream: after the first, each drops every subscription there
    /// (where `upstream_drops_subs` says the upstream does).
    pub connects_upstream: u64,
    /// The upstream's version drops a client's subscriptions on a CONNECT after its first
    /// (nats-server 2.11.17, 2.12.8, 2.14.0 and later).
    pub upstream_drops_subs: bool,
    /// Time spent in the filter chain, added to the shared histogram when the session ends.
    pub filter_time: LocalFilterTime,
    /// The INFO the client was sent last, as JSON, for the lame-duck INFO of a drain.
    pub last_info: Option<bytes::Bytes>,
    /// The `max_payload` of the INFO the client was sent last (or is about to be): a
    /// WebSocket client's frames are held to it.
    pub client_max_payload: Option<i64>,
    /// A filter's check waiting its turn or running on the blocking pool while the client's
    /// stream waits ([`Verdict::Offload`](nats_edge_filters::Verdict::Offload)). Aborted
    /// with the session, so a check still waiting for its turn never runs.
    pub offloaded: Option<AbortOnDrop>,
    /// Set when that check is done: the op it held is shown to the filters again (unlike
    /// `resume_deferred`, without the upstream having caught up).
    pub resume_offloaded: bool,
    /// `+OK`s still to come from the upstream that answer the edge's own ops: its UNSUBs,
    /// the CONNECT a client implied.
    pub oks_to_hide: usize,
    /// The upstream turned the client away as a full server does (`-ERR 'maximum
    /// connections exceeded'`, then the close): later sessions dial the other upstreams
    /// first, as a client that reconnects would pick another server.
    pub upstream_full: bool,
    /// The upstream sent an `-ERR` that nats-server always closes the connection after: the
    /// close frame a WebSocket client gets when the upstream then goes, the one nats-server
    /// would have sent it (rather than the `Server Shutdown` of an upstream that went away).
    pub upstream_farewell: Option<(u16, &'static str)>,
    /// The client's INFO says `auth_required`: until its CONNECT, an op that does not start
    /// with `C` is an authorization violation, whatever it is, as nats-server judges it.
    pub client_must_connect: bool,
    /// The client must send its CONNECT within the handshake timeout: the edge
    /// authenticates it, or the upstream's INFO asked for auth. As nats-server runs its auth
    /// timer only where auth is configured, a client of an upstream without auth may take
    /// its time (the upstream's pings end it if it never answers).
    pub auth_timer: bool,
    /// A PONG has gone to the client. Clients read nothing but a PONG in answer to their
    /// first PING, so nats-server sends them no INFO of its own before it; nor does the edge.
    pub client_ponged: bool,
    /// The round trip to the client, for `/connz`: from the INFO to the first CONNECT, then
    /// from each PING passed to the client to its PONG, as nats-server measures its own.
    pub rtt: Option<Duration>,
    /// When the INFO went (until the first CONNECT), or when a PING went to the client that
    /// has had no PONG yet.
    pub rtt_started: Option<Instant>,
    /// The upstream's latest INFO (rewritten) that came before the client's first PONG: held
    /// until that PONG, as nats-server sends a client no INFO before it. (The upstream's own
    /// first PONG may answer a PING of the edge's, which the client never sees.)
    pub held_info: Option<Box<nats_edge_filters::Info>>,
    /// The edge is draining, and the lame-duck INFO waits for that first PONG.
    pub lame_duck_pending: bool,
    /// Bytes the upstream-to-client forwarder has queued and not yet written, as of its
    /// last poll.
    pub client_queued: usize,
}

impl Shared {
    pub fn new(
        chain: Chain,
        ctx: SessionCtx,
        limits: LimitsConfig,
        info_rewrite: InfoRewrite,
        upstream_max_payload: Option<i64>,
    ) -> Self {
        let mut shared = Shared {
            chain,
            ctx,
            limits,
            info_rewrite,
            client_scan: ScanLimits {
                max_control_line: limits.max_control_line,
                max_payload: 0,
                // Until a CONNECT says otherwise, as for nats-server.
                headers: false,
            },
            server_scan: ScanLimits {
                max_control_line: crate::upstream::MAX_SERVER_CONTROL_LINE,
                max_payload: 0,
                headers: false,
            },
            pings_sent: 0,
            ping_checkpoint: None,
            settled_op: 0,
            early_pings: 0,
            pongs_seen: 0,
            barriers: VecDeque::new(),
            held_answer_bytes: 0,
            forwarded_since_barrier: true,
            forwarded_any: false,
            to_client: VecDeque::new(),
            resume_deferred: false,
            closing: None,
            generation: 0,
            connects: 0,
            connects_upstream: 0,
            upstream_drops_subs: false,
            filter_time: LocalFilterTime::default(),
            last_info: None,
            client_max_payload: None,
            offloaded: None,
            resume_offloaded: false,
            oks_to_hide: 0,
            upstream_full: false,
            upstream_farewell: None,
            client_must_connect: false,
            auth_timer: false,
            client_ponged: false,
            rtt: None,
            rtt_started: None,
            held_info: None,
            lame_duck_pending: false,
            client_queued: 0,
        };
        shared.set_upstream_max_payload(upstream_max_payload);
        shared
    }

    /// Applies a (new) upstream max_payload: the client is held to the effective limit, the
    /// upstream may deliver anything up to its own.
    pub fn set_upstream_max_payload(&mut self, upstream: Option<i64>) {
        self.ctx.upstream_max_payload = upstream;
        self.ctx.max_payload = self.limits.effective_max_payload(upstream);
        self.client_scan.max_payload = self.ctx.max_payload;
        // nats-server does not hold deliveries to its own max_payload (in a cluster a
        // message may come from a server with a higher one): only the protocol's ceiling,
        // or the server's own limit where it was raised past that (with max_pending).
        self.server_scan.max_payload = upstream
            .and_then(|limit| u64::try_from(limit).ok())
            .map_or(MAX_DELIVERED_PAYLOAD, |limit| {
                limit.max(MAX_DELIVERED_PAYLOAD)
            });
    }

    /// No client op has gone upstream, nor an edge PING: the upstream owes the client
    /// nothing but the INFO it sent.
    fn upstream_owes_nothing(&self) -> bool {
        !self.forwarded_any && self.barriers.is_empty()
    }

    /// A client op went upstream: the upstream may owe an answer to it.
    pub fn forwarded(&mut self) {
        self.forwarded_since_barrier = true;
        self.forwarded_any = true;
    }

    /// Queues an answer for the client behind everything the upstream still owes. Returns
    /// true when the caller must send a barrier PING upstream.
    ///
    /// Before any op has gone upstream it owes nothing, and the answer goes out at once: a
    /// PING there would reach an upstream that has not seen a CONNECT (one that requires
    /// auth would refuse it and close, as for a client the edge itself refused).
    pub fn answer_after_upstream(
        &mut self,
        op: Option<&ServerOp>,
        close: Option<CloseReason>,
    ) -> bool {
        if self.upstream_owes_nothing() {
            if let Some(op) = op {
                self.send_now(op);
            }
            if let Some(reason) = close {
                self.close(reason);
            }
            return false;
        }
        let reuse = !self.forwarded_since_barrier
            && self
                .barriers
                .back()
                .is_some_and(|b| b.close.is_none() && b.ping_seq == self.pings_sent);
        if !reuse {
            let ping_seq = self.barrier_ping_sent();
            self.barriers.push_back(Barrier {
                ping_seq,
                ..Barrier::default()
            });
            self.forwarded_since_barrier = false;
        }
        if let Some(barrier) = self.barriers.back_mut() {
            if let Some(op) = op {
                let before = barrier.answers.len();
                encode_server_op(op, &mut barrier.answers);
                self.held_answer_bytes += barrier.answers.len() - before;
            }
            barrier.close = barrier.close.or(close);
        }
        !reuse
    }

    /// The edge sent `PING`, an UNSUB of each of `sids`, then `PING` again upstream: at the
    /// first PONG, the next `+OK`s (one per UNSUB, from a verbose upstream connection) are
    /// not the client's; at the second, the filters learn that the subscriptions are gone.
    ///
    /// A client op held until the upstream catches up waits for these UNSUBs too: shown
    /// again, it is told the upstream has caught up, and a SUB that reuses one of the sids
    /// must find every delivery of the ended subscription already in.
    pub fn unsubscribed_upstream(&mut self, sids: Vec<Bytes>, verbose: bool) {
        self.forwarded();
        // Released already but not yet shown again counts too.
        let mut resume = std::mem::take(&mut self.resume_deferred);
        for barrier in &mut self.barriers {
            resume |= std::mem::take(&mut barrier.resume);
        }
        let ping_seq = self.barrier_ping_sent();
        self.barriers.push_back(Barrier {
            ping_seq,
            hide_oks: if verbose { sids.len() } else { 0 },
            ..Barrier::default()
        });
        let ping_seq = self.barrier_ping_sent();
        self.barriers.push_back(Barrier {
            ping_seq,
            ended: sids,
            resume,
            ..Barrier::default()
        });
    }

    /// One of the edge's own PINGs goes upstream; returns its number. Every client op the
    /// filters have settled went before it, so its PONG may be the checkpoint that tells
    /// them so (see [`Shared::client_ping_forwarded`]).
    fn barrier_ping_sent(&mut self) -> u64 {
        self.ping_sent(self.settled_op)
    }

    /// A PING goes upstream after every client op up to `answered_by_it`; returns its
    /// number. The first since the last checkpoint was answered is the next checkpoint.
    fn ping_sent(&mut self, answered_by_it: u64) -> u64 {
        self.pings_sent += 1;
        if self.ping_checkpoint.is_none() {
            self.ping_checkpoint = Some((self.pings_sent, answered_by_it));
        }
        self.pings_sent
    }

    /// Holds the client's stream until the upstream has answered everything sent so far.
    /// Returns true when the caller must send a barrier PING upstream.
    pub fn defer_until_upstream(&mut self) -> bool {
        if self.upstream_owes_nothing() {
            // It has caught up already.
            self.resume_deferred = true;
            self.generation += 1;
            return false;
        }
        let needs_ping = self.answer_after_upstream(None, None);
        if let Some(barrier) = self.barriers.back_mut() {
            barrier.resume = true;
        }
        needs_ping
    }

    /// The client's first CONNECT or a PONG arrived: it ends the round trip under way, if one
    /// is.
    pub fn client_answered(&mut self) {
        if let Some(started) = self.rtt_started.take() {
            self.rtt = Some(started.elapsed());
        }
    }

    /// The upstream's PING is on its way to the client: a round trip starts, unless one is
    /// under way.
    pub fn ping_to_client(&mut self) {
        if self.rtt_started.is_none() {
            self.rtt_started = Some(Instant::now());
        }
    }

    /// The client's PING has gone upstream, after every op the client sent before it (a
    /// deferred op holds back the ones after it). The first PING since the last one was
    /// answered is the checkpoint whose PONG tells the filters how far the upstream has
    /// caught up ([`nats_edge_filters::SessionCtx::answered_op`]).
    pub fn client_ping_forwarded(&mut self) {
        self.early_pings += u64::from(self.connects_upstream == 0);
        self.ping_sent(self.ctx.client_op);
    }

    /// Called for every PONG from the upstream: returns the barrier it releases, if it is one
    /// of the edge's (and then the PONG is not the client's to see).
    ///
    /// A PONG for which no PING was sent is the upstream's error: the session closes.
    pub fn pong_received(&mut self) -> Option<Barrier> {
        self.pongs_seen += 1;
        if self.pongs_seen > self.pings_sent {
            tracing::warn!("upstream sent a PONG for which no PING was sent");
            self.close(CloseReason::UpstreamProtocolViolation);
            return None;
        }
        if let Some((seq, op)) = self.ping_checkpoint {
            if seq <= self.pongs_seen {
                self.ctx.answered_op = self.ctx.answered_op.max(op);
                self.ping_checkpoint = None;
            }
        }
        if self
            .barriers
            .front()
            .is_some_and(|b| b.ping_seq <= self.pongs_seen)
        {
            self.generation += 1;
            let released = self.barriers.pop_front();
            if let Some(b) = &released {
                self.held_answer_bytes -= b.answers.len();
            }
            released
        } else {
            None
        }
    }

    /// Enough edge-made answers wait behind upstream replies that the client reader pauses
    /// until the upstream catches up: by count of barriers, and by their bytes.
    ///
    /// Before any op has gone upstream, answers go straight to the client, unheld: there
    /// the bytes still queued for it, all the edge's own, are the bound.
    pub fn answers_backlogged(&self) -> bool {
        self.barriers.len() >= MAX_PENDING_BARRIERS
            || self.held_answer_bytes >= MAX_HELD_ANSWER_BYTES
            || (!self.forwarded_any
                && self.client_queued + self.to_client.iter().map(Bytes::len).sum::<usize>()
                    >= MAX_HELD_ANSWER_BYTES)
    }

    /// Runs `check` on the blocking pool once one of the edge's slots for slow checks is
    /// free; the deferred client op is shown again when it is done
    /// ([`Shared::poll_offloaded`]). The wait for a slot is a task, not a parked thread.
    pub fn offload(&mut self, check: nats_edge_filters::SlowCheck) {
        let job = tokio::spawn(async move {
            let Ok(permit) = slow_check_slots().acquire().await else {
                return;
            };
            // The slot is held until the check ends, even if this task is aborted first.
            let _ = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                check.run();
            })
            .await;
        });
        self.offloaded = Some(AbortOnDrop(job));
        self.generation += 1;
    }

    /// Polls the offloaded check: once it is done (or gone), the deferred op resumes.
    pub fn poll_offloaded(&mut self, cx: &mut std::task::Context<'_>) {
        if let Some(AbortOnDrop(job)) = self.offloaded.as_mut() {
            if std::future::Future::poll(std::pin::Pin::new(job), cx).is_ready() {
                self.offloaded = None;
                self.resume_offloaded = true;
                self.generation += 1;
            }
        }
    }

    /// Ends the session for `reason` once what is queued for the client has been written.
    pub fn close(&mut self, reason: CloseReason) {
        if self.closing.is_none() {
            self.closing = Some(reason);
            self.generation += 1;
        }
    }

    /// Sends `op` to the client at the next frame boundary, without a barrier.
    pub fn send_now(&mut self, op: &ServerOp) {
        let mut buf = BytesMut::new();
        encode_server_op(op, &mut buf);
        self.to_client.push_back(buf.freeze());
        self.generation += 1;
    }
}

/// Slow checks (bcrypt) run at most on half the cores (at least one) at once, whatever the
/// number of clients waiting: a flood of wrong passwords queues here instead of taking every
/// core from the sessions.
fn slow_check_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new((cores / 2).max(1))
    })
}

/// A task aborted when its handle is dropped: an offloaded check dies with its session.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
impl Shared {
    /// A session's state with no filters, for the session's unit tests.
    pub(super) fn for_tests() -> Shared {
        let conn = nats_edge_filters::ConnFacts {
            conn_id: 1,
            listener: "l".into(),
            client_addr: "127.0.0.1:5555".parse().unwrap(),
            transport: "tcp",
            tls_peer: None,
            tls_handshake_pending: false,
        };
        let info = InfoRewrite {
            host: "127.0.0.1".into(),
            port: 4222,
            connect_urls: Vec::new(),
            tls_required: false,
            tls_verify: false,
            lame_duck_sent: false,
        };
        Shared::new(
            Chain::new(Vec::new()),
            SessionCtx::new(conn),
            LimitsConfig::default(),
            info,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::for_tests()
    }

    /// Refused ops in a row share one barrier, so its bytes bound what a client that never
    /// reads can make the edge hold; the PONG that releases it gives them back.
    #[test]
    fn held_answers_are_bounded_by_bytes() {
        let mut s = shared();
        s.forwarded();
        let denied = ServerOp::Err(r#"Permissions Violation for Publish to "denied""#.into());
        assert!(s.answer_after_upstream(Some(&denied), None));
        let mut answers = 1;
        while !s.answers_backlogged() {
            assert!(!s.answer_after_upstream(Some(&denied), None));
            answers += 1;
            assert!(answers < 10_000, "never backlogged");
        }
        assert_eq!(s.barriers.len(), 1);
        assert!(s.held_answer_bytes >= MAX_HELD_ANSWER_BYTES);
        assert_eq!(s.held_answer_bytes, s.barriers[0].answers.len());
        let released = s.pong_received().expect("the barrier's PONG");
        let mut one = BytesMut::new();
        encode_server_op(&denied, &mut one);
        assert_eq!(released.answers.len(), answers * one.len());
        assert_eq!(s.held_answer_bytes, 0);
        assert!(!s.answers_backlogged());
    }

    /// The PONG to a client PING tells the filters the upstream has answered every client
    /// op before that PING; a PING sent while one is on its way moves nothing until it is
    /// answered, and the edge's own barrier PINGs count in the order of PONGs.
    #[test]
    fn a_client_pings_pong_answers_the_ops_before_it() {
        let mut s = shared();
        s.ctx.client_op = 3;
        s.client_ping_forwarded();
        s.ctx.client_op = 5;
        s.client_ping_forwarded();
        s.forwarded();
        assert!(s.defer_until_upstream(), "a barrier PING of the edge's own");
        assert!(s.pong_received().is_none());
        assert_eq!(s.ctx.answered_op, 3);
        assert!(s.pong_received().is_none());
        assert_eq!(s.ctx.answered_op, 3, "the second PING was no checkpoint");
        s.ctx.client_op = 6;
        s.client_ping_forwarded();
        assert!(s.pong_received().is_some(), "the barrier's PONG");
        assert_eq!(s.ctx.answered_op, 3);
        assert!(s.pong_received().is_none());
        assert_eq!(s.ctx.answered_op, 6);
    }

    /// The edge's own barrier PING answers the client ops settled before it (not the one
    /// it holds), and what the filters know as answered never goes back.
    #[test]
    fn a_barrier_pings_pong_answers_the_ops_before_the_held_one() {
        let mut s = shared();
        s.forwarded();
        s.settled_op = 6;
        s.ctx.client_op = 7;
        assert!(s.defer_until_upstream());
        assert!(s.pong_received().is_some());
        assert_eq!(s.ctx.answered_op, 6);
        s.ctx.answered_op = 9;
        s.unsubscribed_upstream(vec![Bytes::from_static(b"1")], false);
        while s.pong_received().is_some() {}
        assert_eq!(s.ctx.answered_op, 9);
    }

    /// A held op waits for UNSUBs the edge sends after its barrier PING: shown again as
    /// caught up, it must find the ended subscriptions' deliveries all in.
    #[test]
    fn a_held_op_waits_for_the_edges_later_unsubs() {
        let mut s = shared();
        s.forwarded();
        assert!(s.defer_until_upstream());
        s.unsubscribed_upstream(vec![Bytes::from_static(b"5")], false);
        let first = s.pong_received().expect("the held op's barrier");
        assert!(
            !first.resume,
            "resumed before the edge's UNSUB was answered"
        );
        let between = s.pong_received().expect("the PING before the UNSUB");
        assert!(!between.resume);
        let last = s.pong_received().expect("the PING after the UNSUB");
        assert!(last.resume);
        assert_eq!(last.ended, [Bytes::from_static(b"5")]);

        // Released already, not yet shown again: it waits for the UNSUB too.
        let mut s = shared();
        s.forwarded();
        assert!(s.defer_until_upstream());
        assert!(s.pong_received().is_some_and(|b| b.resume));
        s.resume_deferred = true;
        s.unsubscribed_upstream(vec![Bytes::from_static(b"5")], false);
        assert!(!s.resume_deferred);
        assert!(s.barriers.back().is_some_and(|b| b.resume));
    }

    /// Before any op has gone upstream, nothing is owed: an answer (and a close) goes out
    /// at once, with no PING to an upstream that has not seen a CONNECT.
    #[test]
    fn answers_before_anything_went_upstream_need_no_barrier() {
        let mut s = shared();
        let refused = ServerOp::Err("Authorization Violation".into());
        assert!(!s.answer_after_upstream(Some(&refused), Some(CloseReason::AuthorizationViolation)));
        assert!(s.barriers.is_empty());
        assert_eq!(s.to_client.len(), 1);
        assert_eq!(s.closing, Some(CloseReason::AuthorizationViolation));
        assert!(!s.defer_until_upstream());
        assert!(s.resume_deferred);
    }

    /// Deliveries are held to the protocol's ceiling, or to the server's own max_payload
    /// where it is higher (nats-server allows that with a raised max_pending).
    #[test]
    fn deliveries_may_be_as_large_as_the_upstream_allows() {
        let mut s = shared();
        s.set_upstream_max_payload(Some(1024));
        assert_eq!(s.server_scan.max_payload, MAX_DELIVERED_PAYLOAD);
        s.set_upstream_max_payload(Some(128 << 20));
        assert_eq!(s.server_scan.max_payload, 128 << 20);
        s.set_upstream_max_payload(Some(-1));
        assert_eq!(s.server_scan.max_payload, MAX_DELIVERED_PAYLOAD);
    }

    /// Refusals before anything went upstream go straight to the client; one that never
    /// reads has the reader paused once they pile up, as behind a barrier.
    #[test]
    fn answers_sent_at_once_are_bounded_too() {
        let mut s = shared();
        let refused = ServerOp::Err(r#"Permissions Violation for Publish to "x""#.into());
        let mut answers = 0;
        while !s.answers_backlogged() {
            assert!(!s.answer_after_upstream(Some(&refused), None));
            answers += 1;
            assert!(answers < 10_000, "never backlogged");
        }
        assert!(s.barriers.is_empty());
        // Moved to the forwarder's queue, the bytes still count until written.
        let queued: usize = s.to_client.drain(..).map(|b| b.len()).sum();
        assert!(!s.answers_backlogged());
        s.client_queued = queued;
        assert!(s.answers_backlogged());
        s.client_queued = 0;
        assert!(!s.answers_backlogged());
    }

    /// A check still waiting for a slot when its session ends never runs: the slots go to
    /// the sessions still there.
    #[tokio::test]
    async fn a_waiting_check_dies_with_its_session() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let slots = slow_check_slots();
        let all = u32::try_from(slots.available_permits()).unwrap();
        let busy = slots.acquire_many(all).await.unwrap();

        let ran = Arc::new(AtomicBool::new(false));
        let mut gone = shared();
        let flag = Arc::clone(&ran);
        gone.offload(nats_edge_filters::SlowCheck::new(move || {
            flag.store(true, Ordering::SeqCst)
        }));
        let mut live = shared();
        live.offload(nats_edge_filters::SlowCheck::new(|| {}));
        // Both are queued for a slot; the first session ends, then the slots come free.
        tokio::task::yield_now().await;
        drop(gone);
        drop(busy);

        std::future::poll_fn(|cx| {
            live.poll_offloaded(cx);
            if live.resume_offloaded {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        // Every slot back means no check is still running.
        drop(slots.acquire_many(all).await.unwrap());
        assert!(!ran.load(Ordering::SeqCst), "the ended session's check ran");
    }
}
