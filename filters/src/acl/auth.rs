//! Edge authentication: matching a client's CONNECT (and TLS certificate) to a user of the
//! rule files, with nats-server's password rules.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use super::rules::{AclRules, Secret, User};
use crate::filter::TlsPeer;
use crate::identity::AuthMethod;
use crate::op::Connect;

/// Why a client was refused. Logged; never sent to the client, which gets nats-server's
/// `Authorization Violation` whatever the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("unknown user `{0}`")]
    UnknownUser(String),
    #[error("wrong password for user `{0}`")]
    WrongPassword(String),
    #[error("user `{0}` has no password to check")]
    NoPassword(String),
    #[error("token matches no user")]
    UnknownToken,
    #[error("no credentials and no no_auth_user")]
    NoCredentials,
    #[error("a password without a user")]
    PasswordWithoutUser,
    #[error("nkey and JWT authentication are not done by the edge; use passthrough mode")]
    UnsupportedCredentials,
    /// Only with [`Checks::CachedOnly`]: a bcrypt hash must be checked first, off the
    /// session's thread, before the answer is known.
    #[error("a bcrypt check is still to be done")]
    NeedsSlowCheck,
    #[error("the password check did not finish")]
    CheckLost,
}

/// Who a client is, or why it was refused.
pub type AuthOutcome = Result<(Arc<User>, AuthMethod), AuthFailure>;

/// Which secret checks [`authenticate`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// Every check, bcrypt included: for a thread that may block.
    All,
    /// Plain-text secrets and bcrypt results already known; an unknown bcrypt check fails
    /// with [`AuthFailure::NeedsSlowCheck`]. For the session's own thread.
    CachedOnly,
}

/// nats-server treats a secret as a bcrypt hash when it looks like one.
pub(super) fn is_bcrypt(secret: &str) -> bool {
    let b = secret.as_bytes();
    b.len() > 7
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
}

/// Checks a client secret against a configured one (bcrypt hash or plain text).
///
/// A bcrypt check costs tens of milliseconds of CPU, which on a session's thread would stall
/// every session sharing it: sessions ask with [`Checks::CachedOnly`] and have the check
/// run off their thread when it is not known yet (the ACL filter keeps that check's result
/// for its session). Successes are remembered (by a keyed hash of hash and password, never
/// the password itself), so a client that reconnects pays once.
pub struct SecretChecker {
    hasher: RandomState,
    verified: Mutex<HashMap<u64, ()>>,
}

/// How many verified bcrypt checks are remembered.
const VERIFIED_CAPACITY: usize = 4096;

impl Default for SecretChecker {
    fn default() -> Self {
        SecretChecker {
            hasher: RandomState::new(),
            verified: Mutex::new(HashMap::new()),
        }
    }
}

impl SecretChecker {
    /// Whether `presented` is the `configured` secret; `None` when that takes a bcrypt
    /// check not done yet and `checks` forbids it.
    pub fn matches(&self, configured: &Secret, presented: &str, checks: Checks) -> Option<bool> {
        let configured = configured.expose();
        if !is_bcrypt(configured) {
            return Some(constant_time_eq(
                configured.as_bytes(),
                presented.as_bytes(),
            ));
        }
        let key = self.hasher.hash_one((configured, presented));
        if self
            .verified
            .lock()
            .is_ok_and(|cache| cache.contains_key(&key))
        {
            return Some(true);
        }
        if checks == Checks::CachedOnly {
            return None;
        }
        // Checks::All runs where blocking is allowed (the session's offload).
        let ok = bcrypt::verify(presented, configured).unwrap_or(false);
        if ok {
            if let Ok(mut cache) = self.verified.lock() {
                if cache.len() >= VERIFIED_CAPACITY {
                    cache.clear();
                }
                cache.insert(key, ());
            }
        }
        Some(ok)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn present(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|s| !s.is_empty())
}

/// Finds the user a client is, as nats-server would: a verified certificate mapped to a
/// user first, then user and password, then a token; a client that presents nothing becomes
/// the `no_auth_user`.
pub fn authenticate(
    rules: &AclRules,
    checker: &SecretChecker,
    connect: &Connect,
    tls: Option<&TlsPeer>,
    checks: Checks,
) -> AuthOutcome {
    let matches = |configured: &Secret, presented: &str| {
        checker
            .matches(configured, presented, checks)
            .ok_or(AuthFailure::NeedsSlowCheck)
    };
    if let Some(peer) = tls {
        // In nats-server's order (verify_and_map): e-mail names, DNS names, URIs, then the
        // subject; the certificate's own order within a kind. IP addresses, which
        // nats-server does not map, come last. The rules give each value to one user at
        // most, so the first match is the certificate's user, whatever order the users are
        // looked at in.
        let kind = |san: &str| match san.split(':').next() {
            Some("email") => 0,
            Some("DNS") => 1,
            Some("URI") => 2,
            _ => 3,
        };
        let by_san = |san: &String| rules.users().find(|u| u.tls_san.as_ref() == Some(san));
        let mut sans: Vec<&String> = peer.sans.iter().collect();
        sans.sort_by_key(|san| kind(san));
        let (names, addresses): (Vec<&String>, Vec<&String>) =
            sans.into_iter().partition(|san| kind(san) < 3);
        let mapped = names
            .into_iter()
            .find_map(by_san)
            .or_else(|| {
                // An empty subject (one the edge could not read, or a certificate named by
                // its SANs alone) names nobody.
                (!peer.subject.is_empty())
                    .then(|| {
                        rules
                            .users()
                            .find(|u| u.tls_subject.as_deref() == Some(peer.subject.as_str()))
                    })
                    .flatten()
            })
            .or_else(|| addresses.into_iter().find_map(by_san));
        if let Some(user) = mapped {
            // nats-server compares the mapped user's password with the CONNECT's, an empty
            // one included: a user with both is a certificate and a password, and a
            // password sent for a user without one is refused.
            let presented = connect.pass.as_deref().unwrap_or("");
            let passes = match &user.password {
                Some(configured) => matches(configured, presented)?,
                None => presented.is_empty(),
            };
            return if passes {
                Ok((user.clone(), AuthMethod::Certificate))
            } else {
                Err(AuthFailure::WrongPassword(user.name.to_string()))
            };
        }
    }
    if let Some(name) = present(&connect.user) {
        let user = rules
            .user(name)
            .ok_or_else(|| AuthFailure::UnknownUser(name.to_string()))?;
        let Some(configured) = &user.password else {
            // The no_auth_user may also be named, with no password, as on nats-server. Any
            // other user without a password is refused by name: nats-server would let it in
            // with none, but a rule file written for passthrough mode (where nats-server
            // checks passwords) names its users without them, and switching to edge mode
            // must not open every one of them.
            let is_no_auth_user = rules
                .no_auth_user
                .as_ref()
                .is_some_and(|anonymous| anonymous.name == user.name);
            if !is_no_auth_user || user.token.is_some() {
                return Err(AuthFailure::NoPassword(name.to_string()));
            }
            return match present(&connect.pass) {
                None => Ok((user.clone(), AuthMethod::NoAuthUser)),
                Some(_) => Err(AuthFailure::WrongPassword(name.to_string())),
            };
        };
        let presented = connect.pass.as_deref().unwrap_or("");
        return if matches(configured, presented)? {
            Ok((user.clone(), AuthMethod::Password))
        } else {
            Err(AuthFailure::WrongPassword(name.to_string()))
        };
    }
    if let Some(token) = present(&connect.auth_token) {
        // Plain tokens first, a constant-time compare each, so a token that is one of them
        // never waits for a bcrypt check; then the bcrypt ones, a full check each (a token
        // that matches none costs one per user with a bcrypt token).
        for slow in [false, true] {
            for user in rules.users() {
                let Some(configured) = &user.token else {
                    continue;
                };
                if is_bcrypt(configured.expose()) == slow && matches(configured, token)? {
                    return Ok((user.clone(), AuthMethod::Token));
                }
            }
        }
        return Err(AuthFailure::UnknownToken);
    }
    if present(&connect.nkey).is_some() || present(&connect.jwt).is_some() {
        return Err(AuthFailure::UnsupportedCredentials);
    }
    // nats-server gives the no_auth_user only to a client that sent no user, no password
    // and no token: a password alone is a failed login, not an anonymous one.
    if present(&connect.pass).is_some() {
        return Err(AuthFailure::PasswordWithoutUser);
    }
    match &rules.no_auth_user {
        Some(user) => Ok((user.clone(), AuthMethod::NoAuthUser)),
        None => Err(AuthFailure::NoCredentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> AclRules {
        // The hash of "s3cret" at cost 4, as `nats server passwd` or htpasswd makes it.
        let hash = bcrypt::hash_with_result("s3cret", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
        AclRules::from_str(
            "t.toml",
            &format!(
                r#"
no_auth_user = "guest"
[[users]]
user = "alice"
password = "{hash}"
[[users]]
user = "plain"
password = "pw"
[[users]]
user = "svc"
token = "tok"
[[users]]
user = "vault"
token = "{hash}"
[[users]]
user = "bob"
tls_subject = "CN=bob,O=Acme"
[[users]]
user = "guest"
"#
            ),
        )
        .unwrap()
    }

    fn connect(json: &str) -> Connect {
        serde_json::from_str(json).unwrap()
    }

    /// A plain token is found without a bcrypt check, whatever order the users come in; a
    /// token that is no plain one needs the slow checks.
    #[test]
    fn plain_tokens_are_tried_before_bcrypt_ones() {
        let rules = rules();
        let c = SecretChecker::default();
        let cached_only = |json: &str| {
            authenticate(&rules, &c, &connect(json), None, Checks::CachedOnly)
                .map(|(u, _)| u.name.to_string())
        };
        assert_eq!(cached_only(r#"{"auth_token":"tok"}"#), Ok("svc".into()));
        assert_eq!(
            cached_only(r#"{"auth_token":"s3cret"}"#),
            Err(AuthFailure::NeedsSlowCheck)
        );
        let all = authenticate(
            &rules,
            &c,
            &connect(r#"{"auth_token":"s3cret"}"#),
            None,
            Checks::All,
        );
        assert_eq!(all.map(|(u, _)| u.name.to_string()), Ok("vault".into()));
    }

    #[test]
    fn each_method() {
        let rules = rules();
        let c = SecretChecker::default();
        let auth = |json: &str, tls: Option<&TlsPeer>| {
            authenticate(&rules, &c, &connect(json), tls, Checks::All)
                .map(|(u, m)| (u.name.to_string(), m))
        };
        assert_eq!(
            auth(r#"{"user":"alice","pass":"s3cret"}"#, None),
            Ok(("alice".into(), AuthMethod::Password))
        );
        // Twice: the second comes from the cache and must agree.
        assert!(auth(r#"{"user":"alice","pass":"s3cret"}"#, None).is_ok());
        assert_eq!(
            auth(r#"{"user":"alice","pass":"wrong"}"#, None),
            Err(AuthFailure::WrongPassword("alice".into()))
        );
        assert!(auth(r#"{"user":"plain","pass":"pw"}"#, None).is_ok());
        assert!(auth(r#"{"user":"plain","pass":"pw2"}"#, None).is_err());
        assert_eq!(
            auth(r#"{"auth_token":"tok"}"#, None),
            Ok(("svc".into(), AuthMethod::Token))
        );
        assert_eq!(
            auth(r#"{"auth_token":"nope"}"#, None),
            Err(AuthFailure::UnknownToken)
        );
        assert_eq!(
            auth("{}", None),
            Ok(("guest".into(), AuthMethod::NoAuthUser))
        );
        // A password alone is a failed login, as in nats-server, not the no_auth_user.
        assert_eq!(
            auth(r#"{"pass":"pw"}"#, None),
            Err(AuthFailure::PasswordWithoutUser)
        );
        let bob = TlsPeer {
            subject: "CN=bob,O=Acme".into(),
            sans: vec![],
        };
        assert_eq!(
            auth("{}", Some(&bob)),
            Ok(("bob".into(), AuthMethod::Certificate))
        );
        assert_eq!(
            auth(r#"{"user":"mallory","pass":"x"}"#, None),
            Err(AuthFailure::UnknownUser("mallory".into()))
        );
        // The no_auth_user may be named, with no password, as on nats-server; another
        // user without a password (a certificate or token user, or one of a rule file
        // written for passthrough mode) may not.
        assert_eq!(
            auth(r#"{"user":"guest"}"#, None),
            Ok(("guest".into(), AuthMethod::NoAuthUser))
        );
        assert_eq!(
            auth(r#"{"user":"guest","pass":""}"#, None),
            Ok(("guest".into(), AuthMethod::NoAuthUser))
        );
        assert_eq!(
            auth(r#"{"user":"guest","pass":"x"}"#, None),
            Err(AuthFailure::WrongPassword("guest".into()))
        );
        assert_eq!(
            auth(r#"{"user":"bob"}"#, None),
            Err(AuthFailure::NoPassword("bob".into()))
        );
        assert_eq!(
            auth(r#"{"user":"svc"}"#, None),
            Err(AuthFailure::NoPassword("svc".into()))
        );
        assert!(is_bcrypt("$2a$11$abcdefghijklmnopqrstuv"));
        assert!(!is_bcrypt("$2c$11$abc"));
    }

    /// A certificate that could name several users names the one nats-server's
    /// verify_and_map would: e-mail names first, then DNS names, URIs, and the subject last.
    #[test]
    fn a_certificate_maps_in_nats_servers_order() {
        let rules = AclRules::from_str(
            "t.toml",
            r#"
[[users]]
user = "by-subject"
tls_subject = "CN=d"
[[users]]
user = "by-dns"
tls_san = "DNS:d.example.com"
[[users]]
user = "by-email"
tls_san = "email:d@example.com"
[[users]]
user = "by-ip"
tls_san = "IP:192.0.2.1"
"#,
        )
        .unwrap();
        let c = SecretChecker::default();
        let who_is = |subject: &str, sans: &[&str]| {
            let peer = TlsPeer {
                subject: subject.into(),
                sans: sans.iter().map(|s| s.to_string()).collect(),
            };
            authenticate(&rules, &c, &connect("{}"), Some(&peer), Checks::All)
                .map(|(u, _)| u.name.to_string())
        };
        let who = |sans: &[&str]| who_is("CN=d", sans);
        let all = ["DNS:d.example.com", "IP:192.0.2.1", "email:d@example.com"];
        assert_eq!(who(&all), Ok("by-email".into()));
        assert_eq!(who(&all[..2]), Ok("by-dns".into()));
        // An IP address, which nats-server does not map, comes after the subject.
        assert_eq!(who(&["IP:192.0.2.1"]), Ok("by-subject".into()));
        assert_eq!(who_is("CN=other", &["IP:192.0.2.1"]), Ok("by-ip".into()));
    }

    /// On a session's thread only remembered bcrypt results count: an unknown one asks for
    /// the check to be run elsewhere, after which a success is answered from memory.
    /// Plain-text secrets need no check.
    #[test]
    fn bcrypt_checks_leave_the_sessions_thread() {
        let rules = rules();
        let c = SecretChecker::default();
        let auth = |json: &str, checks| {
            authenticate(&rules, &c, &connect(json), None, checks).map(|(u, _)| u.name.to_string())
        };
        let good = r#"{"user":"alice","pass":"s3cret"}"#;
        let bad = r#"{"user":"alice","pass":"guess"}"#;
        assert_eq!(
            auth(good, Checks::CachedOnly),
            Err(AuthFailure::NeedsSlowCheck)
        );
        assert_eq!(auth(good, Checks::All), Ok("alice".into()));
        assert_eq!(auth(good, Checks::CachedOnly), Ok("alice".into()));
        assert_eq!(auth(good, Checks::CachedOnly), Ok("alice".into()));

        assert_eq!(
            auth(bad, Checks::CachedOnly),
            Err(AuthFailure::NeedsSlowCheck)
        );
        // Failures are not remembered: the session that asked keeps its own result.
        let wrong = Err(AuthFailure::WrongPassword("alice".into()));
        assert_eq!(auth(bad, Checks::All), wrong);
        assert_eq!(
            auth(bad, Checks::CachedOnly),
            Err(AuthFailure::NeedsSlowCheck)
        );

        assert_eq!(
            auth(r#"{"user":"plain","pass":"pw"}"#, Checks::CachedOnly),
            Ok("plain".into())
        );
    }
}
