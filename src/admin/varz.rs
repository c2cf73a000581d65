//! `/varz`: the edge as a whole, with nats-server's field names where they apply.

use std::time::SystemTime;

use hyper::Response;
use serde::Serialize;

use super::time::{rfc3339, uptime};
use super::{json, Body};
use crate::edge::EdgeShared;

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
