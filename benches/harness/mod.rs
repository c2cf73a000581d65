//! The benchmark harness: each workload runs direct against nats-server, through nats-edge,
//! and through HAProxy in TCP mode (when installed), interleaved over several rounds; the
//! report gives medians and ratios to direct, as a table and as JSON.
//!
//! `cargo bench --bench edge` runs it in full; `--smoke` runs every workload briefly and only
//! checks that nothing was lost or failed (CI runs that, through tests/bench_smoke.rs).

pub mod filter_cost;
pub mod load;
pub mod targets;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Smoke,
}

/// What a mode runs.
struct Plan {
    rounds: usize,
    /// Payload bytes moved per pub/sub run (message count = this / payload size, bounded).
    bytes_per_run: u64,
    requests: usize,
    idle: Vec<usize>,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                rounds: 5,
                bytes_per_run: 256 * 1024 * 1024,
                requests: 20_000,
                idle: vec![1_000, 9_900],
            },
            Mode::Smoke => Plan {
                rounds: 1,
                bytes_per_run: 2 * 1024 * 1024,
                requests: 200,
                idle: vec![100],
            },
        }
    }

    fn msgs_for(&self, payload: usize) -> u64 {
        // Four times the bytes for large messages: a run of 256 MiB of them lasts a quarter
        // of a second, which the CPU figures (10 ms ticks) cannot resolve.
        let bytes = if payload >= 16 * 1024 {
            4 * self.bytes_per_run
        } else {
            self.bytes_per_run
        };
        (bytes / payload as u64).clamp(2_000, 2_000_000)
    }
}

/// The targets of a workload, starting with a different one each round: whatever one run
/// leaves behind (a closing connection, nats-server's garbage collection) does not always
/// fall on the same next target.
fn in_turn<T>(targets: &[T], round: usize) -> impl Iterator<Item = &T> {
    let start = round % targets.len().max(1);
    targets[start..].iter().chain(&targets[..start])
}

pub const PAYLOADS: [usize; 5] = [16, 128, 1024, 16 * 1024, 64 * 1024];
/// Payload sizes of the TLS and WebSocket workloads.
pub const TRANSPORT_PAYLOADS: [usize; 2] = [128, 16 * 1024];

/// The busy-poll window of the busy-polling edge target.
const BUSY_POLL_WINDOW: &str = "200us";

/// A target of a pub→sub workload.
struct TransportTarget<'a> {
    name: &'static str,
    endpoint: load::Endpoint,
    proxy: Option<&'a targets::Proc>,
    /// The nats-server that the publisher and subscriber end at, whose CPU time per message
    /// is recorded by workloads that ask for it.
    server: Option<&'a targets::Proc>,
}

/// A pub→sub workload: the prefix of its rows, what its payloads hold, and whether it also
/// records the bytes on the wire, the server's CPU and the generator's own (the WebSocket
/// workloads, where compression changes all three).
struct Workload {
    prefix: &'static str,
    content: load::Content,
    detail: bool,
}

/// One target under test.
struct Target<'a> {
    name: &'static str,
    addr: SocketAddr,
    /// The proxy process, whose CPU time per message is recorded (none for direct).
    proxy: Option<&'a targets::Proc>,
}

/// Samples by workload, then by target.
type Samples = BTreeMap<String, BTreeMap<&'static str, Vec<f64>>>;

fn record(samples: &mut Samples, workload: &str, target: &'static str, value: f64) {
    samples
        .entry(workload.to_string())
        .or_default()
        .entry(target)
        .or_default()
        .push(value);
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs one pub→sub 1→1 workload against `t`, recording `<prefix>_<size>_msgs_per_s` (and
/// the proxy's CPU per message, and with `w.detail` the wire bytes, the server's and the
/// generator's CPU per message, and the share of the machine's CPU left idle).
fn pub_sub_workload(
    samples: &mut Samples,
    w: &Workload,
    t: &TransportTarget,
    n: u64,
    payload: usize,
) {
    let (prefix, name) = (w.prefix, t.name);
    let cpu_before = t.proxy.map(targets::Proc::cpu_secs);
    let server_before = t.server.map(targets::Proc::cpu_secs);
    let machine_before = targets::machine_cpu_ticks();
    let r = load::pub_sub_content(&t.endpoint, 1, 1, n, payload, w.content)
        .unwrap_or_else(|e| panic!("{prefix} {payload} B via {name}: {e}"));
    let machine_after = targets::machine_cpu_ticks();
    let per_msg = |secs: f64| secs * 1e9 / r.msgs as f64;
    let mut row = |metric: &str, value: f64| {
        record(
            samples,
            &format!("{prefix}_{payload}B_{metric}"),
            name,
            value,
        );
    };
    if let (Some(p), Some(before)) = (t.proxy, cpu_before) {
        row("proxy_cpu_ns_per_msg", per_msg(p.cpu_secs() - before));
    }
    row("msgs_per_s", r.msgs_per_sec());
    row("MB_per_s", r.mb_per_sec());
    if !w.detail {
        return;
    }
    if let (Some(s), Some(before)) = (t.server, server_before) {
        row("server_cpu_ns_per_msg", per_msg(s.cpu_secs() - before));
    }
    if let Some(bytes) = r.sub_wire_bytes {
        row("sub_wire_bytes_per_msg", bytes as f64 / r.msgs as f64);
    }
    if let Some(bytes) = r.pub_wire_bytes {
        row("pub_wire_bytes_per_msg", bytes as f64 / r.msgs as f64);
    }
    row("generator_sub_cpu_ns_per_msg", per_msg(r.sub_cpu_secs));
    let total = machine_after.1.saturating_sub(machine_before.1);
    if total > 0 {
        let idle = machine_after.0.saturating_sub(machine_before.0);
        row("machine_idle_pct", idle as f64 * 100.0 / total as f64);
    }
}

/// Which groups of workloads a run includes.
#[derive(Debug, Clone, Copy)]
pub struct Groups {
    /// Plain TCP: pub/sub at every size, fan-out, fan-in, request/reply, idle memory.
    pub tcp: bool,
    /// pub→sub over TLS.
    pub tls: bool,
    /// pub→sub over WebSocket.
    pub ws: bool,
    /// pub→sub over WebSocket with permessage-deflate.
    pub wsdeflate: bool,
}

impl Groups {
    pub const ALL: Groups = Groups {
        tcp: true,
        tls: true,
        ws: true,
        wsdeflate: true,
    };

    /// From `--only tcp,tls,ws,wsdeflate` (any of them); `ws` means both WebSocket groups,
    /// `wsdeflate` the compressed one alone.
    pub fn parse(list: &str) -> Result<Groups, String> {
        let mut groups = Groups {
            tcp: false,
            tls: false,
            ws: false,
            wsdeflate: false,
        };
        for name in list.split(',').map(str::trim) {
            match name {
                "tcp" => groups.tcp = true,
                "tls" => groups.tls = true,
                "ws" => {
                    groups.ws = true;
                    groups.wsdeflate = true;
                }
                "wsdeflate" => groups.wsdeflate = true,
                other => {
                    return Err(format!(
                        "unknown workload group `{other}` (tcp, tls, ws, wsdeflate)"
                    ))
                }
            }
        }
        Ok(groups)
    }
}

/// Runs the workloads of `groups`; returns the report as JSON. Panics on any loss or error.
///
/// With `baseline` (the path of another nats-edge binary, such as a build of the previous
/// commit), that binary is one more TCP target, `baseline`, interleaved with the others: a
/// change is compared with what it changes in the same run, not with a table from another
/// day.
pub fn run_groups(mode: Mode, edge_bin: &str, groups: Groups, baseline: Option<&str>) -> Value {
    // Dropped last: the generated files outlive every process that reads them.
    let _scratch = targets::Scratch;
    let plan = Plan::of(mode);
    // The plain server also serves WebSocket clients, for the direct WebSocket target.
    let (server, server_ws) = targets::start_nats_server_with_ws();
    let edge = targets::start_edge(edge_bin, server.addr, &[]);
    // The same edge with a filter that looks at every delivered message: the limits filter
    // counting subscriptions builds an op for every MSG and looks its sid up.
    let inspecting = targets::start_edge(
        edge_bin,
        server.addr,
        &[("NATS_EDGE_LIMITS__MAX_SUBSCRIPTIONS", "1000000")],
    );
    // The same edge checking every PUB and SUB against ACL rules.
    let acl_checking = targets::start_edge_acl(edge_bin, server.addr);
    // The same edge mounting every subject under `tenant.acme.` (subjects rewritten on
    // PUB, SUB and every MSG) and tagging every publish with the sender's headers.
    let rewriting = targets::start_edge_rewrite_tag(edge_bin, server.addr);
    // The same edge polling its sockets for 200 µs after each read instead of sleeping at
    // once (`busy_poll`): for request/reply latency, and its cost in 128 B pub/sub.
    let busy_polling = targets::start_edge(
        edge_bin,
        server.addr,
        &[("NATS_EDGE_BUSY_POLL", BUSY_POLL_WINDOW)],
    );
    let haproxy = targets::start_haproxy(server.addr);

    // TLS: nats-server's own TLS listener, the edge's in front of the plain server, and
    // HAProxy terminating TLS in front of it; every client starts with TLS.
    let certs = targets::make_certs();
    let server_tls = targets::start_nats_server_tls(&certs);
    let edge_tls = targets::start_edge_listener(
        edge_bin,
        server.addr,
        "tls",
        "tls",
        &format!(
            "tls = {{ cert_file = {:?}, key_file = {:?}, handshake_first = true }}",
            certs.cert.display().to_string(),
            certs.key.display().to_string()
        ),
    );
    let haproxy_tls = targets::start_haproxy_tls(server.addr, &certs);
    let tls = |addr| load::Endpoint {
        addr,
        transport: load::Transport::TlsFirst(certs.client.clone()),
    };
    let mut tls_targets = vec![
        TransportTarget {
            name: "direct",
            endpoint: tls(server_tls.addr),
            proxy: None,
            server: Some(&server_tls),
        },
        TransportTarget {
            name: "edge",
            endpoint: tls(edge_tls.addr),
            proxy: Some(&edge_tls),
            server: Some(&server),
        },
    ];
    if let Some(h) = &haproxy_tls {
        tls_targets.push(TransportTarget {
            name: "haproxy",
            endpoint: tls(h.addr),
            proxy: Some(h),
            server: Some(&server),
        });
    }
    // WebSocket: nats-server's own listener and the edge's (pings off, as nats-server's).
    // The generator does not offer permessage-deflate, so neither compresses.
    let edge_ws = targets::start_edge_listener(
        edge_bin,
        server.addr,
        "ws",
        "ws",
        "ws = { ping_interval = \"0\" }",
    );
    let ws = |addr, transport| load::Endpoint { addr, transport };
    let ws_targets = [
        TransportTarget {
            name: "direct",
            endpoint: ws(server_ws, load::Transport::Ws),
            proxy: None,
            server: Some(&server),
        },
        TransportTarget {
            name: "edge",
            endpoint: ws(edge_ws.addr, load::Transport::Ws),
            proxy: Some(&edge_ws),
            server: Some(&server),
        },
    ];
    // WebSocket with permessage-deflate, which the generator offers here: another
    // nats-server whose WebSocket listener compresses, and an edge ws listener with
    // `compression = true` in front of the plain server.
    let deflating = groups.wsdeflate.then(|| {
        let (server_wsz, server_wsz_addr) = targets::start_nats_server_with_ws_compression();
        let edge_wsz = targets::start_edge_listener(
            edge_bin,
            server.addr,
            "wsdeflate",
            "ws",
            "ws = { ping_interval = \"0\", compression = true }",
        );
        (server_wsz, server_wsz_addr, edge_wsz)
    });
    let wsdeflate_targets: Vec<TransportTarget> = deflating
        .iter()
        .flat_map(|(server_wsz, server_wsz_addr, edge_wsz)| {
            [
                TransportTarget {
                    name: "direct",
                    endpoint: ws(*server_wsz_addr, load::Transport::WsDeflate),
                    proxy: None,
                    server: Some(server_wsz),
                },
                TransportTarget {
                    name: "edge",
                    endpoint: ws(edge_wsz.addr, load::Transport::WsDeflate),
                    proxy: Some(edge_wsz),
                    server: Some(&server),
                },
            ]
        })
        .collect();

    let mut all = vec![
        Target {
            name: "direct",
            addr: server.addr,
            proxy: None,
        },
        Target {
            name: "edge",
            addr: edge.addr,
            proxy: Some(&edge),
        },
    ];
    if let Some(h) = &haproxy {
        all.push(Target {
            name: "haproxy",
            addr: h.addr,
            proxy: Some(h),
        });
    }
    let baseline = baseline.map(|bin| targets::start_edge(bin, server.addr, &[]));
    if let Some(b) = &baseline {
        all.push(Target {
            name: "baseline",
            addr: b.addr,
            proxy: Some(b),
        });
    }

    let mut samples = Samples::new();
    for round in 0..plan.rounds {
        eprintln!("round {}/{}", round + 1, plan.rounds);
        if groups.tcp {
            let plain = Workload {
                prefix: "pubsub",
                content: load::Content::Filler,
                detail: true,
            };
            for &payload in &PAYLOADS {
                let n = plan.msgs_for(payload);
                for t in in_turn(&all, round) {
                    let target = TransportTarget {
                        name: t.name,
                        endpoint: load::Endpoint::tcp(t.addr),
                        proxy: t.proxy,
                        server: Some(&server),
                    };
                    pub_sub_workload(&mut samples, &plain, &target, n, payload);
                }
            }
        }
        for &payload in &TRANSPORT_PAYLOADS {
            let n = plan.msgs_for(payload);
            for (workload, targets, wanted) in [
                (
                    Workload {
                        prefix: "tls_pubsub",
                        content: load::Content::Filler,
                        detail: false,
                    },
                    &tls_targets[..],
                    groups.tls,
                ),
                (
                    Workload {
                        prefix: "ws_pubsub",
                        content: load::Content::Filler,
                        detail: true,
                    },
                    &ws_targets[..],
                    groups.ws,
                ),
                (
                    // Payloads that compress as JSON does, not one repeated byte.
                    Workload {
                        prefix: "wsdeflate_pubsub",
                        content: load::Content::Json,
                        detail: true,
                    },
                    &wsdeflate_targets[..],
                    groups.wsdeflate,
                ),
            ] {
                for t in in_turn(targets, round).filter(|_| wanted) {
                    pub_sub_workload(&mut samples, &workload, t, n, payload);
                }
            }
        }
        if !groups.tcp {
            continue;
        }
        let n = plan.msgs_for(128);
        let r = load::pub_sub(inspecting.addr, 1, 1, n, 128).expect("pub/sub via inspecting edge");
        record(
            &mut samples,
            "pubsub_128B_msgs_per_s",
            "edge+inspect",
            r.msgs_per_sec(),
        );
        let r = load::pub_sub(acl_checking.addr, 1, 1, n, 128).expect("pub/sub via ACL edge");
        record(
            &mut samples,
            "pubsub_128B_msgs_per_s",
            "edge+acl",
            r.msgs_per_sec(),
        );
        let r = load::pub_sub(rewriting.addr, 1, 1, n, 128)
            .expect("pub/sub via rewriting and tagging edge");
        record(
            &mut samples,
            "pubsub_128B_msgs_per_s",
            "edge+rewrite+tag",
            r.msgs_per_sec(),
        );
        let r =
            load::pub_sub(busy_polling.addr, 1, 1, n, 128).expect("pub/sub via busy-polling edge");
        record(
            &mut samples,
            "pubsub_128B_msgs_per_s",
            "edge+busy_poll",
            r.msgs_per_sec(),
        );
        for t in in_turn(&all, round) {
            let r = load::pub_sub(t.addr, 1, 4, n / 4, 128)
                .unwrap_or_else(|e| panic!("fan-out via {}: {e}", t.name));
            record(
                &mut samples,
                "fanout_1to4_128B_msgs_per_s",
                t.name,
                r.msgs_per_sec() * 4.0,
            );
            let r = load::pub_sub(t.addr, 4, 1, n / 4, 128)
                .unwrap_or_else(|e| panic!("fan-in via {}: {e}", t.name));
            record(
                &mut samples,
                "fanin_4to1_128B_msgs_per_s",
                t.name,
                r.msgs_per_sec(),
            );
        }
        let busy_target = Target {
            name: "edge+busy_poll",
            addr: busy_polling.addr,
            proxy: Some(&busy_polling),
        };
        for t in in_turn(&all, round).chain([&busy_target]) {
            request_reply_workload(&mut samples, t, plan.requests);
        }
        // HAProxy's busy-polling keeps its threads spinning whether or not they have
        // traffic, so it runs only for its own turn, alone.
        if let Some(h) = targets::start_haproxy_busy_polling(server.addr) {
            let target = Target {
                name: "haproxy+busy_polling",
                addr: h.addr,
                proxy: Some(&h),
            };
            request_reply_workload(&mut samples, &target, plan.requests);
        }
    }

    if !groups.tcp {
        return report(&samples, mode);
    }
    // Memory: a fresh edge, so earlier runs' buffers do not count.
    let fresh = targets::start_edge(edge_bin, server.addr, &[]);
    let base = fresh.rss_bytes();
    let mut conns = Vec::new();
    for &n in &plan.idle {
        let more = load::idle_connections(fresh.addr, n - conns.len())
            .unwrap_or_else(|e| panic!("holding {n} idle connections through the edge: {e}"));
        conns.extend(more);
        // Every connection has finished its PING/PONG handshake through the edge.
        let rss = fresh.rss_bytes();
        record(
            &mut samples,
            &format!("idle_{n}_conns_rss_bytes"),
            "edge",
            rss as f64,
        );
        record(
            &mut samples,
            &format!("idle_{n}_conns_bytes_per_conn"),
            "edge",
            (rss.saturating_sub(base)) as f64 / n as f64,
        );
    }
    drop(conns);

    report(&samples, mode)
}

fn report(samples: &Samples, mode: Mode) -> Value {
    let mut rows = serde_json::Map::new();
    for (workload, by_target) in samples {
        let mut row = serde_json::Map::new();
        let direct = by_target.get("direct").map(|v| median(v));
        for (target, values) in by_target {
            let m = median(values);
            row.insert(target.to_string(), json!(m));
            if let (Some(d), true) = (direct, *target != "direct") {
                row.insert(format!("{target}/direct"), json!(m / d));
            }
        }
        if let (Some(e), Some(h)) = (by_target.get("edge"), by_target.get("haproxy")) {
            row.insert("edge/haproxy".into(), json!(median(e) / median(h)));
        }
        if workload.ends_with("_msgs_per_s") {
            for (a, b) in [("edge", "direct"), ("edge", "haproxy")] {
                if let Some(range) = round_ratios(by_target, a, b) {
                    row.insert(format!("{a}/{b} rounds"), range);
                }
            }
        }
        if let (Some(e), Some(b)) = (by_target.get("edge"), by_target.get("baseline")) {
            row.insert("edge/baseline".into(), json!(median(e) / median(b)));
        }
        rows.insert(workload.clone(), Value::Object(row));
        if let (Some(name), Some(direct)) = (added_latency_row(workload), direct) {
            rows.insert(name, added_latency(by_target, direct));
        }
    }
    json!({
        "mode": format!("{mode:?}").to_lowercase(),
        "machine": machine(),
        "results": rows,
    })
}

/// The lowest and highest of `a`'s value over `b`'s round by round, as `[min, max]`: how far
/// a ratio moves between rounds of one run (a ratio whose range spans 1.0 is a tie within
/// the noise). `None` with fewer than two rounds of both.
fn round_ratios(by_target: &BTreeMap<&'static str, Vec<f64>>, a: &str, b: &str) -> Option<Value> {
    let (a, b) = (by_target.get(a)?, by_target.get(b)?);
    if a.len() < 2 || a.len() != b.len() {
        return None;
    }
    let ratios = a.iter().zip(b).map(|(x, y)| x / y);
    let (min, max) = ratios.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
        (lo.min(r), hi.max(r))
    });
    Some(json!([min, max]))
}

/// Request/reply round trips one at a time through `t`: latency percentiles.
fn request_reply_workload(samples: &mut Samples, t: &Target, requests: usize) {
    let mut lat = load::request_reply(t.addr, requests)
        .unwrap_or_else(|e| panic!("request/reply via {}: {e}", t.name));
    lat.sort_by(|a, b| a.total_cmp(b));
    for (label, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        record(
            samples,
            &format!("reqrep_{label}_us"),
            t.name,
            percentile(&lat, p),
        );
    }
}

/// `reqrep_p50_added_us` for `reqrep_p50_us`: the latency a proxy adds over direct.
fn added_latency_row(workload: &str) -> Option<String> {
    let percentile = workload.strip_prefix("reqrep_")?.strip_suffix("_us")?;
    Some(format!("reqrep_{percentile}_added_us"))
}

/// What each proxy adds to a latency percentile over direct (median against median), and
/// the edge's addition over HAProxy's: the latency target's own terms.
fn added_latency(by_target: &BTreeMap<&'static str, Vec<f64>>, direct: f64) -> Value {
    let mut row = serde_json::Map::new();
    for (target, values) in by_target.iter().filter(|(t, _)| **t != "direct") {
        row.insert(target.to_string(), json!(median(values) - direct));
    }
    for (edge, haproxy) in [
        ("edge", "haproxy"),
        ("edge+busy_poll", "haproxy"),
        ("edge+busy_poll", "haproxy+busy_polling"),
    ] {
        let added = |t: &str| row.get(t).and_then(Value::as_f64);
        if let (Some(e), Some(h)) = (added(edge), added(haproxy)) {
            row.insert(format!("{edge}/{haproxy}"), json!(e / h));
        }
    }
    Value::Object(row)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// An edge configuration `--callgrind` counts.
pub struct CallgrindSetup {
    /// For the report: `the edge with ...`.
    pub name: &'static str,
    /// For file names.
    pub slug: &'static str,
    /// The `NATS_EDGE_*` settings that turn it on.
    pub env: Vec<(&'static str, String)>,
    /// What the published messages look like.
    pub content: load::Content,
}

/// The plain edge; the plain edge with messages whose control lines never repeat, and with
/// messages that carry headers; then with ACL rules, and with the shipped rewrite and
/// tagging rules.
pub fn callgrind_setups() -> Vec<CallgrindSetup> {
    vec![
        CallgrindSetup {
            name: "the edge",
            slug: "plain",
            env: Vec::new(),
            content: load::Content::Filler,
        },
        CallgrindSetup {
            name: "the edge, a reply subject of its own on every message",
            slug: "plain-distinct",
            env: Vec::new(),
            content: load::Content::DistinctReplies,
        },
        CallgrindSetup {
            name: "the edge, a header block of its own on every message",
            slug: "plain-headers",
            env: Vec::new(),
            content: load::Content::Headers,
        },
        CallgrindSetup {
            name: "the edge with ACL rules",
            slug: "acl",
            env: vec![targets::acl_env()],
            content: load::Content::Filler,
        },
        CallgrindSetup {
            name: "the edge with rewrite+tag",
            slug: "rewrite-tag",
            env: targets::rewrite_tag_env().to_vec(),
            content: load::Content::Filler,
        },
    ]
}

/// A directory removed, with what it holds, when this is dropped.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Instructions the edge executes per forwarded 128 B message, from callgrind: two edge
/// processes forward `small` and `large` messages (publisher and subscriber each through the
/// edge); the difference in instructions over the difference in messages removes start-up
/// and connection costs. Each message is forwarded twice (PUB in, MSG out). `setup` is one
/// of [`callgrind_setups`]. `None` when valgrind is not installed.
pub fn callgrind_instructions_per_message(edge_bin: &str, setup: &CallgrindSetup) -> Option<f64> {
    let server = targets::start_nats_server();
    let dir = std::env::temp_dir().join(format!("nats-edge-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    // The profiles go with the directory however this returns.
    let _profiles = RemovedOnDrop(dir.clone());
    let (small, large) = (20_000u64, 120_000u64);
    let mut totals = Vec::new();
    for n in [small, large] {
        let out = dir.join(format!("callgrind.{}.{n}.out", setup.slug));
        let edge = targets::start_edge_under_callgrind(edge_bin, server.addr, &out, &setup.env)?;
        load::pub_sub_content(&load::Endpoint::tcp(edge.addr), 1, 1, n, 128, setup.content)
            .expect("pub/sub under callgrind");
        edge.terminate();
        let profile = std::fs::read_to_string(&out).ok()?;
        let total = profile.lines().find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })?;
        totals.push(total);
    }
    Some((totals[1] - totals[0]) / (large - small) as f64)
}

/// The report as a Markdown table.
pub fn table(report: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | direct | edge | haproxy | edge/direct | haproxy/direct | edge/haproxy |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let fmt = |v: Option<&Value>| match v.and_then(Value::as_f64) {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    };
    if let Some(rows) = report["results"].as_object() {
        for (workload, row) in rows {
            // A cell: its target's median, then the variants of it the row holds, in
            // brackets (`edge (inspect: ...) (busy_poll: ...)`).
            let cell = |key: &str, variants: &[(&str, &str)]| {
                let mut text = fmt(row.get(key));
                for (variant, label) in variants {
                    if let Some(v) = row.get(*variant) {
                        text = format!("{text} ({label}: {})", fmt(Some(v)));
                    }
                }
                text
            };
            let mut edge = cell(
                "edge",
                &[
                    ("edge+inspect", "inspect"),
                    ("edge+acl", "acl"),
                    ("edge+rewrite+tag", "rewrite+tag"),
                    ("edge+busy_poll", "busy_poll"),
                ],
            );
            if let (Some(b), Some(r)) = (row.get("baseline"), row.get("edge/baseline")) {
                edge = format!(
                    "{} (baseline: {}, ratio {})",
                    edge,
                    fmt(Some(b)),
                    fmt(Some(r))
                );
            }
            let haproxy = cell("haproxy", &[("haproxy+busy_polling", "busy-polling")]);
            let edge_haproxy = cell(
                "edge/haproxy",
                &[
                    ("edge+busy_poll/haproxy", "busy_poll"),
                    ("edge+busy_poll/haproxy+busy_polling", "both busy-polling"),
                ],
            );
            // A ratio, then the range of its per-round values: `0.98 (rounds 0.91–1.06)`.
            let with_rounds = |text: String, key: &str| match row.get(key).and_then(Value::as_array)
            {
                Some(r) if r.len() == 2 => {
                    format!("{text} (rounds {}–{})", fmt(r.first()), fmt(r.get(1)))
                }
                _ => text,
            };
            let edge_direct = with_rounds(fmt(row.get("edge/direct")), "edge/direct rounds");
            let edge_haproxy = with_rounds(edge_haproxy, "edge/haproxy rounds");
            let _ = writeln!(
                out,
                "| {workload} | {} | {edge} | {haproxy} | {edge_direct} | {} | {edge_haproxy} |",
                fmt(row.get("direct")),
                fmt(row.get("haproxy/direct")),
            );
        }
    }
    out
}
