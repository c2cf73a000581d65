//! Turning a scanned [`Frame`] into a filter op, by slicing the frame's frozen bytes.

use bytes::Bytes;
use nats_edge_filters::{ClientOp, Connect, Info, Msg, Pub, ServerOp, Sub, Unsub};

use super::scan::{Frame, Verb};
use super::ProtoError;

/// Builds the client op for `frame`, where `data` holds exactly the frame's bytes (offsets in
/// `frame` are relative to its start).
pub fn build_client_op(data: &Bytes, frame: &Frame) -> Result<ClientOp, ProtoError> {
    let args = frame.split_args(data)?;
    let arg = |i: usize| data.slice(args.get(i));
    Ok(match frame.verb {
        Verb::Connect => ClientOp::Connect(Box::new(parse_connect(&data[args.get(0)])?)),
        Verb::Pub | Verb::Hpub => {
            let (headers, payload) = split_payload(data, frame);
            let reply_args = if frame.verb == Verb::Pub { 3 } else { 4 };
            ClientOp::Pub(Pub {
                subject: arg(0),
                reply: (args.len() == reply_args).then(|| arg(1)),
                headers,
                payload,
            })
        }
        Verb::Sub => {
            let (queue, sid) = if args.len() == 3 {
                (Some(arg(1)), arg(2))
            } else {
                (None, arg(1))
            };
            ClientOp::Sub(Sub {
                subject: arg(0),
                queue,
                sid,
            })
        }
        Verb::Unsub => ClientOp::Unsub(Unsub {
            sid: arg(0),
            // nats-server reads a max it cannot parse (not nine digits or fewer) as -1, and
            // unsubscribes at once, as for no max.
            max: (args.len() == 2)
                .then(|| super::scan::parse_size(&data[args.get(1)]).ok())
                .flatten()
                .map(|max| max as u64),
        }),
        Verb::Ping => ClientOp::Ping,
        Verb::Pong => ClientOp::Pong,
        Verb::Info => ClientOp::Info(arg(0)),
        Verb::Ok => ClientOp::Ok,
        Verb::Err => ClientOp::Err(arg(0)),
        Verb::Msg | Verb::Hmsg => return Err(ProtoError::UnknownOperation),
    })
}

/// Builds the server op for `frame`, where `data` holds exactly the frame's bytes.
pub fn build_server_op(data: &Bytes, frame: &Frame) -> Result<ServerOp, ProtoError> {
    let args = frame.split_args(data)?;
    let arg = |i: usize| data.slice(args.get(i));
    Ok(match frame.verb {
        Verb::Info => ServerOp::Info(Box::new(parse_json::<Info>(&data[args.get(0)])?)),
        Verb::Msg | Verb::Hmsg => {
            let (headers, payload) = split_payload(data, frame);
            let reply_args = if frame.verb == Verb::Msg { 4 } else { 5 };
            ServerOp::Msg(Msg {
                subject: arg(0),
                sid: arg(1),
                reply: (args.len() == reply_args).then(|| arg(2)),
                headers,
                payload,
            })
        }
        Verb::Ping => ServerOp::Ping,
        Verb::Pong => ServerOp::Pong,
        Verb::Ok => ServerOp::Ok,
        Verb::Err => {
            let text = &data[args.get(0)];
            let text = text
                .strip_prefix(b"'")
                .and_then(|t| t.strip_suffix(b"'"))
                .unwrap_or(text);
            ServerOp::Err(String::from_utf8_lossy(text).into_owned())
        }
        _ => return Err(ProtoError::UnknownOperation),
    })
}

/// Parses CONNECT JSON as leniently as nats-server (Go's encoding/json) does.
///
/// serde is stricter than Go in ways a client may trip over, and nats-server accepts all of
/// these: `null` (nothing to set), duplicate keys (the last one wins), invalid UTF-8 (replaced
/// by U+FFFD), and numbers beyond f64 in fields the server does not know. The CONNECT still
/// goes upstream as its original bytes unless a filter changes it; the parsed value is what
/// the edge itself reads. A document nested deeper than serde_json's 128 levels is checked
/// for syntax only (serde_json skips values without recursing) and read as an empty CONNECT.
pub fn parse_connect(json: &[u8]) -> Result<Connect, ProtoError> {
    if let Ok(connect) = serde_json::from_slice::<Connect>(json) {
        return Ok(connect);
    }
    let text = String::from_utf8_lossy(json);
    if text.trim() == "null" {
        return Ok(Connect::default());
    }
    // Through a Value, duplicate keys collapse to the last one, as in Go.
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        return serde_json::from_value::<Connect>(value).map_err(|_| ProtoError::BadJson);
    }
    // Syntactically valid JSON whose unknown fields hold what serde cannot represent
    // (1e400): keep the known fields, drop the rest.
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|_| ProtoError::BadJson)?;
    let mut connect = Connect::default();
    if let Ok(serde_json::Value::Object(fields)) =
        serde_json::from_str::<serde_json::Value>(&strip_unrepresentable_numbers(&text))
    {
        connect = serde_json::from_value(serde_json::Value::Object(fields)).unwrap_or_default();
    }
    Ok(connect)
}

/// Replaces numbers that overflow f64 with 0, so the rest of a document can be read.
fn strip_unrepresentable_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut number = String::new();
    let flush = |number: &mut String, out: &mut String| {
        if !number.is_empty() {
            match number.parse::<f64>() {
                Ok(v) if v.is_finite() => out.push_str(number),
                _ => out.push('0'),
            }
            number.clear();
        }
    };
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        let starts = number.is_empty() && (c.is_ascii_digit() || c == '-');
        let continues =
            !number.is_empty() && (c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'));
        if starts || continues {
            number.push(c);
            continue;
        }
        flush(&mut number, &mut out);
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    flush(&mut number, &mut out);
    out
}

fn parse_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(json).map_err(|_| ProtoError::BadJson)
}

fn split_payload(data: &Bytes, frame: &Frame) -> (Option<Bytes>, Bytes) {
    let start = frame.payload_start;
    let body_start = start + frame.header_len;
    let end = start + frame.total_size;
    let headers =
        matches!(frame.verb, Verb::Hpub | Verb::Hmsg).then(|| data.slice(start..body_start));
    (headers, data.slice(body_start..end))
}
