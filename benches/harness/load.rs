//! A raw-protocol load generator: blocking sockets, preformatted frames, big writes, and a
//! subscriber that parses only what it must (control lines; payloads are skipped by length).
//! It is much cheaper per message than nats-server, so it is never what a run measures.
//!
//! It speaks NATS over plain TCP, over TLS (TLS first, rustls; every 64 KiB batch of `PUB`s
//! is one write, so it leaves in full 16 KiB records) and over WebSocket (a hand-rolled frame
//! writer: every batch is one masked binary frame; the server's frames are unwrapped into
//! one byte stream), with or without permessage-deflate. With it, every batch is deflated
//! once before the run and the same compressed frame is sent again and again (with no
//! context takeover a message compresses the same every time), so publishing costs no
//! compression; the server's compressed frames are inflated as they arrive.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use rustls::pki_types::ServerName;

const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Socket reads of the TLS and WebSocket layers are this large, so neither pays a system
/// call per 4 KiB TLS read or per frame header.
const SOCKET_READ: usize = 256 * 1024;

/// How a load connection reaches its target.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    /// TLS before anything else: nats-server's `handshake_first`, the edge's
    /// `handshake_first = true`, HAProxy's `bind ... ssl`.
    TlsFirst(Arc<rustls::ClientConfig>),
    /// WebSocket, binary frames, path `/`.
    Ws,
    /// WebSocket with permessage-deflate, no context takeover either way: every batch of
    /// `PUB`s leaves as one compressed frame, and compressed frames from the server are
    /// inflated.
    WsDeflate,
}

/// Where a load connection goes, and how.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl Endpoint {
    pub fn tcp(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            transport: Transport::Tcp,
        }
    }

    fn open(&self) -> io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(self.addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(match &self.transport {
            Transport::Tcp => Box::new(tcp),
            Transport::TlsFirst(config) => {
                let name = ServerName::from(self.addr.ip());
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(io::Error::other)?;
                Box::new(rustls::StreamOwned::new(conn, BufSock::new(tcp)))
            }
            Transport::Ws => Box::new(WsConn::upgrade(BufSock::new(tcp), self.addr, false)?),
            Transport::WsDeflate => Box::new(WsConn::upgrade(BufSock::new(tcp), self.addr, true)?),
        })
    }
}

/// A byte stream to a target.
trait Stream: Read + Write + Send {
    /// Writes a batch of ops: compressed when the stream can and the batch has been.
    fn send_batch(&mut self, batch: &Batch) -> io::Result<()> {
        self.write_all(&batch.plain)
    }

    /// Bytes read from and written to the socket so far, where they are counted.
    fn wire_bytes(&self) -> Option<(u64, u64)> {
        None
    }
}

impl Stream for TcpStream {}
impl Stream for rustls::StreamOwned<rustls::ClientConnection, BufSock> {}

/// A batch of preformatted ops, and, for a stream with permessage-deflate, the same bytes
/// deflated once as one message (raw deflate, the `00 00 ff ff` tail removed).
#[derive(Clone)]
pub struct Batch {
    pub plain: Vec<u8>,
    deflated: Option<Vec<u8>>,
}

impl Batch {
    /// `plain`, deflated up front when `compress` (zlib's default level, as browsers use).
    pub fn new(plain: Vec<u8>, compress: bool) -> Batch {
        let deflated = compress.then(|| {
            let mut c = Compress::new(Compression::default(), false);
            let mut out = Vec::with_capacity(plain.len() + 64);
            while c.total_in() < plain.len() as u64 {
                out.reserve(plain.len() / 2 + 64);
                let at = c.total_in() as usize;
                c.compress_vec(&plain[at..], &mut out, FlushCompress::None)
                    .expect("deflating a batch");
            }
            loop {
                out.reserve(64);
                c.compress_vec(&[], &mut out, FlushCompress::Sync)
                    .expect("deflating a batch");
                if out.ends_with(&DEFLATE_TAIL) && out.len() < out.capacity() {
                    break;
                }
            }
            out.truncate(out.len() - DEFLATE_TAIL.len());
            out
        });
        Batch { plain, deflated }
    }
}

/// The empty stored block that ends a sync flush, which permessage-deflate leaves off the
/// wire (RFC 7692 section 7.2.1) and puts back before inflating.
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A socket read through a large buffer: rustls reads at most 4 KiB at a time, and the
/// WebSocket reader reads frame headers a few bytes at a time.
struct BufSock {
    tcp: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes read from and written to the socket.
    read_total: u64,
    written_total: u64,
}

impl BufSock {
    fn new(tcp: TcpStream) -> BufSock {
        BufSock {
            tcp,
            buf: vec![0; SOCKET_READ],
            start: 0,
            end: 0,
            read_total: 0,
            written_total: 0,
        }
    }

    /// Writes all of `buf` to the socket.
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.tcp.write_all(buf)?;
        self.written_total += buf.len() as u64;
        Ok(())
    }
}

impl Read for BufSock {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if out.len() >= self.buf.len() {
                let n = self.tcp.read(out)?;
                self.read_total += n as u64;
                return Ok(n);
            }
            self.start = 0;
            self.end = self.tcp.read(&mut self.buf)?;
            self.read_total += self.end as u64;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl Write for BufSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tcp.write(buf)?;
        self.written_total += n as u64;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.tcp.write_vectored(bufs)?;
        self.written_total += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The client side of a WebSocket carrying NATS: every write is one masked binary frame;
/// reads return the payloads of the server's data frames as one byte stream, compressed
/// messages inflated.
struct WsConn {
    sock: BufSock,
    /// Payload bytes left in the uncompressed data frame being read.
    frame_left: u64,
    /// Where a frame is built before it is written.
    out: Vec<u8>,
    /// permessage-deflate was negotiated.
    deflate: Option<Inflate>,
}

/// The compressed message being read from the server.
struct Inflate {
    /// Reset before every message: the server keeps no context between messages.
    inflater: Decompress,
    /// The message's compressed bytes (every frame's payload, then [`DEFLATE_TAIL`]).
    zmsg: Vec<u8>,
    /// How much of `zmsg` has been inflated.
    zpos: usize,
    /// The message's first frame has been read, not its last.
    collecting: bool,
    /// The message is complete and being inflated into the reader's buffers.
    inflating: bool,
}

impl Inflate {
    /// Inflates the next bytes of the message into `out`; `None` once it is done.
    fn next(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let (in0, out0) = (self.inflater.total_in(), self.inflater.total_out());
            let status = self
                .inflater
                .decompress(&self.zmsg[self.zpos..], out, FlushDecompress::Sync)
                .map_err(|e| io::Error::other(format!("a compressed message: {e}")))?;
            let used = (self.inflater.total_in() - in0) as usize;
            let made = (self.inflater.total_out() - out0) as usize;
            self.zpos += used;
            if made > 0 {
                return Ok(Some(made));
            }
            if self.zpos == self.zmsg.len() || status == Status::StreamEnd {
                self.inflating = false;
                return Ok(None);
            }
            if used == 0 {
                return Err(io::Error::other("a compressed message does not inflate"));
            }
        }
    }
}

/// The mask of every frame this client sends (RFC 6455 asks for masking, which servers
/// check; it does not ask servers to check that keys vary).
const MASK: [u8; 4] = [0x5a, 0x3c, 0x96, 0xe1];

impl WsConn {
    /// Upgrades `sock`; with `deflate`, offers permessage-deflate with no context takeover
    /// either way and fails unless the server takes it so.
    fn upgrade(mut sock: BufSock, addr: SocketAddr, deflate: bool) -> io::Result<WsConn> {
        let extension = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; \
             server_no_context_takeover\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             {extension}\r\n"
        );
        sock.send_all(request.as_bytes())?;
        // The response head, byte by byte from the buffer; what follows it stays there.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if sock.read(&mut b)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.push(b[0]);
            if head.len() > 8192 {
                return Err(io::Error::other("WebSocket response head over 8 KiB"));
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other(format!(
                "WebSocket upgrade refused: {}",
                String::from_utf8_lossy(&head)
            )));
        }
        let deflate = if deflate {
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let answer = head
                .lines()
                .find_map(|l| l.strip_prefix("sec-websocket-extensions:"))
                .unwrap_or_default();
            let params: Vec<&str> = answer.split(';').map(str::trim).collect();
            for wanted in ["permessage-deflate", "server_no_context_takeover"] {
                if !params.contains(&wanted) {
                    return Err(io::Error::other(format!(
                        "the server did not take permessage-deflate with {wanted}: \
                         Sec-WebSocket-Extensions: {answer}"
                    )));
                }
            }
            Some(Inflate {
                inflater: Decompress::new(false),
                zmsg: Vec::new(),
                zpos: 0,
                collecting: false,
                inflating: false,
            })
        } else {
            None
        };
        Ok(WsConn {
            sock,
            frame_left: 0,
            out: Vec::new(),
            deflate,
        })
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.frame_with(0x80 | opcode, payload)
    }

    /// Writes one masked frame whose first byte (FIN, RSV1, opcode) is `first`.
    fn frame_with(&mut self, first: u8, payload: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out.push(first);
        let len = payload.len();
        if len < 126 {
            self.out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.out.extend_from_slice(&MASK);
        let start = self.out.len();
        self.out.extend_from_slice(payload);
        mask(&mut self.out[start..]);
        self.sock.send_all(&self.out)
    }

    fn read_exact_sock(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.sock.read_exact(buf)
    }
}

/// XORs `data` with [`MASK`], eight bytes at a time.
fn mask(data: &mut [u8]) {
    let key = u64::from_ne_bytes([
        MASK[0], MASK[1], MASK[2], MASK[3], MASK[0], MASK[1], MASK[2], MASK[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ key).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= MASK[i % 4];
    }
}

impl Read for WsConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(z) = self.deflate.as_mut().filter(|z| z.inflating) {
                match z.next(out)? {
                    Some(n) => return Ok(n),
                    None => continue,
                }
            }
            if self.frame_left > 0 {
                let want = out
                    .len()
                    .min(usize::try_from(self.frame_left).unwrap_or(usize::MAX));
                let n = self.sock.read(&mut out[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.frame_left -= n as u64;
                return Ok(n);
            }
            let mut head = [0u8; 2];
            self.read_exact_sock(&mut head)?;
            let opcode = head[0] & 0x0f;
            let fin = head[0] & 0x80 != 0;
            let compressed = head[0] & 0x40 != 0;
            if head[1] & 0x80 != 0 {
                return Err(io::Error::other("a masked frame from the server"));
            }
            if compressed && (self.deflate.is_none() || opcode == 0x0 || opcode >= 0x8) {
                return Err(io::Error::other(
                    "RSV1 set where no compressed message can be",
                ));
            }
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.read_exact_sock(&mut b)?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.read_exact_sock(&mut b)?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            match opcode {
                // A compressed message, or the next frame of one: collected whole, then
                // inflated (RFC 7692 section 7.2.2: the tail goes back on before inflating).
                0x0..=0x2
                    if compressed
                        || (opcode == 0x0
                            && self.deflate.as_ref().is_some_and(|z| z.collecting)) =>
                {
                    let z = self.deflate.as_mut().expect("RSV1 checked above");
                    if compressed {
                        z.zmsg.clear();
                        z.zpos = 0;
                    }
                    let len = usize::try_from(len).map_err(io::Error::other)?;
                    let at = z.zmsg.len();
                    z.zmsg.resize(at + len, 0);
                    self.sock.read_exact(&mut z.zmsg[at..])?;
                    z.collecting = !fin;
                    if fin {
                        z.zmsg.extend_from_slice(&DEFLATE_TAIL);
                        z.inflater.reset(false);
                        z.inflating = true;
                    }
                }
                // Continuation, text, binary: NATS bytes.
                0x0..=0x2 => self.frame_left = len,
                // Close.
                0x8 => return Ok(0),
                // Ping (answered), pong: at most 125 bytes, no NATS bytes.
                _ => {
                    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0).min(125)];
                    self.read_exact_sock(&mut payload)?;
                    if opcode == 0x9 {
                        self.frame(0xA, &payload)?;
                    }
                }
            }
        }
    }
}

impl Write for WsConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.frame(0x2, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for WsConn {
    /// One binary frame: the deflated bytes with RSV1 set when permessage-deflate is on.
    fn send_batch(&mut self, batch: &Batch) -> io::Result<()> {
        match (&self.deflate, &batch.deflated) {
            (Some(_), Some(z)) => self.frame_with(0x80 | 0x40 | 0x2, z),
            _ => self.frame(0x2, &batch.plain),
        }
    }

    fn wire_bytes(&self) -> Option<(u64, u64)> {
        Some((self.sock.read_total, self.sock.written_total))
    }
}

/// A NATS connection speaking the raw protocol.
pub struct RawConn {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        Self::open(&Endpoint::tcp(addr), 256 * 1024)
    }

    pub fn connect_with_buffer(addr: SocketAddr, buffer: usize) -> io::Result<RawConn> {
        Self::open(&Endpoint::tcp(addr), buffer)
    }

    pub fn open(endpoint: &Endpoint, buffer: usize) -> io::Result<RawConn> {
        let stream = endpoint.open()?;
        let mut conn = RawConn {
            stream,
            buf: vec![0; buffer],
            start: 0,
            end: 0,
        };
        let info = conn.line()?;
        if !info.starts_with(b"INFO ") {
            return Err(io::Error::other("no INFO"));
        }
        // Protocol 1, as every client library declares: nats-server then sends a second
        // INFO after the first PING, which a proxy rewrites too (and idle memory counts).
        conn.stream.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
        )?;
        conn.ping_pong()?;
        Ok(conn)
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    /// The next control line, without its CRLF.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = self.buf[self.start..self.start + i].to_vec();
                self.start += i + 1;
                return Ok(line.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(line));
            }
            self.fill()?;
        }
    }

    /// Skips `n` bytes.
    fn skip(&mut self, mut n: usize) -> io::Result<()> {
        loop {
            let have = (self.end - self.start).min(n);
            self.start += have;
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// Sends PING and reads until its PONG, answering the server's PINGs on the way.
    pub fn ping_pong(&mut self) -> io::Result<()> {
        self.stream.write_all(b"PING\r\n")?;
        loop {
            match self.next()? {
                Event::Pong => return Ok(()),
                Event::Err(e) => return Err(io::Error::other(e)),
                _ => {}
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a batch of ops, compressed when the connection and the batch allow it.
    pub fn send_batch(&mut self, batch: &Batch) -> io::Result<()> {
        self.stream.send_batch(batch)
    }

    /// Bytes read from and written to the socket so far (WebSocket connections only).
    pub fn wire_bytes(&self) -> Option<(u64, u64)> {
        self.stream.wire_bytes()
    }

    /// Reads the next op. Message payloads are skipped unless `keep` asks for the reply.
    fn next(&mut self) -> io::Result<Event> {
        let line = self.line()?;
        let upper = |s: &[u8]| s.to_ascii_uppercase();
        if line.len() >= 4 && (upper(&line[..4]) == b"MSG " || upper(&line[..4]) == b"HMSG") {
            let args: Vec<&[u8]> = line
                .split(|b| *b == b' ')
                .filter(|a| !a.is_empty())
                .collect();
            let size = parse(args.last().copied().unwrap_or_default());
            let is_h = upper(&line[..4]) == b"HMSG";
            let reply_at = if is_h { 6 } else { 5 };
            let reply = (args.len() == reply_at).then(|| args[3].to_vec());
            self.skip(size + 2)?;
            return Ok(Event::Msg { reply });
        }
        Ok(match line.as_slice() {
            b"PING" => {
                self.stream.write_all(b"PONG\r\n")?;
                Event::Other
            }
            b"PONG" => Event::Pong,
            l if l.starts_with(b"-ERR") => Event::Err(String::from_utf8_lossy(l).into_owned()),
            _ => Event::Other,
        })
    }
}

enum Event {
    Msg { reply: Option<Vec<u8>> },
    Pong,
    Err(String),
    Other,
}

fn parse(digits: &[u8]) -> usize {
    digits.iter().fold(0usize, |acc, b| {
        acc * 10 + usize::from(b.wrapping_sub(b'0'))
    })
}

/// One throughput measurement.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub msgs: u64,
    pub secs: f64,
    pub payload: usize,
    /// Bytes the subscribers read from their sockets during the run (WebSocket only):
    /// frame headers, `MSG` lines and payloads, compressed or not.
    pub sub_wire_bytes: Option<u64>,
    /// Bytes the publishers wrote to their sockets during the run (WebSocket only).
    pub pub_wire_bytes: Option<u64>,
    /// CPU time (user + system) of the subscriber threads during the run, from /proc
    /// (10 ms resolution): the generator's own cost of reading, inflating included.
    pub sub_cpu_secs: f64,
}

impl Throughput {
    pub fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.secs
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.payload as f64 / 1_000_000.0
    }
}

/// What the payloads of published messages hold. It decides what compression can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Every payload byte is `x`.
    Filler,
    /// Newline-separated JSON records of a telemetry feed (see [`json_payload`]); every
    /// message of a batch differs from the others.
    Json,
    /// Every payload byte is `x`, and every message of a batch has a reply subject of its own
    /// (`_INBOX.bench.000042`), as requests carry their inboxes: no control line repeats the
    /// one before it, so the forwarders frame every line in full.
    DistinctReplies,
    /// Every payload byte is `x`, and every message is an `HPUB` with a header block of its
    /// own (`Nats-Msg-Id: 000042`), as JetStream publishers send: the control lines repeat,
    /// the header blocks differ.
    Headers,
}

/// The header block of message `i` under [`Content::Headers`]: the same length for every `i`
/// below a million, so the control lines of a batch are alike.
fn msg_id_headers(i: u64) -> String {
    format!("NATS/1.0\r\nNats-Msg-Id: {i:06}\r\n\r\n")
}

/// The payload of message `i`: `size` bytes of newline-separated JSON records such as a
/// telemetry feed sends, cut at `size`. Keys, device names and the date repeat from record
/// to record; the sequence number, time of day and readings vary, drawn from a generator
/// seeded with `i`. One record is about 120 bytes:
///
/// `{"seq":1000,"device":"sensor-017","ts":"2026-11-24T09:41:07.512Z","temp_c":21.48,"humidity":47.1,"status":"ok"}`
pub fn json_payload(size: usize, i: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 160);
    let mut state = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = |bound: u64| {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut seq = i * 1000;
    while out.len() < size {
        let _ = writeln!(
            out,
            "{{\"seq\":{seq},\"device\":\"sensor-{:03}\",\"ts\":\"2026-11-24T{:02}:{:02}:{:02}.{:03}Z\",\
             \"temp_c\":{}.{:02},\"humidity\":{}.{},\"status\":\"{}\"}}",
            next(64),
            next(24),
            next(60),
            next(60),
            next(1000),
            next(15) + 15,
            next(100),
            next(60) + 20,
            next(10),
            if next(8) == 0 { "warn" } else { "ok" },
        );
        seq += 1;
    }
    out.truncate(size);
    out
}

/// `publishers` publish `per_publisher` messages of `payload` bytes each on one subject that
/// `subscribers` subscribe to; each subscriber must receive every message. A window keeps the
/// publishers at most a few MiB ahead of the slowest subscriber, so no buffer on the path
/// overflows and no message may be lost.
pub fn pub_sub(
    addr: SocketAddr,
    publishers: usize,
    subscribers: usize,
    per_publisher: u64,
    payload: usize,
) -> io::Result<Throughput> {
    pub_sub_via(
        &Endpoint::tcp(addr),
        publishers,
        subscribers,
        per_publisher,
        payload,
    )
}

/// [`pub_sub`] over any transport.
pub fn pub_sub_via(
    endpoint: &Endpoint,
    publishers: usize,
    subscribers: usize,
    per_publisher: u64,
    payload: usize,
) -> io::Result<Throughput> {
    pub_sub_content(
        endpoint,
        publishers,
        subscribers,
        per_publisher,
        payload,
        Content::Filler,
    )
}

/// [`pub_sub_via`] with payloads of `content`. Over [`Transport::WsDeflate`] every batch of
/// `PUB`s is deflated once, before the run, and sent as that one compressed frame each time.
pub fn pub_sub_content(
    endpoint: &Endpoint,
    publishers: usize,
    subscribers: usize,
    per_publisher: u64,
    payload: usize,
    content: Content,
) -> io::Result<Throughput> {
    let subject = "bench.data";
    let total = per_publisher * publishers as u64;
    let window = (8 * 1024 * 1024 / (payload + 32)).max(64) as u64;
    let report_every = (window / 4).clamp(1, 256);
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..subscribers).map(|_| AtomicU64::new(0)).collect());
    let failed = Arc::new(AtomicBool::new(false));
    // Publishers wait here when they are a window ahead; subscribers wake them as they catch up.
    let progress = Arc::new((Mutex::new(()), Condvar::new()));

    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut conn = RawConn::open(endpoint, 256 * 1024)?;
        conn.send(format!("SUB {subject} 1\r\n").as_bytes())?;
        conn.ping_pong()?;
        let received = received.clone();
        let failed = failed.clone();
        let progress = progress.clone();
        subs.push(thread::spawn(
            move || -> io::Result<(Option<u64>, f64, Instant)> {
                let wire_before = conn.wire_bytes();
                let cpu_before = thread_cpu_secs();
                let mut n = 0;
                let result = loop {
                    if n == total {
                        break Ok(());
                    }
                    match conn.next() {
                        Ok(Event::Msg { .. }) => {
                            n += 1;
                            if n % report_every == 0 || n == total {
                                received[i].store(n, Ordering::Release);
                                progress.1.notify_all();
                            }
                        }
                        Ok(Event::Err(e)) => {
                            break Err(io::Error::other(format!("after {n} msgs: {e}")))
                        }
                        Ok(_) => {}
                        Err(e) => break Err(io::Error::other(format!("after {n} msgs: {e}"))),
                    }
                };
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                    progress.1.notify_all();
                }
                // The run ends with the last delivery, not with the publishers' last write: up
                // to a window of messages is still on its way then, more of it through a proxy.
                let done = Instant::now();
                let cpu = thread_cpu_secs() - cpu_before;
                let wire = conn
                    .wire_bytes()
                    .zip(wire_before)
                    .map(|((read, _), (before, _))| read - before);
                result.map(|()| (wire, cpu, done))
            },
        ));
    }

    let message = |i: u64| {
        let mut f = match content {
            Content::DistinctReplies => {
                format!("PUB {subject} _INBOX.bench.{i:06} {payload}\r\n").into_bytes()
            }
            Content::Filler | Content::Json => format!("PUB {subject} {payload}\r\n").into_bytes(),
            Content::Headers => {
                let headers = msg_id_headers(i);
                let total = headers.len() + payload;
                format!("HPUB {subject} {} {total}\r\n{headers}", headers.len()).into_bytes()
            }
        };
        match content {
            Content::Filler | Content::DistinctReplies | Content::Headers => {
                f.extend(std::iter::repeat_n(b'x', payload))
            }
            Content::Json => f.extend(json_payload(payload, i)),
        }
        f.extend_from_slice(b"\r\n");
        f
    };
    let frame = message(0);
    let per_batch = (64 * 1024 / frame.len()).max(1);
    let batch: Vec<u8> = match content {
        Content::Filler => frame.repeat(per_batch),
        Content::Json | Content::DistinctReplies | Content::Headers => {
            (0..per_batch as u64).flat_map(message).collect()
        }
    };
    let compress = matches!(endpoint.transport, Transport::WsDeflate);
    let batch = Batch::new(batch, compress);
    // The last messages of a run, fewer than a batch, go one by one.
    let frame = Batch::new(frame, compress);

    // Connected before the clock starts: a run times messages, not handshakes.
    let conns = (0..publishers)
        .map(|_| RawConn::open(endpoint, 256 * 1024))
        .collect::<io::Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut pubs = Vec::new();
    for mut conn in conns {
        let received = received.clone();
        let failed = failed.clone();
        let progress = progress.clone();
        let batch = batch.clone();
        let frame = frame.clone();
        pubs.push(thread::spawn(move || -> io::Result<Option<u64>> {
            let wire_before = conn.wire_bytes();
            let mut sent = 0u64;
            while sent < per_publisher {
                // Stay within the window of the slowest subscriber (all publishers together).
                loop {
                    let slowest = received
                        .iter()
                        .map(|r| r.load(Ordering::Acquire))
                        .min()
                        .unwrap_or(0);
                    if failed.load(Ordering::Relaxed) {
                        return Err(io::Error::other("a subscriber failed"));
                    }
                    if sent * publishers as u64 <= slowest + window {
                        break;
                    }
                    let guard = progress
                        .0
                        .lock()
                        .map_err(|_| io::Error::other("poisoned"))?;
                    // Bounded wait: a notification between the check and the wait is not lost
                    // for longer than this.
                    let _ = progress.1.wait_timeout(guard, Duration::from_millis(1));
                }
                let left = per_publisher - sent;
                if left >= per_batch as u64 {
                    conn.send_batch(&batch)?;
                    sent += per_batch as u64;
                } else {
                    for _ in 0..left {
                        conn.send_batch(&frame)?;
                    }
                    sent = per_publisher;
                }
            }
            conn.ping_pong()?;
            Ok(conn
                .wire_bytes()
                .zip(wire_before)
                .map(|((_, written), (_, before))| written - before))
        }));
    }
    // Subscriber errors first: they say why a publisher gave up.
    let pub_results: Vec<_> = pubs.into_iter().map(|p| p.join()).collect();
    let mut last_delivery = started;
    let (mut sub_wire_bytes, mut sub_cpu_secs) = (Some(0u64), 0.0);
    for s in subs {
        let (wire, cpu, done) = s
            .join()
            .map_err(|_| io::Error::other("subscriber panicked"))??;
        sub_wire_bytes = sub_wire_bytes.zip(wire).map(|(a, b)| a + b);
        sub_cpu_secs += cpu;
        last_delivery = last_delivery.max(done);
    }
    let secs = (last_delivery - started).as_secs_f64();
    let mut pub_wire_bytes = Some(0u64);
    for p in pub_results {
        let wire = p.map_err(|_| io::Error::other("publisher panicked"))??;
        pub_wire_bytes = pub_wire_bytes.zip(wire).map(|(a, b)| a + b);
    }
    Ok(Throughput {
        msgs: total,
        secs,
        payload,
        sub_wire_bytes,
        pub_wire_bytes,
        sub_cpu_secs,
    })
}

/// CPU time (user + system) of the calling thread so far, in seconds, from /proc.
fn thread_cpu_secs() -> f64 {
    super::targets::stat_cpu_secs(
        &std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default(),
    )
}

/// Request/reply round trips with one responder; returns each latency in microseconds.
pub fn request_reply(addr: SocketAddr, requests: usize) -> io::Result<Vec<f64>> {
    let mut responder = RawConn::connect(addr)?;
    responder.send(b"SUB bench.req 1\r\n")?;
    responder.ping_pong()?;
    let serving = thread::spawn(move || -> io::Result<()> {
        let mut served = 0;
        while served < requests {
            if let Event::Msg { reply: Some(reply) } = responder.next()? {
                let mut out = b"PUB ".to_vec();
                out.extend_from_slice(&reply);
                out.extend_from_slice(b" 16\r\n0123456789abcdef\r\n");
                responder.send(&out)?;
                served += 1;
            }
        }
        Ok(())
    });
    let mut requester = RawConn::connect(addr)?;
    requester.send(b"SUB bench.inbox 1\r\n")?;
    requester.ping_pong()?;
    let request = b"PUB bench.req bench.inbox 16\r\n0123456789abcdef\r\n";
    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t0 = Instant::now();
        requester.send(request)?;
        loop {
            match requester.next()? {
                Event::Msg { .. } => break,
                Event::Err(e) => return Err(io::Error::other(e)),
                _ => {}
            }
        }
        latencies.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    serving
        .join()
        .map_err(|_| io::Error::other("responder panicked"))??;
    Ok(latencies)
}

/// Opens `n` idle connections (CONNECT and a PING/PONG each) and keeps them open.
pub fn idle_connections(addr: SocketAddr, n: usize) -> io::Result<Vec<RawConn>> {
    (0..n)
        .map(|_| RawConn::connect_with_buffer(addr, 512))
        .collect()
}
