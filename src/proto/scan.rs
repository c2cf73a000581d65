//! Finding frames in a byte stream, nats-server's way, without copying.
//!
//! A frame is one op: its control line and, for PUB/HPUB/MSG/HMSG, its payload and the CRLF
//! after it. [`scan`] looks at the front of a buffer and answers `Ok(None)` when the frame is
//! not complete yet (a command may arrive split at any byte), or the frame's offsets. It never
//! looks at payload bytes, only at the two bytes after them.
//!
//! The rules follow nats-server's `server/parser.go`: verbs are case-insensitive; arguments
//! are separated by spaces or tabs; a control line ends at `\n` with an optional `\r`; a
//! payload must be followed by exactly `\r\n`; the control-line limit counts the arguments
//! after the verb and applies before the newline has arrived.

use memchr::memchr;
use nats_edge_filters::OpKind;

use super::ProtoError;

/// Which side a stream comes from. Each side may send a different set of verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes a client sends to the server.
    ClientToServer,
    /// Bytes a server sends to a client.
    ServerToClient,
}

/// A protocol verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Connect,
    Pub,
    Hpub,
    Sub,
    Unsub,
    Ping,
    Pong,
    Info,
    Ok,
    Err,
    Msg,
    Hmsg,
}

impl Verb {
    /// The kind of filter op this verb is when sent in `dir`; what filters declare interest in.
    pub fn op_kind(self, dir: Direction) -> OpKind {
        use Direction::{ClientToServer as C, ServerToClient as S};
        match (self, dir) {
            (Verb::Connect, _) => OpKind::Connect,
            (Verb::Pub | Verb::Hpub, _) => OpKind::Pub,
            (Verb::Sub, _) => OpKind::Sub,
            (Verb::Unsub, _) => OpKind::Unsub,
            (Verb::Msg | Verb::Hmsg, _) => OpKind::Msg,
            (Verb::Ping, C) => OpKind::ClientPing,
            (Verb::Ping, S) => OpKind::ServerPing,
            (Verb::Pong, C) => OpKind::ClientPong,
            (Verb::Pong, S) => OpKind::ServerPong,
            (Verb::Info | Verb::Ok | Verb::Err, C) => OpKind::ClientOther,
            (Verb::Info, S) => OpKind::ServerInfo,
            (Verb::Ok, S) => OpKind::ServerOk,
            (Verb::Err, S) => OpKind::ServerErr,
        }
    }
}

/// How verbs are spelt on the wire, and what follows them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Arguments, after at least one space or tab.
    Args,
    /// A JSON document, after optional whitespace.
    Json,
    /// Anything up to the newline is ignored (nats-server accepts `PINGX\r\n`).
    Ignored,
}

type VerbSpec = (&'static [u8], Verb, Tail);

const PUB: VerbSpec = (b"PUB", Verb::Pub, Tail::Args);
const HPUB: VerbSpec = (b"HPUB", Verb::Hpub, Tail::Args);
const SUB: VerbSpec = (b"SUB", Verb::Sub, Tail::Args);
const UNSUB: VerbSpec = (b"UNSUB", Verb::Unsub, Tail::Args);
const PING: VerbSpec = (b"PING", Verb::Ping, Tail::Ignored);
const PONG: VerbSpec = (b"PONG", Verb::Pong, Tail::Ignored);
const CONNECT: VerbSpec = (b"CONNECT", Verb::Connect, Tail::Json);
const INFO: VerbSpec = (b"INFO", Verb::Info, Tail::Json);
const OK: VerbSpec = (b"+OK", Verb::Ok, Tail::Ignored);
const ERR: VerbSpec = (b"-ERR", Verb::Err, Tail::Json);
const MSG: VerbSpec = (b"MSG", Verb::Msg, Tail::Args);
const HMSG: VerbSpec = (b"HMSG", Verb::Hmsg, Tail::Args);

/// The verbs a side may send that start with `first`: a first-byte dispatch, as
/// nats-server's state machine does, so at most three names are compared.
fn candidates(first: u8, dir: Direction) -> &'static [VerbSpec] {
    use Direction::*;
    match (first.to_ascii_uppercase(), dir) {
        (b'P', ClientToServer) => &[PUB, PING, PONG],
        (b'P', ServerToClient) => &[PING, PONG],
        (b'H', ClientToServer) => &[HPUB],
        (b'H', ServerToClient) => &[HMSG],
        (b'M', ServerToClient) => &[MSG],
        (b'S', ClientToServer) => &[SUB],
        (b'U', ClientToServer) => &[UNSUB],
        (b'C', ClientToServer) => &[CONNECT],
        (b'I', _) => &[INFO],
        (b'+', _) => &[OK],
        (b'-', _) => &[ERR],
        _ => &[],
    }
}

/// The most arguments any verb takes (HMSG: subject sid reply hdr total).
const MAX_ARGS: usize = 5;

/// Limits the scanner enforces while it frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// Longest argument part of a control line.
    pub max_control_line: usize,
    /// Largest header + payload a PUB/HPUB (or MSG/HMSG) may announce.
    pub max_payload: u64,
    /// Whether a client may send HPUB: it negotiated headers with a server that has them.
    pub headers: bool,
}

/// One complete frame at the front of a buffer, as offsets into it.
///
/// Scanning checks what framing needs (the verb, the control-line limit, the sizes, the CRLF
/// after the payload) and nothing more. The arguments are split, and their count checked,
/// only when an op is built from the frame ([`Frame::split_args`]): a frame that no filter
/// looks at goes upstream as sent, and nats-server judges its arguments, with the same
/// outcome for the client (a silent close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub verb: Verb,
    /// Total length: control line, payload and trailing CRLF.
    pub len: usize,
    /// Where the arguments start: after the verb and the blanks that follow it.
    pub line_start: usize,
    /// Where the arguments end: before the line's CR LF.
    pub line_end: usize,
    /// Where the payload (headers first, for HPUB/HMSG) starts.
    pub payload_start: usize,
    /// Header block length of HPUB/HMSG, 0 otherwise.
    pub header_len: usize,
    /// Header + payload length.
    pub total_size: usize,
}

/// A frame's arguments as ranges into the buffer it was scanned from; for CONNECT, INFO and
/// -ERR one range holding the rest of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    ranges: [(u32, u32); MAX_ARGS],
    count: u8,
}

impl Args {
    const EMPTY: Args = Args {
        ranges: [(0, 0); MAX_ARGS],
        count: 0,
    };

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Argument `i` as a range.
    pub fn get(&self, i: usize) -> std::ops::Range<usize> {
        let (s, e) = self.ranges[i];
        s as usize..e as usize
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = std::ops::Range<usize>> + '_ {
        self.ranges[..self.len()]
            .iter()
            .map(|&(s, e)| s as usize..e as usize)
    }

    /// Stores an argument range; false when every slot is taken.
    fn push(&mut self, start: usize, end: usize) -> bool {
        match self.ranges.get_mut(self.count as usize) {
            Some(slot) => {
                *slot = (start as u32, end as u32);
                self.count += 1;
                true
            }
            None => false,
        }
    }
}

impl Frame {
    /// Whether this frame carries a message (PUB, HPUB, MSG, HMSG).
    pub fn is_message(&self) -> bool {
        matches!(self.verb, Verb::Pub | Verb::Hpub | Verb::Msg | Verb::Hmsg)
    }

    /// Splits the arguments out of `buf` (the buffer the frame was scanned from) and checks
    /// their count as nats-server does: a wrong count is [`ProtoError::BadArguments`].
    pub fn split_args(&self, buf: &[u8]) -> Result<Args, ProtoError> {
        let mut args = Args::EMPTY;
        let (min, max) = match self.verb {
            Verb::Connect | Verb::Info | Verb::Err => {
                args.push(self.line_start, self.line_end);
                return Ok(args);
            }
            Verb::Ping | Verb::Pong | Verb::Ok => return Ok(args),
            Verb::Sub => (2, 3),
            Verb::Unsub => (1, 2),
            Verb::Pub => (2, 3),
            Verb::Hpub => (3, 4),
            Verb::Msg => (3, 4),
            Verb::Hmsg => (4, 5),
        };
        let line = buf.get(..self.line_end).ok_or(ProtoError::BadArguments)?;
        let mut i = self.line_start;
        while i < line.len() {
            while i < line.len() && is_separator(line[i]) {
                i += 1;
            }
            if i == line.len() {
                break;
            }
            let start = i;
            i = next_separator(line, i);
            if !args.push(start, i) {
                return Err(ProtoError::BadArguments);
            }
        }
        if args.len() < min || args.len() > max {
            return Err(ProtoError::BadArguments);
        }
        Ok(args)
    }
}

/// Matches the verb at the front of `buf`.
///
/// Returns the verb and its length, `Ok(None)` while `buf` is still a prefix of some verb, or
/// the error nats-server gives for a byte that cannot start or continue a verb.
fn match_verb(buf: &[u8], dir: Direction) -> Result<Option<(Verb, Tail, usize)>, ProtoError> {
    if let Some(hot) = match_message_verb(buf, dir) {
        return Ok(Some(hot));
    }
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut partial = false;
    for &(name, verb, tail) in candidates(first, dir) {
        let n = name.len().min(buf.len());
        if !buf[..n].eq_ignore_ascii_case(&name[..n]) {
            continue;
        }
        if buf.len() < name.len() {
            partial = true;
            continue;
        }
        // The whole verb is there: it must be followed by what the verb allows. `PUBX` is no
        // verb, `PINGX` is a PING; a verb with arguments needs a blank before them.
        match (tail, buf.get(name.len())) {
            (_, None) => partial = true,
            (Tail::Args, Some(b)) if !is_separator(*b) => continue,
            _ => return Ok(Some((verb, tail, name.len()))),
        }
    }
    if partial {
        Ok(None)
    } else {
        Err(ProtoError::UnknownOperation)
    }
}

/// The verbs that carry messages, spelt in upper case and followed by one space: most of the
/// traffic, recognised with one comparison. Anything else takes the general path.
fn match_message_verb(buf: &[u8], dir: Direction) -> Option<(Verb, Tail, usize)> {
    const UPPER: u8 = !0x20;
    let head = buf.get(..5)?;
    let word = [head[0] & UPPER, head[1] & UPPER, head[2] & UPPER];
    let verb = match (dir, &word, head[3]) {
        (Direction::ClientToServer, b"PUB", b' ') => (Verb::Pub, 3),
        (Direction::ServerToClient, b"MSG", b' ') => (Verb::Msg, 3),
        (Direction::ClientToServer, b"HPU", b'B' | b'b') if head[4] == b' ' => (Verb::Hpub, 4),
        (Direction::ServerToClient, b"HMS", b'G' | b'g') if head[4] == b' ' => (Verb::Hmsg, 4),
        _ => return None,
    };
    Some((verb.0, Tail::Args, verb.1))
}

/// Parses a decimal size the way nats-server's `parseSize` does: digits only, nine at most.
/// nats-server reads at most nine digits; a longer size is malformed (a silent close), not an
/// oversized payload.
const MAX_SIZE_DIGITS: usize = 9;

pub(crate) fn parse_size(digits: &[u8]) -> Result<usize, ProtoError> {
    if digits.is_empty() || digits.len() > MAX_SIZE_DIGITS {
        return Err(ProtoError::BadArguments);
    }
    let mut n = 0usize;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(ProtoError::BadArguments);
        }
        n = n * 10 + usize::from(d);
    }
    Ok(n)
}

/// Scans the frame at the front of `buf`.
pub fn scan(buf: &[u8], dir: Direction, limits: &ScanLimits) -> Result<Option<Frame>, ProtoError> {
    if let Some(frame) = scan_plain_message(buf, dir, limits) {
        return Ok(Some(frame));
    }
    scan_general(buf, dir, limits)
}

/// The common case in one pass: a complete `PUB`, `MSG`, `HPUB` or `HMSG` spelt in upper
/// case, one space after the verb, single spaces between the arguments, a CR LF line end and
/// a payload within the limits. Anything else (a partial frame, an error, tabs, other verbs)
/// is `None`, and [`scan_general`] decides; so this path only ever accepts what the general
/// one would accept, with the same offsets (checked by a test over many lines).
#[inline(always)]
fn scan_plain_message(buf: &[u8], dir: Direction, limits: &ScanLimits) -> Option<Frame> {
    match (dir, buf.get(..4)?) {
        (Direction::ClientToServer, b"PUB ") => scan_plain_line::<false>(buf, Verb::Pub, limits),
        (Direction::ServerToClient, b"MSG ") => scan_plain_line::<false>(buf, Verb::Msg, limits),
        // nats-server refuses an HPUB from a client that did not ask for headers: the
        // general path gives that answer.
        (Direction::ClientToServer, b"HPUB") if limits.headers => {
            scan_plain_header_line(buf, Verb::Hpub, limits)
        }
        (Direction::ServerToClient, b"HMSG") => scan_plain_header_line(buf, Verb::Hmsg, limits),
        _ => None,
    }
}

/// [`scan_plain_line`] for `HPUB` and `HMSG`, kept out of line so that the loops framing
/// `PUB`s and `MSG`s stay as tight as they are without headers.
#[inline(never)]
fn scan_plain_header_line(buf: &[u8], verb: Verb, limits: &ScanLimits) -> Option<Frame> {
    if *buf.get(4)? != b' ' {
        return None;
    }
    scan_plain_line::<true>(buf, verb, limits)
}

/// The rest of [`scan_plain_message`], once the verb and the space after it are matched:
/// `PUB `/`MSG `, or with `HEADERS` `HPUB `/`HMSG `, whose line also holds a header size.
#[inline(always)]
fn scan_plain_line<const HEADERS: bool>(
    buf: &[u8],
    verb: Verb,
    limits: &ScanLimits,
) -> Option<Frame> {
    // A constant in each instance: the verb and its space.
    let line_start = if HEADERS { 5 } else { 4 };
    if *buf.get(line_start)? <= b' ' {
        return None;
    }
    // The first control byte ends the line: it must be the CR of a CR LF.
    let cr = first_control_byte(buf, line_start)?;
    if buf[cr] != b'\r' || *buf.get(cr + 1)? != b'\n' {
        return None;
    }
    if cr - line_start > limits.max_control_line {
        return None;
    }
    // The sizes are the last arguments: the total, and before it the header size of a
    // message with headers, each digits back to a space, which the subject precedes.
    let (total, before) = size_before(buf, line_start, cr)?;
    let mut header_len = 0;
    if HEADERS {
        header_len = size_before(buf, line_start, before)?.0;
        if header_len > total {
            return None;
        }
    }
    if total as u64 > limits.max_payload {
        return None;
    }
    let payload_start = cr + 2;
    let end = payload_start + total;
    if buf.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some(Frame {
        verb,
        len: end + 2,
        line_start,
        line_end: cr,
        payload_start,
        header_len,
        total_size: total,
    })
}

/// The size whose digits end just before `end`, read backwards to the single space before
/// them, and that space's index; `None` unless there is at least one digit, at most
/// [`MAX_SIZE_DIGITS`], and an argument before the space (after `line_start`).
#[inline(always)]
fn size_before(buf: &[u8], line_start: usize, end: usize) -> Option<(usize, usize)> {
    let mut size = 0usize;
    let mut scale = 1usize;
    let mut i = end;
    loop {
        i -= 1;
        let b = buf[i];
        let d = b.wrapping_sub(b'0');
        if d <= 9 {
            if end - i > MAX_SIZE_DIGITS {
                return None;
            }
            size += usize::from(d) * scale;
            scale *= 10;
        } else if b == b' ' && i != end - 1 && i > line_start {
            return Some((size, i));
        } else {
            return None;
        }
    }
}

/// The complete plain messages at the front of `buf`, as [`scan`]'s fast path frames them:
/// how many bytes they take and how many there are. A forwarder whose filters look at no
/// message passes such a run on whole, without a call per message; whatever stops the run
/// (another verb, a partial frame, anything unusual) is left to [`scan`].
///
/// A stream on one subject at one payload size (a sensor feed, a benchmark) repeats its
/// control line message after message. A message whose line is byte for byte the first one's,
/// under the same limits, is that frame again at a new offset, so only the CR LF after its
/// payload is left to check: a few word compares instead of a scan of the line and a parse
/// of its size, and the next frame's offset known before they are done. The first line that
/// differs ends the shortcut for the rest of the run, so messages whose lines all differ
/// (each request with its own reply subject) pay one compare per run, not one per message.
pub fn plain_messages(buf: &[u8], dir: Direction, limits: &ScanLimits) -> (usize, u64) {
    let Some(first) = scan_plain_message(buf, dir, limits) else {
        return (0, 0);
    };
    let (line_len, frame_len) = (first.payload_start, first.len);
    let mut len = frame_len;
    let mut count = 1;
    while let Some(next) = buf.get(len..len + frame_len) {
        if !(next.ends_with(b"\r\n") && same_bytes(&next[..line_len], &buf[..line_len])) {
            break;
        }
        len += frame_len;
        count += 1;
    }
    while let Some(frame) = scan_plain_message(&buf[len..], dir, limits) {
        len += frame.len;
        count += 1;
    }
    (len, count)
}

/// Whether `a` and `b`, of the same length and at least eight bytes long (any plain message's
/// control line is), hold the same bytes: a word at a time, the last word overlapping the one
/// before it. Control lines are short, and a call to `memcmp` costs more than this.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word(s: &[u8], i: usize) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&s[i..i + 8]);
        u64::from_le_bytes(bytes)
    }
    let n = a.len();
    if n != b.len() || n < 8 {
        return a == b;
    }
    let mut diff = word(a, n - 8) ^ word(b, n - 8);
    let mut i = 0;
    while i + 8 < n {
        diff |= word(a, i) ^ word(b, i);
        i += 8;
    }
    diff == 0
}

/// The index of the first byte below the space at or after `i` (a CR, an LF, a tab, any
/// control byte); `None` when there is none.
#[inline]
fn first_control_byte(buf: &[u8], i: usize) -> Option<usize> {
    first_byte_below::<0x20>(buf, i)
}

/// The index of the first byte below `LIMIT` (at most 0x80) at or after `i`, eight bytes at a
/// time: subjects, sids and sizes rarely hold such a byte, so most words are passed over
/// with a few instructions. `None` when there is none.
#[inline(always)]
fn first_byte_below<const LIMIT: u8>(buf: &[u8], mut i: usize) -> Option<usize> {
    let low = u64::from_le_bytes([LIMIT; 8]);
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = buf.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        // The lowest flagged byte is the first one below LIMIT; higher flags may be spurious.
        let flagged = word.wrapping_sub(low) & !word & HIGH;
        if flagged != 0 {
            return Some(i + (flagged.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    buf[i..].iter().position(|&b| b < LIMIT).map(|j| i + j)
}

/// Scans any frame: the full rules, for everything [`scan_plain_message`] leaves.
fn scan_general(
    buf: &[u8],
    dir: Direction,
    limits: &ScanLimits,
) -> Result<Option<Frame>, ProtoError> {
    let Some((verb, tail, verb_len)) = match_verb(buf, dir)? else {
        // A verb prefix that the newline has already ended is no verb.
        return match memchr(b'\n', buf) {
            Some(_) => Err(ProtoError::UnknownOperation),
            None => Ok(None),
        };
    };
    if verb == Verb::Err && !buf.get(verb_len).is_some_and(|b| is_separator(*b)) {
        // Unlike CONNECT and INFO, nats-server wants a blank after `-ERR`.
        return Err(ProtoError::UnknownOperation);
    }
    let args_start = verb_len
        + buf[verb_len..]
            .iter()
            .take_while(|b| is_separator(**b))
            .count();
    // Blanks after the verb count too (all but one), so a line of endless blanks is bounded
    // like any other, and a line is judged the same however the reads split it.
    let counted_from = (verb_len + 1).min(args_start);
    // nats-server takes the first byte after the blanks as the start of a client's JSON
    // argument, whatever it is: `CONNECT\n{}\r\n` is a CONNECT whose JSON is `\n{}`. What a
    // server sends ends at its first newline: client libraries differ there (nats.go reads
    // as nats-server does, others a line at a time), and nats-server never sends a newline
    // first, so the edge keeps every op it forwards to one line.
    let search_from = match (tail, dir) {
        (Tail::Json, Direction::ClientToServer) => (args_start + 1).min(buf.len()),
        _ => verb_len,
    };
    let Some((nl, line_end)) = find_line_end(buf, search_from, tail)? else {
        if tail == Tail::Ignored {
            // nats-server skips what follows these verbs up to the newline, however long.
            // A forwarder drops those bytes as they come (`ignored_line_verb_len`).
            return Ok(None);
        }
        return check_partial_line(
            buf,
            counted_from,
            search_from,
            tail,
            limits.max_control_line,
        );
    };
    let line_start = args_start.min(line_end);
    if tail != Tail::Ignored && line_end.saturating_sub(counted_from) > limits.max_control_line {
        return Err(ProtoError::MaxControlLine);
    }
    if tail == Tail::Args && line_start == line_end {
        // Blanks and then the line's end: nats-server would take the next line as the
        // arguments (`UNSUB \nPING` unsubscribes sid `PING`), which the edge would frame as
        // two ops. Refused, like other arguments the two could read differently.
        return Err(ProtoError::BadArguments);
    }
    let frame = Frame {
        verb,
        len: nl + 1,
        line_start,
        line_end,
        payload_start: nl + 1,
        header_len: 0,
        total_size: 0,
    };
    if tail == Tail::Args && frame.is_message() {
        frame_payload(buf, frame, limits)
    } else {
        Ok(Some(frame))
    }
}

/// The length of the verb at the front of `buf` when it is one whose line nats-server reads
/// no further than the verb (`PING`, `PONG`, `+OK`): it skips any number of bytes up to the
/// newline without counting them against `max_control_line`. When [`scan`] says such a line
/// is not complete, a reader keeps the verb and drops the rest of what it has, so that the
/// line costs no more memory than any other while its newline is on the way.
pub fn ignored_line_verb_len(buf: &[u8], dir: Direction) -> Option<usize> {
    match match_verb(buf, dir) {
        Ok(Some((_, Tail::Ignored, verb_len))) => Some(verb_len),
        _ => None,
    }
}

/// How long the frame at the front of `buf` will be, when [`scan`] has said it is not complete
/// but its control line has arrived: a message whose payload is still on its way. A hint
/// for sizing the next read (the whole frame in one buffer, not grown piece by piece), never
/// a check: `None` when the line has not arrived or does not end in a size.
pub fn pending_frame_len(buf: &[u8]) -> Option<usize> {
    let nl = memchr(b'\n', buf)?;
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let (total, _) = last_argument(line)?;
    Some(nl + 1 + parse_size(total).ok()? + PAYLOAD_END_LEN)
}

/// The CR LF after a payload.
const PAYLOAD_END_LEN: usize = 2;

/// Finds the newline that ends the control line, searching from `from`, and where the
/// line's content ends: `Ok(None)` while it has not arrived.
///
/// nats-server drops one byte before the `\n` once it has seen any `\r` in the line, and
/// splits arguments on blanks only; how it reads a `\r` inside arguments even depends on
/// where a read split the line. So a line with arguments may hold a `\r` only right before
/// its `\n`: anything else is refused (a silent close, as for other malformed arguments),
/// because the edge and the server could frame it differently.
fn find_line_end(
    buf: &[u8],
    from: usize,
    tail: Tail,
) -> Result<Option<(usize, usize)>, ProtoError> {
    let rest = &buf[from..];
    match tail {
        Tail::Args => match memchr::memchr2(b'\r', b'\n', rest).map(|i| i + from) {
            None => Ok(None),
            Some(nl) if buf[nl] == b'\n' => Ok(Some((nl, nl))),
            Some(cr) => match buf.get(cr + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some((cr + 1, cr))),
                Some(_) => Err(ProtoError::BadArguments),
            },
        },
        Tail::Json | Tail::Ignored => {
            let Some(nl) = memchr(b'\n', rest).map(|i| i + from) else {
                return Ok(None);
            };
            // As nats-server: with a `\r` anywhere in the line (past a JSON argument's
            // first byte, which it never reads as one), the byte before `\n` goes.
            let drop_last = memchr(b'\r', &buf[from..nl]).is_some();
            Ok(Some((nl, if drop_last { nl - 1 } else { nl })))
        }
    }
}

/// A control line without its newline yet: fine unless it is already over the limit. It is
/// counted as its whole line will be once the newline comes (see [`find_line_end`]): a JSON
/// argument with a `\r` anywhere since `search_from` loses its last byte, as nats-server
/// drops it at a split too; other arguments only a `\r` at the end.
fn check_partial_line(
    buf: &[u8],
    args_start: usize,
    search_from: usize,
    tail: Tail,
    max_control_line: usize,
) -> Result<Option<Frame>, ProtoError> {
    let mut partial = buf.len().saturating_sub(args_start);
    let drops_last = match tail {
        Tail::Json => memchr(b'\r', buf.get(search_from..).unwrap_or_default()).is_some(),
        _ => buf.last() == Some(&b'\r'),
    };
    if drops_last {
        partial = partial.saturating_sub(1);
    }
    if partial > max_control_line {
        Err(ProtoError::MaxControlLine)
    } else {
        Ok(None)
    }
}

/// Reads a message frame's sizes from the end of its control line (the last argument, and
/// the one before it for HPUB/HMSG) and frames its payload.
fn frame_payload(
    buf: &[u8],
    mut frame: Frame,
    limits: &ScanLimits,
) -> Result<Option<Frame>, ProtoError> {
    let line = &buf[frame.line_start..frame.line_end];
    let (total, rest) = last_argument(line).ok_or(ProtoError::BadArguments)?;
    let total = parse_size(total)?;
    let mut rest = rest;
    if matches!(frame.verb, Verb::Hpub | Verb::Hmsg) {
        let (header_len, before) = last_argument(rest).ok_or(ProtoError::BadArguments)?;
        let header_len = parse_size(header_len)?;
        if header_len > total {
            return Err(ProtoError::BadArguments);
        }
        frame.header_len = header_len;
        rest = before;
    }
    if frame.verb == Verb::Hpub && !limits.headers {
        // nats-server refuses this before it reads a size, so even an oversized HPUB
        // closes silently rather than with a max-payload error.
        return Err(ProtoError::HeadersNotNegotiated);
    }
    // A subject must come before the sizes.
    if rest.iter().all(|b| is_separator(*b)) {
        return Err(ProtoError::BadArguments);
    }
    if total as u64 > limits.max_payload {
        // nats-server checks the argument count before the size.
        frame.split_args(buf)?;
        return Err(ProtoError::MaxPayload);
    }
    frame.total_size = total;
    let end = frame.payload_start + total;
    // nats-server refuses the first byte after the payload that is not the `\r\n` it
    // expects, without waiting for the next one.
    let after = buf.get(end..).unwrap_or_default();
    if !b"\r\n".starts_with(&after[..after.len().min(2)]) {
        return Err(ProtoError::UnknownOperation);
    }
    if after.len() < 2 {
        return Ok(None);
    }
    frame.len = end + 2;
    Ok(Some(frame))
}

/// The last argument of `line` and what comes before it.
fn last_argument(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = line.iter().rposition(|b| !is_separator(*b))? + 1;
    let start = line[..end]
        .iter()
        .rposition(|b| is_separator(*b))
        .map_or(0, |i| i + 1);
    Some((&line[start..end], &line[..start]))
}

/// Spaces and tabs separate arguments, as in nats-server's argument splitter. Most bytes are
/// above the space, so the first comparison settles them.
fn is_separator(b: u8) -> bool {
    b <= b' ' && (b == b' ' || b == b'\t')
}

/// The index of the first separator in `line` at or after `i`, or `line.len()`: the first
/// byte at or below the space, skipping any that is not a space or a tab.
fn next_separator(line: &[u8], mut i: usize) -> usize {
    while let Some(j) = first_byte_below::<0x21>(line, i) {
        if is_separator(line[j]) {
            return j;
        }
        i = j + 1;
    }
    line.len()
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    /// Every combination of the spellings the fast path must accept or leave alone, each cut
    /// at every length: wherever the fast path answers, the general path gives the same frame.
    #[test]
    fn fast_path_agrees_with_the_general_path() {
        let heads: [(&[u8], Direction); 11] = [
            (b"PUB ", Direction::ClientToServer),
            (b"pub ", Direction::ClientToServer),
            (b"PUB\t", Direction::ClientToServer),
            (b"PUB  ", Direction::ClientToServer),
            (b"MSG ", Direction::ServerToClient),
            (b"MSG ", Direction::ClientToServer),
            (b"HPUB ", Direction::ClientToServer),
            (b"hpub ", Direction::ClientToServer),
            (b"HPUB  ", Direction::ClientToServer),
            (b"HMSG ", Direction::ServerToClient),
            (b"HMSG ", Direction::ClientToServer),
        ];
        // Read as PUB or MSG arguments, and as HPUB or HMSG ones (a header size before the
        // total, which must not exceed it).
        let args: [&[u8]; 17] = [
            b"foo.bar 5",
            b"foo.bar reply.to 5",
            b"foo 1 5",
            b"foo 1 reply 5",
            b"5",
            b"foo\t5",
            b"foo 5 ",
            b"foo 0000000005",
            b"foo 000000005",
            b"foo 2 5",
            b"foo reply 0 5",
            b"foo 1 reply 5 5",
            b"foo 6 5",
            b"2 5",
            b"foo 2  5",
            b"foo 2\t5",
            b"foo 0000000002 5",
        ];
        let ends: [&[u8]; 4] = [b"\r\n", b"\n", b"\r", b"\rx\n"];
        let payloads: [&[u8]; 4] = [b"hello\r\n", b"hello\n", b"helloXY", b"hel"];
        let limits = [
            LIMITS_WIDE,
            ScanLimits {
                max_control_line: 8,
                max_payload: 1024,
                headers: true,
            },
            ScanLimits {
                max_control_line: 1024,
                max_payload: 4,
                headers: true,
            },
            ScanLimits {
                max_control_line: 1024,
                max_payload: 1024,
                headers: false,
            },
        ];
        let mut fast = 0;
        let mut fast_with_headers = 0;
        for (head, dir) in heads {
            for arg in args {
                for end in ends {
                    for payload in payloads {
                        let frame = [head, arg, end, payload, b"PING\r\n"].concat();
                        for cut in 0..=frame.len() {
                            for limits in &limits {
                                let buf = &frame[..cut];
                                if let Some(f) = scan_plain_message(buf, dir, limits) {
                                    fast += 1;
                                    fast_with_headers += usize::from(f.header_len > 0);
                                    assert_eq!(
                                        scan_general(buf, dir, limits),
                                        Ok(Some(f)),
                                        "{:?}",
                                        String::from_utf8_lossy(buf)
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        // The fast path is taken for the plain spellings, not only ever declined.
        assert!(fast > 50, "fast path taken {fast} times");
        assert!(
            fast_with_headers > 20,
            "fast path taken {fast_with_headers} times with headers"
        );
    }

    /// A run of frames, cut at every length: `plain_messages` passes over exactly the plain
    /// messages `scan` frames one by one from the front, and stops at the first other frame.
    #[test]
    fn plain_messages_stops_where_a_frame_is_not_a_plain_message() {
        let runs: [(&[u8], Direction, u64); 15] = [
            // Messages with headers are plain messages too, repeated or not.
            (
                b"HPUB a 2 4\r\nhiyo\r\nHPUB a 2 4\r\nhiyo\r\nPUB a 2\r\nhi\r\nHPUB a 0 1\r\nx\r\n",
                Direction::ClientToServer,
                4,
            ),
            (
                b"HMSG a 1 2 3\r\nhiy\r\nHMSG a 1 2 3\r\nhiy\r\nHMSG a 1 3 2\r\nhiy\r\n",
                Direction::ServerToClient,
                2,
            ),
            // Repeated lines: the shortcut, up to the first line that differs, and on with
            // the full framing after it.
            (
                b"PUB a 2\r\nhi\r\nPUB a 2\r\nho\r\nPUB b 3\r\nhey\r\nPUB a 2\r\nhi\r\n",
                Direction::ClientToServer,
                4,
            ),
            (
                b"MSG a 1 4\r\nhi\r\n\r\nMSG a 1 4\r\n\r\n\r\n\r\nMSG a 1 4\r\nabcd\r\nPING\r\n",
                Direction::ServerToClient,
                3,
            ),
            // A repeated line whose payload is not followed by CR LF ends the run.
            (
                b"PUB a 2\r\nhi\r\nPUB a 2\r\nhiX\nPUB a 2\r\nhi\r\n",
                Direction::ClientToServer,
                1,
            ),
            // A different line whose frame is shorter by two: the bytes where the first
            // frame would end are CR LF too, so only the compare of the lines tells.
            (
                b"PUB a 3\r\nabc\r\nPUB a 1\r\nX\r\n\r\n",
                Direction::ClientToServer,
                2,
            ),
            // A line that starts as the last one did but is longer, or spelt otherwise.
            (
                b"PUB a 2\r\nhi\r\nPUB a 22\r\n0123456789012345678901\r\n",
                Direction::ClientToServer,
                1,
            ),
            (
                b"PUB a 2\r\nhi\r\nPUB a 2\nhi\r\nPUB a 2\r\nhi\r\n",
                Direction::ClientToServer,
                1,
            ),
            (
                b"PUB a 2\r\nhi\r\nPUB b r 0\r\n\r\nPING\r\nPUB c 1\r\nx\r\n",
                Direction::ClientToServer,
                2,
            ),
            (
                b"MSG a 1 2\r\nhi\r\nMSG b 1 r 3\r\nabc\r\nHMSG h 1 12 12\r\nNATS/1.0\r\n\r\n\r\n",
                Direction::ServerToClient,
                2,
            ),
            (
                b"PUB a 2\r\nhi\r\npub b 2\r\nhi\r\n",
                Direction::ClientToServer,
                1,
            ),
            (
                b"PUB a 2\r\nhi\r\nPUB b 2\nhi\r\n",
                Direction::ClientToServer,
                1,
            ),
            (
                b"SUB a 1\r\nPUB a 2\r\nhi\r\n",
                Direction::ClientToServer,
                0,
            ),
            // Past the limits below: a payload over max_payload, a control line over
            // max_control_line. The full rules answer for those.
            (
                b"PUB a 2\r\nhi\r\nPUB a 9\r\n123456789\r\n",
                Direction::ClientToServer,
                1,
            ),
            (
                b"PUB a 2\r\nhi\r\nPUB a.very.long.subject 2\r\nhi\r\n",
                Direction::ClientToServer,
                1,
            ),
        ];
        let limits = ScanLimits {
            max_control_line: 16,
            max_payload: 8,
            headers: true,
        };
        for (run, dir, plain) in runs {
            for cut in 0..=run.len() {
                let buf = &run[..cut];
                let (len, count) = plain_messages(buf, dir, &limits);
                // The same frames, one `scan` at a time.
                let mut at = 0;
                for _ in 0..count {
                    let frame = scan(&buf[at..], dir, &limits)
                        .expect("a plain message scans")
                        .expect("a plain message is complete");
                    assert!(frame.is_message());
                    at += frame.len;
                }
                assert_eq!(at, len, "{:?}", String::from_utf8_lossy(buf));
                assert!(count <= plain);
                if cut == run.len() {
                    assert_eq!(count, plain, "{:?}", String::from_utf8_lossy(buf));
                }
            }
        }
    }

    /// Runs built from repeated, nearly repeated and other frames, cut anywhere: the run
    /// `plain_messages` finds, repeated-line shortcut and all, is exactly the one the fast
    /// path finds a frame at a time.
    #[test]
    fn plain_messages_agrees_with_framing_one_message_at_a_time() {
        let pieces: [&[u8]; 16] = [
            b"PUB a 2\r\nhi\r\n",
            b"PUB a 2\r\nhi\r\n",
            b"PUB a 2\r\n\r\n\r\n",
            b"PUB a 2\rXhi\r\n",
            // Lines alike but for the last digit of the size, after the first word.
            b"PUB a.b 12\r\n012345678901\r\n",
            b"PUB a.b 10\r\n0123456789\r\n",
            b"PUB b 2\r\nhi\r\n",
            b"PUB a 1\r\nX\r\n\r\n",
            b"PUB a 22\r\n0123456789012345678901\r\n",
            b"PUB a 2\nhi\r\n",
            b"PING\r\n",
            b"MSG a 1 2\r\nhi\r\n",
            b"\r\n",
            b"HPUB a 2 4\r\nhiyo\r\n",
            b"HPUB a 4 2\r\nhiyo\r\n",
            b"HMSG a 1 2 4\r\nhiyo\r\n",
        ];
        let one_at_a_time = |buf: &[u8], dir| {
            let (mut len, mut count) = (0, 0);
            while let Some(frame) = scan_plain_message(&buf[len..], dir, &LIMITS_WIDE) {
                len += frame.len;
                count += 1;
            }
            (len, count)
        };
        // A fixed xorshift sequence: the same runs every time.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for _ in 0..5_000 {
            let mut run = Vec::new();
            for _ in 0..1 + next(8) {
                // Mostly the first piece, so runs of repeats are common.
                let piece = if next(2) == 0 { 0 } else { next(pieces.len()) };
                run.extend_from_slice(pieces[piece]);
            }
            let buf = &run[..next(run.len() + 1)];
            for dir in [Direction::ClientToServer, Direction::ServerToClient] {
                assert_eq!(
                    plain_messages(buf, dir, &LIMITS_WIDE),
                    one_at_a_time(buf, dir),
                    "{:?}",
                    String::from_utf8_lossy(buf)
                );
            }
        }
    }

    const LIMITS_WIDE: ScanLimits = ScanLimits {
        max_control_line: 4096,
        max_payload: 1 << 20,
        headers: true,
    };
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    #[test]
    fn pending_frame_len_reads_the_size_once_the_line_is_there() {
        assert_eq!(
            pending_frame_len(b"PUB foo 16384\r\nabc"),
            Some(15 + 16384 + 2)
        );
        assert_eq!(
            pending_frame_len(b"MSG foo 1 reply 5\nab"),
            Some(18 + 5 + 2)
        );
        assert_eq!(
            pending_frame_len(b"HMSG foo 1 12 40\r\n"),
            Some(18 + 40 + 2)
        );
        // No line yet, or a line that does not end in a size: no hint.
        assert_eq!(pending_frame_len(b"PUB foo 163"), None);
        assert_eq!(pending_frame_len(b"PUB foo bar\r\n"), None);
    }
}
