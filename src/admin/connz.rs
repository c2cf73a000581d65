//! `/connz`: the live client connections, paged, with nats-server's field names.

use std::time::SystemTime;

use hyper::Response;
use serde::Serialize;

use super::time::{rfc3339, uptime};
use super::{json, Body};
use crate::edge::EdgeShared;

/// nats-server's default and cap on the page size.
const DEFAULT_LIMIT: usize = 1024;

#[derive(Serialize)]
pub struct Connz {
    server_id: String,
    now: String,
    num_connections: usize,
    total: usize,
    offset: usize,
    limit: usize,
    connections: Vec<ConnInfo>,
}

#[derive(Serialize)]
pub struct ConnInfo {
    cid: u64,
    kind: &'static str,
    #[serde(rename = "type")]
    kind_type: &'static str,
    /// The listener that accepted it (an edge field).
    listener: String,
    /// `tcp`, `tls`, `ws` or `wss` (an edge field).
    transport: &'static str,
    ip: String,
    port: u16,
    start: String,
    uptime: String,
    in_msgs: u64,
    out_msgs: u64,
    in_bytes: u64,
    out_bytes: u64,
    subscriptions: u64,
    /// From the client's CONNECT.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lang: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// The authenticated user, once something authenticated the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    authorized_user: Option<String>,
    /// The upstream serving it, without credentials (an edge field).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
}

/// `offset` and `limit` from a query string; unknown parameters are ignored, as
/// nats-server ignores them.
fn paging(query: &str) -> (usize, usize) {
    let mut offset = 0;
    let mut limit = DEFAULT_LIMIT;
    for pair in query.split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        match (key, value.parse::<usize>()) {
            ("offset", Ok(v)) => offset = v,
            ("limit", Ok(v)) if v > 0 => limit = v.min(DEFAULT_LIMIT),
            _ => {}
        }
    }
    (offset, limit)
}

pub fn connz(shared: &EdgeShared, query: &str) -> Response<Body> {
    let (offset, limit) = paging(query);
    let (total, page) = shared.registry.page(offset, limit);
    let now = SystemTime::now();
    let connections: Vec<ConnInfo> = page
        .iter()
        .map(|c| {
            let counts = c.counts();
            let client = c.client_info().cloned().unwrap_or_default();
            ConnInfo {
                cid: c.cid,
                kind: "Client",
                kind_type: "nats",
                listener: c.listener.clone(),
                transport: c.transport,
                ip: c.client.ip().to_string(),
                port: c.client.port(),
                start: rfc3339(c.start),
                uptime: uptime(now.duration_since(c.start).unwrap_or_default()),
                in_msgs: counts.in_msgs,
                out_msgs: counts.out_msgs,
                in_bytes: counts.in_bytes,
                out_bytes: counts.out_bytes,
                subscriptions: counts.subscriptions,
                name: client.name,
                lang: client.lang,
                version: client.version,
                authorized_user: c.user(),
                upstream: c.upstream().map(str::to_string),
            }
        })
        .collect();
    json(&Connz {
        server_id: shared.identity.server_id.clone(),
        now: rfc3339(now),
        num_connections: connections.len(),
        total,
        offset,
        limit,
        connections,
    })
}

#[cfg(test)]
mod tests {
    use super::paging;

    #[test]
    fn paging_reads_offset_and_limit() {
        assert_eq!(paging(""), (0, 1024));
        assert_eq!(paging("offset=2&limit=1"), (2, 1));
        assert_eq!(paging("limit=0&offset=x"), (0, 1024));
        assert_eq!(paging("limit=5000"), (0, 1024));
    }
}
