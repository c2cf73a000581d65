//! The running edge: listeners bound from the config, an accept loop per listener, and a
//! session task per client connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nats_edge_filters::{ConnFacts, FilterFactory};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{parse_host_port, Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::session::{self, info::InfoRewrite, SessionEnv};

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started edge. Dropping it does not stop it; call [`Edge::shutdown`].
pub struct Edge {
    addrs: HashMap<String, SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
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
        let workers: Arc<[tokio::runtime::Handle]> = workers.into();
        let metrics = Arc::new(Metrics::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let conn_ids = Arc::new(AtomicU64::new(0));
        let mut addrs = HashMap::new();
        let mut tasks = JoinSet::new();
        for listener_config in &config.listeners {
            let listener = TcpListener::bind(listener_config.bind)
                .await
                .map_err(|source| StartError::Bind {
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
                upstreams: config.upstream_urls(),
                connect_timeout: config.upstream.connect_timeout.0,
                handshake_timeout: config.limits.handshake_timeout.0,
                limits: config.limits.filter_config(),
                info_rewrite: info_rewrite(listener_config, local),
                filters: filters.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown_rx.clone(),
            });
            tasks.spawn(accept_loop(
                listener,
                listener_config.name.clone(),
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
        })
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

fn info_rewrite(listener: &ListenerConfig, local: SocketAddr) -> InfoRewrite {
    let (host, port) = listener
        .advertise
        .as_deref()
        .and_then(|a| parse_host_port(a).ok())
        .unwrap_or_else(|| (local.ip().to_string(), local.port()));
    InfoRewrite {
        host,
        port,
        connect_urls: listener.connect_urls.0.clone(),
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
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
                    let conn = ConnFacts {
                        conn_id: conn_ids.fetch_add(1, Ordering::Relaxed) + 1,
                        listener: name.clone(),
                        client_addr: peer,
                        transport: "tcp",
                    };
                    if workers.is_empty() {
                        sessions.spawn(serve_tcp(stream, conn, env.clone()));
                    } else {
                        let worker = &workers[next_worker % workers.len()];
                        next_worker = next_worker.wrapping_add(1);
                        // The socket moves to the worker's reactor.
                        match stream.into_std() {
                            Ok(stream) => {
                                sessions.spawn_on(serve_std_tcp(stream, conn, env.clone()), worker);
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot hand the connection to a worker"),
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: the listener stays, the client
                    // is lost. Back off a little so the loop does not spin.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}

/// Resolves once the edge is shutting down (or the edge handle is gone).
pub(crate) async fn until_stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn serve_std_tcp(stream: std::net::TcpStream, conn: ConnFacts, env: Arc<SessionEnv>) {
    match TcpStream::from_std(stream) {
        Ok(stream) => serve_tcp(stream, conn, env).await,
        Err(e) => tracing::warn!(error = %e, "cannot register the connection with its worker"),
    }
}

async fn serve_tcp(stream: TcpStream, conn: ConnFacts, env: Arc<SessionEnv>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    session::run(stream, conn, env).await;
}
