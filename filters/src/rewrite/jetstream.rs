//! JetStream through a mount: a stream created in the client's view (`subjects =
//! ["orders.>"]`) must capture the mapped subjects upstream, or nothing the client publishes
//! through the mount would land in it; a consumer created with a filter in the client's view
//! (`filter_subject = "orders.new"`) must select the mapped subjects in that stream; a
//! lookup by subject (which stream captures `orders.new`, its last message, a purge of it)
//! must look for the mapped subject; a snapshot must be sent to the client's inbox in the
//! mount, and a restored stream capture the mapped subjects. Only those requests are
//! touched, and only when the rule file asks (`jetstream_stream_subjects`,
//! `jetstream_consumer_filters`): they are rare control messages, so the copy a JSON
//! rewrite costs does not matter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::rules::RuleSet;
use crate::op::Msg;
use crate::responses::{ResponseBounds, ResponseTracker};

const STREAM_CREATE: &[u8] = b"$JS.API.STREAM.CREATE.";
const STREAM_UPDATE: &[u8] = b"$JS.API.STREAM.UPDATE.";
/// `$JS.API.STREAM.SNAPSHOT.<stream>`: its `deliver_subject` is where the server sends the
/// chunks; the answer shows the stream's config.
const STREAM_SNAPSHOT: &[u8] = b"$JS.API.STREAM.SNAPSHOT.";
/// `$JS.API.STREAM.RESTORE.<stream>`: its `config` is the restored stream's.
const STREAM_RESTORE: &[u8] = b"$JS.API.STREAM.RESTORE.";
/// Where a restore's chunks are published (`$JS.SNAPSHOT.RESTORE.<stream>.<id>`, named in
/// the answer to the restore request). The answer to the empty chunk that ends them is the
/// restored stream's info.
pub const RESTORE_CHUNKS: &[u8] = b"$JS.SNAPSHOT.RESTORE.";
/// `$JS.API.CONSUMER.CREATE.<stream>`, `...<stream>.<consumer>` and, since nats-server
/// 2.10, `...<stream>.<consumer>.<filter subject>`.
const CONSUMER_CREATE: &[u8] = b"$JS.API.CONSUMER.CREATE.";
const DURABLE_CREATE: &[u8] = b"$JS.API.CONSUMER.DURABLE.CREATE.";
/// `$JS.API.DIRECT.GET.<stream>`, and `...<stream>.<subject>` for the subject's last message
/// (how nats.go and async-nats read a key-value entry).
const DIRECT_GET: &[u8] = b"$JS.API.DIRECT.GET.";

/// Requests whose payload names subjects in its fields: the API subject (a prefix where it
/// ends with `.`, followed by the stream's name) and the fields. Most look a stream's
/// subjects up, read as filters (nats.go's `js.Subscribe` without a stream name starts with
/// the first, to find the stream); a snapshot's `deliver_subject` is where the server
/// sends the chunks, which the client subscribes to in its own view.
const LOOKUP_FIELDS: &[(&[u8], &[&str])] = &[
    (b"$JS.API.STREAM.NAMES", &["subject"]),
    (b"$JS.API.STREAM.LIST", &["subject"]),
    (b"$JS.API.STREAM.INFO.", &["subjects_filter"]),
    (b"$JS.API.STREAM.PURGE.", &["filter"]),
    (
        b"$JS.API.STREAM.MSG.GET.",
        &["last_by_subj", "next_by_subj"],
    ),
    (DIRECT_GET, &["last_by_subj", "next_by_subj", "multi_last"]),
    (STREAM_SNAPSHOT, &["deliver_subject"]),
];

/// The request payload with its stream's `subjects` mapped, when `subject` (the client's
/// view) is a stream create or update (the payload is the stream's config) or a restore
/// (the config is its `config`) and any subject changed.
pub fn map_stream_subjects(subject: &[u8], payload: &[u8], set: &RuleSet) -> Option<Bytes> {
    let stream_request = [STREAM_CREATE, STREAM_UPDATE, STREAM_RESTORE]
        .iter()
        .any(|p| subject.starts_with(p));
    if stream_request && unreadable(payload, true) {
        return Some(Bytes::from_static(UNREADABLE));
    }
    if subject.starts_with(STREAM_CREATE) || subject.starts_with(STREAM_UPDATE) {
        return edit_json_object(payload, |config| map_stream_config(config, None, set));
    }
    let stream = subject.strip_prefix(STREAM_RESTORE)?;
    edit_json_object(payload, |request| {
        // nats-server reads a request without a config as one with an empty config.
        let config = request.entry("config").or_insert(Value::Null);
        if config.is_null() {
            *config = Value::Object(Default::default());
        }
        config
            .as_object_mut()
            .is_some_and(|config| map_stream_config(config, Some(stream), set))
    })
}

/// Maps the subjects a stream's config captures; true when any changed. `stream` is the
/// name in the request subject, which nats-server gives a restored stream whose config
/// names none.
fn map_stream_config(
    config: &mut serde_json::Map<String, Value>,
    stream: Option<&[u8]>,
    set: &RuleSet,
) -> bool {
    if refused_by_the_server(config) {
        return false;
    }
    let listed = config
        .get("subjects")
        .and_then(Value::as_array)
        .is_some_and(|subjects| !subjects.is_empty());
    let copies = config.get("mirror").is_some_and(|m| !m.is_null())
        || config
            .get("sources")
            .and_then(Value::as_array)
            .is_some_and(|sources| !sources.is_empty());
    if listed || copies {
        return config
            .get_mut("subjects")
            .filter(|s| s.is_array())
            .is_some_and(|subjects| map_subjects(subjects, &forward(set)));
    }
    // nats-server makes a stream without subjects (and no mirror or sources) capture
    // its own name: as a subject of the client's, that is the mapped name upstream.
    let name = config
        .get("name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::as_bytes)
        .or(stream);
    let Some(mapped) = name.and_then(|name| forward(set)(name)) else {
        return false;
    };
    let mapped = String::from_utf8_lossy(&mapped).into_owned();
    config.insert("subjects".into(), Value::Array(vec![Value::String(mapped)]));
    true
}

/// Whether nats-server refuses the stream's subjects as the client wrote them: one that
/// captures every subject (`>`) without `no_ack`, or with more than one replica, or one
/// that overlaps its JetStream or system API without `no_ack` (`checkStreamCfg`), as such a
/// stream would answer every request it captured. Mapped into a mount, those subjects no
/// longer look like that (`>` becomes `tenant.acme.>`), and the stream would capture the
/// client's own requests, inboxes and all. So they go out as the client wrote them, and the
/// server refuses them as it would a client connected to it directly.
///
/// The body was read as nats-server reads it ([`unreadable`]), so what this finds refused,
/// the server refuses.
fn refused_by_the_server(config: &serde_json::Map<String, Value>) -> bool {
    use crate::acl::matching::{is_subset_match, subjects_collide};
    let no_ack = config.get("no_ack").and_then(Value::as_bool) == Some(true);
    let replicas = config
        .get("num_replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1);
    let Some(subjects) = config.get("subjects").and_then(Value::as_array) else {
        return false;
    };
    subjects.iter().filter_map(Value::as_str).any(|subject| {
        let subject = subject.as_bytes();
        if subject == b">" && (!no_ack || replicas != 1) {
            return true;
        }
        if no_ack {
            return false;
        }
        let api = [&b"$JS.>"[..], b"$JSC.>", b"$NRG.>"]
            .iter()
            .any(|api| subjects_collide(subject, api))
            && !is_subset_match(subject, b"$JS.EVENT.>");
        let system =
            subjects_collide(subject, b"$SYS.>") && !is_subset_match(subject, b"$SYS.ACCOUNT.>");
        api || system
    })
}

const STREAM_INFO: &[u8] = b"$JS.API.STREAM.INFO.";
const STREAM_LIST: &[u8] = b"$JS.API.STREAM.LIST";
const STREAM_MSG_GET: &[u8] = b"$JS.API.STREAM.MSG.GET.";
const CONSUMER_INFO: &[u8] = b"$JS.API.CONSUMER.INFO.";
const CONSUMER_LIST: &[u8] = b"$JS.API.CONSUMER.LIST.";

/// A JetStream API answer that shows subjects of the stream or consumer it is about, which
/// the client must see in its own view: clients compare a consumer's filter with the
/// subject they asked for (nats.go's `js.Subscribe` to an existing durable), and subscribe
/// to the deliver subject they read in it (async-nats' push consumers, key-value watches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAnswer {
    /// A stream's info (create, update, info, list, a snapshot's answer, and the answer to
    /// the empty chunk that ends a restore): `config.subjects`, and the counts per subject
    /// of `state.subjects`.
    Stream,
    /// A consumer's info (create, info, list): `config.filter_subject(s)` and
    /// `config.deliver_subject`.
    Consumer,
    /// A stored message (`STREAM.MSG.GET`): `message.subject`.
    StoredMessage,
    /// A direct get: messages whose `Nats-Subject` header names their subject (async-nats
    /// compares it with the key it asked for); a batch (`batch`, `multi_last`) is several,
    /// ended by a status message (`204 EOB`).
    DirectGet { batch: bool },
}

/// What the answer to a request to `client_subject` with `payload` shows, where the set
/// maps it.
pub fn api_answer(client_subject: &[u8], payload: &[u8], set: &RuleSet) -> Option<ApiAnswer> {
    let any = |prefixes: &[&[u8]]| prefixes.iter().any(|p| client_subject.starts_with(p));
    if set.jetstream_stream_subjects {
        if any(&[STREAM_CREATE, STREAM_UPDATE, STREAM_INFO, STREAM_SNAPSHOT])
            || client_subject == STREAM_LIST
            || (client_subject.starts_with(RESTORE_CHUNKS) && payload.is_empty())
        {
            return Some(ApiAnswer::Stream);
        }
        if any(&[STREAM_MSG_GET]) {
            return Some(ApiAnswer::StoredMessage);
        }
        if any(&[DIRECT_GET]) {
            return Some(ApiAnswer::DirectGet {
                batch: is_batch(payload),
            });
        }
    }
    if set.jetstream_consumer_filters
        && any(&[
            CONSUMER_CREATE,
            DURABLE_CREATE,
            CONSUMER_INFO,
            CONSUMER_LIST,
        ])
    {
        return Some(ApiAnswer::Consumer);
    }
    None
}

/// The answer with the subjects it shows mapped back into the client's view, when any
/// changed. Subjects no rule maps back are left as they are.
pub fn map_api_answer(kind: ApiAnswer, payload: &[u8], set: &RuleSet) -> Option<Bytes> {
    edit_json_object(payload, |object| match kind {
        ApiAnswer::Stream => {
            let mut changed = map_stream_info(object, set);
            for stream in list_mut(object, "streams") {
                changed |= map_stream_info(stream, set);
            }
            changed
        }
        ApiAnswer::Consumer => {
            let mut changed = map_consumer_info(object, set);
            for consumer in list_mut(object, "consumers") {
                changed |= map_consumer_info(consumer, set);
            }
            changed
        }
        ApiAnswer::StoredMessage => object
            .get_mut("message")
            .and_then(|m| m.get_mut("subject"))
            .is_some_and(|subject| map_subjects(subject, &|s| set.reverse(s))),
        // Its subject is in a header, not in a JSON payload.
        ApiAnswer::DirectGet { .. } => false,
    })
}

/// What goes to nats-server in place of a request body the edge cannot read: a body it
/// refuses as invalid JSON.
const UNREADABLE: &[u8] = b"{";

/// Whether a request body that names subjects may be read otherwise by nats-server than by
/// the edge. Go's `encoding/json` reads several JSON values one after the other into the
/// same request, takes invalid UTF-8, matches keys in any case (Unicode folding included:
/// `ſubjects` is `subjects`), and merges an object given twice; the edge reads one JSON
/// object, exact keys, the last of two. So a body is unreadable unless it is one JSON
/// object whose keys, at the top and in its `config`, are lower-case ASCII (as every client
/// writes them: the API's names are) and each given once, with values serde reads too (no
/// invalid UTF-8, lone surrogate, out-of-range number or deep nesting, which Go takes). The
/// edge cannot map what it cannot read, so such a body goes to the server as one it
/// refuses, never with its subjects outside the mount.
///
/// An empty body is refused by the server as it is. `null`, or white space alone, Go reads
/// as an empty request: harmless for a lookup (`null` is async-nats' body for a request
/// without options), but a stream created or restored from it would capture its own name
/// unmapped, so for those (`names_a_stream`) it is unreadable too.
fn unreadable(payload: &[u8], names_a_stream: bool) -> bool {
    if payload.is_empty() {
        return false;
    }
    if payload.trim_ascii().is_empty() {
        return names_a_stream;
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Null) => names_a_stream,
        Ok(Value::Object(_)) => serde_json::from_slice::<PlainKeys>(payload).is_err(),
        _ => true,
    }
}

/// A JSON object read only to check its keys (see [`unreadable`]): the deserialisation fails
/// on a key that is not lower-case ASCII or that comes twice, at the top and in `config`.
/// `null` (async-nats' body for a request without options; Go reads it as an empty
/// request) names no subject, and is read.
struct PlainKeys;

impl<'de> serde::Deserialize<'de> for PlainKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PlainKeysVisitor { nested: true })
    }
}

struct PlainKeysVisitor {
    /// Whether a `config` in this object is checked too.
    nested: bool,
}

impl<'de> serde::de::Visitor<'de> for PlainKeysVisitor {
    type Value = PlainKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object with lower-case keys, each once")
    }

    fn visit_unit<E>(self) -> Result<PlainKeys, E> {
        Ok(PlainKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PlainKeys, A::Error> {
        use serde::de::Error;
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let plain = key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !plain || seen.contains(&key) {
                return Err(A::Error::custom("a key nats-server may read otherwise"));
            }
            if self.nested && key == "config" {
                map.next_value_seed(PlainConfig)?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            seen.push(key);
        }
        Ok(PlainKeys)
    }
}

/// A request's `config`: an object checked as its request is, or `null`.
struct PlainConfig;

impl<'de> serde::de::DeserializeSeed<'de> for PlainConfig {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(PlainConfigVisitor)
    }
}

struct PlainConfigVisitor;

impl<'de> serde::de::Visitor<'de> for PlainConfigVisitor {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a config object")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        PlainKeysVisitor { nested: false }
            .visit_map(map)
            .map(|_| ())
    }
}

/// The JSON object `payload` after `edit`, when it says it changed something.
fn edit_json_object(
    payload: &[u8],
    edit: impl FnOnce(&mut serde_json::Map<String, Value>) -> bool,
) -> Option<Bytes> {
    let mut value: Value = serde_json::from_slice(payload).ok()?;
    let changed = edit(value.as_object_mut()?);
    changed
        .then(|| serde_json::to_vec(&value).ok().map(Bytes::from))
        .flatten()
}

/// Whether a direct get asks for several messages (a `batch` above 0, or `multi_last`
/// subjects), its keys read as Go reads them, in any casing.
fn is_batch(payload: &[u8]) -> bool {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    request.iter().any(|(key, value)| {
        (key.eq_ignore_ascii_case("batch") && value.as_u64().is_some_and(|n| n > 0))
            || (key.eq_ignore_ascii_case("multi_last")
                && value
                    .as_array()
                    .is_some_and(|subjects| !subjects.is_empty()))
    })
}

/// How long a request's answer is waited for: clients give up on theirs after 5 s.
const ANSWER_PATIENCE: Duration = Duration::from_secs(30);
/// How many requests wait for their answers at once (and at most 4 MiB of their reply
/// subjects): as many as the replies a mount remembers. A service that shares one
/// connection sends bursts of requests (hundreds of key-value reads at once); past this the
/// oldest is forgotten, and its answer comes as the upstream wrote it.
const PENDING_ANSWERS: usize = 16 * 1024;
/// Deliveries that answer no request between two looks for overdue requests.
const PRUNE_EVERY: u32 = 256;

/// What the requests sent with one reply subject wait for, oldest first: the set that
/// mapped each maps its answer back. Clients give every request a reply subject of its own;
/// one reused takes its answers in the order its requests went out.
struct Waiting {
    kind: ApiAnswer,
    set: Arc<RuleSet>,
    later: VecDeque<(ApiAnswer, Arc<RuleSet>)>,
}

impl crate::responses::HeldBytes for Waiting {
    /// Its own size and its later requests': the rule sets are shared.
    fn held_bytes(&self) -> usize {
        std::mem::size_of::<Waiting>()
            + self.later.len() * std::mem::size_of::<(ApiAnswer, Arc<RuleSet>)>()
    }
}

/// The JetStream API requests of a session waiting for their answers, by the upstream
/// reply subject the answer comes to. Empty, it costs a delivery one check; otherwise one
/// lookup.
pub struct PendingAnswers {
    waiting: ResponseTracker<Waiting>,
    misses: u32,
    /// When overdue requests were last looked for, after misses: at most once per
    /// [`ANSWER_PATIENCE`], as each look goes through every request waiting.
    last_prune: Option<Instant>,
}

impl Default for PendingAnswers {
    fn default() -> Self {
        PendingAnswers {
            waiting: ResponseTracker::new(
                ResponseBounds {
                    max_msgs: 0,
                    expires: Some(ANSWER_PATIENCE),
                },
                PENDING_ANSWERS,
            ),
            misses: 0,
            last_prune: None,
        }
    }
}

impl PendingAnswers {
    /// A request whose answer is `kind` went out with `reply`, mapped by `set`. The reply
    /// subject is copied: it may be a slice of a buffer it must not hold on to.
    /// A reply subject reused while an earlier request waits keeps both, in order, and is
    /// waited for [`ANSWER_PATIENCE`] from the latest.
    pub fn expect(&mut self, reply: &[u8], kind: ApiAnswer, set: &Arc<RuleSet>) {
        let waiting = match self.waiting.forget(reply) {
            Some(mut waiting) => {
                waiting.later.push_back((kind, set.clone()));
                waiting
            }
            None => Waiting {
                kind,
                set: set.clone(),
                later: VecDeque::new(),
            },
        };
        self.waiting.delivered_with(reply, waiting, Instant::now());
    }

    /// Maps `msg` back into the client's view when it answers a request; true when it
    /// changed. The request is done with its answer (a batch's, with its closing status).
    pub fn map_answer(&mut self, msg: &mut Msg) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        let Some(waiting) = self.waiting.get_mut(&msg.subject) else {
            // Requests that never got an answer would otherwise cost every delivery a
            // lookup until enough new requests come to prune them.
            self.misses += 1;
            if self.misses >= PRUNE_EVERY {
                self.misses = 0;
                let now = Instant::now();
                if self
                    .last_prune
                    .is_none_or(|last| now.duration_since(last) >= ANSWER_PATIENCE)
                {
                    self.last_prune = Some(now);
                    self.waiting.prune_now(now);
                }
            }
            return false;
        };
        // The server's own status answer (the end of a batch, 404, 408): no payload, and
        // none of a stored message's headers. A stored message may have a status line of
        // its publisher's.
        let status = msg.payload.is_empty()
            && msg.headers.as_deref().is_some_and(|block| {
                block.starts_with(b"NATS/1.0 ")
                    && crate::headers::Headers::parse(block)
                        .is_ok_and(|parsed| parsed.get(b"Nats-Sequence").is_none())
            });
        let (kind, set) = (waiting.kind, waiting.set.clone());
        if status || kind != (ApiAnswer::DirectGet { batch: true }) {
            // Done with its answer: the next request on this reply subject is waited for.
            match waiting.later.pop_front() {
                Some((next_kind, next_set)) => {
                    waiting.kind = next_kind;
                    waiting.set = next_set;
                }
                None => {
                    self.waiting.forget(&msg.subject);
                }
            }
        }
        match kind {
            ApiAnswer::DirectGet { .. } => {
                let rebuilt = msg
                    .headers
                    .as_deref()
                    .filter(|_| !status)
                    .and_then(|block| {
                        super::reverse_subject_header(block, |subject| set.reverse(subject))
                    });
                rebuilt.map(|block| msg.headers = Some(block)).is_some()
            }
            kind => map_api_answer(kind, &msg.payload, &set)
                .map(|payload| msg.payload = payload)
                .is_some(),
        }
    }
}

/// The objects of a list answer's `key` array.
fn list_mut<'a>(
    object: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut serde_json::Map<String, Value>> {
    object
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn map_stream_info(info: &mut serde_json::Map<String, Value>, set: &RuleSet) -> bool {
    let mut changed = false;
    if let Some(subjects) = info.get_mut("config").and_then(|c| c.get_mut("subjects")) {
        changed |= map_subjects(subjects, &|s| set.reverse(s));
    }
    if let Some(counts) = info
        .get_mut("state")
        .and_then(|s| s.get_mut("subjects"))
        .and_then(Value::as_object_mut)
    {
        let mapped: Vec<(String, Value)> = std::mem::take(counts)
            .into_iter()
            .map(|(subject, count)| match set.reverse(subject.as_bytes()) {
                Some(back) => {
                    changed = true;
                    (String::from_utf8_lossy(&back).into_owned(), count)
                }
                None => (subject, count),
            })
            .collect();
        counts.extend(mapped);
    }
    changed
}

fn map_consumer_info(info: &mut serde_json::Map<String, Value>, set: &RuleSet) -> bool {
    info.get_mut("config")
        .and_then(Value::as_object_mut)
        .is_some_and(|config| map_consumer_config(config, &|s| set.reverse(s)))
}

/// Applies `map` to the subjects of a consumer's config: its filters, and the subject a
/// push consumer delivers to (which the client subscribes to in its own view: unmapped,
/// the deliveries would go outside the mount, and never to the client). True when any
/// changed.
fn map_consumer_config(
    config: &mut serde_json::Map<String, Value>,
    map: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
) -> bool {
    let mut changed = false;
    for key in ["filter_subject", "filter_subjects", "deliver_subject"] {
        if let Some(subjects) = config.get_mut(key) {
            changed |= map_subjects(subjects, map);
        }
    }
    changed
}

/// Maps a JSON string holding a subject, or each string of a list of them, with `map`;
/// true when any changed.
fn map_subjects(value: &mut Value, map: &dyn Fn(&[u8]) -> Option<Vec<u8>>) -> bool {
    match value {
        Value::String(text) => match map(text.as_bytes()) {
            Some(mapped) => {
                *text = String::from_utf8_lossy(&mapped).into_owned();
                true
            }
            None => false,
        },
        Value::Array(subjects) => subjects
            .iter_mut()
            .filter(|subject| subject.is_string())
            .fold(false, |changed, subject| {
                map_subjects(subject, map) | changed
            }),
        _ => false,
    }
}

/// A client subject read as a filter, mapped into the upstream's view.
fn forward(set: &RuleSet) -> impl Fn(&[u8]) -> Option<Vec<u8>> + '_ {
    |subject| set.forward(subject, false).map(|(_, mapped)| mapped)
}

/// A request with the subjects it names mapped: what changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MappedRequest {
    /// The upstream subject with the subject in its tail mapped, when it held one.
    pub subject: Option<Bytes>,
    /// The payload with the subjects in its fields mapped.
    pub payload: Option<Bytes>,
}

impl MappedRequest {
    /// Puts what changed into `publish`; true when anything did.
    pub fn apply(self, publish: &mut crate::op::Pub) -> bool {
        let changed = self.subject.is_some() || self.payload.is_some();
        if let Some(subject) = self.subject {
            publish.subject = subject;
        }
        if let Some(payload) = self.payload {
            publish.payload = payload;
        }
        changed
    }
}

/// Maps the subjects a stream lookup names ([`LOOKUP_FIELDS`], and the subject at the end
/// of a direct get's own subject). `client_subject` is the request subject as the client
/// sent it, `upstream_subject` what the rules made of it.
pub fn map_stream_lookup(
    client_subject: &[u8],
    upstream_subject: &[u8],
    payload: &[u8],
    set: &RuleSet,
) -> MappedRequest {
    let mut out = MappedRequest::default();
    let Some((_, fields)) = LOOKUP_FIELDS.iter().find(|(api, _)| {
        if api.ends_with(b".") {
            client_subject.starts_with(api)
        } else {
            client_subject == *api
        }
    }) else {
        return out;
    };
    if client_subject.starts_with(DIRECT_GET) {
        out.subject = map_subject_tail(client_subject, DIRECT_GET, 1, upstream_subject, set);
    }
    if unreadable(payload, false) {
        out.payload = Some(Bytes::from_static(UNREADABLE));
        return out;
    }
    out.payload = edit_json_object(payload, |request| {
        fields.iter().fold(false, |changed, field| {
            request
                .get_mut(*field)
                .is_some_and(|subjects| map_subjects(subjects, &forward(set)))
                | changed
        })
    });
    out
}

/// Maps the filters and the deliver subject of a consumer create request. `client_subject` is the request subject
/// as the client sent it, `upstream_subject` what the rules made of it (the JetStream API
/// rule keeps the tail, so the filter in it is the same text at its end).
pub fn map_consumer_filters(
    client_subject: &[u8],
    upstream_subject: &[u8],
    payload: &[u8],
    set: &RuleSet,
) -> MappedRequest {
    let mut out = MappedRequest::default();
    let durable = client_subject.starts_with(DURABLE_CREATE);
    if !(durable || client_subject.starts_with(CONSUMER_CREATE)) {
        return out;
    }
    if !durable {
        out.subject = map_subject_tail(client_subject, CONSUMER_CREATE, 2, upstream_subject, set);
    }
    if unreadable(payload, true) {
        out.payload = Some(Bytes::from_static(UNREADABLE));
        return out;
    }
    out.payload = edit_json_object(payload, |request| {
        request
            .get_mut("config")
            .and_then(Value::as_object_mut)
            .is_some_and(|config| map_consumer_config(config, &forward(set)))
    });
    out
}

/// The subject at the end of an API subject (`$JS.API.CONSUMER.CREATE.<stream>.<consumer>.
/// <filter>`: `prefix`, then `names` tokens, then the subject), mapped into the upstream
/// subject (the JetStream API rule keeps the tail, so it is the same text at its end).
fn map_subject_tail(
    client_subject: &[u8],
    prefix: &[u8],
    names: usize,
    upstream_subject: &[u8],
    set: &RuleSet,
) -> Option<Bytes> {
    let rest = client_subject.strip_prefix(prefix)?;
    let subject = rest.splitn(names + 1, |b| *b == b'.').nth(names)?;
    let head = upstream_subject.strip_suffix(subject)?;
    let (_, mapped) = set.forward(subject, false)?;
    Some(Bytes::from([head, &mapped[..]].concat()))
}
