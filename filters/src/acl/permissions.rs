//! Compiled permissions and the decisions nats-server would make with them.

use std::sync::Arc;

use super::matching::{entry_matches, has_wildcard, queue_matches, subjects_collide};
use crate::responses::ResponseBounds;

/// Where a rule was written, for errors and `acl explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One entry of an allow or deny list: a subject (wildcards allowed) and, in subscribe
/// lists, an optional queue group (`"jobs.> workers"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub subject: Box<str>,
    pub queue: Option<Box<str>>,
    pub origin: Origin,
}

impl Rule {
    /// Whether this entry names queue group `queue` (its group may be a wildcard).
    pub fn names_group(&self, queue: &[u8]) -> bool {
        self.queue
            .as_deref()
            .is_some_and(|n| queue_matches(queue, std::iter::once(n.as_bytes())))
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.queue {
            Some(q) => write!(f, "\"{} {}\" ({})", self.subject, q, self.origin),
            None => write!(f, "\"{}\" ({})", self.subject, self.origin),
        }
    }
}

/// An allow and a deny list. `allow: None` allows everything the deny list does not deny;
/// `allow: Some(empty)` allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPermission {
    pub allow: Option<Vec<Rule>>,
    pub deny: Vec<Rule>,
}

impl SubjectPermission {
    fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }
}

/// A user's (or the default) permissions, in nats-server's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: SubjectPermission,
    pub subscribe: SubjectPermission,
    /// `allow_responses`: the client may publish to reply subjects it received.
    pub responses: Option<ResponseBounds>,
}

/// Why a decision went the way it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason<'a> {
    /// The user has no permissions of this kind: everything is allowed.
    NoRestrictions,
    /// Allowed by this allow entry (and no deny entry matched).
    AllowedBy(&'a Rule),
    /// Allowed: there is no allow list and no deny entry matched.
    NotDenied,
    /// No allow entry matches.
    NotInAllowList,
    /// An allow entry matches the subject but names other queue groups.
    QueueNotAllowed(&'a Rule),
    /// Denied by this deny entry.
    DeniedBy(&'a Rule),
    /// The `_sys_` queue group is reserved by nats-server.
    ReservedQueue,
}

/// A decision and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    pub reason: Reason<'a>,
}

impl<'a> Decision<'a> {
    fn allow(reason: Reason<'a>) -> Self {
        Decision {
            allowed: true,
            reason,
        }
    }

    fn deny(reason: Reason<'a>) -> Self {
        Decision {
            allowed: false,
            reason,
        }
    }
}

/// The queue group nats-server keeps for itself; no client may join it.
pub(crate) const SYSTEM_QUEUE: &[u8] = b"_sys_";

fn matching<'r>(list: &'r [Rule], subject: &'r [u8]) -> impl Iterator<Item = &'r Rule> + 'r {
    list.iter()
        .filter(move |r| entry_matches(r.subject.as_bytes(), subject))
}

impl Permissions {
    /// Whether publishing needs a look at every PUB.
    pub fn restricts_publish(&self) -> bool {
        !self.publish.is_open() || self.responses.is_some()
    }

    /// Whether subscribing needs a look at every SUB.
    pub fn restricts_subscribe(&self) -> bool {
        !self.subscribe.is_open()
    }

    /// May the client publish to `subject`? (nats-server's static check, without responses.)
    pub fn check_publish<'a>(&'a self, subject: &'a [u8]) -> Decision<'a> {
        let list = &self.publish;
        if list.is_open() {
            return Decision::allow(Reason::NoRestrictions);
        }
        let mut reason = Reason::NotDenied;
        if let Some(allow) = &list.allow {
            match matching(allow, subject).next() {
                Some(rule) => reason = Reason::AllowedBy(rule),
                None => return Decision::deny(Reason::NotInAllowList),
            }
        }
        if let Some(rule) = matching(&list.deny, subject).next() {
            return Decision::deny(Reason::DeniedBy(rule));
        }
        Decision::allow(reason)
    }

    /// May the client subscribe to `subject`, in `queue` if given? (nats-server's
    /// `canSubscribe`.)
    pub fn check_subscribe<'a>(
        &'a self,
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
    ) -> Decision<'a> {
        let list = &self.subscribe;
        let queue = queue.filter(|q| !q.is_empty());
        // nats-server refuses `_sys_` to every client, whatever its permissions, with the
        // same error as a permission violation.
        if list.is_open() {
            return if queue == Some(SYSTEM_QUEUE) {
                Decision::deny(Reason::ReservedQueue)
            } else {
                Decision::allow(Reason::NoRestrictions)
            };
        }
        // The permission check itself passes `_sys_` by; nats-server refuses it right after.
        let mut reason = Reason::NotDenied;
        if let Some(allow) = &list.allow {
            let plain = matching(allow, subject).find(|r| r.queue.is_none());
            let queued: Vec<&Rule> = matching(allow, subject)
                .filter(|r| r.queue.is_some())
                .collect();
            let mut allowed = plain.is_some();
            if let Some(rule) = plain {
                reason = Reason::AllowedBy(rule);
            }
            if let (Some(q), false) = (queue, queued.is_empty()) {
                // When queue entries match the subject, the queue must be one they name.
                let names = queued.iter().filter_map(|r| r.queue.as_deref());
                allowed = queue_matches(q, names.map(str::as_bytes));
                reason = if allowed {
                    let named = queued.iter().find(|r| r.names_group(q));
                    named.map_or(reason, |r| Reason::AllowedBy(r))
                } else {
                    Reason::QueueNotAllowed(queued[0])
                };
            }
            if !allowed {
                return Decision::deny(match reason {
                    Reason::QueueNotAllowed(_) => reason,
                    _ => Reason::NotInAllowList,
                });
            }
        }
        if let Some(rule) = matching(&list.deny, subject).find(|r| r.queue.is_none()) {
            return Decision::deny(Reason::DeniedBy(rule));
        }
        if let Some(q) = queue {
            let queued: Vec<&Rule> = matching(&list.deny, subject)
                .filter(|r| r.queue.is_some())
                .collect();
            if let Some(rule) = queued.iter().find(|r| r.names_group(q)) {
                return Decision::deny(Reason::DeniedBy(rule));
            }
        }
        if queue == Some(SYSTEM_QUEUE) {
            return Decision::deny(Reason::ReservedQueue);
        }
        Decision::allow(reason)
    }

    /// Whether an accepted subscription can receive subjects the deny list denies, so its
    /// deliveries must be filtered (nats-server's `loadMsgDenyFilterIfNeeded`).
    pub fn needs_delivery_filter(&self, subject: &[u8], queue: Option<&[u8]>) -> bool {
        let queued = queue.is_some_and(|q| !q.is_empty());
        (queued || has_wildcard(subject))
            && self
                .subscribe
                .deny
                .iter()
                .any(|r| subjects_collide(r.subject.as_bytes(), subject))
    }

    /// The deny entry that keeps a message on `subject` from a subscription in `queue`
    /// (nats-server's `checkDenySub`).
    pub fn denied_delivery<'a>(
        &'a self,
        subject: &'a [u8],
        queue: Option<&[u8]>,
    ) -> Option<&'a Rule> {
        let deny = &self.subscribe.deny;
        if let Some(rule) = matching(deny, subject).find(|r| r.queue.is_none()) {
            return Some(rule);
        }
        let q = queue.filter(|q| !q.is_empty())?;
        matching(deny, subject).find(|r| r.names_group(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[&str]) -> Vec<Rule> {
        entries
            .iter()
            .map(|e| {
                let mut parts = e.split(' ');
                Rule {
                    subject: parts.next().unwrap_or_default().into(),
                    queue: parts.next().map(Into::into),
                    origin: Origin {
                        file: "t.toml".into(),
                        line: 1,
                    },
                }
            })
            .collect()
    }

    fn perms(
        pub_allow: Option<&[&str]>,
        pub_deny: &[&str],
        sub_allow: Option<&[&str]>,
        sub_deny: &[&str],
    ) -> Permissions {
        Permissions {
            publish: SubjectPermission {
                allow: pub_allow.map(rules),
                deny: rules(pub_deny),
            },
            subscribe: SubjectPermission {
                allow: sub_allow.map(rules),
                deny: rules(sub_deny),
            },
            responses: None,
        }
    }

    #[test]
    fn publish_deny_wins() {
        let p = perms(Some(&["orders.>"]), &["orders.secret"], None, &[]);
        assert!(p.check_publish(b"orders.new").allowed);
        assert!(!p.check_publish(b"orders.secret").allowed);
        assert!(!p.check_publish(b"billing.x").allowed);
        assert!(!p.check_publish(b"Orders.new").allowed);
        assert!(!p.check_publish(b"orders..new").allowed);
        // Only an empty allow list: nothing.
        let none = perms(Some(&[]), &[], None, &[]);
        assert!(!none.check_publish(b"a").allowed);
        // Deny only: a subject no entry can match is not denied.
        let deny = perms(None, &["secret.>"], None, &[]);
        assert!(deny.check_publish(b"public").allowed);
        assert!(!deny.check_publish(b"secret.x").allowed);
        assert!(deny.check_publish(b"secret..x").allowed);
    }

    #[test]
    fn subscribe_wildcards_and_queues() {
        let p = perms(
            None,
            &[],
            Some(&["foo.*", "jobs.> workers"]),
            &["foo.secret"],
        );
        assert!(p.check_subscribe(b"foo.bar", None).allowed);
        assert!(p.check_subscribe(b"foo.*", None).allowed);
        assert!(!p.check_subscribe(b"foo.secret", None).allowed);
        assert!(p.needs_delivery_filter(b"foo.*", None));
        assert!(!p.needs_delivery_filter(b"foo.bar", None));
        assert!(p.denied_delivery(b"foo.secret", None).is_some());
        // Queue-only entry: plain subscriptions are refused, the named group is allowed.
        assert!(!p.check_subscribe(b"jobs.a", None).allowed);
        assert!(p.check_subscribe(b"jobs.a", Some(b"workers")).allowed);
        assert!(!p.check_subscribe(b"jobs.a", Some(b"others")).allowed);
        assert!(!p.check_subscribe(b"foo.bar", Some(b"_sys_")).allowed);
        assert!(!p.check_subscribe(b"foo..bar", None).allowed);
        // `_sys_` is refused with no subscribe permissions at all, as nats-server does.
        let open = Permissions::default();
        assert!(open.check_subscribe(b"foo.bar", Some(b"workers")).allowed);
        let sys = open.check_subscribe(b"foo.bar", Some(b"_sys_"));
        assert_eq!((sys.allowed, sys.reason), (false, Reason::ReservedQueue));
    }

    #[test]
    fn queue_deny_entries() {
        let p = perms(None, &[], None, &["jobs.> bad"]);
        assert!(p.check_subscribe(b"jobs.a", None).allowed);
        assert!(p.check_subscribe(b"jobs.a", Some(b"good")).allowed);
        assert!(!p.check_subscribe(b"jobs.a", Some(b"bad")).allowed);
        assert!(p.needs_delivery_filter(b"jobs.a", Some(b"good")));
        assert!(p.denied_delivery(b"jobs.a", Some(b"bad")).is_some());
        assert!(p.denied_delivery(b"jobs.a", Some(b"good")).is_none());
    }
}
