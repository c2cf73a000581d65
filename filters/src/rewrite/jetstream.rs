//! JetStream through a mount: a stream created in the client's view (`subjects =
//! ["orders.>"]`) must capture the mapped subjects upstream, or nothing the client publishes
//! through the mount would land in it. Only stream create and update requests are touched,
//! and only when the rule file asks (`jetstream_stream_subjects = true`): they are rare
//! control messages, so the copy a JSON rewrite costs does not matter.

use bytes::Bytes;
use serde_json::Value;

use super::rules::RuleSet;

const STREAM_CREATE: &[u8] = b"$JS.API.STREAM.CREATE.";
const STREAM_UPDATE: &[u8] = b"$JS.API.STREAM.UPDATE.";

/// The request payload with its `subjects` mapped, when `subject` (the client's view) is a
/// stream create or update and any subject changed.
pub fn map_stream_subjects(subject: &[u8], payload: &[u8], set: &RuleSet) -> Option<Bytes> {
    if !(subject.starts_with(STREAM_CREATE) || subject.starts_with(STREAM_UPDATE)) {
        return None;
    }
    let mut config: Value = serde_json::from_slice(payload).ok()?;
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
