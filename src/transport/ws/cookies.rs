//! Credentials in cookies, as nats-server's websocket `jwt_cookie`, `username_cookie`,
//! `password_cookie` and `token_cookie` do it: the listener's `ws.*_cookie` keys name
//! cookies of the upgrade request whose values [`CookieFilter`] puts in the client's CONNECT
//! when the client left those fields empty. A browser app can then keep its credentials in
//! an HttpOnly cookie that its own scripts never see.

use std::fmt;

use nats_edge_filters::{ClientOp, Filter, Interest, OpKind, SessionCtx, Verdict};

use super::upgrade::Head;
use super::WsSettings;

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

/// The credentials the listener's cookie names find in the upgrade request.
pub(super) fn from_request(head: &Head<'_>, settings: &WsSettings) -> CookieCredentials {
    let find = |name: &Option<String>| -> Option<String> {
        let name = name.as_deref()?;
        head.all("cookie")
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .filter(|(k, _)| k.trim() == name)
            // The last of several, as nats-server's loop over the cookies keeps it.
            .last()
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

    fn on_client_op(&mut self, op: &mut ClientOp, ctx: &mut SessionCtx) -> Verdict {
        let ClientOp::Connect(connect) = op else {
            return Verdict::Forward;
        };
        if ctx.connect_implied {
            // nats-server lets a client without a CONNECT in as its no_auth_user, cookies
            // or not.
            return Verdict::Forward;
        }
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
    use crate::config::WsSection;

    #[test]
    fn cookie_credentials() {
        let mut s = WsSettings::new(&WsSection::default(), false);
        s.jwt_cookie = Some("jwt".into());
        s.token_cookie = Some("tok".into());
        let h = Head {
            method: "GET",
            path: "/",
            minor_version: 1,
            headers: vec![("Cookie", "jwt=old; a=1; jwt=\"eyJ\"; tok=")],
        };
        let c = from_request(&h, &s);
        assert_eq!(c.jwt.as_deref(), Some("eyJ"));
        assert_eq!(c.token, None);
        assert!(!format!("{c:?}").contains("eyJ"));
    }
}
