//! Turning a scanned [`Frame`] into a filter op, by slicing the frame's frozen bytes.

use bytes::Bytes;
use nats_edge_filters::{ClientOp, Connect, Info, Msg, Pub, ServerOp, Sub, Unsub};

use super::scan::{Frame, Verb};
use super::ProtoError;

/// Builds the client op for `frame`, where `data` holds exactly the frame's bytes (offsets in
/// `frame` are relative to its start).
pub fn build_client_op(data: &Bytes, frame: &Frame) -> Result<ClientOp, ProtoError> {
    let arg = |i: usize| data.slice(frame.arg(i));
    Ok(match frame.verb {
        Verb::Connect => ClientOp::Connect(Box::new(parse_json::<Connect>(data, frame)?)),
        Verb::Pub | Verb::Hpub => {
            let (headers, payload) = split_payload(data, frame);
            let reply_args = if frame.verb == Verb::Pub { 3 } else { 4 };
            ClientOp::Pub(Pub {
                subject: arg(0),
                reply: (frame.arg_count() == reply_args).then(|| arg(1)),
                headers,
                payload,
            })
        }
        Verb::Sub => {
            let (queue, sid) = if frame.arg_count() == 3 {
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
            // nats-server reads a max that is not a number as "no max".
            max: (frame.arg_count() == 2)
                .then(|| std::str::from_utf8(&data[frame.arg(1)]).ok()?.parse().ok())
                .flatten(),
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
    let arg = |i: usize| data.slice(frame.arg(i));
    Ok(match frame.verb {
        Verb::Info => ServerOp::Info(Box::new(parse_json::<Info>(data, frame)?)),
        Verb::Msg | Verb::Hmsg => {
            let (headers, payload) = split_payload(data, frame);
            let reply_args = if frame.verb == Verb::Msg { 4 } else { 5 };
            ServerOp::Msg(Msg {
                subject: arg(0),
                sid: arg(1),
                reply: (frame.arg_count() == reply_args).then(|| arg(2)),
                headers,
                payload,
            })
        }
        Verb::Ping => ServerOp::Ping,
        Verb::Pong => ServerOp::Pong,
        Verb::Ok => ServerOp::Ok,
        Verb::Err => {
            let text = &data[frame.arg(0)];
            let text = text
                .strip_prefix(b"'")
                .and_then(|t| t.strip_suffix(b"'"))
                .unwrap_or(text);
            ServerOp::Err(String::from_utf8_lossy(text).into_owned())
        }
        _ => return Err(ProtoError::UnknownOperation),
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    data: &Bytes,
    frame: &Frame,
) -> Result<T, ProtoError> {
    serde_json::from_slice(&data[frame.arg(0)]).map_err(|_| ProtoError::BadJson)
}

fn split_payload(data: &Bytes, frame: &Frame) -> (Option<Bytes>, Bytes) {
    let start = frame.payload_start;
    let body_start = start + frame.header_len;
    let end = start + frame.total_size;
    let headers =
        matches!(frame.verb, Verb::Hpub | Verb::Hmsg).then(|| data.slice(start..body_start));
    (headers, data.slice(body_start..end))
}
