//! Reaching nats-server: upstream URLs, dialling them in order with failover, optionally
//! behind a PROXY protocol header and over TLS, and reading the server's first INFO (the
//! server speaks first; its INFO carries the nonce and max_payload the client must see).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nats_edge_filters::Info;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::ProxyProtocolVersion;
use crate::proto::{self, Direction, ScanLimits, Verb};
use crate::server_version::ServerVersion;
use crate::transport::proxy_protocol::{self, ProxyAddrs};
use crate::transport::tls::ClientTls;
use crate::transport::ReadAhead;

/// The longest INFO line accepted from an upstream. Cluster INFOs with many connect_urls
/// are long, but not this long.
pub const MAX_SERVER_CONTROL_LINE: usize = 256 * 1024;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Credentials carried in an upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    /// `nats://user:pass@host`
    UserPass { user: String, pass: Secret },
    /// `nats://token@host`
    Token(Secret),
}

/// One parsed `nats://[user:pass@|token@]host[:port]` (or `tls://...`) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `tls://`: this upstream is reached over TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub credentials: Option<UrlCredentials>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{0}`: only nats:// and tls:// URLs are supported")]
    Scheme(String),
    #[error("`{0}`: {1}")]
    Malformed(String, String),
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let redacted = redact(url);
        // A scheme is case-insensitive (RFC 3986), as the NATS clients read it.
        let scheme_len = url.find("://").map_or(0, |i| i + 3);
        let rest = &url[scheme_len..];
        let tls = match url[..scheme_len].to_ascii_lowercase().as_str() {
            "nats://" => false,
            "tls://" => true,
            _ => return Err(UrlError::Scheme(redacted)),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if userinfo.is_some_and(|u| u.contains("://")) {
            return Err(UrlError::Malformed(
                redacted,
                "two URLs run together (one URL per --upstream)".into(),
            ));
        }
        let credentials = userinfo.map(|u| match u.split_once(':') {
            Some((user, pass)) => UrlCredentials::UserPass {
                user: percent_decode(user),
                pass: Secret(percent_decode(pass)),
            },
            None => UrlCredentials::Token(Secret(percent_decode(u))),
        });
        let (host, port) = if hostport.ends_with(']') || !hostport.contains(':') {
            if hostport.starts_with('[') != hostport.ends_with(']') {
                return Err(UrlError::Malformed(redacted, "unbalanced brackets".into()));
            }
            (hostport.to_string(), 4222)
        } else {
            // Not `parse_host_port`'s message, which quotes the port: without an `@`, what
            // follows the last `:` may be a password written without its host
            // (`nats://edge:s3cret`).
            crate::config::parse_host_port(hostport).map_err(|_| {
                // Masked from the first `:` after the scheme: a password may hold colons.
                let body = redacted.find("://").map_or(0, |s| s + 3);
                let shown = redacted[body..]
                    .find(':')
                    .map_or(redacted.clone(), |colon| {
                        format!("{}***", &redacted[..=body + colon])
                    });
                UrlError::Malformed(
                    shown,
                    "not host:port with a numeric port (credentials go before `@host`)".into(),
                )
            })?
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(UrlError::Malformed(redacted, "no host".into()));
        }
        // Caught here rather than at every dial: two URLs in one `--upstream` (which takes
        // one; a list in the file or the environment is split at its commas) make a "host"
        // such as `a:4222,nats://b`.
        let host_name = |h: &str| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        };
        // An IPv6 address may carry a numeric zone (`fe80::1%2`), as a socket address does.
        let ip = |h: &str| match h.split_once('%') {
            Some((addr, zone)) => {
                addr.parse::<std::net::Ipv6Addr>().is_ok()
                    && !zone.is_empty()
                    && zone.bytes().all(|b| b.is_ascii_digit())
            }
            None => h.parse::<std::net::IpAddr>().is_ok(),
        };
        if !ip(&host) && !host_name(&host) {
            return Err(UrlError::Malformed(
                redacted,
                format!(
                    "`{host}` is neither a host name nor an IP address (one URL per --upstream)"
                ),
            ));
        }
        if port == 0 {
            return Err(UrlError::Malformed(
                redacted,
                "port 0 cannot be dialled".into(),
            ));
        }
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            credentials,
        })
    }

    /// `host:port`, for dialling.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Prints as `nats://host:port` (or `tls://`), never with credentials.
impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// `url` with anything before its last `@` (credentials) masked, with or without a scheme:
/// `edge:s3cret@host` written without `nats://` must not print its password either.
fn redact(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    // The scheme kept is the one before the credentials; a `://` after them is another
    // URL's (two run together), and everything up to the last `@` is masked.
    let start = url[..at].find("://").map_or(0, |s| s + 3);
    format!("{}***{}", &url[..start], &url[at..])
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why one upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Timed out with a PROXY header sent before classic TLS: a nats-server in TLS-first
    /// fallback mode (`tls { handshake_first: "300ms" }`) takes the header for the start of a
    /// TLS handshake and holds its INFO back, for good.
    #[error(
        "timed out after {0:?}; a nats-server in TLS-first fallback mode (tls {{ handshake_first: <delay> }}) \
         takes the PROXY header for a TLS handshake and sends no INFO: set upstream.tls.handshake_first = true"
    )]
    TimeoutAfterProxyHeader(Duration),
    /// The same server, closing the connection first: it gives up on the handshake it took
    /// the header for after its own TLS timeout (2 s unless `tls { timeout }` says otherwise).
    #[error(
        "closed before sending INFO; if it is a nats-server in TLS-first fallback mode (tls {{ handshake_first: <delay> }}), \
         it took the PROXY header for a TLS handshake: set upstream.tls.handshake_first = true \
         (nats-server 2.12.9 or 2.14.1 and later)"
    )]
    ClosedAfterProxyHeader,
    /// Classic TLS, connected, and no INFO in time: a nats-server with `tls { handshake_first:
    /// true }` waits for the client's TLS handshake and sends nothing before it.
    #[error(
        "timed out after {0:?} with no INFO; if it is a nats-server with tls {{ handshake_first: true }}, \
         it waits for the TLS handshake first: set upstream.tls.handshake_first = true"
    )]
    TimeoutBeforeTls(Duration),
    /// The same server, closing the connection first, at the end of its own TLS timeout.
    #[error(
        "closed before sending INFO; if it is a nats-server with tls {{ handshake_first: true }}, \
         it waited for the TLS handshake first: set upstream.tls.handshake_first = true"
    )]
    ClosedBeforeTls,
    /// TLS-first toward a server that sent its INFO in the clear: it expects classic TLS.
    #[error(
        "sent its INFO in the clear instead of a TLS handshake: it does not start with TLS; \
         set upstream.tls.handshake_first = false (or tls {{ handshake_first: true }} on the server)"
    )]
    NotTlsFirst,
    /// Its INFO and version say it misreads a PROXY header ahead of TLS
    /// ([`ServerVersion::misreads_proxy_header_before_tls`]): the TLS handshake would fail
    /// on the header's bytes, or the ClientHello go to its NATS parser.
    #[error(
        "nats-server {version} misreads a PROXY header ahead of TLS {when} (fixed in {fixed_in}): \
         upgrade it, or turn upstream.proxy_protocol off"
    )]
    ProxyHeaderBeforeTls {
        version: String,
        when: &'static str,
        fixed_in: &'static str,
    },
    /// A PROXY header naming a client went out, and the INFO names the edge's own address
    /// as `client_ip`: this server did not read the header (nats-server without
    /// `proxy_protocol: true` reads it as NATS and closes the connection at its first bytes).
    #[error(
        "does not read PROXY protocol headers (its INFO names the edge's address, not the client's): \
         set proxy_protocol: true in its configuration (nats-server 2.12.2 or later), or turn \
         upstream.proxy_protocol off"
    )]
    ProxyHeaderIgnored,
    #[error("closed before sending INFO")]
    ClosedBeforeInfo,
    #[error("read: {0}")]
    Read(io::Error),
    #[error("did not start with a valid INFO")]
    BadInfo,
    #[error("requires TLS (set [upstream] tls or use a tls:// URL)")]
    TlsRequired,
    #[error("does not offer TLS (its INFO has neither tls_required nor tls_available)")]
    TlsUnavailable,
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    /// It answered the TLS handshake with a plain-text `-ERR` (the text, quotes included).
    #[error("refused the client before TLS: -ERR {0}")]
    RefusedBeforeTls(String),
    /// Its INFO says it is in lame-duck mode: it closes new clients at once.
    #[error("in lame-duck mode")]
    LameDuck,
    /// It answered its INFO with `-ERR 'maximum connections exceeded'`.
    #[error("maximum connections exceeded")]
    Full,
}

impl DialError {
    /// A short cause for the client's `-ERR`, without any address.
    pub fn client_text(&self) -> &'static str {
        match self {
            DialError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "connection refused"
            }
            DialError::Connect(_) => "connect failed",
            DialError::Timeout(_)
            | DialError::TimeoutAfterProxyHeader(_)
            | DialError::TimeoutBeforeTls(_) => "timed out",
            DialError::ClosedBeforeInfo
            | DialError::ClosedAfterProxyHeader
            | DialError::ClosedBeforeTls
            | DialError::Read(_) => "connection closed",
            DialError::BadInfo => "invalid INFO",
            DialError::TlsRequired
            | DialError::TlsUnavailable
            | DialError::Tls(_)
            | DialError::NotTlsFirst
            | DialError::ProxyHeaderBeforeTls { .. } => "TLS failed",
            DialError::RefusedBeforeTls(_) => "refused",
            DialError::ProxyHeaderIgnored => "PROXY protocol not enabled",
            DialError::LameDuck => "lame duck mode",
            DialError::Full => "maximum connections exceeded",
        }
    }
}

/// Where a URL stands for one dial ([`DialHistory::standing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// No failure since its last success.
    Fine,
    /// Failed within [`FAILED_URL_BACKOFF`]: tried after the others.
    FailedLately,
    /// Its back-off is over: the dial that reaches it first tries it again
    /// ([`DialHistory::claim_retry`]).
    Due,
}

/// Every upstream failed.
#[derive(Debug)]
pub struct AllUpstreamsFailed(pub Vec<(String, DialError)>);

impl AllUpstreamsFailed {
    /// Whether every upstream refused for being at its `max_connections`.
    pub fn all_full(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|(_, e)| matches!(e, DialError::Full))
    }
}

impl fmt::Display for AllUpstreamsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (url, err)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{url}: {err}")?;
        }
        Ok(())
    }
}

/// An upstream connection: plain TCP or TLS over TCP.
pub enum UpstreamStream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<ReadAhead<TcpStream>>>),
}

macro_rules! upstream_variant {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            UpstreamStream::Tcp(inner) => {
                let $s = Pin::new(inner);
                $body
            }
            UpstreamStream::Tls(inner) => {
                let $s = Pin::new(&mut **inner);
                $body
            }
        }
    };
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(inner) => Pin::new(inner).poll_read(cx, buf),
            UpstreamStream::Tls(inner) => {
                crate::transport::tls_eof_as_close(Pin::new(&mut **inner).poll_read(cx, buf))
            }
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        upstream_variant!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        upstream_variant!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Tcp(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        upstream_variant!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        upstream_variant!(self, s => s.poll_shutdown(cx))
    }
}

/// How the edge reaches its upstreams; shared by every session.
pub struct Upstream {
    pub urls: Vec<UpstreamUrl>,
    /// Bounds one dial: TCP connect, PROXY header, TLS and the first INFO.
    pub connect_timeout: Duration,
    /// Every dial tries the URLs in the listed order (`upstream.dont_randomize`); otherwise
    /// each starts at the next URL in turn.
    pub in_order: bool,
    /// `[upstream.tls]`: TLS to every URL.
    pub tls: Option<Arc<ClientTls>>,
    /// TLS settings for `tls://` URLs when `[upstream.tls]` is not set (the system's roots).
    pub default_tls: Option<Arc<ClientTls>>,
    /// Send a PROXY header with the real client's address first.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// Which URLs failed lately, so sessions try the others first (kept across a reload
    /// that leaves the URLs as they were).
    pub history: Arc<DialHistory>,
}

/// How long a URL that failed a dial is tried only after the others. A server that drops
/// packets (a pod gone from under its address) costs a dial the whole connect timeout, as
/// long as a client's own connect timeout: were every session to try it first, every client
/// would give up while a healthy URL waited second in the list.
pub const FAILED_URL_BACKOFF: Duration = Duration::from_secs(10);

fn backoff_millis() -> u64 {
    u64::try_from(FAILED_URL_BACKOFF.as_millis()).unwrap_or(u64::MAX)
}

/// When each upstream URL last failed a dial, shared by every session (and the readiness
/// check, which dials them too).
pub struct DialHistory {
    started: Instant,
    /// Per URL: milliseconds since `started` of its last failure, plus one; 0 when it has
    /// not failed since it last answered.
    failed_at: Box<[AtomicU64]>,
    /// Per URL: it has been logged as down and not yet as answering again.
    logged_down: Box<[AtomicBool]>,
    /// Per URL: the addresses its host resolved to last, for a dial whose lookup is slow.
    resolved: Box<[std::sync::Mutex<Option<Addresses>>]>,
    /// Per URL: the answer of the lookup under way, for dials that have no earlier answer to
    /// use meanwhile: they wait for that lookup rather than start one each.
    pending: Box<[std::sync::Mutex<Option<PendingLookup>>]>,
    /// Per URL: when the lookup under way started (as [`DialHistory::now`]); 0: none.
    looking_up: Box<[AtomicU64]>,
    /// Where the next dial starts in the list (modulo its length), unless in order.
    next_start: AtomicUsize,
}

/// The addresses a host name resolved to.
type Addresses = Arc<[std::net::SocketAddr]>;

/// What a lookup found, for every dial that waits for it.
type LookupAnswer = Result<Addresses, Arc<io::Error>>;

/// A lookup under way: `None` until it answers; closed if it ended without (a shutdown).
type PendingLookup = tokio::sync::watch::Receiver<Option<LookupAnswer>>;

impl DialHistory {
    pub fn new(urls: usize) -> DialHistory {
        DialHistory {
            started: Instant::now(),
            failed_at: (0..urls).map(|_| AtomicU64::new(0)).collect(),
            logged_down: (0..urls).map(|_| AtomicBool::new(false)).collect(),
            resolved: (0..urls).map(|_| std::sync::Mutex::new(None)).collect(),
            pending: (0..urls).map(|_| std::sync::Mutex::new(None)).collect(),
            looking_up: (0..urls).map(|_| AtomicU64::new(0)).collect(),
            // From a random URL: edges started together do not all begin at the first.
            next_start: AtomicUsize::new(
                std::collections::hash_map::RandomState::new().hash_one(urls) as usize,
            ),
        }
    }

    /// Whether a lookup for `url` started less than `max_age` ago is still under way: one
    /// older than that (a resolver that never answers) no longer stops the next dial from
    /// looking the name up afresh.
    fn lookup_in_flight(&self, url: usize, max_age: Duration) -> bool {
        let max_age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.looking_up.get(url).is_some_and(|since| {
            let since = since.load(Ordering::Relaxed);
            since != 0 && self.now().saturating_sub(since) < max_age
        })
    }

    /// The lookup under way for `url`, when one is ([`DialHistory::lookup_in_flight`]).
    fn pending_lookup(&self, url: usize, max_age: Duration) -> Option<PendingLookup> {
        if !self.lookup_in_flight(url, max_age) {
            return None;
        }
        let slot = self.pending.get(url)?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn last_resolved(&self, url: usize) -> Option<Addresses> {
        let slot = self.resolved.get(url)?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_resolved(&self, url: usize, addrs: Addresses) {
        if let Some(slot) = self.resolved.get(url) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(addrs);
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Where `url` stands for a dial starting `now`. Only a look: a URL whose back-off is
    /// over is [`Standing::Due`], and is claimed only when a dial gets to it, so a dial that
    /// the URLs before it serve leaves its back-off as it was.
    fn standing(&self, url: usize, now: u64) -> Standing {
        let Some(failed_at) = self.failed_at.get(url) else {
            return Standing::Fine;
        };
        match failed_at.load(Ordering::Relaxed) {
            0 => Standing::Fine,
            at if now.saturating_sub(at) < backoff_millis() => Standing::FailedLately,
            _ => Standing::Due,
        }
    }

    /// Whether this dial is the one that tries a [`Standing::Due`] URL again: the first to
    /// claim it does, and its back-off starts anew for every other dial until that one has
    /// an answer. Otherwise every session would try a URL that still drops packets first,
    /// for as long as the connect timeout, each time its back-off ends.
    fn claim_retry(&self, url: usize) -> bool {
        let Some(failed_at) = self.failed_at.get(url) else {
            return true;
        };
        let at = failed_at.load(Ordering::Relaxed);
        let now = self.now();
        at == 0
            || (now.saturating_sub(at) >= backoff_millis()
                && failed_at
                    .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
    }

    /// When `url` last failed (as [`DialHistory::now`]); 0: not since its last success.
    fn failed_at(&self, url: usize) -> u64 {
        self.failed_at
            .get(url)
            .map_or(0, |at| at.load(Ordering::Relaxed))
    }

    fn record(&self, url: usize, ok: bool) {
        if let Some(at) = self.failed_at.get(url) {
            at.store(if ok { 0 } else { self.now() }, Ordering::Relaxed);
        }
    }

    /// Whether a dial's outcome is worth a log line: a URL that goes down is logged once,
    /// not once per client, and once more when it answers again. A server at its
    /// `max_connections` is not down (it swings between full and not with its clients), so
    /// it is left to the dial counters.
    fn log_worthy(&self, url: usize, outcome: Result<(), &DialError>) -> bool {
        let Some(down) = self.logged_down.get(url) else {
            return false;
        };
        match outcome {
            Ok(()) => down.swap(false, Ordering::Relaxed),
            Err(DialError::Full) => false,
            // Like a full server, a throttling one swings between refusing and not with
            // its load. Another refusal is logged as any failure.
            Err(DialError::RefusedBeforeTls(text)) if text.contains("throttling") => false,
            Err(_) => !down.swap(true, Ordering::Relaxed),
        }
    }

    /// A connected upstream turned the client away after its INFO (`maximum connections
    /// exceeded` arriving after the dial was done): later sessions try the others first.
    pub fn refused(&self, url: usize) {
        self.record(url, false);
    }
}

impl Upstream {
    /// Plain TCP to `urls`, with no PROXY header (for tests and embedding).
    pub fn plain(urls: Vec<UpstreamUrl>, connect_timeout: Duration) -> Upstream {
        Upstream {
            history: Arc::new(DialHistory::new(urls.len())),
            urls,
            connect_timeout,
            in_order: true,
            tls: None,
            default_tls: None,
            proxy_protocol: None,
        }
    }

    fn tls_for(&self, url: &UpstreamUrl) -> Option<&Arc<ClientTls>> {
        self.tls
            .as_ref()
            .or(url.tls.then_some(self.default_tls.as_ref()).flatten())
    }

    /// The error for a dial to `url` that ran out of time, with a hint where classic TLS
    /// waited for an INFO that never came (see [`DialError::TimeoutAfterProxyHeader`] and
    /// [`DialError::TimeoutBeforeTls`]); a dial that timed out before (a connect to an
    /// address that drops packets) gets none.
    fn timed_out(&self, url: &UpstreamUrl, stage: DialStage, after: Duration) -> DialError {
        let classic_tls = self.tls_for(url).is_some_and(|tls| !tls.handshake_first());
        match stage {
            DialStage::AwaitingInfoAfterHeader if classic_tls => {
                DialError::TimeoutAfterProxyHeader(after)
            }
            DialStage::AwaitingInfo if classic_tls => DialError::TimeoutBeforeTls(after),
            _ => DialError::Timeout(after),
        }
    }
}

/// How far one dial got, for the hint in the error of a dial that runs out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum DialStage {
    /// Looking the host up, connecting, or past the INFO.
    Connecting = 0,
    /// Connected; no INFO yet.
    AwaitingInfo = 1,
    /// Connected, a PROXY header sent; no INFO yet.
    AwaitingInfoAfterHeader = 2,
}

/// A [`DialStage`] that the dial's future sets and [`dial_any`] reads once the timeout
/// has dropped that future.
#[derive(Debug, Default)]
struct AtomicDialStage(std::sync::atomic::AtomicU8);

impl AtomicDialStage {
    fn set(&self, stage: DialStage) {
        self.0.store(stage as u8, Ordering::Relaxed);
    }

    fn get(&self) -> DialStage {
        match self.0.load(Ordering::Relaxed) {
            1 => DialStage::AwaitingInfo,
            2 => DialStage::AwaitingInfoAfterHeader,
            _ => DialStage::Connecting,
        }
    }
}

/// One URL's dial in [`dial_any`], watched. Dropped before the dial ended (the client
/// left, and its session dropped the dial), after half its timeout or more: the URL
/// counts as failed, as if the dial had run out. Clients give up after about as long as
/// the connect timeout (2 s for nats.go and nats.py), so otherwise a URL that drops packets
/// would never be marked, and every session would keep trying it first. A dial abandoned
/// sooner says nothing about the URL (a load balancer's probe leaves at once). The failure
/// is recorded before the dial's connection closes (the drop runs before the fields go). It
/// is logged, as a failed dial is, but not counted in the dial counters, which count the
/// dials that ran their course.
struct WatchedDial<'a, F> {
    dial: Pin<Box<F>>,
    upstream: &'a Upstream,
    index: usize,
    started: Instant,
    /// This dial's timeout: the connect timeout, or half of it for a URL tried again.
    timeout: Duration,
    ended: bool,
}

impl<F: Future> Future for WatchedDial<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let outcome = ready!(this.dial.as_mut().poll(cx));
        // Whatever the outcome, `dial_any` records it.
        this.ended = true;
        Poll::Ready(outcome)
    }
}

impl<F> Drop for WatchedDial<'_, F> {
    fn drop(&mut self) {
        let waited = self.started.elapsed();
        if self.ended || waited < self.timeout / 2 {
            return;
        }
        let history = &self.upstream.history;
        history.record(self.index, false);
        let error = DialError::Timeout(waited);
        if history.log_worthy(self.index, Err(&error)) {
            if let Some(url) = self.upstream.urls.get(self.index) {
                tracing::warn!(upstream = %url, waited = ?waited, "upstream dial failed: no INFO before the client gave up");
            }
        }
    }
}

/// A dialled upstream whose INFO has been read.
pub struct Connected {
    pub stream: UpstreamStream,
    pub url: UpstreamUrl,
    /// Its place in [`Upstream::urls`], for [`DialHistory::refused`].
    pub index: usize,
    pub info: Info,
    /// Bytes read after the INFO line (normally none: the server waits for CONNECT).
    pub leftover: BytesMut,
}

/// The order one dial tries the URLs in, decided before its first attempt (a URL that fails
/// during this dial is not tried twice): those that have not failed since their last success
/// or whose back-off is over, from the next URL in turn (from the first with `in_order`);
/// then those that failed within [`FAILED_URL_BACKOFF`], the longest-failed first (the
/// likeliest to be back).
///
/// Starting each dial at the next URL spreads the sessions over a cluster's servers, as
/// client libraries spread their connections by shuffling their server lists: the edge keeps
/// the servers' `connect_urls` from its clients, so they cannot rebalance themselves.
fn dial_order(history: &DialHistory, urls: usize, in_order: bool) -> VecDeque<(usize, Standing)> {
    let now = history.now();
    // Each URL's standing and last failure, read once: other dials change them meanwhile.
    let (mut order, mut lately): (Vec<_>, Vec<_>) = (0..urls)
        .map(|i| (i, history.standing(i, now), history.failed_at(i)))
        .partition(|&(_, standing, _)| standing != Standing::FailedLately);
    // The turn goes round the URLs that may serve, so one that is down does not send its
    // share to the URL after it.
    if !in_order && !order.is_empty() {
        let start = history.next_start.fetch_add(1, Ordering::Relaxed) % order.len();
        order.rotate_left(start);
    }
    lately.sort_by_key(|&(_, _, failed_at)| failed_at);
    order
        .into_iter()
        .chain(lately)
        .map(|(i, standing, _)| (i, standing))
        .collect()
}

/// Tries the URLs in [`dial_order`] until one connects and sends INFO within the connect
/// timeout.
/// `client` is the real client's address and the address it connected to, for the PROXY
/// header; `None` for a connection of the edge's own (its readiness check), whose header
/// says so (v1 `UNKNOWN`, v2 `LOCAL`). `dialled_url` hears each URL's outcome (its name without
/// credentials, and whether it failed) as it comes, so a call dropped before the end (its
/// client left) has counted the URLs that had already answered.
pub async fn dial_any(
    upstream: &Upstream,
    client: Option<ProxyAddrs>,
    dialled_url: &(dyn Fn(&str, bool) + Sync),
) -> Result<Connected, AllUpstreamsFailed> {
    let mut failures = Vec::new();
    let mut order = dial_order(&upstream.history, upstream.urls.len(), upstream.in_order);
    while let Some((i, standing)) = order.pop_front() {
        let url = &upstream.urls[i];
        // Another dial is trying this URL again right now: until it has its answer, the URL
        // waits behind the others, as one that failed lately.
        if standing == Standing::Due && !upstream.history.claim_retry(i) {
            order.push_back((i, Standing::FailedLately));
            continue;
        }
        // A URL tried again after its back-off may still drop packets. With other URLs after
        // it, it gets half the connect timeout (its lookup and addresses share that half):
        // the client's own timeout is about the edge's (2 s in nats.go and nats.py), so the
        // whole of it would leave the client none for the URL that serves it. The readiness
        // check's dial has no client waiting: it keeps the whole timeout.
        let timeout = if standing == Standing::Due && !order.is_empty() && client.is_some() {
            upstream.connect_timeout / 2
        } else {
            upstream.connect_timeout
        };
        let stage = AtomicDialStage::default();
        let dialled = WatchedDial {
            dial: Box::pin(tokio::time::timeout(
                timeout,
                dial(upstream, i, client, &stage, timeout),
            )),
            upstream,
            index: i,
            started: Instant::now(),
            timeout,
            // The readiness check's dial (no client) is dropped only by a shutdown.
            ended: client.is_none(),
        }
        .await;
        let dialled =
            dialled.unwrap_or_else(|_| Err(upstream.timed_out(url, stage.get(), timeout)));
        upstream.history.record(i, dialled.is_ok());
        dialled_url(&url.to_string(), dialled.is_err());
        // A URL that goes down or comes back is logged when it does: a failure that the
        // next URL makes up for is otherwise seen only in the dial counters.
        if upstream.history.log_worthy(i, dialled.as_ref().map(|_| ())) {
            match &dialled {
                Ok(_) => tracing::info!(upstream = %url, "upstream answers again"),
                Err(e) => tracing::warn!(upstream = %url, error = %e, "upstream dial failed"),
            }
        }
        match dialled {
            Ok((stream, info, leftover)) => {
                return Ok(Connected {
                    stream,
                    url: url.clone(),
                    index: i,
                    info,
                    leftover,
                })
            }
            Err(e) => failures.push((url.to_string(), e)),
        }
    }
    Err(AllUpstreamsFailed(failures))
}

/// The addresses the URL's host resolves to, in the order a dial tries them ([`dial`]: each
/// given an equal share of the time left, as nats.go gives each address of a host its share
/// of the connect timeout, so a first address that drops packets does not use up the whole
/// timeout while the others answer: a headless Service's name, a host with IPv6 and IPv4
/// addresses). Sessions start at different addresses in turn, so a dead one delays only some
/// of them.
///
/// A lookup that takes longer than [`DNS_PATIENCE`] (a resolver that lost a query, a first
/// nameserver that does not answer) is not waited for when an earlier one found addresses:
/// those serve, and the connect timeout goes to the connect. The lookup runs on as a task of
/// its own and keeps its answer for the next dials, however long it took (one at a time per
/// URL; dials with no earlier answer wait for the one under way). A lookup that fails (the
/// name is gone) fails the dials that waited for it.
async fn resolve(
    upstream: &Upstream,
    index: usize,
    timeout: Duration,
) -> io::Result<Vec<std::net::SocketAddr>> {
    let authority = upstream.urls[index].authority();
    if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
        return Ok(vec![addr]);
    }
    let earlier = upstream.history.last_resolved(index);
    let found = match earlier {
        Some(earlier)
            if upstream
                .history
                .lookup_in_flight(index, upstream.connect_timeout * 2) =>
        {
            earlier
        }
        Some(earlier) => {
            let patience = DNS_PATIENCE.min(timeout / 2);
            match tokio::time::timeout(patience, spawn_lookup(upstream, index, authority)).await {
                Ok(found) => found?,
                Err(_) => earlier,
            }
        }
        None => match upstream
            .history
            .pending_lookup(index, upstream.connect_timeout * 2)
        {
            // Dials that come while the first lookup of a name runs (a burst of clients at
            // start-up, with a resolver that takes seconds) share it: otherwise each would
            // hold a thread of the blocking pool for as long as the resolver takes.
            Some(pending) => answer_of(pending).await?,
            None => spawn_lookup(upstream, index, authority).await?,
        },
    };
    let mut addrs = found.to_vec();
    if addrs.len() > 1 {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let start = NEXT.fetch_add(1, Ordering::Relaxed) % addrs.len();
        addrs.rotate_left(start);
    }
    Ok(addrs)
}

/// Looks `authority` up on a task of its own, which keeps what it finds for URL `index`
/// whether or not the dial that started it is still waiting.
async fn spawn_lookup(
    upstream: &Upstream,
    index: usize,
    authority: String,
) -> io::Result<Addresses> {
    let history = upstream.history.clone();
    let started = history.now();
    let (answer, pending) = tokio::sync::watch::channel(None);
    if let Some(slot) = history.pending.get(index) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(pending);
    }
    if let Some(since) = history.looking_up.get(index) {
        since.store(started, Ordering::Relaxed);
    }
    let task = tokio::spawn(async move {
        // Cleared however the task ends (dropped unrun at a shutdown included), and only
        // if no later lookup has started meanwhile.
        let _in_flight = LookupInFlight {
            history: history.clone(),
            index,
            started,
        };
        let found = tokio::net::lookup_host(authority)
            .await
            .map(|found| found.collect::<Addresses>());
        if let Ok(found) = &found {
            if !found.is_empty() {
                history.set_resolved(index, found.clone());
            }
        }
        let found = found.map_err(Arc::new);
        answer.send_replace(Some(found.clone()));
        found
    });
    let found = task
        .await
        .unwrap_or_else(|e| Err(Arc::new(io::Error::other(e))));
    found.map_err(|e| io::Error::new(e.kind(), e.to_string()))
}

/// The answer of a lookup another dial started ([`DialHistory::pending_lookup`]).
async fn answer_of(mut pending: PendingLookup) -> io::Result<Addresses> {
    let answer = pending
        .wait_for(Option::is_some)
        .await
        .map_err(|_| io::Error::other("the lookup ended without an answer"))?
        .clone();
    match answer {
        Some(found) => found.map_err(|e| io::Error::new(e.kind(), e.to_string())),
        None => Err(io::Error::other("the lookup ended without an answer")),
    }
}

/// A lookup under way for a URL, marked in its [`DialHistory`] until it ends.
struct LookupInFlight {
    history: Arc<DialHistory>,
    index: usize,
    started: u64,
}

impl Drop for LookupInFlight {
    fn drop(&mut self) {
        if let Some(since) = self.history.looking_up.get(self.index) {
            let _ = since.compare_exchange(self.started, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// How long a dial waits for its host's lookup when an earlier lookup found addresses.
const DNS_PATIENCE: Duration = Duration::from_millis(500);

/// The least time an address gets while more time is left: a little over the 1 s after
/// which Linux sends a lost SYN again, so that one lost SYN does not fail a live server.
const MIN_ADDRESS_SHARE: Duration = Duration::from_millis(1100);

/// Tries `addrs` in order, each for its share of the time left before `deadline` (at least
/// [`MIN_ADDRESS_SHARE`] of it, as Go's dialer keeps a floor per address); with the
/// connection, how many addresses it took.
async fn connect_in_turn(
    addrs: &[std::net::SocketAddr],
    deadline: tokio::time::Instant,
) -> io::Result<(TcpStream, usize)> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host resolved to no address");
    for (i, addr) in addrs.iter().enumerate() {
        let left = addrs.len() - i;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = (remaining / left as u32).max(remaining.min(MIN_ADDRESS_SHARE));
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, i + 1)),
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: timed out")),
        }
    }
    Err(last)
}

/// `stage` tells how far the dial got, for the error of a dial that then times out.
async fn dial(
    upstream: &Upstream,
    index: usize,
    client: Option<ProxyAddrs>,
    stage: &AtomicDialStage,
    timeout: Duration,
) -> Result<(UpstreamStream, Info, BytesMut), DialError> {
    // A little inside the timeout that bounds the whole dial, so that when the other
    // addresses run out of time after a refusal, the refusal is what the dial reports.
    let deadline = tokio::time::Instant::now() + timeout.saturating_sub(Duration::from_millis(20));
    let addrs = resolve(upstream, index, timeout)
        .await
        .map_err(DialError::Connect)?;
    let mut tried = 0;
    // The first server that refused (full, going away): what the dial failed for if no other
    // address connects.
    let mut refused = None;
    loop {
        let (tcp, took) = match connect_in_turn(&addrs[tried..], deadline).await {
            Ok(connected) => connected,
            Err(e) => return Err(refused.unwrap_or(DialError::Connect(e))),
        };
        tried += took;
        match dial_on(upstream, index, tcp, client, stage).await {
            // A server that is full or going away: another address of the same host (a
            // headless Service's other pods) may have room, in the time left. The URL fails
            // only when every address refused.
            Err(
                e @ (DialError::Full
                | DialError::LameDuck
                | DialError::ProxyHeaderIgnored
                | DialError::RefusedBeforeTls(_)),
            ) if tried < addrs.len() => {
                stage.set(DialStage::Connecting);
                refused.get_or_insert(e);
            }
            dialled => return dialled,
        }
    }
}

/// The rest of a dial on a connected socket: the PROXY header, TLS, the INFO.
async fn dial_on(
    upstream: &Upstream,
    index: usize,
    mut tcp: TcpStream,
    client: Option<ProxyAddrs>,
    stage: &AtomicDialStage,
) -> Result<(UpstreamStream, Info, BytesMut), DialError> {
    let url = &upstream.urls[index];
    tcp.set_nodelay(true).map_err(DialError::Connect)?;
    crate::transport::keep_alive(&tcp);
    stage.set(DialStage::AwaitingInfo);
    if let Some(version) = upstream.proxy_protocol {
        let header = match version {
            ProxyProtocolVersion::V1 => proxy_protocol::encode_v1(client),
            ProxyProtocolVersion::V2 => proxy_protocol::encode_v2(client),
        };
        tcp.write_all(&header).await.map_err(DialError::Connect)?;
        stage.set(DialStage::AwaitingInfoAfterHeader);
    }
    let Some(tls) = upstream.tls_for(url) else {
        let (info, leftover) = read_info(&mut tcp).await?;
        check_reads_proxy_header(upstream, &info, &tcp, client)?;
        if info.tls_required == Some(true) {
            return Err(DialError::TlsRequired);
        }
        return Ok((UpstreamStream::Tcp(tcp), info, leftover));
    };
    let name = tls.server_name(&url.host).map_err(DialError::Tls)?;
    if tls.handshake_first() {
        let mut stream = connect_tls(tls, name, tcp).await?;
        let (info, leftover) = read_info(&mut stream).await?;
        return Ok((UpstreamStream::Tls(Box::new(stream)), info, leftover));
    }
    // Classic: INFO in the clear, then TLS, as nats-server expects by default.
    let (info, leftover) = read_info(&mut tcp)
        .await
        .map_err(|e| match (e, stage.get()) {
            (DialError::ClosedBeforeInfo, DialStage::AwaitingInfoAfterHeader) => {
                DialError::ClosedAfterProxyHeader
            }
            (DialError::ClosedBeforeInfo, _) => DialError::ClosedBeforeTls,
            (e, _) => e,
        })?;
    // The INFO came: a timeout from here on is not a TLS-first server's.
    stage.set(DialStage::Connecting);
    if info.tls_required != Some(true) && info.tls_available != Some(true) {
        return Err(DialError::TlsUnavailable);
    }
    if upstream.proxy_protocol.is_some() {
        if let Some(version) = info.extra.get("version").and_then(|v| v.as_str()) {
            let required = info.tls_required == Some(true);
            if let Some((when, fixed_in)) =
                ServerVersion::parse(version).misreads_proxy_header_before_tls(required)
            {
                return Err(DialError::ProxyHeaderBeforeTls {
                    version: version.to_string(),
                    when,
                    fixed_in,
                });
            }
        }
    }
    // After the version check: a release that misreads the header ahead of TLS needs an
    // upgrade first, whatever its options.
    check_reads_proxy_header(upstream, &info, &tcp, client)?;
    if !leftover.is_empty() {
        // A refusal that came with the INFO (connection throttling); a full server's is
        // caught by `read_info`.
        return Err(refusal_before_tls(&leftover).unwrap_or(DialError::BadInfo));
    }
    let stream = connect_tls(tls, name, tcp).await?;
    Ok((UpstreamStream::Tls(Box::new(stream)), info, leftover))
}

/// The TLS handshake on `tcp`. nats-server turns a client away before its TLS handshake, in
/// plain text (`maximum connections exceeded` with TLS first, or after the INFO of a classic
/// dial; connection throttling): a failed handshake that received such a line is that
/// refusal, not a TLS failure, so a full server is `Full` here as without TLS.
async fn connect_tls(
    tls: &ClientTls,
    name: rustls::pki_types::ServerName<'static>,
    tcp: TcpStream,
) -> Result<TlsStream<ReadAhead<TcpStream>>, DialError> {
    match tls
        .connector()
        .connect(name, ReadAhead::recording(tcp))
        .into_fallible()
        .await
    {
        Ok(mut stream) => {
            stream.get_mut().0.stop_recording();
            Ok(stream)
        }
        Err((e, socket)) => {
            let received = socket.first_bytes();
            Err(
                refusal_before_tls(received).unwrap_or(if received.starts_with(b"INFO ") {
                    DialError::NotTlsFirst
                } else {
                    DialError::Tls(e)
                }),
            )
        }
    }
}

/// nats-server's plain-text refusal of a client before TLS, at the start of `received`: a
/// full server, or any other `-ERR` (connection throttling).
fn refusal_before_tls(received: &[u8]) -> Option<DialError> {
    if is_max_connections_error(received) {
        return Some(DialError::Full);
    }
    let rest = received.strip_prefix(b"-ERR ")?;
    let line = rest
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    Some(DialError::RefusedBeforeTls(
        String::from_utf8_lossy(line).into_owned(),
    ))
}

/// With `upstream.proxy_protocol` on, a plain INFO (sent before any TLS) whose `client_ip`
/// is the address the edge dialled from, when the header named another, comes from a server
/// that did not read the header. Such a server answers the header with `-ERR` (`Authorization
/// Violation` where it has authorization, which nats.go takes for final) and closes, so every
/// client would fail while the dial looked fine. nats-server with `proxy_protocol: true`
/// leaves `client_ip` out of that INFO, as it would name the edge; another nats-edge with a
/// PROXY listener names the header's client. A header that names no client (the readiness
/// check's), or a client at the edge's own address, cannot tell the two apart: no check.
fn check_reads_proxy_header(
    upstream: &Upstream,
    info: &Info,
    tcp: &TcpStream,
    client: Option<ProxyAddrs>,
) -> Result<(), DialError> {
    let (Some(_), Some(client), Some(shown)) = (
        upstream.proxy_protocol,
        client,
        info.client_ip
            .as_deref()
            // Go writes a link-local peer with its zone (`fe80::1%eth0`).
            .map(|ip| ip.split_once('%').map_or(ip, |(addr, _zone)| addr))
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok()),
    ) else {
        return Ok(());
    };
    let named = client.src.ip().to_canonical();
    let shown = shown.to_canonical();
    let own = tcp.local_addr().map(|a| a.ip().to_canonical());
    if shown != named && own.is_ok_and(|own| own == shown) {
        return Err(DialError::ProxyHeaderIgnored);
    }
    Ok(())
}

/// Reads the server's first op, which must be INFO, from a server that will serve a client:
/// one in lame-duck mode, or one that already followed its INFO with nats-server's refusal
/// for a full server, is a failed dial, so the next URL is tried.
async fn read_info<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Info, BytesMut), DialError> {
    let (info, leftover) = read_first_info(stream).await?;
    if info.ldm == Some(true) {
        return Err(DialError::LameDuck);
    }
    if is_max_connections_error(&leftover) {
        return Err(DialError::Full);
    }
    Ok((info, leftover))
}

/// Whether `buf` starts with nats-server's `-ERR 'maximum connections exceeded'`, which a
/// full server sends right after its INFO, then closes.
pub fn is_max_connections_error(buf: &[u8]) -> bool {
    const PREFIX: &[u8] = b"-ERR '";
    buf.len() > PREFIX.len()
        && buf[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && buf[PREFIX.len()..]
            .get(..nats_edge_filters::errors::MAX_CONNECTIONS_EXCEEDED.len())
            .is_some_and(|text| {
                text.eq_ignore_ascii_case(
                    nats_edge_filters::errors::MAX_CONNECTIONS_EXCEEDED.as_bytes(),
                )
            })
}

async fn read_first_info<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Info, BytesMut), DialError> {
    let limits = ScanLimits {
        max_control_line: MAX_SERVER_CONTROL_LINE,
        max_payload: 0,
        headers: false,
    };
    // What is left after the INFO becomes the session's upstream read buffer, so this is
    // its first size too; a longer INFO grows it.
    let mut buf = BytesMut::with_capacity(512);
    loop {
        match proto::scan(&buf, Direction::ServerToClient, &limits) {
            Ok(Some(frame)) if frame.verb == Verb::Info => {
                let data: Bytes = buf.split_to(frame.len).freeze();
                return match proto::build_server_op(&data, &frame) {
                    Ok(nats_edge_filters::ServerOp::Info(info)) => Ok((*info, buf)),
                    _ => Err(DialError::BadInfo),
                };
            }
            Ok(Some(_)) | Err(_) => return Err(DialError::BadInfo),
            // A PING or PONG line on its way, however long: not the INFO that must come first.
            Ok(None) if proto::ignored_line_verb_len(&buf, Direction::ServerToClient).is_some() => {
                return Err(DialError::BadInfo)
            }
            Ok(None) => {}
        }
        if stream.read_buf(&mut buf).await.map_err(DialError::Read)? == 0 {
            return Err(DialError::ClosedBeforeInfo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address that takes no connection (a listener whose backlog is full drops SYNs, as
    /// a host that drops packets would) holds the dial for its share of the timeout only;
    /// the next address of the host still gets its turn.
    #[tokio::test]
    async fn an_address_that_drops_packets_gets_its_share_of_the_timeout() {
        let silent = tokio::net::TcpSocket::new_v4().unwrap();
        silent.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let silent = silent.listen(1).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        // Fill its queue, never accepting: further SYNs are dropped.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let connect = TcpStream::connect(silent_addr);
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await
            {
                fillers.push(stream);
            }
        }
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        let started = Instant::now();
        let (stream, took_addresses) = connect_in_turn(&[silent_addr, live_addr], deadline)
            .await
            .expect("the second address");
        assert_eq!(stream.peer_addr().unwrap(), live_addr);
        assert_eq!(took_addresses, 2);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
            "{took:?}"
        );
        assert!(connect_in_turn(&[], deadline).await.is_err());
    }

    /// What nats-server sends in plain text where a client's TLS should start: a full
    /// server's refusal, or another (connection throttling) with its text; anything else is
    /// no refusal.
    #[test]
    fn plain_refusals_before_tls_are_told_apart() {
        assert!(matches!(
            refusal_before_tls(b"-ERR 'maximum connections exceeded'\r\n"),
            Some(DialError::Full)
        ));
        let throttled = refusal_before_tls(
            b"-ERR 'Connection throttling is active. Please try again later.'\r\n",
        );
        assert_eq!(
            throttled.map(|e| e.to_string()).as_deref(),
            Some("refused the client before TLS: -ERR 'Connection throttling is active. Please try again later.'")
        );
        assert!(refusal_before_tls(b"\x15\x03\x03\x00\x02").is_none());
        assert!(refusal_before_tls(b"").is_none());
        assert!(refusal_before_tls(b"PING\r\n").is_none());
    }

    /// When a failed URL's back-off ends, one dial tries it again; the others go on
    /// skipping it until that dial has its answer.
    #[test]
    fn one_dial_tries_a_url_again_when_its_backoff_ends() {
        let history = history_started_a_minute_ago(2);
        history.record(0, false);
        let failed = history.failed_at(0);
        assert_eq!(history.standing(0, failed + 1), Standing::FailedLately);
        assert_eq!(history.standing(1, failed + 1), Standing::Fine);
        // As if it had failed longer ago than its back-off.
        history.failed_at[0].store(1, Ordering::Relaxed);
        let later = history.now();
        assert_eq!(history.standing(0, later), Standing::Due);
        assert_eq!(
            history.standing(0, later),
            Standing::Due,
            "looking does not claim it"
        );
        assert!(history.claim_retry(0), "the first dial that gets to it");
        assert!(!history.claim_retry(0), "the others skip it meanwhile");
        assert_eq!(history.standing(0, history.now()), Standing::FailedLately);
        history.record(0, true);
        assert_eq!(history.standing(0, history.now()), Standing::Fine);
    }

    /// Spread over the URLs, dials take the healthy ones in turn: one that failed lately
    /// comes last and does not hand its share to the URL after it.
    #[test]
    fn dials_take_the_urls_that_may_serve_in_turn() {
        let history = history_started_a_minute_ago(3);
        history.failed_at[0].store(history.now(), Ordering::Relaxed);
        let firsts: Vec<usize> = (0..4)
            .map(|_| {
                let order = dial_order(&history, 3, false);
                assert_eq!(order.back(), Some(&(0, Standing::FailedLately)));
                order[0].0
            })
            .collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 2, "{firsts:?}");
        assert_eq!(firsts.iter().filter(|&&i| i == 2).count(), 2, "{firsts:?}");
    }

    /// A dial with no earlier answer for a host name waits for the lookup under way rather
    /// than start its own. (`localhost` resolves from the hosts file, so a lookup the test
    /// did not mean would find 127.0.0.1, not the answer given here.)
    #[tokio::test]
    async fn dials_without_an_earlier_answer_share_the_lookup_under_way() {
        let url = UpstreamUrl::parse("nats://localhost:4222").unwrap();
        let upstream = Arc::new(Upstream::plain(vec![url], Duration::from_secs(2)));
        let (answer, pending) = tokio::sync::watch::channel(None);
        *upstream.history.pending[0].lock().unwrap() = Some(pending);
        let now = upstream.history.now();
        upstream.history.looking_up[0].store(now, Ordering::Relaxed);
        let waiting = tokio::spawn({
            let upstream = upstream.clone();
            async move { resolve(&upstream, 0, Duration::from_secs(2)).await }
        });
        let shared: std::net::SocketAddr = "192.0.2.7:4222".parse().unwrap();
        answer.send_replace(Some(Ok(Arc::from([shared]))));
        assert_eq!(waiting.await.unwrap().unwrap(), [shared]);

        // A failed lookup fails every dial that waited for it.
        let (answer, pending) = tokio::sync::watch::channel(None);
        *upstream.history.pending[0].lock().unwrap() = Some(pending);
        let waiting = tokio::spawn({
            let upstream = upstream.clone();
            async move { resolve(&upstream, 0, Duration::from_secs(2)).await }
        });
        answer.send_replace(Some(Err(Arc::new(io::Error::other("no such host")))));
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "no such host");
    }

    /// A history whose clock has run for a minute, so a URL can have failed longer ago than
    /// its back-off.
    fn history_started_a_minute_ago(urls: usize) -> DialHistory {
        let mut history = DialHistory::new(urls);
        history.started = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .expect("a clock a minute old");
        history
    }

    /// A URL whose back-off is over keeps it until a dial gets to it: the one before it
    /// serving every client must not keep it "failed lately" for good, which would put it
    /// behind that one when that one goes down. Among URLs that failed lately, the
    /// longest-failed comes first.
    #[test]
    fn a_url_is_claimed_for_a_retry_only_when_dialled() {
        let history = history_started_a_minute_ago(3);
        history.failed_at[1].store(1, Ordering::Relaxed);
        let order = dial_order(&history, 3, true);
        assert_eq!(
            order,
            [(0, Standing::Fine), (1, Standing::Due), (2, Standing::Fine)]
        );
        assert_eq!(history.failed_at(1), 1, "not claimed by deciding the order");

        let now = history.now();
        history.failed_at[0].store(now - 5, Ordering::Relaxed);
        history.failed_at[2].store(now - 10, Ordering::Relaxed);
        history.failed_at[1].store(0, Ordering::Relaxed);
        let order = dial_order(&history, 3, true);
        assert_eq!(
            order,
            [
                (1, Standing::Fine),
                (2, Standing::FailedLately),
                (0, Standing::FailedLately)
            ]
        );
    }

    /// Credentials never reach an error, with or without a scheme; a host that is no host
    /// (two URLs run together) is refused when the config loads.
    #[test]
    fn url_errors_hide_credentials_and_refuse_hosts_that_are_not() {
        for (url, shown) in [
            ("edge:s3cret@10.0.0.5:4222", "***@10.0.0.5:4222"),
            ("ftp://edge:s3cret@host", "ftp://***@host"),
            ("nats://a:4222,nats://b:4222", "nats://a:4222,nats://b:4222"),
            ("nats://u:p@a b:4222", "nats://***@a b:4222"),
        ] {
            let err = UpstreamUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(shown), "{url}: {err}");
            assert!(!err.contains("s3cret"), "{url}: {err}");
        }
        let err = UpstreamUrl::parse("edge:s3cret@a:4222,nats://b:4222")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        let err = UpstreamUrl::parse("nats://a:4222,nats://u:pw@b:4222")
            .unwrap_err()
            .to_string();
        assert!(err.contains("two URLs run together"), "{err}");
        for ok in [
            "nats://nats-0.nats.svc:4222",
            "tls://[::1]:4222",
            "nats://10.0.0.5",
            "nats://[fe80::1%2]:4222",
            "nats://nats_0.local.:4222",
        ] {
            assert!(UpstreamUrl::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_url_is_logged_when_it_goes_down_and_when_it_comes_back() {
        let history = DialHistory::new(2);
        let down = DialError::ClosedBeforeInfo;
        assert!(!history.log_worthy(0, Ok(())), "answering from the start");
        assert!(history.log_worthy(0, Err(&down)), "down");
        assert!(!history.log_worthy(0, Err(&down)), "still down");
        assert!(!history.log_worthy(0, Err(&DialError::Full)));
        assert!(history.log_worthy(0, Ok(())), "back");
        assert!(!history.log_worthy(0, Ok(())));
        // A full server is not down, and its next success is no comeback; nor is one that
        // throttles connections.
        assert!(!history.log_worthy(0, Err(&DialError::Full)));
        let throttled = DialError::RefusedBeforeTls("'Connection throttling is active.'".into());
        assert!(!history.log_worthy(0, Err(&throttled)));
        assert!(!history.log_worthy(0, Ok(())));
        assert!(history.log_worthy(1, Err(&down)), "each URL on its own");
        assert!(!history.log_worthy(5, Err(&down)), "no such URL");
        let refusing = DialHistory::new(1);
        let refused = DialError::RefusedBeforeTls("'go away'".into());
        assert!(
            refusing.log_worthy(0, Err(&refused)),
            "another refusal is down"
        );
    }

    async fn first_info(bytes: &[u8]) -> Result<(Info, BytesMut), DialError> {
        read_info(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn servers_that_will_not_serve_are_failed_dials() {
        let info = b"INFO {\"server_id\":\"S\",\"max_payload\":1024}\r\n";
        let (_, leftover) = first_info(info).await.unwrap();
        assert!(leftover.is_empty());
        let lame = b"INFO {\"server_id\":\"S\",\"ldm\":true}\r\n";
        assert!(matches!(first_info(lame).await, Err(DialError::LameDuck)));
        let full = [&info[..], b"-ERR 'maximum connections exceeded'\r\n"].concat();
        assert!(matches!(first_info(&full).await, Err(DialError::Full)));
        // Only that refusal: anything else after the INFO is the session's to forward.
        let other = [&info[..], b"-ERR 'Authorization Violation'\r\n"].concat();
        assert_eq!(
            &first_info(&other).await.unwrap().1[..],
            b"-ERR 'Authorization Violation'\r\n"
        );
        assert!(is_max_connections_error(
            b"-err 'Maximum Connections Exceeded'\r\n"
        ));
        assert!(!is_max_connections_error(b"-ERR 'maximum conn"));
    }

    /// A server that starts with anything but INFO is refused, even a PING line that never
    /// ends (which a reader skipping such lines would otherwise wait on, or buffer).
    #[tokio::test]
    async fn a_ping_before_the_info_is_a_bad_info() {
        assert!(matches!(
            first_info(b"PING\r\n").await,
            Err(DialError::BadInfo)
        ));
        let endless = [&b"PING"[..], &[b'x'; 100_000][..]].concat();
        assert!(matches!(
            first_info(&endless).await,
            Err(DialError::BadInfo)
        ));
    }

    #[test]
    fn parses_urls_with_credentials() {
        let u = UpstreamUrl::parse("nats://alice:s%40cret@10.0.0.5:4223").unwrap();
        assert_eq!(u.host, "10.0.0.5");
        assert_eq!(u.port, 4223);
        assert_eq!(
            u.credentials,
            Some(UrlCredentials::UserPass {
                user: "alice".into(),
                pass: Secret("s@cret".into())
            })
        );
        assert_eq!(u.to_string(), "nats://10.0.0.5:4223");
        let t = UpstreamUrl::parse("nats://tok@host").unwrap();
        assert_eq!(t.port, 4222);
        assert_eq!(
            t.credentials,
            Some(UrlCredentials::Token(Secret("tok".into())))
        );
        let v6 = UpstreamUrl::parse("nats://[::1]:4222").unwrap();
        assert_eq!(v6.authority(), "[::1]:4222");
        let tls = UpstreamUrl::parse("tls://x:1").unwrap();
        assert!(tls.tls);
        assert_eq!(tls.to_string(), "tls://x:1");
        assert!(!u.tls);
        assert!(matches!(
            UpstreamUrl::parse("ws://x:1"),
            Err(UrlError::Scheme(_))
        ));
        let err = UpstreamUrl::parse("http://u:p@x:1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains(":p@"), "{err}");
        // A scheme in capitals is the same scheme; port 0 and a lone bracket are refused.
        assert!(UpstreamUrl::parse("NATS://x:1").is_ok_and(|u| !u.tls));
        assert!(UpstreamUrl::parse("TLS://x:1").is_ok_and(|u| u.tls));
        assert!(UpstreamUrl::parse("nats://x:0").is_err());
        assert!(UpstreamUrl::parse("nats://[::1:4222").is_err());
        assert!(UpstreamUrl::parse("nats://[host").is_err());
        assert!(UpstreamUrl::parse("nats://host]").is_err());
    }
}
