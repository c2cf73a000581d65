//! A raw-protocol load generator: blocking sockets, preformatted frames, big writes, and a
//! subscriber that parses only what it must (control lines; payloads are skipped by length).
//! It is much cheaper per message than nats-server, so it is never what a run measures.
//!
//! It speaks NATS over plain TCP, over TLS (TLS first, rustls; every 64 KiB batch of `PUB`s
//! is one write, so it leaves in full 16 KiB records) and over WebSocket (a hand-rolled frame
//! writer: every batch is one masked binary frame; the server's frames are unwrapped into
//! one byte stream).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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
            Transport::Ws => Box::new(WsConn::upgrade(BufSock::new(tcp), self.addr)?),
        })
    }
}

/// A byte stream to a target.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A socket read through a large buffer: rustls reads at most 4 KiB at a time, and the
/// WebSocket reader reads frame headers a few bytes at a time.
struct BufSock {
    tcp: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl BufSock {
    fn new(tcp: TcpStream) -> BufSock {
        BufSock {
            tcp,
            buf: vec![0; SOCKET_READ],
            start: 0,
            end: 0,
        }
    }
}

impl Read for BufSock {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if out.len() >= self.buf.len() {
                return self.tcp.read(out);
            }
            self.start = 0;
            self.end = self.tcp.read(&mut self.buf)?;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl Write for BufSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.tcp.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The client side of a WebSocket carrying NATS: every write is one masked binary frame;
/// reads return the payloads of the server's data frames as one byte stream.
struct WsConn {
    sock: BufSock,
    /// Payload bytes left in the data frame being read.
    frame_left: u64,
    /// Where a frame is built before it is written.
    out: Vec<u8>,
}

/// The mask of every frame this client sends (RFC 6455 asks for masking, which servers
/// check; it does not ask servers to check that keys vary).
const MASK: [u8; 4] = [0x5a, 0x3c, 0x96, 0xe1];

impl WsConn {
    fn upgrade(mut sock: BufSock, addr: SocketAddr) -> io::Result<WsConn> {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        sock.tcp.write_all(request.as_bytes())?;
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
        Ok(WsConn {
            sock,
            frame_left: 0,
            out: Vec::new(),
        })
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out.push(0x80 | opcode);
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
        self.sock.tcp.write_all(&self.out)
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
            if head[1] & 0x80 != 0 {
                return Err(io::Error::other("a masked frame from the server"));
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
        conn.stream
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n")?;
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
}

impl Throughput {
    pub fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.secs
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.payload as f64 / 1_000_000.0
    }
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
        subs.push(thread::spawn(move || -> io::Result<()> {
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
            result
        }));
    }

    let frame = {
        let mut f = format!("PUB {subject} {payload}\r\n").into_bytes();
        f.extend(std::iter::repeat_n(b'x', payload));
        f.extend_from_slice(b"\r\n");
        f
    };
    let per_batch = (64 * 1024 / frame.len()).max(1);
    let batch: Vec<u8> = frame.repeat(per_batch);

    let started = Instant::now();
    let mut pubs = Vec::new();
    for _ in 0..publishers {
        let mut conn = RawConn::open(endpoint, 256 * 1024)?;
        let received = received.clone();
        let failed = failed.clone();
        let progress = progress.clone();
        let batch = batch.clone();
        let frame = frame.clone();
        pubs.push(thread::spawn(move || -> io::Result<()> {
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
                    conn.send(&batch)?;
                    sent += per_batch as u64;
                } else {
                    for _ in 0..left {
                        conn.send(&frame)?;
                    }
                    sent = per_publisher;
                }
            }
            conn.ping_pong()
        }));
    }
    // Subscriber errors first: they say why a publisher gave up.
    let pub_results: Vec<_> = pubs.into_iter().map(|p| p.join()).collect();
    for s in subs {
        s.join()
            .map_err(|_| io::Error::other("subscriber panicked"))??;
    }
    for p in pub_results {
        p.map_err(|_| io::Error::other("publisher panicked"))??;
    }
    Ok(Throughput {
        msgs: total,
        secs: started.elapsed().as_secs_f64(),
        payload,
    })
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
