//! [`WsStream`]: a WebSocket, after the upgrade, as the byte stream the session reads and
//! writes (RFC 6455 framing, the server side).
//!
//! The NATS protocol travels in binary frames both ways (text frames from clients are
//! accepted too, read as bytes). Every write of the session becomes one frame; a vectored
//! write (the forwarder's batch of queued slices) becomes one frame holding all of its
//! slices, written with its header in one `writev`, never copied. Client frames are unmasked
//! in the read buffer and copied out once, or read straight into the caller's buffer and
//! unmasked there when a frame fills it. Pings, pongs and close frames are handled here and
//! go out between data frames, never inside one.
//!
//! Compressed frames (permessage-deflate) are read and written by the parts of `WsStream`
//! in `deflate.rs`; this file decides when they apply.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use nats_edge_filters::CloseReason;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::deflate::{spare_zout, Inflated, Inflating, COMPRESS_THRESHOLD};

/// The first read buffer of a WebSocket, and the largest read.
const INITIAL_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Room in the caller's buffer from which a frame's payload is read into it directly.
const DIRECT_READ: usize = 4 * 1024;
/// The longest data frame nats.go reads whatever the max_payload (`wsMaxMsgPayloadLimit`),
/// and the multiple of the max_payload its INFO gave it that a frame may be below that.
const MAX_FRAME: usize = 64 << 20;
const MAX_FRAME_PER_MAX_PAYLOAD: usize = 8;
/// The largest frame header: 2 bytes, a 64-bit length, a mask.
pub(super) const MAX_HEADER: usize = 14;

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 section 7.4.1).
pub(super) const CLOSE_NORMAL: u16 = 1000;
pub(super) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub(super) const CLOSE_INVALID_DATA: u16 = 1007;
pub(super) const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY_VIOLATION: u16 = 1008;
const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// The close frame nats-server sends a WebSocket client it refuses past `max_connections`.
pub const MAX_CONNECTIONS_CLOSE: Option<(u16, &str)> =
    Some((CLOSE_POLICY_VIOLATION, "Maximum Connections Exceeded"));

/// The close frame nats-server sends a WebSocket client after `err_line`, an `-ERR` line
/// from the upstream (`-ERR '<text>'`, any case), when that error is one nats-server always
/// closes the connection after (`authViolation`, `maxPayloadViolation`, the stale-connection
/// check, ...): the status and `ClosedState` text it would have sent the client directly.
/// `None` for errors that leave the connection open (permission violations, an invalid
/// subject, `Maximum Subscriptions Exceeded`) and for texts it does not know.
pub fn close_frame_after_error(err_line: &[u8]) -> Option<(u16, &'static str)> {
    const PREFIX: &[u8] = b"-ERR '";
    let text = err_line
        .get(..PREFIX.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(PREFIX))
        .and_then(|_| {
            let rest = &err_line[PREFIX.len()..];
            rest.iter()
                .position(|&b| b == b'\'')
                .map(|end| &rest[..end])
        })?;
    // nats-server's texts: its `-ERR` line, then the status and text of its close frame.
    const CLOSING_ERRORS: &[(&str, u16, &str)] = &[
        // Sent whatever the auth error was (expired, proxy required, ...): the commonest.
        (
            "Authorization Violation",
            CLOSE_POLICY_VIOLATION,
            "Authentication Failure",
        ),
        (
            "Authentication Timeout",
            CLOSE_POLICY_VIOLATION,
            "Authentication Timeout",
        ),
        (
            "User Authentication Expired",
            CLOSE_POLICY_VIOLATION,
            "Authentication Expired",
        ),
        (
            "Account Authentication Expired",
            CLOSE_POLICY_VIOLATION,
            "Authentication Expired",
        ),
        (
            "User Authentication Revoked",
            CLOSE_POLICY_VIOLATION,
            "Credentials Revoked",
        ),
        (
            "maximum account active connections exceeded",
            CLOSE_POLICY_VIOLATION,
            "Maximum Account Connections Exceeded",
        ),
        (
            "maximum connections exceeded",
            CLOSE_POLICY_VIOLATION,
            "Maximum Connections Exceeded",
        ),
        (
            "maximum control line exceeded",
            CLOSE_POLICY_VIOLATION,
            "Maximum Control Line Exceeded",
        ),
        (
            "Maximum Payload Violation",
            CLOSE_TOO_BIG,
            "Maximum Message Payload Exceeded",
        ),
        ("Stale Connection", CLOSE_GOING_AWAY, "Stale Connection"),
        (
            "Unknown Protocol Operation",
            CLOSE_PROTOCOL_ERROR,
            "Protocol Violation",
        ),
        (
            "invalid client protocol",
            CLOSE_PROTOCOL_ERROR,
            "Bad Client Protocol Version",
        ),
        (
            "no responders requires headers support",
            CLOSE_INTERNAL_ERROR,
            "No Responders Requires Headers",
        ),
    ];
    CLOSING_ERRORS
        .iter()
        .find(|(error, _, _)| text.eq_ignore_ascii_case(error.as_bytes()))
        .map(|&(_, status, reason)| (status, reason))
}

/// The close frame nats-server sends a WebSocket client it closes for `reason`
/// (`wsEnqueueCloseMessage`): the status for that kind of close and the reason's text
/// (nats-server's `ClosedState` text where it has one). What ends at the upstream goes away
/// as a server shutting down: the client should reconnect. `None`: no close frame, as
/// nats-server sends none to a client it gave up writing to (a slow consumer, a broken
/// connection).
pub fn close_frame_for(reason: CloseReason) -> Option<(u16, &'static str)> {
    Some(match reason {
        CloseReason::SlowConsumer | CloseReason::ClientIoError => return None,
        // nats-server closes a client whose user a reload removed as `ClientClosed`.
        CloseReason::ClientClosed | CloseReason::UserChanged => (CLOSE_NORMAL, "Client Closed"),
        CloseReason::HandshakeTimeout => (CLOSE_POLICY_VIOLATION, "Authentication Timeout"),
        CloseReason::AuthorizationViolation => (CLOSE_POLICY_VIOLATION, "Authentication Failure"),
        CloseReason::MaxControlLineExceeded => {
            (CLOSE_POLICY_VIOLATION, "Maximum Control Line Exceeded")
        }
        CloseReason::Policy => (CLOSE_POLICY_VIOLATION, "Policy Violation"),
        CloseReason::ProtocolViolation => (CLOSE_PROTOCOL_ERROR, "Protocol Violation"),
        CloseReason::MaxPayloadExceeded => (CLOSE_TOO_BIG, "Maximum Message Payload Exceeded"),
        CloseReason::Shutdown
        | CloseReason::UpstreamClosed
        | CloseReason::UpstreamIoError
        | CloseReason::UpstreamUnavailable => (CLOSE_GOING_AWAY, "Server Shutdown"),
        CloseReason::UpstreamProtocolViolation => (CLOSE_INTERNAL_ERROR, "Internal Server Error"),
    })
}

/// Why a client's frames were refused. The texts of the protocol errors are nats-server's:
/// they are also the text of the close frame the client gets.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("mask bit missing")]
    Unmasked,
    #[error("RSV2 and RSV3 must be clear")]
    ReservedBits,
    #[error("compressed frame received without negotiated permessage-deflate")]
    CompressedWithoutDeflate,
    #[error("control frame must not be compressed")]
    CompressedControl,
    #[error("a compressed message does not inflate")]
    Inflate,
    #[error("unknown opcode {0}")]
    Opcode(u8),
    #[error("control frame length bigger than maximum allowed of 125 bytes")]
    ControlTooLong,
    #[error("control frame does not have final bit set")]
    ControlNotFinal,
    /// A continuation outside a fragmented message, or one with the compressed bit.
    #[error("invalid continuation frame")]
    BadContinuation,
    #[error("new message started before final frame for previous message was received")]
    Interleaved,
    #[error("invalid 64-bit payload length")]
    BadLength,
    #[error("close frame payload cannot be 1 byte")]
    OneByteClose,
    #[error("invalid close status code {0}")]
    BadCloseStatus(u16),
    #[error("a message over ws.max_message_size ({0} bytes)")]
    TooBig(u64),
    #[error("the connection closed inside a frame")]
    Truncated,
}

impl FrameError {
    /// The close frame the client gets: 1002 with nats-server's text for a protocol error
    /// (nats-server queues the same frame, though it may close its socket before the frame
    /// goes out); 1009 for a message over the limit and 1007 for one that does not inflate,
    /// where nats-server closes without a close frame: the edge tells the client why.
    fn close_frame(&self) -> (u16, String) {
        match self {
            FrameError::TooBig(_) => (CLOSE_TOO_BIG, "Maximum Message Payload Exceeded".into()),
            FrameError::Inflate => (CLOSE_INVALID_DATA, self.to_string()),
            _ => (CLOSE_PROTOCOL_ERROR, self.to_string()),
        }
    }
}

/// The client data frame being read.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFrame {
    /// Payload bytes not yet read.
    pub(super) left: u64,
    pub(super) mask: [u8; 4],
    /// Payload bytes already unmasked, modulo 4: where the mask continues.
    pub(super) phase: usize,
}

/// A WebSocket as a byte stream (the server side, after the upgrade).
///
/// Reading: the payloads of the client's data frames (binary, text, continuations) in order,
/// unmasked in the read buffer and copied out once. Pings are answered with pongs; a close
/// frame is answered and reads as the end of the stream; a protocol violation is answered
/// with a close frame (1002, or 1009 for a message over the size limit) and fails the read.
///
/// Writing: every write is one binary frame, its header and payload sent together; a
/// vectored write (the forwarder's batch of queued slices) is one frame holding its slices
/// (up to the frame limit, [`WsStream::hold_frames_to`]), written with one `writev` and
/// never copied. Control frames (pongs, pings, close)
/// go out between data frames, never inside one.
pub struct WsStream<S> {
    io: S,
    pub(super) rbuf: BytesMut,
    read_size: usize,
    pub(super) frame: Option<InFrame>,
    /// Inside a fragmented message: the next data frame must be a continuation.
    pub(super) fragmented: bool,
    /// Payload bytes of the message being read, against `max_message`.
    message_len: u64,
    pub(super) max_message: u64,
    read_closed: bool,
    /// Whole control frames waiting for a gap between data frames: at most a pong, a ping
    /// and the close, so a client cannot grow it.
    control: BytesMut,
    /// The payload of the pong owed for the client's latest ping, not yet in `control`. A
    /// ping that comes before it has gone out replaces it (RFC 6455 section 5.5.3 lets a
    /// pong answer only the latest ping), so a client that floods pings and never reads
    /// costs one pong, not one per ping.
    pong: Option<Vec<u8>>,
    close_queued: bool,
    /// The close frame the edge sends when it ends the connection: the status and text
    /// nats-server sends for the session's close reason ([`close_frame_for`]); `None`: none.
    closing_with: Option<(u16, &'static str)>,
    /// The longest data frame the client reads ([`WsStream::hold_frames_to`]).
    max_frame: usize,
    /// The header of the data frame being written, and how much of it has gone out.
    header: [u8; 10],
    header_len: usize,
    header_sent: usize,
    /// Payload bytes of the data frame being written that have not gone out yet.
    frame_left: usize,
    ping_every: Option<Duration>,
    ping_timer: Option<Pin<Box<Sleep>>>,
    /// permessage-deflate was negotiated.
    deflate: bool,
    pub(super) inflating: Option<Box<Inflating>>,
    /// Bytes at the front of `rbuf`, unmasked, of the compressed frame being read.
    pub(super) zin: usize,
    /// A compressed frame (header included, from `zsent`) waiting to go out.
    pub(super) zout: Vec<u8>,
    pub(super) zsent: usize,
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `leftover`: bytes the client sent after its upgrade request.
    pub fn new(
        io: S,
        leftover: BytesMut,
        max_message: usize,
        ping_every: Option<Duration>,
    ) -> Self {
        WsStream {
            io,
            rbuf: leftover,
            read_size: INITIAL_READ,
            frame: None,
            fragmented: false,
            message_len: 0,
            max_message: max_message as u64,
            read_closed: false,
            control: BytesMut::new(),
            pong: None,
            close_queued: false,
            closing_with: Some((CLOSE_NORMAL, "")),
            max_frame: MAX_FRAME,
            header: [0; 10],
            header_len: 0,
            header_sent: 0,
            frame_left: 0,
            ping_every,
            ping_timer: ping_every.map(|d| Box::pin(tokio::time::sleep(d))),
            deflate: false,
            inflating: None,
            zin: 0,
            zout: Vec::new(),
            zsent: 0,
        }
    }

    /// Holds the data frames the edge sends to what nats.go reads: since 2026 it refuses
    /// one over 8 times the `max_payload` of the INFO it was given ("websocket frame too
    /// large"), at most 64 MiB, as nats-server holds client frames. A frame holds the
    /// batch of messages queued for the client, up to some 256 KiB, so a small
    /// `max_payload` (32 KiB or less) would otherwise disconnect such a client in a burst.
    ///
    /// The limit only ever goes down: nats.go may read the header of a frame sent after
    /// an INFO that raised `max_payload` before it reads that INFO.
    pub fn hold_frames_to(&mut self, max_payload: Option<i64>) {
        let limit = max_payload
            .and_then(|p| usize::try_from(p).ok())
            .filter(|&p| p > 0)
            .map_or(MAX_FRAME, |p| {
                p.saturating_mul(MAX_FRAME_PER_MAX_PAYLOAD).min(MAX_FRAME)
            });
        self.max_frame = self.max_frame.min(limit);
    }

    /// The close frame the shutdown sends, unless a close went out already (the client's
    /// answered, a framing error's).
    pub fn close_with(&mut self, frame: Option<(u16, &'static str)>) {
        self.closing_with = frame;
    }

    /// permessage-deflate was negotiated: compressed messages are accepted and frames sent
    /// compressed when that makes them smaller.
    pub fn enable_deflate(&mut self) {
        self.deflate = true;
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Bytes already read from the connection and not yet taken as frames (what the client
    /// sent with its upgrade request).
    pub fn has_buffered_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Between two data frames: a control frame may go out.
    fn between_frames(&self) -> bool {
        self.no_plain_frame() && self.zsent == self.zout.len()
    }

    /// Whether the read buffer has grown past its initial size under load.
    pub fn is_grown(&self) -> bool {
        self.rbuf.capacity() > INITIAL_READ
    }

    /// Gives back a grown read buffer that holds nothing. The session calls this when the
    /// connection has been quiet for a while (as it shrinks its own buffers), not on every
    /// read that finds nothing: that would free and allocate the buffer at each wake-up.
    pub fn shrink_if_empty(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > INITIAL_READ {
            self.rbuf = BytesMut::new();
            self.read_size = INITIAL_READ;
        }
    }

    /// No uncompressed data frame is being written.
    fn no_plain_frame(&self) -> bool {
        self.frame_left == 0 && self.header_sent == self.header_len
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        if self.close_queued {
            return;
        }
        if opcode == OP_CLOSE {
            // The pong owed goes out before the close; nothing goes after it.
            if let Some(pong) = self.pong.take() {
                self.push_control(OP_PONG, &pong);
            }
        }
        self.close_queued = opcode == OP_CLOSE;
        self.push_control(opcode, payload);
    }

    fn push_control(&mut self, opcode: u8, payload: &[u8]) {
        self.control
            .extend_from_slice(&[0x80 | opcode, payload.len() as u8]);
        self.control.extend_from_slice(payload);
    }

    /// Owes a pong for the client's ping, replacing one owed for an earlier ping.
    fn owe_pong(&mut self, payload: &[u8]) {
        let pong = self.pong.get_or_insert_with(Vec::new);
        pong.clear();
        pong.extend_from_slice(payload);
    }

    /// The owed pong joins the control frames once no control frame is left to write, so
    /// at most one pong is ever queued.
    fn release_pong(&mut self) {
        if self.control.is_empty() {
            if let Some(pong) = self.pong.take() {
                self.queue_control(OP_PONG, &pong);
            }
        }
    }

    /// A control frame is waiting to go out.
    fn control_waiting(&self) -> bool {
        !self.control.is_empty() || self.pong.is_some()
    }

    /// Writes queued control frames while no data frame is in progress. `Ready(Ok)` once
    /// none is left (or a data frame is in progress).
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A compressed frame is whole in `zout`: it goes out first.
        while self.zsent < self.zout.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.zout[self.zsent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.zsent += n;
        }
        if !self.zout.is_empty() {
            self.zsent = 0;
            spare_zout(std::mem::take(&mut self.zout));
        }
        loop {
            self.release_pong();
            if self.control.is_empty() || !self.between_frames() {
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.control))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.control.split_to(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends a ping when one is due. Driven from the read side, which the session polls
    /// whenever it waits for the client.
    fn poll_ping(&mut self, cx: &mut Context<'_>) {
        let (Some(timer), Some(every)) = (self.ping_timer.as_mut(), self.ping_every) else {
            return;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return;
        }
        timer.as_mut().reset(Instant::now() + every);
        let _ = timer.as_mut().poll(cx);
        // One ping at a time: if the last one has not gone out yet, this one is skipped.
        if !self.control_waiting() {
            self.queue_control(OP_PING, &[]);
        }
    }

    /// Parses the next frame header in the read buffer. `Ok(false)`: more bytes are needed.
    /// Control frames are handled here whole.
    fn next_frame(&mut self) -> Result<bool, FrameError> {
        let buf = &self.rbuf[..];
        if buf.len() < 2 {
            return Ok(false);
        }
        let (b0, b1) = (buf[0], buf[1]);
        // RSV1 marks a compressed message when permessage-deflate was negotiated.
        let compressed = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(FrameError::ReservedBits);
        }
        if compressed && !self.deflate {
            return Err(FrameError::CompressedWithoutDeflate);
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let (len, at) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return Ok(false),
            n => (u64::from(n), 2),
        };
        if buf.len() < at + 4 {
            return Ok(false);
        }
        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        let header = at + 4;
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                // In the 7-bit field, as nats-server checks it: a short length written in
                // the 16- or 64-bit form breaks the minimal-encoding rule (RFC 6455 5.2).
                if at != 2 {
                    return Err(FrameError::ControlTooLong);
                }
                if !fin {
                    return Err(FrameError::ControlNotFinal);
                }
                if compressed {
                    return Err(FrameError::CompressedControl);
                }
                let len = len as usize;
                if buf.len() < header + len {
                    return Ok(false);
                }
                let mut frame = self.rbuf.split_to(header + len);
                let payload = &mut frame[header..];
                unmask(payload, mask, 0);
                match opcode {
                    OP_PING => self.owe_pong(payload),
                    OP_CLOSE => {
                        let reply = close_reply(payload)?;
                        self.queue_control(OP_CLOSE, &reply);
                        self.read_closed = true;
                    }
                    _ => {}
                }
                Ok(true)
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                match (opcode == OP_CONTINUATION, self.fragmented) {
                    (true, false) => return Err(FrameError::BadContinuation),
                    (false, true) => return Err(FrameError::Interleaved),
                    (false, false) => self.message_len = 0,
                    (true, true) => {}
                }
                // Only a message's first frame says whether it is compressed.
                if compressed && opcode == OP_CONTINUATION {
                    return Err(FrameError::BadContinuation);
                }
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                self.message_len = self.message_len.saturating_add(len);
                if self.message_len > self.max_message {
                    return Err(FrameError::TooBig(self.max_message));
                }
                self.fragmented = !fin;
                if compressed {
                    self.inflating = Some(Box::new(Inflating::new()));
                }
                let _ = self.rbuf.split_to(header);
                self.frame = Some(InFrame {
                    left: len,
                    mask,
                    phase: 0,
                });
                Ok(true)
            }
            other => Err(FrameError::Opcode(other)),
        }
    }

    /// Refuses the client's frames: a close frame with the reason's code is sent if it can
    /// be at once, and the read fails.
    fn refuse(&mut self, cx: &mut Context<'_>, e: FrameError) -> io::Error {
        let (code, text) = e.close_frame();
        self.queue_control(OP_CLOSE, &close_payload(code, &text));
        self.read_closed = true;
        let _ = self.poll_control(cx);
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < MAX_HEADER {
            self.rbuf.reserve(self.read_size.max(MAX_HEADER));
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Ready(Ok(n)) => {
                if n == spare && self.read_size < MAX_READ {
                    self.read_size *= 2;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => Poll::Pending,
            // Over TLS (wss): a peer that ended TCP without a close_notify has closed, as Go's
            // TLS reads it (see `transport::tls_eof_as_close`); the framing above still
            // tells a clean end between frames from one cut off inside a frame.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(0)),
            other => other,
        }
    }
}

/// The payload of the close frame that answers a client's, as nats-server answers it: the
/// client's status and reason echoed (an empty close gets an empty one), and 1007 for a
/// reason that is not UTF-8; either way the client has closed. A one-byte body and a status
/// RFC 6455 section 7.4 forbids on the wire (below 1000, 1004 to 1006, 1015, 1016 to 2999,
/// 5000 and up) are protocol errors.
fn close_reply(payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, FrameError> {
    let (code, reason) = match payload {
        [] => return Ok(payload.into()),
        [_] => return Err(FrameError::OneByteClose),
        [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), reason),
    };
    let assigned = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !assigned {
        return Err(FrameError::BadCloseStatus(code));
    }
    if std::str::from_utf8(reason).is_err() {
        let text = "invalid utf8 body in close frame";
        return Ok(close_payload(CLOSE_INVALID_DATA, text).into());
    }
    Ok(payload.into())
}

/// A close frame's payload: `code`, then `text` cut to fit a control frame (with `...`
/// where it was cut, as nats-server marks it).
fn close_payload(code: u16, text: &str) -> Vec<u8> {
    const MAX_TEXT: usize = 125 - 2;
    let mut payload = Vec::with_capacity(2 + text.len().min(MAX_TEXT));
    payload.extend_from_slice(&code.to_be_bytes());
    if text.len() <= MAX_TEXT {
        payload.extend_from_slice(text.as_bytes());
    } else {
        let mut cut = MAX_TEXT - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(&text.as_bytes()[..cut]);
        payload.extend_from_slice(b"...");
    }
    payload
}

/// XORs `data` with `mask`, starting `phase` bytes into it; eight bytes at a time.
pub(super) fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let key: [u8; 4] = std::array::from_fn(|i| mask[(phase + i) % 4]);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A server frame header (unmasked) for a binary frame of `len` bytes.
pub(super) fn binary_header(len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | OP_BINARY;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_ping(cx);
        // Pongs, pings and the close reply go out whenever the write side is between frames.
        if let Poll::Ready(Err(e)) = this.poll_control(cx) {
            return Poll::Ready(Err(e));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.inflating.is_some() && (this.frame.is_some() || !this.fragmented) {
                match this.read_inflated(buf) {
                    Ok(Inflated::Produced) => return Poll::Ready(Ok(())),
                    Ok(Inflated::Next) => continue,
                    Ok(Inflated::NeedInput) => {}
                    Err(e) => return Poll::Ready(Err(this.refuse(cx, e))),
                }
            } else if let Some(frame) = this.frame.as_mut() {
                if frame.left == 0 {
                    this.frame = None;
                    continue;
                }
                if !this.rbuf.is_empty() {
                    let n = (this.rbuf.len() as u64)
                        .min(frame.left)
                        .min(buf.remaining() as u64) as usize;
                    let chunk = &mut this.rbuf[..n];
                    unmask(chunk, frame.mask, frame.phase);
                    buf.put_slice(chunk);
                    let _ = this.rbuf.split_to(n);
                    frame.left -= n as u64;
                    frame.phase = (frame.phase + n) % 4;
                    return Poll::Ready(Ok(()));
                }
                if buf.remaining() >= DIRECT_READ && frame.left >= buf.remaining() as u64 {
                    // The frame fills the caller's buffer: read the socket straight into it
                    // and unmask there, with no copy.
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                    let n = buf.filled().len() - before;
                    if n == 0 {
                        this.read_closed = true;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            FrameError::Truncated,
                        )));
                    }
                    unmask(&mut buf.filled_mut()[before..], frame.mask, frame.phase);
                    frame.left -= n as u64;
                    frame.phase = (frame.phase + n) % 4;
                    return Poll::Ready(Ok(()));
                }
            } else if this.read_closed {
                return Poll::Ready(Ok(()));
            } else {
                match this.next_frame() {
                    Ok(true) => {
                        // A pong or the close reply goes out now if it can.
                        if this.control_waiting() {
                            let _ = this.poll_control(cx);
                        }
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Poll::Ready(Err(this.refuse(cx, e))),
                }
            }
            let n = ready!(this.poll_fill(cx))?;
            if n == 0 {
                // The client went away without a close frame: the end of the stream between
                // frames, a broken one inside a frame.
                this.read_closed = true;
                if this.frame.is_some()
                    || this.fragmented
                    || this.inflating.is_some()
                    || !this.rbuf.is_empty()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        FrameError::Truncated,
                    )));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// The slices leave in one binary frame, in one `writev` with its header; past the frame
    /// limit, the write is partial and the rest is the next frame.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued && this.no_plain_frame() {
            // No data frame follows a close frame (RFC 6455 section 5.5.1): the client said
            // it is done, or the edge did. What the session still writes is dropped.
            ready!(this.poll_control(cx))?;
            return Poll::Ready(Ok(total));
        }
        if this.no_plain_frame() {
            // A compressed frame still going out leaves first, then control frames.
            ready!(this.poll_control(cx))?;
            // One frame takes what it may hold; the caller writes the rest as the next.
            let frame = total.min(this.max_frame);
            if this.deflate && frame > COMPRESS_THRESHOLD && this.compress_frame(bufs, frame) {
                // The whole frame is buffered: the caller's bytes are taken.
                if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(frame));
            }
            this.header_len = binary_header(frame, &mut this.header);
            this.header_sent = 0;
            this.frame_left = frame;
        }
        loop {
            // The rest of the header, then as much of the caller's bytes as the frame holds.
            let mut slices = [io::IoSlice::new(&[]); 65];
            let mut count = 0;
            if this.header_sent < this.header_len {
                slices[0] = io::IoSlice::new(&this.header[this.header_sent..this.header_len]);
                count = 1;
            }
            let mut room = this.frame_left;
            for b in bufs {
                if room == 0 || count == slices.len() {
                    break;
                }
                let take = b.len().min(room);
                if take > 0 {
                    slices[count] = io::IoSlice::new(&b[..take]);
                    count += 1;
                    room -= take;
                }
            }
            let polled = Pin::new(&mut this.io).poll_write_vectored(cx, &slices[..count]);
            let Poll::Ready(written) = polled else {
                if this.header_sent == 0 {
                    // None of the frame went out: it is forgotten, since the caller may come
                    // back with other bytes (fewer, or more) and its frame must hold them.
                    this.header_len = 0;
                    this.frame_left = 0;
                }
                return Poll::Pending;
            };
            let mut n = written?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let header_part = n.min(this.header_len - this.header_sent);
            this.header_sent += header_part;
            n -= header_part;
            if n > 0 {
                this.frame_left -= n;
                if this.between_frames() {
                    // Control frames waiting for this gap go out if they can.
                    if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_control(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// A close frame (1000, or what [`WsStream::close_with`] set) unless one went out
    /// already, then the socket's shutdown.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.header_sent == 0 && this.frame_left > 0 {
            // A data frame none of which went out (its write was pending): dropped, so the
            // close frame can still go.
            this.header_len = 0;
            this.frame_left = 0;
        }
        if let (true, Some((code, text))) = (this.no_plain_frame(), this.closing_with) {
            // A compressed frame still going out leaves before the close.
            ready!(this.poll_control(cx))?;
            this.queue_control(OP_CLOSE, &close_payload(code, text));
            ready!(this.poll_control(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn the_close_frame_after_an_upstream_error_is_nats_servers() {
        let after = |line: &[u8]| close_frame_after_error(line);
        assert_eq!(
            after(b"-ERR 'Authorization Violation'\r\n"),
            Some((CLOSE_POLICY_VIOLATION, "Authentication Failure"))
        );
        assert_eq!(
            after(b"-err 'Maximum Connections Exceeded'\r\n"),
            Some((CLOSE_POLICY_VIOLATION, "Maximum Connections Exceeded"))
        );
        assert_eq!(
            after(b"-ERR 'Maximum Payload Violation'\r\n"),
            Some((CLOSE_TOO_BIG, "Maximum Message Payload Exceeded"))
        );
        assert_eq!(
            after(b"-ERR 'Stale Connection'\r\n"),
            Some((CLOSE_GOING_AWAY, "Stale Connection"))
        );
        // Errors the connection outlives, a prefix of a known text, and lines cut short.
        assert_eq!(after(b"-ERR 'Maximum Subscriptions Exceeded'\r\n"), None);
        assert_eq!(
            after(b"-ERR 'Permissions Violation for Publish to \"a\"'\r\n"),
            None
        );
        assert_eq!(after(b"-ERR 'Authorization'\r\n"), None);
        assert_eq!(after(b"-ERR 'Authorization Violation"), None);
        assert_eq!(after(b"-ERR"), None);
    }
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    #[tokio::test]
    async fn one_frame_per_write_and_text_frames_read() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::AsyncWriteExt;

        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

        let slices = [
            io::IoSlice::new(b"MSG a 1 1\r\nx\r\n"),
            io::IoSlice::new(b"MSG b 1 1\r\ny\r\n"),
            io::IoSlice::new(b"PING\r\n"),
        ];
        let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &slices))
            .await
            .unwrap();
        assert_eq!(n, 34);
        server.write_all(b"PONG\r\n").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(
                b"MSG a 1 1\r\nx\r\nMSG b 1 1\r\ny\r\nPING\r\n"
            ))
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"PONG\r\n"))
        );

        // Text and binary frames from the client read as one byte stream.
        client.send(Message::text("CONNECT {}\r\n")).await.unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"PING\r\n")))
            .await
            .unwrap();
        client.close(None).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"CONNECT {}\r\nPING\r\n");
    }

    /// A write that was pending with none of its frame sent leaves no frame behind: the
    /// next write, with fewer bytes, goes out as a whole frame of its own size.
    #[tokio::test]
    async fn a_frame_none_of_which_went_out_is_forgotten() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(16);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        // 2 + 14 bytes fill the pipe.
        server.write_all(b"PING\r\nPING\r\nPI").await.unwrap();
        let pending = std::future::poll_fn(|cx| {
            Poll::Ready(
                Pin::new(&mut server)
                    .poll_write(cx, &[b'x'; 100])
                    .is_pending(),
            )
        })
        .await;
        assert!(pending);
        let mut first = [0u8; 16];
        client.read_exact(&mut first).await.unwrap();
        server.write_all(b"PONG\r\n").await.unwrap();
        let mut next = [0u8; 8];
        client.read_exact(&mut next).await.unwrap();
        assert_eq!(next, *b"\x82\x06PONG\r\n");
    }

    /// A read buffer grown by a burst is kept while the connection is busy (reads that find
    /// nothing do not free it, which would allocate it again at the next wake-up) and given
    /// back when the session finds it quiet.
    #[tokio::test]
    async fn a_grown_read_buffer_is_kept_until_the_session_shrinks_it() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(256 * 1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let frame = client_frame(true, OP_BINARY, &[b'x'; 60 * 1024], Some([1, 2, 3, 4]));
        for _ in 0..4 {
            client.write_all(&frame).await.unwrap();
        }
        // Small reads, so the frames are taken through the read buffer.
        let mut got = 0;
        let mut chunk = [0u8; 1024];
        while got < 4 * 60 * 1024 {
            got += server.read(&mut chunk).await.unwrap();
        }
        assert!(server.is_grown());
        let capacity = server.rbuf.capacity();
        for _ in 0..3 {
            let pending = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut chunk);
                Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut buf).is_pending())
            })
            .await;
            assert!(pending);
            assert_eq!(server.rbuf.capacity(), capacity);
        }
        server.shrink_if_empty();
        assert!(!server.is_grown());
    }

    /// A shutdown while a data frame's write is pending, none of it sent, still sends the
    /// close frame (with the status set for the session's end), and the frame is dropped.
    #[tokio::test]
    async fn a_pending_frame_does_not_hold_back_the_close() {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;

        let (server_io, client_io) = tokio::io::duplex(16);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        // 16 bytes fill the pipe: the next frame's write is pending with nothing sent.
        server.write_all(b"PING\r\nPING\r\nPI").await.unwrap();
        let pending = std::future::poll_fn(|cx| {
            Poll::Ready(
                Pin::new(&mut server)
                    .poll_write(cx, b"PONG\r\n")
                    .is_pending(),
            )
        })
        .await;
        assert!(pending);
        server.close_with(close_frame_for(CloseReason::Shutdown));
        let closing = tokio::spawn(async move { server.shutdown().await });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let mut last = None;
        while let Some(Ok(msg)) = client.next().await {
            last = Some(msg);
        }
        closing.await.unwrap().unwrap();
        let Some(Message::Close(Some(frame))) = last else {
            panic!("no close frame: {last:?}");
        };
        assert_eq!(u16::from(frame.code), 1001);
        assert_eq!(frame.reason.as_str(), "Server Shutdown");
    }

    /// Frames of every length class (7-bit, 16-bit, 64-bit) both ways through a pipe far
    /// smaller than a frame, so every write is partial, headers included.
    #[tokio::test]
    async fn large_frames_through_partial_writes() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::AsyncWriteExt;

        let (server_io, client_io) = tokio::io::duplex(100);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let sizes = [1usize, 125, 126, 65_535, 65_536, 200_000];
        let payload = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 253) as u8).collect() };

        let writer = tokio::spawn(async move {
            for n in sizes {
                server.write_all(&payload(n)).await.unwrap();
            }
            server.flush().await.unwrap();
            server
        });
        for n in sizes {
            let frame = client.next().await.unwrap().unwrap();
            assert_eq!(frame, Message::Binary(Bytes::from(payload(n))), "{n} bytes");
        }
        let mut server = writer.await.unwrap();

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sent = Vec::new();
        for n in sizes {
            client
                .send(Message::Binary(Bytes::from(payload(n))))
                .await
                .unwrap();
            sent.extend(payload(n));
        }
        client.close(None).await.unwrap();
        assert_eq!(reader.await.unwrap(), sent);
    }

    /// A raw client frame, masked with `mask` when there is one.
    pub(in crate::transport::ws) fn client_frame(
        fin: bool,
        opcode: u8,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            f.push(masked | payload.len() as u8);
        } else {
            f.push(masked | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mut body = payload.to_vec();
        if let Some(m) = mask {
            f.extend_from_slice(&m);
            unmask(&mut body, m, 0);
        }
        f.extend(body);
        f
    }

    /// A frame larger than the reader's buffer is read straight into it after its first
    /// bytes, across many reads, its mask continuing where the last read stopped.
    #[tokio::test]
    async fn a_large_frame_read_in_pieces() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(8 * 1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let payload: Vec<u8> = (0..100_003u32).map(|i| (i % 241) as u8).collect();
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        let mask = [0xa1, 0x07, 0x5c, 0xe3];
        frame.extend_from_slice(&mask);
        let mut masked = payload.clone();
        unmask(&mut masked, mask, 0);
        frame.extend(masked);
        let writer = tokio::spawn(async move {
            client.write_all(&frame).await.unwrap();
            client
        });
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024 + 3];
        while got.len() < payload.len() {
            let n = server.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, payload);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn fragments_pings_and_close() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(64 * 1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let m = Some([1, 2, 3, 4]);
        let mut bytes = client_frame(false, OP_TEXT, b"CONNECT ", m);
        bytes.extend(client_frame(true, OP_PING, b"hi", m));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"{}\r\n", m));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"PING\r\n", m));
        bytes.extend(client_frame(true, OP_CLOSE, b"\x03\xE9bye", m));
        client.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"CONNECT {}\r\nPING\r\n");
        // The pong carries the ping's payload; the close reply echoes the client's status
        // and reason, as nats-server's does.
        let mut back = [0u8; 11];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, *b"\x8A\x02hi\x88\x05\x03\xE9bye");
    }

    /// nats-server's answers to close frames that are not errors: an empty close gets an
    /// empty one, a reason that is not UTF-8 gets 1007 with its text; the read ends cleanly.
    #[tokio::test]
    async fn close_replies_as_nats_servers() {
        use tokio::io::AsyncWriteExt;

        let m = Some([5, 6, 7, 8]);
        let invalid_utf8: &[u8] = b"\x88\x22\x03\xEFinvalid utf8 body in close frame";
        let cases: [(&[u8], &[u8]); 2] = [(b"", b"\x88\x00"), (b"\x03\xE8\xff\xfe", invalid_utf8)];
        for (body, reply) in cases {
            let (server_io, mut client) = tokio::io::duplex(64 * 1024);
            let mut server = WsStream::new(server_io, BytesMut::new(), 1024, None);
            client
                .write_all(&client_frame(true, OP_CLOSE, body, m))
                .await
                .unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            let mut back = vec![0u8; reply.len()];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, reply);
        }
    }

    #[test]
    fn a_long_close_text_is_cut_as_nats_server_cuts_it() {
        let payload = close_payload(CLOSE_PROTOCOL_ERROR, &"é".repeat(100));
        assert!(payload.len() <= 125);
        assert!(payload.ends_with(b"..."));
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[tokio::test]
    async fn violations_close_with_their_code() {
        use tokio::io::AsyncWriteExt;

        let m = Some([9, 8, 7, 6]);
        let close = |body: &[u8]| client_frame(true, OP_CLOSE, body, m);
        let with_bits = |bits: u8, opcode: u8| {
            let mut f = client_frame(true, opcode, b"x", m);
            f[0] |= bits;
            f
        };
        let padded_ping = {
            let mut f = vec![0x80 | OP_PING, 0x80 | 126, 0, 1];
            f.extend_from_slice(&[9, 8, 7, 6, b'x' ^ 9]);
            f
        };
        let huge_length = {
            let mut f = vec![0x80 | OP_BINARY, 0x80 | 127];
            f.extend_from_slice(&(1u64 << 63).to_be_bytes());
            f.extend_from_slice(&[9, 8, 7, 6]);
            f
        };
        // With nats-server's close status and text for each.
        let cases: [(Vec<u8>, u16, &str); 15] = [
            (
                client_frame(true, OP_BINARY, b"PING\r\n", None),
                CLOSE_PROTOCOL_ERROR,
                "mask bit missing",
            ),
            (
                client_frame(true, 0x3, b"x", m),
                CLOSE_PROTOCOL_ERROR,
                "unknown opcode 3",
            ),
            (
                client_frame(true, OP_CONTINUATION, b"x", m),
                CLOSE_PROTOCOL_ERROR,
                "invalid continuation frame",
            ),
            (
                client_frame(false, OP_PING, b"x", m),
                CLOSE_PROTOCOL_ERROR,
                "control frame does not have final bit set",
            ),
            (
                with_bits(0x20, OP_BINARY),
                CLOSE_PROTOCOL_ERROR,
                "RSV2 and RSV3 must be clear",
            ),
            (
                with_bits(0x40, OP_BINARY),
                CLOSE_PROTOCOL_ERROR,
                "compressed frame received without negotiated permessage-deflate",
            ),
            (
                huge_length,
                CLOSE_PROTOCOL_ERROR,
                "invalid 64-bit payload length",
            ),
            (
                client_frame(true, OP_BINARY, &[b'x'; 2000], m),
                CLOSE_TOO_BIG,
                "Maximum Message Payload Exceeded",
            ),
            (
                client_frame(true, OP_PING, &[b'x'; 126], m),
                CLOSE_PROTOCOL_ERROR,
                "control frame length bigger than maximum allowed of 125 bytes",
            ),
            (
                padded_ping,
                CLOSE_PROTOCOL_ERROR,
                "control frame length bigger than maximum allowed of 125 bytes",
            ),
            // Close frames: a one-byte body, codes that must never be sent (1005, 1006,
            // 1015) or are unassigned.
            (
                close(&[3]),
                CLOSE_PROTOCOL_ERROR,
                "close frame payload cannot be 1 byte",
            ),
            (
                close(&1005u16.to_be_bytes()),
                CLOSE_PROTOCOL_ERROR,
                "invalid close status code 1005",
            ),
            (
                close(&1015u16.to_be_bytes()),
                CLOSE_PROTOCOL_ERROR,
                "invalid close status code 1015",
            ),
            (
                close(&999u16.to_be_bytes()),
                CLOSE_PROTOCOL_ERROR,
                "invalid close status code 999",
            ),
            (
                close(&2000u16.to_be_bytes()),
                CLOSE_PROTOCOL_ERROR,
                "invalid close status code 2000",
            ),
        ];
        for (bytes, code, text) in cases {
            let (server_io, mut client) = tokio::io::duplex(64 * 1024);
            let mut server = WsStream::new(server_io, BytesMut::new(), 1024, None);
            client.write_all(&bytes).await.unwrap();
            let mut got = Vec::new();
            // Bounded: a frame taken for a good one leaves the reader waiting for more.
            let read = server.read_to_end(&mut got);
            let err = tokio::time::timeout(std::time::Duration::from_secs(5), read)
                .await
                .unwrap_or_else(|_| panic!("not refused: {text}"))
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x88);
            let mut payload = vec![0u8; usize::from(head[1])];
            client.read_exact(&mut payload).await.unwrap();
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{err}");
            assert_eq!(&payload[2..], text.as_bytes());
        }
    }

    /// A client that floods pings and never reads its socket is owed one pong, the latest
    /// ping's, not one per ping: the queue of control frames stays bounded.
    #[tokio::test]
    async fn a_ping_flood_is_answered_by_the_latest_pong() {
        use tokio::io::AsyncWriteExt;

        // A pipe far smaller than the pongs: the server's writes block at once.
        let (server_io, mut client) = tokio::io::duplex(64);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let m = Some([5, 6, 7, 8]);
        let pings = 5_000u32;
        let writer = tokio::spawn(async move {
            for i in 0..pings {
                let mut payload = [b'p'; 125];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                client
                    .write_all(&client_frame(true, OP_PING, &payload, m))
                    .await
                    .unwrap();
            }
            client
                .write_all(&client_frame(true, OP_BINARY, b"PING\r\n", m))
                .await
                .unwrap();
            client
        });
        let mut data = [0u8; 6];
        server.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"PING\r\n");
        let mut client = writer.await.unwrap();
        // At most the pong partly written into the pipe and the one owed for the latest ping.
        let owed = server.pong.as_ref().map_or(0, Vec::len);
        assert!(
            server.control.len() <= 2 + 125 && owed <= 125,
            "{}",
            server.control.len()
        );

        // Once the client reads, the last pong it gets answers the last ping.
        let flusher = tokio::spawn(async move {
            server.flush().await.unwrap();
            server.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        flusher.await.unwrap();
        let mut pongs = Vec::new();
        let mut rest = &back[..];
        while let [op, len, tail @ ..] = rest {
            let (body, after) = tail.split_at(usize::from(*len));
            if *op == 0x80 | OP_PONG {
                pongs.push(body.to_vec());
            }
            rest = after;
        }
        assert!((1..=3).contains(&pongs.len()), "{} pongs", pongs.len());
        let last = pongs.last().unwrap();
        assert_eq!(last[..4], (pings - 1).to_be_bytes());
    }

    /// After the client's close frame, the close reply is the last frame: what the session
    /// writes later (answers the upstream still owed) is dropped, never framed.
    #[tokio::test]
    async fn nothing_follows_the_close_reply() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let close = client_frame(true, OP_CLOSE, &1000u16.to_be_bytes(), Some([1, 2, 3, 4]));
        client.write_all(&close).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.write_all(b"MSG late 1 2\r\nhi\r\n").await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, [0x88, 2, 0x03, 0xE8]);
    }

    /// A client gone between the frames of a fragmented message broke the stream.
    #[tokio::test]
    async fn the_end_inside_a_fragmented_message_is_truncation() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let first = client_frame(false, OP_BINARY, b"PUB a 1\r\n", Some([1, 1, 1, 1]));
        client.write_all(&first).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let err = server.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn pings_on_the_interval() {
        use futures_util::StreamExt;

        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut server = WsStream::new(
            server_io,
            BytesMut::new(),
            1 << 20,
            Some(Duration::from_secs(30)),
        );
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        // The session polls the read side while it waits for the client.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let _ = server.read(&mut buf).await;
        });
        for _ in 0..2 {
            let frame = client.next().await.unwrap().unwrap();
            assert!(matches!(frame, Message::Ping(_)), "{frame:?}");
        }
        reader.abort();
    }
}
