//! The `[auth]` section: who decides whether a client may connect, the ACL rule files, the
//! credentials the edge presents upstream, and the trusted-proxy key.

use std::path::PathBuf;

use nats_edge_filters::acl::rules::UpstreamCredentials;
use nats_edge_filters::acl::AuthMode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `passthrough`: nats-server authenticates clients with their own credentials.
    /// `edge`: the edge authenticates them against the users of `rules`.
    pub mode: AuthModeConfig,
    /// ACL rule files (users, credentials, permissions). Relative paths are relative to the
    /// config file's directory. A list, or one comma-separated string (an environment
    /// variable's).
    #[serde(deserialize_with = "path_list")]
    pub rules: Vec<PathBuf>,
    /// Credentials sent upstream for edge-authenticated clients (a user in the rule files may
    /// name its own). Unset: none, or those of the upstream URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamCredentials>,
    /// Sign every CONNECT sent upstream as a trusted proxy (nats-server `proxies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_proxy: Option<TrustedProxyConfig>,
    /// The upstream nats-server runs in operator mode (JWT accounts): a passthrough client's
    /// user JWT names it for the rules. Off, JWTs name no one, as nats-server outside
    /// operator mode ignores them.
    pub operator_mode: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthModeConfig {
    #[default]
    Passthrough,
    Edge,
}

impl From<AuthModeConfig> for AuthMode {
    fn from(mode: AuthModeConfig) -> Self {
        match mode {
            AuthModeConfig::Passthrough => AuthMode::Passthrough,
            AuthModeConfig::Edge => AuthMode::Edge,
        }
    }
}

/// Where the trusted proxy's nkey seed is read from: a file or an environment variable,
/// never the config itself, so the secret stays out of config files and logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustedProxyConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_env: Option<String>,
}

impl AuthSection {
    /// Checks what types alone cannot; returns the key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.mode == AuthModeConfig::Edge && self.rules.is_empty() {
            return Err((
                "auth.rules".into(),
                "mode = \"edge\" needs at least one rule file with users".into(),
            ));
        }
        if let Some(creds) = &self.upstream {
            if creds.token.is_some() && (creds.user.is_some() || creds.password.is_some()) {
                return Err((
                    "auth.upstream".into(),
                    "give a token or a user and password, not both".into(),
                ));
            }
        }
        if let Some(proxy) = &self.trusted_proxy {
            if proxy.seed_file.is_some() == proxy.seed_env.is_some() {
                return Err((
                    "auth.trusted_proxy".into(),
                    "give exactly one of seed_file and seed_env".into(),
                ));
            }
            // The seed itself where its place is named: refused without repeating it, as
            // the errors that name the file or the variable would print it.
            let file = proxy.seed_file.as_deref().and_then(std::path::Path::to_str);
            for (key, value, instead) in [
                ("seed_file", file, "the path of a file that holds the seed"),
                (
                    "seed_env",
                    proxy.seed_env.as_deref(),
                    "the name of an environment variable that holds the seed",
                ),
            ] {
                if value.is_some_and(looks_like_seed) {
                    return Err((
                        format!("auth.trusted_proxy.{key}"),
                        format!(
                            "this is an nkey seed itself, not where it is kept: give {instead}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An nkey seed: `S` and a key type, 58 characters of base32 in all.
fn looks_like_seed(value: &str) -> bool {
    let value = value.trim();
    value.len() == 58
        && value.starts_with('S')
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// A list of paths, as a TOML array or one comma-separated string.
fn path_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    let list: super::units::StringList = serde::Deserialize::deserialize(d)?;
    Ok(list.0.into_iter().map(PathBuf::from).collect())
}
