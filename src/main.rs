//! The `nats-edge` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use nats_edge::config::{Config, LogFormat, Overrides};
use nats_edge::Edge;
use nats_edge_filters::acl::explain::{explain, Action};

#[derive(Parser)]
#[command(
    name = "nats-edge",
    version,
    about = "A transparent NATS reverse proxy and border gateway"
)]
struct Cli {
    /// TOML config file.
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        env = "NATS_EDGE_CONFIG"
    )]
    config: Option<PathBuf>,
    /// Listen for NATS clients on this address (replaces the config's listeners).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// An upstream nats-server URL; repeat for failover, tried in order.
    #[arg(long = "upstream", global = true, value_name = "URL")]
    upstreams: Vec<String>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Log filter, such as `info` or `nats_edge=debug`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and exit: 0 when valid, 1 with the key and reason when not.
    Check,
    /// Show what the edge does with a subject for a user: the upstream subject after
    /// rewrite, and the tags a publish would get.
    Explain {
        /// The user the connection authenticates as.
        #[arg(long)]
        user: Option<String>,
        /// The listener it connects to (default: the first).
        #[arg(long)]
        listener: Option<String>,
        /// `pub` or `sub`.
        op: ExplainOpArg,
        /// The subject, in the client's view.
        subject: String,
    },
    /// ACL tools.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
}

#[derive(Subcommand)]
enum AclCommand {
    /// Print whether a user may publish or subscribe to a subject, and the rule that decides.
    Explain {
        /// The user (as presented in passthrough mode, or as authenticated in edge mode).
        /// Unset: a client that presents no name.
        #[arg(long)]
        user: Option<String>,
        /// Rule files to read instead of the config's `auth.rules`.
        #[arg(long = "rules", value_name = "FILE")]
        rules: Vec<PathBuf>,
        /// `pub` or `sub`.
        action: ExplainAction,
        subject: String,
        /// The queue group of a subscription.
        queue: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExplainOpArg {
    Pub,
    Sub,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExplainAction {
    #[value(alias = "publish")]
    Pub,
    #[value(alias = "subscribe")]
    Sub,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        upstreams: cli.upstreams.clone(),
        log_format: cli.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }),
        log_level: cli.log_level.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("nats-edge: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            // Certificates and keys are loaded too, so a bad path or a key that does not
            // match its certificate fails here rather than at start-up.
            if let Err(e) = nats_edge::edge::prepare(&config) {
                eprintln!("nats-edge: invalid configuration: {e}");
                return ExitCode::FAILURE;
            }
            let source = cli
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "flags and environment".into());
            println!("nats-edge: configuration OK ({source})");
            ExitCode::SUCCESS
        }
        Command::Acl {
            command:
                AclCommand::Explain {
                    user,
                    rules,
                    action,
                    subject,
                    queue,
                },
        } => {
            let files = if rules.is_empty() {
                config.rule_files()
            } else {
                rules
            };
            let loaded = match nats_edge_filters::acl::rules::AclRules::load(&files) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("nats-edge: invalid rules: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let action = match action {
                ExplainAction::Pub => Action::Publish(&subject),
                ExplainAction::Sub => Action::Subscribe {
                    subject: &subject,
                    queue: queue.as_deref(),
                },
            };
            print!("{}", explain(&loaded, user.as_deref(), action));
            ExitCode::SUCCESS
        }
        Command::Explain {
            user,
            listener,
            op,
            subject,
        } => {
            let request = nats_edge::explain::ExplainRequest {
                user,
                listener,
                op: match op {
                    ExplainOpArg::Pub => nats_edge::explain::ExplainOp::Pub,
                    ExplainOpArg::Sub => nats_edge::explain::ExplainOp::Sub,
                },
                subject,
            };
            match nats_edge::explain::explain(&config, &request) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("nats-edge: invalid configuration: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nats-edge: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let ignored = nats_edge::config::ignored_env_vars();
    if !ignored.is_empty() {
        tracing::info!(variables = ?ignored, "ignoring NATS_EDGE_* variables that are not configuration keys");
    }
    let workers = start_workers(config.worker_threads)?;
    // The main thread only accepts connections and waits for signals; sessions run on the
    // workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut edge = Edge::start_on_workers(config, Vec::new(), workers).await?;
        let stop = edge.shutdown_handle();
        let reload = Reload {
            tls: edge.tls_reloader(),
            rules: edge.rules_reloader(),
        };
        tokio::spawn(async move {
            wait_for_signal(&reload).await;
            tracing::info!("shutting down");
            let _ = stop.send(true);
        });
        edge.wait().await;
        Ok(())
    })
}

/// One single-threaded runtime per worker thread (per core when `threads` is 0), each on a
/// thread of its own that lives as long as the process.
fn start_workers(threads: usize) -> anyhow::Result<Vec<tokio::runtime::Handle>> {
    let count = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    (0..count)
        .map(|i| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker runtime")?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("nats-edge-worker-{i}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .context("starting a worker thread")?;
            Ok(handle)
        })
        .collect()
}

/// What SIGHUP reloads.
struct Reload {
    tls: nats_edge::transport::tls::TlsReloader,
    rules: nats_edge::edge::RulesReloader,
}

/// Resolves on SIGTERM or SIGINT. SIGHUP, the conventional reload signal, must not kill the
/// process (the default action): it reloads TLS certificates and keys and the ACL rule files;
/// the rest of the configuration is not reloaded.
async fn wait_for_signal(reload: &Reload) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = hup.recv() => {
                    reload_rules(&reload.rules);
                    reload_tls(&reload.tls);
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the ACL rule files; a file that fails keeps the previous rules in force.
#[cfg_attr(not(unix), allow(dead_code))]
fn reload_rules(rules: &nats_edge::edge::RulesReloader) {
    if rules.is_empty() {
        return;
    }
    match rules.reload() {
        Ok(()) => tracing::info!("ACL rules reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "ACL rules reload failed; keeping the previous rules")
        }
    }
}

/// Reloads every TLS certificate and key from its file; one that fails keeps its old
/// material. New connections get the new material, live ones keep theirs.
#[cfg_attr(not(unix), allow(dead_code))]
fn reload_tls(tls: &nats_edge::transport::tls::TlsReloader) {
    if tls.is_empty() {
        tracing::info!(
            "SIGHUP handled: no TLS material to reload; the rest of the configuration (beyond ACL rule files) is only read at start-up, restart nats-edge to apply changes"
        );
        return;
    }
    let mut failed = false;
    for done in tls.reload() {
        match done.result {
            Ok(()) => tracing::info!(tls = %done.what, "TLS certificates reloaded"),
            Err(e) => {
                failed = true;
                tracing::error!(tls = %done.what, error = %e, "TLS reload failed; keeping the previous certificates")
            }
        }
    }
    tracing::info!(
        ok = !failed,
        "SIGHUP handled: TLS material reloaded; the rest of the configuration (beyond ACL rule files) is only read at start-up (restart nats-edge to apply other changes)"
    );
}
