//! JetStream through a mount: a stream created in the client's view (`subjects =
//! ["orders.>"]`) must capture the mapped subjects upstream, or nothing the client publishes
//! through the mount would land in it; a consumer created with a filter in the client's view
//! (`filter_subject = "orders.new"`) must select the mapped subjects in that stream. Only
//! stream create/update and consumer create requests are touched, and only when the rule
//! file asks (`jetstream_stream_subjects`, `jetstream_consumer_filters`): they are rare
//! control messages, so the copy a JSON rewrite costs does not matter.

use bytes::Bytes;
use serde_json::Value;

use super::rules::RuleSet;

const STREAM_CREATE: &[u8] = b"$JS.API.STREAM.CREATE.";
const STREAM_UPDATE: &[u8] = b"$JS.API.STREAM.UPDATE.";
/// `$JS.API.CONSUMER.CREATE.<stream>`, `...<stream>.<consumer>` and, since nats-server
/// 2.10, `...<stream>.<consumer>.<filter subject>`.
const CONSUMER_CREATE: &[u8] = b"$JS.API.CONSUMER.CREATE.";
const DURABLE_CREATE: &[u8] = b"$JS.API.CONSUMER.DURABLE.CREATE.";

/// The request payload with its `subjects` mapped, when `subject` (the client's view) is a
/// stream create or update and any subject changed.
pub fn map_stream_subjects(subject: &[u8], payload: &[u8], set: &RuleSet) -> Option<Bytes> {
    if !(subject.starts_with(STREAM_CREATE) || subject.starts_with(STREAM_UPDATE)) {
        return None;
    }
    let mut config: Value = serde_json::from_slice(payload).ok()?;
    let object = config.as_object_mut()?;
    let listed = object
        .get("subjects")
        .and_then(Value::as_array)
        .is_some_and(|subjects| !subjects.is_empty());
    let copies = object.get("mirror").is_some_and(|m| !m.is_null())
        || object
            .get("sources")
            .and_then(Value::as_array)
            .is_some_and(|sources| !sources.is_empty());
    if !listed && !copies {
        // nats-server makes a stream without subjects (and no mirror or sources) capture
        // its own name: as a subject of the client's, that is the mapped name upstream.
        let name = object.get("name")?.as_str()?;
        let (_, mapped) = set.forward(name.as_bytes(), false)?;
        let mapped = String::from_utf8_lossy(&mapped).into_owned();
        object.insert("subjects".into(), Value::Array(vec![Value::String(mapped)]));
        return serde_json::to_vec(&config).ok().map(Bytes::from);
    }
    let subjects = config.get_mut("subjects")?.as_array_mut()?;
    let mut changed = false;
    for entry in subjects.iter_mut() {
        let Some(text) = entry.as_str() else { continue };
        if let Some((_, mapped)) = set.forward(text.as_bytes(), false) {
            *entry = Value::String(String::from_utf8_lossy(&mapped).into_owned());
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    serde_json::to_vec(&config).ok().map(Bytes::from)
}

/// A consumer create request with its filter subjects and deliver subject mapped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConsumerCreate {
    /// The upstream subject with the filter in it mapped, when it held one.
    pub subject: Option<Bytes>,
    /// The request with `config.filter_subject` / `config.filter_subjects` mapped.
    pub payload: Option<Bytes>,
}

/// Maps the filters and the deliver subject of a consumer create request. `client_subject` is the request subject
/// as the client sent it, `upstream_subject` what the rules made of it (the JetStream API
/// rule keeps the tail, so the filter in it is the same text at its end).
pub fn map_consumer_filters(
    client_subject: &[u8],
    upstream_subject: &[u8],
    payload: &[u8],
    set: &RuleSet,
) -> ConsumerCreate {
    let mut out = ConsumerCreate::default();
    let durable = client_subject.starts_with(DURABLE_CREATE);
    if !(durable || client_subject.starts_with(CONSUMER_CREATE)) {
        return out;
    }
    if !durable {
        out.subject = map_subject_filter(client_subject, upstream_subject, set);
    }
    let Ok(mut request) = serde_json::from_slice::<Value>(payload) else {
        return out;
    };
    let Some(config) = request.get_mut("config").and_then(Value::as_object_mut) else {
        return out;
    };
    let mut changed = false;
    if let Some(filter) = config.get_mut("filter_subject") {
        changed |= map_value(filter, set);
    }
    if let Some(filters) = config
        .get_mut("filter_subjects")
        .and_then(Value::as_array_mut)
    {
        for filter in filters {
            changed |= map_value(filter, set);
        }
    }
    // A push consumer delivers to this subject, which the client subscribes to in its own
    // view: unmapped, the deliveries would go outside the mount, and never to the client.
    if let Some(deliver) = config.get_mut("deliver_subject") {
        changed |= map_value(deliver, set);
    }
    if changed {
        out.payload = serde_json::to_vec(&request).ok().map(Bytes::from);
    }
    out
}

/// The filter of `$JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter>`, mapped into the
/// upstream subject.
fn map_subject_filter(
    client_subject: &[u8],
    upstream_subject: &[u8],
    set: &RuleSet,
) -> Option<Bytes> {
    let rest = &client_subject[CONSUMER_CREATE.len()..];
    let mut tokens = rest.splitn(3, |b| *b == b'.');
    let (_stream, _consumer, filter) = (tokens.next()?, tokens.next()?, tokens.next()?);
    let head = upstream_subject.strip_suffix(filter)?;
    let (_, mapped) = set.forward(filter, false)?;
    Some(Bytes::from([head, &mapped[..]].concat()))
}

/// Maps a JSON string holding a subject; true when it changed.
fn map_value(value: &mut Value, set: &RuleSet) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    match set.forward(text.as_bytes(), false) {
        Some((_, mapped)) => {
            *value = Value::String(String::from_utf8_lossy(&mapped).into_owned());
            true
        }
        None => false,
    }
}
