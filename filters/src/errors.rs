//! nats-server's own error texts, byte for byte.
//!
//! Client libraries match on these strings (nats.go closes on an `-ERR` it does not know), so
//! an error the edge makes itself must read exactly as the server's would. The texts were
//! checked against nats-server 2.15; some are lower case on purpose.

pub const UNKNOWN_PROTOCOL_OPERATION: &str = "Unknown Protocol Operation";
pub const MAX_CONTROL_LINE_EXCEEDED: &str = "maximum control line exceeded";
pub const MAX_PAYLOAD_VIOLATION: &str = "Maximum Payload Violation";
pub const MAX_SUBSCRIPTIONS_EXCEEDED: &str = "maximum subscriptions exceeded";
pub const AUTHENTICATION_TIMEOUT: &str = "Authentication Timeout";
pub const AUTHORIZATION_VIOLATION: &str = "Authorization Violation";
pub const INVALID_SUBJECT: &str = "Invalid Subject";
pub const INVALID_PUBLISH_SUBJECT: &str = "Invalid Publish Subject";
pub const MAX_CONNECTIONS_EXCEEDED: &str = "maximum connections exceeded";

use bytes::Bytes;

use crate::acl::quote::{go_quote, go_unquote};

/// A subscription nats-server refused or removed, read from its `-ERR`: its words for a SUB
/// its permissions refuse (`Permissions Violation for Subscription to "orders.x"`, with
/// ` using queue "q"` for a queue subscription), for one with more tokens than its account
/// allows (`... to "orders.x", too many tokens`), and for a subscription its reload removed
/// (either of the first two forms and then ` (sid "7")`). Subjects, queues and sids are
/// quoted as Go's `%q` quotes them.
#[derive(Debug, PartialEq)]
pub struct SubscriptionRefusal {
    pub subject: Vec<u8>,
    /// The queue group named; `None` also when the error does not say, see `any_queue`.
    pub queue: Option<Vec<u8>>,
    /// The error does not say whether the subscription had a queue group (too many tokens).
    pub any_queue: bool,
    /// Named when a reload removed the subscription.
    pub sid: Option<Vec<u8>>,
}

impl SubscriptionRefusal {
    /// nats-server's words for a SUB on `subject` (and `queue`) its permissions refuse, or,
    /// with the `sid`, for a subscription its reload removed: what [`Self::parse`] reads.
    pub fn text(subject: &[u8], queue: Option<&[u8]>, sid: Option<&[u8]>) -> String {
        let mut text = format!(
            "Permissions Violation for Subscription to {}",
            go_quote(subject)
        );
        if let Some(queue) = queue {
            text.push_str(" using queue ");
            text.push_str(&go_quote(queue));
        }
        if let Some(sid) = sid {
            text.push_str(&format!(" (sid {})", go_quote(sid)));
        }
        text
    }

    /// `None` for any other error.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("Permissions Violation for Subscription to ")?;
        let (subject, used) = go_unquote(rest)?;
        let mut refused = SubscriptionRefusal {
            subject,
            queue: None,
            any_queue: false,
            sid: None,
        };
        let mut rest = &rest[used..];
        if rest == ", too many tokens" {
            refused.any_queue = true;
            return Some(refused);
        }
        if let Some(queue) = rest.strip_prefix(" using queue ") {
            let (name, used) = go_unquote(queue)?;
            refused.queue = Some(name);
            rest = &queue[used..];
        }
        if let Some(sid) = rest.strip_prefix(" (sid ") {
            let (name, used) = go_unquote(sid)?;
            refused.sid = Some(name);
            rest = sid[used..].strip_prefix(')')?;
        }
        rest.is_empty().then_some(refused)
    }

    /// Whether the subscription `sid` on `subject` (and `queue`) is one this error is about.
    pub fn names(&self, sid: &[u8], subject: &[u8], queue: Option<&[u8]>) -> bool {
        *subject == self.subject[..]
            && (self.any_queue || queue == self.queue.as_deref())
            && self.sid.as_deref().is_none_or(|named| named == sid)
    }

    /// Of `subs` (sid, subject, queue, and when the SUB came), the sid this error is about:
    /// the one named, or else the earliest on the subject, as nats-server answers SUBs in
    /// order, one refusal each (a later SUB on it may be live: nats-server's own reload may
    /// have allowed it meanwhile, and its refusal, if any, follows).
    pub fn pick<'a>(
        &self,
        subs: impl Iterator<Item = (&'a Bytes, &'a [u8], Option<&'a [u8]>, u64)>,
    ) -> Option<Bytes> {
        subs.filter(|(sid, subject, queue, _)| self.names(sid, subject, *queue))
            .min_by_key(|(_, _, _, order)| *order)
            .map(|(sid, _, _, _)| sid.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the edge writes for a refusal reads back as that refusal, quoting and all.
    #[test]
    fn subscription_refusals_read_back() {
        for (subject, queue, sid) in [
            (&b"orders.x"[..], None, None),
            (b"orders.\"q\"", Some(&b"workers"[..]), None),
            (b"orders.x", None, Some(&b"7"[..])),
            (b"jobs.\xff", Some(b"w"), Some(b"12")),
        ] {
            let text = SubscriptionRefusal::text(subject, queue, sid);
            assert_eq!(
                SubscriptionRefusal::parse(&text),
                Some(SubscriptionRefusal {
                    subject: subject.to_vec(),
                    queue: queue.map(<[u8]>::to_vec),
                    any_queue: false,
                    sid: sid.map(<[u8]>::to_vec),
                }),
                "{text}"
            );
        }
        assert_eq!(SubscriptionRefusal::parse(MAX_SUBSCRIPTIONS_EXCEEDED), None);
    }
}
