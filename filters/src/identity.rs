//! Who a connection is, once its CONNECT has been judged.

use std::sync::Arc;

/// The identity permissions and tags are keyed on. Set on [`crate::SessionCtx::identity`] by
/// the filter that authenticates the CONNECT, for the filters after it and for the session's
/// logs, metrics and monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name: the configured user the edge authenticated, or in passthrough mode the
    /// name the client presented (its `user`, else its nkey). `None` for a client that
    /// presented no name in passthrough mode.
    pub user: Option<Arc<str>>,
    /// How the identity was established.
    pub method: AuthMethod,
}

/// How a connection's identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The edge did not authenticate: the client's credentials went to nats-server, which
    /// decides; the user is what the client presented.
    Passthrough,
    /// The edge checked a token.
    Token,
    /// The edge checked a user name and password.
    Password,
    /// The edge matched a verified TLS client certificate.
    Certificate,
    /// The client presented nothing and was given the configured `no_auth_user`.
    NoAuthUser,
}

impl AuthMethod {
    /// The stable name used in logs and monitoring.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Passthrough => "passthrough",
            AuthMethod::Token => "token",
            AuthMethod::Password => "password",
            AuthMethod::Certificate => "certificate",
            AuthMethod::NoAuthUser => "no_auth_user",
        }
    }
}

impl Identity {
    /// The user name for logs and metric labels: the name, or `""` when there is none.
    pub fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }
}
