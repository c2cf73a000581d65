//! The `nats-edge` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use nats_edge::config::{Config, LogFormat, Overrides};
use nats_edge::reload::ReloadError;
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
    /// An upstream nats-server URL; repeat for several (clients are spread over them unless
    /// `upstream.dont_randomize`).
    #[arg(long = "upstream", global = true, value_name = "URL")]
    upstreams: Vec<String>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Log filter, such as `info` or `nats_edge=debug`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Write the process id here (`run`), or find the running process here (`reload`).
    #[arg(long, global = true, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and exit: 0 when valid, 1 with the key and reason when not.
    Check,
    /// Ask the running nats-edge (found by its pid file) to reload its configuration, as
    /// SIGHUP does.
    Reload,
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
    if matches!(cli.command, None | Some(Command::Run)) {
        hold_signals();
    }
    let overrides = Overrides {
        listen: cli.listen,
        upstreams: cli.upstreams.clone(),
        log_format: cli.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }),
        log_level: cli.log_level.clone(),
        pid_file: cli.pid_file.clone(),
    };
    if matches!(cli.command, Some(Command::Reload)) {
        return match signal_reload(&cli, &overrides) {
            Ok(pid) => {
                println!("nats-edge: reload requested (process {pid})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nats-edge: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `acl explain --rules FILE` reads only the rule files: it needs no valid config.
    let rules_only = matches!(
        &cli.command,
        Some(Command::Acl { command: AclCommand::Explain { rules, .. } }) if !rules.is_empty()
    );
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(_) if rules_only => Config::default(),
        Err(e) => {
            eprintln!("nats-edge: invalid configuration: {e}");
            // A key misspelt in the environment is often why (`NATS_EDGE_UPSTREAM_URLS`
            // leaves no upstream at all).
            warn_mistyped_env_vars(None);
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
            // `run` writes the pid file only once it listens; a directory that is not there
            // would fail it then.
            if let Some(path) = &config.pid_file {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if !dir.is_dir() {
                    eprintln!(
                        "nats-edge: invalid configuration: pid_file: directory {} does not exist",
                        dir.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
            let source = cli
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "flags and environment".into());
            warn_mistyped_env_vars(Some(&config));
            println!("nats-edge: configuration OK ({source})");
            ExitCode::SUCCESS
        }
        // Handled before the configuration is loaded.
        Command::Reload => ExitCode::FAILURE,
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
            // A client that presents no name is the no_auth_user in either mode (in
            // passthrough mode, as nats-server makes it its own). With the configuration's
            // own rules, the mode is known: in edge mode, without one, it is refused.
            let edge_mode =
                rules.is_empty() && config.auth.mode == nats_edge::config::AuthModeConfig::Edge;
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
            let anonymous = loaded.no_auth_user.as_ref().map(|u| u.name.to_string());
            let user = user.or(anonymous);
            // A client the edge refuses at login never gets as far as a permission.
            let refused = match &user {
                None if edge_mode => Some("no credentials and no no_auth_user".to_string()),
                Some(name) if edge_mode && loaded.user(name).is_none() => {
                    Some(format!("unknown user `{name}`"))
                }
                _ => None,
            };
            match refused {
                Some(why) => {
                    println!("refused at the edge's login ({why}): -ERR 'Authorization Violation'")
                }
                None => print!("{}", explain(&loaded, user.as_deref(), action)),
            }
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
                Err(e @ nats_edge::explain::ExplainError::UnknownListener(_)) => {
                    eprintln!("nats-edge: --listener: {e}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("nats-edge: invalid configuration: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => match run(config, cli.config.clone(), overrides) {
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
    // Colour only on a terminal: a journal or a log file gets no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

fn run(config: Config, file: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    init_logging(&config);
    raise_descriptor_limit();
    // The trusted proxy's seed variable is read, not ignored, though it is no config key.
    let seed_env = config
        .auth
        .trusted_proxy
        .as_ref()
        .and_then(|p| p.seed_env.as_deref());
    let ignored = nats_edge::config::ignored_env_vars(seed_env);
    if !ignored.is_empty() {
        tracing::info!(variables = ?ignored, "ignoring NATS_EDGE_* variables that are not configuration keys");
    }
    for (variable, meant) in nats_edge::config::mistyped_env_vars(seed_env) {
        tracing::warn!(%variable, %meant, "ignored: not a configuration key; a nested key is written with two underscores");
    }
    let workers = start_workers(config.worker_threads, config.busy_poll.0)?;
    if !config.busy_poll.0.is_zero() {
        tracing::info!(window = ?config.busy_poll.0, workers = workers.len(), "workers busy-poll after each read");
    }
    // The main thread accepts connections, serves the admin endpoints and waits for
    // signals; sessions run on the workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let pid_file = config.pid_file.clone();
    // Removed at exit only if this process wrote it: a start that fails (another instance
    // holds the port) must not delete the running instance's file.
    let mut written_pid_file = None;
    let result = runtime.block_on(async {
        let mut signals = Signals::new().context("installing signal handlers")?;
        release_held_signals();
        let mut edge = Edge::start_on_workers(config, Vec::new(), workers).await?;
        if let Some(path) = &pid_file {
            write_pid_file(path).with_context(|| format!("writing pid_file {}", path.display()))?;
            written_pid_file = Some(path.clone());
        }
        let source = file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "flags and environment".into());
        let mut reloads = Reloads::new(edge.shared().clone(), file.clone(), overrides.clone(), source);
        loop {
            tokio::select! {
                _ = edge.wait() => return Ok(()),
                () = reloads.ended() => {}
                signal = signals.next() => match signal {
                    Signal::Reload => reloads.request(),
                    Signal::Terminate | Signal::Interrupt => break,
                },
            }
        }
        let shared = edge.shared().clone();
        let drain = shared.reloader.current().drain.clone();
        tracing::info!("shutting down: draining (SIGINT exits at once)");
        let first_stop = std::time::Instant::now();
        // As nats-server in lame-duck mode: a reload still applies while the edge drains
        // (rules that revoke a user reach the clients still connected), SIGTERM does not
        // cut the drain short (a supervisor that repeats it would close every client at
        // once, the reconnect storm the drain spreads out), and SIGINT ends it.
        let forced_exit = async {
            loop {
                tokio::select! {
                    () = reloads.ended() => {}
                    signal = signals.next() => match signal {
                        Signal::Reload => reloads.request(),
                        Signal::Terminate => {
                            tracing::info!("SIGTERM during the drain: draining on (SIGINT exits at once)");
                        }
                        // One stop delivered twice (Ctrl-C's SIGINT to the process group and
                        // a wrapper's SIGTERM to the process) is not a second request.
                        Signal::Interrupt if first_stop.elapsed() < SAME_STOP => {
                            tracing::info!("a second stop signal right after the first: draining on");
                        }
                        Signal::Interrupt => break,
                    },
                }
            }
        };
        tokio::select! {
            drained = nats_edge::drain::drain(&mut edge, drain.grace_period.0, drain.timeout.0) => {
                tracing::info!(closed_by_edge = drained.closed_by_edge, timed_out = drained.timed_out, "drained");
            }
            () = forced_exit => {
                tracing::warn!("SIGINT during the drain: exiting at once");
                if let Some(path) = &written_pid_file {
                    remove_own_pid_file(path);
                }
                std::process::exit(1);
            }
        }
        Ok(())
    });
    // Not dropped, which would wait for its blocking threads: a host name lookup of an
    // upstream dial runs on one, and a resolver that never answers would hold the exit past
    // the drain timeout (and past a supervisor's grace period) with no signal handled.
    runtime.shutdown_background();
    if let Some(path) = &written_pid_file {
        remove_own_pid_file(path);
    }
    result
}

/// Raises the soft limit on open files to the hard one, as Go programs (nats-server among
/// them) do at start: each proxied client takes two descriptors, and container runtimes
/// that leave the soft limit at 1024 would cap the edge at about 500 clients, with upstream
/// dials failing for want of a descriptor.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct passed, which lives on
    // this stack frame for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::debug!(
            from = soft,
            to = limit.rlim_max,
            "raised the open-file limit"
        );
    } else {
        // A hard limit of "unlimited" is above what the kernel allows: the soft one stays.
        tracing::debug!(
            limit = soft,
            error = %std::io::Error::last_os_error(),
            "could not raise the open-file limit"
        );
    }
}

/// Writes this process's id to `path` whole: into a new file beside it, then renamed over
/// it, so that a `nats-edge reload` reading it meanwhile never finds it empty. Where no file
/// can be made beside it (a pid file made ahead in a directory the service cannot write
/// to), it is written in place.
fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let id = format!("{}\n", std::process::id());
    // Unique per start: every instance is PID 1 in its container, and two may share a
    // volume.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}-{nanos:09}.tmp", std::process::id()));
    let partial = PathBuf::from(partial);
    let beside = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .and_then(|mut file| file.write_all(id.as_bytes()))
        .and_then(|()| std::fs::rename(&partial, path));
    match beside {
        Ok(()) => Ok(()),
        Err(_) => {
            let _ = std::fs::remove_file(&partial);
            std::fs::write(path, id)
        }
    }
}

/// Removes the pid file this process wrote, unless it names another process by now (a new
/// instance started while this one drained, whose `nats-edge reload` needs the file).
fn remove_own_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// One single-threaded runtime per worker thread (per core when `threads` is 0), each on a
/// thread of its own that lives as long as the process, busy-polling for `busy_poll` after
/// each read when that is not zero.
fn start_workers(
    threads: usize,
    busy_poll: std::time::Duration,
) -> anyhow::Result<Vec<tokio::runtime::Handle>> {
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
                .spawn(move || {
                    if busy_poll.is_zero() {
                        runtime.block_on(std::future::pending::<()>())
                    } else {
                        runtime.block_on(nats_edge::busy_poll::run(busy_poll))
                    }
                })
                .context("starting a worker thread")?;
            Ok(handle)
        })
        .collect()
}

/// A stop signal this soon after the first is the same request delivered twice.
const SAME_STOP: std::time::Duration = std::time::Duration::from_secs(1);

/// The signals `run` answers, held (blocked) from the process's start until their handlers
/// are installed, so that one sent meanwhile waits for them: SIGHUP's default action would
/// end the process (a `systemctl reload` right after the start), and a container's PID 1
/// loses a SIGTERM it has no handler for unless the signal is blocked (a pod deleted while
/// it starts would run until killed). Threads started meanwhile keep them blocked, so they
/// are delivered to the main thread, where the handlers' runtime runs.
#[cfg(unix)]
const HELD_SIGNALS: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT];

#[cfg(unix)]
fn hold_signals() {
    set_signal_mask(libc::SIG_BLOCK);
}

/// Once the handlers are installed: a signal held meanwhile is handled now.
#[cfg(unix)]
fn release_held_signals() {
    set_signal_mask(libc::SIG_UNBLOCK);
}

#[cfg(unix)]
fn set_signal_mask(how: libc::c_int) {
    // SAFETY: the set is initialised by sigemptyset before use, lives on this stack frame
    // for the whole call, and pthread_sigmask only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HELD_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

#[cfg(not(unix))]
fn hold_signals() {}

#[cfg(not(unix))]
fn release_held_signals() {}

/// What a signal asks for.
enum Signal {
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGTERM: drain and exit; ignored once the drain runs.
    Terminate,
    /// SIGINT (Ctrl-C): drain and exit; once the drain runs, exit at once.
    Interrupt,
}

/// SIGHUP, SIGTERM and SIGINT, installed before the edge starts so that none is missed
/// (SIGHUP's default action would kill the process).
struct Signals {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Signal {
        // In this order when several are pending, so that the same stop delivered twice
        // (SIGTERM and SIGINT at once) is read the same way every time.
        tokio::select! {
            biased;
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Signal {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}

/// Configuration reloads, one at a time, each on a blocking thread: reading and checking
/// the files (certificates, rule files, the probes of rewrite rules) takes a while, and the
/// main thread accepts connections, answers probes and handles a stop signal meanwhile (a
/// rule file on a stalled mount must not hold a SIGTERM until the kubelet's SIGKILL). A
/// SIGHUP while one runs starts one more after it, for files changed after it read them.
struct Reloads {
    edge: Arc<nats_edge::edge::EdgeShared>,
    file: Option<PathBuf>,
    overrides: Overrides,
    source: String,
    running: Option<tokio::task::JoinHandle<()>>,
    /// A SIGHUP came while one ran.
    again: bool,
}

impl Reloads {
    fn new(
        edge: Arc<nats_edge::edge::EdgeShared>,
        file: Option<PathBuf>,
        overrides: Overrides,
        source: String,
    ) -> Reloads {
        Reloads {
            edge,
            file,
            overrides,
            source,
            running: None,
            again: false,
        }
    }

    /// SIGHUP: reads the configuration again, with the same layering as at start-up, and
    /// applies it if every part accepts it; otherwise the running configuration stays.
    fn request(&mut self) {
        if self.running.is_some() {
            tracing::info!(
                file = self.source.as_str(),
                "SIGHUP during a reload: reloading again after it"
            );
            self.again = true;
            return;
        }
        tracing::info!(
            file = self.source.as_str(),
            "SIGHUP: reloading the configuration"
        );
        let edge = self.edge.clone();
        let file = self.file.clone();
        let overrides = self.overrides.clone();
        let source = self.source.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let reloader = &edge.reloader;
            match Config::load(file.as_deref(), &overrides) {
                Ok(config) => {
                    let _ = reloader.reload(config, &source);
                }
                Err(e) => reloader.failed(&source, &ReloadError::Config(e)),
            }
        }));
    }

    /// Resolves when the running reload ends (never while none runs); cancel-safe, as the
    /// reload's handle stays until then.
    async fn ended(&mut self) {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let done = running.await;
        self.running = None;
        // A reload that panicked may have applied part of the new configuration: the
        // process ends, as it would have with the reload on this thread.
        if let Err(e) = done {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        if std::mem::take(&mut self.again) {
            self.request();
        }
    }
}

/// Finds the running process by its pid file and sends it SIGHUP.
fn signal_reload(cli: &Cli, overrides: &Overrides) -> anyhow::Result<u32> {
    let path = match &cli.pid_file {
        Some(path) => path.clone(),
        None => Config::load_pid_file(cli.config.as_deref(), overrides)
            .context("reading pid_file from the configuration (or pass --pid-file)")?
            .context("no pid_file in the configuration: pass --pid-file")?,
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading pid file {}", path.display()))?;
    let pid: u32 = text.trim().parse().with_context(|| {
        format!(
            "pid file {}: `{}` is not a process id",
            path.display(),
            text.trim()
        )
    })?;
    // Zero would signal our own process group, and larger than i32 is not a process id.
    let target = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .with_context(|| format!("pid file {}: {pid} is not a process id", path.display()))?;
    // A pid file left by an edge that was killed may name a process id reused since: that
    // process must not get a SIGHUP, which ends most programs.
    // It is taken for nats-edge when its name or its executable is this program's; when
    // /proc does not say (mounted with hidepid), the signal goes as before.
    let name = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm"));
    let exe = |pid: &str| std::fs::read_link(format!("/proc/{pid}/exe"));
    let id = pid.to_string();
    match (name(&id), name("self")) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "pid file {}: no process {pid}: is nats-edge running (a stale pid file)?",
            path.display()
        ),
        (Ok(theirs), Ok(ours)) if theirs.trim() != ours.trim() => {
            let same_program = matches!((exe(&id), exe("self")), (Ok(a), Ok(b)) if a == b);
            if !same_program {
                anyhow::bail!(
                    "pid file {}: process {pid} is `{}`, not nats-edge: a stale pid file?",
                    path.display(),
                    theirs.trim()
                );
            }
        }
        _ => {}
    }
    // The signal is sent directly, not through a `kill` program: the container image has
    // none. SAFETY: kill(2) takes two integers and touches no memory of this process.
    if unsafe { libc::kill(target, libc::SIGHUP) } != 0 {
        let error = std::io::Error::last_os_error();
        anyhow::bail!("sending SIGHUP to {pid}: {error}: is nats-edge running?");
    }
    Ok(pid)
}

/// Warns about `NATS_EDGE_*` variables that look like a nested key written with one
/// underscore (`NATS_EDGE_DRAIN_TIMEOUT`), on stderr: `check`, and a configuration that
/// fails to load.
fn warn_mistyped_env_vars(config: Option<&Config>) {
    let seed_env = config
        .and_then(|c| c.auth.trusted_proxy.as_ref())
        .and_then(|p| p.seed_env.as_deref());
    for (variable, meant) in nats_edge::config::mistyped_env_vars(seed_env) {
        eprintln!(
            "nats-edge: warning: {variable} is not a configuration key and is ignored \
             (a nested key takes two underscores: {meant}?)"
        );
    }
}
