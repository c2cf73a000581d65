//! The [`Filter`] trait, the per-session [`FilterFactory`], and the facts a filter may read.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::identity::Identity;
use crate::limits::LimitsConfig;
use crate::op::{ClientOp, Connect, Info, ServerOp};
use crate::verdict::{CloseReason, Verdict};

/// The kinds of op a filter can ask to see. The session builds an op value (and pays for
/// slicing its fields) only when some filter in the chain declared interest in its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum OpKind {
    Connect = 1 << 0,
    Pub = 1 << 1,
    Sub = 1 << 2,
    Unsub = 1 << 3,
    ClientPing = 1 << 4,
    ClientPong = 1 << 5,
    Msg = 1 << 6,
    ServerPing = 1 << 7,
    ServerPong = 1 << 8,
    ServerOk = 1 << 9,
    ServerErr = 1 << 10,
    /// INFO, CONNECT-less controls and other rare ops sent by a client.
    ClientOther = 1 << 11,
    ServerInfo = 1 << 12,
}

/// A set of [`OpKind`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interest(u16);

impl Interest {
    pub const NONE: Interest = Interest(0);

    pub const fn of(kinds: &[OpKind]) -> Interest {
        let mut bits = 0u16;
        let mut i = 0;
        while i < kinds.len() {
            bits |= kinds[i] as u16;
            i += 1;
        }
        Interest(bits)
    }

    pub const fn union(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    pub const fn contains(self, kind: OpKind) -> bool {
        self.0 & kind as u16 != 0
    }
}

/// Where a connection comes from, as the transport saw it. Fixed for the session's life.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnFacts {
    /// The edge's id for this client connection (also used in logs).
    pub conn_id: u64,
    /// The name of the listener that accepted it.
    pub listener: String,
    /// The real client address.
    pub client_addr: SocketAddr,
    /// `tcp`, `tls`, `ws` or `wss`.
    pub transport: &'static str,
    /// The client certificate, when the client presented one on a TLS listener and it was
    /// verified against the listener's client CA. On a listener that sends INFO before the
    /// TLS handshake (`handshake_first = false`), the certificate is known only after that
    /// INFO: a [`FilterFactory`] then sees `None` here, while [`SessionCtx::conn`] carries it
    /// from the client's first op on.
    pub tls_peer: Option<TlsPeer>,
    /// True on a listener that sends INFO before the TLS handshake (`handshake_first =
    /// false`) until that handshake is done: the certificate, if any, is not known yet.
    pub tls_handshake_pending: bool,
}

/// The identity in a verified TLS client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// The subject distinguished name in RFC 4514 form, the certificate's last RDN first
    /// (`CN=alice,OU=ops,O=Acme`), as the ACL's `tls_subject` is written (see docs/acl.md);
    /// nats-server and the edge's `/connz` print subjects in Go's order instead. Empty when
    /// the certificate has none.
    pub subject: String,
    /// Subject alternative names, each with its kind: `DNS:host.example.com`,
    /// `IP:192.0.2.7`, `email:alice@example.com`, `URI:spiffe://example.com/alice`.
    pub sans: Vec<String>,
}

/// What a filter may read about its session while it judges an op.
#[derive(Debug, Clone)]
pub struct SessionCtx {
    pub conn: ConnFacts,
    /// The client's CONNECT, once it has arrived. A client whose first op is another op has
    /// nats-server's default options (verbose, pedantic, echo), as if it had sent a CONNECT
    /// with just those: see [`SessionCtx::connect_implied`].
    pub connect: Option<Connect>,
    /// True while the filters are shown the CONNECT a client implied by sending another op
    /// first (nats-server's defaults, no credentials). Filters that judge or complete a
    /// CONNECT treat it as the client's; credentials the transport holds for the client
    /// (WebSocket cookies) are not added to it, as nats-server adds them only to a CONNECT
    /// the client sent.
    pub connect_implied: bool,
    /// The max_payload the upstream announced in its latest INFO.
    pub upstream_max_payload: Option<i64>,
    /// The payload limit (headers included) the client is held to: the lower of the edge's
    /// own cap and the upstream's max_payload. A filter that grows a message checks it
    /// against this, so a message it changes cannot go over what the session allows.
    pub max_payload: u64,
    /// Whether the upstream supports headers (its INFO `headers`).
    pub upstream_headers: bool,
    /// True while a deferred op is shown again: the upstream has answered every op the
    /// client sent before it. See [`crate::Verdict::Defer`].
    pub upstream_caught_up: bool,
    /// The number of the client op being judged: one more for each op read, the same when
    /// a deferred op is shown again. Kept by the session that runs the chain.
    pub client_op: u64,
    /// The newest client op (by [`SessionCtx::client_op`]) the upstream is known to have
    /// answered, or that never went upstream (settled at the edge): a PONG to a PING sent
    /// after it (the client's, or the edge's own) has come back, so the upstream's answers
    /// to it, and the deliveries it sent before them, have all been seen.
    pub answered_op: u64,
    /// Who the connection is, once the filter that authenticates the CONNECT has said so.
    pub identity: Option<Identity>,
    /// The nonce of the upstream's first INFO, which a CONNECT sent upstream signs.
    pub upstream_nonce: Option<String>,
    /// Subscriptions, by sid, that a filter has ended on the client's behalf while it judged
    /// a delivery (the last one of an auto-unsubscribe the edge counts itself). The session
    /// sends `UNSUB sid` upstream for each, hides the upstream's answers to it, and tells
    /// the filters once it has taken effect ([`Filter::on_unsubscribed`]); deliveries on the
    /// way meanwhile are the filter's to drop.
    pub end_subscriptions: Vec<Bytes>,
}

impl SessionCtx {
    /// A session of a plain TCP client from 127.0.0.1, for the crate's unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        SessionCtx::new(ConnFacts {
            conn_id: 1,
            listener: "t".into(),
            client_addr: "127.0.0.1:1".parse().unwrap(),
            transport: "tcp",
            tls_peer: None,
            tls_handshake_pending: false,
        })
    }

    pub fn new(conn: ConnFacts) -> Self {
        SessionCtx {
            conn,
            connect: None,
            connect_implied: false,
            upstream_max_payload: None,
            max_payload: LimitsConfig::default().effective_max_payload(None),
            upstream_headers: false,
            upstream_caught_up: false,
            client_op: 0,
            answered_op: 0,
            identity: None,
            upstream_nonce: None,
            end_subscriptions: Vec::new(),
        }
    }
}

/// What a rule reload means for one live session. nats-server, on a reload, tells each
/// client of every subscription its new permissions refuse, removes those subscriptions, and
/// closes clients it no longer authorizes; a filter asks the session for the same.
#[derive(Debug, Default, PartialEq)]
pub struct Reloaded {
    /// Sent to the client at once (nats-server's `-ERR` for each removed subscription).
    pub notices: Vec<ServerOp>,
    /// Subscriptions, by sid, the session ends at the upstream. Their deliveries already on
    /// the way are the filter's to drop until [`Filter::on_unsubscribed`].
    pub unsubscribe: Vec<Bytes>,
    /// How many of `unsubscribe` the client had already unsubscribed with a max still to be
    /// reached (`UNSUB sid max`), which the session counted as removed when it was sent.
    pub already_unsubscribed: usize,
    /// The session ends for this reason, after this `-ERR` when there is one (a client
    /// no longer authorized), without one when there is not (a client whose user is gone).
    pub close: Option<(CloseReason, Option<&'static str>)>,
}

impl Reloaded {
    /// Adds what a later filter in the chain asks for.
    pub fn merge(&mut self, other: Reloaded) {
        self.notices.extend(other.notices);
        self.unsubscribe.extend(other.unsubscribe);
        self.already_unsubscribed += other.already_unsubscribed;
        self.close = self.close.or(other.close);
    }
}

/// One policy step on a session's ops. Every hook has a no-op default, so a filter writes only
/// what it cares about; [`Filter::interest`] says which ops it wants to see at all.
///
/// A filter lives as long as its session and is driven from one task, so it keeps per-session
/// state in plain fields, without locks.
pub trait Filter: Send {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// The op kinds this filter wants passed to [`Filter::on_client_op`] and
    /// [`Filter::on_server_op`]. Ops of other kinds skip it.
    fn interest(&self) -> Interest {
        Interest::NONE
    }

    /// Called for every INFO on its way to the client (the first one and every async update),
    /// after the session has rewritten the addresses in it.
    fn on_info(&mut self, _info: &mut Info, _ctx: &SessionCtx) {}

    /// Called when the proxy has reloaded rule files, so a filter holding rules can take the
    /// new ones for this live session; every live session is woken for it at once.
    /// [`Filter::interest`] is read again afterwards. Returns what the reload means for
    /// the session, as nats-server applies a reload to its clients (see [`Reloaded`]).
    fn on_reload(&mut self, _ctx: &SessionCtx) -> Reloaded {
        Reloaded::default()
    }

    /// The session is ending subscriptions a filter asked to end ([`Reloaded::unsubscribe`],
    /// [`SessionCtx::end_subscriptions`]): they count as gone from now on, as nats-server
    /// removes them at once, though their deliveries already on the way still come until
    /// [`Filter::on_unsubscribed`]. Every filter is told, not only the one that asked.
    fn on_unsubscribing(&mut self, _sids: &[Bytes]) {}

    /// The upstream has ended subscriptions a filter asked to end ([`Reloaded::unsubscribe`],
    /// [`SessionCtx::end_subscriptions`]): every delivery it made for them has gone past.
    /// Every filter is told, not only the one that asked.
    fn on_unsubscribed(&mut self, _sids: &[Bytes]) {}

    /// The upstream dropped every subscription of the session: a second CONNECT went upstream
    /// (one the edge implied for the client counts as the first), which nats-server
    /// (2.11.17, 2.12.8, 2.14.0 and later) answers by dropping them all. A filter forgets what it kept per subscription, as a sid the client
    /// uses next is a new subscription.
    fn on_subscriptions_dropped(&mut self) {}

    /// Called for a client op on its way to the upstream. The context is mutable so that the
    /// filter that authenticates the CONNECT can record [`SessionCtx::identity`] for the
    /// filters after it.
    fn on_client_op(&mut self, _op: &mut ClientOp, _ctx: &mut SessionCtx) -> Verdict {
        Verdict::Forward
    }

    /// A client op this filter passed on was refused by a filter after it in the chain (an
    /// answer such as an `-ERR`, a drop, a close), so it never reaches the upstream. Called
    /// on the filters before the one that refused it, for ops of a kind they asked to see,
    /// so that one that recorded something for the op (the ACL and the limits filter a
    /// subscription) can take it back.
    fn on_client_op_refused(&mut self, _op: &ClientOp) {}

    /// Called for a server op on its way to the client. The context is mutable so that a
    /// filter can end a subscription ([`SessionCtx::end_subscriptions`]).
    fn on_server_op(&mut self, _op: &mut ServerOp, _ctx: &mut SessionCtx) -> Verdict {
        Verdict::Forward
    }
}

/// Builds the filter instance for a new session. Shared by all sessions of a listener.
pub trait FilterFactory: Send + Sync {
    fn build(&self, conn: &ConnFacts) -> Box<dyn Filter>;
}

impl<F> FilterFactory for F
where
    F: Fn(&ConnFacts) -> Box<dyn Filter> + Send + Sync,
{
    fn build(&self, conn: &ConnFacts) -> Box<dyn Filter> {
        self(conn)
    }
}

/// The [`OpKind`] of a client op.
pub fn client_op_kind(op: &ClientOp) -> OpKind {
    match op {
        ClientOp::Connect(_) => OpKind::Connect,
        ClientOp::Pub(_) => OpKind::Pub,
        ClientOp::Sub(_) => OpKind::Sub,
        ClientOp::Unsub(_) => OpKind::Unsub,
        ClientOp::Ping => OpKind::ClientPing,
        ClientOp::Pong => OpKind::ClientPong,
        ClientOp::Info(_) | ClientOp::Ok | ClientOp::Err(_) => OpKind::ClientOther,
    }
}

/// The [`OpKind`] of a server op. Filters see INFO through [`Filter::on_info`] instead.
pub fn server_op_kind(op: &ServerOp) -> OpKind {
    match op {
        ServerOp::Msg(_) => OpKind::Msg,
        ServerOp::Ping => OpKind::ServerPing,
        ServerOp::Pong => OpKind::ServerPong,
        ServerOp::Ok => OpKind::ServerOk,
        ServerOp::Err(_) => OpKind::ServerErr,
        ServerOp::Info(_) => OpKind::ServerInfo,
    }
}
