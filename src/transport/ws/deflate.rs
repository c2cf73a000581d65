//! permessage-deflate (RFC 7692): what the edge answers to a client's offer, how a
//! compressed client message is inflated within its bounds, and how a frame the edge sends
//! is deflated.
//!
//! The extension is accepted when the client offers it and `ws.compression` is on, always
//! with no context takeover in either direction (as nats-server does): every message is
//! inflated, and every frame the edge sends deflated, on its own. So the compressor is
//! shared by the connections a worker thread serves and inflaters are pooled per thread,
//! and a connection keeps no compression state between messages.
//!
//! A compressed message is inflated as it arrives, never past `ws.max_message_size`
//! inflated bytes (a decompression bomb is refused with 1009 before it grows past that);
//! one that does not inflate is refused with 1007. The parts of [`WsStream`] that do this
//! live here, next to the rest of the extension, so the framing in `stream.rs` reads the
//! same with or without it.

use std::cell::{Cell, RefCell};
use std::io;

use bytes::Buf;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::{binary_header, unmask, MAX_HEADER};
use super::{FrameError, WsStream};

/// The answer to the client's permessage-deflate offers (`offers`: the values of the
/// request's `Sec-WebSocket-Extensions` headers), `None` to decline the extension.
///
/// The first offer the edge can honour is taken: it always answers with no context takeover
/// both ways. An offer that asks for a server window under 15 bits (the edge's compressor
/// uses a 32 KiB window), repeats a parameter, or carries one that RFC 7692 does not define
/// is skipped; with none left the extension is declined and the upgrade goes on without it.
pub(super) fn answer<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    const ANSWER: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    const ANSWER_BITS: &str = "permessage-deflate; server_no_context_takeover; \
                               client_no_context_takeover; server_max_window_bits=15";
    offers
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| {
            let mut params = offer.split(';').map(str::trim);
            if !params
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
            {
                return None;
            }
            let mut seen: Vec<String> = Vec::new();
            let mut server_bits = false;
            for param in params {
                let (name, value) = match param.split_once('=') {
                    Some((n, v)) => (
                        n.trim().to_ascii_lowercase(),
                        Some(v.trim().trim_matches('"')),
                    ),
                    None => (param.to_ascii_lowercase(), None),
                };
                if seen.contains(&name) {
                    return None;
                }
                let bits = value
                    .and_then(|v| v.parse::<u8>().ok())
                    .filter(|b| (8..=15).contains(b));
                let ok = match name.as_str() {
                    "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
                    "server_max_window_bits" => {
                        server_bits = true;
                        bits == Some(15)
                    }
                    // The client may limit its own window: any window inflates.
                    "client_max_window_bits" => value.is_none() || bits.is_some(),
                    _ => false,
                };
                if !ok {
                    return None;
                }
                seen.push(name);
            }
            Some(if server_bits { ANSWER_BITS } else { ANSWER })
        })
}

/// The empty stored block a sender strips from the end of every compressed message
/// (RFC 7692 section 7.2.1), put back before it is inflated.
pub(super) const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// What is fed after a compressed message's last frame: the stripped tail, then a final empty
/// stored block, as nats-server appends one. A whole message then ends the deflate stream;
/// one cut off inside a block does not, and is refused rather than passed on in part.
const INFLATE_TAIL: [u8; 9] = [0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff];
/// Frames of this many bytes or fewer go out uncompressed (nats-server's
/// `wsCompressThreshold`).
pub(super) const COMPRESS_THRESHOLD: usize = 64;
/// zlib's level 2: its level 1 writes fixed codes only, and on JSON sent a third more bytes
/// than nats-server (Go's `BestSpeed`); level 2 sends fewer than either, for about twice
/// level 1's time on a long frame (and a few µs more per frame, for clearing its tables).
const DEFLATE_LEVEL: u32 = 2;
/// Inflaters kept per thread between messages.
const INFLATER_POOL: usize = 4;
/// A compressed frame's buffer larger than this is given back once the frame has gone out.
const KEEP_ZOUT: usize = 16 * 1024;

thread_local! {
    /// The buffer of the last compressed frame a connection on this thread finished
    /// sending, for the next one: a connection holds a buffer only while its frame is being
    /// written, so an idle one holds none.
    static SPARE_ZOUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// With no context takeover a frame is deflated in one go, so the connections a thread
    /// serves share one compressor, reset before each frame.
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

fn take_inflater() -> Decompress {
    INFLATERS
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Decompress::new(false))
}

fn return_inflater(mut d: Decompress) {
    d.reset(false);
    INFLATERS.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < INFLATER_POOL {
            pool.push(d);
        }
    });
}

/// The compressed message being read.
pub(super) struct Inflating {
    inflater: Decompress,
    /// Bytes inflated so far, against `max_message`.
    out: u64,
    /// Bytes of [`INFLATE_TAIL`] fed after the message's last frame.
    tail: usize,
    /// The deflate stream ended (a final block); the rest of the message is ignored.
    ended: bool,
}

/// What one step of inflating gave.
pub(super) enum Inflated {
    /// Bytes were put in the caller's buffer.
    Produced,
    /// The frame or the message is done: read the next frame header.
    Next,
    /// The frame's next bytes must be read.
    NeedInput,
}

impl Inflating {
    /// A compressed message starts: an inflater from the thread's pool.
    pub(super) fn new() -> Inflating {
        Inflating {
            inflater: take_inflater(),
            out: 0,
            tail: 0,
            ended: false,
        }
    }
}

/// Reading and writing compressed frames.
impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// One step of reading a compressed message: unmasks what arrived of its frame and
    /// inflates into the caller's buffer, at most up to `max_message` inflated bytes in all
    /// (one more is a refusal, so a decompression bomb never grows past the limit).
    pub(super) fn read_inflated(&mut self, buf: &mut ReadBuf<'_>) -> Result<Inflated, FrameError> {
        loop {
            if let Some(frame) = self.frame.as_mut() {
                let k = ((self.rbuf.len() - self.zin) as u64).min(frame.left) as usize;
                if k > 0 {
                    unmask(
                        &mut self.rbuf[self.zin..self.zin + k],
                        frame.mask,
                        frame.phase,
                    );
                    frame.phase = (frame.phase + k) % 4;
                    frame.left -= k as u64;
                    self.zin += k;
                }
                if frame.left == 0 && self.zin == 0 {
                    self.frame = None;
                    if self.fragmented {
                        return Ok(Inflated::Next);
                    }
                }
            }
            let Some(inf) = self.inflating.as_mut() else {
                return Ok(Inflated::Next);
            };
            // Every frame of the message has been read and inflated: the tail follows.
            let last = self.frame.is_none() && !self.fragmented;
            if inf.ended {
                // After a final block the rest of the message is ignored.
                self.rbuf.advance(self.zin);
                self.zin = 0;
                if last {
                    self.end_inflating();
                    return Ok(Inflated::Next);
                }
                match self.frame {
                    Some(f) if f.left > 0 => return Ok(Inflated::NeedInput),
                    _ => continue,
                }
            }
            let (input, flush) = if self.zin > 0 {
                (&self.rbuf[..self.zin], FlushDecompress::None)
            } else if last {
                (&INFLATE_TAIL[inf.tail..], FlushDecompress::Sync)
            } else {
                return Ok(Inflated::NeedInput);
            };
            let budget = self.max_message.saturating_sub(inf.out);
            let room = (buf.remaining() as u64).min(budget.saturating_add(1)) as usize;
            let out = buf.initialize_unfilled_to(room);
            let (in0, out0) = (inf.inflater.total_in(), inf.inflater.total_out());
            let status = inf
                .inflater
                .decompress(input, out, flush)
                .map_err(|_| FrameError::Inflate)?;
            let used = (inf.inflater.total_in() - in0) as usize;
            let made = (inf.inflater.total_out() - out0) as usize;
            if self.zin > 0 {
                self.rbuf.advance(used);
                self.zin -= used;
            } else {
                inf.tail += used;
            }
            inf.out += made as u64;
            if inf.out > self.max_message {
                // Refused before any of it is handed over.
                return Err(FrameError::TooBig(self.max_message));
            }
            buf.advance(made);
            if status == Status::StreamEnd {
                inf.ended = true;
            }
            if made > 0 {
                return Ok(Inflated::Produced);
            }
            if used == 0 && !inf.ended {
                // Input it cannot take, or the whole tail in without the stream ending: the
                // message stopped inside a block.
                return Err(FrameError::Inflate);
            }
        }
    }

    pub(super) fn end_inflating(&mut self) {
        if let Some(inf) = self.inflating.take() {
            return_inflater(inf.inflater);
        }
    }

    /// Deflates the first `total` bytes of the caller's slices into `zout` (empty: the last
    /// frame is out) as one compressed frame. `false`: the frame would not be smaller, and
    /// goes out uncompressed.
    pub(super) fn compress_frame(&mut self, bufs: &[io::IoSlice<'_>], total: usize) -> bool {
        let mut out = SPARE_ZOUT.with(Cell::take);
        out.clear();
        self.zsent = 0;
        // Room for the longest header, then at most the frame's own length and the tail.
        out.reserve(MAX_HEADER + total + DEFLATE_TAIL.len());
        out.resize(10, 0);
        let deflated = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            let c = c.get_or_insert_with(|| Compress::new(Compression::new(DEFLATE_LEVEL), false));
            c.reset();
            let mut left = total;
            for b in bufs {
                let mut input: &[u8] = &b[..b.len().min(left)];
                left -= input.len();
                while !input.is_empty() {
                    if out.len() == out.capacity() {
                        return false;
                    }
                    let before = c.total_in();
                    if c.compress_vec(input, &mut out, FlushCompress::None)
                        .is_err()
                    {
                        return false;
                    }
                    let used = (c.total_in() - before) as usize;
                    if used == 0 {
                        return false;
                    }
                    input = &input[used..];
                }
            }
            // A sync flush ends the data on a byte boundary with the empty stored block;
            // it is complete once it leaves room in the buffer.
            if out.len() == out.capacity()
                || c.compress_vec(&[], &mut out, FlushCompress::Sync).is_err()
                || out.len() == out.capacity()
            {
                return false;
            }
            out.ends_with(&DEFLATE_TAIL)
        });
        let payload = out.len().saturating_sub(10 + DEFLATE_TAIL.len());
        if !deflated || payload >= total {
            spare_zout(out);
            return false;
        }
        out.truncate(10 + payload);
        let mut header = [0u8; 10];
        let len = binary_header(payload, &mut header);
        header[0] |= 0x40;
        out[10 - len..10].copy_from_slice(&header[..len]);
        self.zsent = 10 - len;
        self.zout = out;
        true
    }
}

/// Keeps a compressed frame's buffer, once its frame has gone out, for the next frame sent
/// on this thread; one that grew past [`KEEP_ZOUT`] is freed.
pub(super) fn spare_zout(mut out: Vec<u8>) {
    if out.capacity() <= KEEP_ZOUT {
        out.clear();
        SPARE_ZOUT.with(|spare| spare.set(out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ws::stream::tests::client_frame;
    use crate::transport::ws::stream::{
        CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, OP_BINARY, OP_CLOSE,
        OP_CONTINUATION, OP_PING,
    };
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;

    #[test]
    fn deflate_offers() {
        // Each string is one Sec-WebSocket-Extensions header.
        let answer = |offers: &[&'static str]| super::answer(offers.iter().copied());
        let plain =
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        assert_eq!(answer(&[]), None);
        assert_eq!(answer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits"]),
            plain
        );
        assert_eq!(answer(&["Permessage-Deflate"]), plain);
        assert_eq!(
            answer(&[
                "permessage-deflate; client_max_window_bits=\"10\"; server_no_context_takeover"
            ]),
            plain
        );
        assert!(answer(&["permessage-deflate; server_max_window_bits=15"])
            .is_some_and(|a| a.ends_with("server_max_window_bits=15")));
        // Offers the edge cannot honour are skipped; a later one may be taken.
        assert_eq!(
            answer(&["permessage-deflate; server_max_window_bits=10"]),
            None
        );
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits=7"]),
            None
        );
        assert_eq!(answer(&["permessage-deflate; x=1"]), None);
        assert_eq!(
            answer(&["permessage-deflate; client_no_context_takeover; client_no_context_takeover"]),
            None
        );
        assert_eq!(
            answer(&["permessage-deflate; server_max_window_bits=9, permessage-deflate"]),
            plain
        );
        assert_eq!(answer(&["foo", "permessage-deflate"]), plain);
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&DEFLATE_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut input = data.to_vec();
        input.extend_from_slice(&DEFLATE_TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    /// A server frame read off the wire: (first byte, payload).
    async fn server_frame(client: &mut tokio::io::DuplexStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        client.read_exact(&mut h).await.unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                client.read_exact(&mut b).await.unwrap();
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                client.read_exact(&mut b).await.unwrap();
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        client.read_exact(&mut payload).await.unwrap();
        (h[0], payload)
    }

    /// Frames are held to 8 times the max_payload the client was told, as nats.go reads
    /// them: a batch larger than that leaves as several frames, compressed or not.
    #[tokio::test]
    async fn frames_are_held_to_what_nats_go_reads() {
        use tokio::io::AsyncWriteExt;

        let mut msg = b"MSG orders.new 1 100\r\n".to_vec();
        msg.extend([b'x'; 100]);
        msg.extend(b"\r\n");
        let batch = msg.repeat(200);
        for compressed in [false, true] {
            let (server_io, mut client) = tokio::io::duplex(1 << 20);
            let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
            if compressed {
                server.enable_deflate();
            }
            server.hold_frames_to(Some(1024));
            server.write_all(&batch).await.unwrap();
            server.flush().await.unwrap();
            let (mut got, mut frames) = (Vec::new(), 0);
            while got.len() < batch.len() {
                let (first, payload) = server_frame(&mut client).await;
                assert!(payload.len() <= 8 * 1024, "{} bytes", payload.len());
                assert_eq!(first & 0x40 != 0, compressed);
                if compressed {
                    got.extend(inflate(&payload));
                } else {
                    got.extend(payload);
                }
                frames += 1;
            }
            assert_eq!(got, batch);
            assert!(frames >= batch.len() / (8 * 1024), "{frames} frames");
        }
        // With a max_payload of 8 MiB or more (nats-server's largest is 64 MiB), frames
        // are held to 64 MiB, far above the batch: not split.
        let (server_io, mut client) = tokio::io::duplex(1 << 20);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        server.hold_frames_to(Some(64 << 20));
        server.write_all(&batch).await.unwrap();
        assert_eq!(server_frame(&mut client).await.1, batch);
    }

    #[tokio::test]
    async fn compressed_messages_both_ways() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(1 << 20);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        server.enable_deflate();
        let m = Some([3, 1, 4, 1]);
        // A compressed message in two frames (RSV1 on the first only), an uncompressed one,
        // then a compressed one larger than the caller's reads.
        let pub1 = b"PUB orders.new 11\r\nhello world\r\n".repeat(3);
        let z = deflate(&pub1);
        let (a, b) = z.split_at(z.len() / 2);
        let mut first = client_frame(false, OP_BINARY, a, m);
        first[0] |= 0x40;
        let mut bytes = first;
        bytes.extend(client_frame(true, OP_PING, b"p", m));
        bytes.extend(client_frame(true, OP_CONTINUATION, b, m));
        bytes.extend(client_frame(true, OP_BINARY, b"PING\r\n", m));
        let big: Vec<u8> = b"MSG x 1 5\r\nhello\r\n".repeat(2000);
        let mut f = client_frame(true, OP_BINARY, &deflate(&big), m);
        f[0] |= 0x40;
        bytes.extend(f);
        client.write_all(&bytes).await.unwrap();
        let mut want = pub1.clone();
        want.extend_from_slice(b"PING\r\n");
        want.extend_from_slice(&big);
        let mut got = vec![0u8; want.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);

        // A compressible frame goes out compressed, a small one as it is.
        let msg = b"MSG orders.new 1 11\r\nhello world\r\n".repeat(20);
        server.write_all(&msg).await.unwrap();
        server.write_all(b"PONG\r\n").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(server_frame(&mut client).await, (0x8A, b"p".to_vec()));
        let (b0, z) = server_frame(&mut client).await;
        assert_eq!(b0, 0x80 | 0x40 | OP_BINARY);
        assert!(z.len() < msg.len());
        assert_eq!(inflate(&z), msg);
        assert_eq!(
            server_frame(&mut client).await,
            (0x82, b"PONG\r\n".to_vec())
        );

        // The client's close ends the stream, and its reply is the last frame.
        let close = client_frame(true, OP_CLOSE, &1000u16.to_be_bytes(), m);
        client.write_all(&close).await.unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
        assert_eq!(
            server_frame(&mut client).await,
            (0x88, 1000u16.to_be_bytes().to_vec())
        );
    }

    #[tokio::test]
    async fn compressed_violations() {
        use tokio::io::AsyncWriteExt;

        let m = Some([5, 6, 7, 8]);
        let rsv1 = |mut f: Vec<u8>| {
            f[0] |= 0x40;
            f
        };
        let bomb = deflate(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 32 * 1024);
        let mut continued = rsv1(client_frame(false, OP_BINARY, &deflate(b"PING\r\n"), m));
        continued.extend(rsv1(client_frame(true, OP_CONTINUATION, b"", m)));
        let mut truncated = deflate(&b"PUB orders.new 11\r\nhello world\r\n".repeat(20));
        truncated.truncate(truncated.len() / 2);
        // `PUB leak 200` whose payload copies from 32 KiB back, before the message began:
        // a client keeping its compressor's window between messages, though it agreed not
        // to. Refused, as Go's inflater (nats-server) refuses it, never read as zeros.
        let too_far_back = [
            0x0a, 0x08, 0x75, 0x52, 0xc8, 0x49, 0x4d, 0xcc, 0x56, 0x30, 0x32, 0x30, 0xe0, 0xe5,
            0xa2, 0xc7, 0xfd, 0xff, 0xf4, 0xb8, 0xff, 0x9f, 0x97, 0x0b, 0x00,
        ];
        let cases: [(Vec<u8>, u16); 6] = [
            (rsv1(client_frame(true, OP_BINARY, &bomb, m)), CLOSE_TOO_BIG),
            (
                rsv1(client_frame(true, OP_PING, b"", m)),
                CLOSE_PROTOCOL_ERROR,
            ),
            (continued, CLOSE_PROTOCOL_ERROR),
            (
                rsv1(client_frame(true, OP_BINARY, &[0xff; 40], m)),
                CLOSE_INVALID_DATA,
            ),
            // Cut off inside a block: refused, as nats-server refuses it.
            (
                rsv1(client_frame(true, OP_BINARY, &truncated, m)),
                CLOSE_INVALID_DATA,
            ),
            (
                rsv1(client_frame(true, OP_BINARY, &too_far_back, m)),
                CLOSE_INVALID_DATA,
            ),
        ];
        for (bytes, code) in cases {
            let (server_io, mut client) = tokio::io::duplex(64 * 1024);
            let mut server = WsStream::new(server_io, BytesMut::new(), 64 * 1024, None);
            server.enable_deflate();
            client.write_all(&bytes).await.unwrap();
            let mut got = Vec::new();
            // Bounded: a message taken for whole would leave the read waiting for more.
            let err = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                server.read_to_end(&mut got),
            )
            .await
            .expect("refused")
            .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(got.len() <= 64 * 1024 + 1);
            let (b0, payload) = server_frame(&mut client).await;
            assert_eq!(b0, 0x88);
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{err}");
        }
    }
}
