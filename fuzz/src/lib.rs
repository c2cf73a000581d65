//! The decode loop shared by the fuzz targets and by `tests/fuzz_regressions.rs`, which
//! replays the kept inputs in `fuzz/regressions/` as an ordinary test.
//!
//! It feeds bytes to the frame scanner the way a forwarder does, one frame after another,
//! builds every complete frame into an op, re-encodes it and checks the invariants a
//! forwarder relies on. Any panic, in the decoder or in an assertion here, is a finding.

use bytes::{Bytes, BytesMut};
use nats_edge::filters::{ClientOp, ServerOp};
use nats_edge::proto::{
    build_client_op, build_server_op, encode_client_op, encode_server_op, plain_messages, scan,
    Direction, Frame, ScanLimits,
};

/// The limits the fuzz targets scan with.
pub const LIMITS: ScanLimits = ScanLimits {
    max_control_line: 4096,
    max_payload: 1 << 20,
    headers: true,
};

/// Limits for re-scanning an encoded op: re-serialised JSON may be longer than the original.
const NO_LIMITS: ScanLimits = ScanLimits {
    max_control_line: usize::MAX,
    max_payload: u64::MAX,
    headers: true,
};

/// What one decode loop got through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Complete frames scanned.
    pub frames: usize,
    /// Bytes those frames covered.
    pub consumed: usize,
}

/// Decodes `input` as a stream sent in direction `dir` until it ends, is incomplete, or is
/// refused.
pub fn decode_stream(dir: Direction, input: &[u8]) -> Decoded {
    let mut rest = input;
    let mut frames = 0;
    // Where the run of plain messages `plain_messages` found at the front of `rest` ends, and
    // how many messages are left in it: `scan` must frame exactly those, as messages.
    let mut run: Option<(usize, u64)> = None;
    while let Ok(Some(frame)) = scan(rest, dir, &LIMITS) {
        let (run_len, run_left) = *run.get_or_insert_with(|| plain_messages(rest, dir, &LIMITS));
        if run_left > 0 {
            assert!(
                frame.is_message() && frame.len <= run_len,
                "a run of plain messages holds a {:?} frame of {} bytes",
                frame.verb,
                frame.len
            );
            run = Some((run_len - frame.len, run_left - 1));
            if run_left == 1 {
                assert_eq!(frame.len, run_len, "a run of plain messages ends mid-frame");
            }
        } else {
            assert_eq!(run_len, 0, "an empty run of plain messages covers bytes");
            run = None;
        }
        check_frame(rest, &frame);
        check_prefixes(rest, &frame, dir);
        let data = Bytes::copy_from_slice(&rest[..frame.len]);
        match dir {
            Direction::ClientToServer => {
                if let Ok(op) = build_client_op(&data, &frame) {
                    let mut out = BytesMut::new();
                    encode_client_op(&op, &mut out);
                    let (again, frame) = rescan(&out, dir);
                    let rebuilt = build_client_op(&again, &frame)
                        .unwrap_or_else(|e| panic!("re-encoded {out:?} does not build: {e}"));
                    let same = match (&op, &rebuilt) {
                        // JSON is re-serialised: equal up to float precision (see same_json).
                        (ClientOp::Connect(a), ClientOp::Connect(b)) => same_json(a, b),
                        _ => op == rebuilt,
                    };
                    assert!(
                        same,
                        "client op changed by a round trip via {out:?}:\n{op:?}\n{rebuilt:?}"
                    );
                }
            }
            Direction::ServerToClient => {
                if let Ok(op) = build_server_op(&data, &frame) {
                    let mut out = BytesMut::new();
                    encode_server_op(&op, &mut out);
                    let (again, frame) = rescan(&out, dir);
                    let rebuilt = build_server_op(&again, &frame)
                        .unwrap_or_else(|e| panic!("re-encoded {out:?} does not build: {e}"));
                    let same = match (&op, &rebuilt) {
                        (ServerOp::Info(a), ServerOp::Info(b)) => same_json(a, b),
                        _ => op == rebuilt,
                    };
                    assert!(
                        same,
                        "server op changed by a round trip via {out:?}:\n{op:?}\n{rebuilt:?}"
                    );
                }
            }
        }
        rest = &rest[frame.len..];
        frames += 1;
    }
    Decoded {
        frames,
        consumed: input.len() - rest.len(),
    }
}

/// Whether two JSON documents (CONNECT or INFO) agree after a round trip. Strings, integers
/// and structure must be identical; floats may differ in the last bits, because serde_json's
/// default float parser is not correctly rounded, so re-parsing a re-serialised float can land
/// one ULP away (kept as `regressions/client/crash-connect-float-precision`).
fn same_json<T: ?Sized + serde::Serialize>(a: &T, b: &T) -> bool {
    let (a, b) = (serde_json::to_value(a), serde_json::to_value(b));
    match (a, b) {
        (Ok(a), Ok(b)) => json_close(&a, &b),
        _ => false,
    }
}

fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

/// A frame lies inside the bytes it was scanned from, and its parts inside the frame.
fn check_frame(buf: &[u8], frame: &Frame) {
    assert!(frame.len > 0, "empty frame");
    assert!(
        frame.len <= buf.len(),
        "frame of {} bytes from {} bytes",
        frame.len,
        buf.len()
    );
    assert!(frame.line_start <= frame.line_end && frame.line_end < frame.payload_start);
    if let Ok(args) = frame.split_args(buf) {
        for arg in args.iter() {
            assert!(
                arg.start <= arg.end && arg.end <= frame.line_end,
                "argument {arg:?} outside the control line"
            );
        }
    }
    if frame.is_message() {
        assert!(frame.header_len <= frame.total_size);
        assert!(frame.total_size as u64 <= LIMITS.max_payload);
        assert_eq!(frame.payload_start + frame.total_size + 2, frame.len);
        assert_eq!(&buf[frame.len - 2..frame.len], b"\r\n");
    } else {
        assert_eq!(frame.payload_start, frame.len);
    }
}

/// A complete frame cut short anywhere is only incomplete: the scanner asks for more bytes
/// rather than judging a frame it has not seen whole. A handful of cut points keeps this
/// cheap for large payloads.
fn check_prefixes(buf: &[u8], frame: &Frame, dir: Direction) {
    let len = frame.len;
    let cuts = [
        1,
        len / 2,
        len.saturating_sub(2),
        len - 1,
        frame.payload_start.saturating_sub(1),
        frame.payload_start,
    ];
    for cut in cuts {
        if cut == 0 || cut >= len {
            continue;
        }
        match scan(&buf[..cut], dir, &LIMITS) {
            Ok(None) => {}
            other => panic!(
                "the first {cut} of {len} bytes of a valid frame scan as {other:?}, not incomplete"
            ),
        }
    }
}

/// Scans an encoded op, which must be exactly one complete frame.
fn rescan(encoded: &[u8], dir: Direction) -> (Bytes, Frame) {
    let frame = match scan(encoded, dir, &NO_LIMITS) {
        Ok(Some(frame)) => frame,
        other => panic!("re-encoded {encoded:?} scans as {other:?}"),
    };
    assert_eq!(
        frame.len,
        encoded.len(),
        "re-encoded {encoded:?} is not one frame"
    );
    (Bytes::copy_from_slice(encoded), frame)
}

/// Looks for a PROXY protocol header (v1 or v2) at the start of `input`, as a listener with
/// `proxy_protocol = true` does before anything else reaches the edge, and checks what a
/// listener relies on: a complete header lies inside the input (v1 within 107 bytes, v2
/// within 16 bytes and its length field), every shorter cut of it is incomplete or refused
/// alike (split reads), and the addresses it names survive being sent on upstream (encoded
/// as v1 and as v2, and read back).
pub fn proxy_header(input: &[u8]) -> Option<usize> {
    use nats_edge::transport::proxy_protocol::{encode_v1, encode_v2, parse, Parsed, ProxyAddrs};
    let Ok(Parsed::Complete { len, addrs }) = parse(input) else {
        return None;
    };
    assert!(
        len <= input.len(),
        "a header of {len} bytes in {}",
        input.len()
    );
    if input.starts_with(b"PROXY") {
        assert!(len <= 107, "a v1 line of {len} bytes");
    } else {
        assert!(len >= 16, "a v2 header of {len} bytes");
    }
    for cut in 0..len {
        assert_eq!(
            parse(&input[..cut]),
            Ok(Parsed::Incomplete),
            "after {cut} of its {len} bytes"
        );
    }
    assert_eq!(parse(&input[..len]), Ok(Parsed::Complete { len, addrs }));
    for encoded in [encode_v1(addrs), encode_v2(addrs)] {
        let Ok(Parsed::Complete { len, addrs: again }) = parse(&encoded) else {
            panic!("the header sent upstream does not parse: {encoded:?}");
        };
        assert_eq!(len, encoded.len());
        let canonical = |a: ProxyAddrs| (a.src.ip().to_canonical(), a.src.port());
        assert_eq!(
            again.map(canonical),
            addrs.map(canonical),
            "the client's address does not survive the header sent upstream"
        );
    }
    Some(len)
}
