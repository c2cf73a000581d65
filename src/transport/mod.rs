//! Transports: every listener kind (tcp, tls, ws, wss, each optionally behind a PROXY
//! protocol header) ends as one byte stream, [`ClientStream`], plus the facts about the
//! connection ([`ConnFacts`]). Nothing after this module knows which transport carried the
//! bytes.
//!
//! The handshake of a connection (the PROXY header, TLS, the WebSocket upgrade) runs in that
//! connection's own task, bounded by the listener's `handshake_timeout`, never in the accept
//! loop, and the upstream is dialled only once it has succeeded. The one exception is the
//! classic NATS TLS handshake (`handshake_first = false`, or a fallback delay the client let
//! pass in silence): the client starts TLS only after reading the server's INFO in the clear,
//! and that INFO must carry the upstream's nonce, so the upstream is dialled first; the
//! session then runs [`upgrade_after_info`].

pub mod cert;
mod linger;
pub mod proxy_protocol;
pub mod read_ahead;
pub mod tls;
pub mod ws;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nats_edge_filters::filter::TlsPeer;
use nats_edge_filters::{ConnFacts, Filter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{HandshakeFirst, ListenerKind};
use crate::metrics::HandshakeFailure;
pub use linger::linger;

/// TCP keepalive as Go sets it on every connection it dials or accepts (nats-server's and
/// nats.go's): a probe after 15 s idle, then every 15 s, the kernel's count of them. Behind
/// the edge neither end's keepalive reaches the other side, so the edge keeps both of its
/// links alive itself: a peer gone without a reset (a node lost, a partition) is noticed in
/// minutes, not when TCP's retransmissions give up.
pub fn keep_alive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(15))
        .with_interval(std::time::Duration::from_secs(15));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "setting TCP keepalive failed");
    }
}
pub use read_ahead::ReadAhead;

/// A client connection after its transport handshake: the bytes of the NATS protocol.
pub enum ClientStream {
    Tcp(TcpClient),
    Tls(Box<TlsStream<ReadAhead<TcpStream>>>),
    Ws(Box<ws::WsStream<TcpStream>>),
    Wss(Box<ws::WsStream<TlsStream<ReadAhead<TcpStream>>>>),
}

impl ClientStream {
    /// The session is ending for `reason`: a WebSocket client's close frame says why, as
    /// nats-server's does.
    pub fn ending_for(&mut self, reason: nats_edge_filters::CloseReason) {
        self.close_with(ws::close_frame_for(reason));
    }

    /// The TLS session's facts for `/connz`, on a TLS or WebSocket-over-TLS stream; `first`
    /// when a NATS client started with the handshake.
    pub fn tls_session(&self, first: bool) -> Option<tls::TlsSession> {
        match self {
            ClientStream::Tls(tls) => Some(tls::session_info(tls.get_ref().1, first)),
            ClientStream::Wss(ws) => Some(tls::session_info(ws.get_ref().get_ref().1, false)),
            ClientStream::Tcp(_) | ClientStream::Ws(_) => None,
        }
    }

    /// Whether a WebSocket stream's read buffer has grown under load (the other streams
    /// read straight into the session's buffers).
    pub fn is_grown(&self) -> bool {
        match self {
            ClientStream::Ws(ws) => ws.is_grown(),
            ClientStream::Wss(ws) => ws.is_grown(),
            ClientStream::Tcp(_) | ClientStream::Tls(_) => false,
        }
    }

    /// Gives back a WebSocket stream's grown read buffer if it holds nothing.
    pub fn shrink_if_empty(&mut self) {
        match self {
            ClientStream::Ws(ws) => ws.shrink_if_empty(),
            ClientStream::Wss(ws) => ws.shrink_if_empty(),
            ClientStream::Tcp(_) | ClientStream::Tls(_) => {}
        }
    }

    /// The `max_payload` the client's INFO gave it: a WebSocket client's frames are held
    /// to what nats.go reads (see [`ws::WsStream::hold_frames_to`]).
    pub fn told_max_payload(&mut self, max_payload: Option<i64>) {
        match self {
            ClientStream::Ws(ws) => ws.hold_frames_to(max_payload),
            ClientStream::Wss(ws) => ws.hold_frames_to(max_payload),
            ClientStream::Tcp(_) | ClientStream::Tls(_) => {}
        }
    }

    /// A WebSocket client's close frame: its status and text.
    pub fn close_with(&mut self, frame: Option<(u16, &'static str)>) {
        match self {
            ClientStream::Ws(ws) => ws.close_with(frame),
            ClientStream::Wss(ws) => ws.close_with(frame),
            ClientStream::Tcp(_) | ClientStream::Tls(_) => {}
        }
    }
}

/// A plain TCP client. Its first byte is checked once: a TLS ClientHello (which no NATS
/// op starts with) fails the read with [`TlsOnPlainListener`], so a TLS client on a plain
/// listener is named as such rather than as a protocol violation.
pub struct TcpClient {
    stream: TcpStream,
    first_read: bool,
}

impl TcpClient {
    pub fn new(stream: TcpStream) -> Self {
        TcpClient {
            stream,
            first_read: true,
        }
    }

    pub fn into_inner(self) -> TcpStream {
        self.stream
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }
}

/// The error a [`TcpClient`] read fails with when the client starts a TLS handshake.
#[derive(Debug, thiserror::Error)]
#[error("the client started a TLS handshake on a plain listener")]
pub struct TlsOnPlainListener;

/// Whether a client read failed because a TLS client came to a plain listener.
pub fn is_tls_on_plain(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<TlsOnPlainListener>())
}

/// The WebSocket framing rule a client broke, when a read failed for that: its connection
/// was answered with a close frame. A client gone inside a frame is no violation, just a
/// broken connection.
pub fn ws_frame_violation(e: &io::Error) -> Option<&ws::FrameError> {
    e.get_ref()?
        .downcast_ref::<ws::FrameError>()
        .filter(|f| !matches!(f, ws::FrameError::Truncated))
}

impl AsyncRead for TcpClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first_read {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let start = buf.filled().len();
        let res = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if let Some(&first) = buf.filled().get(start) {
                this.first_read = false;
                if first == tls::HANDSHAKE_RECORD {
                    buf.set_filled(start);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        TlsOnPlainListener,
                    )));
                }
            }
        }
        res
    }
}

impl AsyncWrite for TcpClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Calls `$body` with `$s` bound to the pinned inner stream of whichever variant `$self` is.
macro_rules! each_variant {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            ClientStream::Tcp(inner) => {
                let $s = Pin::new(inner);
                $body
            }
            ClientStream::Tls(inner) => {
                let $s = Pin::new(&mut **inner);
                $body
            }
            ClientStream::Ws(inner) => {
                let $s = Pin::new(&mut **inner);
                $body
            }
            ClientStream::Wss(inner) => {
                let $s = Pin::new(&mut **inner);
                $body
            }
        }
    };
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(inner) => Pin::new(inner).poll_read(cx, buf),
            ClientStream::Tls(inner) => tls_eof_as_close(Pin::new(&mut **inner).poll_read(cx, buf)),
            ClientStream::Ws(inner) => Pin::new(&mut **inner).poll_read(cx, buf),
            ClientStream::Wss(inner) => Pin::new(&mut **inner).poll_read(cx, buf),
        }
    }
}

/// A TLS peer that closed its TCP connection without a `close_notify` (a client killed, a
/// client library that skips it) has closed the connection, as Go's TLS (and so
/// nats-server) reads such an end: rustls reports it as `UnexpectedEof`, which would count
/// as a failed read. An op cut off by that end is dropped, as by any other end of the
/// stream. (WebSocket over TLS maps it beneath its framing, in `ws::WsStream`.)
pub fn tls_eof_as_close(read: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
    match read {
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
        other => other,
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_variant!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_variant!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::Ws(s) => s.is_write_vectored(),
            ClientStream::Wss(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_variant!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_variant!(self, s => s.poll_shutdown(cx))
    }
}

/// Keeps a client socket open while its failed handshake is counted and logged: the
/// handshake owns (and on failure drops) the stream, but the socket closes only when this
/// duplicate descriptor goes too, so the client sees the close after the edge has recorded
/// why.
pub struct CloseGuard {
    #[cfg(unix)]
    _fd: Option<std::os::fd::OwnedFd>,
}

impl CloseGuard {
    pub fn new(stream: &TcpStream) -> CloseGuard {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            CloseGuard {
                _fd: stream.as_fd().try_clone_to_owned().ok(),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = stream;
            CloseGuard {}
        }
    }
}

/// How one listener's connections are set up.
pub struct ListenerTransport {
    pub name: String,
    pub kind: ListenerKind,
    pub proxy_protocol: bool,
    pub handshake_timeout: Duration,
    pub tls: Option<Arc<tls::ServerTls>>,
    pub ws: Option<Arc<ws::WsSettings>>,
}

impl ListenerTransport {
    /// Whether a connection needs any handshake at all before its session starts.
    pub fn has_handshake(&self) -> bool {
        self.proxy_protocol || self.kind != ListenerKind::Tcp
    }
}

/// A client connection ready for its session.
pub struct Accepted {
    pub stream: ClientStream,
    pub conn: ConnFacts,
    /// The socket's peer (a load balancer when a PROXY header or `X-Forwarded-For` named
    /// the real client).
    pub peer: SocketAddr,
    /// The address the client connected to: the PROXY header's destination, or the
    /// listener's own address.
    pub local_addr: SocketAddr,
    /// Classic NATS TLS: the session upgrades the stream right after the first INFO.
    pub tls_after_info: Option<TlsAcceptor>,
    /// Filters for this connection only (WebSocket cookie credentials), placed after the
    /// built-in limits.
    pub filters: Vec<Box<dyn Filter>>,
}

/// The step a handshake is in, for the log line of one that times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    ProxyHeader = 0,
    Tls = 1,
    WebSocket = 2,
}

impl Stage {
    fn from_u8(v: u8) -> Stage {
        match v {
            1 => Stage::Tls,
            2 => Stage::WebSocket,
            _ => Stage::ProxyHeader,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::ProxyHeader => "PROXY protocol header",
            Stage::Tls => "TLS handshake",
            Stage::WebSocket => "WebSocket upgrade",
        }
    }
}

/// Where a handshake is; shared with whoever bounds it with a timeout.
#[derive(Debug, Default)]
pub struct StageCell {
    stage: AtomicU8,
    /// A WebSocket refusal already answered while the edge waits for the client to close
    /// (see [`linger`]): a timeout during that wait is still this refusal, for the log line
    /// and the counter.
    answered: std::sync::Mutex<Option<ws::Reject>>,
}

impl StageCell {
    fn set(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Relaxed))
    }

    /// Records a refusal whose answer has gone out.
    fn answered(&self, reject: ws::Reject) {
        if let Ok(mut answered) = self.answered.lock() {
            *answered = Some(reject);
        }
    }

    /// Why a handshake stopped by its timeout failed: the refusal it had already answered,
    /// or else the stage it was in.
    pub fn timed_out(&self) -> HandshakeError {
        match self.answered.lock().ok().and_then(|mut a| a.take()) {
            Some(reject) => HandshakeError::WebSocket(reject),
            None => HandshakeError::Timeout(self.get()),
        }
    }
}

/// Why a connection did not get a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("PROXY protocol header: {0}")]
    Proxy(proxy_protocol::ReadError),
    #[error("TLS handshake failed: {0}")]
    Tls(tls::AcceptError),
    #[error("WebSocket upgrade refused: {0}")]
    WebSocket(ws::Reject),
    #[error("timed out during the {}", .0.as_str())]
    Timeout(Stage),
    /// The listener lacks what its kind needs. Config validation rules this out; the
    /// connection is refused rather than the process stopped if it ever happens.
    #[error("the listener has no {0}")]
    Misconfigured(&'static str),
}

impl HandshakeError {
    /// A connection closed before it sent a byte (a load balancer's TCP health check): not
    /// worth a warning or a failure count.
    pub fn is_silent(&self) -> bool {
        matches!(
            self,
            HandshakeError::Proxy(proxy_protocol::ReadError::ClosedEarly)
                | HandshakeError::Tls(tls::AcceptError::ClosedEarly)
                | HandshakeError::WebSocket(ws::Reject::ClosedEarly)
        )
    }

    /// Logs the failure, once: at `debug` for what load balancers' probes and port scanners
    /// cause on a TLS port (plain bytes, a TLS handshake that never ends), as nats-server
    /// logs those (`isClientProbeTLSHandshakeError`), so that an exposed listener's log is
    /// not flooded; at `warn` otherwise. Each is counted all the same.
    pub fn log(&self) {
        let reason = self.failure().as_str();
        if matches!(
            self,
            HandshakeError::Tls(tls::AcceptError::NotTls(_)) | HandshakeError::Timeout(Stage::Tls)
        ) {
            tracing::debug!(error = %self, reason, "handshake failed");
        } else {
            tracing::warn!(error = %self, reason, "handshake failed");
        }
    }

    /// The counter this failure goes to.
    pub fn failure(&self) -> HandshakeFailure {
        match self {
            HandshakeError::Proxy(_) => HandshakeFailure::ProxyHeader,
            HandshakeError::Tls(tls::AcceptError::NotTls(_) | tls::AcceptError::LeftAfterInfo) => {
                HandshakeFailure::PlainOnTlsListener
            }
            HandshakeError::Tls(_) => HandshakeFailure::Tls,
            HandshakeError::WebSocket(ws::Reject::TlsOnPlain) => {
                HandshakeFailure::TlsOnPlainListener
            }
            HandshakeError::WebSocket(_) => HandshakeFailure::WebSocket,
            HandshakeError::Timeout(_) => HandshakeFailure::Timeout,
            HandshakeError::Misconfigured(what) if *what == WS_SETTINGS => {
                HandshakeFailure::WebSocket
            }
            HandshakeError::Misconfigured(_) => HandshakeFailure::Tls,
        }
    }
}

/// The WebSocket upgrade on `stream`, for `ws` and `wss` alike. `Ok(None)`: the request was
/// answered without an upgrade (a plain HTTP health check). A trusted `X-Forwarded-For`
/// replaces `client_addr`; credential cookies add their filter.
async fn accept_ws<S>(
    stream: S,
    settings: &ws::WsSettings,
    stage: &StageCell,
    client_addr: &mut SocketAddr,
    filters: &mut Vec<Box<dyn Filter>>,
) -> Result<Option<Box<ws::WsStream<S>>>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stage.set(Stage::WebSocket);
    let upgraded = ws::accept(stream, settings, *client_addr, stage)
        .await
        .map_err(HandshakeError::WebSocket)?;
    let ws::Upgraded::WebSocket {
        stream,
        client_addr: forwarded,
        cookies,
    } = upgraded
    else {
        return Ok(None);
    };
    *client_addr = forwarded;
    if !cookies.is_empty() {
        filters.push(Box::new(ws::CookieFilter(cookies)));
    }
    Ok(Some(stream))
}

const TLS_MATERIAL: &str = "TLS certificate and key";
const WS_SETTINGS: &str = "WebSocket settings";

/// An address as nats-server shows it: an IPv4 address in its IPv6-mapped form (an IPv4
/// client of a dual-stack listener, or a PROXY header that writes it so) as the IPv4 address
/// it is, `192.0.2.7` rather than `::ffff:192.0.2.7`, in INFO's `client_ip`, the logs, the
/// tags and the PROXY header sent upstream alike.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Runs a connection's transport handshake: the PROXY header, then TLS (unless it comes
/// after INFO), then the WebSocket upgrade. `Ok(None)` means the connection was answered
/// without a session (a plain HTTP health check on a WebSocket listener).
pub async fn handshake(
    mut tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    lt: &ListenerTransport,
    stage: &StageCell,
) -> Result<Option<Accepted>, HandshakeError> {
    let peer = canonical(peer);
    let mut client_addr = peer;
    let mut local_addr = canonical(tcp.local_addr().unwrap_or(peer));
    if lt.proxy_protocol {
        stage.set(Stage::ProxyHeader);
        let header = proxy_protocol::read_header(&mut tcp).await;
        if let Err(proxy_protocol::ReadError::Header(_)) = &header {
            linger::discard_unread(&tcp);
        }
        if let Some(addrs) = header.map_err(HandshakeError::Proxy)? {
            client_addr = canonical(addrs.src);
            local_addr = canonical(addrs.dst);
        }
    }
    let mut tls_peer = None;
    let mut tls_after_info = None;
    let mut filters: Vec<Box<dyn Filter>> = Vec::new();
    let stream = match lt.kind {
        ListenerKind::Tcp => ClientStream::Tcp(TcpClient::new(tcp)),
        ListenerKind::Tls => {
            let tls = lt
                .tls
                .as_ref()
                .ok_or(HandshakeError::Misconfigured(TLS_MATERIAL))?;
            let tls_first = match tls.handshake_first() {
                HandshakeFirst::Off => false,
                HandshakeFirst::On => true,
                HandshakeFirst::Fallback(delay) => {
                    stage.set(Stage::Tls);
                    tls::client_speaks_within(&tcp, delay)
                        .await
                        .map_err(HandshakeError::Tls)?
                }
            };
            if tls_first {
                stage.set(Stage::Tls);
                let stream = tls::accept(tls.acceptor(), tcp, false)
                    .await
                    .map_err(HandshakeError::Tls)?;
                tls_peer = tls::peer_identity(stream.get_ref().1);
                ClientStream::Tls(Box::new(stream))
            } else {
                tls_after_info = Some(tls.acceptor());
                // The client reads INFO before it sends anything; nothing to sniff.
                ClientStream::Tcp(TcpClient {
                    stream: tcp,
                    first_read: false,
                })
            }
        }
        ListenerKind::Ws => {
            let settings = lt
                .ws
                .as_ref()
                .ok_or(HandshakeError::Misconfigured(WS_SETTINGS))?;
            let Some(stream) =
                accept_ws(tcp, settings, stage, &mut client_addr, &mut filters).await?
            else {
                return Ok(None);
            };
            ClientStream::Ws(stream)
        }
        ListenerKind::Wss => {
            let tls = lt
                .tls
                .as_ref()
                .ok_or(HandshakeError::Misconfigured(TLS_MATERIAL))?;
            let settings = lt
                .ws
                .as_ref()
                .ok_or(HandshakeError::Misconfigured(WS_SETTINGS))?;
            stage.set(Stage::Tls);
            let stream = tls::accept(tls.acceptor(), tcp, true)
                .await
                .map_err(HandshakeError::Tls)?;
            tls_peer = tls::peer_identity(stream.get_ref().1);
            let Some(stream) =
                accept_ws(stream, settings, stage, &mut client_addr, &mut filters).await?
            else {
                return Ok(None);
            };
            ClientStream::Wss(stream)
        }
    };
    Ok(Some(Accepted {
        stream,
        conn: ConnFacts {
            conn_id,
            listener: lt.name.clone(),
            client_addr,
            transport: lt.kind.as_str(),
            tls_peer,
            tls_handshake_pending: tls_after_info.is_some(),
        },
        peer,
        local_addr,
        tls_after_info,
        filters,
    }))
}

/// The classic NATS TLS upgrade, run by the session after it wrote the INFO in the clear.
pub async fn upgrade_after_info(
    stream: ClientStream,
    acceptor: TlsAcceptor,
    timeout: Duration,
) -> Result<(ClientStream, Option<TlsPeer>), HandshakeError> {
    let ClientStream::Tcp(plain) = stream else {
        return Ok((stream, None));
    };
    match tokio::time::timeout(timeout, tls::accept(acceptor, plain.into_inner(), false)).await {
        Err(_) => Err(HandshakeError::Timeout(Stage::Tls)),
        Ok(Err(tls::AcceptError::ClosedEarly)) => {
            Err(HandshakeError::Tls(tls::AcceptError::LeftAfterInfo))
        }
        Ok(Err(e)) => Err(HandshakeError::Tls(e)),
        Ok(Ok(stream)) => {
            let peer = tls::peer_identity(stream.get_ref().1);
            Ok((ClientStream::Tls(Box::new(stream)), peer))
        }
    }
}
