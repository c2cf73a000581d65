//! `/varz`: the edge as a whole, with nats-server's field names where they apply.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hyper::Response;
use serde::Serialize;

use super::time::{rfc3339, uptime};
use super::{json, Body};
use crate::edge::EdgeShared;
use nats_edge_filters::CloseReason;

#[derive(Serialize)]
struct Varz {
    server_id: String,
    server_name: String,
    version: &'static str,
    start: String,
    now: String,
    uptime: String,
    /// Live client connections.
    connections: usize,
    /// Client connections accepted since start.
    total_connections: u64,
    /// Message frames and bytes from clients: ended sessions plus live ones.
    in_msgs: u64,
    in_bytes: u64,
    /// Message frames and bytes delivered to clients: ended sessions plus live ones.
    out_msgs: u64,
    out_bytes: u64,
    subscriptions: u64,
    /// Clients closed for not reading what was queued for them (`limits.write_deadline`).
    slow_consumers: u64,
    /// Resident memory, in bytes (0 where the platform does not tell).
    mem: u64,
    /// CPU used over the last second or more, in percent of one core, as nats-server's
    /// `cpu`.
    cpu: f64,
    /// CPUs the edge may run on.
    cores: usize,
    listeners: Vec<Listener>,
    upstreams: Vec<String>,
    config_load_time: String,
    draining: bool,
}

#[derive(Serialize)]
struct Listener {
    name: String,
    addr: String,
    transport: &'static str,
    max_connections: usize,
    max_connection_rate: u32,
}

pub fn varz(shared: &EdgeShared) -> Response<Body> {
    let now = SystemTime::now();
    let totals = shared.registry.totals();
    let m = &shared.metrics;
    let config = shared.reloader.current();
    let listeners = shared
        .listeners
        .iter()
        .map(|cell| {
            let runtime = cell.current();
            Listener {
                name: cell.name.clone(),
                addr: cell.addr.to_string(),
                transport: cell.kind.as_str(),
                max_connections: runtime.max_connections,
                max_connection_rate: runtime.max_connection_rate,
            }
        })
        .collect();
    json(&Varz {
        server_id: shared.identity.server_id.clone(),
        server_name: shared.identity.server_name.clone(),
        version: shared.identity.version,
        start: rfc3339(shared.identity.start),
        now: rfc3339(now),
        uptime: uptime(shared.identity.started.elapsed()),
        connections: shared.registry.len(),
        total_connections: m.connections_total(),
        in_msgs: totals.in_msgs,
        in_bytes: totals.in_bytes,
        out_msgs: totals.out_msgs,
        out_bytes: totals.out_bytes,
        subscriptions: totals.subscriptions,
        slow_consumers: m.closes(CloseReason::SlowConsumer),
        mem: resident_bytes().unwrap_or(0),
        cpu: cpu_percent(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        listeners,
        upstreams: config
            .upstream_urls()
            .iter()
            .map(|u| u.to_string())
            .collect(),
        config_load_time: rfc3339(shared.reloader.loaded_at()),
        draining: shared.health.is_draining(),
    })
}

/// The process's resident set, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU time (user and system) the process has used.
fn cpu_time() -> Option<Duration> {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The process's CPU use as `/varz` shows it: measured over a window of a second or more,
/// as nats-server samples its own once a second, so that several readers (nats-top and an
/// exporter) see the same value rather than the cost of each other's requests. One per
/// process, as the CPU time is.
struct CpuSample {
    at: Instant,
    used: Duration,
    percent: f64,
}

static CPU: Mutex<Option<CpuSample>> = Mutex::new(None);

const CPU_WINDOW: Duration = Duration::from_secs(1);

/// Starts the window of the first `/varz` reading at the edge's start.
pub fn start_cpu_sampling() {
    let mut sample = CPU.lock().unwrap_or_else(|p| p.into_inner());
    if sample.is_none() {
        if let Some(used) = cpu_time() {
            *sample = Some(CpuSample {
                at: Instant::now(),
                used,
                percent: 0.0,
            });
        }
    }
}

/// In percent of one core, to one decimal as nats-server rounds it; 0 until a window of a
/// second has passed.
fn cpu_percent() -> f64 {
    let mut sample = CPU.lock().unwrap_or_else(|p| p.into_inner());
    let Some(used) = cpu_time() else {
        return sample.as_ref().map_or(0.0, |s| s.percent);
    };
    let now = Instant::now();
    let Some(last) = sample.as_mut() else {
        *sample = Some(CpuSample {
            at: now,
            used,
            percent: 0.0,
        });
        return 0.0;
    };
    let wall = now.saturating_duration_since(last.at);
    if wall >= CPU_WINDOW {
        let percent = used.saturating_sub(last.used).as_secs_f64() / wall.as_secs_f64() * 100.0;
        *last = CpuSample {
            at: now,
            used,
            percent: (percent * 10.0).round() / 10.0,
        };
    }
    last.percent
}
