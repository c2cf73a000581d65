//! Shared harness for the integration tests: a real nats-server per test, an edge in front of
//! it, and a raw-socket client that speaks bytes.
//!
//! Nothing here synchronises with sleeps. Processes are ready when their log says so, clients
//! are in step after a PING/PONG round trip, and every wait has an upper bound so a broken
//! proxy fails a test instead of hanging it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nats_edge::{Config, Edge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The upper bound of any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    within_for(WAIT, what, fut).await
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within_for<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Runs blocking harness code without starving the runtime the edge is running on.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The nats-server executable: `$NATS_SERVER_BIN`, or `nats-server` from `PATH`.
pub fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_string())
}

/// A free loopback port: bound, then released.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A loopback port held bound but not listening: a connect to it is refused, and nothing
/// else (another test's server) can take it while this lives, as a port merely found free
/// could be.
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl DeadPort {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

#[allow(dead_code)]
pub fn dead_port() -> DeadPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind an ephemeral port");
    let port = socket.local_addr().expect("its address").port();
    DeadPort {
        _socket: socket,
        port,
    }
}

/// Lines a child process wrote to stderr, collected by a thread so the pipe never fills.
#[derive(Default)]
pub struct LogLines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl LogLines {
    /// Starts draining `stream` into a new collection.
    pub fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<LogLines> {
        let log = Arc::new(LogLines::default());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut guard = sink.lines.lock().unwrap();
                guard.0.push(line);
                sink.changed.notify_all();
            }
            sink.lines.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        log
    }

    /// Waits for a line (at or after line `from`) for which `pick` returns something.
    /// Returns it with the index of the line, or `None` when the stream ended or `limit`
    /// passed first.
    pub fn wait_for<T>(
        &self,
        from: usize,
        limit: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Option<(usize, T)> {
        let deadline = Instant::now() + limit;
        let mut next = from;
        let mut guard = self.lines.lock().unwrap();
        loop {
            while next < guard.0.len() {
                if let Some(found) = pick(&guard.0[next]) {
                    return Some((next, found));
                }
                next += 1;
            }
            if guard.1 {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = self.changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything collected so far, for failure messages.
    pub fn dump(&self) -> String {
        self.lines.lock().unwrap().0.join("\n")
    }
}

/// The port number following `marker` in a log line such as
/// `Listening for client connections on 127.0.0.1:4222`.
fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest
        .rsplit(':')
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Options for one nats-server.
#[derive(Default, Clone)]
pub struct ServerOpts {
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// The text of a config file passed with `-c`.
    pub config: Option<String>,
}

/// A nats-server process on an ephemeral loopback port, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    log: Arc<LogLines>,
    port: u16,
    cluster_port: Option<u16>,
    opts: ServerOpts,
    config_file: Option<tempfile::NamedTempFile>,
}

impl NatsServer {
    /// A plain server.
    pub fn start() -> NatsServer {
        Self::start_opts(ServerOpts::default())
    }

    /// A server with extra command-line arguments.
    pub fn start_with_args(args: &[&str]) -> NatsServer {
        Self::start_opts(ServerOpts {
            args: args.iter().map(|s| s.to_string()).collect(),
            config: None,
        })
    }

    /// A server with a config file (nats-server syntax), e.g. `max_payload: 2048`.
    pub fn start_with_config(config: &str) -> NatsServer {
        Self::start_opts(ServerOpts {
            args: Vec::new(),
            config: Some(config.to_string()),
        })
    }

    pub fn start_opts(opts: ServerOpts) -> NatsServer {
        let config_file = opts.config.as_ref().map(|text| {
            let mut f = tempfile::Builder::new()
                .suffix(".conf")
                .tempfile()
                .expect("create a nats-server config file");
            f.write_all(text.as_bytes()).expect("write the config file");
            f.flush().unwrap();
            f
        });
        let mut server = NatsServer {
            child: None,
            log: Arc::new(LogLines::default()),
            port: 0,
            cluster_port: None,
            opts,
            config_file,
        };
        server.spawn(None);
        server
    }

    /// Two routed servers, each started with `extra_args`. Returns once the first one
    /// advertises the second in its INFO `connect_urls`, so the cluster really is formed.
    pub async fn start_cluster_pair() -> (NatsServer, NatsServer) {
        let cluster = [
            "--cluster_name",
            "edge-test",
            "--cluster",
            "nats://127.0.0.1:-1",
        ];
        let a = Self::start_with_args(&cluster);
        let route = format!("nats://127.0.0.1:{}", a.cluster_port.expect("route port"));
        let mut b_args = cluster.to_vec();
        b_args.extend(["--routes", &route]);
        let b = Self::start_with_args(&b_args);

        // Wait, on a direct connection to A, for an INFO that lists B.
        let want = format!("127.0.0.1:{}", b.port());
        let mut raw = RawConn::connect(a.addr()).await;
        let first = raw.read_info().await;
        if !info_lists(&first, &want) {
            raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
                .await;
            within("the cluster INFO listing the second server", async {
                loop {
                    let line = raw.read_line().await.expect("server closed");
                    if let Some(json) = line.strip_prefix("INFO ") {
                        let info: serde_json::Value = serde_json::from_str(json).unwrap();
                        if info_lists(&info, &want) {
                            break;
                        }
                    }
                }
            })
            .await;
        }
        (a, b)
    }

    fn spawn(&mut self, port: Option<u16>) {
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-a").arg("127.0.0.1");
        match port {
            Some(p) => cmd.arg("-p").arg(p.to_string()),
            None => cmd.arg("-p").arg("-1"),
        };
        cmd.args(&self.opts.args);
        if let Some(f) = &self.config_file {
            cmd.arg("-c").arg(f.path());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nats_server_bin()));
        let log = LogLines::collect(child.stderr.take().unwrap());
        let wants_routes = self.opts.args.iter().any(|a| a == "--cluster");
        let ready = blocking(|| {
            let (at, port) = log.wait_for(0, WAIT, |l| {
                port_after(l, "Listening for client connections on ")
            })?;
            log.wait_for(at, WAIT, |l| l.contains("Server is ready").then_some(()))?;
            let cluster_port = if wants_routes {
                Some(
                    log.wait_for(0, WAIT, |l| {
                        port_after(l, "Listening for route connections on ")
                    })?
                    .1,
                )
            } else {
                None
            };
            Some((port, cluster_port))
        });
        match ready {
            Some((p, cluster_port)) => {
                self.port = p;
                self.cluster_port = self.cluster_port.or(cluster_port);
                self.log = log;
                self.child = Some(child);
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server did not become ready:\n{}", log.dump());
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port of the server's monitoring listener (started with `-m -1`, which picks a
    /// free one), from its log: a port found free first and bound later could be taken by
    /// another test in between.
    pub fn monitor_port(&self) -> u16 {
        let log = self.log.clone();
        blocking(move || log.wait_for(0, WAIT, |l| port_after(l, "Starting http monitor on ")))
            .map(|(_, port)| port)
            .unwrap_or_else(|| panic!("no monitoring listener:\n{}", self.log.dump()))
    }

    /// The port of the server's websocket listener (a config with `websocket { listen:
    /// "127.0.0.1:-1" }`), from its log.
    pub fn websocket_port(&self) -> u16 {
        let log = self.log.clone();
        blocking(move || {
            log.wait_for(0, WAIT, |l| {
                port_after(l, "Listening for websocket clients on ")
            })
        })
        .map(|(_, port)| port)
        .unwrap_or_else(|| panic!("no websocket listener:\n{}", self.log.dump()))
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Like [`metric`], failing the test (with the whole exposition) when the sample is absent.
    pub fn sample(exposition: &str, name: &str) -> f64 {
        metric(exposition, name).unwrap_or_else(|| panic!("no sample {name}:\n{exposition}"))
    }

    /// Replaces the text of the server's config file (started with one), for a reload.
    pub fn rewrite_config(&self, text: &str) {
        let file = self
            .config_file
            .as_ref()
            .expect("a server started with a config file");
        std::fs::write(file.path(), text).expect("rewrite the config file");
    }

    /// Sends a signal by name (`USR2`, `HUP`, ...) to the running server.
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// The log of the running (or last) process.
    pub fn log(&self) -> &Arc<LogLines> {
        &self.log
    }

    /// Kills the server and waits for it to exit. Its port stays reserved for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (if running) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(Some(self.port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn info_lists(info: &serde_json::Value, addr: &str) -> bool {
    info["connect_urls"]
        .as_array()
        .is_some_and(|urls| urls.iter().any(|u| u.as_str() == Some(addr)))
}

/// Starts an edge with one listener (`default`, on an ephemeral loopback port) in front of
/// `upstream_urls`. `extra_toml` is appended to the document, e.g. `"[limits]\nmax_payload = 1024"`.
pub async fn start_edge(upstream_urls: &[String], extra_toml: &str) -> Edge {
    start_edge_toml(&edge_toml(upstream_urls, "", extra_toml)).await
}

/// `[upstream]` text for a test whose URLs must be tried in the listed order (a dead or
/// silent one first): otherwise each session starts at the next URL in turn.
#[allow(dead_code)]
pub const IN_ORDER: &str = "dont_randomize = true\n";

/// The TOML [`start_edge`] uses; `listener_extra` goes into the `[[listeners]]` table.
pub fn edge_toml(upstream_urls: &[String], listener_extra: &str, extra_toml: &str) -> String {
    let urls = upstream_urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n{listener_extra}\n\
         [upstream]\nurls = [{urls}]\n{extra_toml}\n"
    )
}

/// Starts an edge from a whole TOML document.
pub async fn start_edge_toml(toml: &str) -> Edge {
    let config =
        Config::from_toml_str(toml).unwrap_or_else(|e| panic!("bad test config: {e}\n---\n{toml}"));
    within("the edge to start", Edge::start(config))
        .await
        .expect("edge starts")
}

/// Splits `INFO {...}\r\n` off the front of what a client received.
#[allow(dead_code)]
pub fn split_info(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or_else(|| panic!("no INFO line: {}", show(bytes)));
    let line = std::str::from_utf8(&bytes[..end]).unwrap();
    let json = line
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("not an INFO: {line}"));
    (serde_json::from_str(json).unwrap(), &bytes[end + 2..])
}

/// What a client of the edge's plain listener at `addr` received before the close, when the
/// edge ended the connection with an error before any session: the INFO first, as
/// nats-server sends it (the listener's address; a fresh nonce where the upstream sends one
/// or none was reached yet), then the error. Returns the error's bytes.
#[allow(dead_code)]
pub async fn error_after_info(addr: SocketAddr) -> String {
    let mut raw = RawConn::connect(addr).await;
    let got = raw.read_to_close().await;
    let (info, rest) = split_info(&got);
    assert_eq!(info["port"], addr.port(), "{info}");
    String::from_utf8_lossy(rest).into_owned()
}

/// Connects to the edge at `addr` and expects what a client gets when no upstream answers:
/// an INFO, `-ERR 'Upstream Unavailable...'`, then the close.
#[allow(dead_code)]
pub async fn expect_upstream_unavailable(addr: SocketAddr) {
    let error = error_after_info(addr).await;
    assert!(error.starts_with("-ERR 'Upstream Unavailable"), "{error:?}");
}

/// The address of the edge's `default` listener.
pub fn edge_addr(edge: &Edge) -> SocketAddr {
    edge.addr("default").expect("a default listener")
}

/// `nats://` URL of the edge's `default` listener.
pub fn edge_url(edge: &Edge) -> String {
    format!("nats://{}", edge_addr(edge))
}

/// An edge in front of a fresh nats-server; keep both alive for the test.
pub async fn server_and_edge(extra_toml: &str) -> (NatsServer, Edge) {
    let server = NatsServer::start();
    let edge = start_edge(&[server.url()], extra_toml).await;
    (server, edge)
}

/// A command for the `nats-edge` binary, with no `NATS_EDGE_*` variables inherited from the
/// test's own environment.
pub fn nats_edge_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nats-edge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NATS_EDGE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The `nats-edge` binary running as its own process (so its memory can be measured), killed
/// on drop.
pub struct EdgeProcess {
    child: Option<Child>,
    log: Arc<LogLines>,
    addr: SocketAddr,
}

impl EdgeProcess {
    /// Runs `nats-edge ARGS --log-format json` with extra environment variables and waits for
    /// its `listening` log line, which carries the bound address (so `--listen 127.0.0.1:0`
    /// works).
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> EdgeProcess {
        let mut cmd = nats_edge_command();
        cmd.args(args).envs(envs.iter().copied());
        Self::spawn_command(cmd)
    }

    /// Like [`EdgeProcess::spawn`], for a command that runs `nats-edge` with its arguments
    /// (through a wrapper such as `prlimit`); `--log-format json` is added to them.
    pub fn spawn_command(mut cmd: Command) -> EdgeProcess {
        cmd.args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run nats-edge");
        let log = LogLines::collect(child.stderr.take().unwrap());
        let addr = blocking(|| {
            log.wait_for(0, WAIT, |line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                if v["message"] != "listening" {
                    return None;
                }
                v["addr"].as_str()?.parse::<SocketAddr>().ok()
            })
        });
        match addr {
            Some((_, addr)) => EdgeProcess {
                child: Some(child),
                log,
                addr,
            },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-edge did not start listening:\n{}", log.dump());
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nats-edge is running").id()
    }

    pub fn log(&self) -> &Arc<LogLines> {
        &self.log
    }

    /// Resident set size in bytes, from `/proc/<pid>/status` (`VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        send_signal(self.pid(), "TERM");
        self.wait_exit().await
    }

    /// Waits (bounded) for the process to exit on its own; kills it if it does not.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("nats-edge is running");
        let pid = child.id();
        let waiter = tokio::task::spawn_blocking(move || child.wait());
        match tokio::time::timeout(WAIT, waiter).await {
            Ok(status) => status.expect("waiter").expect("wait for nats-edge"),
            Err(_) => {
                signal_if_running(pid, libc::SIGKILL);
                panic!(
                    "nats-edge did not exit within {WAIT:?}:\n{}",
                    self.log.dump()
                );
            }
        }
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// async-nats connect options used by the tests: bounded, fast to reconnect.
pub fn client_options() -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(|_| Duration::from_millis(20))
}

/// An async-nats client connected to `url` (usually the edge).
pub async fn client(url: &str) -> async_nats::Client {
    within("async-nats connect", client_options().connect(url))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A round trip through the server, bounded: returns once everything `client` sent before
/// has been processed by the server and everything the server queued for `client` before that
/// has been received. (async-nats' own `flush` only writes the socket; it does not wait for
/// the server.) Done with a message to a private inbox this client subscribes to.
pub async fn round_trip(client: &async_nats::Client) {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = within(
        "subscribe the round-trip inbox",
        client.subscribe(inbox.clone()),
    )
    .await
    .expect("subscribe");
    within(
        "publish the round-trip marker",
        client.publish(inbox, "".into()),
    )
    .await
    .expect("publish");
    within("the round-trip marker", sub.next())
        .await
        .expect("round-trip subscription ended");
}

/// The next message of `sub`, bounded.
pub async fn next_msg(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    use futures::StreamExt;
    within("the next message", sub.next())
        .await
        .expect("subscription ended")
}

/// Every message already delivered to `sub`, without waiting for more. Call after
/// [`round_trip`] to see exactly what the server sent up to that point.
pub fn drain_ready(sub: &mut async_nats::Subscriber) -> Vec<async_nats::Message> {
    use futures::{FutureExt, StreamExt};
    let mut out = Vec::new();
    // Unconstrained: tokio's cooperative budget would otherwise report Pending after
    // ~128 ready messages.
    while let Some(Some(m)) = tokio::task::unconstrained(sub.next()).now_or_never() {
        out.push(m);
    }
    out
}

/// What a raw connection got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) rather than the sentinel arriving.
    pub closed: bool,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Printable bytes for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

enum Fill {
    Data,
    Closed,
    TimedOut,
}

/// A raw TCP client speaking NATS bytes, with every read bounded by a timeout.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    timeout: Duration,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within("raw connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        RawConn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: Vec::new(),
            eof: false,
            timeout: WAIT,
        }
    }

    /// The socket, for a test that reads and writes at once; bytes already read are
    /// dropped.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Connects and reads the server's INFO.
    pub async fn connect_info(addr: SocketAddr) -> (RawConn, serde_json::Value) {
        let mut raw = Self::connect(addr).await;
        let info = raw.read_info().await;
        (raw, info)
    }

    /// Sets the bound on each wait of this connection.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads more bytes into the buffer, waiting at most `limit`.
    async fn try_fill(&mut self, limit: Duration) -> Fill {
        if self.eof {
            return Fill::Closed;
        }
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout(limit, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Fill::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                Fill::Closed
            }
            Ok(Ok(_)) => Fill::Data,
        }
    }

    /// Reads more bytes into the buffer; false at EOF or reset. Panics after the timeout.
    async fn fill(&mut self) -> bool {
        match self.try_fill(self.timeout).await {
            Fill::Data => true,
            Fill::Closed => false,
            Fill::TimedOut => panic!(
                "raw read timed out after {:?}; received so far: {}",
                self.timeout,
                show(&self.buf)
            ),
        }
    }

    /// One line without its CRLF; `None` if the peer closed first.
    pub async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\n") {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                return Some(line.trim_end_matches(['\r', '\n']).to_string());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads the next line, which must be an INFO, and parses its JSON.
    pub async fn read_info(&mut self) -> serde_json::Value {
        let line = self
            .read_line()
            .await
            .expect("connection closed before INFO");
        let json = line
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("expected INFO, got {line:?}"));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("INFO JSON {json:?}: {e}"))
    }

    /// Writes `bytes`. A peer that already closed is not an error here; reads will show it.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = within("raw write", self.stream.write_all(bytes)).await;
    }

    /// Closes the writing half (sends FIN); reading goes on.
    pub async fn shutdown_write(&mut self) {
        let _ = within("raw shutdown", self.stream.shutdown()).await;
    }

    /// Reads until `needle` has arrived, returning everything up to and including it, or
    /// until the peer closes, returning everything received. Panics after the timeout.
    pub async fn read_until(&mut self, needle: &[u8]) -> Reply {
        let limit = self.timeout;
        match self.try_read_until(needle, limit).await {
            Some(reply) => reply,
            None => panic!(
                "raw read timed out after {limit:?} waiting for {}; received so far: {}",
                show(needle),
                show(&self.buf)
            ),
        }
    }

    /// Like [`RawConn::read_until`], but `None` when `limit` passes first (what arrived stays
    /// buffered).
    pub async fn try_read_until(&mut self, needle: &[u8], limit: Duration) -> Option<Reply> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = find(&self.buf, needle) {
                let bytes = self.buf.drain(..i + needle.len()).collect();
                return Some(Reply {
                    bytes,
                    closed: false,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_fill(left).await {
                Fill::Data => {}
                Fill::Closed => {
                    return Some(Reply {
                        bytes: std::mem::take(&mut self.buf),
                        closed: true,
                    })
                }
                Fill::TimedOut => return None,
            }
        }
    }

    /// Reads until the peer closes; returns what arrived.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Sends `bytes` followed by `PING`, and reads until the `PONG` that answers it or until
    /// the peer closes. The returned bytes exclude that final `PONG`. Use when `bytes` holds
    /// no PING of its own (see [`RawConn::exchange`] otherwise).
    pub async fn roundtrip(&mut self, bytes: &[u8]) -> Reply {
        let mut out = bytes.to_vec();
        out.extend_from_slice(b"PING\r\n");
        self.send(&out).await;
        let mut reply = self.read_until(b"PONG\r\n").await;
        if !reply.closed {
            reply.bytes.truncate(reply.bytes.len() - b"PONG\r\n".len());
        }
        reply
    }

    /// Sends `bytes`, then a sentinel (a message to a private subject, then PING), and reads
    /// until the sentinel's message and the PONG after it arrive, or until the peer closes.
    /// Works whatever `bytes` holds (its own PINGs included), as long as it leaves the parser
    /// between commands. The sentinel's own bytes are cut from the reply. Panics after the
    /// timeout.
    pub async fn exchange(&mut self, bytes: &[u8]) -> Reply {
        let limit = self.timeout;
        match self.try_exchange(bytes, limit).await {
            Some(reply) => reply,
            None => panic!(
                "no sentinel and no close within {limit:?}; received: {}",
                show(&self.buf)
            ),
        }
    }

    /// Like [`RawConn::exchange`], but `None` when neither the sentinel nor a close arrives
    /// within `limit`.
    pub async fn try_exchange(&mut self, bytes: &[u8], limit: Duration) -> Option<Reply> {
        const SENTINEL: &[u8] =
            b"SUB _edge_sentinel 99999\r\nPUB _edge_sentinel 2\r\nZZ\r\nPING\r\n";
        const MARK: &[u8] = b"MSG _edge_sentinel 99999 2\r\nZZ\r\n";
        let deadline = Instant::now() + limit;
        let mut out = bytes.to_vec();
        out.extend_from_slice(SENTINEL);
        self.send(&out).await;
        let mut reply = self.try_read_until(MARK, limit).await?;
        if reply.closed {
            return Some(reply);
        }
        reply.bytes.truncate(reply.bytes.len() - MARK.len());
        let left = deadline.saturating_duration_since(Instant::now());
        let rest = self.try_read_until(b"PONG\r\n", left).await?;
        if rest.closed {
            reply.bytes.extend_from_slice(&rest.bytes);
            reply.closed = true;
        }
        Some(reply)
    }

    /// True if the peer closes before `limit` passes (reading and keeping data meanwhile).
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_fill(left).await {
                Fill::Data => continue,
                Fill::Closed => return true,
                Fill::TimedOut => return false,
            }
        }
    }

    /// Takes whatever is buffered.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Whether the connection is still open: a PING is answered by a PONG.
    pub async fn is_open(&mut self) -> bool {
        !self.roundtrip(b"").await.closed
    }
}

/// One HTTP/1.1 GET (with `Connection: close`): the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(addr, "GET", path).await;
    (status, body)
}

/// One HTTP/1.1 request without a body (with `Connection: close`): the status code, the
/// head (status line and headers) and the body.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    within(&format!("{method} {path}"), async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        (status, head.to_string(), body.to_string())
    })
    .await
}

/// Polls `GET path` until `pick` accepts the response, for at most [`WAIT`].
pub async fn poll_http<T>(
    addr: SocketAddr,
    path: &str,
    mut pick: impl FnMut(u16, &str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(addr, path).await;
        if let Some(found) = pick(status, &body) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: still {status} after {WAIT:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one sample in a Prometheus exposition, e.g.
/// `metric(&text, "nats_edge_messages_total{direction=\"client_to_upstream\"}")`.
pub fn metric(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Like [`metric`], failing the test (with the whole exposition) when the sample is absent.
pub fn sample(exposition: &str, name: &str) -> f64 {
    metric(exposition, name).unwrap_or_else(|| panic!("no sample {name}:\n{exposition}"))
}

/// Sends a signal by name (`TERM`, `HUP`, ...) to a process, with kill(2) itself: a
/// minimal system may have no `kill` program.
pub fn send_signal(pid: u32, name: &str) {
    let signal = match name {
        "TERM" => libc::SIGTERM,
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        other => panic!("no signal named {other}"),
    };
    let target = libc::pid_t::try_from(pid).expect("a process id");
    // SAFETY: kill(2) takes plain integers; the process is one the test started.
    let rc = unsafe { libc::kill(target, signal) };
    assert_eq!(
        rc,
        0,
        "kill -{name} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends `signal` to a process that may be gone already (a cleanup before a test fails).
pub fn signal_if_running(pid: u32, signal: libc::c_int) {
    if let Ok(target) = libc::pid_t::try_from(pid) {
        // SAFETY: as in `send_signal`; a process already gone makes it fail, harmlessly.
        let _ = unsafe { libc::kill(target, signal) };
    }
}

impl EdgeProcess {
    /// The admin server's address, from its `admin listening` log line.
    pub fn admin_addr(&self) -> SocketAddr {
        blocking(|| {
            self.log.wait_for(0, WAIT, |line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                if v["message"] != "admin listening" {
                    return None;
                }
                v["addr"].as_str()?.parse::<SocketAddr>().ok()
            })
        })
        .map(|(_, addr)| addr)
        .unwrap_or_else(|| panic!("no admin listening line:\n{}", self.log.dump()))
    }

    /// Waits (bounded) for a JSON log line whose `message` is `message`, from line `from` on.
    pub fn wait_log(&self, from: usize, message: &str) -> (usize, serde_json::Value) {
        blocking(|| {
            self.log.wait_for(from, WAIT, |line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == message).then_some(v)
            })
        })
        .unwrap_or_else(|| panic!("no {message:?} log line:\n{}", self.log.dump()))
    }
}

/// The value of one sample (`name` or `name{labels}`) in the edge's Prometheus exposition;
/// 0 when absent.
#[allow(dead_code)]
pub fn metric_value(edge: &Edge, sample: &str) -> f64 {
    let text = edge.metrics().encode().expect("metrics encode");
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
