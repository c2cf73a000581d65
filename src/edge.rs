//! The running edge: listeners bound from the config, an accept loop per listener
//! (`src/listener.rs`), the state the admin server reads, and the reload of the listeners'
//! settings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nats_edge_filters::acl::rules::{AclRules, RulesError};
use nats_edge_filters::acl::{AclFactory, AclSettings, RuleSource};
use nats_edge_filters::rewrite::{LoadedSets, RewriteFactory, RewriteRules, RuleError};
use nats_edge_filters::tag::{TagConfig, TagError, TagFactory, TagSource};
use nats_edge_filters::{Events, FilterFactory, Info};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{parse_host_port, Config, ListenerConfig};
use crate::health::Health;
use crate::listener::{accept_loop, ListenerCell, ListenerRuntime};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::registry::Registry;
use crate::reload::{ReloadError, Reloadable, Reloader, Staged};
use crate::session::proxy_sig::{ProxyKeyError, ProxySigner};
use crate::session::{info::InfoRewrite, SessionEnv};
use crate::transport::tls::{ClientTls, ServerTls, TlsError};
use crate::transport::{ws::WsSettings, ListenerTransport};
use crate::upstream::{self, Upstream};

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Tls { what: String, source: TlsError },
    #[error("admin.listen: cannot bind {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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
/// [`Edge::shutdown`] to close them in order and wait for them, or [`crate::drain::drain`]
/// to drain them.
pub struct Edge {
    addrs: HashMap<String, SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shared: Arc<EdgeShared>,
    shutdown: watch::Sender<bool>,
    /// The accept loops, each waiting for its sessions once stopped.
    tasks: JoinSet<()>,
    /// The admin server and the upstream check: stopped only once `tasks` are done, so the
    /// probes and the metrics answer through the whole of a drain, its last closes included.
    admin_tasks: JoinSet<()>,
    admin_stop: watch::Sender<bool>,
}

/// Who this edge is, for `/varz`.
#[derive(Debug, Clone)]
pub struct Identity {
    pub server_id: String,
    pub server_name: String,
    pub version: &'static str,
    pub start: SystemTime,
    /// The same moment on the monotonic clock, for the uptime (as nats-server's `/varz`).
    pub started: std::time::Instant,
}

/// What the edge's parts share: the admin server reads it, a drain and a reload act on it.
pub struct EdgeShared {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub health: Arc<Health>,
    pub reloader: Reloader,
    pub identity: Identity,
    pub listeners: Vec<Arc<ListenerCell>>,
    /// Turns true to close the listeners (a drain); sessions go on.
    stop_accepting: watch::Sender<bool>,
    /// Turns true when every session is to tell its client the edge is in lame-duck mode.
    lame_duck: watch::Sender<bool>,
}

impl EdgeShared {
    /// Closes every listener; live sessions go on.
    pub fn stop_accepting(&self) {
        let _ = self.stop_accepting.send(true);
    }

    /// Sends every live client the lame-duck INFO.
    pub fn enter_lame_duck(&self) {
        let _ = self.lame_duck.send(true);
    }

    /// Client connections open now, in their transport handshake or in their session.
    pub fn open_connections(&self) -> usize {
        self.listeners.iter().map(|l| l.open_connections()).sum()
    }
}

/// Everything the edge builds from its config before binding: the upstream (with its TLS)
/// and each listener's transport (with its certificates). Loading it checks every TLS file.
pub struct Prepared {
    upstream: Arc<Upstream>,
    listeners: Vec<Arc<ListenerTransport>>,
    /// The ACL rule files, loaded.
    rules: AclRules,
    proxy_signer: Option<Arc<ProxySigner>>,
    /// Subject rewrite rule sets, when any are configured.
    rewrite: Option<LoadedSets>,
    /// Tagging, when configured.
    tagging: Option<TagConfig>,
}

/// Loads the TLS material and settings the config names, without binding or dialling
/// anything (`nats-edge check` runs this too).
pub fn prepare(config: &Config) -> Result<Prepared, StartError> {
    prepare_with(config, Loading::Start, None)
}

/// Whether `config` would start, as far as its files go (the trusted-proxy key aside,
/// which a running edge keeps until its restart): what a reload checks of the whole new
/// file before it applies what it can.
pub fn check_startable(config: &Config) -> Result<(), StartError> {
    prepare_with(config, Loading::NewFile, None).map(|_| ())
}

/// What [`prepare_with`] loads besides the listeners' TLS and the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loading {
    /// Start-up and `nats-edge check`: everything.
    Start,
    /// A reload's check of the whole new file: its rule files, not the trusted-proxy key
    /// (the running key is kept until a restart, so its file need not be there).
    NewFile,
    /// A reload of the listeners: no rule files either; the rules reload reads them, and
    /// the new file was checked whole before.
    Listeners,
}

/// [`prepare`], loading what `loading` says. `running` is the upstream in use (a reload):
/// when the URLs are the same, what was learnt of them (which failed lately) is kept, so a
/// certificate rotation does not send every session back to a dead URL first.
fn prepare_with(
    config: &Config,
    loading: Loading,
    running: Option<&Upstream>,
) -> Result<Prepared, StartError> {
    let tls_error = |what: String| move |source| StartError::Tls { what, source };
    let upstream_tls = match &config.upstream.tls {
        Some(settings) => Some(Arc::new(
            ClientTls::load(settings).map_err(tls_error("upstream.tls".into()))?,
        )),
        None => None,
    };
    let urls = config.upstream_urls();
    let default_tls = if upstream_tls.is_none() && urls.iter().any(|u| u.tls) {
        Some(Arc::new(
            ClientTls::load(&Default::default()).map_err(tls_error("upstream.urls".into()))?,
        ))
    } else {
        None
    };
    let history = match running {
        Some(running) if running.urls == urls => running.history.clone(),
        _ => Arc::new(upstream::DialHistory::new(urls.len())),
    };
    let upstream = Arc::new(Upstream {
        history,
        urls,
        connect_timeout: config.upstream.connect_timeout.0,
        in_order: config.upstream.dont_randomize,
        tls: upstream_tls,
        default_tls,
        proxy_protocol: config.upstream.proxy_protocol,
    });
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let server_tls = match &l.tls {
            // A listener held until the restart keeps the certificates it runs with: the
            // reload takes them from its running transport.
            Some(_) if l.held_until_restart => None,
            Some(settings) if l.kind.is_tls() => {
                let loaded =
                    ServerTls::load(settings).map_err(tls_error(format!("listeners.{i}.tls")))?;
                Some(Arc::new(loaded))
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
    // Rule files are loaded (and validated) here, so `nats-edge check` and a reload refuse
    // what start-up would refuse.
    let rule_files = loading != Loading::Listeners;
    let rules = if rule_files {
        AclRules::load(&config.rule_files())?
    } else {
        AclRules::default()
    };
    let proxy_signer = match &config.auth.trusted_proxy {
        Some(proxy) if loading == Loading::Start => {
            // Relative to the config file's directory, as rule and tagging files are.
            let mut proxy = proxy.clone();
            proxy.seed_file = proxy.seed_file.map(|path| config.resolve(&path));
            Some(Arc::new(ProxySigner::load(&proxy)?))
        }
        _ => None,
    };
    let rewrite_config = config.rewrite_config();
    let rewrite = if rewrite_config == Default::default() || !rule_files {
        None
    } else {
        Some(LoadedSets::load(&rewrite_config)?)
    };
    let tagging = if rule_files {
        config.tag_config()?
    } else {
        None
    };
    Ok(Prepared {
        upstream,
        listeners,
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
    /// The accept loops, the admin server and the upstream check run on the caller's
    /// runtime, off the data path.
    pub async fn start_on_workers(
        config: Config,
        filters: Vec<Arc<dyn FilterFactory>>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<Edge, StartError> {
        let prepared = prepare(&config)?;
        let workers: Arc<[tokio::runtime::Handle]> = workers.into();
        let metrics = Arc::new(Metrics::new());
        metrics.upstreams_configured(prepared.upstream.urls.iter().map(|u| u.to_string()));
        let events: Arc<dyn Events> = metrics.clone();
        let rules = Arc::new(RuleSource::new(prepared.rules));
        let (rules_epoch, rules_epoch_rx) = watch::channel(0u64);
        let acl = Arc::new(AclFactory::new(AclSettings {
            mode: config.auth.mode.into(),
            operator_mode: config.auth.operator_mode,
            upstream: config.auth.upstream.clone(),
            rules: rules.clone(),
            events: events.clone(),
        }));
        if let Some(signer) = &prepared.proxy_signer {
            tracing::info!(public_key = %signer.public_key(), "signing upstream CONNECTs as a trusted proxy");
        }
        // The built-in policy filters, in pipeline order: tagging sees the client's subjects,
        // rewrite runs last on the way in and first on the way out.
        let rewrite = prepared
            .rewrite
            .map(|sets| Arc::new(RewriteRules::new(sets)));
        let tagging = prepared
            .tagging
            .map(|config| Arc::new(TagSource::new(config)));
        let mut policy: Vec<Arc<dyn FilterFactory>> = Vec::new();
        if let Some(source) = &tagging {
            policy.push(Arc::new(TagFactory {
                source: source.clone(),
                events: events.clone(),
            }));
        }
        if let Some(rules) = &rewrite {
            policy.push(Arc::new(RewriteFactory {
                rules: rules.clone(),
                events: events.clone(),
            }));
        }
        crate::admin::start_cpu_sampling();
        // Ended connections are kept for `/connz?state=closed`, so only with an admin server.
        let registry = Arc::new(Registry::keeping_closed(if config.admin.listen.is_some() {
            config.admin.max_closed_clients
        } else {
            0
        }));
        metrics.count_traffic_of(registry.clone());
        // Twice the readiness check's interval: a failed dial makes the edge not ready only
        // once no dial has succeeded for that long.
        let success_window = config.admin.upstream_check_interval.0.saturating_mul(2);
        let health = Arc::new(Health::with_success_window(success_window));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (stop_accepting, stop_rx) = watch::channel(false);
        let (lame_duck, lame_duck_rx) = watch::channel(false);
        let base = EnvBase {
            acl,
            proxy_signer: prepared.proxy_signer.clone(),
            rules_epoch: rules_epoch_rx,
            policy,
            filters,
            metrics: metrics.clone(),
            registry: registry.clone(),
            health: health.clone(),
            shutdown: shutdown_rx.clone(),
            lame_duck: lame_duck_rx,
        };
        let mut addrs = HashMap::new();
        let mut cells = Vec::new();
        let mut bound = Vec::new();
        for (lc, transport) in config.listeners.iter().zip(&prepared.listeners) {
            let bind_error = |source| StartError::Bind {
                name: lc.name.clone(),
                addr: lc.bind,
                source,
            };
            let listener = bind(lc.bind).map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            tracing::info!(listener = %lc.name, addr = %local, "listening");
            addrs.insert(lc.name.clone(), local);
            let listener_metrics = metrics.listener(&lc.name, lc.kind);
            let last_info = Arc::new(Mutex::new(None));
            let runtime = base.runtime(
                &config,
                lc,
                local,
                transport.clone(),
                prepared.upstream.clone(),
                &listener_metrics,
                &last_info,
            );
            let cell = Arc::new(ListenerCell::new(
                &lc.name,
                local,
                lc.kind,
                runtime,
                listener_metrics,
                last_info,
            ));
            cells.push(cell.clone());
            bound.push((listener, cell));
        }
        let mut tasks = JoinSet::new();
        let conn_ids = Arc::new(AtomicU64::new(0));
        for (listener, cell) in bound {
            // Stopped by a drain (stop accepting) or a shutdown, whichever comes first.
            let mut stop = stop_rx.clone();
            let mut down = shutdown_rx.clone();
            let (tx, rx) = watch::channel(false);
            tasks.spawn(async move {
                tokio::select! {
                    _ = until_stopped(&mut stop) => {}
                    _ = until_stopped(&mut down) => {}
                }
                let _ = tx.send(true);
            });
            tasks.spawn(accept_loop(
                listener,
                cell,
                conn_ids.clone(),
                workers.clone(),
                rx,
            ));
        }
        health.set_listeners_bound();
        let admin = config.admin.clone();
        let shared = Arc::new(EdgeShared {
            reloader: Reloader::new(config, metrics.clone()),
            metrics,
            registry,
            health,
            identity: identity(),
            listeners: cells,
            stop_accepting,
            lame_duck,
        });
        shared.reloader.register(Arc::new(ListenerReload {
            base,
            cells: shared.listeners.clone(),
        }));
        shared.reloader.register(Arc::new(RulesReload {
            acl: rules,
            rewrite,
            tagging,
            epoch: rules_epoch,
        }));
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let mut admin_tasks = JoinSet::new();
        let admin_addr = match admin.listen {
            Some(addr) => {
                let admin_error = |source| StartError::AdminBind { addr, source };
                let listener = TcpListener::bind(addr).await.map_err(admin_error)?;
                let local = listener.local_addr().map_err(admin_error)?;
                tracing::info!(addr = %local, "admin listening");
                admin_tasks.spawn(crate::admin::serve(
                    listener,
                    shared.clone(),
                    admin_stop_rx.clone(),
                ));
                admin_tasks.spawn(check_upstream(
                    shared.clone(),
                    admin.upstream_check_interval.0,
                    admin_stop_rx,
                ));
                Some(local)
            }
            None => None,
        };
        Ok(Edge {
            addrs,
            admin_addr,
            shared,
            shutdown,
            tasks,
            admin_tasks,
            admin_stop,
        })
    }

    /// The bound address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    /// The bound address of the admin server, when `[admin] listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The state the admin server reads, and what a reload or a drain acts on.
    pub fn shared(&self) -> &Arc<EdgeShared> {
        &self.shared
    }

    /// Stops accepting, closes every session, and waits for them to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Resolves when every listener has stopped and its sessions have ended (after
    /// [`Edge::shutdown`] or a fatal error), and then the admin server.
    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
        let _ = self.admin_stop.send(true);
        while self.admin_tasks.join_next().await.is_some() {}
    }

    /// A handle that starts a shutdown from elsewhere (a signal handler).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

fn identity() -> Identity {
    use std::hash::{BuildHasher, Hasher};
    // Unique enough to tell edge processes apart in a fleet: a randomly seeded hash of the
    // pid and the start time.
    let start = SystemTime::now();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let server_id = format!("EDGE{:016X}", h.finish());
    let server_name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| server_id.clone());
    Identity {
        server_id,
        server_name,
        version: env!("CARGO_PKG_VERSION"),
        start,
        started: std::time::Instant::now(),
    }
}

/// What every listener's session environment shares, kept to build new ones on reload.
struct EnvBase {
    acl: Arc<AclFactory>,
    proxy_signer: Option<Arc<ProxySigner>>,
    rules_epoch: watch::Receiver<u64>,
    policy: Vec<Arc<dyn FilterFactory>>,
    filters: Vec<Arc<dyn FilterFactory>>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
    lame_duck: watch::Receiver<bool>,
}

impl EnvBase {
    #[allow(clippy::too_many_arguments)]
    fn runtime(
        &self,
        config: &Config,
        listener: &ListenerConfig,
        local: SocketAddr,
        transport: Arc<ListenerTransport>,
        upstream: Arc<Upstream>,
        listener_metrics: &ListenerMetrics,
        last_info: &Arc<Mutex<Option<Info>>>,
    ) -> ListenerRuntime {
        let env = Arc::new(SessionEnv {
            upstream,
            kind: listener.kind,
            transport_timeout: listener.handshake_timeout.0,
            handshake_timeout: config.limits.handshake_timeout_for(listener),
            write_deadline: config.limits.write_deadline.0,
            limits: config.limits.filter_config(),
            info_rewrite: info_rewrite(listener, local, &transport),
            acl: self.acl.clone(),
            proxy_signer: self.proxy_signer.clone(),
            rules_epoch: self.rules_epoch.clone(),
            policy: self.policy.clone(),
            filters: self.filters.clone(),
            metrics: self.metrics.clone(),
            listener_metrics: listener_metrics.clone(),
            registry: self.registry.clone(),
            health: self.health.clone(),
            last_info: last_info.clone(),
            shutdown: self.shutdown.clone(),
            lame_duck: self.lame_duck.clone(),
        });
        ListenerRuntime {
            transport,
            env,
            max_connections: listener.max_connections,
            max_connection_rate: listener.max_connection_rate,
        }
    }
}

/// Reloads what listeners serve new connections with: TLS certificates and keys, transport
/// settings, limits, upstream URLs and TLS, connection limits. A listener whose name or kind
/// changed keeps its old settings (that needs a restart).
struct ListenerReload {
    base: EnvBase,
    cells: Vec<Arc<ListenerCell>>,
}

impl Reloadable for ListenerReload {
    fn name(&self) -> String {
        "listeners".into()
    }

    fn prepare(&self, new: &Config) -> Result<Staged, ReloadError> {
        let running = self
            .cells
            .first()
            .map(|cell| cell.current().env.upstream.clone());
        let prepared = prepare_with(new, Loading::Listeners, running.as_deref())
            .map_err(ReloadError::from_start)?;
        let upstreams: Vec<String> = prepared
            .upstream
            .urls
            .iter()
            .map(|u| u.to_string())
            .collect();
        let metrics = self.base.metrics.clone();
        let mut swaps = Vec::new();
        for (lc, transport) in new.listeners.iter().zip(prepared.listeners) {
            let Some(cell) = self
                .cells
                .iter()
                .find(|c| c.name == lc.name && c.kind == lc.kind)
            else {
                continue;
            };
            let transport = if lc.held_until_restart {
                cell.current().transport.clone()
            } else {
                transport
            };
            let runtime = self.base.runtime(
                new,
                lc,
                cell.addr,
                transport,
                prepared.upstream.clone(),
                &cell.metrics,
                &cell.last_info,
            );
            swaps.push((cell.clone(), runtime, lc.held_until_restart));
        }
        Ok(Staged::new(move || {
            metrics.upstreams_configured(&upstreams);
            for (cell, runtime, held) in swaps {
                let tls = runtime.transport.tls.is_some() && !held;
                cell.swap(runtime);
                if tls {
                    let what = format!("listener {}", cell.name);
                    tracing::info!(tls = %what, "TLS certificates reloaded");
                }
            }
        }))
    }
}

/// Reloads the ACL, rewrite and tagging rule files, for new and live connections: moving
/// the epoch wakes every live session, which then has its filters take the new rules. Turning
/// rewrite or tagging on or off needs a restart (see [`crate::reload::restart_keys`]); the
/// trusted-proxy key is read at start-up only.
struct RulesReload {
    acl: Arc<RuleSource>,
    rewrite: Option<Arc<RewriteRules>>,
    tagging: Option<Arc<TagSource>>,
    epoch: watch::Sender<u64>,
}

impl Reloadable for RulesReload {
    fn name(&self) -> String {
        "rules".into()
    }

    fn prepare(&self, new: &Config) -> Result<Staged, ReloadError> {
        let invalid = |key: &str, reason: String| ReloadError::Invalid {
            key: key.into(),
            reason,
        };
        // Files held from the running configuration (the new file no longer names them, or
        // names others that wait for a restart) are read again, so edits to them apply; if
        // they are gone, the rules loaded from them run on until the restart: their
        // removal must not make every later reload fail.
        let held = |held: bool, part: &str, e: String| {
            if held {
                tracing::warn!(part, error = %e, "a file held until the restart cannot be read again; its loaded rules run on");
                Ok(())
            } else {
                Err(invalid(part, e))
            }
        };
        let acl = match AclRules::load(&new.rule_files()) {
            Ok(acl) => Some(acl),
            Err(e) => {
                held(new.held.rules, "auth.rules", e.to_string())?;
                None
            }
        };
        let rewrite = match &self.rewrite {
            Some(_) => match LoadedSets::load(&new.rewrite_config()) {
                Ok(sets) => Some(sets),
                Err(e) => {
                    held(new.held.rewrite, "rewrite", e.to_string())?;
                    None
                }
            },
            None => None,
        };
        let tagging = match &self.tagging {
            Some(_) => match new.tag_config() {
                Ok(config) => config,
                Err(e) => {
                    held(new.held.tagging, "tagging.file", e.to_string())?;
                    None
                }
            },
            None => None,
        };
        let (source, holder, epoch) = (self.acl.clone(), self.rewrite.clone(), self.epoch.clone());
        let tag_source = self.tagging.clone();
        Ok(Staged::new(move || {
            if let Some(acl) = acl {
                source.store(acl);
            }
            if let (Some(holder), Some(sets)) = (holder, rewrite) {
                holder.store(sets);
            }
            if let (Some(holder), Some(config)) = (tag_source, tagging) {
                holder.store(config);
            }
            epoch.send_modify(|epoch| *epoch += 1);
            tracing::info!("ACL, rewrite and tagging rules reloaded");
        }))
    }
}

/// Keeps `/readyz` current while no client dials: dials the upstreams (every URL in turn,
/// as a session would) every `interval`, and drops the connection. An interval in which a
/// session's dial reached an upstream (and none failed since) needs no check: nats-server
/// keeps every closed connection in its monitoring for a while, and a fleet of sidecars
/// checking all the time would crowd out the real ones there.
async fn check_upstream(
    shared: Arc<EdgeShared>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = until_stopped(&mut shutdown) => return,
            _ = ticks.tick() => {}
        }
        if shared.health.session_reached_within(interval) {
            continue;
        }
        let Some(cell) = shared.listeners.first() else {
            return;
        };
        let upstream = cell.current().env.upstream.clone();
        // A dial can take the connect timeout per URL: a shutdown does not wait for it. No
        // client is behind it, so a PROXY header says so rather than naming one.
        let dialled = tokio::select! {
            biased;
            _ = until_stopped(&mut shutdown) => return,
            // Not counted in the dial counters: they count the dials clients made.
            dialled = upstream::dial_any(&upstream, None, &|_, _| {}) => dialled,
        };
        shared.health.upstream_dialled(dialled.is_ok());
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
        connect_urls: listener
            .connect_urls
            .0
            .iter()
            .map(|url| crate::config::connect_url_host_port(url).to_string())
            .collect(),
        tls_required: listener.kind.is_tls(),
        tls_verify: transport
            .tls
            .as_ref()
            .is_some_and(|tls| tls.verify_required()),
        lame_duck_sent: false,
    }
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
