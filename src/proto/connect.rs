//! Reading a CONNECT's JSON exactly as nats-server does, so the edge never judges a
//! different CONNECT from the one the server acts on.
//!
//! nats-server decodes CONNECT with Go's `encoding/json` into its client options
//! (`json.Unmarshal(arg, &c.opts)`), which differs from a serde derive in ways a client can
//! use to make the two disagree (a user named twice, `"Headers"` for `"headers"`):
//!
//! - keys are taken in document order, and a later one overwrites an earlier one;
//! - a key matches a field exactly or, failing that, case-insensitively with Unicode simple
//!   folding (so `ſ` is an `s` and the Kelvin sign `K` a `k`);
//! - `null` leaves a field as it was;
//! - a second CONNECT is decoded over the first one's options, not over empty ones
//!   ([`merge_connect`]).
//!
//! The edge then sends the CONNECT upstream as it read it, re-encoded with canonical keys,
//! so nothing it did not see can reach the server.

use std::fmt;

use nats_edge_filters::op::{go_fold, go_fold_char};
use nats_edge_filters::Connect;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::ProtoError;

/// The options fields the edge reads, by their JSON names in nats-server's `ClientOpts`.
const FIELDS: [&str; 16] = [
    "verbose",
    "pedantic",
    "tls_required",
    "auth_token",
    "user",
    "pass",
    "name",
    "lang",
    "version",
    "protocol",
    "echo",
    "sig",
    "jwt",
    "nkey",
    "headers",
    "no_responders",
];

/// The other scalar fields nats-server's `ClientOpts` declares: kept as the client wrote
/// them, but a value for one that serde_json cannot hold (`"account":1e400`) fails
/// nats-server's decode too, so it fails the edge's rather than being left out. (Its
/// `import` and `export` objects are not here: Go skips keys it does not know inside them
/// without reading their values.)
const OTHER_GO_FIELDS: [&str; 4] = ["account", "new_account", "remote_account", "proxy_sig"];

/// Parses CONNECT JSON as nats-server reads it (see the module docs). Invalid UTF-8 is
/// replaced by U+FFFD, as Go does; a field of the wrong type is an error, as in Go, and a
/// document that is not an object (or `null`) is one too.
///
/// A value of a field nats-server does not know that serde_json cannot hold (a number beyond
/// f64, nesting deeper than 128 levels) is left out: nats-server ignores such fields, and
/// the edge forwards only what it read.
pub fn parse_connect(json: &[u8]) -> Result<Connect, ProtoError> {
    merge_connect(&Connect::default(), json)
}

/// A CONNECT after the first: nats-server decodes it over the options it already holds, so
/// a field the new one leaves out (or sends as `null`) keeps its earlier value.
pub fn merge_connect(earlier: &Connect, json: &[u8]) -> Result<Connect, ProtoError> {
    let text = String::from_utf8_lossy(json);
    read_over(earlier, &text).or_else(|_| {
        // Go reads a lone surrogate escape (`\ud800`) as U+FFFD; serde_json refuses it.
        read_over(earlier, &replace_lone_surrogates(&text)).map_err(|_| ProtoError::BadJson)
    })
}

fn read_over(earlier: &Connect, text: &str) -> Result<Connect, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let connect = ConnectSeed(earlier.clone()).deserialize(&mut de)?;
    de.end()?;
    Ok(connect)
}

/// `text` with every `\u` escape of a surrogate that is not half of a pair replaced by
/// `\ufffd`.
fn replace_lone_surrogates(text: &str) -> String {
    let surrogate = |s: &str, range: std::ops::RangeInclusive<u32>| {
        s.strip_prefix("\\u")
            .and_then(|hex| hex.get(..4))
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .is_some_and(|code| range.contains(&code))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string && c == '\\' {
            if surrogate(rest, 0xD800..=0xDBFF) && surrogate(&rest[6..], 0xDC00..=0xDFFF) {
                out.push_str(&rest[..12]);
                rest = &rest[12..];
            } else if surrogate(rest, 0xD800..=0xDFFF) {
                out.push_str("\\ufffd");
                rest = &rest[6..];
            } else {
                // Any other escape, taken whole so an escaped quote or backslash is skipped.
                let len = rest[1..].chars().next().map_or(1, |e| 1 + e.len_utf8());
                out.push_str(&rest[..len]);
                rest = &rest[len..];
            }
            continue;
        }
        in_string ^= c == '"';
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Decodes a CONNECT object over the options it starts from.
struct ConnectSeed(Connect);

impl<'de> DeserializeSeed<'de> for ConnectSeed {
    type Value = Connect;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Connect, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ConnectSeed {
    type Value = Connect;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CONNECT object")
    }

    /// `CONNECT null` sets nothing, as in Go.
    fn visit_unit<E: de::Error>(self) -> Result<Connect, E> {
        Ok(self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Connect, A::Error> {
        let mut connect = self.0;
        // The other fields' keys by their fold: a later spelling of a key replaces the
        // earlier one, as nats-server keeps the last. They go upstream in key order, where
        // `ACCOUNT` would otherwise come before `account` whatever order the client wrote.
        let mut spellings: std::collections::HashMap<String, String> = connect
            .extra
            .keys()
            .map(|k| (go_fold(k), k.clone()))
            .collect();
        while let Some(key) = map.next_key::<String>()? {
            let Some(field) = field_for(&key) else {
                // Kept raw first: a value serde_json cannot hold must not fail the CONNECT.
                let raw = map.next_value::<Box<RawValue>>()?;
                match serde_json::from_str::<Value>(raw.get()) {
                    Err(e) if OTHER_GO_FIELDS.iter().any(|f| folds_to(&key, f)) => {
                        return Err(de::Error::custom(e));
                    }
                    Ok(Value::Null) | Err(_) => {}
                    Ok(value) => {
                        if let Some(earlier) = spellings.insert(go_fold(&key), key.clone()) {
                            connect.extra.remove(&earlier);
                        }
                        connect.extra.insert(key, value);
                    }
                }
                continue;
            };
            let c = &mut connect;
            match field {
                "verbose" => set(&mut c.verbose, map.next_value()?),
                "pedantic" => set(&mut c.pedantic, map.next_value()?),
                "tls_required" => set(&mut c.tls_required, map.next_value()?),
                "auth_token" => set(&mut c.auth_token, map.next_value()?),
                "user" => set(&mut c.user, map.next_value()?),
                "pass" => set(&mut c.pass, map.next_value()?),
                "name" => set(&mut c.name, map.next_value()?),
                "lang" => set(&mut c.lang, map.next_value()?),
                "version" => set(&mut c.version, map.next_value()?),
                "protocol" => set(&mut c.protocol, map.next_value()?),
                "echo" => set(&mut c.echo, map.next_value()?),
                "sig" => set(&mut c.sig, map.next_value()?),
                "jwt" => set(&mut c.jwt, map.next_value()?),
                "nkey" => set(&mut c.nkey, map.next_value()?),
                "headers" => set(&mut c.headers, map.next_value()?),
                _ => set(&mut c.no_responders, map.next_value()?),
            }
        }
        Ok(connect)
    }
}

/// `null` (read as `None`) leaves the field as it was.
fn set<T>(field: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *field = value;
    }
}

/// The field `key` names: an exact match first, then Go's case-insensitive one.
fn field_for(key: &str) -> Option<&'static str> {
    FIELDS
        .iter()
        .find(|f| **f == key)
        .or_else(|| FIELDS.iter().find(|f| folds_to(key, f)))
        .copied()
}

/// Whether `key` equals the lower-case ASCII `field` under Unicode simple case folding.
/// Only two non-ASCII letters fold onto ASCII ones: `ſ` (U+017F) onto `s` and the Kelvin
/// sign (U+212A) onto `k`.
fn folds_to(key: &str, field: &str) -> bool {
    let mut folded = key.chars().map(go_fold_char);
    field.chars().all(|f| folded.next() == Some(f)) && folded.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Connect {
        parse_connect(json.as_bytes()).unwrap()
    }

    /// Each way Go's decoder reads a key or value differently from a serde derive.
    #[test]
    fn reads_keys_and_values_as_go_does() {
        let c = parse(r#"{"USER":"bob","Headers":true,"no_Responders":true}"#);
        assert_eq!(c.user.as_deref(), Some("bob"));
        assert_eq!(c.headers, Some(true));
        assert_eq!(c.no_responders, Some(true));
        assert!(c.extra.is_empty(), "{:?}", c.extra);
        // Later keys win, whatever their case; null changes nothing.
        let c = parse(r#"{"user":"admin","USER":"bob","headers":true,"headers":null}"#);
        assert_eq!(c.user.as_deref(), Some("bob"));
        assert_eq!(c.headers, Some(true));
        // The two non-ASCII letters that fold onto ASCII ones.
        let c = parse("{\"u\u{017F}er\":\"carol\",\"n\u{212A}ey\":\"UA\"}");
        assert_eq!(c.user.as_deref(), Some("carol"));
        assert_eq!(c.nkey.as_deref(), Some("UA"));
        // Not a fold: a dotless i is not an i.
        let c = parse("{\"p\u{0131}ng\":1,\"l\u{0131}ang\":\"x\"}");
        assert_eq!(c.lang, None);
        assert_eq!(c.extra.len(), 2);
        // A field of the wrong type is an error, in any spelling.
        for bad in [
            r#"{"Verbose":"x"}"#,
            r#"{"protocol":1.5}"#,
            "[1]",
            "1",
            r#""s""#,
        ] {
            assert_eq!(
                parse_connect(bad.as_bytes()),
                Err(ProtoError::BadJson),
                "{bad}"
            );
        }
        assert_eq!(parse("null"), Connect::default());
    }

    /// Keys the edge does not read go upstream in key order, so of two spellings nats-server
    /// would read as one field only the last is kept, as nats-server keeps the last: sorted,
    /// `ACCOUNT` would come before `account` whatever the client wrote.
    #[test]
    fn of_two_spellings_of_an_unknown_key_the_last_is_kept() {
        let c = parse(r#"{"account":"x","ACCOUNT":""}"#);
        assert_eq!(c.extra, serde_json::from_str(r#"{"ACCOUNT":""}"#).unwrap());
        let c = merge_connect(&parse(r#"{"Account":"x"}"#), br#"{"account":""}"#).unwrap();
        assert_eq!(c.extra, serde_json::from_str(r#"{"account":""}"#).unwrap());
        // The edge's own fields replace every spelling a client sent.
        let mut c = parse("{\"proxy_\u{017F}ig\":\"forged\",\"PROXY_SIG\":\"forged\"}");
        c.set_extra("proxy_sig", serde_json::json!("signed"));
        assert_eq!(
            c.extra,
            serde_json::from_str(r#"{"proxy_sig":"signed"}"#).unwrap()
        );
        c.remove_extra("Proxy_Sig");
        assert!(c.extra.is_empty());
    }

    /// Lone surrogate escapes read as U+FFFD, as Go reads them; pairs and other escapes stay.
    #[test]
    fn lone_surrogates_read_as_replacement_characters() {
        let c = parse(r#"{"name":"a\ud800b","lang":"\udc00","version":"\ud83d\ude00\"\\ud800"}"#);
        assert_eq!(c.name.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(c.lang.as_deref(), Some("\u{fffd}"));
        assert_eq!(c.version.as_deref(), Some("\u{1f600}\"\\ud800"));
    }

    /// A second CONNECT keeps what the first set and it leaves out.
    #[test]
    fn a_second_connect_is_read_over_the_first() {
        let first = parse(r#"{"user":"bob","pass":"pw","headers":true,"x":1}"#);
        let second = merge_connect(&first, br#"{"headers":null,"name":"n","x":null}"#).unwrap();
        assert_eq!(second.user.as_deref(), Some("bob"));
        assert_eq!(second.headers, Some(true));
        assert_eq!(second.name.as_deref(), Some("n"));
        assert_eq!(second.extra.get("x"), Some(&serde_json::json!(1)));
    }

    /// What serde_json cannot hold in a field the edge does not read is left out, and the
    /// fields around it are still read.
    #[test]
    fn unrepresentable_unknown_values_are_left_out() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let c = parse(&format!(
            r#"{{"headers":true,"x":{deep},"big":1e400,"user":"u"}}"#
        ));
        assert_eq!(c.headers, Some(true));
        assert_eq!(c.user.as_deref(), Some("u"));
        assert!(c.extra.is_empty());
    }
}
