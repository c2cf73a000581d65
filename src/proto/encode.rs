//! Writing ops back to bytes. Only ops a filter changed (or the edge made) come here; an
//! unchanged op leaves as its original bytes.

use bytes::{BufMut, BytesMut};
use nats_edge_filters::{ClientOp, ServerOp};

/// Appends a decimal number without going through `fmt`.
fn put_size(out: &mut BytesMut, n: usize) {
    put_u64(out, n as u64);
}

fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// Writes the header/payload section of a message: sizes, CRLF, headers, payload, CRLF.
fn put_message_tail(out: &mut BytesMut, headers: Option<&[u8]>, payload: &[u8]) {
    if let Some(h) = headers {
        put_size(out, h.len());
        out.put_u8(b' ');
        put_size(out, h.len() + payload.len());
    } else {
        put_size(out, payload.len());
    }
    out.put_slice(b"\r\n");
    if let Some(h) = headers {
        out.put_slice(h);
    }
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

/// Appends the wire form of a client op.
pub fn encode_client_op(op: &ClientOp, out: &mut BytesMut) {
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
            put_message_tail(out, p.headers.as_deref(), &p.payload);
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
}

/// Appends the wire form of a server op.
pub fn encode_server_op(op: &ServerOp, out: &mut BytesMut) {
    match op {
        ServerOp::Info(info) => {
            out.put_slice(b"INFO ");
            let json = serde_json::to_vec(info).unwrap_or_else(|_| b"{}".to_vec());
            out.put_slice(&json);
            out.put_slice(b"\r\n");
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
            put_message_tail(out, m.headers.as_deref(), &m.payload);
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
}
