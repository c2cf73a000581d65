//! The NATS protocol as values: what a client sends ([`ClientOp`]) and what a server sends
//! ([`ServerOp`]).
//!
//! Subjects, sids and payloads are [`Bytes`] sliced out of the connection's read buffer, so
//! building an op copies nothing. A filter that keeps any of them beyond the op's lifetime must
//! copy it (`Bytes::copy_from_slice`), or it pins the whole read buffer.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An op sent by a client toward the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    Connect(Box<Connect>),
    /// PUB, or HPUB when `headers` is set.
    Pub(Pub),
    Sub(Sub),
    Unsub(Unsub),
    Ping,
    Pong,
    /// An INFO sent by a client. nats-server accepts and ignores it from clients.
    Info(Bytes),
    /// `+OK` sent by a client; nats-server ignores it.
    Ok,
    /// `-ERR` sent by a client; nats-server closes the connection on it.
    Err(Bytes),
}

/// An op sent by the server toward a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerOp {
    Info(Box<Info>),
    /// MSG, or HMSG when `headers` is set.
    Msg(Msg),
    Ping,
    Pong,
    Ok,
    /// `-ERR '<text>'`; the text without the quotes.
    Err(String),
}

/// A message published by a client: `PUB <subject> [reply] <size>` or
/// `HPUB <subject> [reply] <header size> <total size>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pub {
    pub subject: Bytes,
    pub reply: Option<Bytes>,
    /// The header block (`NATS/1.0\r\n...\r\n\r\n`) of an HPUB, as sent.
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

/// A message delivered to a client: `MSG <subject> <sid> [reply] <size>` or
/// `HMSG <subject> <sid> [reply] <header size> <total size>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub subject: Bytes,
    pub sid: Bytes,
    pub reply: Option<Bytes>,
    /// The header block of an HMSG, as sent.
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

/// `SUB <subject> [queue] <sid>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sub {
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    pub sid: Bytes,
}

/// `UNSUB <sid> [max]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsub {
    pub sid: Bytes,
    pub max: Option<u64>,
}

impl Pub {
    /// Header plus payload: what counts against max_payload.
    pub fn size(&self) -> usize {
        self.headers.as_ref().map_or(0, Bytes::len) + self.payload.len()
    }
}

impl Msg {
    /// Header plus payload.
    pub fn size(&self) -> usize {
        self.headers.as_ref().map_or(0, Bytes::len) + self.payload.len()
    }
}

/// The JSON of a client's CONNECT. Fields the edge looks at are typed; every other field,
/// including ones newer clients invent, is kept in `extra` and sent on unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbose: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pedantic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_responders: Option<bool>,
    /// Every field not named above, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Connect {
    /// nats-server treats a client as verbose until its CONNECT says otherwise, and a
    /// CONNECT without the field as verbose.
    pub fn is_verbose(&self) -> bool {
        self.verbose.unwrap_or(true)
    }

    /// nats-server checks a client's published subjects (pedantic) until its CONNECT says
    /// otherwise, and for a CONNECT without the field.
    pub fn is_pedantic(&self) -> bool {
        self.pedantic.unwrap_or(true)
    }

    /// Whether the client negotiated message headers.
    pub fn wants_headers(&self) -> bool {
        self.headers.unwrap_or(false)
    }

    /// Sets `key` among the other fields, in place of every spelling of it nats-server
    /// would read as the same field: Go's JSON decoder matches keys to fields
    /// case-insensitively and keeps the last, and the fields go upstream in key order, so a
    /// client's `PROXY_SIG` left beside the edge's `proxy_sig` would be read instead.
    pub fn set_extra(&mut self, key: &str, value: Value) {
        self.remove_extra(key);
        self.extra.insert(key.to_string(), value);
    }

    /// Removes every spelling of `key` nats-server would read as it.
    pub fn remove_extra(&mut self, key: &str) {
        let folded = go_fold(key);
        self.extra.retain(|k, _| go_fold(k) != folded);
    }
}

/// A JSON key as Go's decoder compares it with a struct field's name: ASCII letters in
/// either case, and the two non-ASCII letters that fold onto ASCII ones under Unicode simple
/// case folding, `ſ` (U+017F) onto `s` and the Kelvin sign (U+212A) onto `k`. Two keys with
/// the same fold name the same field.
pub fn go_fold(key: &str) -> String {
    key.chars().map(go_fold_char).collect()
}

/// One character of [`go_fold`].
pub fn go_fold_char(c: char) -> char {
    match c {
        '\u{017F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// The JSON of a server's INFO. Fields the edge rewrites or reads are typed; everything
/// else (server_id, version, nonce, jetstream, fields of newer servers) rides in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Info {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_available: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_connect_urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldm: Option<bool>,
    /// Every field not named above, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_keeps_unknown_fields_and_omits_absent_ones() {
        let json = r#"{"verbose":false,"name":"x","future_field":{"a":1},"headers":true}"#;
        let c: Connect = serde_json::from_str(json).unwrap();
        assert_eq!(
            c.extra.get("future_field"),
            Some(&serde_json::json!({"a":1}))
        );
        let back: Value = serde_json::to_value(&c).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
        assert!(!c.is_verbose());
        assert!(Connect::default().is_verbose());
    }

    #[test]
    fn info_round_trips_unknown_fields() {
        let json =
            r#"{"server_id":"S","max_payload":1048576,"nonce":"n","jetstream":true,"xyz":[1]}"#;
        let i: Info = serde_json::from_str(json).unwrap();
        assert_eq!(i.max_payload, Some(1_048_576));
        let back: Value = serde_json::to_value(&i).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
    }
}
