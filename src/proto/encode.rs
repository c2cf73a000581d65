//! Writing ops back to bytes. Only ops a filter changed (or the edge made) come here; an
//! unchanged op leaves as its original bytes.
//!
//! The session writes a changed message as two pieces: its head (control line and header
//! block), encoded here by [`encode_client_head`] / [`encode_server_head`], and its payload,
//! queued as the `Bytes` it already is, so changing a subject or a header never copies the
//! payload.

use bytes::{BufMut, Bytes, BytesMut};
use nats_edge_filters::{ClientOp, ServerOp};

/// Appends a decimal number without going through `fmt`.
fn put_size(out: &mut BytesMut, n: usize) {
    put_u64(out, n as u64);
}

fn put_u64(out: &mut BytesMut, n: u64) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes the sizes, the CRLF ending the control line, and the header block of a message.
fn put_sizes_and_headers(out: &mut BytesMut, headers: Option<&[u8]>, payload_len: usize) {
    if let Some(h) = headers {
        put_size(out, h.len());
        out.put_u8(b' ');
        put_size(out, h.len() + payload_len);
    } else {
        put_size(out, payload_len);
    }
    out.put_slice(b"\r\n");
    if let Some(h) = headers {
        out.put_slice(h);
    }
}

/// What follows a message's head on the wire: the payload, then CRLF.
pub const PAYLOAD_END: &[u8] = b"\r\n";

/// Appends the wire form of a client op.
pub fn encode_client_op(op: &ClientOp, out: &mut BytesMut) {
    if let Some(payload) = encode_client_head(op, out) {
        out.put_slice(payload);
        out.put_slice(PAYLOAD_END);
    }
}

/// Appends the wire form of a client op up to its payload. For a PUB/HPUB it returns the
/// payload, which must follow, then [`PAYLOAD_END`]; every other op is written whole.
pub fn encode_client_head<'a>(op: &'a ClientOp, out: &mut BytesMut) -> Option<&'a Bytes> {
    match op {
        ClientOp::Connect(c) => {
            out.put_slice(b"CONNECT ");
            // Serialising a struct of strings, numbers and JSON values cannot fail.
            let json = serde_json::to_vec(c).unwrap_or_else(|_| b"{}".to_vec());
            out.put_slice(&json);
            out.put_slice(b"\r\n");
        }
        ClientOp::Pub(p) => {
            out.put_slice(if p.headers.is_some() {
                b"HPUB "
            } else {
                b"PUB "
            });
            out.put_slice(&p.subject);
            out.put_u8(b' ');
            if let Some(reply) = &p.reply {
                out.put_slice(reply);
                out.put_u8(b' ');
            }
            put_sizes_and_headers(out, p.headers.as_deref(), p.payload.len());
            return Some(&p.payload);
        }
        ClientOp::Sub(s) => {
            out.put_slice(b"SUB ");
            out.put_slice(&s.subject);
            out.put_u8(b' ');
            if let Some(q) = &s.queue {
                out.put_slice(q);
                out.put_u8(b' ');
            }
            out.put_slice(&s.sid);
            out.put_slice(b"\r\n");
        }
        ClientOp::Unsub(u) => {
            out.put_slice(b"UNSUB ");
            out.put_slice(&u.sid);
            if let Some(max) = u.max {
                out.put_u8(b' ');
                put_u64(out, max);
            }
            out.put_slice(b"\r\n");
        }
        ClientOp::Ping => out.put_slice(b"PING\r\n"),
        ClientOp::Pong => out.put_slice(b"PONG\r\n"),
        ClientOp::Info(json) => {
            out.put_slice(b"INFO ");
            out.put_slice(json);
            out.put_slice(b"\r\n");
        }
        ClientOp::Ok => out.put_slice(b"+OK\r\n"),
        ClientOp::Err(text) => {
            out.put_slice(b"-ERR ");
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
    }
    None
}

/// Appends the wire form of a server op.
pub fn encode_server_op(op: &ServerOp, out: &mut BytesMut) {
    if let Some(payload) = encode_server_head(op, out) {
        out.put_slice(payload);
        out.put_slice(PAYLOAD_END);
    }
}

/// Appends the wire form of a server op up to its payload. For a MSG/HMSG it returns the
/// payload, which must follow, then [`PAYLOAD_END`]; every other op is written whole.
pub fn encode_server_head<'a>(op: &'a ServerOp, out: &mut BytesMut) -> Option<&'a Bytes> {
    match op {
        ServerOp::Info(info) => {
            out.put_slice(b"INFO ");
            let json = serde_json::to_vec(info).unwrap_or_else(|_| b"{}".to_vec());
            out.put_slice(&json);
            // nats-server ends its INFO with a space before the CRLF.
            out.put_slice(b" \r\n");
        }
        ServerOp::Msg(m) => {
            out.put_slice(if m.headers.is_some() {
                b"HMSG "
            } else {
                b"MSG "
            });
            out.put_slice(&m.subject);
            out.put_u8(b' ');
            out.put_slice(&m.sid);
            out.put_u8(b' ');
            if let Some(reply) = &m.reply {
                out.put_slice(reply);
                out.put_u8(b' ');
            }
            put_sizes_and_headers(out, m.headers.as_deref(), m.payload.len());
            return Some(&m.payload);
        }
        ServerOp::Ping => out.put_slice(b"PING\r\n"),
        ServerOp::Pong => out.put_slice(b"PONG\r\n"),
        ServerOp::Ok => out.put_slice(b"+OK\r\n"),
        ServerOp::Err(text) => {
            out.put_slice(b"-ERR '");
            out.put_slice(text.as_bytes());
            out.put_slice(b"'\r\n");
        }
    }
    None
}
