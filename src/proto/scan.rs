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
}

/// One complete frame at the front of a buffer, as offsets into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub verb: Verb,
    /// Total length: control line, payload and trailing CRLF.
    pub len: usize,
    /// Argument ranges; for CONNECT, INFO and -ERR one range holding the rest of the line.
    args: [(u32, u32); MAX_ARGS],
    nargs: u8,
    /// Where the payload (headers first, for HPUB/HMSG) starts.
    pub payload_start: usize,
    /// Header block length of HPUB/HMSG, 0 otherwise.
    pub header_len: usize,
    /// Header + payload length.
    pub total_size: usize,
}

impl Frame {
    fn new(verb: Verb, len: usize) -> Self {
        Frame {
            verb,
            len,
            args: [(0, 0); MAX_ARGS],
            nargs: 0,
            payload_start: len,
            header_len: 0,
            total_size: 0,
        }
    }

    /// The arguments as ranges into the buffer the frame was scanned from.
    pub fn args(&self) -> impl ExactSizeIterator<Item = std::ops::Range<usize>> + '_ {
        self.args[..self.nargs as usize]
            .iter()
            .map(|&(s, e)| s as usize..e as usize)
    }

    /// Argument `i` as a range.
    pub fn arg(&self, i: usize) -> std::ops::Range<usize> {
        let (s, e) = self.args[i];
        s as usize..e as usize
    }

    pub fn arg_count(&self) -> usize {
        self.nargs as usize
    }

    /// Whether this frame carries a message (PUB, HPUB, MSG, HMSG).
    pub fn is_message(&self) -> bool {
        matches!(self.verb, Verb::Pub | Verb::Hpub | Verb::Msg | Verb::Hmsg)
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
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
            (Tail::Args, Some(b)) if !is_blank(*b) => continue,
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

fn parse_size(digits: &[u8]) -> Result<usize, ProtoError> {
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
    let Some((verb, tail, verb_len)) = match_verb(buf, dir)? else {
        // A verb prefix that the newline has already ended is no verb.
        return match memchr(b'\n', buf) {
            Some(_) => Err(ProtoError::UnknownOperation),
            None => Ok(None),
        };
    };

    let args_start = verb_len + buf[verb_len..].iter().take_while(|b| is_blank(**b)).count();
    if tail == Tail::Args {
        // The hot path (PUB, MSG, ...): one pass finds the newline and splits the arguments.
        let Some(frame) = scan_args_line(buf, verb, args_start, limits.max_control_line)? else {
            return Ok(None);
        };
        return finish_args_frame(buf, frame, limits);
    }

    let Some(nl) = memchr(b'\n', &buf[verb_len..]).map(|i| i + verb_len) else {
        return check_partial_line(buf, args_start, limits.max_control_line);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let args_start = args_start.min(line_end);
    if line_end - args_start > limits.max_control_line {
        return Err(ProtoError::MaxControlLine);
    }
    let mut frame = Frame::new(verb, nl + 1);
    if tail == Tail::Json {
        frame.args[0] = (args_start as u32, line_end as u32);
        frame.nargs = 1;
    }
    Ok(Some(frame))
}

/// A control line without its newline yet: fine unless it is already over the limit.
fn check_partial_line(
    buf: &[u8],
    args_start: usize,
    max_control_line: usize,
) -> Result<Option<Frame>, ProtoError> {
    let mut partial = buf.len().saturating_sub(args_start);
    if buf.last() == Some(&b'\r') {
        partial = partial.saturating_sub(1);
    }
    if partial > max_control_line {
        Err(ProtoError::MaxControlLine)
    } else {
        Ok(None)
    }
}

/// Blanks and stray CRs separate arguments, as in nats-server. Most bytes are above the
/// space, so the first comparison settles them.
fn is_separator(b: u8) -> bool {
    b <= b' ' && (b == b' ' || b == b'\t' || b == b'\r')
}

/// The index of the first separator in `line` at or after `i`, or `line.len()`. Eight bytes
/// at a time: a word with no byte at or below the space holds no separator, and arguments
/// (subjects, sids, sizes) rarely do.
fn next_separator(line: &[u8], mut i: usize) -> usize {
    const LOW: u64 = 0x2121_2121_2121_2121;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = line.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        // The lowest flagged byte is the first one below 0x21; higher flags may be spurious.
        let low_bytes = word.wrapping_sub(LOW) & !word & HIGH;
        if low_bytes == 0 {
            i += 8;
            continue;
        }
        let j = i + (low_bytes.trailing_zeros() / 8) as usize;
        if is_separator(line[j]) {
            return j;
        }
        i = j + 1;
    }
    while i < line.len() && !is_separator(line[i]) {
        i += 1;
    }
    i
}

/// Splits `line[start..]` into the frame's argument slots; true when there were more
/// arguments than slots.
fn split_args(line: &[u8], start: usize, frame: &mut Frame) -> bool {
    let mut too_many = false;
    let mut i = start;
    let end = line.len();
    while i < end {
        while i < end && is_separator(line[i]) {
            i += 1;
        }
        if i == end {
            break;
        }
        let arg_start = i;
        i = next_separator(line, i);
        too_many |= !push_arg(frame, arg_start, i);
    }
    too_many
}

/// Finds the end of an argument line (memchr) and splits it on blanks (and stray CRs, as
/// nats-server does). Too many arguments is reported only once the line is complete
/// and within the limit, as nats-server reports it.
#[inline]
fn scan_args_line(
    buf: &[u8],
    verb: Verb,
    args_start: usize,
    max_control_line: usize,
) -> Result<Option<Frame>, ProtoError> {
    let Some(nl) = memchr(b'\n', &buf[args_start..]).map(|i| i + args_start) else {
        return check_partial_line(buf, args_start, max_control_line);
    };
    let mut frame = Frame::new(verb, 0);
    let too_many = split_args(&buf[..nl], args_start, &mut frame);
    let line_end = if buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    if line_end.saturating_sub(args_start) > max_control_line {
        return Err(ProtoError::MaxControlLine);
    }
    if too_many {
        return Err(ProtoError::BadArguments);
    }
    frame.len = nl + 1;
    frame.payload_start = nl + 1;
    Ok(Some(frame))
}

/// Checks the argument count of a complete argument line and frames its payload.
#[inline]
fn finish_args_frame(
    buf: &[u8],
    mut frame: Frame,
    limits: &ScanLimits,
) -> Result<Option<Frame>, ProtoError> {
    let nl = frame.len - 1;
    let n = frame.arg_count();
    let (min, max, sized) = match frame.verb {
        Verb::Sub => (2, 3, 0),
        Verb::Unsub => (1, 2, 0),
        Verb::Pub => (2, 3, 1),
        Verb::Hpub => (3, 4, 2),
        Verb::Msg => (3, 4, 1),
        Verb::Hmsg => (4, 5, 2),
        _ => return Err(ProtoError::UnknownOperation),
    };
    if n < min || n > max {
        return Err(ProtoError::BadArguments);
    }
    if sized == 0 {
        return Ok(Some(frame));
    }

    let total = parse_size(&buf[frame.arg(n - 1)])?;
    if sized == 2 {
        let header_len = parse_size(&buf[frame.arg(n - 2)])?;
        if header_len > total {
            return Err(ProtoError::BadArguments);
        }
        frame.header_len = header_len;
    }
    if total as u64 > limits.max_payload {
        return Err(ProtoError::MaxPayload);
    }
    frame.total_size = total;
    frame.payload_start = nl + 1;
    let end = frame.payload_start + total;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ProtoError::UnknownOperation);
    }
    frame.len = end + 2;
    Ok(Some(frame))
}

/// Stores an argument range; false when every slot is taken.
fn push_arg(frame: &mut Frame, start: usize, end: usize) -> bool {
    match frame.args.get_mut(frame.nargs as usize) {
        Some(slot) => {
            *slot = (start as u32, end as u32);
            frame.nargs += 1;
            true
        }
        None => false,
    }
}
