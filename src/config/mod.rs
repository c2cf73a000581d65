//! Configuration: built-in defaults < TOML file < `NATS_EDGE_*` environment < command-line
//! flags, merged by figment. Unknown keys are errors; every error names the key and where its
//! value came from (the file, the environment variable or the flag).

mod auth;
mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use nats_edge_filters::limits::LimitsConfig;
use serde::{Deserialize, Serialize};

pub use auth::{AuthModeConfig, AuthSection, TrustedProxyConfig};
pub use units::{
    parse_duration, parse_size, ByteSize, HandshakeFirst, HumanDuration, StringList,
    AUTO_FALLBACK_DELAY,
};

use crate::upstream::UpstreamUrl;

/// The whole configuration of one nats-edge process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where clients connect. At least one.
    pub listeners: Vec<ListenerConfig>,
    pub upstream: UpstreamConfig,
    pub limits: LimitsSection,
    /// Identity and subject permissions.
    pub auth: AuthSection,
    pub log: LogConfig,
    /// Subject rewrite rule sets and who gets which.
    pub rewrite: RewriteSection,
    /// Tags added to every published message.
    pub tagging: TaggingSection,
    /// The directory rule files are read relative to: the config file's, when there is one.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// Rule files a reload keeps from the running configuration until a restart (the new
    /// file changed what needs one): their files may be gone by now.
    #[serde(skip)]
    pub held: HeldFiles,
    /// Worker threads that run sessions, each with a single-threaded runtime; a session stays
    /// on one worker. 0: one per CPU core.
    pub worker_threads: usize,
    /// How long a worker keeps polling its sockets after its last read before it sleeps
    /// (see `crate::busy_poll`). 0: never; it sleeps as soon as it has nothing to do.
    pub busy_poll: HumanDuration,
    pub admin: AdminConfig,
    pub drain: DrainConfig,
    /// A file the running process writes its id to, for `nats-edge reload`. Unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
}

/// The admin HTTP server (`[admin]`): metrics, health probes, connz and varz.
/// Which rule files a reload keeps from the running configuration, until a restart applies
/// the change that holds them (see [`crate::reload`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldFiles {
    /// `auth.rules`, held with a changed `auth.mode`.
    pub rules: bool,
    /// The rewrite sets, held while rewriting is turned on or off.
    pub rewrite: bool,
    /// `tagging.file`, held while tagging is turned on or off.
    pub tagging: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where to serve it, such as `127.0.0.1:8222`. Unset: no admin server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// How often the upstreams are dialled to keep `/readyz` current when no client connects.
    pub upstream_check_interval: HumanDuration,
    /// How many ended connections `/connz?state=closed` keeps, the oldest going first
    /// (nats-server's `max_closed_clients`).
    pub max_closed_clients: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            upstream_check_interval: HumanDuration(Duration::from_secs(5)),
            max_closed_clients: 10_000,
        }
    }
}

/// Graceful drain on SIGTERM and SIGINT (`[drain]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// How long clients have, after the lame-duck INFO, to leave on their own before the
    /// edge closes them.
    pub grace_period: HumanDuration,
    /// The whole drain's bound: the process exits by then.
    pub timeout: HumanDuration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            // Inside Kubernetes' default terminationGracePeriodSeconds (30 s); the grace of
            // nats-server's lame-duck mode, leaving 13 s to spread the closes over.
            grace_period: HumanDuration(Duration::from_secs(10)),
            timeout: HumanDuration(Duration::from_secs(25)),
        }
    }
}

/// One client-facing listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs and metrics; unique among listeners.
    pub name: String,
    /// The socket address to bind, such as `0.0.0.0:4222`.
    pub bind: SocketAddr,
    /// `host:port` that clients are told in INFO (`host`, `port`). Defaults to the bound address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The transport: plain TCP, TLS, WebSocket or WebSocket over TLS.
    #[serde(default)]
    pub kind: ListenerKind,
    /// URLs given to clients as INFO `connect_urls` in place of the upstream cluster's own,
    /// which are never shown. Empty: the field is removed.
    #[serde(default)]
    pub connect_urls: StringList,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming the real client;
    /// a connection without a valid one is closed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// How long the transport handshake may take: the PROXY header, the TLS handshake and
    /// the WebSocket upgrade, together.
    #[serde(default = "default_transport_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Certificates for `tls` and `wss` listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// WebSocket settings for `ws` and `wss` listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<WsSection>,
    /// Client connections open at once on this listener; past it a client gets nats-server's
    /// `-ERR 'maximum connections exceeded'`. 0: unlimited.
    #[serde(default)]
    pub max_connections: usize,
    /// New connections per second on this listener; over it a connection is closed at once.
    /// 0: unlimited.
    #[serde(default)]
    pub max_connection_rate: u32,
    /// The rewrite rule set (a name under `[rewrite.sets]`) for this listener's sessions,
    /// unless their user has one of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Not a key: set by a reload on a listener the new file dropped or gave another kind.
    /// It runs on as it was until the restart, on the certificates it loaded, which are not
    /// read again (they may be gone with the listener).
    #[serde(skip)]
    pub held_until_restart: bool,
}

/// `[rewrite]`: named rule files, and which sessions use which.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteSection {
    /// Set name to rule file (relative to the config file's directory).
    pub sets: BTreeMap<String, PathBuf>,
    /// The set for sessions that no listener or user names one for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// User name to set name; applies once the connection's identity is known.
    pub users: BTreeMap<String, String>,
}

/// `[tagging]`: the tagging rule file; unset, nothing is tagged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaggingSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    #[default]
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// A listener's TLS material (`[listeners.tls]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM: the server certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA or Ed25519).
    pub key_file: PathBuf,
    /// PEM: the CAs that client certificates must chain to. Unset: no client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (the default with `client_ca_file`) or
    /// only verified when presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// TLS before anything else (clients set `tls_first`); otherwise the edge sends INFO in
    /// the clear first and the client starts TLS after reading it, as nats-server does. With
    /// a fallback delay, both: TLS first when the client starts a handshake within the delay,
    /// the INFO in the clear when it stays silent.
    #[serde(default)]
    pub handshake_first: HandshakeFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Required,
    Optional,
}

/// A WebSocket listener's settings (`[listeners.ws]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsSection {
    /// The path WebSocket upgrades must ask for; unset: any path, as nats-server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Origins (`https://app.example.com`) allowed to connect; empty: any origin.
    pub allowed_origins: StringList,
    /// Refuse upgrades whose `Origin` names another host than the request's `Host`.
    pub same_origin: bool,
    /// Cookie names whose values fill the CONNECT's `jwt`, `user`, `pass` and `auth_token`
    /// when the client left them empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_cookie: Option<String>,
    #[serde(alias = "username_cookie", skip_serializing_if = "Option::is_none")]
    pub user_cookie: Option<String>,
    #[serde(alias = "password_cookie", skip_serializing_if = "Option::is_none")]
    pub pass_cookie: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_cookie: Option<String>,
    /// Peers (IP addresses or CIDR networks) whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: StringList,
    /// How often the edge sends a WebSocket ping to the client; 0 turns pings off.
    pub ping_interval: HumanDuration,
    /// The largest WebSocket message (and frame) accepted from a client.
    pub max_message_size: ByteSize,
    /// Accept permessage-deflate (RFC 7692) when the client offers it.
    pub compression: bool,
}

impl Default for WsSection {
    fn default() -> Self {
        WsSection {
            path: None,
            allowed_origins: StringList::default(),
            same_origin: false,
            jwt_cookie: None,
            user_cookie: None,
            pass_cookie: None,
            token_cookie: None,
            trusted_proxies: StringList::default(),
            ping_interval: HumanDuration(Duration::from_secs(30)),
            max_message_size: ByteSize(64 * 1024 * 1024),
            // nats-server's websocket `compression` is off unless configured.
            compression: false,
        }
    }
}

/// The version of the PROXY protocol header the edge sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

/// TLS toward the upstream (`[upstream.tls]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// PEM: the CAs the upstream's certificate must chain to. Unset: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM: a client certificate (with intermediates) for upstreams that verify clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM: the key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name the upstream's certificate must carry. Unset: the host of the URL dialled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Start TLS before reading the upstream's INFO (nats-server `handshake_first`).
    pub handshake_first: bool,
}

/// The nats-server(s) behind the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `nats://[user:pass@]host:port` URLs: each client connection starts at the next one
    /// in turn, unless `dont_randomize`.
    pub urls: StringList,
    /// Every client connection tries the URLs in the listed order (nats.go's
    /// `NoRandomize`, a leafnode remote's `dont_randomize`), for a primary and its
    /// fallbacks. Off: connections are spread over the URLs.
    pub dont_randomize: bool,
    /// How long one dial (TCP connect plus the server's INFO) may take before the next URL.
    pub connect_timeout: HumanDuration,
    /// TLS to every upstream (a `tls://` URL also means TLS, with these settings or the
    /// defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Send a PROXY protocol header with the real client's address first on every upstream
    /// connection (nats-server `proxy_protocol: true`). Unset: no header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolVersion>,
}

/// Per-connection limits, enforced with nats-server's errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// The edge's cap on message size; the effective limit is the lower of this and the
    /// upstream's `max_payload`. Unset: the upstream's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<ByteSize>,
    /// Longest control line (the arguments after the verb), as nats-server's `max_control_line`.
    pub max_control_line: ByteSize,
    /// Subscriptions per connection. 0: unlimited.
    pub max_subscriptions: usize,
    /// How long a client has to send CONNECT before `-ERR 'Authentication Timeout'` (where
    /// auth is required). Unset: nats-server's `auth_timeout` default, 2 s, or on a `tls`
    /// listener the listener's TLS handshake timeout plus 1 s (3 s by default), as
    /// nats-server's is with TLS on. See [`LimitsSection::handshake_timeout_for`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<HumanDuration>,
    /// How long the edge waits on a client that takes none of the bytes queued for it before
    /// it closes the connection as a slow consumer, as nats-server's `write_deadline`.
    pub write_deadline: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive: `info`, `debug`, `nats_edge=debug,info`, ...
    pub level: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig::tcp("default", default_listen())],
            upstream: UpstreamConfig::default(),
            limits: LimitsSection::default(),
            auth: AuthSection::default(),
            log: LogConfig::default(),
            rewrite: RewriteSection::default(),
            tagging: TaggingSection::default(),
            base_dir: None,
            held: HeldFiles::default(),
            worker_threads: 0,
            busy_poll: HumanDuration(Duration::ZERO),
            admin: AdminConfig::default(),
            drain: DrainConfig::default(),
            pid_file: None,
        }
    }
}

/// The longest busy-poll window: past this a worker would rarely sleep at all, and sleeping
/// after a gap of milliseconds costs nothing a client would notice.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4222))
}

fn default_transport_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl ListenerConfig {
    pub fn tcp(name: &str, bind: SocketAddr) -> Self {
        ListenerConfig {
            name: name.to_string(),
            bind,
            advertise: None,
            kind: ListenerKind::Tcp,
            connect_urls: StringList::default(),
            proxy_protocol: false,
            handshake_timeout: default_transport_timeout(),
            tls: None,
            ws: None,
            rewrite: None,
            max_connections: 0,
            max_connection_rate: 0,
            held_until_restart: false,
        }
    }
}

impl ListenerConfig {
    /// Checks the transport keys of one listener; the key is relative to the listener.
    fn validate_transport(&self) -> Result<(), (String, String)> {
        let kind = self.kind.as_str();
        if self.handshake_timeout.0.is_zero() {
            return Err(("handshake_timeout".into(), "must be above zero".into()));
        }
        match (&self.tls, self.kind.is_tls()) {
            (None, true) => {
                return Err((
                    "tls".into(),
                    format!("kind = \"{kind}\" needs tls.cert_file and tls.key_file"),
                ))
            }
            (Some(_), false) => {
                return Err((
                    "tls".into(),
                    format!("only for kind = \"tls\" or \"wss\" (this listener is \"{kind}\")"),
                ))
            }
            (Some(tls), true) => {
                if tls.client_auth.is_some() && tls.client_ca_file.is_none() {
                    return Err((
                        "tls.client_auth".into(),
                        "needs tls.client_ca_file (the CAs client certificates chain to)".into(),
                    ));
                }
                if tls.handshake_first.is_enabled() && self.kind == ListenerKind::Wss {
                    return Err((
                        "tls.handshake_first".into(),
                        "only for kind = \"tls\" (wss always starts with the TLS handshake)".into(),
                    ));
                }
                if let HandshakeFirst::Fallback(delay) = tls.handshake_first {
                    if delay >= self.handshake_timeout.0 {
                        return Err((
                            "tls.handshake_first".into(),
                            format!(
                                "the fallback delay ({delay:?}) must be shorter than the \
                                 listener's handshake_timeout ({:?})",
                                self.handshake_timeout.0
                            ),
                        ));
                    }
                }
            }
            (None, false) => {}
        }
        if let Some(ws) = &self.ws {
            if !self.kind.is_websocket() {
                return Err((
                    "ws".into(),
                    format!("only for kind = \"ws\" or \"wss\" (this listener is \"{kind}\")"),
                ));
            }
            if let Some(path) = ws.path.as_deref().filter(|p| !p.starts_with('/')) {
                return Err(("ws.path".into(), format!("`{path}` must start with /")));
            }
            for origin in &ws.allowed_origins.0 {
                crate::transport::ws::Origin::allowed(origin)
                    .map_err(|r| ("ws.allowed_origins".to_string(), r))?;
            }
            for peer in &ws.trusted_proxies.0 {
                crate::transport::ws::IpNet::parse(peer)
                    .map_err(|r| ("ws.trusted_proxies".to_string(), r))?;
            }
            for (key, name) in [
                ("ws.jwt_cookie", &ws.jwt_cookie),
                ("ws.user_cookie", &ws.user_cookie),
                ("ws.pass_cookie", &ws.pass_cookie),
                ("ws.token_cookie", &ws.token_cookie),
            ] {
                if name.as_deref().is_some_and(str::is_empty) {
                    return Err((key.into(), "must not be empty".into()));
                }
            }
            if ws.max_message_size.0 < 1024 {
                return Err(("ws.max_message_size".into(), "must be at least 1KiB".into()));
            }
            // A compressed message is inflated whole: this is its memory bound.
            if ws.max_message_size.0 > MAX_PROTOCOL_SIZE {
                return Err((
                    "ws.max_message_size".into(),
                    format!("must be at most {MAX_PROTOCOL_SIZE} bytes (as max_payload)"),
                ));
            }
            // A typo for minutes ("1ms" for "1m") would ping every browser a thousand times
            // a second.
            let ping = ws.ping_interval.0;
            if !ping.is_zero() && ping < Duration::from_secs(1) {
                return Err((
                    "ws.ping_interval".into(),
                    "must be at least 1s, or 0 for no pings".into(),
                ));
            }
        }
        Ok(())
    }

    /// The WebSocket settings, defaults filled in (for `ws` and `wss` listeners).
    pub fn ws_settings(&self) -> WsSection {
        self.ws.clone().unwrap_or_default()
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            urls: StringList::default(),
            connect_timeout: HumanDuration(Duration::from_secs(2)),
            dont_randomize: false,
            tls: None,
            proxy_protocol: None,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_payload: None,
            max_control_line: ByteSize(4096),
            max_subscriptions: 0,
            handshake_timeout: None,
            // nats-server's DEFAULT_FLUSH_DEADLINE.
            write_deadline: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl LimitsSection {
    /// The handshake timeout for clients of `listener`: `limits.handshake_timeout` when set;
    /// otherwise nats-server's `auth_timeout` default (2 s, or its TLS timeout plus 1 s with
    /// TLS on its client port), with the listener's own TLS handshake timeout on a `tls`
    /// listener.
    pub fn handshake_timeout_for(&self, listener: &ListenerConfig) -> Duration {
        match self.handshake_timeout {
            Some(timeout) => timeout.0,
            // nats-server's TLS timeout enters its auth timeout only for its client port:
            // its websocket port falls back to the plain default.
            None if listener.kind == ListenerKind::Tls => {
                listener.handshake_timeout.0 + Duration::from_secs(1)
            }
            None => Duration::from_secs(2),
        }
    }

    /// The part the limits filter and the decoder enforce.
    pub fn filter_config(&self) -> LimitsConfig {
        LimitsConfig {
            max_payload: self.max_payload.map(|s| s.0),
            max_control_line: self.max_control_line.0 as usize,
            max_subscriptions: (self.max_subscriptions > 0).then_some(self.max_subscriptions),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// A config that cannot be used, with the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    FileNotFound(PathBuf),
    /// Parse and type errors, one line each naming the key, the reason and the source.
    #[error("{}", describe_figment_error(.0))]
    Invalid(Box<figment::Error>),
    #[error("{key}: {reason}{}", origin.as_ref().map(|s| format!(" (from {s})")).unwrap_or_default())]
    Value {
        key: String,
        reason: String,
        /// The file, environment variable or flag the value came from.
        origin: Option<String>,
    },
}

/// What the command line contributes; the highest-priority layer. Unset fields leave the
/// lower layers alone.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub upstreams: Vec<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub pid_file: Option<PathBuf>,
}

/// Keys whose check reads another key too: the error names where that one came from.
const RELATED_KEYS: &[(&str, &str)] = &[
    ("drain.timeout", "drain.grace_period"),
    ("auth.rules", "auth.mode"),
];

/// The most worker threads the edge starts.
const MAX_WORKER_THREADS: usize = 1024;
/// The largest `max_control_line` and `max_payload`: nats-server's (a 32-bit signed size).
const MAX_PROTOCOL_SIZE: u64 = i32::MAX as u64;
/// The shortest `admin.upstream_check_interval`.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl Config {
    /// Loads defaults, then `file` if given, then the environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let figment = Self::layers(file, overrides)?;
        let mut config = Self::extract(figment)?;
        config.base_dir = file.and_then(Path::parent).map(Path::to_path_buf);
        Ok(config)
    }

    /// `pid_file` alone, from the same layers as [`Config::load`], whatever the rest holds:
    /// `nats-edge reload` needs no more, and may run where the service's environment (its
    /// upstream URLs, say) is not set.
    pub fn load_pid_file(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let figment = Self::layers(file, overrides)?;
        match figment.extract_inner::<PathBuf>("pid_file") {
            Ok(path) => Ok(Some(path)),
            Err(e) if matches!(e.kind, figment::error::Kind::MissingField(_)) => Ok(None),
            // A file that does not parse, say: its error, not "no pid_file".
            Err(e) => Err(ConfigError::Invalid(Box::new(e))),
        }
    }

    /// Defaults, then `file` if given, then the environment, then `overrides`.
    fn layers(file: Option<&Path>, overrides: &Overrides) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::FileNotFound(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(|key| is_config_env_key(key.as_str())),
        );
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default(
                "listeners",
                vec![ListenerConfig::tcp("default", listen)],
            ));
        }
        if !overrides.upstreams.is_empty() {
            figment = figment.merge(Serialized::default("upstream.urls", &overrides.upstreams));
        }
        if let Some(format) = overrides.log_format {
            figment = figment.merge(Serialized::default("log.format", format));
        }
        if let Some(level) = &overrides.log_level {
            figment = figment.merge(Serialized::default("log.level", level));
        }
        if let Some(pid_file) = &overrides.pid_file {
            figment = figment.merge(Serialized::default("pid_file", pid_file));
        }
        Ok(figment)
    }

    /// The ACL rule files, resolved against the config file's directory.
    pub fn rule_files(&self) -> Vec<PathBuf> {
        self.auth.rules.iter().map(|p| self.resolve(p)).collect()
    }

    /// A rule file path as written in the config, resolved against the config file's
    /// directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The rewrite configuration with its files resolved.
    pub fn rewrite_config(&self) -> nats_edge_filters::rewrite::RewriteConfig {
        nats_edge_filters::rewrite::RewriteConfig {
            sets: self
                .rewrite
                .sets
                .iter()
                .map(|(name, path)| (name.clone(), self.resolve(path)))
                .collect(),
            default: self.rewrite.default.clone(),
            listeners: self
                .listeners
                .iter()
                .filter_map(|l| l.rewrite.clone().map(|set| (l.name.clone(), set)))
                .collect(),
            users: self.rewrite.users.clone(),
        }
    }

    /// The tagging configuration, when `[tagging] file` is set.
    pub fn tag_config(
        &self,
    ) -> Result<Option<nats_edge_filters::tag::TagConfig>, nats_edge_filters::tag::TagError> {
        self.tagging
            .file
            .as_ref()
            .map(|f| nats_edge_filters::tag::TagConfig::load(&self.resolve(f)))
            .transpose()
    }

    /// Parses a TOML document on top of the defaults (no environment): for tests and embedding.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)),
        )
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate().map_err(|(key, reason)| {
            let origin_of = |key: &str| {
                let keys: Vec<&str> = key.split('.').collect();
                // Array elements have no metadata of their own: the closest parent's.
                (1..=keys.len())
                    .rev()
                    .find_map(|n| figment.find_metadata(&keys[..n].join(".")))
                    .map(|m| describe_origin(m, &keys))
            };
            // A check of two keys names where each came from: the other may be the one
            // to change (a grace period raised in the environment over the file's timeout).
            let related = RELATED_KEYS
                .iter()
                .find(|(checked, _)| *checked == key)
                .and_then(|(_, other)| Some(format!("{other} from {}", origin_of(other)?)));
            let origin = match (origin_of(&key), related) {
                (Some(own), Some(other)) => Some(format!("{own}; {other}")),
                (own, _) => own,
            };
            ConfigError::Value {
                key,
                reason,
                origin,
            }
        })?;
        Ok(config)
    }

    /// Checks what types alone cannot: returns the offending key path and why.
    /// Refuses an upstream URL that is one of the edge's own listeners: each connection
    /// would dial the edge again, before any INFO, a storm of connections until descriptors
    /// run out. A reload checks it again against the listeners that will run, which keep
    /// their running addresses (and include those the file dropped) until the restart.
    pub fn check_upstream_is_not_a_listener(&self) -> Result<(), (String, String)> {
        for (u, url) in self.upstream.urls.0.iter().enumerate() {
            let parsed = UpstreamUrl::parse(url)
                .map_err(|e| ("upstream.urls".to_string(), e.to_string()))?;
            if let Some(l) = self
                .listeners
                .iter()
                .find(|l| dials_itself(&parsed.host, parsed.port, l.bind))
            {
                return Err((
                    format!("upstream.urls.{u}"),
                    format!(
                        "{}:{} is the edge's own listener `{}` (bind {}): the upstream is the nats-server behind the edge",
                        parsed.host, parsed.port, l.name, l.bind
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if self.busy_poll.0 > MAX_BUSY_POLL {
            return Err((
                "busy_poll".into(),
                "at most 10ms: a worker spins for this long after every read".into(),
            ));
        }
        if self.listeners.is_empty() {
            return Err((
                "listeners".into(),
                "at least one listener is required".into(),
            ));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err((
                "worker_threads".into(),
                format!("at most {MAX_WORKER_THREADS}"),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut binds = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.name.is_empty() {
                return Err((format!("listeners.{i}.name"), "must not be empty".into()));
            }
            let taken = binds.iter().any(|b: &SocketAddr| binds_clash(*b, l.bind));
            if taken {
                return Err((
                    format!("listeners.{i}.bind"),
                    format!("`{}` is bound by another listener", l.bind),
                ));
            }
            binds.insert(l.bind);
            if !names.insert(&l.name) {
                return Err((
                    format!("listeners.{i}.name"),
                    format!("`{}` is used twice", l.name),
                ));
            }
            if let Some(adv) = &l.advertise {
                parse_host_port(adv).map_err(|r| (format!("listeners.{i}.advertise"), r))?;
            }
            for url in &l.connect_urls.0 {
                let host_port = connect_url_host_port(url);
                if host_port.contains("://") {
                    return Err((
                        format!("listeners.{i}.connect_urls"),
                        format!("`{url}`: use host:port or a nats://, tls://, ws:// or wss:// URL"),
                    ));
                }
                // Every client is sent the list: credentials have no place in it.
                if host_port.contains('@') {
                    return Err((
                        format!("listeners.{i}.connect_urls"),
                        "a URL sent to clients cannot carry credentials".into(),
                    ));
                }
                parse_host_port(host_port)
                    .map_err(|r| (format!("listeners.{i}.connect_urls"), r))?;
            }
            l.validate_transport()
                .map_err(|(key, reason)| (format!("listeners.{i}.{key}"), reason))?;
        }
        if self.upstream.urls.0.is_empty() {
            return Err((
                "upstream.urls".into(),
                "at least one upstream URL is required (--upstream nats://host:4222)".into(),
            ));
        }
        self.check_upstream_is_not_a_listener()?;
        if let Some(tls) = &self.upstream.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err((
                    "upstream.tls".into(),
                    "cert_file and key_file go together".into(),
                ));
            }
            if tls
                .server_name
                .as_deref()
                .is_some_and(|n| rustls::pki_types::ServerName::try_from(n.to_string()).is_err())
            {
                return Err((
                    "upstream.tls.server_name".into(),
                    "not a valid DNS name or IP address".into(),
                ));
            }
        }
        // The TLS server name of a URL's dial is its host unless `server_name` overrides it;
        // an address with a zone (`fe80::1%2`) is none, and would fail every dial instead.
        if self
            .upstream
            .tls
            .as_ref()
            .is_none_or(|t| t.server_name.is_none())
        {
            for (u, url) in self.upstream.urls.0.iter().enumerate() {
                let Ok(parsed) = UpstreamUrl::parse(url) else {
                    continue;
                };
                let uses_tls = parsed.tls || self.upstream.tls.is_some();
                if uses_tls && rustls::pki_types::ServerName::try_from(parsed.host.clone()).is_err()
                {
                    return Err((
                        format!("upstream.urls.{u}"),
                        format!(
                            "`{}` cannot name the server in a TLS handshake: set upstream.tls.server_name",
                            parsed.host
                        ),
                    ));
                }
            }
        }
        if self.upstream.connect_timeout.0.is_zero() {
            return Err((
                "upstream.connect_timeout".into(),
                "must be above zero".into(),
            ));
        }
        if self.limits.max_control_line.0 < 64 {
            return Err((
                "limits.max_control_line".into(),
                "must be at least 64 bytes".into(),
            ));
        }
        // nats-server holds both in 32-bit signed integers.
        if self.limits.max_control_line.0 > MAX_PROTOCOL_SIZE {
            return Err((
                "limits.max_control_line".into(),
                format!("at most {MAX_PROTOCOL_SIZE} bytes, as nats-server's"),
            ));
        }
        if self.limits.max_payload.is_some_and(|p| p.0 == 0) {
            return Err(("limits.max_payload".into(), "must be above zero".into()));
        }
        if self
            .limits
            .max_payload
            .is_some_and(|p| p.0 > MAX_PROTOCOL_SIZE)
        {
            return Err((
                "limits.max_payload".into(),
                format!("at most {MAX_PROTOCOL_SIZE} bytes, as nats-server's"),
            ));
        }
        if self.limits.handshake_timeout.is_some_and(|t| t.0.is_zero()) {
            return Err((
                "limits.handshake_timeout".into(),
                "must be above zero".into(),
            ));
        }
        if self.limits.write_deadline.0.is_zero() {
            return Err(("limits.write_deadline".into(), "must be above zero".into()));
        }
        self.auth.validate()?;
        if let Some(admin) = self.admin.listen {
            if let Some(l) = self.listeners.iter().find(|l| binds_clash(l.bind, admin)) {
                return Err((
                    "admin.listen".into(),
                    format!("`{admin}` is bound by listener `{}`", l.name),
                ));
            }
        }
        if self.admin.upstream_check_interval.0 < MIN_CHECK_INTERVAL {
            return Err((
                "admin.upstream_check_interval".into(),
                format!("at least {MIN_CHECK_INTERVAL:?}: each check dials the upstream"),
            ));
        }
        // As nats-server holds lame_duck_grace_period strictly below lame_duck_duration: a
        // drain whose grace period takes all of it leaves no time to close the rest.
        if self.drain.timeout.0 <= self.drain.grace_period.0 {
            return Err((
                "drain.timeout".into(),
                format!(
                    "must be longer than drain.grace_period ({:?}), to leave time to close the connections still open after it",
                    self.drain.grace_period.0
                ),
            ));
        }
        if self.log.level.trim().is_empty() {
            return Err(("log.level".into(), "must not be empty".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ("log.level".to_string(), e.to_string()))?;
        check_log_directives(&self.log.level).map_err(|e| ("log.level".to_string(), e))?;
        Ok(())
    }

    /// Parsed upstream URLs, in order. Valid after loading.
    pub fn upstream_urls(&self) -> Vec<UpstreamUrl> {
        self.upstream
            .urls
            .0
            .iter()
            .filter_map(|u| UpstreamUrl::parse(u).ok())
            .collect()
    }
}

/// Whether dialling `host:port` surely reaches a listener bound at `bind`: its own address,
/// or a loopback one (`localhost` included, as 127.0.0.1 or ::1) when the listener takes
/// every address. Any other address under an unspecified bind may be another machine's.
fn dials_itself(host: &str, port: u16, bind: SocketAddr) -> bool {
    if port == 0 || port != bind.port() {
        return false;
    }
    let bound = bind.ip().to_canonical();
    if host.eq_ignore_ascii_case("localhost") {
        let localhost = [
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        return bound.is_unspecified() || localhost.contains(&bound);
    }
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    else {
        return false;
    };
    let ip = ip.to_canonical();
    ip == bound || (ip.is_loopback() && bound.is_unspecified() && (bound.is_ipv6() || ip.is_ipv4()))
}

/// Whether two sockets bound at `a` and `b` would take the same port. Port 0 asks the system
/// for a free port, a different one each time. An unspecified address takes its port on
/// every address of its family, and `[::]` (dual-stack) on IPv4 addresses too.
fn binds_clash(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |a: std::net::IpAddr, b: std::net::IpAddr| {
        a == b || (a.is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
    };
    // `[::ffff:127.0.0.1]` is 127.0.0.1 to the kernel.
    let (ip_a, ip_b) = (a.ip().to_canonical(), b.ip().to_canonical());
    a.port() != 0 && a.port() == b.port() && (covers(ip_a, ip_b) || covers(ip_b, ip_a))
}

/// What tracing's filter takes but almost never means: a word that looks like a level but
/// is none (tracing reads a bare `warning` or `verbose` as a module name, every level of
/// it, and so logs almost nothing), and a target with a hyphen (module paths are written
/// with `_`: `nats_edge`, never `nats-edge`, which matches nothing).
fn check_log_directives(filter: &str) -> Result<(), String> {
    const NOT_LEVELS: [&str; 12] = [
        "warning",
        "warnings",
        "verbose",
        "err",
        "fatal",
        "critical",
        "notice",
        "all",
        "none",
        "information",
        "informational",
        "dbg",
    ];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let target = match directive.rsplit_once('=') {
            Some((target, _)) => target,
            None if NOT_LEVELS.contains(&directive.to_ascii_lowercase().as_str()) => {
                return Err(format!(
                    "`{directive}` is not a level (trace, debug, info, warn, error or off)"
                ));
            }
            None => directive,
        };
        let target = target.split('[').next().unwrap_or(target);
        if target.contains('-') {
            return Err(format!(
                "`{target}`: a target is a module path, written with `_` (`{}`)",
                target.replace('-', "_")
            ));
        }
    }
    Ok(())
}

const ENV_PREFIX: &str = "NATS_EDGE_";

/// The top-level keys an environment variable may set. Other `NATS_EDGE_*` variables are not
/// configuration: Kubernetes, for one, injects `NATS_EDGE_PORT` and `NATS_EDGE_SERVICE_HOST`
/// into pods beside a Service named nats-edge, and those must not stop the edge starting.
const ENV_SECTIONS: [&str; 12] = [
    "listeners",
    "upstream",
    "limits",
    "auth",
    "log",
    "rewrite",
    "tagging",
    "worker_threads",
    "busy_poll",
    "admin",
    "drain",
    "pid_file",
];

fn is_config_env_key(key: &str) -> bool {
    let top = key.split('.').next().unwrap_or_default();
    ENV_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(top))
}

/// Of the ignored variables, those that look like a key with one underscore where two
/// belong (`NATS_EDGE_DRAIN_TIMEOUT` for `NATS_EDGE_DRAIN__TIMEOUT`) or with more than two
/// (`NATS_EDGE_DRAIN____TIMEOUT`, an empty key segment, which the environment provider drops),
/// each with that key: a typo that would otherwise leave a setting at its default without a
/// word. Kubernetes' service variables (`..._SERVICE_HOST`, `..._SERVICE_PORT...`,
/// `..._PORT...`) are not taken for typos: a Service named `nats-edge-admin` injects
/// `NATS_EDGE_ADMIN_SERVICE_HOST`. `seed_env` names a variable that is read (the trusted
/// proxy's seed), not ignored.
pub fn mistyped_env_vars(seed_env: Option<&str>) -> Vec<(String, String)> {
    ignored_env_vars(seed_env)
        .into_iter()
        .filter_map(|var| {
            let rest = var.strip_prefix(ENV_PREFIX)?;
            if has_empty_segment(&env_key(rest)) {
                return Some((
                    var.clone(),
                    format!("{ENV_PREFIX}{}", two_underscores(rest)),
                ));
            }
            let service_link = rest.contains("_SERVICE_HOST")
                || rest.contains("_SERVICE_PORT")
                || rest.ends_with("_PORT")
                || rest.contains("_PORT_");
            if service_link {
                return None;
            }
            // By bytes: a name is not always ASCII; a section name is, so a match ends on a
            // character boundary.
            let section = ENV_SECTIONS.iter().find(|s| {
                rest.len() > s.len() + 1
                    && rest.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes())
                    && rest.as_bytes()[s.len()] == b'_'
            })?;
            let (head, tail) = rest.split_at(section.len());
            let meant = format!("{ENV_PREFIX}{head}__{}", &tail[1..]);
            Some((var, meant))
        })
        .collect()
}

/// `NATS_EDGE_*` variables that are not configuration and were ignored (for a log line):
/// not under a configuration section, or with an empty key segment. `seed_env` names a
/// variable that is read though it is no key.
pub fn ignored_env_vars(seed_env: Option<&str>) -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter_map(|k| {
            let rest = k.strip_prefix(ENV_PREFIX)?;
            let key = env_key(rest);
            let ignored = rest != "CONFIG"
                && Some(k.as_str()) != seed_env
                && (!is_config_env_key(&key) || has_empty_segment(&key));
            ignored.then_some(k)
        })
        .collect()
}

/// Whether a variable's key ([`env_key`]) is in a configuration section and has an empty
/// segment (four underscores in a row, or two at either end; three leave a segment that starts with one, which is an
/// unknown key, refused at load): the environment provider skips it whole.
fn has_empty_segment(key: &str) -> bool {
    is_config_env_key(key) && key.split('.').any(str::is_empty)
}

/// The configuration key a `NATS_EDGE_` variable's name (without the prefix) stands for, as
/// the environment provider maps it: lower case, `__` for a dot.
fn env_key(rest: &str) -> String {
    rest.to_ascii_lowercase().replace("__", ".")
}

/// `rest` with every run of underscores longer than one written as two, and none at either
/// end: the key it most likely meant.
fn two_underscores(rest: &str) -> String {
    let mut meant = String::with_capacity(rest.len());
    let mut run = 0;
    for c in rest.trim_matches('_').chars() {
        if c == '_' {
            run += 1;
            continue;
        }
        meant.push_str(match run {
            0 => "",
            1 => "_",
            _ => "__",
        });
        run = 0;
        meant.push(c);
    }
    meant
}

/// Where a value came from, in the user's terms: the file, the environment variable, or a
/// flag or built-in default.
fn describe_origin(metadata: &figment::Metadata, keys: &[&str]) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("file {}", path.display()),
        Some(figment::Source::Code(_)) if metadata.name.contains("Config") => {
            "the built-in default".into()
        }
        Some(figment::Source::Code(_)) => "a command-line flag".into(),
        _ => format!("environment variable {}", env_var_for(keys)),
    }
}

/// The variable a value under `keys` came from: the longest prefix of the key path that is
/// set (`NATS_EDGE_LISTENERS` for an error at `listeners.0.bind` inside a whole list given in
/// one variable), or the full path's variable when none is.
fn env_var_for(keys: &[&str]) -> String {
    let name = |n: usize| format!("{ENV_PREFIX}{}", keys[..n].join("__").to_ascii_uppercase());
    (1..=keys.len())
        .rev()
        .map(name)
        .find(|var| std::env::var_os(var).is_some())
        .unwrap_or_else(|| name(keys.len()))
}

/// One line per error: `key: reason (from origin)`.
fn describe_figment_error(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let keys: Vec<&str> = e.path.iter().map(String::as_str).collect();
            // As written: a name the user chose (a user's, a set's) keeps its case. The
            // environment's keys come lower-cased already.
            let key = e.path.join(".");
            let origin = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", describe_origin(m, &keys)))
                .unwrap_or_default();
            let kind = describe_error_kind(&e.kind, &key);
            if key.is_empty() {
                format!("{kind}{origin}")
            } else {
                format!("{key}: {kind}{origin}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sections whose values may be secrets: upstream credentials and the trusted proxy's seed
/// (`auth`), URLs with credentials (`upstream`). An error about one names the value's type,
/// never the value.
const SECRET_SECTIONS: [&str; 2] = ["auth", "upstream"];

/// The reason of one figment error, without secrets: a TOML syntax error without the
/// source line it quotes (the line may hold a password), and a wrong value under
/// [`SECRET_SECTIONS`] by its type alone.
fn describe_error_kind(kind: &figment::error::Kind, key: &str) -> String {
    use figment::error::{Actual, Kind};
    let key = key.to_ascii_lowercase();
    let secret = SECRET_SECTIONS
        .iter()
        .any(|s| key == *s || key.strip_prefix(s).is_some_and(|r| r.starts_with('.')));
    let type_of = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean".to_string(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".to_string(),
        Actual::Float(_) => "a float".to_string(),
        Actual::Char(_) | Actual::Str(_) => "a string".to_string(),
        Actual::Bytes(_) => "bytes".to_string(),
        Actual::Other(_) => "a value".to_string(),
        other => other.to_string(),
    };
    match kind {
        Kind::Message(message) => without_source_lines(message),
        Kind::InvalidType(actual, expected) if secret => {
            format!(
                "invalid type: found {}, expected {expected}",
                type_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) if secret => {
            format!(
                "invalid value: found {}, expected {expected}",
                type_of(actual)
            )
        }
        other => other.to_string(),
    }
}

/// A TOML parser's message without its snippet (`4 | password = "..."` and the caret line
/// under it), its other lines joined: `TOML parse error at line 4, column 51: invalid
/// inline table; expected `}``.
fn without_source_lines(message: &str) -> String {
    let is_snippet = |line: &str| {
        let rest = line
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit());
        rest.trim_start().starts_with('|')
    };
    let mut lines = message
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_snippet(l))
        .map(str::trim);
    let Some(first) = lines.next() else {
        return message.to_string();
    };
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        first.to_string()
    } else {
        format!("{first}: {}", rest.join("; "))
    }
}

/// A `connect_urls` entry as INFO carries it: `host:port`, its scheme (`nats://`, `tls://`,
/// `ws://`, `wss://`) dropped, as nats-server sends its URLs. Clients add the scheme they
/// dialled with; nats.go would make `nats://nats://host:port` of a URL sent whole.
pub fn connect_url_host_port(url: &str) -> &str {
    ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .find_map(|scheme| {
            url.get(..scheme.len())
                .filter(|s| s.eq_ignore_ascii_case(scheme))
                .map(|_| &url[scheme.len()..])
        })
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Splits `host:port` (IPv6 in brackets).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{s}`: `{port}` is not a port number"))?;
    // An IPv6 address comes in brackets, both or neither.
    let host = match (host.strip_prefix('['), host.ends_with(']')) {
        (Some(inner), true) => &inner[..inner.len() - 1],
        (None, false) => host,
        _ => return Err(format!("`{s}`: unbalanced brackets around the host")),
    };
    if host.is_empty() {
        return Err(format!("`{s}`: the host is empty"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_layers_over_defaults() {
        let c = Config::from_toml_str(
            r#"
            [upstream]
            urls = ["nats://127.0.0.1:4223"]
            [limits]
            max_payload = "64KiB"
            "#,
        )
        .unwrap();
        assert_eq!(c.limits.max_payload, Some(ByteSize(65536)));
        assert_eq!(c.listeners[0].bind, default_listen());
    }

    /// An upstream URL that is the edge's own listener is refused: every connection would
    /// dial the edge again. Another machine's address under an unspecified bind is not.
    #[test]
    fn an_upstream_that_is_the_edge_itself_is_refused() {
        let load = |bind: &str, url: &str| {
            Config::from_toml_str(&format!(
                "[[listeners]]\nname = \"a\"\nbind = \"{bind}\"\n[upstream]\nurls = [\"nats://x:1\", \"{url}\"]\n"
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        for (bind, url) in [
            ("0.0.0.0:4222", "nats://127.0.0.1:4222"),
            ("0.0.0.0:4222", "nats://localhost:4222"),
            ("[::]:4222", "nats://[::1]:4222"),
            ("[::]:4222", "nats://127.0.0.1:4222"),
            ("10.0.0.5:4222", "nats://10.0.0.5:4222"),
        ] {
            let err = load(bind, url).unwrap_err();
            assert!(
                err.contains("upstream.urls.1") && err.contains("own listener"),
                "{bind} {url}: {err}"
            );
        }
        for (bind, url) in [
            ("0.0.0.0:4222", "nats://10.0.0.5:4222"),
            ("0.0.0.0:4222", "nats://127.0.0.1:4223"),
            ("127.0.0.1:4222", "nats://127.0.0.2:4222"),
            ("127.0.0.2:4222", "nats://localhost:4222"),
            ("0.0.0.0:4222", "nats://nats.internal:4222"),
        ] {
            assert_eq!(load(bind, url), Ok(()), "{bind} {url}");
        }
    }

    /// A password written as a number (unquoted, or digits in an environment variable) is
    /// refused without the error showing it.
    #[test]
    fn a_password_that_is_a_number_is_refused_unshown() {
        for value in ["123456789", "true", "1.5"] {
            let err = Config::from_toml_str(&format!(
                "[upstream]\nurls = [\"nats://a:1\"]\n[auth]\nupstream = {{ user = \"e\", password = {value} }}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("auth.upstream.password"), "{err}");
            assert!(err.contains("must be text"), "{err}");
            assert!(!err.contains(value), "{err}");
        }
    }

    /// `connect_urls` go to clients as `host:port`; one carrying credentials is refused
    /// without showing them.
    #[test]
    fn connect_urls_are_host_port_without_credentials() {
        assert_eq!(
            connect_url_host_port("nats://a.example:4222"),
            "a.example:4222"
        );
        assert_eq!(connect_url_host_port("WSS://[::1]:443/"), "[::1]:443");
        assert_eq!(connect_url_host_port("b:4222"), "b:4222");
        let err = Config::from_toml_str(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n\
             connect_urls = [\"nats://u:SECRET@a.example:4222\"]\n\
             [upstream]\nurls = [\"nats://a:1\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listeners.0.connect_urls"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    /// A TOML syntax error names the line and column but does not quote the line, which may
    /// hold a password.
    #[test]
    fn a_syntax_error_does_not_quote_its_line() {
        let err = Config::from_toml_str(
            "[upstream]\nurls = [\"nats://a:1\"]\n[auth]\nupstream = { user = \"e\", password = \"TOPSECRET\", }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("expected `}`"), "{err}");
        assert!(!err.contains("TOPSECRET"), "{err}");
    }

    /// A string where a table of secrets belongs (a seed in `auth.trusted_proxy`, a password
    /// in `auth.upstream`), or a URL with credentials but no host, is refused unshown.
    #[test]
    fn a_misplaced_secret_is_refused_unshown() {
        let upstream = "[upstream]\nurls = [\"nats://a:1\"]\n";
        for (toml, key) in [
            (
                format!("{upstream}[auth]\ntrusted_proxy = \"SUAMSECRET\"\n"),
                "auth.trusted_proxy",
            ),
            (
                format!("{upstream}[auth]\nupstream = \"SUAMSECRET\"\n"),
                "auth.upstream",
            ),
            (
                "[upstream]\nurls = [\"nats://edge:SUAMSECRET\"]\n".to_string(),
                "upstream.urls",
            ),
            (
                "[upstream]\nurls = [\"nats://edge:SUAM:SECRET\"]\n".to_string(),
                "upstream.urls",
            ),
        ] {
            let err = Config::from_toml_str(&toml).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(!err.contains("SECRET"), "{err}");
        }
        // The seed itself where the file or the variable that holds it is named.
        let seed = "SUAMK2FG4MI6UE3ACF3FK3OIQBCEIEZV7NSWFFEW63UXMRLFM2XLAXK4GY";
        for key in ["seed_file", "seed_env"] {
            let toml = format!("{upstream}[auth.trusted_proxy]\n{key} = \"{seed}\"\n");
            let err = Config::from_toml_str(&toml).unwrap_err().to_string();
            assert!(err.contains(&format!("auth.trusted_proxy.{key}")), "{err}");
            assert!(err.contains("nkey seed"), "{err}");
            assert!(!err.contains(&seed[..12]), "{err}");
        }
        // A variable's name is not a seed.
        let toml = format!("{upstream}[auth.trusted_proxy]\nseed_env = \"EDGE_SEED\"\n");
        assert!(Config::from_toml_str(&toml).is_ok());
    }

    /// Unset, the handshake timeout is nats-server's `auth_timeout` default: 2 s, and on a
    /// TLS listener its TLS handshake timeout plus 1 s.
    #[test]
    fn the_handshake_timeout_follows_nats_servers_default() {
        let config = Config::from_toml_str(
            "[[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:4222\"\n\
             [[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:4443\"\nkind = \"tls\"\n\
             handshake_timeout = \"5s\"\ntls = { cert_file = \"c.pem\", key_file = \"k.pem\" }\n\
             [upstream]\nurls = [\"nats://a:1\"]\n",
        )
        .unwrap();
        let timeouts: Vec<_> = config
            .listeners
            .iter()
            .map(|l| config.limits.handshake_timeout_for(l))
            .collect();
        assert_eq!(timeouts, [Duration::from_secs(2), Duration::from_secs(6)]);
        let mut set = config.clone();
        set.limits.handshake_timeout = Some(HumanDuration(Duration::from_millis(500)));
        assert_eq!(
            set.limits.handshake_timeout_for(&set.listeners[1]),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn the_admin_server_may_not_take_a_listeners_port() {
        let config = |admin: &str| {
            Config::from_toml_str(&format!(
                "[[listeners]]\nname = \"public\"\nbind = \"0.0.0.0:4222\"\n\
                 [upstream]\nurls = [\"nats://a:1\"]\n[admin]\nlisten = {admin:?}\n"
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let err = config("127.0.0.1:4222").unwrap_err();
        assert!(
            err.starts_with("admin.listen: `127.0.0.1:4222` is bound by listener `public`"),
            "{err}"
        );
        assert!(config("[::ffff:127.0.0.1]:4222").is_err());
        assert_eq!(config("127.0.0.1:8222"), Ok(()));
    }

    /// `pid_file` alone: none when unset, the file's error when the file does not parse.
    #[test]
    fn the_pid_file_is_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edge.toml");
        let read = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::load_pid_file(Some(&file), &Overrides::default())
        };
        assert_eq!(
            read("pid_file = \"/run/e.pid\"\n").unwrap(),
            Some(PathBuf::from("/run/e.pid"))
        );
        assert_eq!(read("[limits]\nmax_payload = 1\n").unwrap(), None);
        assert!(read("pid_file = \"/run/e.pid\"\n[upstream\n").is_err());
    }

    #[test]
    fn log_levels_that_would_log_nothing_are_refused() {
        let level = |l: &str| {
            Config::from_toml_str(&format!(
                "[upstream]\nurls = [\"nats://a:1\"]\n[log]\nlevel = {l:?}\n"
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        for ok in [
            "info",
            "WARN",
            "nats_edge=debug,info",
            "off",
            "nats_edge::session=trace",
            "warn,nats_edge",
            "nats_edge[conn]=debug",
            "[conn{id=1}]=trace",
        ] {
            assert_eq!(level(ok), Ok(()), "{ok}");
        }
        for bad in [
            "warning",
            "verbose",
            "nats-edge=debug",
            "info,nats-edge=trace",
        ] {
            let err = level(bad).unwrap_err();
            assert!(err.starts_with("log.level:"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err =
            Config::from_toml_str("[limits]\nmax_payloadz = 1\n[upstream]\nurls=[\"nats://a:1\"]")
                .unwrap_err()
                .to_string();
        assert!(err.contains("max_payloadz"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::from_toml_str("[upstream]\nurls = [\"http://x:1\"]")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("upstream.urls:"), "{err}");
        let err = Config::from_toml_str(
            "[upstream]\nurls = [\"nats://x:1\"]\n[limits]\nhandshake_timeout = \"soon\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("handshake_timeout"), "{err}");
    }

    /// A zoned IPv6 address cannot be a TLS server name: refused at load, where it names
    /// the URL, unless `server_name` gives the name to check.
    #[test]
    fn a_tls_url_needs_a_host_that_can_name_the_server() {
        let load = |urls: &str, tls: &str| {
            Config::from_toml_str(&format!("[upstream]\nurls = [{urls}]\n{tls}"))
                .map_err(|e| e.to_string())
        };
        let err = load(r#""nats://a:1", "tls://[fe80::1%2]:4222""#, "").unwrap_err();
        assert!(err.starts_with("upstream.urls.1:"), "{err}");
        assert!(err.contains("set upstream.tls.server_name"), "{err}");
        let err = load(r#""nats://[fe80::1%2]:4222""#, "[upstream.tls]\n").unwrap_err();
        assert!(err.starts_with("upstream.urls.0:"), "{err}");
        load(
            r#""tls://[fe80::1%2]:4222""#,
            "[upstream.tls]\nserver_name = \"nats.internal\"\n",
        )
        .unwrap();
        load(
            r#""nats://[fe80::1%2]:4222", "tls://[::1]:4222", "tls://nats_1:4222""#,
            "",
        )
        .unwrap();
    }

    #[test]
    fn drain_timeout_must_outlast_the_grace_period() {
        let config = |grace: &str, timeout: &str| {
            Config::from_toml_str(&format!(
                "[upstream]\nurls = [\"nats://x:1\"]\n[drain]\ngrace_period = \"{grace}\"\ntimeout = \"{timeout}\""
            ))
        };
        config("10s", "11s").expect("a second to close the rest");
        for (grace, timeout) in [("10s", "10s"), ("10s", "5s")] {
            let err = config(grace, timeout).unwrap_err().to_string();
            assert!(
                err.starts_with("drain.timeout: must be longer than drain.grace_period (10s)"),
                "{err}"
            );
        }
    }

    /// Rule files as one comma-separated string, as an environment variable carries them.
    #[test]
    fn rule_files_from_one_string() {
        let c = Config::from_toml_str(
            "[auth]\nrules = \"a.toml, b.toml\"\n[upstream]\nurls = [\"nats://x:1\"]",
        )
        .unwrap();
        assert_eq!(
            c.auth.rules,
            [PathBuf::from("a.toml"), PathBuf::from("b.toml")]
        );
    }

    #[test]
    fn busy_poll_is_a_short_window() {
        let c = Config::from_toml_str("busy_poll = \"200us\"\n[upstream]\nurls = [\"nats://x:1\"]")
            .expect("a 200us window");
        assert_eq!(c.busy_poll, HumanDuration(Duration::from_micros(200)));
        assert_eq!(
            Config::default().busy_poll.0,
            Duration::ZERO,
            "off by default"
        );
        let err = Config::from_toml_str("busy_poll = \"1s\"\n[upstream]\nurls = [\"nats://x:1\"]")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("busy_poll: at most 10ms"), "{err}");
    }

    /// Values past what the edge (or nats-server) can hold are refused at load, naming the
    /// key, rather than truncated or saturated.
    #[test]
    fn sizes_counts_and_intervals_have_bounds() {
        let listeners = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n";
        for (toml, key) in [
            ("worker_threads = 100000\n", "worker_threads: at most 1024"),
            (
                "[limits]\nmax_control_line = \"3GiB\"\n",
                "limits.max_control_line: at most 2147483647 bytes",
            ),
            (
                "[limits]\nmax_payload = \"4GiB\"\n",
                "limits.max_payload: at most 2147483647 bytes",
            ),
            (
                "[limits]\nmax_payload = \"99999999999GiB\"\n",
                "limits.max_payload",
            ),
            (
                "[admin]\nupstream_check_interval = \"1us\"\n",
                "admin.upstream_check_interval: at least 100ms",
            ),
            (
                "[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:4222\"\n",
                "listeners.1.bind: `127.0.0.1:4222` is bound by another listener",
            ),
            (
                "[[listeners]]\nname = \"b\"\nbind = \"0.0.0.0:4222\"\n",
                "listeners.1.bind: `0.0.0.0:4222` is bound by another listener",
            ),
        ] {
            let (top, tables) = if toml.starts_with('[') {
                ("", toml)
            } else {
                (toml, "")
            };
            let err = Config::from_toml_str(&format!(
                "{top}{listeners}{tables}[upstream]\nurls = [\"nats://x:1\"]"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with(key), "{toml}: {err}");
        }
        for (ws, key) in [
            (
                "ping_interval = \"1ms\"",
                "listeners.0.ws.ping_interval: must be at least 1s",
            ),
            (
                "max_message_size = \"3GiB\"",
                "listeners.0.ws.max_message_size: must be at most 2147483647 bytes",
            ),
        ] {
            let err = Config::from_toml_str(&format!(
                "[[listeners]]\nname = \"w\"\nkind = \"ws\"\nbind = \"127.0.0.1:8080\"\n\
                 ws = {{ {ws} }}\n[upstream]\nurls = [\"nats://x:1\"]"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with(key), "{ws}: {err}");
        }
        // A name the user chose keeps its case in the key an error names.
        let err =
            Config::from_toml_str("[rewrite.sets]\nMySet = 5\n[upstream]\nurls = [\"nats://x:1\"]")
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("rewrite.sets.MySet: "), "{err}");
        // Pings off, and pings every second, are fine.
        for ping in ["0", "1s"] {
            Config::from_toml_str(&format!(
                "[[listeners]]\nname = \"w\"\nkind = \"ws\"\nbind = \"127.0.0.1:8080\"\n\
                 ws = {{ ping_interval = \"{ping}\" }}\n[upstream]\nurls = [\"nats://x:1\"]"
            ))
            .unwrap();
        }
    }
}
