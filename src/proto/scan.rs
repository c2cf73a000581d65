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

const CLIENT_VERBS: &[(&[u8], Verb, Tail)] = &[
    (b"PUB", Verb::Pub, Tail::Args),
    (b"HPUB", Verb::Hpub, Tail::Args),
    (b"SUB", Verb::Sub, Tail::Args),
    (b"UNSUB", Verb::Unsub, Tail::Args),
    (b"PING", Verb::Ping, Tail::Ignored),
    (b"PONG", Verb::Pong, Tail::Ignored),
    (b"CONNECT", Verb::Connect, Tail::Json),
    (b"INFO", Verb::Info, Tail::Json),
    (b"+OK", Verb::Ok, Tail::Ignored),
    (b"-ERR", Verb::Err, Tail::Json),
];

const SERVER_VERBS: &[(&[u8], Verb, Tail)] = &[
    (b"MSG", Verb::Msg, Tail::Args),
    (b"HMSG", Verb::Hmsg, Tail::Args),
    (b"PING", Verb::Ping, Tail::Ignored),
    (b"PONG", Verb::Pong, Tail::Ignored),
    (b"INFO", Verb::Info, Tail::Json),
    (b"+OK", Verb::Ok, Tail::Ignored),
    (b"-ERR", Verb::Err, Tail::Json),
];

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
    let verbs = match dir {
        Direction::ClientToServer => CLIENT_VERBS,
        Direction::ServerToClient => SERVER_VERBS,
    };
    let mut partial = false;
    for &(name, verb, tail) in verbs {
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

/// Parses a decimal size the way nats-server's `parseSize` does: digits only.
fn parse_size(digits: &[u8]) -> Result<usize, ProtoError> {
    if digits.is_empty() || digits.len() > 18 {
        return Err(ProtoError::BadArguments);
    }
    digits.iter().try_fold(0usize, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + usize::from(b - b'0'))
        } else {
            Err(ProtoError::BadArguments)
        }
    })
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
    let Some(nl) = memchr(b'\n', &buf[verb_len..]).map(|i| i + verb_len) else {
        let mut partial = buf.len().saturating_sub(args_start);
        if buf.last() == Some(&b'\r') {
            partial = partial.saturating_sub(1);
        }
        return if partial > limits.max_control_line {
            Err(ProtoError::MaxControlLine)
        } else {
            Ok(None)
        };
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

    match tail {
        Tail::Ignored => return Ok(Some(frame)),
        Tail::Json => {
            frame.args[0] = (args_start as u32, line_end as u32);
            frame.nargs = 1;
            return Ok(Some(frame));
        }
        Tail::Args => {}
    }

    // A verb directly followed by its newline has no arguments: nats-server's parser fails on
    // the newline itself.
    if buf[verb_len..=nl]
        .iter()
        .all(|b| *b == b'\r' || *b == b'\n')
    {
        return Err(ProtoError::UnknownOperation);
    }
    split_args(buf, args_start, line_end, &mut frame)?;

    let n = frame.arg_count();
    let (min, max, sized) = match verb {
        Verb::Sub => (2, 3, 0),
        Verb::Unsub => (1, 2, 0),
        Verb::Pub => (2, 3, 1),
        Verb::Hpub => (3, 4, 2),
        Verb::Msg => (3, 4, 1),
        Verb::Hmsg => (4, 5, 2),
        _ => unreachable!("only verbs with arguments reach here"),
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

/// Splits `buf[start..end]` on blanks (and stray CRs, as nats-server does) into the frame's
/// argument slots.
fn split_args(buf: &[u8], start: usize, end: usize, frame: &mut Frame) -> Result<(), ProtoError> {
    let mut i = start;
    while i < end {
        while i < end && (is_blank(buf[i]) || buf[i] == b'\r') {
            i += 1;
        }
        if i == end {
            break;
        }
        let arg_start = i;
        while i < end && !(is_blank(buf[i]) || buf[i] == b'\r') {
            i += 1;
        }
        if frame.nargs as usize == MAX_ARGS {
            return Err(ProtoError::BadArguments);
        }
        frame.args[frame.nargs as usize] = (arg_start as u32, i as u32);
        frame.nargs += 1;
    }
    Ok(())
}
