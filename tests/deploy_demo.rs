//! deploy/demo.sh, the README's quick start, run for real (on free ports, with the binary under
//! test): a client works through it, Ctrl-C (SIGINT to the script's whole process group, as a
//! terminal sends it) drains nats-edge while nats-server still serves and then stops both,
//! SIGTERM to the script alone does the same, and a port in use is refused before anything
//! starts.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

/// A running `bash deploy/demo.sh`, leader of its own process group; killed (the whole group
/// and the processes it reported) on drop.
struct Demo {
    child: Option<Child>,
    stdout: Arc<LogLines>,
    stderr: Arc<LogLines>,
    edge_port: u16,
    server_port: u16,
    server_pid: i32,
    edge_pid: i32,
}

fn demo_command(edge_port: u16, server_port: u16) -> Command {
    use std::os::unix::process::CommandExt;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .env("DEMO_PORT", edge_port.to_string())
        .env("DEMO_SERVER_PORT", server_port.to_string())
        .env("DEMO_BIN", env!("CARGO_BIN_EXE_nats-edge"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // As a shell runs a command in a terminal: a process group of its own.
        .process_group(0);
    // And with SIGINT and SIGHUP as a terminal's shell leaves them: a job started in the
    // background by a non-interactive shell inherits them ignored, and bash cannot trap a
    // signal it started with ignored, so the demo's Ctrl-C trap would never run.
    // SAFETY: `signal` is async-signal-safe, and nothing else runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NATS_EDGE_") {
            cmd.env_remove(key);
        }
    }
    // The demo takes nats-server from PATH: the harness's own, when NATS_SERVER_BIN names one.
    let server = std::path::PathBuf::from(nats_server_bin());
    if let Some(dir) = server.parent().filter(|d| !d.as_os_str().is_empty()) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).expect("a valid PATH"));
    }
    cmd
}

/// The pid in a `demo: <what> is running (pid N)` line.
fn reported_pid(log: &LogLines, what: &str) -> Option<i32> {
    let marker = format!("demo: {what} is running (pid ");
    log.wait_for(0, WAIT, |line| {
        line.strip_prefix(&marker)?
            .trim_end_matches(')')
            .parse()
            .ok()
    })
    .map(|(_, pid)| pid)
}

impl Demo {
    fn start() -> Demo {
        let (edge_port, server_port) = (free_port(), free_port());
        let mut child = demo_command(edge_port, server_port)
            .spawn()
            .expect("run bash deploy/demo.sh");
        let stdout = LogLines::collect(child.stdout.take().unwrap());
        let stderr = LogLines::collect(child.stderr.take().unwrap());
        let mut demo = Demo {
            child: Some(child),
            stdout,
            stderr,
            edge_port,
            server_port,
            server_pid: 0,
            edge_pid: 0,
        };
        demo.server_pid = reported_pid(&demo.stderr, "nats-server")
            .unwrap_or_else(|| panic!("nats-server did not start:\n{}", demo.dump()));
        demo.edge_pid = reported_pid(&demo.stderr, "nats-edge")
            .unwrap_or_else(|| panic!("nats-edge did not start:\n{}", demo.dump()));
        let listening = format!("127.0.0.1:{edge_port}");
        demo.stderr
            .wait_for(0, WAIT, |l| {
                (l.contains("listening") && l.contains(&listening)).then_some(())
            })
            .unwrap_or_else(|| panic!("nats-edge is not listening:\n{}", demo.dump()));
        demo
    }

    fn pgid(&self) -> i32 {
        self.child.as_ref().expect("the demo is running").id() as i32
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.edge_port)
    }

    fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.dump(),
            self.stderr.dump()
        )
    }

    /// Waits (bounded) for the script to exit.
    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the demo is running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the demo") {
                return status;
            }
            if Instant::now() >= deadline {
                self.child = Some(child);
                panic!(
                    "deploy/demo.sh did not exit within {limit:?}:\n{}",
                    self.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After the script has exited: neither process is left, nothing listens on either port.
    fn assert_all_stopped(&self) {
        for (what, pid) in [
            ("nats-server", self.server_pid),
            ("nats-edge", self.edge_pid),
        ] {
            assert!(
                !alive(pid),
                "{what} (pid {pid}) outlived the demo:\n{}",
                self.dump()
            );
        }
        for port in [self.edge_port, self.server_port] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "something still listens on 127.0.0.1:{port}:\n{}",
                self.dump()
            );
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(-(child.id() as i32), libc::SIGKILL);
            let _ = child.wait();
        }
        for pid in [self.server_pid, self.edge_pid] {
            if pid > 0 && alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    unsafe { libc::kill(pid, sig) };
}

/// `text` without the terminal colour sequences of the edge's text log.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `pid` is a process that has not exited (a zombie has exited).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_the_edge_while_nats_server_serves_then_stops_both() {
    let mut demo = Demo::start();
    // The README's snippet: subscribe, publish, receive, through the edge.
    let client = client(&demo.url()).await;
    let mut sub = client.subscribe("demo.>").await.unwrap();
    client
        .publish("demo.hello", Bytes::from_static(b"hi through the edge"))
        .await
        .unwrap();
    let msg = next_msg(&mut sub).await;
    assert_eq!(&msg.payload[..], b"hi through the edge");

    // Ctrl-C in the terminal: SIGINT to the whole foreground process group. The client stays,
    // so the edge drains it (demo.toml: 2 s of grace) and closes it itself.
    signal(-demo.pgid(), libc::SIGINT);
    let status = demo.wait_exit(WAIT).await;
    let log = plain(&demo.stderr.dump());
    assert!(
        !log.contains("SIGINT during the drain: exiting at once"),
        "nats-edge got Ctrl-C twice and skipped its drain:\n{log}"
    );
    assert!(log.contains("drained"), "no drain:\n{log}");
    // Closed by the drain, not by nats-server going away under it.
    assert!(
        log.contains("reason=shutdown") && !log.contains("reason=upstream_closed"),
        "{log}"
    );
    assert!(status.success(), "exit status {status}:\n{log}");
    demo.assert_all_stopped();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_script_stops_both() {
    let mut demo = Demo::start();
    round_trip(&client(&demo.url()).await).await;
    let pid = demo.pgid();
    signal(pid, libc::SIGTERM);
    let status = demo.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status}:\n{}", demo.dump());
    assert!(demo.stderr.dump().contains("drained"), "{}", demo.dump());
    demo.assert_all_stopped();
}

#[test]
fn a_port_in_use_is_refused_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = demo_command(port, free_port())
        .output()
        .expect("run bash deploy/demo.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} is already in use")),
        "{stderr}"
    );
    assert!(!stderr.contains("starting nats-server"), "{stderr}");
}
