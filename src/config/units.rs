//! Human-friendly config values: durations such as `"2s"` and sizes such as `"1MiB"`.
//! Both also accept a bare integer (seconds, bytes).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as `"200us"`, `"500ms"`, `"2s"`, `"1m"`, `"1h"`, or a whole number of
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A size written as `"4096"`, `"64KiB"`, `"1MiB"`, `"1MB"` (as nats-server reads it: 1 MiB),
/// or a whole number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let value: f64 = s[..end].parse().ok()?;
    Some((value, s[end..].trim()))
}

/// The longest duration a setting may have. Timers add durations to the clock, which a
/// value near `Duration::MAX` would overflow; no timeout or interval needs more than this.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (value, unit) = split_number(s)
        .ok_or_else(|| format!("`{s}` is not a duration (try \"2s\" or \"500ms\")"))?;
    let secs = match unit {
        // The micro sign and the Greek mu, as Go's time.ParseDuration takes both.
        "us" | "\u{b5}s" | "\u{3bc}s" => value / 1_000_000.0,
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown duration unit `{unit}` (use us, ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("`{s}` is out of range (at most 100 years)"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let (value, unit) =
        split_number(s).ok_or_else(|| format!("`{s}` is not a size (try \"1MiB\" or \"4096\")"))?;
    // nats-server's table (conf/parse.go), so a size copied from its configuration means
    // the same bytes here: `K`, `M`, `G`, `T` are powers of 1000; `KB`/`KiB`/`Ki` and the
    // like are powers of 1024.
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" | "ki" | "kib" => 1 << 10,
        "m" => 1000 * 1000,
        "mb" | "mi" | "mib" => 1 << 20,
        "g" => 1000 * 1000 * 1000,
        "gb" | "gi" | "gib" => 1 << 30,
        "t" => 1000 * 1000 * 1000 * 1000,
        "tb" | "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{s}`: unknown size unit `{unit}` (use B, KiB, MiB, GiB, KB, MB, GB, K, M or G)"
            ))
        }
    };
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes as u64)
}

struct HumanVisitor<F>(&'static str, F);

impl<'de, T, F: Fn(&str) -> Result<T, String>> Visitor<'de> for HumanVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.1)(&v.to_string()).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative")));
        }
        self.visit_u64(v as u64)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(HumanVisitor("a duration such as \"2s\"", parse_duration))
            .map(HumanDuration)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Whole milliseconds as before; whole microseconds (a busy-poll window) in µs;
        // anything finer as seconds, so every value reads back as itself.
        let nanos = self.0.subsec_nanos();
        if nanos % 1_000_000 == 0 {
            s.serialize_str(&format!("{}ms", self.0.as_millis()))
        } else if nanos % 1_000 == 0 {
            s.serialize_str(&format!("{}us", self.0.as_micros()))
        } else {
            s.serialize_str(&format!("{}s", self.0.as_secs_f64()))
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(HumanVisitor("a size such as \"1MiB\"", parse_size))
            .map(ByteSize)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// The fallback delay `handshake_first = "auto"` stands for: nats-server's
/// `DEFAULT_TLS_HANDSHAKE_FIRST_FALLBACK_DELAY`.
pub const AUTO_FALLBACK_DELAY: Duration = Duration::from_millis(50);

/// A TLS listener's `handshake_first`, with nats-server's values: `false` (INFO in the clear,
/// then the client starts TLS), `true` (the TLS handshake first), or a fallback delay such as
/// `"50ms"` (the handshake first when the client starts one within the delay, otherwise INFO
/// in the clear as with `false`). `"auto"` is a delay of 50 ms; `"on"`/`"off"` and
/// `"true"`/`"false"` as strings are accepted too. A zero delay (`"0s"`, or `"0"` as Go's
/// `time.ParseDuration` takes it) means `true`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HandshakeFirst {
    #[default]
    Off,
    On,
    Fallback(Duration),
}

impl HandshakeFirst {
    pub fn parse(s: &str) -> Result<HandshakeFirst, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" => return Ok(HandshakeFirst::On),
            "false" | "off" => return Ok(HandshakeFirst::Off),
            "auto" | "auto_fallback" => return Ok(HandshakeFirst::Fallback(AUTO_FALLBACK_DELAY)),
            _ => {}
        }
        // A number needs its unit, as Go's `time.ParseDuration` asks, which also takes a bare
        // zero.
        let has_unit = s.trim().ends_with(|c: char| c.is_ascii_alphabetic()) || s.trim() == "0";
        let delay = parse_duration(s).ok().filter(|_| has_unit).ok_or_else(|| {
            format!("`{s}` is not true, false, \"auto\" or a fallback delay such as \"50ms\"")
        })?;
        Ok(if delay.is_zero() {
            HandshakeFirst::On
        } else {
            HandshakeFirst::Fallback(delay)
        })
    }

    /// Whether the TLS handshake may come before INFO.
    pub fn is_enabled(self) -> bool {
        self != HandshakeFirst::Off
    }
}

impl<'de> Deserialize<'de> for HandshakeFirst {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HandshakeFirst;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, \"auto\" or a fallback delay such as \"50ms\"")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<HandshakeFirst, E> {
                Ok(if v {
                    HandshakeFirst::On
                } else {
                    HandshakeFirst::Off
                })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HandshakeFirst, E> {
                HandshakeFirst::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HandshakeFirst {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HandshakeFirst::Off => s.serialize_bool(false),
            HandshakeFirst::On => s.serialize_bool(true),
            HandshakeFirst::Fallback(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
        }
    }
}

/// A list of strings that may also be written as one comma-separated string, which is what an
/// environment variable can carry (`NATS_EDGE_UPSTREAM__URLS=nats://a:4222,nats://b:4222`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum, whose error ("data did not match any
        // variant") says nothing of what was expected.
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings, or one comma-separated string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StringList, E> {
                Ok(StringList(split_list(s)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(StringList(items))
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

/// The items of a comma-separated list. Commas inside a URL's credentials
/// (`nats://edge:p,a,ss@host:4222`, `nats://edge:p@ss,word@host`) do not split it: a URL
/// part runs on to the last part with an `@` before the next URL, as the host comes after
/// the last `@`. Otherwise a piece of the password would be taken for an item, and printed
/// in its error.
fn split_list(s: &str) -> Vec<String> {
    let parts: Vec<&str> = s.split(',').collect();
    let mut items: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let mut item = parts[i].to_string();
        i += 1;
        if item.contains("://") {
            let run = parts[i..].iter().take_while(|p| !p.contains("://")).count();
            let userinfo_end = parts[i..i + run].iter().rposition(|p| p.contains('@'));
            if let Some(end) = userinfo_end {
                for part in &parts[i..=i + end] {
                    item.push(',');
                    item.push_str(part);
                }
                i += end + 1;
            }
        }
        items.push(item);
    }
    items
        .into_iter()
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_in_credentials_does_not_split_a_url() {
        assert_eq!(
            split_list("nats://edge:s3cr,et@10.0.0.5:4222, tls://b:4222,"),
            ["nats://edge:s3cr,et@10.0.0.5:4222", "tls://b:4222"]
        );
        assert_eq!(
            split_list("nats://u:a,b,c@h:4222,nats://x:1,y:2"),
            ["nats://u:a,b,c@h:4222", "nats://x:1", "y:2"]
        );
        assert_eq!(
            split_list("base.toml,team@acme.toml"),
            ["base.toml", "team@acme.toml"]
        );
        assert_eq!(
            split_list("nats://edge:p@ss,word@host:4222,nats://u@h:1,b:2"),
            ["nats://edge:p@ss,word@host:4222", "nats://u@h:1", "b:2"]
        );
        assert_eq!(
            split_list("10.0.0.0/8,192.168.1.1"),
            ["10.0.0.0/8", "192.168.1.1"]
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(
            parse_duration("50\u{b5}s").unwrap(),
            Duration::from_micros(50)
        );
        assert_eq!(
            parse_duration("50\u{3bc}s").unwrap(),
            Duration::from_micros(50)
        );
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("2 fortnights").is_err());
        // Timers add durations to the clock: nothing near Duration::MAX gets through.
        for huge in ["9223372036854775807", "876001h", "99999999999999999999s"] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("out of range"), "{huge}: {err}");
        }
        assert!(parse_duration("876000h").is_ok());
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        // As nats-server reads them: `MB` is 1024-based, a bare `M` 1000-based.
        assert_eq!(parse_size("1MB").unwrap(), 1 << 20);
        assert_eq!(parse_size("8mb").unwrap(), 8 << 20);
        assert_eq!(parse_size("1M").unwrap(), 1_000_000);
        assert_eq!(parse_size("2k").unwrap(), 2000);
        assert_eq!(parse_size("2Ki").unwrap(), 2048);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn durations_read_back_as_themselves() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_millis(1500),
            Duration::from_micros(200),
            Duration::from_nanos(500),
        ] {
            let json = serde_json::to_string(&HumanDuration(d)).unwrap();
            let back: HumanDuration = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, d, "{json}");
        }
    }

    #[test]
    fn handshake_first_values() {
        use HandshakeFirst::*;
        for (text, want) in [
            ("true", On),
            ("ON", On),
            ("off", Off),
            ("false", Off),
            ("auto", Fallback(AUTO_FALLBACK_DELAY)),
            ("auto_fallback", Fallback(AUTO_FALLBACK_DELAY)),
            ("50ms", Fallback(Duration::from_millis(50))),
            ("1s", Fallback(Duration::from_secs(1))),
            ("0s", On),
            ("0", On),
        ] {
            assert_eq!(HandshakeFirst::parse(text), Ok(want), "{text}");
        }
        for bad in ["", "yes", "50", "50 fortnights", "-5ms"] {
            assert!(HandshakeFirst::parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&Fallback(Duration::from_millis(250))).unwrap();
        assert_eq!(json, "\"250ms\"");
        let back: HandshakeFirst = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Fallback(Duration::from_millis(250)));
        assert_eq!(serde_json::from_str::<HandshakeFirst>("true").unwrap(), On);
        assert!(serde_json::from_str::<HandshakeFirst>("1").is_err());
    }
}
