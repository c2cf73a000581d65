//! Turning a scanned [`Frame`] into a filter op, by slicing the frame's frozen bytes.

use bytes::Bytes;
use nats_edge_filters::{ClientOp, Connect, Info, Msg, Pub, ServerOp, Sub, Unsub};

use super::connect::{merge_connect, parse_connect};
use super::scan::{Frame, Verb};
use super::ProtoError;

/// Reads a CONNECT frame after the first over the options the `earlier` ones set, as
/// nats-server decodes a later CONNECT over the options it holds.
pub fn build_connect_over(
    data: &Bytes,
    frame: &Frame,
    earlier: &Connect,
) -> Result<Connect, ProtoError> {
    let args = frame.split_args(data)?;
    merge_connect(earlier, &data[args.get(0)])
}

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

fn parse_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(json).map_err(|_| ProtoError::BadJson)
}

// Two slices of the frame: a call would cost as much as the work.
#[inline(always)]
fn split_payload(data: &Bytes, frame: &Frame) -> (Option<Bytes>, Bytes) {
    let start = frame.payload_start;
    let body_start = start + frame.header_len;
    let end = start + frame.total_size;
    let headers =
        matches!(frame.verb, Verb::Hpub | Verb::Hmsg).then(|| data.slice(start..body_start));
    (headers, data.slice(body_start..end))
}
