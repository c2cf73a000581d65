//! What a filter decides about one op.

use std::sync::Arc;

use crate::op::ServerOp;

/// A filter's decision about one op.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Pass the op on unchanged; it leaves as its original bytes.
    Forward,
    /// Pass the op on; the filter changed it in place, so it is re-serialised.
    Changed,
    /// Swallow the op silently.
    Drop,
    /// Swallow the op and answer the client with this server op instead (an `-ERR`, a `+OK`).
    /// The answer is held behind replies the upstream still owes for earlier ops.
    Answer(ServerOp),
    /// Hold this op until the upstream has answered everything sent before it, then show it to
    /// the filters again with [`crate::SessionCtx::upstream_caught_up`] set. For decisions
    /// that depend on what the upstream has done with earlier ops (deliveries that complete
    /// an auto-unsubscribe, for one). Meanwhile the client's later ops wait too.
    Defer,
    /// Hold this op (and the client's later ones) while `check` runs off the session's
    /// thread, then show it to the filters again: for work that would stall every session
    /// sharing the thread, a bcrypt password check above all. The check leaves its result
    /// where the filter finds it the second time.
    Offload(SlowCheck),
    /// End the session. `error`, when present, is sent to the client first, as nats-server
    /// would (some violations close with an `-ERR`, some silently).
    Close {
        reason: CloseReason,
        error: Option<&'static str>,
    },
}

impl Verdict {
    /// Close the session after sending nats-server's `-ERR '<text>'`.
    pub fn close_with(reason: CloseReason, text: &'static str) -> Self {
        Verdict::Close {
            reason,
            error: Some(text),
        }
    }

    /// Answer the client with `-ERR '<text>'` and keep the connection open.
    pub fn error(text: impl Into<String>) -> Self {
        Verdict::Answer(ServerOp::Err(text.into()))
    }
}

/// Why a session ended. A closed set: each value is one metric label and one log word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed its side.
    ClientClosed,
    /// The upstream closed its side.
    UpstreamClosed,
    /// Reading or writing the client socket failed.
    ClientIoError,
    /// Reading or writing the upstream socket failed.
    UpstreamIoError,
    /// No configured upstream could be reached.
    UpstreamUnavailable,
    /// The client sent bytes that are not the NATS protocol.
    ProtocolViolation,
    /// The upstream sent bytes that are not the NATS protocol.
    UpstreamProtocolViolation,
    /// A control line longer than the limit.
    MaxControlLineExceeded,
    /// A payload larger than the effective max_payload.
    MaxPayloadExceeded,
    /// No CONNECT within the handshake timeout.
    HandshakeTimeout,
    /// The edge is shutting down.
    Shutdown,
    /// A filter ended the session for a policy reason.
    Policy,
    /// The edge refused the client's credentials (edge authentication).
    AuthorizationViolation,
    /// The client took none of the bytes queued for it within the write deadline.
    SlowConsumer,
    /// A reload removed the client's user, or changed the upstream credentials it is
    /// proxied with: closed without an `-ERR`, as nats-server closes a client whose user
    /// is gone or has moved to another account, so that it logs in again.
    UserChanged,
}

impl CloseReason {
    /// Every reason, for metric registration.
    pub const ALL: [CloseReason; 15] = [
        CloseReason::ClientClosed,
        CloseReason::UpstreamClosed,
        CloseReason::ClientIoError,
        CloseReason::UpstreamIoError,
        CloseReason::UpstreamUnavailable,
        CloseReason::ProtocolViolation,
        CloseReason::UpstreamProtocolViolation,
        CloseReason::MaxControlLineExceeded,
        CloseReason::MaxPayloadExceeded,
        CloseReason::HandshakeTimeout,
        CloseReason::Shutdown,
        CloseReason::Policy,
        CloseReason::AuthorizationViolation,
        CloseReason::SlowConsumer,
        CloseReason::UserChanged,
    ];

    /// The stable snake_case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::UpstreamClosed => "upstream_closed",
            CloseReason::ClientIoError => "client_io_error",
            CloseReason::UpstreamIoError => "upstream_io_error",
            CloseReason::UpstreamUnavailable => "upstream_unavailable",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::UpstreamProtocolViolation => "upstream_protocol_violation",
            CloseReason::MaxControlLineExceeded => "max_control_line_exceeded",
            CloseReason::MaxPayloadExceeded => "max_payload_exceeded",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Policy => "policy",
            CloseReason::AuthorizationViolation => "authorization_violation",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::UserChanged => "user_changed",
        }
    }

    /// Index into [`CloseReason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Work a filter needs done before it can judge an op, to be run where blocking is allowed
/// (see [`Verdict::Offload`]).
#[derive(Clone)]
pub struct SlowCheck(Arc<dyn Fn() + Send + Sync>);

impl SlowCheck {
    pub fn new(check: impl Fn() + Send + Sync + 'static) -> Self {
        SlowCheck(Arc::new(check))
    }

    /// Runs the check; it may block for as long as it takes.
    pub fn run(&self) {
        (self.0)()
    }
}

impl std::fmt::Debug for SlowCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlowCheck")
    }
}

/// The same check, not an equal one: verdicts compare in tests.
impl PartialEq for SlowCheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
