//! NATS header blocks: `NATS/1.0[ status[ description]]\r\n(Name: Value\r\n)*\r\n`.
//!
//! Parsed only when a filter needs to look inside one (tag stripping, the 503 no-responders
//! status). Names are compared ASCII case-insensitively: nats-server matches them
//! case-sensitively, but some client libraries look names up in any casing (nats.js, and
//! nats.py's new client, which lower-cases them), so `nats-edge-user` can answer a lookup of
//! `Nats-Edge-User`. Anything that must not be forged is therefore matched in every casing.
//!
//! Lines are split on `\n` with an optional `\r` before it: a parser downstream that accepts a
//! bare `\n` (Go's `textproto` does) must not find a field here that this parser missed.

use bytes::{BufMut, Bytes, BytesMut};

/// The first line every header block starts with.
pub const VERSION: &[u8] = b"NATS/1.0";

/// Why a header block could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header block does not start with NATS/1.0")]
    NoVersion,
    #[error("header block does not end with an empty line")]
    Unterminated,
}

/// A parsed header block, borrowing from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers<'a> {
    /// The whole block.
    pub block: &'a [u8],
    /// The first line without its line end: `NATS/1.0`, `NATS/1.0 503`, ...
    pub first_line: &'a [u8],
    /// Every field line without its line end, in order, as sent.
    pub lines: Vec<&'a [u8]>,
    /// Every line after the first without its line end, in order, empty ones too: what a
    /// block rebuilt with one field changed writes back, so that readers who stop at an
    /// empty line still stop there.
    pub all_lines: Vec<&'a [u8]>,
}

impl<'a> Headers<'a> {
    /// Parses a whole block, as it sits in an HPUB or HMSG.
    pub fn parse(block: &'a [u8]) -> Result<Headers<'a>, HeaderError> {
        if !block.starts_with(VERSION) {
            return Err(HeaderError::NoVersion);
        }
        let mut lines = block.split(|b| *b == b'\n').map(trim_cr);
        let first_line = lines.next().ok_or(HeaderError::NoVersion)?;
        // The block ends with an empty line, so split yields "", then "" after the final \n.
        let body = block
            .strip_suffix(b"\r\n\r\n")
            .or_else(|| block.strip_suffix(b"\n\n"))
            .ok_or(HeaderError::Unterminated)?;
        let all_lines: Vec<&[u8]> = body.split(|b| *b == b'\n').skip(1).map(trim_cr).collect();
        let fields: Vec<&[u8]> = all_lines
            .iter()
            .copied()
            .filter(|line| !line.is_empty())
            .collect();
        Ok(Headers {
            block,
            first_line,
            lines: fields,
            all_lines,
        })
    }

    /// The status code of the first line (`503` in `NATS/1.0 503`), if any.
    pub fn status(&self) -> Option<&'a [u8]> {
        let rest = self.first_line.get(VERSION.len()..)?;
        rest.split(|b| *b == b' ' || *b == b'\t')
            .find(|t| !t.is_empty())
    }

    /// The line end one of this block's lines (from `lines` or `all_lines`) was sent with:
    /// a block rebuilt around the line keeps a bare `\n` as it came, since parsers that end
    /// lines only at `\r\n` (nats.js, nats.py's new client) read it as part of the value.
    pub fn line_end(&self, line: &[u8]) -> &'static [u8] {
        let start = (line.as_ptr() as usize).wrapping_sub(self.block.as_ptr() as usize);
        match start
            .checked_add(line.len())
            .and_then(|end| self.block.get(end..))
        {
            Some([b'\n', ..]) => b"\n",
            _ => b"\r\n",
        }
    }

    /// The value of the first field called `name`, in any casing, trimmed.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.lines.iter().find_map(|line| {
            let (n, v) = split_field(line)?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }
}

/// Whether every client library reads `block` one way, the edge's: valid UTF-8, every line
/// ended by CRLF (no CR or LF alone), no empty line before the one that ends it, and every
/// field line a name of visible ASCII without a colon, a colon, and a value of any other
/// bytes (as the NATS headers protocol allows: nats-server itself writes form feeds into
/// `Nats-Stream-Source`, which applications publish again). A block that breaks it is read
/// by some library not at all (nats.go then delivers the message without headers,
/// async-nats drops its connection, nats.js throws), so the headers the edge adds to it
/// would be lost, or read with another name (a forged tag). The first line is the caller's
/// to judge.
pub fn is_strict(block: &[u8]) -> bool {
    if std::str::from_utf8(block).is_err() {
        return false;
    }
    let paired = memchr::memchr2_iter(b'\r', b'\n', block).all(|at| match block[at] {
        b'\r' => block.get(at + 1) == Some(&b'\n'),
        _ => at > 0 && block[at - 1] == b'\r',
    });
    paired
        && block.strip_suffix(b"\r\n\r\n").is_some()
        && strict_field_lines(block).all(|line| {
            // The value, after the colon, may hold any byte: no CR or LF, which end lines.
            let Some(colon) = memchr::memchr(b':', line) else {
                return false;
            };
            let name = &line[..colon];
            !name.is_empty() && name.iter().all(|b| (0x21..=0x7e).contains(b))
        })
}

/// The first line of a block, without its line end.
pub fn first_line(block: &[u8]) -> &[u8] {
    trim_cr(block.split(|b| *b == b'\n').next().unwrap_or(block))
}

/// The field lines of a block [`is_strict`] accepts, without their line ends: no parsing
/// into a list, so a block that stays as it is costs no allocation.
pub fn strict_field_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = block.strip_suffix(b"\r\n\r\n").unwrap_or(block);
    body.split(|b| *b == b'\n').skip(1).map(trim_cr)
}

/// A field line's name and value, both trimmed of spaces and tabs; `None` for a line with
/// no colon.
pub fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|b| *b == b':')?;
    Some((trim(&line[..colon]), trim(&line[colon + 1..])))
}

/// Whether a name is reserved: one of `names` or starting with `prefix`, in any casing.
pub fn is_reserved(name: &[u8], names: &[Vec<u8>], prefix: &[u8]) -> bool {
    let prefixed = !prefix.is_empty()
        && name.len() >= prefix.len()
        && name[..prefix.len()].eq_ignore_ascii_case(prefix);
    prefixed || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Builds a header block from a first line, kept field lines and new fields.
#[derive(Debug, Default)]
pub struct HeaderWriter {
    buf: BytesMut,
}

impl HeaderWriter {
    pub fn new(first_line: &[u8]) -> Self {
        Self::with_capacity(first_line, 128)
    }

    /// A writer with room for `capacity` bytes, the block it rebuilds and what it adds.
    pub fn with_capacity(first_line: &[u8], capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(first_line.len() + 4));
        buf.put_slice(first_line);
        buf.put_slice(b"\r\n");
        HeaderWriter { buf }
    }

    /// Appends a field line of a block [`is_strict`] accepts, with its CRLF.
    pub fn strict_line(&mut self, line: &[u8]) {
        self.buf.put_slice(line);
        self.buf.put_slice(b"\r\n");
    }

    /// Appends a field line of `block` as it was sent, with its own line end.
    pub fn line(&mut self, block: &Headers<'_>, line: &[u8]) {
        self.buf.put_slice(line);
        self.buf.put_slice(block.line_end(line));
    }

    /// Appends field lines already formatted, each ending in CRLF.
    pub fn lines(&mut self, lines: &[u8]) {
        self.end_kept_line();
        self.buf.put_slice(lines);
    }

    /// Appends `name: value`. Line ends in the value become spaces, so a value can never
    /// start a field of its own. In place of a kept line (rewrite's mapped subject headers)
    /// it follows the line before as that one ended: after a bare `\n`, nats-server, which
    /// finds a key only after `\r\n`, reads it no more than it read the line it replaces.
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        self.buf.put_slice(name);
        self.buf.put_slice(b": ");
        for b in value {
            self.buf
                .put_u8(if matches!(b, b'\r' | b'\n') { b' ' } else { *b });
        }
        self.buf.put_slice(b"\r\n");
    }

    /// Before lines of the edge's own that follow kept ones: a kept line that ended in a
    /// bare `\n` ends in `\r\n`, or a parser that ends lines only there would read the
    /// edge's line as part of the kept one's value. (The tagging filter writes its lines
    /// right after the first line, where this changes nothing.)
    fn end_kept_line(&mut self) {
        if self.buf.ends_with(b"\n") && !self.buf.ends_with(b"\r\n") {
            self.buf.truncate(self.buf.len() - 1);
            self.buf.put_slice(b"\r\n");
        }
    }

    pub fn finish(mut self) -> Bytes {
        self.buf.put_slice(b"\r\n");
        self.buf.freeze()
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_blocks_are_what_every_client_reads_alike() {
        for block in [
            &b"NATS/1.0\r\n\r\n"[..],
            b"NATS/1.0\r\nA: b\r\nNats-Msg-Id: x y\tz\r\n\r\n",
            b"NATS/1.0 503\r\n\r\n",
            "NATS/1.0\r\nA: caf\u{e9}\r\n\r\n".as_bytes(),
            b"NATS/1.0\r\nA:\r\n\r\n",
            // Control bytes in values, as nats-server writes into a stream source's header.
            b"NATS/1.0\r\nNats-Stream-Source: S 4 a.*\x0cb.* >\x0c> a.1\r\n\r\n",
            b"NATS/1.0\r\nA: \x01\x7f\r\n\r\n",
        ] {
            assert!(is_strict(block), "{}", block.escape_ascii());
        }
        for block in [
            // No colon, a bare LF, a CR inside a value, a space or a non-ASCII byte in a
            // name, a control byte in a name, bytes that are not UTF-8, an empty line
            // inside, an empty name, no end.
            &b"NATS/1.0\r\nx\r\n\r\n"[..],
            b"NATS/1.0\r\nA: x\nB: y\r\n\r\n",
            b"NATS/1.0\r\nA: x\ry\r\n\r\n",
            b"NATS/1.0\r\nX Y: 1\r\n\r\n",
            "NATS/1.0\r\n\u{a0}A: 1\r\n\r\n".as_bytes(),
            b"NATS/1.0\r\nA\x01: 1\r\n\r\n",
            b"NATS/1.0\r\nA: \xff\r\n\r\n",
            b"NATS/1.0\r\nA: 1\r\n\r\nB: 2\r\n\r\n",
            b"NATS/1.0\r\n: 1\r\n\r\n",
            b"NATS/1.0\r\nA: 1\r\n",
            b"NATS/1.0\n\n",
        ] {
            assert!(!is_strict(block), "{}", block.escape_ascii());
        }
        let lines: Vec<&[u8]> =
            strict_field_lines(b"NATS/1.0 503\r\nA: 1\r\nB: 2\r\n\r\n").collect();
        assert_eq!(lines, [&b"A: 1"[..], b"B: 2"]);
        assert_eq!(strict_field_lines(b"NATS/1.0\r\n\r\n").count(), 0);
        assert_eq!(
            first_line(b"NATS/1.0 503 x\r\nA: 1\r\n\r\n"),
            b"NATS/1.0 503 x"
        );
    }

    #[test]
    fn parses_fields_and_status() {
        let h = Headers::parse(b"NATS/1.0 503\r\nNats-Subject: svc.none\r\n\r\n").unwrap();
        assert_eq!(h.status(), Some(&b"503"[..]));
        assert_eq!(h.get(b"nats-subject"), Some(&b"svc.none"[..]));
        let h = Headers::parse(b"NATS/1.0\r\nA: 1\r\nb:2 \r\n\r\n").unwrap();
        assert_eq!(h.status(), None);
        assert_eq!(h.lines.len(), 2);
        assert_eq!(h.get(b"B"), Some(&b"2"[..]));
        let h = Headers::parse(b"NATS/1.0 408 Request Timeout\r\n\r\n").unwrap();
        assert_eq!(h.status(), Some(&b"408"[..]));
        assert!(h.lines.is_empty());
    }

    #[test]
    fn refuses_malformed_blocks() {
        assert_eq!(
            Headers::parse(b"HTTP/1.1\r\n\r\n"),
            Err(HeaderError::NoVersion)
        );
        assert_eq!(
            Headers::parse(b"NATS/1.0\r\nA: 1\r\n"),
            Err(HeaderError::Unterminated)
        );
        assert_eq!(Headers::parse(b""), Err(HeaderError::NoVersion));
        // A field past an empty line is found, as nats-server finds it.
        let h = Headers::parse(b"NATS/1.0\r\n\r\nX: 1\r\n\r\n").unwrap();
        assert_eq!(h.get(b"X"), Some(&b"1"[..]));
    }

    #[test]
    fn bare_newlines_split_fields() {
        // A downstream parser that accepts bare \n must see the same fields.
        let h = Headers::parse(b"NATS/1.0\r\nA: 1\nnats-edge-user: x\r\n\r\n").unwrap();
        assert_eq!(h.get(b"Nats-Edge-User"), Some(&b"x"[..]));
    }

    #[test]
    fn reserved_names_in_any_casing() {
        let names = vec![b"X-Tag".to_vec()];
        assert!(is_reserved(b"nats-edge-user", &names, b"Nats-Edge-"));
        assert!(is_reserved(b"NATS-EDGE-anything", &names, b"Nats-Edge-"));
        assert!(is_reserved(b"x-tag", &names, b"Nats-Edge-"));
        assert!(!is_reserved(b"Nats-Edg", &names, b"Nats-Edge-"));
        assert!(!is_reserved(b"Other", &names, b""));
    }

    #[test]
    fn writer_neutralises_line_ends() {
        let block = Headers::parse(b"NATS/1.0\r\nA: 1\r\n\r\n").unwrap();
        let mut w = HeaderWriter::new(b"NATS/1.0");
        w.line(&block, block.lines[0]);
        w.field(b"B", b"x\r\nEvil: 1");
        assert_eq!(
            &w.finish()[..],
            b"NATS/1.0\r\nA: 1\r\nB: x  Evil: 1\r\n\r\n"
        );
    }

    /// A kept line keeps its own line end: a bare `\n` inside what a CRLF-only parser reads
    /// as one value stays inside it.
    #[test]
    fn kept_lines_keep_their_line_ends() {
        let block = Headers::parse(b"NATS/1.0\r\nA: x\ny\r\nB: 2\r\n\r\n").unwrap();
        let mut w = HeaderWriter::new(block.first_line);
        for line in &block.lines {
            w.line(&block, line);
        }
        assert_eq!(&w.finish()[..], b"NATS/1.0\r\nA: x\ny\r\nB: 2\r\n\r\n");
    }

    /// The edge's lines after a kept line that ended in a bare `\n` start a line of their
    /// own for a parser that ends lines only at `\r\n`.
    #[test]
    fn the_edges_lines_never_join_a_kept_one() {
        let block = Headers::parse(b"NATS/1.0\r\nA: x\nB: y\n\n").unwrap();
        {
            let mut w = HeaderWriter::new(block.first_line);
            for line in &block.lines {
                w.line(&block, line);
            }
            w.lines(b"Tag: t\r\n");
            let built = w.finish();
            let crlf_lines: Vec<&[u8]> = built
                .split(|b| *b == b'\n')
                .filter(|l| l.ends_with(b"\r"))
                .collect();
            assert!(
                crlf_lines.iter().any(|l| *l == b"Tag: t\r"),
                "{}",
                built.escape_ascii()
            );
            assert!(built.starts_with(b"NATS/1.0\r\nA: x\nB: y\r\nTag: t\r\n"));
        }
    }
}
