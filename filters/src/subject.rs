//! Subject validation and wildcard matching with nats-server's rules.
//!
//! A subject is a `.`-separated list of non-empty tokens with no whitespace. In a subscription
//! a token that is exactly `*` matches one token and a last token that is exactly `>` matches
//! one or more; `*` or `>` inside a longer token (`foo*`) is a literal character.

/// Bytes nats-server refuses anywhere in a subject.
fn is_subject_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A valid subscription subject: wildcards allowed, `>` only as the last token.
pub fn is_valid_subject(subject: &[u8]) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut tokens = subject.split(|b| *b == b'.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.iter().copied().any(is_subject_space) {
            return false;
        }
        if token == b">" && tokens.peek().is_some() {
            return false;
        }
    }
    true
}

/// A valid subject with no wildcard token: what may be published to.
pub fn is_valid_literal_subject(subject: &[u8]) -> bool {
    is_valid_subject(subject)
        && !subject
            .split(|b| *b == b'.')
            .any(|t| t == b"*" || t == b">")
}

/// Whether the literal `subject` is matched by `pattern` (which may hold `*` and `>`).
/// Token by token only: a wildcard matches an empty token here (`foo.*` matches `foo.`),
/// where nats-server matches nothing for a subject with one, so a caller that must judge
/// such subjects as nats-server does checks them first (as the ACL does).
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut pattern_tokens = pattern.split(|b| *b == b'.');
    let mut subject_tokens = subject.split(|b| *b == b'.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(b">"), Some(_)) => return true,
            (Some(p), Some(s)) => {
                if p != b"*" && p != s {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_follows_nats_server() {
        for ok in [
            "foo", "foo.bar", "foo.*", "foo.>", "*", ">", "foo*.bar", "a.b>",
        ] {
            assert!(is_valid_subject(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.>.bar",
            "foo bar",
            "foo\tbar",
        ] {
            assert!(!is_valid_subject(bad.as_bytes()), "{bad:?}");
        }
        assert!(is_valid_literal_subject(b"foo.bar"));
        assert!(is_valid_literal_subject(b"foo*.bar"));
        assert!(!is_valid_literal_subject(b"foo.*"));
        assert!(!is_valid_literal_subject(b"foo.>"));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches(b"foo.*", b"foo.bar"));
        assert!(!matches(b"foo.*", b"foo.bar.baz"));
        assert!(matches(b"foo.>", b"foo.bar.baz"));
        assert!(!matches(b"foo.>", b"foo"));
        assert!(matches(b">", b"foo"));
        assert!(matches(b"*.bar", b"foo.bar"));
        assert!(!matches(b"foo", b"foo.bar"));
        assert!(!matches(b"foo.bar", b"foo"));
        assert!(matches(b"foo", b"foo"));
        assert!(!matches(b"Foo", b"foo"));
    }
}
