//! ACL rule files: users, their credentials for edge authentication, and their permissions,
//! in TOML shaped like nats-server's `authorization` block.
//!
//! ```toml
//! no_auth_user = "guest"
//!
//! [default_permissions]
//! publish = { deny = [">"] }
//!
//! [[users]]
//! user = "alice"
//! password = "$2b$11$..."          # bcrypt, or plain text
//! [users.permissions]
//! publish = { allow = ["orders.>"], deny = ["orders.audit"] }
//! subscribe = ["orders.>", "jobs.> workers"]
//! allow_responses = { max = 1, expires = "2m" }
//! ```
//!
//! Several files may be loaded together; a user defined twice is an error naming both places.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::permissions::{Origin, Permissions, Rule, SubjectPermission};
use crate::responses::ResponseBounds;
use crate::subject::is_valid_subject;
use crate::toml_file::{self, line_of, TomlFault};

/// Why a rule file cannot be used. Every variant names the file, and where it can, the line.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{fault}")]
    Parse { file: String, fault: TomlFault },
    #[error("{file}:{line}: `{key}`: {reason}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        reason: String,
    },
}

/// A secret from a rule file or the config: prints masked.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Text only. A number or a boolean where a secret belongs (an unquoted `12345`, or an
/// environment variable of digits, which the config reads as a number) is refused with an
/// error that does not show the value, as serde's own "invalid type" error would; nor is it
/// taken as text, since `007` would have lost its zeros on the way.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        const NOT_TEXT: &str =
            "a secret must be text: quote it (\"12345\", or '\"12345\"' in an environment variable)";
        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        deserializer.deserialize_string(SecretVisitor)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The credentials the edge presents upstream for a user it authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// One user of a rule file, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: Arc<str>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// Matches a verified client certificate whose subject DN is exactly this.
    pub tls_subject: Option<String>,
    /// Matches a verified client certificate with this SAN (`email:...`, `DNS:...`, ...).
    pub tls_san: Option<String>,
    /// Credentials sent upstream for this user in edge mode, instead of the shared ones.
    pub upstream: Option<UpstreamCredentials>,
    /// `None`: the default permissions apply.
    pub permissions: Option<Arc<Permissions>>,
    pub origin: Origin,
}

impl User {
    /// Whether `other` accepts exactly the credentials this user does.
    pub fn same_credentials(&self, other: &User) -> bool {
        self.password == other.password
            && self.token == other.token
            && self.tls_subject == other.tls_subject
            && self.tls_san == other.tls_san
    }
}

/// Every loaded rule file, merged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AclRules {
    users: HashMap<Arc<str>, Arc<User>>,
    /// For users without permissions of their own, and unnamed passthrough clients.
    pub default_permissions: Option<Arc<Permissions>>,
    /// The user a client that presents no credentials becomes (edge mode).
    pub no_auth_user: Option<Arc<User>>,
    /// The files these rules came from.
    pub files: Vec<PathBuf>,
}

impl AclRules {
    /// Whether any rule is in force: without rule files (the default configuration) the
    /// ACL judges nothing and need not look at subscriptions.
    pub fn is_configured(&self) -> bool {
        !self.files.is_empty() || !self.users.is_empty() || self.default_permissions.is_some()
    }

    /// Loads and merges rule files.
    pub fn load(files: &[PathBuf]) -> Result<AclRules, RulesError> {
        let mut rules = AclRules {
            files: files.to_vec(),
            ..AclRules::default()
        };
        let mut no_auth: Option<(Spanned<String>, String, Arc<str>)> = None;
        for path in files {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
                file: name.clone(),
                source,
            })?;
            let file = parse_file(&name, &text)?;
            rules.merge(file, &name, &text, &mut no_auth)?;
        }
        rules.set_no_auth_user(no_auth)?;
        Ok(rules)
    }

    /// Parses one rule file from text (for tests and `acl explain` on a lone file).
    pub fn from_str(file: &str, text: &str) -> Result<AclRules, RulesError> {
        let mut rules = AclRules::default();
        let parsed = parse_file(file, text)?;
        let mut no_auth = None;
        rules.merge(parsed, file, text, &mut no_auth)?;
        rules.set_no_auth_user(no_auth)?;
        Ok(rules)
    }

    /// Resolves `no_auth_user` once every file is merged: the user may be defined in any.
    fn set_no_auth_user(
        &mut self,
        no_auth: Option<(Spanned<String>, String, Arc<str>)>,
    ) -> Result<(), RulesError> {
        let Some((user, file, text)) = no_auth else {
            return Ok(());
        };
        let found = self.users.get(user.get_ref().as_str()).cloned();
        self.no_auth_user = Some(found.ok_or_else(|| {
            invalid(
                &file,
                &text,
                user.span().start,
                "no_auth_user",
                format!("unknown user `{}`", user.get_ref()),
            )
        })?);
        Ok(())
    }

    pub fn user(&self, name: &str) -> Option<&Arc<User>> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }

    /// The permissions in force for `user` (by name), or the defaults.
    pub fn permissions_for(&self, user: Option<&str>) -> Option<&Arc<Permissions>> {
        user.and_then(|name| self.users.get(name))
            .and_then(|u| u.permissions.as_ref())
            .or(self.default_permissions.as_ref())
    }

    /// Whether any user or the defaults restrict anything.
    pub fn restricts_anything(&self) -> bool {
        self.default_permissions.is_some() || self.users.values().any(|u| u.permissions.is_some())
    }

    fn merge(
        &mut self,
        file: RuleFile,
        name: &str,
        text: &str,
        no_auth: &mut Option<(Spanned<String>, String, Arc<str>)>,
    ) -> Result<(), RulesError> {
        let origin_file: Arc<str> = name.into();
        if let Some(defaults) = file.default_permissions {
            if self.default_permissions.is_some() {
                return Err(invalid(
                    name,
                    text,
                    defaults.span().start,
                    "default_permissions",
                    "defined in more than one rule file".into(),
                ));
            }
            let perms = compile_permissions(
                defaults.into_inner(),
                "default_permissions",
                &origin_file,
                text,
            )?;
            self.default_permissions = Some(Arc::new(perms));
        }
        if let Some(user) = file.no_auth_user {
            if no_auth.is_some() {
                return Err(invalid(
                    name,
                    text,
                    user.span().start,
                    "no_auth_user",
                    "defined in more than one rule file".into(),
                ));
            }
            *no_auth = Some((user, name.to_string(), text.into()));
        }
        for (index, entry) in file.users.into_iter().enumerate() {
            // Keys as a type error in the file names them: `users.1.permissions.publish`.
            let key = |rest: &str| format!("users.{index}{rest}");
            let span = entry.user.span();
            let user_name = entry.user.get_ref().trim();
            if user_name.is_empty() {
                return Err(invalid(
                    name,
                    text,
                    span.start,
                    &key(".user"),
                    "empty".into(),
                ));
            }
            let origin = Origin {
                file: origin_file.clone(),
                line: line_of(text, span.start),
            };
            if let Some(first) = self.users.get(user_name) {
                return Err(invalid(
                    name,
                    text,
                    span.start,
                    &key(".user"),
                    format!(
                        "duplicate user `{user_name}`, first defined at {}",
                        first.origin
                    ),
                ));
            }
            if entry.password.is_some() && entry.token.is_some() {
                return Err(invalid(
                    name,
                    text,
                    span.start,
                    &key(""),
                    format!("user `{user_name}` has both a password and a token; give one"),
                ));
            }
            // An empty certificate name would be every certificate's whose subject is empty
            // (SPIFFE-style certificates carry their name in a URI SAN): nats-server maps no
            // empty subject, and nor does the edge.
            for (key, value) in [
                ("tls_subject", &entry.tls_subject),
                ("tls_san", &entry.tls_san),
            ] {
                if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    return Err(invalid(
                        name,
                        text,
                        span.start,
                        &format!("users.{index}"),
                        format!("user `{user_name}` has an empty {key}"),
                    ));
                }
            }
            // One credential, one user: a token, certificate subject or SAN shared by two users
            // would make who the client is depend on which is looked at first. (Two bcrypt
            // hashes of one token cannot be told apart here; a plain one can.)
            let shared = self.users.values().find_map(|other| {
                let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
                if same(&entry.tls_subject, &other.tls_subject) {
                    Some(("tls_subject", other))
                } else if same(&entry.tls_san, &other.tls_san) {
                    Some(("tls_san", other))
                } else if entry.token.as_ref().is_some_and(|t| {
                    !super::auth::is_bcrypt(t.expose())
                        && other
                            .token
                            .as_ref()
                            .is_some_and(|o| o.expose() == t.expose())
                }) {
                    Some(("token", other))
                } else {
                    None
                }
            });
            if let Some((key, other)) = shared {
                return Err(invalid(
                    name,
                    text,
                    span.start,
                    &format!("users.{index}"),
                    format!(
                        "user `{user_name}` has the same {key} as user `{}` ({}): each user needs its own",
                        other.name, other.origin
                    ),
                ));
            }
            let permissions = entry
                .permissions
                .map(|p| {
                    compile_permissions(p, &key(".permissions"), &origin_file, text).map(Arc::new)
                })
                .transpose()?;
            let user = User {
                name: user_name.into(),
                password: entry.password,
                token: entry.token,
                tls_subject: entry.tls_subject,
                tls_san: entry.tls_san,
                upstream: entry.upstream,
                permissions,
                origin,
            };
            self.users.insert(user.name.clone(), Arc::new(user));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    no_auth_user: Option<Spanned<String>>,
    default_permissions: Option<Spanned<PermissionsFile>>,
    #[serde(default)]
    users: Vec<UserFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    user: Spanned<String>,
    password: Option<Secret>,
    token: Option<Secret>,
    tls_subject: Option<String>,
    tls_san: Option<String>,
    upstream: Option<UpstreamCredentials>,
    permissions: Option<PermissionsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionsFile {
    #[serde(alias = "pub")]
    publish: Option<Spanned<ListFile>>,
    #[serde(alias = "sub")]
    subscribe: Option<Spanned<ListFile>>,
    allow_responses: Option<ResponsesFile>,
}

/// `"a.>"`, `["a", "b"]` (both allow lists) or `{ allow = [...], deny = [...] }`.
///
/// Deserialized by hand rather than as an untagged enum: an untagged enum buffers its input
/// and loses the positions that errors report as line numbers.
enum ListFile {
    One(String),
    Many(Vec<Spanned<String>>),
    Full {
        allow: Option<Vec<Spanned<String>>>,
        deny: Option<Vec<Spanned<String>>>,
    },
}

impl<'de> Deserialize<'de> for ListFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ListFile;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a subject, a list of subjects, or a table with `allow` and `deny`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ListFile, E> {
                Ok(ListFile::One(v.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ListFile, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(ListFile::Many(entries))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ListFile, A::Error> {
                let (mut allow, mut deny) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "allow" => allow = Some(map.next_value()?),
                        "deny" => deny = Some(map.next_value()?),
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["allow", "deny"]))
                        }
                    }
                }
                Ok(ListFile::Full { allow, deny })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `true`/`false`, or `{ max = 1, expires = "2m" }`.
enum ResponsesFile {
    Enabled(bool),
    Bounded {
        max: Option<i64>,
        expires: Option<Spanned<String>>,
    },
}

impl<'de> Deserialize<'de> for ResponsesFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ResponsesFile;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table with `max` and `expires`")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ResponsesFile, E> {
                Ok(ResponsesFile::Enabled(v))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ResponsesFile, A::Error> {
                let (mut max, mut expires) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "max" => max = Some(map.next_value()?),
                        "expires" => expires = Some(map.next_value()?),
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["max", "expires"]))
                        }
                    }
                }
                Ok(ResponsesFile::Bounded { max, expires })
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn parse_file(name: &str, text: &str) -> Result<RuleFile, RulesError> {
    toml_file::parse(text).map_err(|fault| RulesError::Parse {
        file: name.to_string(),
        fault,
    })
}

fn invalid(file: &str, text: &str, offset: usize, key: &str, reason: String) -> RulesError {
    RulesError::Invalid {
        file: file.to_string(),
        line: line_of(text, offset),
        key: key.to_string(),
        reason,
    }
}

/// `at`: the key of the permissions table (`users.0.permissions`), for errors.
fn compile_permissions(
    p: PermissionsFile,
    at: &str,
    file: &Arc<str>,
    text: &str,
) -> Result<Permissions, RulesError> {
    let mut perms = Permissions {
        publish: compile_list(p.publish, false, at, file, text)?,
        subscribe: compile_list(p.subscribe, true, at, file, text)?,
        responses: None,
    };
    let expires_key = format!("{at}.allow_responses.expires");
    if let Some(r) = p.allow_responses {
        let defaults = ResponseBounds::default();
        perms.responses = match r {
            ResponsesFile::Enabled(false) => None,
            ResponsesFile::Enabled(true) => Some(defaults),
            // As nats-server reads them: 0 (or no value) is the default, a negative value no
            // bound at all.
            ResponsesFile::Bounded { max, expires } => Some(ResponseBounds {
                max_msgs: match max {
                    None | Some(0) => defaults.max_msgs,
                    Some(n) if n < 0 => 0,
                    Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
                },
                expires: match expires {
                    None => defaults.expires,
                    Some(s) if s.get_ref().trim().starts_with('-') => {
                        // One sign, as Go's ParseDuration takes it; minus zero is zero.
                        let magnitude = &s.get_ref().trim()[1..];
                        let signed =
                            magnitude.starts_with(['-', '+']) || magnitude.trim() != magnitude;
                        match parse_duration(magnitude).filter(|_| !signed) {
                            None => {
                                return Err(invalid(
                                    file,
                                    text,
                                    s.span().start,
                                    &expires_key,
                                    format!("`{}` is not a duration such as \"2m\"", s.get_ref()),
                                ))
                            }
                            Some(d) if d.is_zero() => defaults.expires,
                            Some(_) => None,
                        }
                    }
                    Some(s) => {
                        let d = parse_duration(s.get_ref()).ok_or_else(|| {
                            invalid(
                                file,
                                text,
                                s.span().start,
                                &expires_key,
                                format!(
                                    "`{}` is not a duration such as \"2m\" or \"500ms\"",
                                    s.get_ref()
                                ),
                            )
                        })?;
                        if d.is_zero() {
                            defaults.expires
                        } else {
                            Some(d)
                        }
                    }
                },
            }),
        };
        // As nats-server: allowing responses without a publish allow list turns the blanket
        // allow off, so the client may publish only its responses.
        if perms.responses.is_some() && perms.publish.allow.is_none() {
            perms.publish.allow = Some(Vec::new());
        }
    }
    Ok(perms)
}

fn compile_list(
    list: Option<Spanned<ListFile>>,
    queues: bool,
    at: &str,
    file: &Arc<str>,
    text: &str,
) -> Result<SubjectPermission, RulesError> {
    let (allow, deny) = match list {
        None => (None, None),
        Some(list) => {
            let span = list.span();
            let empty_allow = match list.get_ref() {
                ListFile::Many(v) => v.is_empty(),
                ListFile::Full { allow, .. } => allow.as_ref().is_some_and(Vec::is_empty),
                ListFile::One(_) => false,
            };
            if empty_allow && !queues {
                // nats-server reads an empty publish allow list from its configuration as no
                // list at all (everything allowed), which whoever wrote it rarely means.
                return Err(invalid(
                    file,
                    text,
                    span.start,
                    &format!("{at}.publish.allow"),
                    "an empty allow list: nats-server reads it as no list, allowing \
                     everything; leave `publish` out for that, or write \
                     `publish = { deny = [\">\"] }` to allow nothing"
                        .into(),
                ));
            }
            match list.into_inner() {
                ListFile::One(s) => (Some(vec![Spanned::new(span, s)]), None),
                ListFile::Many(v) => (Some(v), None),
                ListFile::Full { allow, deny } => (allow, deny),
            }
        }
    };
    let compile = |entries: Vec<Spanned<String>>, key: &str| -> Result<Vec<Rule>, RulesError> {
        entries
            .into_iter()
            .map(|e| compile_rule(e, queues, key, file, text))
            .collect()
    };
    let kind = if queues { "subscribe" } else { "publish" };
    let allow = allow
        .map(|v| compile(v, &format!("{at}.{kind}.allow")))
        .transpose()?;
    // nats-server ignores an empty subscribe allow list (everything stays allowed); an empty
    // publish one is refused above.
    let allow = allow.filter(|v| !(queues && v.is_empty()));
    let deny = deny
        .map(|v| compile(v, &format!("{at}.{kind}.deny")))
        .transpose()?
        .unwrap_or_default();
    Ok(SubjectPermission { allow, deny })
}

fn compile_rule(
    entry: Spanned<String>,
    queues: bool,
    key: &str,
    file: &Arc<str>,
    text: &str,
) -> Result<Rule, RulesError> {
    let start = entry.span().start;
    let value = entry.into_inner();
    let bad = |reason: String| invalid(file, text, start, key, reason);
    let mut parts = value.split_whitespace();
    let subject = parts.next().unwrap_or_default();
    let queue = parts.next();
    if parts.next().is_some() {
        return Err(bad(format!(
            "`{value}`: expected a subject and at most a queue group"
        )));
    }
    if !is_valid_subject(subject.as_bytes()) {
        return Err(bad(format!("`{value}`: invalid subject")));
    }
    if queue.is_some() && !queues {
        return Err(bad(format!(
            "`{value}`: a queue group has no meaning in a publish permission"
        )));
    }
    // nats-server refuses a configuration with a queue group that is not a valid subject
    // (and skips such an entry in permissions it applies at run time): refused here too.
    if queue.is_some_and(|q| !is_valid_subject(q.as_bytes())) {
        return Err(bad(format!("`{value}`: invalid queue group")));
    }
    Ok(Rule {
        subject: subject.into(),
        queue: queue.map(Into::into),
        origin: Origin {
            file: file.clone(),
            line: line_of(text, start),
        },
    })
}

/// A duration as Go's `time.ParseDuration` reads one, nats-server's own reader for
/// `allow_responses.expires`, without a minus sign (the caller takes one off): `"0"`, or one or
/// more decimal numbers, each with an optional fraction and a unit (`ns`, `us` or `µs`,
/// `ms`, `s`, `m`, `h`), such as `"2m"`, `"1m30s"` or `"1.5h"`. Surrounding blanks are
/// allowed (TOML values are often written with them); a bare number is not a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let trimmed = text.trim();
    let mut rest = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = rest.split_at(digits_end(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(digits_end(after)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut nanos = whole.checked_mul(unit_nanos)?;
        if !fraction.is_empty() {
            // As Go: the fraction's digits scaled by the unit, the remainder dropped.
            let mut scale = unit_nanos;
            for digit in fraction.bytes() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                nanos = nanos.checked_add(u128::from(digit - b'0') * scale)?;
            }
        }
        total = total.checked_add(nanos)?;
        rest = after;
    }
    // Go's durations are an int64 of nanoseconds.
    u64::try_from(total)
        .ok()
        .filter(|n| *n <= i64::MAX as u64)
        .map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations as Go's `time.ParseDuration` reads them (nats-server's reader).
    #[test]
    fn durations_as_go_reads_them() {
        let ms = |n: u64| Some(Duration::from_millis(n));
        for (text, expected) in [
            ("2m", ms(120_000)),
            ("1m30s", ms(90_000)),
            ("1.5m", ms(90_000)),
            ("1.5h", ms(5_400_000)),
            (".5s", ms(500)),
            ("5.s", ms(5_000)),
            ("300us", Some(Duration::from_micros(300))),
            ("300\u{b5}s", Some(Duration::from_micros(300))),
            ("1h2m3s4ms", ms(3_723_004)),
            ("+2s", ms(2_000)),
            ("++2s", None),
            (" 2s ", ms(2_000)),
            ("0", Some(Duration::ZERO)),
            ("0s", Some(Duration::ZERO)),
            ("60", None),
            ("", None),
            (".s", None),
            ("2 m", None),
            ("2d", None),
            ("1ms2", None),
            ("9999999999h", None),
        ] {
            assert_eq!(parse_duration(text), expected, "{text:?}");
        }
    }

    #[test]
    fn parses_users_and_shorthands() {
        let text = r#"
no_auth_user = "guest"
[default_permissions]
publish = "public.>"

[[users]]
user = "alice"
password = "secret"
[users.permissions]
publish = { allow = ["orders.>"], deny = ["orders.audit"] }
subscribe = ["orders.>", "jobs.> workers"]
allow_responses = { max = 3, expires = "1m" }

[[users]]
user = "guest"
"#;
        let rules = AclRules::from_str("t.toml", text).unwrap();
        let alice = rules.user("alice").unwrap();
        let p = alice.permissions.as_ref().unwrap();
        assert_eq!(p.publish.deny[0].origin.line, 10);
        assert_eq!(
            p.subscribe.allow.as_ref().unwrap()[1].queue.as_deref(),
            Some("workers")
        );
        assert_eq!(
            p.responses,
            Some(ResponseBounds {
                max_msgs: 3,
                expires: Some(Duration::from_secs(60))
            })
        );
        assert_eq!(rules.no_auth_user.as_ref().unwrap().name.as_ref(), "guest");
        assert!(rules.permissions_for(Some("guest")).is_some());

        // allow_responses bounds as nats-server reads them: 0 is the default, a negative
        // value no bound.
        let bounds = |table: &str| {
            let text = format!(
                "[[users]]\nuser = \"s\"\n[users.permissions]\nallow_responses = {table}\n"
            );
            AclRules::from_str("t.toml", &text)
                .map(|r| r.user("s").unwrap().permissions.as_ref().unwrap().responses)
        };
        let defaults = ResponseBounds::default();
        assert_eq!(
            bounds("{ max = 0, expires = \"0\" }").unwrap(),
            Some(defaults)
        );
        assert_eq!(
            bounds("{ max = -1, expires = \"-1s\" }").unwrap(),
            Some(ResponseBounds {
                max_msgs: 0,
                expires: None
            })
        );
        assert!(bounds("{ expires = \"-soon\" }").is_err());
        assert!(bounds("{ expires = \"--1s\" }").is_err());
        assert_eq!(bounds("{ expires = \"-0s\" }").unwrap(), Some(defaults));
        assert!(format!("{alice:?}").contains("***"));
        assert!(!format!("{alice:?}").contains("secret"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = AclRules::from_str(
            "r.toml",
            "[[users]]\nuser = \"a\"\n[[users]]\nuser = \"a\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("r.toml:4:"), "{e}");
        assert!(
            e.contains("duplicate user `a`, first defined at r.toml:2"),
            "{e}"
        );
        // One credential, one user.
        for (key, value) in [
            ("token", "\"t0k\""),
            ("tls_subject", "\"CN=d\""),
            ("tls_san", "\"DNS:d\""),
        ] {
            let text = format!(
                "[[users]]\nuser = \"a\"\n{key} = {value}\n[[users]]\nuser = \"b\"\n{key} = {value}\n"
            );
            let e = AclRules::from_str("r.toml", &text).unwrap_err().to_string();
            assert!(e.starts_with("r.toml:5:"), "{e}");
            assert!(
                e.contains(&format!(
                    "user `b` has the same {key} as user `a` (r.toml:2)"
                )),
                "{e}"
            );
        }
        // A table written with dotted keys: refused, saying what to write instead.
        let e = AclRules::from_str(
            "r.toml",
            "[[users]]\nuser = \"a\"\n[users.permissions]\npublish.allow = [\"x.y\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("r.toml:4: `users.0.permissions.publish.allow`: a table written with dotted keys is not read here"),
            "{e}"
        );
        // A value of the wrong type: the line and the key it is under.
        let e = AclRules::from_str(
            "r.toml",
            "[[users]]\nuser = \"a\"\n[users.permissions]\npublish = { allow = \"x\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("r.toml:4: `users.0.permissions.publish.allow`: invalid type"),
            "{e}"
        );
        // An empty certificate name would map every certificate whose subject is empty.
        for key in ["tls_subject", "tls_san"] {
            let text = format!("[[users]]\nuser = \"a\"\n{key} = \"\"\n");
            let e = AclRules::from_str("r.toml", &text).unwrap_err().to_string();
            assert!(e.contains(&format!("user `a` has an empty {key}")), "{e}");
        }
        // An empty publish allow list is refused (nats-server would allow everything); an
        // empty subscribe allow list is ignored, as nats-server ignores it.
        for publish in ["[]", "{ allow = [] }"] {
            let text =
                format!("[[users]]\nuser = \"a\"\n[users.permissions]\npublish = {publish}\n");
            let e = AclRules::from_str("r.toml", &text).unwrap_err().to_string();
            assert!(
                e.starts_with("r.toml:4: `users.0.permissions.publish.allow`: an empty allow list"),
                "{e}"
            );
        }
        let text = "[[users]]\nuser = \"a\"\n[users.permissions]\nsubscribe = []\n";
        assert!(AclRules::from_str("r.toml", text).is_ok());
        // Bcrypt hashes of tokens cannot be compared: two are allowed.
        let hashed = "\"$2a$11$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz0123\"";
        let text = format!(
            "[[users]]\nuser = \"a\"\ntoken = {hashed}\n[[users]]\nuser = \"b\"\ntoken = {hashed}\n"
        );
        assert!(AclRules::from_str("r.toml", &text).is_ok());
        let e = AclRules::from_str(
            "r.toml",
            "[[users]]\nuser = \"a\"\n[users.permissions]\npublish = [\"ok\", \"bad..subject\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "r.toml:4: `users.0.permissions.publish.allow`: `bad..subject`: invalid subject"
        );
        let e = AclRules::from_str(
            "r.toml",
            "[[users]]\nuser = \"a\"\n[users.permissions]\nsubscribe = [\"jobs.> q..x\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "r.toml:4: `users.0.permissions.subscribe.allow`: `jobs.> q..x`: invalid queue group"
        );
        let e = AclRules::from_str("r.toml", "no_auth_user = \"ghost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.toml:1: `no_auth_user`: unknown user `ghost`"),
            "{e}"
        );
        let e = AclRules::from_str("r.toml", "[[users]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("r.toml:"), "{e}");
    }

    #[test]
    fn responses_turn_the_blanket_publish_allow_off() {
        let rules = AclRules::from_str(
            "r.toml",
            "[[users]]\nuser = \"svc\"\n[users.permissions]\nallow_responses = true\n",
        )
        .unwrap();
        let p = rules.permissions_for(Some("svc")).unwrap();
        assert_eq!(p.publish.allow, Some(vec![]));
        assert_eq!(p.responses, Some(ResponseBounds::default()));
    }
}
