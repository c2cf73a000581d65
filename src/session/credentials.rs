//! Credentials from the upstream URL (`nats://user:pass@host`, `nats://token@host`): sent
//! upstream for clients whose CONNECT carries none of their own.

use nats_edge_filters::{ClientOp, Filter, Interest, OpKind, SessionCtx, Verdict};

use crate::upstream::UrlCredentials;

pub struct UrlCredentialsFilter(pub UrlCredentials);

impl Filter for UrlCredentialsFilter {
    fn name(&self) -> &'static str {
        "url_credentials"
    }

    fn interest(&self) -> Interest {
        Interest::of(&[OpKind::Connect])
    }

    fn on_client_op(&mut self, op: &mut ClientOp, _ctx: &mut SessionCtx) -> Verdict {
        let ClientOp::Connect(connect) = op else {
            return Verdict::Forward;
        };
        let has_own = connect.user.is_some()
            || connect.pass.is_some()
            || connect.auth_token.is_some()
            || connect.jwt.is_some()
            || connect.nkey.is_some()
            || connect.sig.is_some();
        if has_own {
            return Verdict::Forward;
        }
        match &self.0 {
            UrlCredentials::UserPass { user, pass } => {
                connect.user = Some(user.clone());
                connect.pass = Some(pass.expose().to_string());
            }
            UrlCredentials::Token(token) => connect.auth_token = Some(token.expose().to_string()),
        }
        Verdict::Changed
    }
}
