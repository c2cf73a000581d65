//! Credentials in cookies, as nats-server's websocket `jwt_cookie`, `user_cookie`,
//! `pass_cookie` and `token_cookie` do it: the listener's `ws.*_cookie` keys name
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
        let name = name.as_deref()?.as_bytes();
        head.cookies
            .iter()
            .flat_map(|v| v.split(|b| *b == b';'))
            .filter_map(|pair| {
                let eq = pair.iter().position(|b| *b == b'=')?;
                (trim(&pair[..eq]) == name).then(|| cookie_value(trim(&pair[eq + 1..])))?
            })
            // The last of several, as nats-server's loop over the cookies keeps it.
            .next_back()
            .filter(|v| !v.is_empty())
    };
    CookieCredentials {
        jwt: find(&settings.jwt_cookie),
        user: find(&settings.user_cookie),
        pass: find(&settings.pass_cookie),
        token: find(&settings.token_cookie),
    }
}

/// A cookie's value as Go's HTTP server reads it (`parseCookieValue`): one pair of double
/// quotes around it taken off, and the cookie skipped if a byte is not one a cookie value
/// may hold (visible ASCII or a space, but no `"`, `;` or `\`).
fn cookie_value(raw: &[u8]) -> Option<String> {
    let value = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => raw,
    };
    let valid = |b: &u8| (0x20..0x7f).contains(b) && !matches!(b, b'"' | b';' | b'\\');
    value
        .iter()
        .all(valid)
        .then(|| String::from_utf8_lossy(value).into_owned())
}

/// Spaces and tabs off both ends, as Go's `textproto.TrimString`.
fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| matches!(b, b' ' | b'\t');
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Fills the CONNECT's empty credential fields from the upgrade request's cookies
/// (nats-server's `jwt_cookie`, `user_cookie`, `pass_cookie`, `token_cookie`).
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
        s.user_cookie = Some("user".into());
        s.pass_cookie = Some("pass".into());
        let h = Head {
            method: "GET",
            path: "/",
            minor_version: 1,
            headers: Vec::new(),
            cookies: vec![
                b"jwt=old; a=1; jwt=\"eyJ\"; tok=",
                // Another application's cookie with a Latin-1 byte hides nothing else; a
                // value with a byte no cookie may hold, or one unmatched quote, is skipped.
                b"pref=caf\xe9; user=al\xe9x; user=bob; pass=\"pw; pass=\"",
            ],
        };
        let c = from_request(&h, &s);
        assert_eq!(c.jwt.as_deref(), Some("eyJ"));
        assert_eq!(c.token, None);
        assert_eq!(c.user.as_deref(), Some("bob"));
        assert_eq!(c.pass, None);
        assert!(!format!("{c:?}").contains("eyJ"));
    }
}
