//! A raw-protocol load generator: blocking sockets, preformatted frames, big writes, and a
//! subscriber that parses only what it must (control lines; payloads are skipped by length).
//! It is much cheaper per message than nats-server, so it is never what a run measures.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A NATS connection speaking the raw protocol.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        Self::connect_with_buffer(addr, 256 * 1024)
    }

    pub fn connect_with_buffer(addr: SocketAddr, buffer: usize) -> io::Result<RawConn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
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
        let mut conn = RawConn::connect(addr)?;
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
        let mut conn = RawConn::connect(addr)?;
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
