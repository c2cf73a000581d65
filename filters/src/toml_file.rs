//! A rule file's TOML read into its serde types, with an error that says where: the line,
//! and the key the bad value sits under (`users.0.permissions.publish`), written as the
//! config file's errors write theirs (`listeners.0.bind`).

use std::fmt;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

/// Why a rule file's text did not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlFault {
    /// 1-based; 0 when the parser gave no position.
    pub line: usize,
    /// The key the value is under; `None` for a syntax error, found before any key.
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for TomlFault {
    /// `4: `users.0.permissions.publish`: invalid type: ...`, for after a file name and `:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.line)?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// Deserializes `text`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, TomlFault> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let key = key_path(e.path());
        let e = e.into_inner();
        TomlFault {
            line: e.span().map_or(0, |span| line_of(text, span.start)),
            key,
            reason: reason(e.message()),
        }
    })
}

/// The parser's message, on one line. A table written with dotted keys (`publish.allow =
/// [...]`) where a value's position is kept fails inside toml with a message that names
/// none of that: it says what to write instead.
fn reason(message: &str) -> String {
    if message.contains("expected a borrowed string") {
        return "a table written with dotted keys is not read here: write it out \
                (`publish = { allow = [...] }`, or a `[...publish]` table)"
            .into();
    }
    // A syntax error's message runs over lines ("invalid table header\nexpected ..."); a
    // log line holds one.
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    memchr::memchr_iter(b'\n', before).count() + 1
}

/// The path joined with `.`, an array entry by its index. The private keys through which
/// `toml::Spanned` reads a value's position are left out.
fn key_path(path: &serde_path_to_error::Path) -> Option<String> {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => push_key(&mut out, &index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !key.starts_with("$__serde_spanned_private") {
                    push_key(&mut out, key);
                }
            }
            Segment::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        users: Vec<User>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct User {
        name: toml::Spanned<String>,
        limits: Option<Limits>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Limits {
        max: u32,
    }

    #[test]
    fn a_type_error_names_its_key_and_line() {
        let text = "[[users]]\nname = \"a\"\n[[users]]\nname = \"b\"\nlimits = { max = \"x\" }\n";
        let fault = parse::<File>(text).unwrap_err();
        assert_eq!(fault.key.as_deref(), Some("users.1.limits.max"));
        assert_eq!(fault.line, 5);
        assert!(fault.reason.contains("invalid type"), "{fault}");
        assert!(
            fault
                .to_string()
                .starts_with("5: `users.1.limits.max`: invalid type"),
            "{fault}"
        );
    }

    #[test]
    fn a_spanned_value_is_named_without_the_private_keys() {
        let fault = parse::<File>("[[users]]\nname = 7\n").unwrap_err();
        assert_eq!(fault.key.as_deref(), Some("users.0.name"), "{fault}");
        assert_eq!(fault.line, 2);
    }

    #[test]
    fn a_syntax_error_has_a_line_and_no_key() {
        let fault = parse::<File>("[[users]]\nname = \n").unwrap_err();
        assert_eq!(fault.key, None, "{fault}");
        assert_eq!(fault.line, 2);
        let fault = parse::<File>("[[users]\n").unwrap_err();
        assert_eq!(fault.line, 1);
        assert!(!fault.reason.contains('\n'), "{fault}");
    }
}
