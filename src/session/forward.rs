//! One half-duplex forwarder: reads frames from one side, runs them through the filter chain
//! and writes them to the other side.
//!
//! The fast path: a frame that no filter wants to see is not turned into an op at all. Runs of
//! such frames leave as one slice of the read buffer (`split_to(n).freeze()`), and every slice
//! queued for the writer goes out in one vectored write. Reading continues while the reader has
//! data and the queue is below its high-water mark; the writer is flushed only when the reader
//! would block. A queue at its mark stops the reader, which is how a slow client slows the
//! upstream (and nats-server's own slow-consumer policy then applies).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use nats_edge_filters::filter::{client_op_kind, server_op_kind};
use nats_edge_filters::{errors, subject, ClientOp, CloseReason, OpKind, ServerOp, Verdict};
use tokio::io::{AsyncRead, AsyncWrite};

use super::state::Shared;
use crate::proto::{
    build_client_op, build_connect_over, build_server_op, encode_client_head, encode_server_head,
    encode_server_op, ignored_line_verb_len, pending_frame_len, plain_messages, scan, Direction,
    Frame, ProtoError, Verb, PAYLOAD_END,
};
use crate::server_version::ServerVersion;

/// The first read buffer of a connection, and the size it shrinks back to when idle. Small,
/// as nats-server's 512-byte start: an idle connection holds two of these, and a busy one
/// doubles its reads up to [`MAX_READ`] within a few reads.
const INITIAL_READ: usize = 512;
/// The largest single read.
const MAX_READ: usize = 64 * 1024;
/// Below this much free space the read buffer is grown before reading.
const MIN_SPARE: usize = 512;
/// Queued bytes at which the forwarder stops reading and only writes.
const HIGH_WATER: usize = 256 * 1024;
/// Reads one direction makes in one poll of the session task, at most. Both directions
/// share the task's cooperative budget (tokio's, 128 socket operations per poll): a
/// direction that always had bytes to read and a peer taking them would spend all of it,
/// every poll, and the other direction's reads would be refused for want of budget (a
/// client's UNSUB held behind the firehose it ends). 16 reads of up to 64 KiB, with their
/// writes, leave the other direction its share.
const MAX_READS_PER_POLL: usize = 16;
/// How long one turn of the session task may spend judging a client's ops (the filters'
/// path: CONNECTs, and whatever a filter looks at) before the worker's other sessions have
/// theirs; the ops left in the read buffer wait for the next turn. A read's bytes bound the
/// turn's I/O, not its work: a CONNECT costs far more than its bytes (it is parsed and
/// written anew).
const TURN_BUDGET: Duration = Duration::from_millis(2);
/// Judged ops between two looks at the clock (the first op of a turn starts it); after a
/// CONNECT it is looked at every time.
const JUDGED_PER_CLOCK_LOOK: u32 = 64;
/// Slices per vectored write. A changed message is two slices (its new head, and its
/// payload where it was read), so this is room for about 64 of them.
const MAX_IOV: usize = 128;
/// The scratch buffer is refilled in chunks this large, so encoding a changed op allocates
/// once per chunk, not per op. Heads of changed messages are control lines plus headers.
const SCRATCH_CHUNK: usize = 8 * 1024;
/// Below this much room the scratch buffer takes a fresh chunk before encoding.
const SCRATCH_MIN: usize = 1024;

const PING: &[u8] = b"PING\r\n";
/// The CONNECT a client implies when its first op is another one: nats-server's default
/// client options (`echo` is on by default in the JSON too).
const IMPLIED_CONNECT: &[u8] = b"CONNECT {\"verbose\":true,\"pedantic\":true}\r\n";

/// Which socket failed.
#[derive(Debug)]
pub enum IoFailure {
    Read(io::Error),
    Write(io::Error),
}

pub struct Forwarder {
    dir: Direction,
    rbuf: BytesMut,
    read_size: usize,
    out: VecDeque<Bytes>,
    out_len: usize,
    /// The length of the incomplete frame at the front of the read buffer, when its control
    /// line has told it (0 otherwise): the next read makes room for all of it at once.
    pending: usize,
    /// Where changed ops are encoded; split off per op.
    scratch: BytesMut,
    eof: bool,
    /// Why reading ended, when it failed rather than reached EOF: reported once what was
    /// read before the failure has been written.
    read_error: Option<io::Error>,
    /// No more reading: the session is ending.
    stopped: bool,
    needs_flush: bool,
    /// Bytes read but not scanned yet: those that arrived before the forwarder started
    /// (after the upstream's INFO), or those a turn left when its budget ran out.
    unscanned: bool,
    /// This turn's judging, against [`TURN_BUDGET`]: ops judged, when the first was, and
    /// whether the budget ran out.
    judged: u32,
    judging_since: Option<Instant>,
    turn_spent: bool,
    /// The last poll ended its turn with more to do, and asked to be polled again after the
    /// worker's other sessions.
    yielded: bool,
    /// A client frame a filter deferred, waiting for the upstream to catch up.
    deferred: Option<(Bytes, Frame)>,
    /// The last write or flush could not go on: the writer took no more bytes.
    write_blocked: bool,
    /// Bytes the writer has taken, for telling a stalled writer from a slow one.
    written: u64,
    /// Message frames (PUB/HPUB or MSG/HMSG) read, forwarded or not.
    pub msgs: u64,
    /// Bytes read.
    pub bytes: u64,
    /// SUB and UNSUB frames read (client direction), for the subscription count in `/connz`.
    subs: u64,
    unsubs: u64,
}

impl Forwarder {
    pub fn new(dir: Direction, initial: BytesMut) -> Self {
        Forwarder {
            dir,
            unscanned: !initial.is_empty(),
            rbuf: initial,
            read_size: INITIAL_READ,
            out: VecDeque::new(),
            out_len: 0,
            pending: 0,
            scratch: BytesMut::new(),
            eof: false,
            read_error: None,
            stopped: false,
            needs_flush: false,
            deferred: None,
            judged: 0,
            judging_since: None,
            turn_spent: false,
            yielded: false,
            write_blocked: false,
            written: 0,
            msgs: 0,
            bytes: 0,
            subs: 0,
            unsubs: 0,
        }
    }

    /// SUBs the filters let through minus UNSUBs the client sent (an UNSUB with a max count
    /// counts as removed).
    pub fn subscriptions(&self) -> u64 {
        self.subs.saturating_sub(self.unsubs)
    }

    /// Stop reading; what is queued is still written.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The client closed its side (client to upstream only): what the upstream still owes
    /// for the client's ops (a PONG, a `+OK`, an `-ERR`) is delivered before the session
    /// ends, as nats-server writes out a closing client's pending replies. A barrier PING
    /// goes upstream; its PONG ends the session as a client close.
    pub fn finish_after_upstream(&mut self, shared: &mut Shared) {
        self.stopped = true;
        self.answer_after_upstream(shared, None, Some(CloseReason::ClientClosed));
    }

    /// Ends subscriptions a reload refused at the upstream (client to upstream only), as
    /// nats-server's own reload removes them. The UNSUBs go between two PINGs of the edge's
    /// (see [`Shared::unsubscribed_upstream`]): a verbose client never sees their `+OK`s,
    /// and the filters drop the subscriptions' deliveries until the second PONG.
    /// `already_unsubscribed` of them the client had unsubscribed with a max still to be
    /// reached: they were counted as removed then.
    pub fn unsubscribe_upstream(
        &mut self,
        sids: Vec<Bytes>,
        already_unsubscribed: usize,
        shared: &mut Shared,
    ) {
        if self.stopped || sids.is_empty() {
            return;
        }
        self.unsubs += sids.len().saturating_sub(already_unsubscribed) as u64;
        self.send_unsubscribes(sids, shared);
    }

    /// Ends subscriptions the filters ended on the client's behalf
    /// ([`nats_edge_filters::SessionCtx::end_subscriptions`]) at the upstream, as
    /// [`Forwarder::unsubscribe_upstream`] does; the client's own UNSUB for them has been
    /// counted already.
    pub fn end_subscriptions_upstream(&mut self, shared: &mut Shared) {
        let sids = std::mem::take(&mut shared.ctx.end_subscriptions);
        if self.stopped || sids.is_empty() {
            return;
        }
        self.send_unsubscribes(sids, shared);
    }

    fn send_unsubscribes(&mut self, sids: Vec<Bytes>, shared: &mut Shared) {
        shared.chain.on_unsubscribing(&sids);
        self.push_encoded(|buf| {
            buf.extend_from_slice(PING);
            for sid in &sids {
                buf.extend_from_slice(b"UNSUB ");
                buf.extend_from_slice(sid);
                buf.extend_from_slice(b"\r\n");
            }
            buf.extend_from_slice(PING);
        });
        self.release_scratch();
        let verbose = shared.ctx.connect.as_ref().is_none_or(|c| c.is_verbose());
        shared.unsubscribed_upstream(sids, verbose);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out_len
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Nothing left to write or flush.
    pub fn is_drained(&self) -> bool {
        self.out.is_empty() && !self.needs_flush
    }

    /// While the writer takes none of what is queued for it: the bytes it has taken so far,
    /// which stay the same for as long as it stalls. `None` while it keeps up.
    pub fn stalled_at(&self) -> Option<u64> {
        (self.write_blocked && !self.is_drained()).then_some(self.written)
    }

    /// Drives this direction as far as it can go. `Ready(Ok(()))` means the reader reached
    /// EOF and everything read has been written and flushed; `Ready(Err(IoFailure::Read))`
    /// the same after a failed read.
    pub fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        shared: &mut Shared,
    ) -> Poll<Result<(), IoFailure>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Reads this poll has made: past MAX_READS_PER_POLL this direction lets the other
        // have the rest of the task's turn (see there).
        let mut reads = 0;
        loop {
            if self.dir == Direction::ServerToClient {
                while let Some(bytes) = shared.to_client.pop_front() {
                    self.push(bytes);
                }
            } else if shared.resume_deferred || shared.resume_offloaded {
                // Deferred: the upstream has caught up. Offloaded: the check is done.
                let caught_up = std::mem::take(&mut shared.resume_deferred);
                shared.resume_offloaded = false;
                self.resume_deferred(shared, caught_up);
                continue;
            }
            if !self.turn_spent && std::mem::take(&mut self.unscanned) {
                self.process(shared);
                continue;
            }
            if reads < MAX_READS_PER_POLL && !self.turn_spent && self.may_read(shared) {
                match self.poll_fill(cx, reader) {
                    Poll::Ready(Ok(0)) => self.eof = true,
                    Poll::Ready(Ok(n)) => {
                        reads += 1;
                        self.bytes += n as u64;
                        self.process(shared);
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        // What was read before the failure still goes out, as nats-server
                        // handles what it read before it acts on a read error (a client
                        // that publishes and then resets; a server that sends its last
                        // `-ERR` and resets).
                        self.eof = true;
                        self.read_error = Some(e);
                    }
                    Poll::Pending => {}
                }
            }
            if !self.out.is_empty() {
                ready!(self.poll_write_out(cx, writer)).map_err(IoFailure::Write)?;
                continue;
            }
            if self.needs_flush {
                let flushed = Pin::new(&mut *writer).poll_flush(cx);
                self.write_blocked = flushed.is_pending();
                ready!(flushed).map_err(IoFailure::Write)?;
                self.needs_flush = false;
            }
            if self.unscanned {
                // The turn's budget ran out with ops still to judge, EOF or not: the next
                // turn takes them, after the worker's other sessions have had theirs. (A
                // session that stops this direction meanwhile drops them, as it would
                // bytes not read yet: the client cannot tell the two apart.)
                self.yield_turn(cx);
                return Poll::Pending;
            }
            return match (self.eof, self.read_error.take()) {
                (true, Some(e)) => Poll::Ready(Err(IoFailure::Read(e))),
                (true, None) => Poll::Ready(Ok(())),
                (false, _) => {
                    if reads >= MAX_READS_PER_POLL || self.turn_spent {
                        // Not waiting on the reader: polled again after the other
                        // direction has had its turn, and after the worker has looked for
                        // the other sessions' I/O.
                        self.yield_turn(cx);
                    }
                    Poll::Pending
                }
            };
        }
    }

    fn process(&mut self, shared: &mut Shared) {
        match self.dir {
            Direction::ClientToServer => self.process_client(shared),
            Direction::ServerToClient => self.process_server(shared),
        }
    }

    fn may_read(&self, shared: &Shared) -> bool {
        let barriers_full = self.dir == Direction::ClientToServer && shared.answers_backlogged();
        // A session that is ending delivers what it has, and no more of the upstream's
        // messages: nats-server delivers nothing to a client after the `-ERR` that closes it
        // (a reload that revoked its user, a handshake timeout, a shutdown).
        let ending = self.dir == Direction::ServerToClient && shared.closing.is_some();
        // With the buffer's tail used up, write first: the written slices release their share
        // of the buffer, and the next read reuses it instead of allocating another.
        let must_grow = self.rbuf.capacity() - self.rbuf.len() < MIN_SPARE && !self.out.is_empty();
        !(self.eof
            || self.stopped
            || self.deferred.is_some()
            || barriers_full
            || ending
            || must_grow
            || self.out_len >= HIGH_WATER)
    }

    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_SPARE || self.rbuf.capacity() < self.pending
        {
            // Ask for `read_size` in all, not on top of a partial frame: a buffer whose
            // slices have all been written is then reused (the partial frame moves to its
            // front) instead of a bigger one being allocated. A large partial message gets
            // room for all of it: grown a little per read, it would be copied into a new
            // buffer again and again.
            let additional = self
                .read_size
                .max(self.pending)
                .saturating_sub(self.rbuf.len())
                .max(MIN_SPARE);
            self.rbuf.reserve(additional);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(reader),
            cx,
            &mut self.rbuf
        ))?;
        crate::busy_poll::note_read();
        if n == spare && self.read_size < MAX_READ {
            // The reader had more than we offered: offer more next time.
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Whether the read buffer has grown past its initial size under load.
    pub fn is_grown(&self) -> bool {
        self.rbuf.capacity() > INITIAL_READ
    }

    /// Gives back grown buffers that hold nothing; the session calls this when the
    /// connection has been quiet for a while, so a burst does not pin memory forever.
    pub fn shrink_if_empty(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > INITIAL_READ {
            self.rbuf = BytesMut::new();
            self.read_size = INITIAL_READ;
        }
    }

    fn poll_write_out<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let count = self
                    .out
                    .iter()
                    .zip(slices.iter_mut())
                    .map(|(bytes, slice)| *slice = IoSlice::new(bytes))
                    .count();
                let polled = Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..count]);
                self.write_blocked = polled.is_pending();
                ready!(polled)?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += written as u64;
            self.consume_out(written);
            self.needs_flush = true;
        }
        Poll::Ready(Ok(()))
    }

    fn consume_out(&mut self, mut n: usize) {
        self.out_len -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out_len += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Queues the first `run` bytes of the read buffer unchanged.
    fn flush_run(&mut self, run: &mut usize) {
        if *run > 0 {
            let bytes = self.rbuf.split_to(*run).freeze();
            self.push(bytes);
            *run = 0;
        }
    }

    fn push_encoded(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        if self.scratch.capacity() - self.scratch.len() < SCRATCH_MIN {
            self.scratch.reserve(SCRATCH_CHUNK);
        }
        encode(&mut self.scratch);
        let bytes = self.scratch.split().freeze();
        self.push(bytes);
    }

    /// Encodes the head of a changed op into the scratch buffer and queues it; returns the
    /// payload of a message, which must follow (see [`Forwarder::push_payload`]).
    fn push_head<'a>(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Option<&'a Bytes>,
    ) -> Option<&'a Bytes> {
        let mut payload = None;
        self.push_encoded(|buf| payload = encode(buf));
        payload
    }

    /// Queues a changed message's payload and its CRLF without copying: as one slice of the
    /// frame it was read in when it is still there, else as it is.
    fn push_payload(&mut self, frame: &Bytes, payload: Option<&Bytes>) {
        let Some(payload) = payload else {
            return;
        };
        match slice_with_end(frame, payload) {
            Some(tail) => self.push(tail),
            None => {
                self.push(payload.clone());
                self.push(Bytes::from_static(PAYLOAD_END));
            }
        }
    }

    /// Client to upstream: every complete frame in the read buffer.
    fn process_client(&mut self, shared: &mut Shared) {
        let mut run = 0;
        while !self.stopped && self.deferred.is_none() {
            if shared.ctx.connect.is_none() && shared.client_must_connect {
                // nats-server looks at nothing but the first byte of an op before the CONNECT
                // of a client it must authenticate: not even a malformed op gets another error.
                if self
                    .rbuf
                    .get(run)
                    .is_some_and(|b| !b.eq_ignore_ascii_case(&b'C'))
                {
                    self.flush_run(&mut run);
                    tracing::warn!("authorization violation: an op before CONNECT");
                    let refusal = ServerOp::Err(errors::AUTHORIZATION_VIOLATION.to_string());
                    self.answer_after_upstream(
                        shared,
                        Some(&refusal),
                        Some(CloseReason::AuthorizationViolation),
                    );
                    self.stopped = true;
                    break;
                }
            }
            if shared.ctx.connect.is_none()
                && self
                    .rbuf
                    .get(run)
                    .is_some_and(|b| !b.eq_ignore_ascii_case(&b'C'))
            {
                self.flush_run(&mut run);
                self.send_implied_connect(shared);
                continue;
            }
            if !shared.chain.interest().contains(OpKind::Pub) {
                // Plain PUBs and HPUBs that no filter looks at go on as one run, not one call each.
                let (len, count) = plain_messages(&self.rbuf[run..], self.dir, &shared.client_scan);
                if count > 0 {
                    run += len;
                    self.msgs += count;
                    shared.forwarded();
                }
            }
            let frame = match scan(&self.rbuf[run..], self.dir, &shared.client_scan) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.shed_ignored_line(run, shared.client_scan.max_control_line);
                    break;
                }
                Err(e) => {
                    self.flush_run(&mut run);
                    self.client_violation(e, shared);
                    break;
                }
            };
            self.msgs += u64::from(frame.is_message());
            // Compares on a verb already decoded: no cost a message would notice.
            self.subs += u64::from(frame.verb == Verb::Sub);
            self.unsubs += u64::from(frame.verb == Verb::Unsub);
            // The first CONNECT ends the round trip from the INFO; a later one is no answer
            // to a PING under way.
            if frame.verb == Verb::Pong
                || (frame.verb == Verb::Connect && shared.ctx.connect.is_none())
            {
                shared.client_answered();
            }
            let wanted = frame.verb == Verb::Connect
                || shared
                    .chain
                    .interest()
                    .contains(frame.verb.op_kind(self.dir));
            if !wanted {
                if frame.verb == Verb::Ping {
                    shared.client_ping_forwarded();
                }
                shared.forwarded();
                run += frame.len;
                continue;
            }
            self.flush_run(&mut run);
            let data = self.rbuf.split_to(frame.len).freeze();
            shared.ctx.client_op += 1;
            if self.judged == 0 {
                self.judging_since = Some(Instant::now());
            }
            self.judge_client_frame(data, &frame, shared);
            self.count_judged(frame.verb == Verb::Connect);
            if self.turn_spent {
                self.unscanned = !self.rbuf.is_empty();
                break;
            }
        }
        self.flush_run(&mut run);
        self.note_pending();
        self.release_scratch();
    }

    /// Lets go of the scratch chunk once a read's frames are done: the slices encoded into it
    /// keep it alive until they are written, and then it is freed. An idle session holds no
    /// chunk (every session has its CONNECT, and often an INFO, encoded once), while the
    /// changed ops of one read still share one.
    fn release_scratch(&mut self) {
        if self.scratch.capacity() > 0 {
            self.scratch = BytesMut::new();
        }
    }

    /// After a scan stopped at an incomplete frame at `run`: a `PING`, `PONG` or `+OK` still
    /// waiting for its newline is cut back to its verb once it is longer than a control line
    /// may be. nats-server ignores whatever follows these verbs up to the newline, however
    /// long, so the line is still answered, and the buffer stays bounded.
    fn shed_ignored_line(&mut self, run: usize, max_control_line: usize) {
        let partial = &self.rbuf[run..];
        if partial.len() > max_control_line {
            if let Some(verb_len) = ignored_line_verb_len(partial, self.dir) {
                self.rbuf.truncate(run + verb_len);
            }
        }
    }

    /// After a scan stopped at an incomplete frame: how much room it needs, for the next read.
    fn note_pending(&mut self) {
        // A short remainder fits any buffer: only a large one is worth a look.
        self.pending = if self.rbuf.len() < MIN_SPARE {
            0
        } else {
            pending_frame_len(&self.rbuf).unwrap_or(0)
        };
    }

    /// The upstream has caught up with a deferred frame (`caught_up`), or the check an
    /// offloaded one waited for is done: show it to the filters again, then carry on with
    /// what the client sent after it.
    fn resume_deferred(&mut self, shared: &mut Shared, caught_up: bool) {
        if self.stopped {
            // The session ended meanwhile (a handshake timeout during a check).
            self.deferred = None;
            return;
        }
        if let Some((data, frame)) = self.deferred.take() {
            shared.ctx.upstream_caught_up = caught_up;
            self.judge_client_frame(data, &frame, shared);
            shared.ctx.upstream_caught_up = false;
            self.process_client(shared);
        }
    }

    /// nats-server takes a client whose first op is not a CONNECT (one it lets in without
    /// credentials) as if it had sent a CONNECT with the default options: verbose, pedantic,
    /// echo. So does the edge: that CONNECT goes through the filters as the client's, and
    /// the session counts as connected for the handshake timeout, as nats-server stops its
    /// auth timer. It goes upstream, before the op, only if a filter completed it (edge
    /// authentication's credentials, the upstream URL's, `proxy_sig`, headers for tagging);
    /// the upstream's `+OK` to it is then not the client's.
    fn send_implied_connect(&mut self, shared: &mut Shared) {
        let data = Bytes::from_static(IMPLIED_CONNECT);
        match scan(&data, self.dir, &shared.client_scan) {
            Ok(Some(frame)) => {
                // Set until the CONNECT is settled, a deferred one included.
                shared.ctx.connect_implied = true;
                // No CONNECT answers the INFO: no round trip from it, as nats-server
                // measures none for such a client until a PING has its PONG.
                shared.rtt_started = None;
                shared.ctx.client_op += 1;
                self.judge_client_frame(data, &frame, shared);
            }
            // Cannot happen (the bytes are the edge's own); the defaults then stand alone.
            _ => shared.ctx.connect = Some(Default::default()),
        }
    }

    /// A turn of the session task begins: its budget is whole again. Once per task poll,
    /// however many times the session polls this direction in it.
    pub fn new_turn(&mut self) {
        self.judged = 0;
        self.judging_since = None;
        self.turn_spent = false;
        self.yielded = false;
    }

    fn yield_turn(&mut self, cx: &mut Context<'_>) {
        self.yielded = true;
        wake_after_other_sessions(cx);
    }

    /// Whether this turn ended with more to do: the session task should not poll this
    /// direction again before the worker's other sessions have had theirs.
    pub fn yielded(&self) -> bool {
        self.yielded
    }

    /// Counts a judged op against the turn's budget, which is spent once the ops judged
    /// since the turn's first began took [`TURN_BUDGET`]. The clock is read before the
    /// first, every [`JUDGED_PER_CLOCK_LOOK`] ops after it, and after each CONNECT.
    fn count_judged(&mut self, costly: bool) {
        self.judged += 1;
        if costly || self.judged % JUDGED_PER_CLOCK_LOOK == 0 {
            self.turn_spent = self
                .judging_since
                .is_some_and(|since| since.elapsed() >= TURN_BUDGET);
        }
    }

    /// Shows a client frame to the filters and carries out their verdict; an op not held
    /// (deferred or offloaded) has then gone upstream or been settled at the edge.
    fn judge_client_frame(&mut self, data: Bytes, frame: &Frame, shared: &mut Shared) {
        self.filter_client_frame(data, frame, shared);
        if self.deferred.is_none() {
            shared.settled_op = shared.ctx.client_op;
        }
    }

    fn filter_client_frame(&mut self, data: Bytes, frame: &Frame, shared: &mut Shared) {
        let mut op = match build_client_op(&data, frame) {
            Ok(op) => op,
            Err(e) => return self.client_violation(e, shared),
        };
        if let ClientOp::Connect(connect) = &mut op {
            if let Some(earlier) = &shared.ctx.connect {
                match build_connect_over(&data, frame, earlier) {
                    Ok(over) => **connect = over,
                    Err(e) => return self.client_violation(e, shared),
                }
            }
            // nats-server takes headers only from a CONNECT that asks, and only if it has them.
            shared.client_scan.headers = connect.wants_headers() && shared.ctx.upstream_headers;
            shared.ctx.connect = Some((**connect).clone());
            shared.connects += 1;
            shared.generation += 1;
        }
        let verdict = if shared.chain.interest().contains(client_op_kind(&op)) {
            // Timed only here, where a filter looks at the op (and then one op in a sample):
            // the fast path pays nothing.
            let started = shared.filter_time.start();
            let verdict = shared.chain.on_client_op(&mut op, &mut shared.ctx);
            shared.filter_time.finish(started);
            verdict
        } else {
            Verdict::Forward
        };
        let verdict = if let ClientOp::Connect(_) = op {
            // The CONNECT named the user: what the filters want to see may have changed.
            shared.chain.refresh_interest();
            // It goes upstream as the edge read it (proto::connect), never as sent, so the
            // server cannot act on a CONNECT the filters did not judge.
            match verdict {
                // A CONNECT the client implied goes upstream only if a filter added to it
                // (credentials, a proxy signature, headers), or keeps a table of the
                // client's subscriptions. Otherwise the upstream takes the client's ops as
                // they came, as nats-server itself would. A table must know whether the
                // client's own CONNECT, later, drops the subscriptions made before it, and
                // nats-server's answer depends on what its INFO does not say: with a
                // `no_auth_user` it takes the first op for a CONNECT (so the client's is a
                // second one, which drops them), without authorization it does not. Sent,
                // the implied CONNECT is the upstream's first either way.
                Verdict::Forward
                    if shared.ctx.connect_implied
                        && !shared.chain.interest().contains(OpKind::Sub) =>
                {
                    Verdict::Drop
                }
                Verdict::Forward => Verdict::Changed,
                Verdict::Defer if shared.ctx.upstream_caught_up => Verdict::Changed,
                other => other,
            }
        } else {
            verdict
        };
        if matches!(verdict, Verdict::Drop | Verdict::Answer(_)) {
            self.invalid_publish_subject(&op, shared);
        }
        if matches!(op, ClientOp::Sub(_))
            && matches!(
                verdict,
                Verdict::Drop | Verdict::Answer(_) | Verdict::Close { .. }
            )
        {
            // Counted when read: one the filters kept from the upstream is no subscription.
            // (An UNSUB the filters keep is one they carry out themselves, an auto-unsubscribe
            // whose deliveries they count: it stays counted as removed.)
            self.subs = self.subs.saturating_sub(1);
        }
        let forwarded = match verdict {
            Verdict::Forward => {
                self.push(data);
                true
            }
            Verdict::Changed => {
                let payload = self.push_head(|buf| encode_client_head(&op, buf));
                self.push_payload(&data, payload);
                true
            }
            Verdict::Drop => false,
            Verdict::Answer(answer) => {
                self.answer_after_upstream(shared, Some(&answer), None);
                false
            }
            Verdict::Defer if !shared.ctx.upstream_caught_up => {
                self.deferred = Some((data, *frame));
                if shared.defer_until_upstream() {
                    self.push(Bytes::from_static(PING));
                }
                false
            }
            Verdict::Defer => {
                // Deferred once already: the upstream has caught up, so forward as is.
                self.push(data);
                true
            }
            Verdict::Offload(check) => {
                self.deferred = Some((data, *frame));
                shared.offload(check);
                false
            }
            Verdict::Close { reason, error } => {
                let error = error.map(|text| ServerOp::Err(text.to_string()));
                self.answer_after_upstream(shared, error.as_ref(), Some(reason));
                self.stopped = true;
                false
            }
        };
        if forwarded {
            if matches!(op, ClientOp::Ping) {
                shared.client_ping_forwarded();
            }
            if matches!(op, ClientOp::Connect(_)) {
                shared.connects_upstream += 1;
                if shared.connects_upstream > 1 && shared.upstream_drops_subs {
                    // nats-server forgets the client's subscriptions: so do the filters,
                    // and the session's count.
                    shared.chain.on_subscriptions_dropped();
                    self.subs = 0;
                    self.unsubs = 0;
                }
            }
            shared.forwarded();
        }
        if shared.ctx.connect_implied && self.deferred.is_none() {
            // The implied CONNECT is settled: the upstream's `+OK` to it, if it went, is the
            // edge's (it is verbose, and the first thing the upstream answers).
            shared.ctx.connect_implied = false;
            if forwarded {
                shared.oks_to_hide += 1;
            }
        }
    }

    /// nats-server tells a pedantic client, on the control line and before any other check,
    /// that its PUB names a subject with a wildcard or an empty token, and goes on with the
    /// PUB. For a PUB the edge keeps from the server (an ACL refusal) the edge says it, first.
    fn invalid_publish_subject(&mut self, op: &ClientOp, shared: &mut Shared) {
        let ClientOp::Pub(publish) = op else {
            return;
        };
        let pedantic = shared.ctx.connect.as_ref().is_some_and(|c| c.is_pedantic());
        if pedantic && !subject::is_valid_literal_subject(&publish.subject) {
            let error = ServerOp::Err(errors::INVALID_PUBLISH_SUBJECT.to_string());
            self.answer_after_upstream(shared, Some(&error), None);
        }
    }

    fn answer_after_upstream(
        &mut self,
        shared: &mut Shared,
        op: Option<&ServerOp>,
        close: Option<CloseReason>,
    ) {
        if shared.answer_after_upstream(op, close) {
            self.push(Bytes::from_static(PING));
        }
    }

    /// The client broke the protocol: answer as nats-server would, after what the upstream
    /// still owes, then close.
    fn client_violation(&mut self, error: ProtoError, shared: &mut Shared) {
        tracing::warn!(error = %error, "client protocol violation");
        let answer = error
            .server_error_text()
            .map(|text| ServerOp::Err(text.to_string()));
        self.answer_after_upstream(shared, answer.as_ref(), Some(error.close_reason()));
        self.stopped = true;
    }

    /// Upstream to client: every complete frame in the read buffer.
    fn process_server(&mut self, shared: &mut Shared) {
        let mut run = 0;
        while !self.stopped {
            if !shared.chain.interest().contains(OpKind::Msg) {
                // Plain MSGs and HMSGs that no filter looks at go on as one run, not one call each.
                let (len, count) = plain_messages(&self.rbuf[run..], self.dir, &shared.server_scan);
                run += len;
                self.msgs += count;
            }
            let frame = match scan(&self.rbuf[run..], self.dir, &shared.server_scan) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.shed_ignored_line(run, shared.server_scan.max_control_line);
                    break;
                }
                Err(e) => {
                    self.flush_run(&mut run);
                    tracing::warn!(error = %e, "upstream protocol violation");
                    shared.close(CloseReason::UpstreamProtocolViolation);
                    self.stopped = true;
                    break;
                }
            };
            self.msgs += u64::from(frame.is_message());
            match frame.verb {
                Verb::Pong => {
                    if let Some(barrier) = shared.pong_received() {
                        // The edge's own PING: release what it held, hide the PONG (which
                        // is not the client's traffic, so it is not counted either).
                        self.hide_frame(&mut run, frame.len);
                        self.push(barrier.answers.freeze());
                        shared.resume_deferred |= barrier.resume;
                        shared.oks_to_hide += barrier.hide_oks;
                        if !barrier.ended.is_empty() {
                            shared.chain.on_unsubscribed(&barrier.ended);
                        }
                        if let Some(reason) = barrier.close {
                            shared.close(reason);
                            self.stopped = true;
                        }
                        continue;
                    }
                    if shared.pongs_seen > shared.pings_sent {
                        // A PONG no PING asked for: the upstream's violation (closing the
                        // session, see `pong_received`). What came before it goes; neither it
                        // nor what follows it does, as after any other violation.
                        self.flush_run(&mut run);
                        self.stopped = true;
                        break;
                    }
                    let early = shared.early_pings > 0;
                    shared.early_pings = shared.early_pings.saturating_sub(1);
                    if !shared.client_ponged && !early {
                        shared.client_ponged = true;
                        if std::mem::take(&mut shared.lame_duck_pending) {
                            // Queued after this PONG: the run it is in goes out first.
                            super::send_lame_duck(shared);
                        }
                        if let Some(info) = shared.held_info.take() {
                            // Right after this PONG, before what follows it in this read,
                            // which may be a newer INFO that this one must not overtake.
                            if shared
                                .chain
                                .interest()
                                .contains(frame.verb.op_kind(self.dir))
                            {
                                self.flush_run(&mut run);
                                let data = self.rbuf.split_to(frame.len).freeze();
                                self.filter_server_frame(data, &frame, shared);
                            } else {
                                run += frame.len;
                                self.flush_run(&mut run);
                            }
                            self.push_encoded(|buf| encode_server_op(&ServerOp::Info(info), buf));
                            continue;
                        }
                    }
                }
                Verb::Info => {
                    self.flush_run(&mut run);
                    let data = self.rbuf.split_to(frame.len).freeze();
                    self.forward_info(&data, &frame, shared);
                    continue;
                }
                Verb::Err => {
                    // Forwarded as it is: the client gets the refusal and reconnects.
                    let err = &self.rbuf[run..run + frame.len];
                    shared.upstream_full |= crate::upstream::is_max_connections_error(err);
                    if let Some(frame) = crate::transport::ws::close_frame_after_error(err) {
                        shared.upstream_farewell = Some(frame);
                    }
                }
                Verb::Ok if shared.oks_to_hide > 0 => {
                    // The answer to one of the edge's own UNSUBs.
                    shared.oks_to_hide -= 1;
                    self.hide_frame(&mut run, frame.len);
                    continue;
                }
                Verb::Ping => shared.ping_to_client(),
                _ => {}
            }
            if !shared
                .chain
                .interest()
                .contains(frame.verb.op_kind(self.dir))
            {
                run += frame.len;
                continue;
            }
            self.flush_run(&mut run);
            let data = self.rbuf.split_to(frame.len).freeze();
            self.filter_server_frame(data, &frame, shared);
        }
        self.flush_run(&mut run);
        self.note_pending();
        self.release_scratch();
    }

    /// Drops an upstream frame the client must not see (the answer to something the edge
    /// sent, not the client), after the run before it; its bytes are not the client's
    /// traffic, so they are not counted.
    fn hide_frame(&mut self, run: &mut usize, len: usize) {
        self.flush_run(run);
        self.rbuf.advance(len);
        self.bytes = self.bytes.saturating_sub(len as u64);
    }

    /// Every INFO, the first and each async update, is rewritten for the client.
    fn forward_info(&mut self, data: &Bytes, frame: &Frame, shared: &mut Shared) {
        let Ok(ServerOp::Info(mut info)) = build_server_op(data, frame) else {
            tracing::warn!("upstream sent an INFO that does not parse");
            shared.close(CloseReason::UpstreamProtocolViolation);
            self.stopped = true;
            return;
        };
        rewrite_info(&mut info, shared);
        if !shared.client_ponged {
            let held = shared.held_info.take();
            shared.held_info = Some(super::info::replace_held_info(held, info));
            return;
        }
        self.push_encoded(|buf| encode_server_op(&ServerOp::Info(info), buf));
    }

    fn filter_server_frame(&mut self, data: Bytes, frame: &Frame, shared: &mut Shared) {
        let mut op = match build_server_op(&data, frame) {
            Ok(op) => op,
            Err(e) => {
                tracing::warn!(error = %e, "upstream protocol violation");
                shared.close(CloseReason::UpstreamProtocolViolation);
                self.stopped = true;
                return;
            }
        };
        debug_assert!(shared.chain.interest().contains(server_op_kind(&op)));
        let started = shared.filter_time.start();
        let verdict = shared.chain.on_server_op(&mut op, &mut shared.ctx);
        shared.filter_time.finish(started);
        match verdict {
            Verdict::Forward => self.push(data),
            Verdict::Changed => {
                let payload = self.push_head(|buf| encode_server_head(&op, buf));
                self.push_payload(&data, payload);
            }
            Verdict::Drop => {}
            // Nothing on this side waits for the upstream: a deferred server op goes on. No
            // filter offloads a server op (nothing would hold the upstream's stream for it).
            Verdict::Defer | Verdict::Offload(_) => self.push(data),
            Verdict::Answer(answer) => self.push_encoded(|buf| encode_server_op(&answer, buf)),
            Verdict::Close { reason, error } => {
                if let Some(text) = error {
                    self.push_encoded(|buf| {
                        encode_server_op(&ServerOp::Err(text.to_string()), buf)
                    });
                }
                shared.close(reason);
                self.stopped = true;
            }
        }
    }
}

/// `payload` and the CRLF after it, as one slice of `frame`, when the payload is still the
/// slice of the frame it was read as (a filter that replaced it made a new buffer).
fn slice_with_end(frame: &Bytes, payload: &Bytes) -> Option<Bytes> {
    let start = (payload.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
    let end = start
        .checked_add(payload.len())?
        .checked_add(PAYLOAD_END.len())?;
    (end <= frame.len() && frame[end - PAYLOAD_END.len()..end] == *PAYLOAD_END)
        .then(|| frame.slice(start..end))
}

/// Applies the listener's addresses and the filters' view to an upstream INFO, and takes
/// note of the upstream's limits.
pub fn rewrite_info(info: &mut nats_edge_filters::Info, shared: &mut Shared) {
    shared.set_upstream_max_payload(info.max_payload);
    if let Some(version) = info.extra.get("version").and_then(|v| v.as_str()) {
        shared.upstream_drops_subs = ServerVersion::parse(version).drops_subs_on_reconnect();
    }
    shared.ctx.upstream_headers = info.headers.unwrap_or(false);
    // The nonce of the first INFO is the one nats-server checks signatures against.
    if shared.ctx.upstream_nonce.is_none() {
        shared.ctx.upstream_nonce.clone_from(&info.nonce);
    }
    // Before the filters: in edge mode they say what the edge asks of the client.
    shared.auth_timer |= info.auth_required == Some(true);
    shared.info_rewrite.apply(info, shared.ctx.conn.client_addr);
    shared.chain.on_info(info, &shared.ctx);
    shared.client_must_connect = info.auth_required == Some(true);
    shared.client_max_payload = info.max_payload;
    // Kept as its JSON, for a lame-duck INFO later: one allocation of the encoded size,
    // where a clone of the struct is several, and about twice the memory per session.
    shared.last_info = serde_json::to_vec(&*info)
        .ok()
        .map(|json| bytes::Bytes::from(json.into_boxed_slice()));
}

/// Wakes the task once its worker has run the other ready tasks and polled for I/O, as
/// `tokio::task::yield_now` does. A plain wake-up puts it straight back in the run queue,
/// and a worker whose queue never empties polls for I/O only every few dozen tasks.
fn wake_after_other_sessions(cx: &mut Context<'_>) {
    let mut yielding = std::pin::pin!(tokio::task::yield_now());
    // Its first poll hands the waker to the worker and is Pending, as this poll is.
    let _ = std::future::Future::poll(yielding.as_mut(), cx);
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Yields its chunks in order, then fails with a reset.
    struct ThenReset(VecDeque<&'static [u8]>);

    impl AsyncRead for ThenReset {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(match self.0.pop_front() {
                Some(chunk) => {
                    buf.put_slice(chunk);
                    Ok(())
                }
                None => Err(io::ErrorKind::ConnectionReset.into()),
            })
        }
    }

    /// What was read before a read fails is written before the failure is reported.
    #[tokio::test]
    async fn a_failed_read_still_delivers_what_came_before_it() {
        let mut shared = Shared::for_tests();
        let mut forwarder = Forwarder::new(Direction::ServerToClient, BytesMut::new());
        let mut reader = ThenReset(VecDeque::from([&b"MSG a 1 2\r\nhi\r\nPI"[..], b"NG\r\n"]));
        let mut written: Vec<u8> = Vec::new();
        let ended =
            std::future::poll_fn(|cx| forwarder.poll(cx, &mut reader, &mut written, &mut shared))
                .await;
        assert!(
            matches!(ended, Err(IoFailure::Read(e)) if e.kind() == io::ErrorKind::ConnectionReset)
        );
        assert_eq!(written, b"MSG a 1 2\r\nhi\r\nPING\r\n");
    }

    /// Once the session is ending, the client gets what is queued for it (the closing
    /// `-ERR`), and none of the upstream's messages that come after.
    #[tokio::test]
    async fn an_ending_session_reads_no_more_from_the_upstream() {
        let mut shared = Shared::for_tests();
        shared.send_now(&ServerOp::Err("Authorization Violation".into()));
        shared.close(CloseReason::AuthorizationViolation);
        let mut forwarder = Forwarder::new(Direction::ServerToClient, BytesMut::new());
        let mut reader = ThenReset(VecDeque::from([&b"MSG a 1 2\r\nhi\r\n"[..]]));
        let mut written: Vec<u8> = Vec::new();
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(forwarder.poll(cx, &mut reader, &mut written, &mut shared))
        })
        .await;
        assert!(polled.is_pending());
        assert_eq!(written, b"-ERR 'Authorization Violation'\r\n");
        assert_eq!(reader.0.len(), 1, "the upstream's message stays unread");
    }

    /// An INFO held until the client's first PONG goes right after that PONG, before a
    /// newer INFO that came in the same read: the client ends with the newest.
    #[tokio::test]
    async fn a_held_info_goes_right_after_the_first_pong() {
        let mut shared = Shared::for_tests();
        let held: nats_edge_filters::Info = serde_json::from_str(r#"{"server_id":"old"}"#).unwrap();
        shared.held_info = Some(Box::new(held));
        // The PONG answers a PING the client sent.
        shared.pings_sent = 1;
        let mut forwarder = Forwarder::new(Direction::ServerToClient, BytesMut::new());
        let mut reader = ThenReset(VecDeque::from([
            &b"PONG\r\nINFO {\"server_id\":\"new\"}\r\n"[..],
        ]));
        let mut written: Vec<u8> = Vec::new();
        let _ =
            std::future::poll_fn(|cx| forwarder.poll(cx, &mut reader, &mut written, &mut shared))
                .await;
        let text = String::from_utf8(written).unwrap();
        let (old, new) = (text.find("\"old\""), text.find("\"new\""));
        assert!(text.starts_with("PONG\r\nINFO "), "{text}");
        assert!(old.is_some() && old < new, "{text}");
    }

    /// The PONG to a PING the client sent before any CONNECT went upstream is not the first
    /// PONG nats-server counts: a held INFO waits for the next one.
    #[tokio::test]
    async fn a_pong_to_a_ping_before_connect_releases_no_info() {
        let mut shared = Shared::for_tests();
        let held: nats_edge_filters::Info = serde_json::from_str(r#"{"server_id":"x"}"#).unwrap();
        shared.held_info = Some(Box::new(held));
        shared.pings_sent = 2;
        shared.early_pings = 1;
        let mut forwarder = Forwarder::new(Direction::ServerToClient, BytesMut::new());
        let mut reader = ThenReset(VecDeque::from([&b"PONG\r\n"[..], &b"PONG\r\n"[..]]));
        let mut written: Vec<u8> = Vec::new();
        let _ =
            std::future::poll_fn(|cx| forwarder.poll(cx, &mut reader, &mut written, &mut shared))
                .await;
        let text = String::from_utf8(written).unwrap();
        assert!(text.starts_with("PONG\r\nPONG\r\nINFO "), "{text}");
        assert_eq!(shared.early_pings, 0);
    }

    /// A PONG no PING asked for ends the session as the upstream's violation: what came
    /// before it reaches the client, neither it nor what follows it does.
    #[tokio::test]
    async fn an_unasked_pong_is_not_passed_on() {
        let mut shared = Shared::for_tests();
        shared.client_ponged = true;
        let mut forwarder = Forwarder::new(Direction::ServerToClient, BytesMut::new());
        let mut reader = ThenReset(VecDeque::from([
            &b"MSG a 1 1\r\nx\r\nPONG\r\nMSG b 1 1\r\ny\r\n"[..],
        ]));
        let mut written: Vec<u8> = Vec::new();
        // Polled once: stopped, it waits for the session to end it.
        std::future::poll_fn(|cx| {
            let _ = forwarder.poll(cx, &mut reader, &mut written, &mut shared);
            std::task::Poll::Ready(())
        })
        .await;
        assert_eq!(String::from_utf8(written).unwrap(), "MSG a 1 1\r\nx\r\n");
        assert_eq!(shared.closing, Some(CloseReason::UpstreamProtocolViolation));
    }
}
