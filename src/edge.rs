//! The running edge: listeners bound from the config, an accept loop per listener, and a
//! task per client connection that runs its transport handshake, then its session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nats_edge_filters::acl::rules::RulesError;
use nats_edge_filters::acl::{AclFactory, AclSettings, RuleSource};
use nats_edge_filters::rewrite::{RewriteFactory, RewriteRules, RuleError};
use nats_edge_filters::tag::{TagConfig, TagError, TagFactory};
use nats_edge_filters::{Events, FilterFactory};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{parse_host_port, Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::session::proxy_sig::{ProxyKeyError, ProxySigner};
use crate::session::{self, info::InfoRewrite, SessionEnv};
use crate::transport::tls::{ClientTls, ServerTls, TlsError, TlsReloader};
use crate::transport::{self, ws::WsSettings, HandshakeError, ListenerTransport, StageCell};
use crate::upstream::Upstream;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: TLS: {source}")]
    Tls { what: String, source: TlsError },
    #[error("auth.rules: {0}")]
    Rules(#[from] RulesError),
    #[error(transparent)]
    ProxyKey(#[from] ProxyKeyError),
    #[error("{0}")]
    Rewrite(#[from] RuleError),
    #[error("tagging.file: {0}")]
    Tagging(#[from] TagError),
}

/// A started edge. Dropping it aborts the listeners and their sessions at once; call
/// [`Edge::shutdown`] to close them in order and wait for them.
pub struct Edge {
    addrs: HashMap<String, SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    tls: TlsReloader,
    rules: Arc<RuleSource>,
    rules_epoch: Arc<AtomicU64>,
    rewrite: Option<Arc<RewriteRules>>,
}

/// Reloads the ACL rule files for new and live connections.
#[derive(Clone)]
pub struct RulesReloader {
    rules: Arc<RuleSource>,
    epoch: Arc<AtomicU64>,
}

impl RulesReloader {
    /// Whether any rule file is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.files().is_empty()
    }

    /// Reads the rule files again. On success live sessions take the new rules at their
    /// next wake-up; on error the old rules stay in force.
    pub fn reload(&self) -> Result<(), RulesError> {
        self.rules.reload()?;
        self.epoch.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Everything the edge builds from its config before binding: the upstream (with its TLS)
/// and each listener's transport (with its certificates). Loading it checks every TLS file.
pub struct Prepared {
    upstream: Arc<Upstream>,
    listeners: Vec<Arc<ListenerTransport>>,
    tls: TlsReloader,
    rules: Arc<RuleSource>,
    proxy_signer: Option<Arc<ProxySigner>>,
    /// Subject rewrite rule sets, when any are configured.
    pub rewrite: Option<Arc<RewriteRules>>,
    /// Tagging, when configured.
    pub tagging: Option<Arc<TagConfig>>,
}

impl Prepared {
    /// The loaded ACL rules (for `nats-edge check` and `acl explain`).
    pub fn rules(&self) -> &Arc<RuleSource> {
        &self.rules
    }

    /// The trusted-proxy key, when configured.
    pub fn proxy_signer(&self) -> Option<&Arc<ProxySigner>> {
        self.proxy_signer.as_ref()
    }
}

/// Loads the TLS material and settings the config names, without binding or dialling
/// anything (`nats-edge check` runs this too).
pub fn prepare(config: &Config) -> Result<Prepared, StartError> {
    let mut tls = TlsReloader::default();
    let tls_error = |what: String| move |source| StartError::Tls { what, source };
    let upstream_tls = match &config.upstream.tls {
        Some(settings) => Some(Arc::new(
            ClientTls::load(settings).map_err(tls_error("upstream".into()))?,
        )),
        None => None,
    };
    let urls = config.upstream_urls();
    let default_tls = if upstream_tls.is_none() && urls.iter().any(|u| u.tls) {
        Some(Arc::new(
            ClientTls::load(&Default::default()).map_err(tls_error("upstream".into()))?,
        ))
    } else {
        None
    };
    tls.upstream = upstream_tls.clone().or(default_tls.clone());
    let upstream = Arc::new(Upstream {
        urls,
        connect_timeout: config.upstream.connect_timeout.0,
        tls: upstream_tls,
        default_tls,
        proxy_protocol: config.upstream.proxy_protocol,
    });
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let server_tls = match &l.tls {
            Some(settings) if l.kind.is_tls() => {
                let loaded = ServerTls::load(settings)
                    .map_err(tls_error(format!("listener `{}`", l.name)))?;
                let loaded = Arc::new(loaded);
                tls.listeners.push((l.name.clone(), loaded.clone()));
                Some(loaded)
            }
            _ => None,
        };
        let ws = l
            .kind
            .is_websocket()
            .then(|| Arc::new(WsSettings::new(&l.ws_settings(), l.kind.is_tls())));
        listeners.push(Arc::new(ListenerTransport {
            name: l.name.clone(),
            kind: l.kind,
            proxy_protocol: l.proxy_protocol,
            handshake_timeout: l.handshake_timeout.0,
            tls: server_tls,
            ws,
        }));
    }
    let rule_files = config.rule_files();
    let rules = Arc::new(if rule_files.is_empty() {
        RuleSource::empty()
    } else {
        RuleSource::load(rule_files)?
    });
    let proxy_signer = match &config.auth.trusted_proxy {
        Some(proxy) => Some(Arc::new(ProxySigner::load(proxy)?)),
        None => None,
    };
    // Rule files are loaded (and validated) here, so `nats-edge check` refuses a rule set
    // that start-up would refuse.
    let rewrite_config = config.rewrite_config();
    let rewrite = if rewrite_config == Default::default() {
        None
    } else {
        Some(Arc::new(RewriteRules::load(&rewrite_config)?))
    };
    let tagging = config.tag_config()?.map(Arc::new);
    Ok(Prepared {
        upstream,
        listeners,
        tls,
        rules,
        proxy_signer,
        rewrite,
        tagging,
    })
}

impl Edge {
    /// Binds every listener and starts accepting.
    pub async fn start(config: Config) -> Result<Edge, StartError> {
        Self::start_with_filters(config, Vec::new()).await
    }

    /// Like [`Edge::start`], with extra filters after the built-in ones.
    pub async fn start_with_filters(
        config: Config,
        filters: Vec<Arc<dyn FilterFactory>>,
    ) -> Result<Edge, StartError> {
        Self::start_on_workers(config, filters, Vec::new()).await
    }

    /// Like [`Edge::start_with_filters`], with sessions handed out in turn to `workers`
    /// (runtimes of their own, typically one single-threaded runtime per core) instead of
    /// running on the caller's runtime. A session stays on its worker for its whole life,
    /// so both its sockets are served by one thread: no cross-thread wake-up per message.
    pub async fn start_on_workers(
        config: Config,
        filters: Vec<Arc<dyn FilterFactory>>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<Edge, StartError> {
        let prepared = prepare(&config)?;
        let workers: Arc<[tokio::runtime::Handle]> = workers.into();
        let metrics = Arc::new(Metrics::default());
        let events: Arc<dyn Events> = metrics.clone();
        // The built-in policy filters, in pipeline order: tagging sees the client's subjects,
        // rewrite runs last on the way in and first on the way out.
        let mut policy: Vec<Arc<dyn FilterFactory>> = Vec::new();
        if let Some(tagging) = &prepared.tagging {
            policy.push(Arc::new(TagFactory {
                config: tagging.clone(),
                limits: config.limits.filter_config(),
                events: events.clone(),
            }));
        }
        if let Some(rules) = &prepared.rewrite {
            policy.push(Arc::new(RewriteFactory {
                rules: rules.clone(),
                events: events.clone(),
            }));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let conn_ids = Arc::new(AtomicU64::new(0));
        let rules_epoch = Arc::new(AtomicU64::new(0));
        let acl = Arc::new(AclFactory::new(AclSettings {
            mode: config.auth.mode.into(),
            upstream: config.auth.upstream.clone(),
            rules: prepared.rules.clone(),
            events: metrics.clone(),
        }));
        if let Some(signer) = &prepared.proxy_signer {
            tracing::info!(public_key = %signer.public_key(), "signing upstream CONNECTs as a trusted proxy");
        }
        let mut addrs = HashMap::new();
        let mut tasks = JoinSet::new();
        for (listener_config, transport) in config.listeners.iter().zip(&prepared.listeners) {
            let listener = bind(listener_config.bind).map_err(|source| StartError::Bind {
                name: listener_config.name.clone(),
                addr: listener_config.bind,
                source,
            })?;
            let local = listener.local_addr().map_err(|source| StartError::Bind {
                name: listener_config.name.clone(),
                addr: listener_config.bind,
                source,
            })?;
            tracing::info!(listener = %listener_config.name, addr = %local, "listening");
            addrs.insert(listener_config.name.clone(), local);
            let env = Arc::new(SessionEnv {
                upstream: prepared.upstream.clone(),
                kind: listener_config.kind,
                transport_timeout: listener_config.handshake_timeout.0,
                handshake_timeout: config.limits.handshake_timeout.0,
                limits: config.limits.filter_config(),
                info_rewrite: info_rewrite(listener_config, local, transport),
                acl: acl.clone(),
                proxy_signer: prepared.proxy_signer.clone(),
                rules_epoch: rules_epoch.clone(),
                policy: policy.clone(),
                filters: filters.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown_rx.clone(),
            });
            tasks.spawn(accept_loop(
                listener,
                transport.clone(),
                env,
                conn_ids.clone(),
                workers.clone(),
                shutdown_rx.clone(),
            ));
        }
        Ok(Edge {
            addrs,
            metrics,
            shutdown,
            tasks,
            tls: prepared.tls,
            rules: prepared.rules,
            rules_epoch,
            rewrite: prepared.rewrite,
        })
    }

    /// What reloads the ACL rule files (on SIGHUP).
    pub fn rules_reloader(&self) -> RulesReloader {
        RulesReloader {
            rules: self.rules.clone(),
            epoch: self.rules_epoch.clone(),
        }
    }

    /// What reloads TLS certificates and keys from their files (on SIGHUP).
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// The rewrite rule sets in use, for a reload (`RewriteRules::reload`) to swap; `None`
    /// when none are configured.
    pub fn rewrite_rules(&self) -> Option<Arc<RewriteRules>> {
        self.rewrite.clone()
    }

    /// The bound address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, closes every session, and waits for them to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Resolves when every listener has stopped (after [`Edge::shutdown`] or a fatal error).
    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// A handle that starts a shutdown from elsewhere (a signal handler).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

fn info_rewrite(
    listener: &ListenerConfig,
    local: SocketAddr,
    transport: &ListenerTransport,
) -> InfoRewrite {
    let (host, port) = listener
        .advertise
        .as_deref()
        .and_then(|a| parse_host_port(a).ok())
        .unwrap_or_else(|| (local.ip().to_string(), local.port()));
    InfoRewrite {
        host,
        port,
        connect_urls: listener.connect_urls.0.clone(),
        tls_required: listener.kind.is_tls(),
        tls_verify: transport
            .tls
            .as_ref()
            .is_some_and(|tls| tls.verify_required()),
    }
}

async fn accept_loop(
    listener: TcpListener,
    transport: Arc<ListenerTransport>,
    env: Arc<SessionEnv>,
    conn_ids: Arc<AtomicU64>,
    workers: Arc<[tokio::runtime::Handle]>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let mut next_worker = 0usize;
    loop {
        tokio::select! {
            _ = until_stopped(&mut shutdown) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Nothing here waits on the client: its handshake runs in its own task.
                    let conn_id = conn_ids.fetch_add(1, Ordering::Relaxed) + 1;
                    if workers.is_empty() {
                        sessions.spawn(serve_conn(stream, peer, conn_id, transport.clone(), env.clone()));
                    } else {
                        let worker = &workers[next_worker % workers.len()];
                        next_worker = next_worker.wrapping_add(1);
                        // The socket moves to the worker's reactor.
                        match stream.into_std() {
                            Ok(stream) => {
                                sessions.spawn_on(
                                    serve_std_conn(stream, peer, conn_id, transport.clone(), env.clone()),
                                    worker,
                                );
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot hand the connection to a worker"),
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: the listener stays, the client
                    // is lost. Back off a little so the loop does not spin.
                    tracing::warn!(listener = %transport.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}

/// The accept queue a listener asks the kernel for (which caps it at `net.core.somaxconn`),
/// as nats-server does. A short queue overflows under a burst of connections, and every
/// SYN dropped then costs its client a one-second retransmission.
const ACCEPT_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Resolves once the edge is shutting down (or the edge handle is gone).
pub(crate) async fn until_stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn serve_std_conn(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    transport: Arc<ListenerTransport>,
    env: Arc<SessionEnv>,
) {
    match TcpStream::from_std(stream) {
        Ok(stream) => serve_conn(stream, peer, conn_id, transport, env).await,
        Err(e) => tracing::warn!(error = %e, "cannot register the connection with its worker"),
    }
}

/// One client connection: its transport handshake (bounded by the listener's
/// `handshake_timeout`, and cut short by a shutdown), then its session.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    lt: Arc<ListenerTransport>,
    env: Arc<SessionEnv>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let stage = StageCell::default();
    if !lt.has_handshake() {
        // A plain listener's handshake has nothing to wait for.
        // Boxed, here and below: the handshake's state (a TLS or WebSocket accept) is large,
        // and awaited in place it would size this task, and so every idle connection, for
        // its whole life.
        let handshake = Box::pin(transport::handshake(stream, peer, conn_id, &lt, &stage));
        if let Ok(Some(accepted)) = handshake.await {
            session::run(accepted, env).await;
        }
        return;
    }
    let span = tracing::info_span!(
        "conn",
        id = conn_id,
        peer = %peer,
        listener = %lt.name,
        transport = lt.kind.as_str()
    );
    let mut shutdown = env.shutdown.clone();
    let guard = transport::CloseGuard::new(&stream);
    let handshake = tokio::time::timeout(
        lt.handshake_timeout,
        Box::pin(transport::handshake(stream, peer, conn_id, &lt, &stage)),
    )
    .instrument(span.clone());
    let result = tokio::select! {
        result = handshake => result.unwrap_or_else(|_| Err(HandshakeError::Timeout(stage.get()))),
        _ = until_stopped(&mut shutdown) => return,
    };
    match result {
        Ok(Some(accepted)) => {
            drop(guard);
            session::run(accepted, env).await
        }
        Ok(None) => span.in_scope(|| tracing::debug!("HTTP request answered")),
        Err(e) if e.is_silent() => {
            span.in_scope(|| tracing::debug!(error = %e, "closed before the handshake"))
        }
        Err(e) => {
            env.metrics.handshake_failed(lt.kind, e.failure());
            span.in_scope(
                || tracing::warn!(error = %e, reason = e.failure().as_str(), "handshake failed"),
            );
        }
    }
}
