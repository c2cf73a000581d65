//! The processes a benchmark measures: nats-server, nats-edge in front of it, and HAProxy in
//! TCP mode in front of it when `haproxy` is installed; for the TLS and WebSocket workloads,
//! the same with TLS (certificates made at run time) and WebSocket listeners, compressing or
//! not. All on loopback.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A child process that is killed when dropped.
pub struct Proc {
    pub addr: SocketAddr,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time used so far, in seconds, from /proc (10 ms resolution).
    pub fn cpu_secs(&self) -> f64 {
        stat_cpu_secs(
            &std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default(),
        )
    }

    /// Resident set size in bytes, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

/// The machine's CPU time so far from the first line of `/proc/stat`, in clock ticks: idle
/// (idle plus iowait) and the total over all states, summed over every core.
pub fn machine_cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user and nice).
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (idle, ticks.iter().take(8).sum())
}

/// User plus system CPU time in seconds from the text of a `/proc/.../stat` file (a
/// process's or a thread's).
pub fn stat_cpu_secs(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts `cmd`, whose stderr (or stdout) is read until a line containing `ready` appears;
/// the rest of its output is drained in the background so the pipe never fills.
fn spawn_until(
    name: &'static str,
    mut cmd: Command,
    addr: SocketAddr,
    ready: &'static str,
) -> Proc {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(ready) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{name} did not become ready"));
    Proc { addr, child }
}

pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

pub fn start_nats_server() -> Proc {
    let port = free_port();
    let mut cmd = Command::new(nats_server_bin());
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    spawn_until(
        "nats-server",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "Server is ready",
    )
}

fn scratch_path() -> PathBuf {
    std::env::temp_dir().join(format!("nats-edge-bench-{}", std::process::id()))
}

/// A scratch directory for this run's generated files (configs, certificates, keys).
pub fn scratch_dir() -> PathBuf {
    let dir = scratch_path();
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Removes the scratch directory when dropped: hold it for as long as the run's processes.
pub struct Scratch;

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(scratch_path());
    }
}

/// nats-server with the config `body` (nats-server syntax) after a `listen` line for its
/// client port.
fn start_nats_server_conf(name: &str, body: &str) -> Proc {
    let port = free_port();
    let conf = scratch_dir().join(format!("{name}.conf"));
    std::fs::write(&conf, format!("listen: \"127.0.0.1:{port}\"\n{body}"))
        .expect("writing the nats-server config");
    let mut cmd = Command::new(nats_server_bin());
    cmd.arg("-c").arg(&conf);
    spawn_until(
        "nats-server",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "Server is ready",
    )
}

/// A plain nats-server that also serves WebSocket clients (`no_tls`); returns the server
/// and its WebSocket address.
pub fn start_nats_server_with_ws() -> (Proc, SocketAddr) {
    nats_server_ws("nats-ws", "")
}

/// A second nats-server whose WebSocket listener compresses (`compression: true`: it takes
/// permessage-deflate when a client offers it); returns the server and that address. One
/// server has one `websocket` block, so the compressed listener needs a server of its own.
pub fn start_nats_server_with_ws_compression() -> (Proc, SocketAddr) {
    nats_server_ws("nats-ws-deflate", "  compression: true\n")
}

fn nats_server_ws(name: &str, extra: &str) -> (Proc, SocketAddr) {
    let ws_port = free_port();
    let server = start_nats_server_conf(
        name,
        &format!("websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n{extra}}}\n"),
    );
    (server, SocketAddr::from(([127, 0, 0, 1], ws_port)))
}

/// A nats-server whose client port speaks TLS first (`handshake_first: true`).
pub fn start_nats_server_tls(certs: &Certs) -> Proc {
    start_nats_server_conf(
        "nats-tls",
        &format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  handshake_first: true\n}}\n",
            certs.cert.display().to_string(),
            certs.key.display().to_string()
        ),
    )
}

/// A CA and a server certificate for 127.0.0.1 (ECDSA P-256), written as PEM files, and a
/// client config that trusts the CA.
pub struct Certs {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate followed by its key, as HAProxy's `crt` wants it.
    pub combined: PathBuf,
    /// Offers TLS 1.3 with AES-128-GCM only, so every target runs the same cipher whatever
    /// its own preference order.
    pub client: Arc<rustls::ClientConfig>,
}

pub fn make_certs() -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let dir = scratch_dir();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "nats-edge bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("a CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().expect("a server key");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .expect("the server certificate");
    let certs = Certs {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        combined: dir.join("server-combined.pem"),
        client: client_config(ca_cert.der().clone()),
    };
    let write = |path: &Path, text: String| std::fs::write(path, text).expect("writing a PEM");
    write(&certs.cert, cert.pem());
    write(&certs.key, key.serialize_pem());
    write(
        &certs.combined,
        format!("{}{}", cert.pem(), key.serialize_pem()),
    );
    certs
}

fn client_config(ca: rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("the CA as a root");
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with AES-128-GCM")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The edge's command line: listen on `port`, forward to `upstream`, log only the
/// `listening` line (which tells that it is ready) and warnings.
fn edge_args(port: u16, upstream: SocketAddr) -> [String; 6] {
    [
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--upstream".into(),
        format!("nats://{upstream}"),
        "--log-level".into(),
        "nats_edge::edge=info,warn".into(),
    ]
}

/// nats-edge in front of `upstream`, with extra `NATS_EDGE_*` settings.
pub fn start_edge(bin: &str, upstream: SocketAddr, env: &[(&str, &str)]) -> Proc {
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(edge_args(port, upstream));
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_until(
        "nats-edge",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "listening",
    )
}

/// nats-edge in front of `upstream` with one listener named `bench-<name>` of `kind` and
/// its `tls` or `ws` table (inline TOML, or empty), from a config file.
pub fn start_edge_listener(
    bin: &str,
    upstream: SocketAddr,
    name: &str,
    kind: &str,
    table: &str,
) -> Proc {
    let port = free_port();
    let toml = format!(
        "[[listeners]]\nname = \"bench-{name}\"\nbind = \"127.0.0.1:{port}\"\nkind = \"{kind}\"\n\
         {table}\n[upstream]\nurls = [\"nats://{upstream}\"]\n"
    );
    let file = scratch_dir().join(format!("edge-{name}.toml"));
    std::fs::write(&file, toml).expect("writing the edge config");
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&file)
        .args(["--log-level", "nats_edge::edge=info,warn"]);
    spawn_until(
        "nats-edge",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "listening",
    )
}

/// nats-edge in front of `upstream` checking every PUB and SUB against ACL rules
/// (`benches/acl.toml`: the generator's subjects allowed, deny entries beside them).
pub fn start_edge_acl(bin: &str, upstream: SocketAddr) -> Proc {
    let (key, rules) = acl_env();
    start_edge(bin, upstream, &[(key, &rules)])
}

/// The environment that turns on the benchmark's ACL rules.
pub fn acl_env() -> (&'static str, String) {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/acl.toml");
    ("NATS_EDGE_AUTH__RULES", format!("[{file:?}]"))
}

/// nats-edge in front of `upstream` with the shipped tenant mount (every subject under
/// `tenant.acme.`) and the default tagging rules.
pub fn start_edge_rewrite_tag(bin: &str, upstream: SocketAddr) -> Proc {
    let env = rewrite_tag_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    start_edge(bin, upstream, &env)
}

/// The environment that turns on the shipped tenant mount and the default tagging rules.
pub fn rewrite_tag_env() -> [(&'static str, String); 3] {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/filters/rules");
    [
        (
            "NATS_EDGE_REWRITE__SETS__BENCH",
            format!("{rules}/rewrite/tenant-mount.toml"),
        ),
        ("NATS_EDGE_REWRITE__DEFAULT", "bench".to_string()),
        (
            "NATS_EDGE_TAGGING__FILE",
            format!("{rules}/tagging/default.toml"),
        ),
    ]
}

/// HAProxy in TCP mode in front of `upstream`, when it is installed.
pub fn start_haproxy(upstream: SocketAddr) -> Option<Proc> {
    haproxy(upstream, "plain", "", "")
}

/// The same HAProxy with its own `busy-polling` on, when it is installed: the fair
/// comparison for a busy-polling edge. One thread: HAProxy's busy-polling never sleeps, and
/// two spinning threads would hold both cores of a two-core machine.
pub fn start_haproxy_busy_polling(upstream: SocketAddr) -> Option<Proc> {
    haproxy(upstream, "busy", "  nbthread 1\n  busy-polling\n", "")
}

/// HAProxy terminating TLS (`bind ... ssl crt`, `mode tcp`) in front of the plain
/// `upstream`, when it is installed.
pub fn start_haproxy_tls(upstream: SocketAddr, certs: &Certs) -> Option<Proc> {
    haproxy(
        upstream,
        "tls",
        "",
        &format!(" ssl crt {}", certs.combined.display()),
    )
}

/// HAProxy with `global` lines added to the defaults (each ending in a newline) and
/// options added to its `bind` line.
fn haproxy(upstream: SocketAddr, name: &str, global: &str, bind_options: &str) -> Option<Proc> {
    let bin = which("haproxy")?;
    let port = free_port();
    let cfg = scratch_dir().join(format!("haproxy-{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 9900\n  log stderr format raw local0 notice\n{global}\
defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
frontend nats\n  bind 127.0.0.1:{port}{bind_options}\n  default_backend upstream\n\
backend upstream\n  server nats {upstream}\n"
        ),
    )
    .ok()?;
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&cfg);
    // HAProxy prints nothing when it starts cleanly: wait for the port instead.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let proc = Proc { addr, child };
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some(proc);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

impl Proc {
    /// Asks the process to exit (SIGTERM) and waits for it, so tools such as callgrind can
    /// write their output.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// nats-edge under `valgrind --tool=callgrind`, writing its profile to `out`.
pub fn start_edge_under_callgrind(
    bin: &str,
    upstream: SocketAddr,
    out: &std::path::Path,
    env: &[(&str, String)],
) -> Option<Proc> {
    which("valgrind")?;
    let port = free_port();
    let mut cmd = Command::new("valgrind");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // One thread: the instruction count then does not depend on how worker threads happened
    // to park and steal work during the run.
    cmd.env("NATS_EDGE_WORKER_THREADS", "1");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin)
        .args(edge_args(port, upstream));
    Some(spawn_until(
        "nats-edge under callgrind",
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "listening",
    ))
}
