//! `/connz`: the client connections, live and recently closed, with nats-server's field
//! names and its query
//! parameters (`sort`, `cid`, `state`, `auth`, `subs`, `user`, `mqtt_client`, `offset`,
//! `limit`), read the way nats-server's monitor reads them (`HandleConnz`, `Connz`) and
//! refused with its texts, so tools written against nats-server work against the edge.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::Response;
use nats_edge_filters::acl::quote::go_quote;
use serde::Serialize;

use super::time::{rfc3339, uptime};
use super::{bad_request, json, Body};
use crate::edge::EdgeShared;
use crate::registry::{Activity, ClosedConn, ConnEntry, LiveCounts};
use nats_edge_filters::CloseReason;

/// nats-server's default page size (`DefaultConnListSize`).
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
    last_activity: String,
    /// When a closed connection ended, and why (`state=closed` or `any`).
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// The last round trip measured to the client, as Go writes a duration (`0s` until one
    /// is).
    rtt: String,
    uptime: String,
    idle: String,
    pending_bytes: u64,
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
    /// The authenticated user, with `auth=true` only (as nats-server shows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    authorized_user: Option<String>,
    /// The upstream serving it, without credentials (an edge field).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    /// The client's TLS session, as nats-server shows it; the certificates with `auth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<String>,
    #[serde(rename = "tls_cipher_suite", skip_serializing_if = "Option::is_none")]
    tls_cipher: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tls_peer_certs: Vec<crate::transport::tls::PeerCert>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls_first: bool,
}

/// nats-server's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Closed,
    Any,
}

/// nats-server's `sort` values (its `SortOpt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    Cid,
    Start,
    Subs,
    Pending,
    MsgsTo,
    MsgsFrom,
    BytesTo,
    BytesFrom,
    Last,
    Idle,
    Uptime,
    Stop,
    Reason,
    Rtt,
}

impl Sort {
    fn parse(value: &[u8]) -> Option<Sort> {
        Some(match value {
            b"" | b"cid" => Sort::Cid,
            b"start" => Sort::Start,
            b"subs" => Sort::Subs,
            b"pending" => Sort::Pending,
            b"msgs_to" => Sort::MsgsTo,
            b"msgs_from" => Sort::MsgsFrom,
            b"bytes_to" => Sort::BytesTo,
            b"bytes_from" => Sort::BytesFrom,
            b"last" => Sort::Last,
            b"idle" => Sort::Idle,
            b"uptime" => Sort::Uptime,
            b"stop" => Sort::Stop,
            b"reason" => Sort::Reason,
            b"rtt" => Sort::Rtt,
            _ => return None,
        })
    }
}

/// What a `/connz` query asks for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    sort: Sort,
    /// `auth`: show `authorized_user`.
    auth: bool,
    offset: usize,
    limit: usize,
    /// Only this connection, when not 0.
    cid: u64,
    state: State,
    /// Only this user's connections (`user`), when not empty.
    user: Vec<u8>,
    /// `mqtt_client` was given: the edge serves no MQTT clients, so nothing matches.
    mqtt_client: bool,
}

impl Options {
    /// Reads `query` in nats-server's order, so a query with several bad values gets the
    /// same error as from nats-server: `auth`, `subs`, `offset`, `limit`, `cid`, `state`,
    /// then the sort checks. The error is the 400 body.
    fn parse(query: &str) -> Result<Options, Vec<u8>> {
        let auth = decode(query, "auth", "boolean", "ParseBool", go_parse_bool)?;
        // Subscription lists are not tracked (see the docs): the flag is only validated.
        if go_lower(&param(query, "subs")) != "detail" {
            decode(query, "subs", "boolean", "ParseBool", go_parse_bool)?;
        }
        let offset = decode(query, "offset", "int", "Atoi", go_atoi)?;
        let limit = decode(query, "limit", "int", "Atoi", go_atoi)?;
        let cid = decode(query, "cid", "uint64", "ParseUint", go_parse_uint)?;
        let state_value = param(query, "state");
        let state = match go_lower(&state_value).as_str() {
            "" | "open" => State::Open,
            "closed" => State::Closed,
            "any" | "all" => State::Any,
            _ => return Err([b"Error decoding state for ".as_slice(), &state_value].concat()),
        };
        let sort_value = param(query, "sort");
        let Some(sort) = Sort::parse(&sort_value) else {
            return Err([b"invalid sorting option: ".as_slice(), &sort_value].concat());
        };
        let closed_only = match sort {
            Sort::Stop => Some("stop"),
            Sort::Reason => Some("reason"),
            _ => None,
        };
        if let (Some(name), true) = (closed_only, state != State::Closed) {
            return Err(format!("sort by {name} only valid on closed connections").into_bytes());
        }
        Ok(Options {
            sort,
            auth,
            offset: usize::try_from(offset.max(0)).unwrap_or(usize::MAX),
            // nats-server answers a cid lookup with a page of one, and takes any positive
            // limit as it is.
            limit: match cid {
                0 if limit <= 0 => DEFAULT_LIMIT,
                0 => usize::try_from(limit).unwrap_or(usize::MAX),
                _ => 1,
            },
            cid,
            state,
            user: param(query, "user"),
            mqtt_client: !param(query, "mqtt_client").is_empty(),
        })
    }

    fn selects(&self, conn: &ConnEntry) -> bool {
        // A cid lookup ignores the other filters, as in nats-server.
        if self.cid != 0 {
            return conn.cid == self.cid;
        }
        !self.mqtt_client
            && (self.user.is_empty() || conn.user().is_some_and(|u| u.as_bytes() == self.user))
    }
}

/// A client's `type`, as nats-server names it: `websocket` for WebSocket clients, `nats`
/// for the others.
fn client_type(transport: &str) -> &'static str {
    if transport.starts_with("ws") {
        "websocket"
    } else {
        "nats"
    }
}

/// A connection as one `/connz` answer sees it: its counters and activity read once, so
/// the sort compares values that do not change under it.
struct Picked {
    entry: Arc<ConnEntry>,
    counts: LiveCounts,
    activity: Activity,
    /// Set for a connection that ended.
    closed: Option<Arc<ClosedConn>>,
}

impl Picked {
    fn live(entry: Arc<ConnEntry>) -> Picked {
        let (counts, activity) = (entry.counts(), entry.activity());
        Picked {
            entry,
            counts,
            activity,
            closed: None,
        }
    }

    fn closed(closed: Arc<ClosedConn>) -> Picked {
        Picked {
            entry: closed.entry.clone(),
            counts: closed.counts,
            activity: closed.activity,
            closed: Some(closed),
        }
    }

    /// Its uptime and idle time are measured to here: now, or when it ended.
    fn end(&self, now: Instant) -> Instant {
        self.closed.as_ref().map_or(now, |c| c.stopped)
    }
}

/// A round trip as nats-server shows one: to the microsecond between a microsecond and a
/// millisecond, to the nanosecond otherwise; zero until one is measured.
fn rtt_shown(rtt: Option<Duration>) -> Duration {
    match rtt {
        None => Duration::ZERO,
        Some(d) if d > Duration::from_micros(1) && d < Duration::from_millis(1) => {
            Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        }
        Some(d) => d,
    }
}

/// `d` as Go's `time.Duration.String` writes it: `0s`, `850ns`, `115µs`, `1.5ms`, `2.25s`,
/// `1m2.5s`, `1h0m0.5s`.
fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    // The fraction of `value / unit`, without trailing zeros: `.5`, `.125`, or nothing.
    let fraction = |value: u128, unit: u128, digits: usize| -> String {
        let rest = value % unit;
        if rest == 0 {
            return String::new();
        }
        let text = format!("{rest:0digits$}");
        format!(".{}", text.trim_end_matches('0'))
    };
    match ns {
        0 => "0s".to_string(),
        1..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{}{}µs", ns / 1_000, fraction(ns, 1_000, 3)),
        1_000_000..=999_999_999 => format!("{}{}ms", ns / 1_000_000, fraction(ns, 1_000_000, 6)),
        _ => {
            let secs = ns / 1_000_000_000;
            let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
            let tail = format!("{s}{}s", fraction(ns, 1_000_000_000, 9));
            match (h, m) {
                (0, 0) => tail,
                (0, m) => format!("{m}m{tail}"),
                (h, m) => format!("{h}h{m}m{tail}"),
            }
        }
    }
}

/// The time from `from` to `to` in nanoseconds, negative when `to` comes first: a sort key
/// that orders spans by their length whichever way the instants fall.
fn signed_span(from: Instant, to: Instant) -> i128 {
    match to.checked_duration_since(from) {
        Some(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        None => -i128::try_from(from.duration_since(to).as_nanos()).unwrap_or(i128::MAX),
    }
}

/// nats-server's words for why a connection closed (its `ClosedState`), where one fits;
/// the edge's own cases (the upstream's side) in the same style.
fn reason_text(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::ClientClosed => "Client Closed",
        CloseReason::UpstreamClosed => "Upstream Closed",
        CloseReason::ClientIoError => "Read Error",
        CloseReason::UpstreamIoError => "Upstream Error",
        CloseReason::UpstreamUnavailable => "Upstream Unavailable",
        CloseReason::ProtocolViolation => "Parse Error",
        CloseReason::UpstreamProtocolViolation => "Upstream Protocol Violation",
        CloseReason::MaxControlLineExceeded => "Maximum Control Line Exceeded",
        CloseReason::MaxPayloadExceeded => "Maximum Message Payload Exceeded",
        CloseReason::HandshakeTimeout => "Authentication Timeout",
        CloseReason::Shutdown => "Server Shutdown",
        CloseReason::Policy => "Protocol Violation",
        CloseReason::AuthorizationViolation => "Authentication Failure",
        CloseReason::SlowConsumer => "Slow Consumer (Write Deadline)",
        CloseReason::UserChanged => "Authentication Failure",
    }
}

/// Orders `conns` (given in cid order) as nats-server orders them: `cid` and `start`
/// ascending, `uptime` ascending (the newest first), `idle` descending (the longest idle
/// first), the counters, `pending` and `last` descending. Ties keep the cid order.
fn sort(conns: &mut [Picked], by: Sort) {
    let now = Instant::now();
    // The live connections come in cid order, the closed ones in the order they ended:
    // cid order first, which the stable sorts below keep among ties.
    conns.sort_by_key(|p| p.entry.cid);
    let counter: fn(&LiveCounts) -> u64 = match by {
        Sort::Subs => |c| c.subscriptions,
        Sort::MsgsTo => |c| c.out_msgs,
        Sort::MsgsFrom => |c| c.in_msgs,
        Sort::BytesTo => |c| c.out_bytes,
        Sort::BytesFrom => |c| c.in_bytes,
        Sort::Uptime => {
            // On the monotonic clock, as nats-server sorts by uptime: a wall clock stepped
            // back must not put a new connection among the old ones.
            // A closed connection's uptime is to its end.
            conns.sort_by_key(|p| signed_span(p.entry.started, p.end(now)));
            return;
        }
        Sort::Pending => {
            conns.sort_by_key(|p| Reverse(p.activity.pending_bytes));
            return;
        }
        Sort::Last => {
            conns.sort_by_key(|p| Reverse(p.activity.last));
            return;
        }
        // As nats-server sorts it, by the time since the last activity, for closed
        // connections too (whose `idle` shows the time to their end).
        Sort::Idle => {
            conns.sort_by_key(|p| p.activity.last);
            return;
        }
        // Only on closed connections (the options check): the latest end first, and the
        // reasons in alphabetical order.
        Sort::Stop => {
            conns.sort_by_key(|p| Reverse(p.closed.as_ref().map(|c| c.stopped)));
            return;
        }
        Sort::Reason => {
            conns.sort_by_key(|p| p.closed.as_ref().map(|c| reason_text(c.reason)));
            return;
        }
        Sort::Rtt => {
            conns.sort_by_key(|p| Reverse(p.activity.rtt));
            return;
        }
        Sort::Cid | Sort::Start => return,
    };
    conns.sort_by_key(|p| Reverse(counter(&p.counts)));
}

pub fn connz(shared: &EdgeShared, query: &str) -> Response<Body> {
    let opts = match Options::parse(query) {
        Ok(opts) => opts,
        Err(text) => return bad_request(text),
    };
    let (live, closed) = match opts.state {
        State::Open => (shared.registry.snapshot(), Vec::new()),
        State::Closed => (Vec::new(), shared.registry.closed_snapshot()),
        State::Any => shared.registry.snapshot_with_closed(),
    };
    // Like nats-server, `total` counts the connections in the state asked for, before any
    // other filter.
    let total = live.len() + closed.len();
    let mut picked: Vec<Picked> = live
        .into_iter()
        .filter(|c| opts.selects(c))
        .map(Picked::live)
        .collect();
    // A cid lookup looks among the closed connections only when no live one has that id,
    // as nats-server's does.
    if opts.cid == 0 || picked.is_empty() {
        picked.extend(
            closed
                .into_iter()
                .filter(|c| opts.selects(&c.entry))
                .map(Picked::closed),
        );
    }
    sort(&mut picked, opts.sort);
    let now = SystemTime::now();
    let connections: Vec<ConnInfo> = picked
        .iter()
        .skip(opts.offset)
        .take(opts.limit)
        .map(|p| {
            let (c, counts, activity) = (&p.entry, &p.counts, &p.activity);
            let client = c.client_info().unwrap_or_default();
            let since_start = activity.last.saturating_duration_since(c.started);
            let end = p.end(Instant::now());
            ConnInfo {
                cid: c.cid,
                kind: "Client",
                kind_type: client_type(c.transport),
                listener: c.listener.clone(),
                transport: c.transport,
                ip: c.client.ip().to_string(),
                port: c.client.port(),
                start: rfc3339(c.start),
                last_activity: rfc3339(c.start + since_start),
                stop: p.closed.as_ref().map(|closed| rfc3339(closed.stop)),
                reason: p.closed.as_ref().map(|closed| reason_text(closed.reason)),
                rtt: go_duration(rtt_shown(activity.rtt)),
                uptime: uptime(end.saturating_duration_since(c.started)),
                idle: uptime(end.saturating_duration_since(activity.last)),
                pending_bytes: activity.pending_bytes,
                in_msgs: counts.in_msgs,
                out_msgs: counts.out_msgs,
                in_bytes: counts.in_bytes,
                out_bytes: counts.out_bytes,
                subscriptions: counts.subscriptions,
                name: client.name,
                lang: client.lang,
                version: client.version,
                authorized_user: c.user().filter(|_| opts.auth),
                upstream: c.upstream().map(str::to_string),
                tls_version: c.tls().map(|t| t.version.clone()),
                tls_cipher: c.tls().map(|t| t.cipher_suite.clone()),
                tls_peer_certs: c
                    .tls()
                    .filter(|_| opts.auth)
                    .map(|t| t.peer_certs.clone())
                    .unwrap_or_default(),
                tls_first: c.tls().is_some_and(|t| t.first),
            }
        })
        .collect();
    json(&Connz {
        server_id: shared.identity.server_id.clone(),
        now: rfc3339(now),
        num_connections: connections.len(),
        total,
        offset: opts.offset,
        limit: opts.limit,
        connections,
    })
}

/// The first value of `key` in `query`, as Go's `url.Values.Get` finds it: `+` is a space and
/// `%XX` a byte; a pair holding a `;` or a bad escape is skipped. Empty when absent, which
/// nats-server treats as not given.
fn param(query: &str, key: &str) -> Vec<u8> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (unescape(k)?, unescape(v)?);
            (k == key.as_bytes()).then_some(v)
        })
        .unwrap_or_default()
}

fn unescape(text: &str) -> Option<Vec<u8>> {
    let hex = |b: Option<u8>| char::from(b?).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => ((hex(bytes.next())? << 4) | hex(bytes.next())?) as u8,
            b => b,
        });
    }
    Some(out)
}

/// Go's `strings.ToLower`, for comparing with a lower-case ASCII word: each char becomes one
/// (`İ` becomes `i`), and invalid UTF-8 becomes U+FFFD.
fn go_lower(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .chars()
        .flat_map(|c| c.to_lowercase().take(1))
        .collect()
}

/// One of nats-server's `decodeBool`, `decodeInt`, `decodeUint64`: an empty or absent value
/// is zero; a bad one gets its text, e.g.
/// `Error decoding int for 'limit': strconv.Atoi: parsing "x": invalid syntax`.
fn decode<T: Default>(
    query: &str,
    name: &str,
    kind: &str,
    func: &str,
    parse: fn(&[u8]) -> Result<T, &'static str>,
) -> Result<T, Vec<u8>> {
    let value = param(query, name);
    if value.is_empty() {
        return Ok(T::default());
    }
    parse(&value).map_err(|why| {
        let quoted = go_quote(&value);
        format!("Error decoding {kind} for '{name}': strconv.{func}: parsing {quoted}: {why}")
            .into_bytes()
    })
}

const SYNTAX: &str = "invalid syntax";
const RANGE: &str = "value out of range";

/// Go's `strconv.ParseBool`.
fn go_parse_bool(value: &[u8]) -> Result<bool, &'static str> {
    match value {
        b"1" | b"t" | b"T" | b"TRUE" | b"true" | b"True" => Ok(true),
        b"0" | b"f" | b"F" | b"FALSE" | b"false" | b"False" => Ok(false),
        _ => Err(SYNTAX),
    }
}

/// Go's `strconv.ParseUint(value, 10, 64)`: digits only, no sign; it stops at the first
/// byte that is not a digit or that overflows, and reports that one.
fn go_parse_uint(value: &[u8]) -> Result<u64, &'static str> {
    if value.is_empty() {
        return Err(SYNTAX);
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(SYNTAX);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(RANGE)
    })
}

/// Go's `strconv.Atoi` on a 64-bit platform: a sign, then the digits read as
/// [`go_parse_uint`] reads them, then the `int64` range.
fn go_atoi(value: &[u8]) -> Result<i64, &'static str> {
    let (negative, digits) = match value {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, value),
    };
    let magnitude = go_parse_uint(digits)?;
    let signed = if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    signed.ok_or(RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn parsed(query: &str) -> Options {
        Options::parse(query).unwrap_or_else(|e| panic!("{query}: {}", String::from_utf8_lossy(&e)))
    }

    fn refused(query: &str) -> String {
        match Options::parse(query) {
            Ok(opts) => panic!("{query} was accepted: {opts:?}"),
            Err(text) => String::from_utf8_lossy(&text).into_owned(),
        }
    }

    #[test]
    fn no_parameters_mean_nats_servers_defaults() {
        let defaults = Options {
            sort: Sort::Cid,
            auth: false,
            offset: 0,
            limit: 1024,
            cid: 0,
            state: State::Open,
            user: Vec::new(),
            mqtt_client: false,
        };
        assert_eq!(parsed(""), defaults);
        // Empty values and unknown parameters are as good as absent.
        assert_eq!(
            parsed("sort=&auth=&subs=&offset=&limit=&cid=&state=&user=&acc=x&foo"),
            defaults
        );
    }

    #[test]
    fn values_are_decoded_as_go_decodes_a_query() {
        assert_eq!(param("a=1&b=2", "b"), b"2");
        assert_eq!(param("a=1&a=2", "a"), b"1", "the first value");
        assert_eq!(param("user=a+b%2Fc%ff", "user"), b"a b/c\xff");
        assert_eq!(param("us%65r=x", "user"), b"x", "keys are decoded too");
        assert_eq!(param("user", "user"), b"");
        assert_eq!(
            param("user=%zz&user=b", "user"),
            b"b",
            "a bad escape drops its pair"
        );
        assert_eq!(param("user=%4", "user"), b"");
        assert_eq!(
            param("user=a;b&user=c", "user"),
            b"c",
            "so does a semicolon"
        );
        assert_eq!(param("a=1", "user"), b"");
    }

    #[test]
    fn every_sort_option_is_known_and_others_are_refused() {
        for (value, sort) in [
            ("cid", Sort::Cid),
            ("start", Sort::Start),
            ("subs", Sort::Subs),
            ("pending", Sort::Pending),
            ("msgs_to", Sort::MsgsTo),
            ("msgs_from", Sort::MsgsFrom),
            ("bytes_to", Sort::BytesTo),
            ("bytes_from", Sort::BytesFrom),
            ("last", Sort::Last),
            ("idle", Sort::Idle),
            ("uptime", Sort::Uptime),
            ("rtt", Sort::Rtt),
        ] {
            assert_eq!(parsed(&format!("sort={value}")).sort, sort, "{value}");
        }
        assert_eq!(refused("sort=bogus"), "invalid sorting option: bogus");
        assert_eq!(refused("sort=Cid"), "invalid sorting option: Cid");
        assert_eq!(refused("sort=subs+"), "invalid sorting option: subs ");
        assert_eq!(
            Options::parse("sort=%ff").unwrap_err(),
            b"invalid sorting option: \xff",
            "the raw bytes, unquoted"
        );
    }

    #[test]
    fn stop_and_reason_sort_closed_connections_only() {
        for state in ["", "&state=open", "&state=any"] {
            assert_eq!(
                refused(&format!("sort=stop{state}")),
                "sort by stop only valid on closed connections"
            );
            assert_eq!(
                refused(&format!("sort=reason{state}")),
                "sort by reason only valid on closed connections"
            );
        }
        assert_eq!(parsed("sort=stop&state=closed").sort, Sort::Stop);
        assert_eq!(parsed("sort=reason&state=CLOSED").sort, Sort::Reason);
    }

    #[test]
    fn state_takes_nats_servers_names_in_any_case() {
        for (value, state) in [
            ("open", State::Open),
            ("Open", State::Open),
            ("closed", State::Closed),
            ("any", State::Any),
            ("all", State::Any),
            ("ALL", State::Any),
        ] {
            assert_eq!(parsed(&format!("state={value}")).state, state, "{value}");
        }
        assert_eq!(refused("state=bogus"), "Error decoding state for bogus");
        assert_eq!(refused("state=%20open"), "Error decoding state for  open");
    }

    #[test]
    fn auth_and_subs_are_go_booleans() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(parsed(&format!("auth={yes}")).auth, "{yes}");
            parsed(&format!("subs={yes}"));
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!parsed(&format!("auth={no}")).auth, "{no}");
            parsed(&format!("subs={no}"));
        }
        // `subs=detail` asks for details, in any case (Go lowers `İ` to `i`).
        for detail in ["detail", "DETAIL", "DETA%C4%B0L"] {
            parsed(&format!("subs={detail}"));
        }
        assert_eq!(
            refused("auth=yes"),
            r#"Error decoding boolean for 'auth': strconv.ParseBool: parsing "yes": invalid syntax"#
        );
        assert_eq!(
            refused("auth=%ff%22"),
            r#"Error decoding boolean for 'auth': strconv.ParseBool: parsing "\xff\"": invalid syntax"#
        );
        assert_eq!(
            refused("subs=de+tail"),
            r#"Error decoding boolean for 'subs': strconv.ParseBool: parsing "de tail": invalid syntax"#
        );
    }

    #[test]
    fn offset_and_limit_are_go_ints() {
        let o = parsed("offset=2&limit=1");
        assert_eq!((o.offset, o.limit), (2, 1));
        let o = parsed("offset=-3&limit=-5");
        assert_eq!(
            (o.offset, o.limit),
            (0, 1024),
            "clamped as nats-server does"
        );
        assert_eq!(parsed("limit=0").limit, 1024);
        assert_eq!(
            parsed("limit=5000").limit,
            5000,
            "no cap, as in nats-server"
        );
        assert_eq!(parsed("limit=%2B3").limit, 3, "a `+` sign, escaped");
        assert_eq!(
            parsed("offset=9223372036854775807").offset,
            9223372036854775807
        );
        let int = |name: &str, value: &str, why: &str| {
            format!("Error decoding int for '{name}': strconv.Atoi: parsing \"{value}\": {why}")
        };
        assert_eq!(refused("offset=x"), int("offset", "x", "invalid syntax"));
        assert_eq!(refused("limit=x"), int("limit", "x", "invalid syntax"));
        assert_eq!(refused("limit=1.5"), int("limit", "1.5", "invalid syntax"));
        assert_eq!(refused("offset=+2"), int("offset", " 2", "invalid syntax"));
        assert_eq!(refused("offset=-"), int("offset", "-", "invalid syntax"));
        assert_eq!(
            refused("limit=99999999999999999999"),
            int("limit", "99999999999999999999", "value out of range")
        );
        assert_eq!(
            refused("offset=9223372036854775808"),
            int("offset", "9223372036854775808", "value out of range")
        );
        assert_eq!(
            refused("offset=-9223372036854775809"),
            int("offset", "-9223372036854775809", "value out of range")
        );
        // Go reads digit by digit: the first problem is the one reported.
        assert_eq!(
            refused("offset=9223372036854775808x"),
            int("offset", "9223372036854775808x", "invalid syntax")
        );
        assert_eq!(
            refused("offset=99999999999999999999x"),
            int("offset", "99999999999999999999x", "value out of range")
        );
    }

    #[test]
    fn cid_is_a_go_uint64_and_pages_one() {
        let o = parsed("cid=7&limit=50&offset=1");
        assert_eq!((o.cid, o.limit, o.offset), (7, 1, 1));
        assert_eq!(parsed("cid=0").limit, 1024, "0 is no lookup");
        let uint = |value: &str, why: &str| {
            format!(
                "Error decoding uint64 for 'cid': strconv.ParseUint: parsing \"{value}\": {why}"
            )
        };
        assert_eq!(refused("cid=x"), uint("x", "invalid syntax"));
        assert_eq!(refused("cid=-1"), uint("-1", "invalid syntax"));
        assert_eq!(refused("cid=%2B1"), uint("+1", "invalid syntax"));
        assert_eq!(refused("cid=1%00"), uint(r"1\x00", "invalid syntax"));
        assert_eq!(
            refused("cid=18446744073709551616"),
            uint("18446744073709551616", "value out of range")
        );
        assert_eq!(parsed("cid=18446744073709551615").cid, u64::MAX);
    }

    #[test]
    fn the_first_bad_value_in_nats_servers_order_is_reported() {
        assert!(
            refused("sort=bogus&state=bogus&cid=x&limit=x&offset=x&subs=x&auth=x")
                .contains("'auth'")
        );
        assert!(refused("sort=bogus&state=bogus&cid=x&limit=x&offset=x&subs=x").contains("'subs'"));
        assert!(refused("sort=bogus&state=bogus&cid=x&limit=x&offset=x").contains("'offset'"));
        assert!(refused("sort=bogus&state=bogus&cid=x&limit=x").contains("'limit'"));
        assert!(refused("sort=bogus&state=bogus&cid=x").contains("'cid'"));
        assert!(refused("sort=bogus&state=bogus").starts_with("Error decoding state"));
        assert!(refused("sort=stop&state=bogus").starts_with("Error decoding state"));
    }

    fn entry(cid: u64, start_secs: u64, user: Option<&str>, counts: LiveCounts) -> Arc<ConnEntry> {
        let mut entry = ConnEntry::new(cid, "default", "tcp", ([127, 0, 0, 1], 4000).into());
        entry.start = UNIX_EPOCH + Duration::from_secs(start_secs);
        // The same moment on the monotonic clock: one base for every entry of a test.
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        entry.started =
            *BASE.get_or_init(std::time::Instant::now) + Duration::from_secs(start_secs);
        entry.set_user(user.map(str::to_string));
        entry.publish(counts);
        Arc::new(entry)
    }

    /// Three connections in cid order, with distinct counters, and the first two started at
    /// the same second.
    fn three() -> Vec<Arc<ConnEntry>> {
        let counts = |n: [u64; 5]| LiveCounts {
            in_msgs: n[0],
            out_msgs: n[1],
            in_bytes: n[2],
            out_bytes: n[3],
            subscriptions: n[4],
        };
        let conns = vec![
            entry(1, 100, Some("alice"), counts([1, 9, 5, 2, 0])),
            entry(2, 100, None, counts([3, 7, 4, 8, 2])),
            entry(3, 200, Some("bob"), counts([2, 8, 6, 1, 1])),
        ];
        for (c, pending) in conns.iter().zip([10, 30, 20]) {
            c.publish_link(pending, Some(Duration::from_micros(pending as u64 % 7)));
        }
        conns
    }

    fn order(by: Sort) -> Vec<u64> {
        let mut conns: Vec<_> = three().into_iter().map(Picked::live).collect();
        sort(&mut conns, by);
        conns.iter().map(|p| p.entry.cid).collect()
    }

    /// Durations as Go writes them, which nats-server's `rtt` is.
    #[test]
    fn round_trips_read_as_nats_server_writes_them() {
        let shown = |d: Duration| go_duration(rtt_shown(Some(d)));
        assert_eq!(go_duration(rtt_shown(None)), "0s");
        assert_eq!(shown(Duration::from_nanos(850)), "850ns");
        assert_eq!(shown(Duration::from_nanos(115_678)), "115µs");
        assert_eq!(shown(Duration::from_nanos(1_500_000)), "1.5ms");
        assert_eq!(shown(Duration::from_nanos(1_234_567)), "1.234567ms");
        assert_eq!(shown(Duration::from_millis(2_250)), "2.25s");
        assert_eq!(shown(Duration::from_millis(62_500)), "1m2.5s");
        assert_eq!(shown(Duration::from_millis(3_600_500)), "1h0m0.5s");
        assert_eq!(shown(Duration::from_secs(60)), "1m0s");
    }

    #[test]
    fn websocket_clients_have_their_own_type() {
        assert_eq!(client_type("tcp"), "nats");
        assert_eq!(client_type("tls"), "nats");
        assert_eq!(client_type("ws"), "websocket");
        assert_eq!(client_type("wss"), "websocket");
    }

    #[test]
    fn sorts_as_nats_server_with_ties_in_cid_order() {
        assert_eq!(order(Sort::Cid), [1, 2, 3]);
        assert_eq!(order(Sort::Start), [1, 2, 3]);
        assert_eq!(order(Sort::MsgsFrom), [2, 3, 1]);
        assert_eq!(order(Sort::MsgsTo), [1, 3, 2]);
        assert_eq!(order(Sort::BytesFrom), [3, 1, 2]);
        assert_eq!(order(Sort::BytesTo), [2, 1, 3]);
        assert_eq!(order(Sort::Subs), [2, 3, 1]);
        assert_eq!(order(Sort::Uptime), [3, 1, 2], "the newest first");
        assert_eq!(order(Sort::Pending), [2, 3, 1]);
        // Their last activity is their start here: the latest first, the longest idle first.
        assert_eq!(order(Sort::Last), [3, 1, 2]);
        assert_eq!(order(Sort::Idle), [1, 2, 3]);
        // Round trips of 3, 2 and 6 µs: the longest first.
        assert_eq!(order(Sort::Rtt), [3, 1, 2]);
    }

    #[test]
    fn filters_select_by_cid_user_and_mqtt_client() {
        let selected = |query: &str| -> Vec<u64> {
            let opts = parsed(query);
            three()
                .into_iter()
                .filter(|c| opts.selects(c))
                .map(|c| c.cid)
                .collect()
        };
        assert_eq!(selected(""), [1, 2, 3]);
        assert_eq!(selected("cid=2"), [2]);
        assert_eq!(selected("cid=9"), [0; 0]);
        assert_eq!(selected("user=bob"), [3]);
        assert_eq!(selected("user=carol"), [0; 0]);
        assert_eq!(
            selected("mqtt_client=m1"),
            [0; 0],
            "the edge has no MQTT clients"
        );
        assert_eq!(
            selected("cid=1&user=bob"),
            [1],
            "a cid lookup ignores the rest"
        );
    }
}
