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
        // An empty field is no credential: nats-server reads `"user":""` as no user, so a
        // client library that writes its unset fields as empty strings brings none.
        let has_own = [
            &connect.user,
            &connect.pass,
            &connect.auth_token,
            &connect.jwt,
            &connect.nkey,
            &connect.sig,
        ]
        .into_iter()
        .any(|field| field.as_deref().is_some_and(|value| !value.is_empty()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use nats_edge_filters::op::Connect;

    fn filter() -> UrlCredentialsFilter {
        let url = crate::upstream::UpstreamUrl::parse("nats://s3cret@127.0.0.1:4222").unwrap();
        UrlCredentialsFilter(url.credentials.unwrap())
    }

    fn ctx() -> SessionCtx {
        super::super::state::Shared::for_tests().ctx
    }

    fn judge(json: &str) -> (Verdict, Option<String>) {
        let connect: Connect = serde_json::from_str(json).unwrap();
        let mut op = ClientOp::Connect(Box::new(connect));
        let verdict = filter().on_client_op(&mut op, &mut ctx());
        let ClientOp::Connect(connect) = op else {
            unreachable!()
        };
        (verdict, connect.auth_token)
    }

    #[test]
    fn url_credentials_fill_a_connect_without_its_own() {
        assert_eq!(judge("{}"), (Verdict::Changed, Some("s3cret".into())));
        // Empty strings are no credentials, as nats-server reads them.
        assert_eq!(
            judge(r#"{"user":"","pass":"","auth_token":""}"#),
            (Verdict::Changed, Some("s3cret".into()))
        );
        assert_eq!(
            judge(r#"{"auth_token":"mine"}"#),
            (Verdict::Forward, Some("mine".into()))
        );
        assert_eq!(
            judge(r#"{"user":"me","pass":""}"#),
            (Verdict::Forward, None)
        );
    }
}
