//! Subject matching as nats-server's permission checks do it.
//!
//! nats-server keeps permission lists in a sublist and asks it which entries match a subject.
//! The subject is taken token by token, literally: a `*` or `>` in the subject being checked
//! is just a token, which an entry's `*` or `>` matches and a literal entry does not. A subject
//! with an empty token (`a..b`, `.a`, `a.`) matches no entry at all. These functions keep
//! those rules, so the edge decides exactly as the server would.

/// Whether a subject has an empty token (`a..b`, `.a`, `a.`, or nothing at all).
fn has_empty_token(subject: &[u8]) -> bool {
    subject.is_empty()
        || subject.first() == Some(&b'.')
        || subject.last() == Some(&b'.')
        || subject.windows(2).any(|w| w == b"..")
}

/// Whether the list entry `pattern` matches `subject`, the subject's tokens taken literally:
/// [`crate::subject::matches`], except that a subject with an empty token matches nothing.
pub fn entry_matches(pattern: &[u8], subject: &[u8]) -> bool {
    !has_empty_token(subject) && crate::subject::matches(pattern, subject)
}

fn is_pwc(token: &[u8]) -> bool {
    token == b"*"
}

fn is_fwc(token: &[u8]) -> bool {
    token == b">"
}

/// Whether every subject `subject` matches is also matched by `test` (nats-server's
/// `subjectIsSubsetMatch`). Used for queue names with wildcards.
pub fn is_subset_match(subject: &[u8], test: &[u8]) -> bool {
    let subject: Vec<&[u8]> = subject.split(|b| *b == b'.').collect();
    let test: Vec<&[u8]> = test.split(|b| *b == b'.').collect();
    for (i, t2) in test.iter().enumerate() {
        let Some(t1) = subject.get(i) else {
            return false;
        };
        if t2.is_empty() {
            return false;
        }
        if is_fwc(t2) {
            return true;
        }
        if t1.is_empty() || is_fwc(t1) {
            return false;
        }
        if is_pwc(t1) {
            if !is_pwc(t2) {
                return false;
            }
            continue;
        }
        if !is_pwc(t2) && t1 != t2 {
            return false;
        }
    }
    subject.len() == test.len()
}

/// Whether two subjects, either with wildcards, can both match some literal subject
/// (nats-server's `SubjectsCollide`).
pub fn subjects_collide(a: &[u8], b: &[u8]) -> bool {
    let a: Vec<&[u8]> = a.split(|c| *c == b'.').collect();
    let b: Vec<&[u8]> = b.split(|c| *c == b'.').collect();
    if a.iter().chain(b.iter()).any(|t| t.is_empty()) {
        return false;
    }
    let a_fwc = a.last().is_some_and(|t| is_fwc(t));
    let b_fwc = b.last().is_some_and(|t| is_fwc(t));
    for (x, y) in a.iter().zip(b.iter()) {
        if is_fwc(x) || is_fwc(y) {
            return true;
        }
        if !is_pwc(x) && !is_pwc(y) && x != y {
            return false;
        }
    }
    a.len() == b.len() || (a_fwc && b.len() >= a.len()) || (b_fwc && a.len() >= b.len())
}

/// Whether a subject holds a wildcard token.
pub fn has_wildcard(subject: &[u8]) -> bool {
    subject
        .split(|b| *b == b'.')
        .any(|t| is_pwc(t) || is_fwc(t))
}

/// nats-server's `queueMatches`: a queue group is allowed by the queue entries that matched
/// a subject when one of them names it, literally or by a wildcard pattern.
pub fn queue_matches<'a>(queue: &[u8], entries: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut any = false;
    for name in entries {
        any = true;
        if queue == name || (has_wildcard(name) && is_subset_match(queue, name)) {
            return true;
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_are_literal() {
        assert!(entry_matches(b"foo.*", b"foo.bar"));
        assert!(entry_matches(b"foo.*", b"foo.*"));
        assert!(entry_matches(b"foo.*", b"foo.>"));
        assert!(entry_matches(b"foo.>", b"foo.*"));
        assert!(!entry_matches(b"foo.bar", b"foo.*"));
        assert!(!entry_matches(b"foo.>", b"foo"));
        assert!(!entry_matches(b"foo.>", b"foo..bar"));
        assert!(!entry_matches(b">", b".foo"));
        assert!(!entry_matches(b">", b"foo."));
        assert!(!entry_matches(b">", b""));
        assert!(!entry_matches(b"Foo", b"foo"));
        assert!(entry_matches(b"foo*", b"foo*"));
        assert!(!entry_matches(b"foo*", b"foox"));
    }

    #[test]
    fn collisions() {
        assert!(subjects_collide(b"foo.bar", b"foo.*"));
        assert!(subjects_collide(b"foo.>", b"*.bar"));
        assert!(subjects_collide(b"foo.bar.baz", b"foo.>"));
        assert!(!subjects_collide(b"foo.bar", b"foo.baz"));
        assert!(!subjects_collide(b"foo.bar", b"foo.*.baz"));
        assert!(!subjects_collide(b"foo", b"foo.>"));
        assert!(subjects_collide(b">", b"a.b.c"));
    }

    #[test]
    fn queues() {
        assert!(queue_matches(b"workers", [b"workers".as_slice()]));
        assert!(!queue_matches(b"others", [b"workers".as_slice()]));
        assert!(queue_matches(b"w.eu", [b"w.*".as_slice()]));
        assert!(!queue_matches(b"w.eu.x", [b"w.*".as_slice()]));
        assert!(queue_matches(b"w.eu.x", [b"w.>".as_slice()]));
        assert!(queue_matches(b"any", std::iter::empty()));
    }
}
