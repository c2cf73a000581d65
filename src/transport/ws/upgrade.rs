//! The HTTP side of a WebSocket listener: the upgrade request is read (its head bounded to
//! 32 KiB and 100 headers) and answered here, rather than by tungstenite's handshake, so the
//! edge can answer what a NATS WebSocket port is asked besides upgrades: a plain `GET` or
//! `HEAD` (a load balancer's health check) gets `200 OK`, and a refused upgrade gets a status
//! that says why (`403` for an origin, `400` for a bad key or a version other than 13,
//! `404` for another path than a configured one, `405` for another method), with the
//! status text as its body, as nats-server answers.
//!
//! An accepted upgrade also settles what the session learns from the request: the client's
//! address (from `X-Forwarded-For`, believed only from a trusted proxy), credentials from
//! cookies, and whether permessage-deflate is on. After it, the connection is a
//! [`WsStream`].

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::settings::{split_authority, Origin};
use super::{cookies, deflate, CookieCredentials, WsSettings, WsStream};
use crate::transport::StageCell;

/// The longest request head accepted before the upgrade: room for a browser's cookies
/// (a user JWT beside the application's own), four times what most proxies allow a line.
const MAX_REQUEST_HEAD: usize = 32 * 1024;
const MAX_HEADERS: usize = 100;

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
        431 => "Request Header Fields Too Large",
        _ => "Error",
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

/// A parsed request head: the method, the path and every header in order.
pub(super) struct Head<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    /// The minor version of HTTP/1.x.
    pub(super) minor_version: u8,
    pub(super) headers: Vec<(&'a str, &'a str)>,
    /// The `Cookie` headers as sent, UTF-8 or not: one cookie with a byte outside ASCII
    /// (another application's, on the same domain) must not hide the others.
    pub(super) cookies: Vec<&'a [u8]>,
}

impl Head<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Every value of header `name`, in order.
    pub(super) fn all(&self, name: &str) -> impl Iterator<Item = &str> {
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
    stage: &StageCell,
) -> Result<Upgraded<S>, Reject>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    // How much of `buf` has been looked at for the head's end: a head sent a few bytes at a
    // time is scanned once, not once per read.
    let mut scanned = 0;
    let head_len = loop {
        if let Some(end) = head_end(&buf, scanned) {
            break end;
        }
        scanned = buf.len();
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(respond(
                &mut stream,
                Reject::http(431, "request head over 32 KiB"),
                false,
                stage,
            )
            .await);
        }
        let n = match stream.read_buf(&mut buf).await {
            Ok(n) => n,
            // A reset before any byte is a health check that closed that way: quiet.
            Err(e) if buf.is_empty() && crate::transport::tls::is_reset(&e) => {
                return Err(Reject::ClosedEarly)
            }
            // On `wss`, a TLS peer that closed without a `close_notify` (a TLS health check,
            // a client killed): an end like any other, as `tls_eof_as_close` reads it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if buf.first() == Some(&crate::transport::tls::HANDSHAKE_RECORD) {
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
            // A value that is not UTF-8 is left out rather than refused, as nats-server
            // takes any bytes there: none of the headers the edge reads (Host, Origin,
            // X-Forwarded-For, the WebSocket ones) is valid with such bytes anyway. Cookies
            // are kept as bytes and judged one by one, as Go's HTTP server does.
            let list = request
                .headers
                .iter()
                .filter_map(|h| Some((h.name, std::str::from_utf8(h.value).ok()?)))
                .collect();
            let cookies = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                .map(|h| h.value)
                .collect();
            Head {
                method: request.method.unwrap_or_default(),
                path: request.path.unwrap_or_default(),
                minor_version: request.version.unwrap_or_default(),
                headers: list,
                cookies,
            }
        }
        unparsed => {
            let reject = match unparsed {
                Err(httparse::Error::TooManyHeaders) => Reject::http(431, "too many headers"),
                Err(e) => Reject::http(400, format!("not HTTP/1.1: {e}")),
                _ => Reject::http(400, "incomplete request"),
            };
            return Err(respond(&mut stream, reject, false, stage).await);
        }
    };

    match check(&head, settings) {
        Err(reject) => Err(respond(&mut stream, reject, head.method == "HEAD", stage).await),
        Ok(None) => {
            write_response(&mut stream, 200, "", "ok\n", head.method == "HEAD").await?;
            // The answer is out: a checker that left before the TLS close_notify (or the
            // FIN) went out has still had it.
            let _ = stream.shutdown().await;
            Ok(Upgraded::Answered)
        }
        Ok(Some(key)) => {
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let deflate = if settings.compression {
                deflate::answer(head.all("sec-websocket-extensions"))
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
            let cookies = cookies::from_request(&head, settings);
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

/// Where the request head ends: after its empty line. Lines may end in a bare LF, as Go's
/// HTTP server (nats-server's) reads them. `scanned` bytes were looked at before: only a line
/// end among their last two may have been missing what follows it.
fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(2).min(buf.len());
    memchr::memchr_iter(b'\n', &buf[from..]).find_map(|i| match &buf[from + i + 1..] {
        [b'\n', ..] => Some(from + i + 2),
        [b'\r', b'\n', ..] => Some(from + i + 3),
        _ => None,
    })
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
        // A WebSocket client's request (it carries a key) without `Upgrade: websocket` is
        // a failed upgrade, as nats-server answers it, not a health check.
        if head.header("sec-websocket-key").is_some() {
            return Err(Reject::http(
                400,
                "a Sec-WebSocket-Key without Upgrade: websocket",
            ));
        }
        return Ok(None);
    }
    if head.minor_version < 1 {
        // RFC 6455 section 4.1: the opening handshake is HTTP/1.1 or later.
        return Err(Reject::http(400, "a WebSocket upgrade over HTTP/1.0"));
    }
    let path = head.path.split(['?', '#']).next().unwrap_or_default();
    if let Some(wanted) = settings.path.as_deref().filter(|wanted| path != *wanted) {
        return Err(Reject::http(
            404,
            format!("path {path} (the WebSocket path is {wanted})"),
        ));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(Reject::http(400, "Connection header without upgrade"));
    }
    // One Host header (Go's HTTP server in front of nats-server's refuses two), not empty
    // (nats-server's handler: `'Host' missing in request`).
    let host = match (head.header("host"), head.all("host").nth(1)) {
        (_, Some(_)) => return Err(Reject::http(400, "more than one Host header")),
        (None | Some(""), None) => return Err(Reject::http(400, "no Host header")),
        (Some(host), None) => host,
    };
    let key = head.header("sec-websocket-key").unwrap_or_default();
    if !valid_key(key) {
        return Err(Reject::http(400, format!("bad Sec-WebSocket-Key {key:?}")));
    }
    // A list that names 13 will do, as nats-server reads the header.
    if !head.has_token("sec-websocket-version", "13") {
        return Err(Reject::http(
            400,
            "Sec-WebSocket-Version without 13 (the only one supported)",
        ));
    }
    // As nats-server reads it: `Origin`, or the older `Sec-WebSocket-Origin`; an empty one
    // counts as none.
    let origin = [head.header("origin"), head.header("sec-websocket-origin")]
        .into_iter()
        .flatten()
        .find(|o| !o.is_empty());
    if let Some(origin) = origin {
        check_origin(origin, host, settings)?;
    }
    Ok(Some(key))
}

/// A key is 16 bytes in base64: 22 characters and `==`. The 4 bits the last character
/// carries past the 16 bytes are not checked, as Go's decoder (nats-server's) does not.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && key.ends_with("==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

fn check_origin(origin: &str, host: &str, settings: &WsSettings) -> Result<(), Reject> {
    if !settings.same_origin && settings.allowed_origins.is_empty() {
        return Ok(());
    }
    let forbidden = |why: String| Reject::http(403, why);
    let parsed = Origin::parse(origin).map_err(|_| forbidden(format!("origin {origin:?}")))?;
    if settings.same_origin {
        // The page's scheme must be the listener's too, as nats-server checks it: a page
        // served over https has no business on a plain `ws` listener, nor the reverse.
        let (scheme, default_port) = if settings.secure {
            ("https", 443)
        } else {
            ("http", 80)
        };
        let same = parsed.scheme == scheme
            && split_authority(host, default_port)
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

/// Writes the answer to a refused request (bounded by the caller's handshake timeout), its
/// body left out for a `HEAD` request as HTTP wants, and hands the refusal back. The connection is closed by the caller once it has recorded the
/// refusal, so the client never sees the close before the edge has counted it.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reject: Reject,
    head_only: bool,
    stage: &StageCell,
) -> Reject {
    if let Reject::Http {
        status,
        reason,
        detail,
    } = &reject
    {
        // As nats-server answers: the status text alone (the detail, which can name the
        // configured path or origins, goes to the log), and the version it speaks.
        let body = format!("{}\n", reason_phrase(*status));
        let extra = "Sec-WebSocket-Version: 13\r\n";
        if write_response(stream, *status, extra, &body, head_only)
            .await
            .is_ok()
            && stream.shutdown().await.is_ok()
        {
            // A client that keeps its end open past the handshake timeout must not turn
            // the refusal into a timeout in the log.
            stage.answered(Reject::Http {
                status: *status,
                reason,
                detail: detail.clone(),
            });
            // What the client sent past what was read (the rest of a head over the limit)
            // would otherwise turn the close into a reset, and the refusal with it.
            crate::transport::linger(stream).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WsSection;
    use crate::transport::ws::IpNet;

    fn settings() -> WsSettings {
        WsSettings::new(&WsSection::default(), false)
    }

    fn head<'a>(method: &'a str, path: &'a str, headers: &[(&'a str, &'a str)]) -> Head<'a> {
        Head {
            method,
            path,
            minor_version: 1,
            headers: headers.to_vec(),
            cookies: Vec::new(),
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
        // Without a configured path any path upgrades, as on nats-server (a client behind
        // an ingress that routes `/nats`); with one, only that path does.
        assert_eq!(status(check(&head("GET", "/nats", &UPGRADE), &s)), 101);
        let only_nats = WsSettings {
            path: Some("/nats".into()),
            ..settings()
        };
        assert_eq!(
            status(check(&head("GET", "/nats?x", &UPGRADE), &only_nats)),
            101
        );
        assert_eq!(status(check(&head("GET", "/", &UPGRADE), &only_nats)), 404);
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
            "dGhlIHNhbXBsZSBub25j!Q==",
        ] {
            let h = with("Sec-WebSocket-Key", key);
            assert_eq!(status(check(&head("GET", "/", &h), &s)), 400, "{key}");
        }
        // Bits past the 16 bytes in the last character pass, as Go's decoder lets them.
        let h = with("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZR==");
        assert!(matches!(check(&head("GET", "/", &h), &s), Ok(Some(_))));
        // A version list naming 13 will do; another version or none gets 400, as from
        // nats-server.
        let h = with("Sec-WebSocket-Version", "13, 8");
        assert!(matches!(check(&head("GET", "/", &h), &s), Ok(Some(_))));
        let h = with("Sec-WebSocket-Version", "8");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 400);
        let h = with("Sec-WebSocket-Version", "");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 400);
        let h = with("Connection", "keep-alive");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 400);
        // One Host header, not empty, as Go's HTTP server in front of nats-server's wants.
        let h = with("Host", "");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 400);
        let mut h = with("Host", "a.example");
        h.push(("Host", "b.example"));
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 400);
        // A key without `Upgrade: websocket` is a failed upgrade, not a health check.
        let h = with("Upgrade", "h2c");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 400);
        // An HTTP/1.0 upgrade is refused; an HTTP/1.0 health check is answered.
        let old = |headers: &[(&'static str, &'static str)]| Head {
            minor_version: 0,
            ..head("GET", "/", headers)
        };
        assert_eq!(status(check(&old(&UPGRADE), &s)), 400);
        assert_eq!(status(check(&old(&[]), &s)), 200);
    }

    #[test]
    fn a_head_ends_at_its_empty_line_with_or_without_carriage_returns() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 0), Some(26));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
    }

    /// A head that arrives a byte at a time is found where it ends, each scan starting where
    /// the last one stopped.
    #[test]
    fn a_head_read_in_pieces_is_scanned_once() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        ] {
            let mut scanned = 0;
            let found = (1..=head.len()).find_map(|len| {
                let end = head_end(&head[..len], scanned);
                scanned = len;
                end
            });
            assert_eq!(found, Some(head.len()), "{}", head.escape_ascii());
        }
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
        // The same host and port under the other scheme is another origin.
        let h = with_origin("https://edge.example.com:8080");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 403);
        s.secure = true;
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 101);
        let h = with_origin("http://edge.example.com:8080");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 403);
        s.secure = false;
        // No Origin, or an empty one: not a browser; accepted. The older
        // `Sec-WebSocket-Origin` is read when `Origin` is missing or empty.
        assert_eq!(status(check(&head("GET", "/", &UPGRADE), &s)), 101);
        let h = with_origin("");
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 101);
        let mut h = UPGRADE.to_vec();
        h.push(("Sec-WebSocket-Origin", "http://evil.example.com:8080"));
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 403);
        h.push(("Origin", ""));
        assert_eq!(status(check(&head("GET", "/", &h), &s)), 403);

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
}
