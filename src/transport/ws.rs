//! WebSocket listeners (`ws`, and `wss` over the TLS acceptor): the HTTP upgrade, the
//! adapter that turns a WebSocket into a byte stream, and the cookie credentials filter.
//!
//! The upgrade is parsed here rather than by tungstenite's handshake so the edge can answer
//! what a NATS WebSocket port is asked besides upgrades: a plain `GET` (a load balancer's
//! health check) gets `200 OK`; a refused upgrade gets a status that says why (`403` for an
//! origin, `400` for a bad key, `426` for a version other than 13, `404` for another path).
//!
//! After the upgrade, the NATS protocol travels in binary frames both ways (text frames from
//! clients are accepted too). Every write of the session becomes one frame; a vectored write
//! (the forwarder's batch of queued slices) becomes one frame holding all of its slices.
//! permessage-deflate is declined: tungstenite does not implement it, so the 101 response
//! carries no `Sec-WebSocket-Extensions` and clients send uncompressed frames.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use nats_edge_filters::{ClientOp, Filter, Interest, OpKind, SessionCtx, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

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
            secure,
        }
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
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
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            let client_addr = forwarded_for(&head, settings, client_addr);
            let cookies = cookies(&head, settings);
            let ws = WebSocketStream::from_partially_read(
                stream,
                leftover.to_vec(),
                Role::Server,
                Some(settings.ws_config()),
            )
            .await;
            Ok(Upgraded::WebSocket {
                stream: Box::new(WsStream::new(ws, settings.ping_interval)),
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

/// A WebSocket as a byte stream.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the message being read.
    pending: Bytes,
    read_closed: bool,
    ping_every: Option<Duration>,
    ping_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(ws: WebSocketStream<S>, ping_every: Option<Duration>) -> Self {
        WsStream {
            ws,
            pending: Bytes::new(),
            read_closed: false,
            ping_every,
            ping_timer: ping_every.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
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
        // If the writer cannot take a frame right now, this ping is skipped; the next one
        // comes one interval later.
        if let Poll::Ready(Ok(())) = Pin::new(&mut self.ws).poll_ready(cx) {
            if Pin::new(&mut self.ws)
                .start_send(Message::Ping(Bytes::new()))
                .is_ok()
            {
                let _ = Pin::new(&mut self.ws).poll_flush(cx);
            }
        }
        timer.as_mut().reset(Instant::now() + every);
        let _ = timer.as_mut().poll(cx);
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: impl FnOnce() -> Bytes,
    ) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(frame()))
            .map_err(to_io)?;
        Poll::Ready(Ok(()))
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
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
        loop {
            if !this.pending.is_empty() {
                let n = buf.remaining().min(this.pending.len());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(text))) => this.pending = Bytes::from(text),
                Some(Ok(Message::Close(_))) | None => this.read_closed = true,
                // Pings are answered by tungstenite; pongs and raw frames carry no data.
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    this.read_closed = true
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
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
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(this.poll_send(cx, || Bytes::copy_from_slice(buf)))?;
        Poll::Ready(Ok(buf.len()))
    }

    /// All slices leave in one binary frame.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(this.poll_send(cx, || {
            let mut frame = BytesMut::with_capacity(total);
            for b in bufs {
                frame.extend_from_slice(b);
            }
            frame.freeze()
        }))?;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(to_io)
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
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut server = WsStream::new(server, None);
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

    #[tokio::test(start_paused = true)]
    async fn pings_on_the_interval() {
        use futures_util::StreamExt;

        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut server = WsStream::new(server, Some(Duration::from_secs(30)));
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
