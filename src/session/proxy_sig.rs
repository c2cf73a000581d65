//! The trusted-proxy signature (nats-server's `proxies { trusted = [...] }`, ADR-55): the edge
//! signs the nonce of the upstream's INFO with its nkey and adds `proxy_sig` to every CONNECT
//! it sends upstream, so nats-server can require that some users come through the edge.

use std::sync::Arc;

use nats_edge_filters::{ClientOp, Filter, Interest, OpKind, SessionCtx, Verdict};

use crate::config::TrustedProxyConfig;

/// Why the trusted-proxy key cannot be used. Never includes the seed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyKeyError {
    #[error("auth.trusted_proxy.seed_file {path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.trusted_proxy.seed_env: the environment variable `{0}` is not set")]
    MissingEnv(String),
    #[error("auth.trusted_proxy: {origin}: not a valid nkey seed")]
    InvalidSeed { origin: String },
}

/// The edge's nkey, which signs upstream nonces.
pub struct ProxySigner {
    key: nkeys::KeyPair,
}

impl std::fmt::Debug for ProxySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySigner")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl ProxySigner {
    /// Reads the seed from the configured file or environment variable.
    pub fn load(config: &TrustedProxyConfig) -> Result<Self, ProxyKeyError> {
        let (seed, origin) = match (&config.seed_file, &config.seed_env) {
            (Some(path), _) => (
                std::fs::read_to_string(path).map_err(|source| ProxyKeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
                format!("seed_file {}", path.display()),
            ),
            (None, Some(var)) => (
                std::env::var(var).map_err(|_| ProxyKeyError::MissingEnv(var.clone()))?,
                format!("seed_env {var}"),
            ),
            (None, None) => {
                return Err(ProxyKeyError::InvalidSeed {
                    origin: "no seed configured".into(),
                })
            }
        };
        // A seed file may hold the seed among other lines (an nsc .nk or .creds layout).
        let seed = seed
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with('S') && l.len() > 50)
            .unwrap_or(seed.trim());
        let key =
            nkeys::KeyPair::from_seed(seed).map_err(|_| ProxyKeyError::InvalidSeed { origin })?;
        Ok(ProxySigner { key })
    }

    /// The public key to list in nats-server's `proxies { trusted = [...] }`.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The `proxy_sig` for a nonce: an ed25519 signature, base64url without padding.
    pub fn sign(&self, nonce: &str) -> Option<String> {
        let sig = self.key.sign(nonce.as_bytes()).ok()?;
        Some(data_encoding::BASE64URL_NOPAD.encode(&sig))
    }
}

/// Adds the edge's `proxy_sig` to the CONNECT, replacing any a client sent.
pub struct ProxySigFilter(pub Arc<ProxySigner>);

impl Filter for ProxySigFilter {
    fn name(&self) -> &'static str {
        "proxy_sig"
    }

    fn interest(&self) -> Interest {
        Interest::of(&[OpKind::Connect])
    }

    fn on_client_op(&mut self, op: &mut ClientOp, ctx: &mut SessionCtx) -> Verdict {
        let ClientOp::Connect(connect) = op else {
            return Verdict::Forward;
        };
        match ctx.upstream_nonce.as_deref().map(|n| self.0.sign(n)) {
            Some(Some(sig)) => {
                connect.set_extra("proxy_sig", serde_json::Value::String(sig));
                return Verdict::Changed;
            }
            Some(None) => {
                tracing::warn!(
                    "signing the upstream's nonce failed: CONNECT goes upstream without proxy_sig"
                );
            }
            None => {
                // Once per process: every session of such an upstream would say the same.
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "the upstream sent no nonce: CONNECTs go upstream without proxy_sig (is `proxies` configured on nats-server?)"
                    );
                }
            }
        }
        // Unsigned: a client's own proxy_sig never goes upstream; without one the CONNECT
        // is as the client sent it (an implied CONNECT then stays the edge's own).
        let sent = connect.extra.len();
        connect.remove_extra("proxy_sig");
        if connect.extra.len() == sent {
            Verdict::Forward
        } else {
            Verdict::Changed
        }
    }
}
