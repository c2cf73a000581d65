//! WebSocket listeners (`ws`, and `wss` over the TLS acceptor): the HTTP upgrade, the
//! adapter that turns a WebSocket into a byte stream, and the cookie credentials filter.
//!
//! The upgrade is parsed here rather than by tungstenite's handshake so the edge can answer
//! what a NATS WebSocket port is asked besides upgrades: a plain `GET` (a load balancer's
//! health check) gets `200 OK`; a refused upgrade gets a status that says why (`403` for an
//! origin, `400` for a bad key, `426` for a version other than 13, `404` for another path).
//!
//! After the upgrade, the NATS protocol travels in binary frames both ways (text frames from
//! clients are accepted too), framed by [`WsStream`] here: every write of the session becomes
//! one frame; a vectored write (the forwarder's batch of queued slices) becomes one frame
//! holding all of its slices, written with its header in one `writev`, never copied; client
//! frames are unmasked in the read buffer and copied out once, or read straight into the
//! caller's buffer and unmasked there when a frame fills it.
//!
//! permessage-deflate (RFC 7692) is accepted when the client offers it and `ws.compression`
//! is on, always with no context takeover in either direction (as nats-server does): every
//! message is inflated, and every frame the edge sends deflated, on its own. The compressor is
//! shared by the connections a worker thread serves and inflaters are pooled per thread, so a
//! connection keeps no compression state between messages.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use nats_edge_filters::{ClientOp, Filter, Interest, OpKind, SessionCtx, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::WsSection;

/// The longest request head accepted before the upgrade.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

/// An origin: `scheme://host[:port]`, with the scheme's default port filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses `http://host`, `https://host:8443`, ... (a trailing `/` is allowed).
    pub fn parse(s: &str) -> Result<Origin, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` is not an origin such as https://app.example.com"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return Err(format!("`{s}`: the scheme must be http or https")),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{s}` is not an origin such as https://app.example.com"
            ));
        }
        let (host, port) =
            split_authority(authority, default_port).ok_or_else(|| format!("`{s}`: bad port"))?;
        Ok(Origin { scheme, host, port })
    }
}

/// `host[:port]` (IPv6 in brackets), lower-cased host.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (host, p.parse().ok()?),
            None if after.is_empty() => (host, default_port),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// An IP address or a CIDR network (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let bad = || format!("`{s}` is not an IP address or CIDR network");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A ws/wss listener's settings, parsed once at start-up.
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub path: String,
    pub allowed_origins: Vec<Origin>,
    pub same_origin: bool,
    pub jwt_cookie: Option<String>,
    pub user_cookie: Option<String>,
    pub pass_cookie: Option<String>,
    pub token_cookie: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub ping_interval: Option<Duration>,
    pub max_message_size: usize,
    /// Accept permessage-deflate when the client offers it.
    pub compression: bool,
    /// A `wss` listener: an `Origin` without a port is compared with port 443.
    pub secure: bool,
}

impl WsSettings {
    /// From a validated config section.
    pub fn new(section: &WsSection, secure: bool) -> WsSettings {
        WsSettings {
            path: section.path.clone(),
            allowed_origins: section
                .allowed_origins
                .0
                .iter()
                .filter_map(|o| Origin::parse(o).ok())
                .collect(),
            same_origin: section.same_origin,
            jwt_cookie: section.jwt_cookie.clone(),
            user_cookie: section.user_cookie.clone(),
            pass_cookie: section.pass_cookie.clone(),
            token_cookie: section.token_cookie.clone(),
            trusted_proxies: section
                .trusted_proxies
                .0
                .iter()
                .filter_map(|p| IpNet::parse(p).ok())
                .collect(),
            ping_interval: (!section.ping_interval.0.is_zero()).then_some(section.ping_interval.0),
            max_message_size: usize::try_from(section.max_message_size.0).unwrap_or(usize::MAX),
            compression: section.compression,
            secure,
        }
    }
}

/// Why an upgrade was refused. The HTTP answer has been written when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("the client closed the connection before sending a request")]
    ClosedEarly,
    #[error("the client closed the connection inside its request")]
    Truncated,
    #[error("the client speaks TLS on a plain WebSocket listener")]
    TlsOnPlain,
    #[error("{status} {reason}: {detail}")]
    Http {
        status: u16,
        reason: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Reject {
    fn http(status: u16, detail: impl Into<String>) -> Reject {
        Reject::Http {
            status,
            reason: reason_phrase(status),
            detail: detail.into(),
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Credentials read from the upgrade request's cookies; they fill a CONNECT that has none.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CookieCredentials {
    pub jwt: Option<String>,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
}

impl fmt::Debug for CookieCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mask = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("CookieCredentials")
            .field("jwt", &mask(&self.jwt))
            .field("user", &self.user)
            .field("pass", &mask(&self.pass))
            .field("token", &mask(&self.token))
            .finish()
    }
}

impl CookieCredentials {
    pub fn is_empty(&self) -> bool {
        self.jwt.is_none() && self.user.is_none() && self.pass.is_none() && self.token.is_none()
    }
}

/// What an accepted request turned into.
pub enum Upgraded<S> {
    /// A WebSocket carrying NATS.
    WebSocket {
        stream: Box<WsStream<S>>,
        /// The client's address: from `X-Forwarded-For` when the peer is a trusted proxy.
        client_addr: SocketAddr,
        cookies: CookieCredentials,
    },
    /// A plain HTTP request, answered (`200 OK` for a health check); no session follows.
    Answered,
}

struct Head<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl Head<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = name.to_string();
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| *v)
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Reads the upgrade request from `stream` and answers it.
pub async fn accept<S>(
    mut stream: S,
    settings: &WsSettings,
    client_addr: SocketAddr,
) -> Result<Upgraded<S>, Reject>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(respond(&mut stream, Reject::http(431, "request head over 8 KiB")).await);
        }
        let n = stream.read_buf(&mut buf).await?;
        if buf.first() == Some(&super::tls::HANDSHAKE_RECORD) {
            return Err(Reject::TlsOnPlain);
        }
        if n == 0 {
            return Err(if buf.is_empty() {
                Reject::ClosedEarly
            } else {
                Reject::Truncated
            });
        }
    };
    let leftover = buf.split_off(head_len);

    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(&buf);
    let head = match parsed {
        Ok(httparse::Status::Complete(_)) => {
            let mut list = Vec::new();
            for h in request.headers.iter() {
                let Ok(value) = std::str::from_utf8(h.value) else {
                    return Err(
                        respond(&mut stream, Reject::http(400, "a header is not UTF-8")).await,
                    );
                };
                list.push((h.name, value));
            }
            Head {
                method: request.method.unwrap_or_default(),
                path: request.path.unwrap_or_default(),
                headers: list,
            }
        }
        Ok(httparse::Status::Partial) => {
            return Err(respond(&mut stream, Reject::http(400, "incomplete request")).await)
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(respond(&mut stream, Reject::http(431, "too many headers")).await)
        }
        Err(e) => {
            return Err(respond(&mut stream, Reject::http(400, format!("not HTTP/1.1: {e}"))).await)
        }
    };

    match check(&head, settings) {
        Err(reject) => Err(respond(&mut stream, reject).await),
        Ok(None) => {
            write_response(&mut stream, 200, "", "ok\n", head.method == "HEAD").await?;
            stream.shutdown().await?;
            Ok(Upgraded::Answered)
        }
        Ok(Some(key)) => {
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let deflate = if settings.compression {
                deflate_answer(&head)
            } else {
                None
            };
            let response =
                format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n{}\r\n",
                deflate.map_or(String::new(), |d| format!("Sec-WebSocket-Extensions: {d}\r\n"))
            );
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            let client_addr = forwarded_for(&head, settings, client_addr);
            let cookies = cookies(&head, settings);
            let mut ws = WsStream::new(
                stream,
                leftover,
                settings.max_message_size,
                settings.ping_interval,
            );
            if deflate.is_some() {
                ws.enable_deflate();
            }
            Ok(Upgraded::WebSocket {
                stream: Box::new(ws),
                client_addr,
                cookies,
            })
        }
    }
}

/// Judges a request: `Ok(Some(key))` to upgrade, `Ok(None)` to answer 200, or a refusal.
fn check<'a>(head: &'a Head<'_>, settings: &WsSettings) -> Result<Option<&'a str>, Reject> {
    let upgrade = head.has_token("upgrade", "websocket");
    // GET, or HEAD for a health check.
    let allowed = head.method == "GET" || (head.method == "HEAD" && !upgrade);
    if !allowed {
        return Err(Reject::http(405, format!("method {}", head.method)));
    }
    if !upgrade {
        return Ok(None);
    }
    let path = head.path.split(['?', '#']).next().unwrap_or_default();
    if path != settings.path {
        return Err(Reject::http(
            404,
            format!("path {path} (the WebSocket path is {})", settings.path),
        ));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(Reject::http(400, "Connection header without upgrade"));
    }
    let Some(host) = head.header("host") else {
        return Err(Reject::http(400, "no Host header"));
    };
    match head.header("sec-websocket-version") {
        Some("13") => {}
        Some(v) => {
            return Err(Reject::http(
                426,
                format!("Sec-WebSocket-Version {v} (only 13 is supported)"),
            ))
        }
        None => return Err(Reject::http(426, "no Sec-WebSocket-Version")),
    }
    let key = head.header("sec-websocket-key").unwrap_or_default();
    if !valid_key(key) {
        return Err(Reject::http(400, format!("bad Sec-WebSocket-Key {key:?}")));
    }
    if let Some(origin) = head.header("origin") {
        check_origin(origin, host, settings)?;
    }
    Ok(Some(key))
}

/// The answer to the client's permessage-deflate offers, `None` to decline the extension.
///
/// The first offer the edge can honour is taken: it always answers with no context takeover
/// both ways. An offer that asks for a server window under 15 bits (the edge's compressor
/// uses a 32 KiB window), repeats a parameter, or carries one that RFC 7692 does not define
/// is skipped; with none left the extension is declined and the upgrade goes on without it.
fn deflate_answer(head: &Head<'_>) -> Option<&'static str> {
    const ANSWER: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    const ANSWER_BITS: &str = "permessage-deflate; server_no_context_takeover; \
                               client_no_context_takeover; server_max_window_bits=15";
    head.all("sec-websocket-extensions")
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

/// A key is 16 bytes in base64: 22 characters and `==`.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && key.ends_with("==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        // The last character before the padding carries 2 bits only.
        && matches!(b[21], b'A' | b'Q' | b'g' | b'w')
}

fn check_origin(origin: &str, host: &str, settings: &WsSettings) -> Result<(), Reject> {
    if !settings.same_origin && settings.allowed_origins.is_empty() {
        return Ok(());
    }
    let forbidden = |why: String| Reject::http(403, why);
    let parsed = Origin::parse(origin).map_err(|_| forbidden(format!("origin {origin:?}")))?;
    if settings.same_origin {
        let default_port = if settings.secure { 443 } else { 80 };
        let same = split_authority(host, default_port)
            .is_some_and(|(h, p)| h == parsed.host && p == parsed.port);
        if !same {
            return Err(forbidden(format!(
                "origin {origin} is not the same as host {host}"
            )));
        }
    }
    if !settings.allowed_origins.is_empty() && !settings.allowed_origins.contains(&parsed) {
        return Err(forbidden(format!("origin {origin} is not allowed")));
    }
    Ok(())
}

/// The client's address: from `X-Forwarded-For` when the peer is a trusted proxy. The list
/// is read from the right (the hop nearest the edge, written by the trusted peer): trusted
/// proxies are skipped and the first other address is the client. Reading stops at an entry
/// that is not an address, since everything left of it came from an untrusted source; the
/// last address read then stands. Its port is unknown, so it is 0.
fn forwarded_for(head: &Head<'_>, settings: &WsSettings, peer: SocketAddr) -> SocketAddr {
    let trusted = |ip: IpAddr| settings.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = head
        .all("x-forwarded-for")
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = None;
    for hop in hops.iter().rev() {
        // An address, or an address with a port as some proxies write it.
        let hop = hop.trim();
        let Some(ip) = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        client = Some(ip);
        if !trusted(ip) {
            break;
        }
    }
    client.map_or(peer, |ip| SocketAddr::new(ip.to_canonical(), 0))
}

fn cookies(head: &Head<'_>, settings: &WsSettings) -> CookieCredentials {
    let find = |name: &Option<String>| -> Option<String> {
        let name = name.as_deref()?;
        head.all("cookie")
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    };
    CookieCredentials {
        jwt: find(&settings.jwt_cookie),
        user: find(&settings.user_cookie),
        pass: find(&settings.pass_cookie),
        token: find(&settings.token_cookie),
    }
}

/// Writes the answer to a refused request (bounded by the caller's handshake timeout) and
/// hands the refusal back. The connection is closed by the caller once it has recorded the
/// refusal, so the client never sees the close before the edge has counted it.
async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, reject: Reject) -> Reject {
    if let Reject::Http { status, detail, .. } = &reject {
        let extra = if *status == 426 {
            "Sec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        let body = format!("{}: {detail}\n", reason_phrase(*status));
        let _ = write_response(stream, *status, extra, &body, false).await;
    }
    reject
}

/// Writes a whole response and flushes it; the connection closes when the stream is dropped.
async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    extra_headers: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra_headers}\r\n",
        reason_phrase(status),
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// The first read buffer of a WebSocket, and the largest read.
const INITIAL_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Room in the caller's buffer from which a frame's payload is read into it directly.
const DIRECT_READ: usize = 4 * 1024;
/// The largest frame header: 2 bytes, a 64-bit length, a mask.
const MAX_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;

/// Why a client's frames were refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the client sent an unmasked frame")]
    Unmasked,
    #[error("the client set reserved bits that no negotiated extension defines")]
    ReservedBits,
    #[error("a compressed message does not inflate")]
    Inflate,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("a control frame fragmented or over 125 bytes")]
    BadControl,
    #[error("a continuation frame outside a fragmented message")]
    StrayContinuation,
    #[error("a new message inside a fragmented one")]
    Interleaved,
    #[error("a message over ws.max_message_size ({0} bytes)")]
    TooBig(u64),
    #[error("the connection closed inside a frame")]
    Truncated,
}

impl FrameError {
    fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig(_) => CLOSE_TOO_BIG,
            FrameError::Inflate => CLOSE_INVALID_DATA,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// The client data frame being read.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    /// Payload bytes not yet read.
    left: u64,
    mask: [u8; 4],
    /// Payload bytes already unmasked, modulo 4: where the mask continues.
    phase: usize,
}

/// The empty stored block a sender strips from the end of every compressed message
/// (RFC 7692 section 7.2.1), put back before it is inflated.
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Frames shorter than this go out uncompressed (nats-server's threshold too).
const COMPRESS_MIN: usize = 64;
/// Inflaters kept per thread between messages.
const INFLATER_POOL: usize = 4;
/// A compressed frame's buffer larger than this is given back once the frame has gone out.
const KEEP_ZOUT: usize = 16 * 1024;

thread_local! {
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
struct Inflating {
    inflater: Decompress,
    /// Bytes inflated so far, against `max_message`.
    out: u64,
    /// Bytes of [`DEFLATE_TAIL`] fed after the message's last frame.
    tail: usize,
    /// The deflate stream ended (a final block); the rest of the message is ignored.
    ended: bool,
}

/// What one step of inflating gave.
enum Inflated {
    /// Bytes were put in the caller's buffer.
    Produced,
    /// The frame or the message is done: read the next frame header.
    Next,
    /// The frame's next bytes must be read.
    NeedInput,
}

/// A WebSocket as a byte stream (the server side, after the upgrade).
///
/// Reading: the payloads of the client's data frames (binary, text, continuations) in order,
/// unmasked in the read buffer and copied out once. Pings are answered with pongs; a close
/// frame is answered and reads as the end of the stream; a protocol violation is answered
/// with a close frame (1002, or 1009 for a message over the size limit) and fails the read.
///
/// Writing: every write is one binary frame, its header and payload sent together; a
/// vectored write (the forwarder's batch of queued slices) is one frame holding all its
/// slices, written with one `writev` and never copied. Control frames (pongs, pings, close)
/// go out between data frames, never inside one.
pub struct WsStream<S> {
    io: S,
    rbuf: BytesMut,
    read_size: usize,
    frame: Option<InFrame>,
    /// Inside a fragmented message: the next data frame must be a continuation.
    fragmented: bool,
    /// Payload bytes of the message being read, against `max_message`.
    message_len: u64,
    max_message: u64,
    read_closed: bool,
    /// Whole control frames waiting for a gap between data frames.
    control: BytesMut,
    close_queued: bool,
    /// The header of the data frame being written, and how much of it has gone out.
    header: [u8; 10],
    header_len: usize,
    header_sent: usize,
    /// Payload bytes of the data frame being written that have not gone out yet.
    frame_left: usize,
    ping_every: Option<Duration>,
    ping_timer: Option<Pin<Box<Sleep>>>,
    /// permessage-deflate was negotiated.
    deflate: bool,
    inflating: Option<Box<Inflating>>,
    /// Bytes at the front of `rbuf`, unmasked, of the compressed frame being read.
    zin: usize,
    /// A compressed frame (header included, from `zsent`) waiting to go out.
    zout: Vec<u8>,
    zsent: usize,
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `leftover`: bytes the client sent after its upgrade request.
    pub fn new(
        io: S,
        leftover: BytesMut,
        max_message: usize,
        ping_every: Option<Duration>,
    ) -> Self {
        WsStream {
            io,
            rbuf: leftover,
            read_size: INITIAL_READ,
            frame: None,
            fragmented: false,
            message_len: 0,
            max_message: max_message as u64,
            read_closed: false,
            control: BytesMut::new(),
            close_queued: false,
            header: [0; 10],
            header_len: 0,
            header_sent: 0,
            frame_left: 0,
            ping_every,
            ping_timer: ping_every.map(|d| Box::pin(tokio::time::sleep(d))),
            deflate: false,
            inflating: None,
            zin: 0,
            zout: Vec::new(),
            zsent: 0,
        }
    }

    /// permessage-deflate was negotiated: compressed messages are accepted and frames sent
    /// compressed when that makes them smaller.
    pub fn enable_deflate(&mut self) {
        self.deflate = true;
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Between two data frames: a control frame may go out.
    fn between_frames(&self) -> bool {
        self.no_plain_frame() && self.zsent == self.zout.len()
    }

    /// No uncompressed data frame is being written.
    fn no_plain_frame(&self) -> bool {
        self.frame_left == 0 && self.header_sent == self.header_len
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        if self.close_queued {
            return;
        }
        self.close_queued = opcode == OP_CLOSE;
        self.control
            .extend_from_slice(&[0x80 | opcode, payload.len() as u8]);
        self.control.extend_from_slice(payload);
    }

    fn queue_close(&mut self, code: u16) {
        self.queue_control(OP_CLOSE, &code.to_be_bytes());
    }

    /// Writes queued control frames while no data frame is in progress. `Ready(Ok)` once
    /// none is left (or a data frame is in progress).
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A compressed frame is whole in `zout`: it goes out first.
        while self.zsent < self.zout.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.zout[self.zsent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.zsent += n;
        }
        if !self.zout.is_empty() {
            self.zsent = 0;
            if self.zout.capacity() > KEEP_ZOUT {
                self.zout = Vec::new();
            } else {
                self.zout.clear();
            }
        }
        while !self.control.is_empty() && self.between_frames() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.control))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.control.split_to(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends a ping when one is due. Driven from the read side, which the session polls
    /// whenever it waits for the client.
    fn poll_ping(&mut self, cx: &mut Context<'_>) {
        let (Some(timer), Some(every)) = (self.ping_timer.as_mut(), self.ping_every) else {
            return;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return;
        }
        timer.as_mut().reset(Instant::now() + every);
        let _ = timer.as_mut().poll(cx);
        // One ping at a time: if the last one has not gone out yet, this one is skipped.
        if self.control.is_empty() {
            self.queue_control(OP_PING, &[]);
        }
    }

    /// Parses the next frame header in the read buffer. `Ok(false)`: more bytes are needed.
    /// Control frames are handled here whole.
    fn next_frame(&mut self) -> Result<bool, FrameError> {
        let buf = &self.rbuf[..];
        if buf.len() < 2 {
            return Ok(false);
        }
        let (b0, b1) = (buf[0], buf[1]);
        // RSV1 marks a compressed message when permessage-deflate was negotiated.
        let compressed = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (compressed && !self.deflate) {
            return Err(FrameError::ReservedBits);
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let (len, at) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return Ok(false),
            n => (u64::from(n), 2),
        };
        if buf.len() < at + 4 {
            return Ok(false);
        }
        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        let header = at + 4;
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if compressed {
                    return Err(FrameError::ReservedBits);
                }
                if !fin || len > 125 {
                    return Err(FrameError::BadControl);
                }
                let len = len as usize;
                if buf.len() < header + len {
                    return Ok(false);
                }
                let mut frame = self.rbuf.split_to(header + len);
                let payload = &mut frame[header..];
                unmask(payload, mask, 0);
                match opcode {
                    OP_PING => self.queue_control(OP_PONG, payload),
                    OP_CLOSE => {
                        // Echo the client's status code, as RFC 6455 section 5.5.1 suggests.
                        let code = match payload {
                            [a, b, ..] => u16::from_be_bytes([*a, *b]),
                            _ => CLOSE_NORMAL,
                        };
                        self.queue_close(code);
                        self.read_closed = true;
                    }
                    _ => {}
                }
                Ok(true)
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                match (opcode == OP_CONTINUATION, self.fragmented) {
                    (true, false) => return Err(FrameError::StrayContinuation),
                    (false, true) => return Err(FrameError::Interleaved),
                    (false, false) => self.message_len = 0,
                    (true, true) => {}
                }
                // Only a message's first frame says whether it is compressed.
                if compressed && opcode == OP_CONTINUATION {
                    return Err(FrameError::ReservedBits);
                }
                self.message_len = self.message_len.saturating_add(len);
                if self.message_len > self.max_message {
                    return Err(FrameError::TooBig(self.max_message));
                }
                self.fragmented = !fin;
                if compressed {
                    self.inflating = Some(Box::new(Inflating {
                        inflater: take_inflater(),
                        out: 0,
                        tail: 0,
                        ended: false,
                    }));
                }
                let _ = self.rbuf.split_to(header);
                self.frame = Some(InFrame {
                    left: len,
                    mask,
                    phase: 0,
                });
                Ok(true)
            }
            other => Err(FrameError::Opcode(other)),
        }
    }

    /// One step of reading a compressed message: unmasks what arrived of its frame and
    /// inflates into the caller's buffer, at most up to `max_message` inflated bytes in all
    /// (one more is a refusal, so a decompression bomb never grows past the limit).
    fn read_inflated(&mut self, buf: &mut ReadBuf<'_>) -> Result<Inflated, FrameError> {
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
                (&DEFLATE_TAIL[inf.tail..], FlushDecompress::Sync)
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
            let had_input = !input.is_empty();
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
                if had_input {
                    return Err(FrameError::Inflate);
                }
                // The tail is in and nothing more comes out: the message is done.
                self.end_inflating();
                return Ok(Inflated::Next);
            }
        }
    }

    fn end_inflating(&mut self) {
        if let Some(inf) = self.inflating.take() {
            return_inflater(inf.inflater);
        }
    }

    /// Deflates the caller's slices into `zout` as one compressed frame. `false`: the frame
    /// would not be smaller, and goes out uncompressed.
    fn compress_frame(&mut self, bufs: &[io::IoSlice<'_>], total: usize) -> bool {
        let mut out = std::mem::take(&mut self.zout);
        out.clear();
        self.zsent = 0;
        // Room for the longest header, then at most the frame's own length and the tail.
        out.reserve(MAX_HEADER + total + DEFLATE_TAIL.len());
        out.resize(10, 0);
        let deflated = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            let c = c.get_or_insert_with(|| Compress::new(Compression::fast(), false));
            c.reset();
            for b in bufs {
                let mut input: &[u8] = b;
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
            out.clear();
            self.zout = out;
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

    /// Refuses the client's frames: a close frame with the reason's code is sent if it can
    /// be at once, and the read fails.
    fn refuse(&mut self, cx: &mut Context<'_>, e: FrameError) -> io::Error {
        self.queue_close(e.close_code());
        self.read_closed = true;
        let _ = self.poll_control(cx);
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < MAX_HEADER {
            self.rbuf.reserve(self.read_size.max(MAX_HEADER));
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Ready(Ok(n)) => {
                if n == spare && self.read_size < MAX_READ {
                    self.read_size *= 2;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                // Quiet: a buffer grown under load is given back.
                if self.rbuf.is_empty() && self.rbuf.capacity() > INITIAL_READ {
                    self.rbuf = BytesMut::new();
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

/// XORs `data` with `mask`, starting `phase` bytes into it; eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let key: [u8; 4] = std::array::from_fn(|i| mask[(phase + i) % 4]);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A server frame header (unmasked) for a binary frame of `len` bytes.
fn binary_header(len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | OP_BINARY;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_ping(cx);
        // Pongs, pings and the close reply go out whenever the write side is between frames.
        if let Poll::Ready(Err(e)) = this.poll_control(cx) {
            return Poll::Ready(Err(e));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.inflating.is_some() && (this.frame.is_some() || !this.fragmented) {
                match this.read_inflated(buf) {
                    Ok(Inflated::Produced) => return Poll::Ready(Ok(())),
                    Ok(Inflated::Next) => continue,
                    Ok(Inflated::NeedInput) => {}
                    Err(e) => return Poll::Ready(Err(this.refuse(cx, e))),
                }
            } else if let Some(frame) = this.frame.as_mut() {
                if frame.left == 0 {
                    this.frame = None;
                    continue;
                }
                if !this.rbuf.is_empty() {
                    let n = (this.rbuf.len() as u64)
                        .min(frame.left)
                        .min(buf.remaining() as u64) as usize;
                    let chunk = &mut this.rbuf[..n];
                    unmask(chunk, frame.mask, frame.phase);
                    buf.put_slice(chunk);
                    let _ = this.rbuf.split_to(n);
                    frame.left -= n as u64;
                    frame.phase = (frame.phase + n) % 4;
                    return Poll::Ready(Ok(()));
                }
                if buf.remaining() >= DIRECT_READ && frame.left >= buf.remaining() as u64 {
                    // The frame fills the caller's buffer: read the socket straight into it
                    // and unmask there, with no copy.
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                    let n = buf.filled().len() - before;
                    if n == 0 {
                        this.read_closed = true;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            FrameError::Truncated,
                        )));
                    }
                    unmask(&mut buf.filled_mut()[before..], frame.mask, frame.phase);
                    frame.left -= n as u64;
                    frame.phase = (frame.phase + n) % 4;
                    return Poll::Ready(Ok(()));
                }
            } else if this.read_closed {
                return Poll::Ready(Ok(()));
            } else {
                match this.next_frame() {
                    Ok(true) => {
                        // A pong or the close reply goes out now if it can.
                        if !this.control.is_empty() {
                            let _ = this.poll_control(cx);
                        }
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Poll::Ready(Err(this.refuse(cx, e))),
                }
            }
            let n = ready!(this.poll_fill(cx))?;
            if n == 0 {
                // The client went away without a close frame: the end of the stream between
                // frames, a broken one inside a frame.
                this.read_closed = true;
                if this.frame.is_some() || this.inflating.is_some() || !this.rbuf.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        FrameError::Truncated,
                    )));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// All slices leave in one binary frame, in one `writev` with its header.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if this.no_plain_frame() {
            // A compressed frame still going out leaves first, then control frames.
            ready!(this.poll_control(cx))?;
            if this.deflate && total >= COMPRESS_MIN && this.compress_frame(bufs, total) {
                // The whole frame is buffered: the caller's bytes are taken.
                if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(total));
            }
            this.header_len = binary_header(total, &mut this.header);
            this.header_sent = 0;
            this.frame_left = total;
        }
        loop {
            // The rest of the header, then as much of the caller's bytes as the frame holds.
            let mut slices = [io::IoSlice::new(&[]); 65];
            let mut count = 0;
            if this.header_sent < this.header_len {
                slices[0] = io::IoSlice::new(&this.header[this.header_sent..this.header_len]);
                count = 1;
            }
            let mut room = this.frame_left;
            for b in bufs {
                if room == 0 || count == slices.len() {
                    break;
                }
                let take = b.len().min(room);
                if take > 0 {
                    slices[count] = io::IoSlice::new(&b[..take]);
                    count += 1;
                    room -= take;
                }
            }
            let mut n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let header_part = n.min(this.header_len - this.header_sent);
            this.header_sent += header_part;
            n -= header_part;
            if n > 0 {
                this.frame_left -= n;
                if this.between_frames() {
                    // Control frames waiting for this gap go out if they can.
                    if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_control(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// A close frame (1000) unless one went out already, then the socket's shutdown.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.no_plain_frame() {
            // A compressed frame still going out leaves before the close.
            ready!(this.poll_control(cx))?;
            this.queue_close(CLOSE_NORMAL);
            ready!(this.poll_control(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Fills the CONNECT's empty credential fields from the upgrade request's cookies
/// (nats-server's `jwt_cookie`, `username_cookie`, `password_cookie`, `token_cookie`).
pub struct CookieFilter(pub CookieCredentials);

impl Filter for CookieFilter {
    fn name(&self) -> &'static str {
        "ws_cookies"
    }

    fn interest(&self) -> Interest {
        Interest::of(&[OpKind::Connect])
    }

    fn on_client_op(&mut self, op: &mut ClientOp, _ctx: &mut SessionCtx) -> Verdict {
        let ClientOp::Connect(connect) = op else {
            return Verdict::Forward;
        };
        let mut changed = false;
        for (field, cookie) in [
            (&mut connect.jwt, &self.0.jwt),
            (&mut connect.user, &self.0.user),
            (&mut connect.pass, &self.0.pass),
            (&mut connect.auth_token, &self.0.token),
        ] {
            if field.as_deref().is_none_or(str::is_empty) {
                if let Some(value) = cookie {
                    *field = Some(value.clone());
                    changed = true;
                }
            }
        }
        if changed {
            Verdict::Changed
        } else {
            Verdict::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    fn settings() -> WsSettings {
        WsSettings::new(&WsSection::default(), false)
    }

    fn head<'a>(method: &'a str, path: &'a str, headers: &[(&'a str, &'a str)]) -> Head<'a> {
        Head {
            method,
            path,
            headers: headers.to_vec(),
        }
    }

    const UPGRADE: [(&str, &str); 5] = [
        ("Host", "edge.example.com:8080"),
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn status(r: Result<Option<&str>, Reject>) -> u16 {
        match r {
            Err(Reject::Http { status, .. }) => status,
            Ok(Some(_)) => 101,
            Ok(None) => 200,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn upgrades_and_health_checks() {
        let s = settings();
        assert_eq!(status(check(&head("GET", "/", &UPGRADE), &s)), 101);
        assert_eq!(status(check(&head("GET", "/?x=1", &UPGRADE), &s)), 101);
        assert_eq!(
            status(check(&head("GET", "/healthz", &[("Host", "x")]), &s)),
            200
        );
        assert_eq!(status(check(&head("HEAD", "/", &[]), &s)), 200);
        assert_eq!(status(check(&head("POST", "/", &UPGRADE), &s)), 405);
        assert_eq!(status(check(&head("GET", "/other", &UPGRADE), &s)), 404);
    }

    #[test]
    fn refuses_bad_keys_and_versions() {
        let s = settings();
        let with = |name: &str, value: &'static str| {
            let mut h: Vec<(&str, &str)> = UPGRADE
                .iter()
                .filter(|(n, _)| *n != name)
                .copied()
                .collect();
            h.push((Box::leak(name.to_string().into_boxed_str()), value));
            h
        };
        for key in [
            "",
            "short==",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j!Q==",
        ] {
            let h = with("Sec-WebSocket-Key", key);
            assert_eq!(status(check(&head("GET", "/", &h), &s)), 400, "{key}");
        }
        let h = with("Sec-WebSocket-Version", "8");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 426);
        let h = with("Connection", "keep-alive");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 400);
    }

    #[test]
    fn origins() {
        let mut s = settings();
        s.same_origin = true;
        let with_origin = |o: &'static str| {
            let mut h = UPGRADE.to_vec();
            h.push(("Origin", o));
            h
        };
        let h = with_origin("http://edge.example.com:8080");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 101);
        let h = with_origin("http://evil.example.com:8080");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 403);
        let h = with_origin("null");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 403);
        // No Origin: not a browser; accepted.
        assert_eq!(status(check(&head("GET", "/", &UPGRADE), &s)), 101);

        s.same_origin = false;
        s.allowed_origins = vec![Origin::parse("https://app.example.com").unwrap()];
        let h = with_origin("https://app.example.com:443");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 101);
        let h = with_origin("http://app.example.com");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 403);
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let mut s = settings();
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let h = head("GET", "/", &[("X-Forwarded-For", "203.0.113.9, 10.0.0.8")]);
        assert_eq!(forwarded_for(&h, &s, peer), peer);
        s.trusted_proxies = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            forwarded_for(&h, &s, peer),
            "203.0.113.9:0".parse::<SocketAddr>().unwrap()
        );
        let spoofed = head("GET", "/", &[("X-Forwarded-For", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(
            forwarded_for(&spoofed, &s, peer),
            "203.0.113.9:0".parse::<SocketAddr>().unwrap()
        );
        let garbage = head("GET", "/", &[("X-Forwarded-For", "nope")]);
        assert_eq!(forwarded_for(&garbage, &s, peer), peer);
        // Garbage written by the client, left of what the trusted proxy appended.
        let prefixed = head(
            "GET",
            "/",
            &[(
                "X-Forwarded-For",
                "nope, 198.51.100.1, 203.0.113.9, 10.1.1.1",
            )],
        );
        assert_eq!(
            forwarded_for(&prefixed, &s, peer),
            "203.0.113.9:0".parse::<SocketAddr>().unwrap()
        );
        // Every hop trusted: the farthest one read.
        let internal = head(
            "GET",
            "/",
            &[("X-Forwarded-For", "garbage, 10.2.2.2, 10.1.1.1")],
        );
        assert_eq!(
            forwarded_for(&internal, &s, peer),
            "10.2.2.2:0".parse::<SocketAddr>().unwrap()
        );
        // With ports, and across two headers.
        let ported = head(
            "GET",
            "/",
            &[
                ("X-Forwarded-For", "[2001:db8::7]:4711"),
                ("X-Forwarded-For", "10.0.0.3:80"),
            ],
        );
        assert_eq!(
            forwarded_for(&ported, &s, peer),
            "[2001:db8::7]:0".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn ip_nets() {
        let n = IpNet::parse("192.0.2.0/24").unwrap();
        assert!(n.contains("192.0.2.200".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("host").is_err());
    }

    #[tokio::test]
    async fn one_frame_per_write_and_text_frames_read() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::AsyncWriteExt;

        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

        let slices = [
            io::IoSlice::new(b"MSG a 1 1\r\nx\r\n"),
            io::IoSlice::new(b"MSG b 1 1\r\ny\r\n"),
            io::IoSlice::new(b"PING\r\n"),
        ];
        let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &slices))
            .await
            .unwrap();
        assert_eq!(n, 34);
        server.write_all(b"PONG\r\n").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(
                b"MSG a 1 1\r\nx\r\nMSG b 1 1\r\ny\r\nPING\r\n"
            ))
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"PONG\r\n"))
        );

        // Text and binary frames from the client read as one byte stream.
        client.send(Message::text("CONNECT {}\r\n")).await.unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"PING\r\n")))
            .await
            .unwrap();
        client.close(None).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"CONNECT {}\r\nPING\r\n");
    }

    /// Frames of every length class (7-bit, 16-bit, 64-bit) both ways through a pipe far
    /// smaller than a frame, so every write is partial, headers included.
    #[tokio::test]
    async fn large_frames_through_partial_writes() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::AsyncWriteExt;

        let (server_io, client_io) = tokio::io::duplex(100);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let sizes = [1usize, 125, 126, 65_535, 65_536, 200_000];
        let payload = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 253) as u8).collect() };

        let writer = tokio::spawn(async move {
            for n in sizes {
                server.write_all(&payload(n)).await.unwrap();
            }
            server.flush().await.unwrap();
            server
        });
        for n in sizes {
            let frame = client.next().await.unwrap().unwrap();
            assert_eq!(frame, Message::Binary(Bytes::from(payload(n))), "{n} bytes");
        }
        let mut server = writer.await.unwrap();

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sent = Vec::new();
        for n in sizes {
            client
                .send(Message::Binary(Bytes::from(payload(n))))
                .await
                .unwrap();
            sent.extend(payload(n));
        }
        client.close(None).await.unwrap();
        assert_eq!(reader.await.unwrap(), sent);
    }

    /// Writes raw client frames (masked with `mask`) and returns what the server sends back.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            f.push(masked | payload.len() as u8);
        } else {
            f.push(masked | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mut body = payload.to_vec();
        if let Some(m) = mask {
            f.extend_from_slice(&m);
            unmask(&mut body, m, 0);
        }
        f.extend(body);
        f
    }

    /// A frame larger than the reader's buffer is read straight into it after its first
    /// bytes, across many reads, its mask continuing where the last read stopped.
    #[tokio::test]
    async fn a_large_frame_read_in_pieces() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(8 * 1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let payload: Vec<u8> = (0..100_003u32).map(|i| (i % 241) as u8).collect();
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        let mask = [0xa1, 0x07, 0x5c, 0xe3];
        frame.extend_from_slice(&mask);
        let mut masked = payload.clone();
        unmask(&mut masked, mask, 0);
        frame.extend(masked);
        let writer = tokio::spawn(async move {
            client.write_all(&frame).await.unwrap();
            client
        });
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024 + 3];
        while got.len() < payload.len() {
            let n = server.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, payload);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn fragments_pings_and_close() {
        use tokio::io::AsyncWriteExt;

        let (server_io, mut client) = tokio::io::duplex(64 * 1024);
        let mut server = WsStream::new(server_io, BytesMut::new(), 1 << 20, None);
        let m = Some([1, 2, 3, 4]);
        let mut bytes = client_frame(false, OP_TEXT, b"CONNECT ", m);
        bytes.extend(client_frame(true, OP_PING, b"hi", m));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"{}\r\n", m));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"PING\r\n", m));
        bytes.extend(client_frame(true, OP_CLOSE, &1001u16.to_be_bytes(), m));
        client.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"CONNECT {}\r\nPING\r\n");
        // The pong carries the ping's payload; the close reply echoes the client's code.
        let mut back = [0u8; 8];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [0x8A, 2, b'h', b'i', 0x88, 2, 0x03, 0xE9]);
    }

    #[tokio::test]
    async fn violations_close_with_their_code() {
        use tokio::io::AsyncWriteExt;

        let m = Some([9, 8, 7, 6]);
        let cases: [(Vec<u8>, u16); 6] = [
            (
                client_frame(true, OP_BINARY, b"PING\r\n", None),
                CLOSE_PROTOCOL_ERROR,
            ),
            (client_frame(true, 0x3, b"x", m), CLOSE_PROTOCOL_ERROR),
            (
                client_frame(true, OP_CONTINUATION, b"x", m),
                CLOSE_PROTOCOL_ERROR,
            ),
            (client_frame(false, OP_PING, b"x", m), CLOSE_PROTOCOL_ERROR),
            (
                {
                    let mut f = client_frame(true, OP_BINARY, b"x", m);
                    f[0] |= 0x40;
                    f
                },
                CLOSE_PROTOCOL_ERROR,
            ),
            (
                client_frame(true, OP_BINARY, &[b'x'; 2000], m),
                CLOSE_TOO_BIG,
            ),
        ];
        for (bytes, code) in cases {
            let (server_io, mut client) = tokio::io::duplex(64 * 1024);
            let mut server = WsStream::new(server_io, BytesMut::new(), 1024, None);
            client.write_all(&bytes).await.unwrap();
            let mut got = Vec::new();
            let err = server.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            let mut back = [0u8; 4];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back[..2], [0x88, 2]);
            assert_eq!(u16::from_be_bytes([back[2], back[3]]), code, "{err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_on_the_interval() {
        use futures_util::StreamExt;

        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut server = WsStream::new(
            server_io,
            BytesMut::new(),
            1 << 20,
            Some(Duration::from_secs(30)),
        );
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        // The session polls the read side while it waits for the client.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let _ = server.read(&mut buf).await;
        });
        for _ in 0..2 {
            let frame = client.next().await.unwrap().unwrap();
            assert!(matches!(frame, Message::Ping(_)), "{frame:?}");
        }
        reader.abort();
    }

    #[test]
    fn deflate_offers() {
        let answer = |offers: &[&'static str]| {
            let h: Vec<(&str, &str)> = offers
                .iter()
                .map(|o| ("Sec-WebSocket-Extensions", *o))
                .collect();
            deflate_answer(&head("GET", "/", &h))
        };
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
        bytes.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes(), m));
        client.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1000];
        loop {
            let n = server.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        let mut want = pub1.clone();
        want.extend_from_slice(b"PING\r\n");
        want.extend_from_slice(&big);
        assert_eq!(got, want);

        // A compressible frame goes out compressed, a small one as it is.
        let msg = b"MSG orders.new 1 11\r\nhello world\r\n".repeat(20);
        server.write_all(&msg).await.unwrap();
        server.write_all(b"PONG\r\n").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(server_frame(&mut client).await, (0x8A, b"p".to_vec()));
        assert_eq!(
            server_frame(&mut client).await,
            (0x88, 1000u16.to_be_bytes().to_vec())
        );
        let (b0, z) = server_frame(&mut client).await;
        assert_eq!(b0, 0x80 | 0x40 | OP_BINARY);
        assert!(z.len() < msg.len());
        assert_eq!(inflate(&z), msg);
        assert_eq!(
            server_frame(&mut client).await,
            (0x82, b"PONG\r\n".to_vec())
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
        let cases: [(Vec<u8>, u16); 4] = [
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
        ];
        for (bytes, code) in cases {
            let (server_io, mut client) = tokio::io::duplex(64 * 1024);
            let mut server = WsStream::new(server_io, BytesMut::new(), 64 * 1024, None);
            server.enable_deflate();
            client.write_all(&bytes).await.unwrap();
            let mut got = Vec::new();
            let err = server.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(got.len() <= 64 * 1024 + 1);
            let (b0, payload) = server_frame(&mut client).await;
            assert_eq!(b0, 0x88);
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{err}");
        }
    }

    #[test]
    fn cookie_credentials() {
        let mut s = settings();
        s.jwt_cookie = Some("jwt".into());
        s.token_cookie = Some("tok".into());
        let h = head("GET", "/", &[("Cookie", "a=1; jwt=\"eyJ\"; tok=")]);
        let c = cookies(&h, &s);
        assert_eq!(c.jwt.as_deref(), Some("eyJ"));
        assert_eq!(c.token, None);
        assert!(!format!("{c:?}").contains("eyJ"));
    }
}
