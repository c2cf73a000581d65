//! Codec tests: every stream is also fed split at every byte boundary, and must decode to the
//! same frames as when it arrives whole.

use bytes::{Bytes, BytesMut};
use nats_edge_filters::{ClientOp, ServerOp};

use super::*;

const LIMITS: ScanLimits = ScanLimits {
    max_control_line: 4096,
    max_payload: 1024 * 1024,
    headers: true,
};

/// What decoding a whole stream yields: each frame's verb and bytes, then the error or the
/// number of bytes left over.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<(Verb, Vec<u8>)>,
    end: Result<usize, ProtoError>,
}

fn decode_chunks(chunks: &[&[u8]], dir: Direction) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match scan(&buf, dir, &LIMITS) {
                Ok(Some(frame)) => {
                    assert!(frame.len <= buf.len());
                    let bytes = buf.split_to(frame.len);
                    frames.push((frame.verb, bytes.to_vec()));
                }
                Ok(None) => break,
                Err(e) => {
                    return Decoded {
                        frames,
                        end: Err(e),
                    }
                }
            }
        }
    }
    Decoded {
        frames,
        end: Ok(buf.len()),
    }
}

/// Decodes `stream` whole and split at every byte, and checks all agree.
fn decode_every_split(stream: &[u8], dir: Direction) -> Decoded {
    let whole = decode_chunks(&[stream], dir);
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(
            decode_chunks(&[a, b], dir),
            whole,
            "split at {cut} of {stream:?}"
        );
    }
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(
        decode_chunks(&bytewise, dir),
        whole,
        "byte by byte: {stream:?}"
    );
    whole
}

fn verbs(d: &Decoded) -> Vec<Verb> {
    d.frames.iter().map(|(v, _)| *v).collect()
}

const C: Direction = Direction::ClientToServer;
const S: Direction = Direction::ServerToClient;

#[test]
fn client_pipeline_frames_at_every_split() {
    let stream = b"CONNECT {\"verbose\":false,\"headers\":true}\r\nPING\r\nsub foo.* q 1\r\n\
PUB foo.bar reply 5\r\nhello\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nunsub\t1 10\r\nPONG\r\n\
PUB  x \t 0\r\n\r\nPING\n";
    let d = decode_every_split(stream, C);
    assert_eq!(
        verbs(&d),
        [
            Verb::Connect,
            Verb::Ping,
            Verb::Sub,
            Verb::Pub,
            Verb::Hpub,
            Verb::Unsub,
            Verb::Pong,
            Verb::Pub,
            Verb::Ping
        ]
    );
    assert_eq!(d.end, Ok(0));
    let joined: Vec<u8> = d.frames.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(joined, stream, "frames cover the stream exactly");
}

#[test]
fn server_pipeline_frames_at_every_split() {
    let stream = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nMSG foo 1 5\r\nhello\r\n\
HMSG foo 2 reply 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Invalid Subject'\r\n\
msg a 3 r 0\r\n\r\n";
    let d = decode_every_split(stream, S);
    assert_eq!(
        verbs(&d),
        [
            Verb::Info,
            Verb::Msg,
            Verb::Hmsg,
            Verb::Ping,
            Verb::Pong,
            Verb::Ok,
            Verb::Err,
            Verb::Msg
        ]
    );
    assert_eq!(d.end, Ok(0));
}

#[test]
fn payloads_are_skipped_by_length_not_scanned() {
    let stream = b"PUB a 11\r\n\r\nPUB b 1\r\n\r\nPING\r\n";
    let d = decode_every_split(stream, C);
    assert_eq!(verbs(&d), [Verb::Pub, Verb::Ping]);
}

#[test]
fn errors_match_nats_server() {
    let cases: &[(&[u8], ProtoError)] = &[
        (b"FOO\r\n", ProtoError::UnknownOperation),
        (b"PI\tNG\r\n", ProtoError::UnknownOperation),
        (b"\r\nPING\r\n", ProtoError::UnknownOperation),
        (b" PING\r\n", ProtoError::UnknownOperation),
        (b"PUBX foo 1\r\nx\r\n", ProtoError::UnknownOperation),
        (b"PUB\r\n", ProtoError::UnknownOperation),
        (b"UNSUB\r\n", ProtoError::UnknownOperation),
        (b"MSG foo 1 2\r\nhi\r\n", ProtoError::UnknownOperation),
        (b"PUB foo 5\r\nhelloX\r\n", ProtoError::UnknownOperation),
        (b"PUB foo 2\r\nhi\nPING\r\n", ProtoError::UnknownOperation),
        // Refused at the first wrong byte, with no byte after it, as nats-server does.
        (b"PUB foo 5\r\nhelloX", ProtoError::UnknownOperation),
        (b"PUB foo 5\r\nhello\n", ProtoError::UnknownOperation),
        (b"PUB foo 5\r\nhello\rX", ProtoError::UnknownOperation),
        // nats-server wants a blank after `-ERR` (not after CONNECT or INFO).
        (b"-ERRX", ProtoError::UnknownOperation),
        (b"-ERR'x'\r\n", ProtoError::UnknownOperation),
        (b"PUB foo x\r\nhello\r\n", ProtoError::BadArguments),
        (b"PUB foo -1\r\n", ProtoError::BadArguments),
        (b"PUB 2\r\nhi\r\n", ProtoError::BadArguments),
        (b"PUB foo bar baz 9999999\r\n", ProtoError::BadArguments),
        (b"HPUB foo 20 14\r\n", ProtoError::BadArguments),
        (b"PUB foo 1048577\r\n", ProtoError::MaxPayload),
    ];
    for (input, expected) in cases {
        let d = decode_every_split(input, C);
        assert_eq!(
            d.end,
            Err(*expected),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

/// Frames no filter looks at are only framed; their argument count is checked when an op is
/// built from them, with the same silent close nats-server gives.
#[test]
fn argument_counts_are_checked_when_split() {
    let cases: &[&[u8]] = &[
        b"PUB foo bar baz 2\r\nhi\r\n",
        b"SUB foo\r\n",
        b"SUB foo bar baz qux 1\r\n",
        b"UNSUB 1 2 3\r\n",
        b"HPUB a b c 1 2\r\nxy\r\n",
    ];
    for input in cases {
        let frame = scan(input, C, &LIMITS).unwrap().unwrap();
        assert_eq!(frame.len, input.len());
        assert_eq!(
            frame.split_args(input),
            Err(ProtoError::BadArguments),
            "{input:?}"
        );
        let data = Bytes::copy_from_slice(input);
        assert_eq!(
            build_client_op(&data, &frame),
            Err(ProtoError::BadArguments)
        );
    }
}

#[test]
fn control_line_limit_counts_arguments_and_applies_before_the_newline() {
    let at_limit = [b"SUB ".as_slice(), &[b'a'; 4094], b" 1\r\n"].concat();
    assert_eq!(verbs(&decode_chunks(&[&at_limit], C)), [Verb::Sub]);
    let over = [b"SUB ".as_slice(), &[b'a'; 4095], b" 1\r\n"].concat();
    assert_eq!(
        decode_chunks(&[&over], C).end,
        Err(ProtoError::MaxControlLine)
    );
    let unterminated = [b"SUB ".as_slice(), &[b'a'; 5000]].concat();
    assert_eq!(
        decode_chunks(&[&unterminated], C).end,
        Err(ProtoError::MaxControlLine)
    );
}

/// A CR anywhere but right before the LF of a line with arguments is refused: nats-server
/// would read such a line differently from the edge (it drops the byte before the LF and
/// splits on blanks only), which would let a client hide ops inside a "payload".
#[test]
fn stray_cr_in_arguments_is_refused() {
    let cases: &[&[u8]] = &[
        b"PUB foo\r 312\n",
        b"PUB foo 31\r2\n",
        b"SUB foo\r 12\n",
        b"PUB allowed\r.x.y 5\r\nhello\r\n",
        b"HPUB foo\r 12 14\n",
        b"UNSUB 1\r 2\r\n",
    ];
    for input in cases {
        assert_eq!(
            decode_every_split(input, C).end,
            Err(ProtoError::BadArguments),
            "{input:?}"
        );
    }
    let server: &[&[u8]] = &[b"MSG foo 1\r 5\n"];
    for input in server {
        assert_eq!(
            decode_every_split(input, S).end,
            Err(ProtoError::BadArguments),
            "{input:?}"
        );
    }
}

/// A verb, its blank and then the line's end: nats-server reads the next line as the
/// arguments, so the edge refuses it rather than frame it as two ops.
#[test]
fn a_line_of_blanks_after_a_verb_is_refused() {
    for input in [
        &b"UNSUB \nPING\r\n"[..],
        b"SUB \norders.secret 1\r\n",
        b"sub\t \r\n",
        b"PUB \nfoo 1\r\na\r\n",
        b"HPUB  \n",
    ] {
        assert_eq!(
            decode_every_split(input, C).end,
            Err(ProtoError::BadArguments),
            "{input:?}"
        );
    }
    assert_eq!(
        decode_every_split(b"MSG \n", S).end,
        Err(ProtoError::BadArguments)
    );
}

#[test]
fn endless_blanks_after_a_verb_hit_the_control_line_limit() {
    for verb in [&b"PUB"[..], b"SUB\t", b"CONNECT"] {
        let input = [verb, &[b' '; 5000][..]].concat();
        assert_eq!(
            decode_chunks(&[&input], C).end,
            Err(ProtoError::MaxControlLine),
            "{verb:?}"
        );
        // The same with the line complete, in one read or split anywhere.
        let line = [&input[..], b"foo 1\r\na\r\n"].concat();
        assert_eq!(
            decode_every_split(&line, C).end,
            Err(ProtoError::MaxControlLine),
            "{verb:?}"
        );
    }
    // All blanks but the first count: this line is exactly at the limit.
    let at_limit = [&b"SUB"[..], &[b' '; 4090], b"foo 1\r\n"].concat();
    assert_eq!(decode_chunks(&[&at_limit], C).end, Ok(0));
}

/// nats-server skips what follows `PING` and `PONG` up to the newline without counting it
/// against `max_control_line`: such a line is framed whatever its length, and a reader that
/// holds an incomplete one may keep only its verb (`ignored_line_verb_len`).
#[test]
fn a_ping_or_pong_line_of_any_length_is_framed() {
    for verb in [&b"PING"[..], b"pong", b"PINGX"] {
        let line = [verb, &[b'x'; 5000][..], b"\r\n"].concat();
        let d = decode_every_split(&line, C);
        assert_eq!(d.end, Ok(0), "{verb:?}");
        assert_eq!(d.frames.len(), 1, "{verb:?}");
        assert_eq!(scan(&line[..line.len() - 1], C, &LIMITS), Ok(None));
        assert_eq!(ignored_line_verb_len(&line, C), Some(4), "{verb:?}");
    }
    assert_eq!(ignored_line_verb_len(b"+OK ...", S), Some(3));
    assert_eq!(ignored_line_verb_len(b"PING x", S), Some(4));
    // Not yet known to be such a line, or another verb.
    for partial in [
        &b"PIN"[..],
        b"PING",
        b"PUB foo 1",
        b"CONNECT {",
        b"-ERR 'x'",
    ] {
        assert_eq!(ignored_line_verb_len(partial, C), None, "{partial:?}");
    }
}

#[test]
fn ping_tail_is_ignored_like_nats_server() {
    let d = decode_every_split(b"PINGX\r\nping foo\r\nPING\r\r\n", C);
    assert_eq!(verbs(&d), [Verb::Ping, Verb::Ping, Verb::Ping]);
}

fn client_ops(stream: &[u8]) -> Vec<ClientOp> {
    let data = Bytes::copy_from_slice(stream);
    let mut at = 0;
    let mut ops = Vec::new();
    while let Some(frame) = scan(&data[at..], C, &LIMITS).unwrap() {
        let bytes = data.slice(at..at + frame.len);
        ops.push(build_client_op(&bytes, &frame).unwrap());
        at += frame.len;
    }
    ops
}

#[test]
fn client_ops_are_built_and_reencoded() {
    let stream = b"PUB foo.bar r.1 5\r\nhello\r\nHPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB s q 7\r\nUNSUB 7 3\r\nSUB t 8\r\nUNSUB 8\r\n";
    let ops = client_ops(stream);
    let ClientOp::Pub(p) = &ops[0] else { panic!() };
    assert_eq!(
        (&p.subject[..], p.reply.as_deref(), &p.payload[..]),
        (&b"foo.bar"[..], Some(&b"r.1"[..]), &b"hello"[..])
    );
    let ClientOp::Pub(h) = &ops[1] else { panic!() };
    assert_eq!(h.headers.as_deref(), Some(&b"NATS/1.0\r\n\r\n"[..]));
    assert_eq!(&h.payload[..], b"hi");
    let mut out = BytesMut::new();
    for op in &ops {
        encode_client_op(op, &mut out);
    }
    assert_eq!(
        &out[..],
        &stream[..],
        "canonical input re-encodes byte for byte"
    );
}

#[test]
fn server_ops_are_built_and_reencoded() {
    let stream = b"MSG foo 1 r 5\r\nhello\r\nHMSG h 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Invalid Subject'\r\n";
    let data = Bytes::copy_from_slice(stream);
    let mut at = 0;
    let mut out = BytesMut::new();
    while let Some(frame) = scan(&data[at..], S, &LIMITS).unwrap() {
        let op = build_server_op(&data.slice(at..at + frame.len), &frame).unwrap();
        if let ServerOp::Err(text) = &op {
            assert_eq!(text, "Invalid Subject");
        }
        encode_server_op(&op, &mut out);
        at += frame.len;
    }
    assert_eq!(&out[..], &stream[..]);
}

#[test]
fn connect_json_errors_are_silent_closes() {
    for bad in [
        &b"CONNECT {bad\r\n"[..],
        b"CONNECT\r\n",
        b"CONNECT {\"verbose\":\"x\"}\r\n",
    ] {
        let frame = scan(bad, C, &LIMITS).unwrap().unwrap();
        let data = Bytes::copy_from_slice(bad);
        assert_eq!(build_client_op(&data, &frame), Err(ProtoError::BadJson));
        assert_eq!(ProtoError::BadJson.server_error_text(), None);
    }
}

/// nats-server reads a client's JSON argument from the first byte after the verb's blanks,
/// even a newline: `CONNECT` then the JSON on the next line is a CONNECT. What the server
/// sends ends at its first newline, so every op the edge forwards to a client is one line.
#[test]
fn a_connect_whose_json_starts_on_the_next_line() {
    let stream = b"CONNECT\n{\"verbose\":false}\r\nPING\r\n";
    let d = decode_every_split(stream, C);
    assert_eq!(verbs(&d), [Verb::Connect, Verb::Ping]);
    let frame = scan(stream, C, &LIMITS).unwrap().unwrap();
    let op = build_client_op(&Bytes::copy_from_slice(stream), &frame).unwrap();
    assert!(matches!(op, ClientOp::Connect(c) if !c.is_verbose()));
    let frame = scan(b"INFO\nPONG\r\n", S, &LIMITS).unwrap().unwrap();
    assert_eq!(frame.len, 5);
}

#[test]
fn connect_is_as_lenient_as_nats_server() {
    use super::connect::parse_connect;
    assert!(parse_connect(b"null").unwrap().is_verbose());
    let dup = parse_connect(br#"{"verbose":true,"verbose":false}"#).unwrap();
    assert!(!dup.is_verbose(), "the last key wins");
    let big = parse_connect(br#"{"verbose":false,"x":1e400,"name":"n","ok":true}"#).unwrap();
    // A field nats-server declares fails its decode with such a value, so it fails here.
    for json in [&br#"{"new_account":1e400}"#[..], br#"{"Account":1e400}"#] {
        assert_eq!(parse_connect(json).err(), Some(ProtoError::BadJson));
    }
    assert_eq!(big.name.as_deref(), Some("n"));
    assert!(!big.is_verbose());
    assert_eq!(big.extra.get("ok"), Some(&serde_json::json!(true)));
    let utf = parse_connect(b"{\"name\":\"a\xffb\"}").unwrap();
    assert_eq!(utf.name.as_deref(), Some("a\u{fffd}b"));
    for bad in [&b"{bad"[..], b"", b"{\"verbose\":\"x\"}", b"[1,2"] {
        assert_eq!(parse_connect(bad), Err(ProtoError::BadJson), "{bad:?}");
    }
}

#[test]
fn deeply_nested_connect_is_bounded_not_a_crash() {
    use super::connect::parse_connect;
    // Accepted like nats-server (it nests 10,000 deep), without recursing on the stack.
    for depth in [200usize, 4000, 100_000] {
        let json = format!(
            "{{\"verbose\":false,\"x\":{}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(parse_connect(json.as_bytes()).is_ok(), "depth {depth}");
    }
    let unbalanced = format!("{{\"x\":{}", "[".repeat(100_000));
    assert_eq!(
        parse_connect(unbalanced.as_bytes()),
        Err(ProtoError::BadJson)
    );
}

#[test]
fn arguments_split_at_every_separator_kind_and_length() {
    // Long and short arguments, separated by runs of spaces and tabs, around the eight-byte
    // steps of the splitter; other control bytes stay in arguments.
    for len in 1..20 {
        let arg = "a".repeat(len);
        let line = format!("SUB {arg}\t \t{arg}.\x01x  {len}\r\n");
        let frame = scan(line.as_bytes(), C, &LIMITS).unwrap().unwrap();
        let split = frame.split_args(line.as_bytes()).unwrap();
        let args: Vec<&[u8]> = split.iter().map(|r| &line.as_bytes()[r]).collect();
        let second = format!("{arg}.\x01x");
        assert_eq!(
            args,
            [
                arg.as_bytes(),
                second.as_bytes(),
                len.to_string().as_bytes()
            ],
            "{line:?}"
        );
    }
}

#[test]
fn unsub_max_reads_like_nats_server() {
    // nats-server's parseSize: digits only, nine at most; anything else is -1, which
    // unsubscribes at once (as no max does).
    for (line, max) in [
        (&b"UNSUB 1 5\r\n"[..], Some(5)),
        (b"UNSUB 1 +5\r\n", None),
        (b"UNSUB 1 x\r\n", None),
        (b"UNSUB 1 1234567890\r\n", None),
        (b"UNSUB 1\r\n", None),
    ] {
        let ops = client_ops(line);
        let ClientOp::Unsub(unsub) = &ops[0] else {
            panic!("{line:?}")
        };
        assert_eq!(unsub.max, max, "{line:?}");
    }
}
