//! Response tracking: the reply subjects of messages delivered to a client, so that the
//! client may answer them even where a rule would otherwise stop it.
//!
//! One mechanism for every filter that needs it: the ACL's `allow_responses` (a client may
//! publish to a reply subject it received, a bounded number of times within a bounded time,
//! as nats-server allows) and subject rewrite (a reply subject that came from outside a
//! mount goes back out unmapped). Each filter keeps its own tracker with its own bounds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many answers each reply subject allows, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseBounds {
    /// Answers allowed per delivered reply subject; 0 is unlimited.
    pub max_msgs: u32,
    /// How long after delivery an answer is allowed; `None` is forever.
    pub expires: Option<Duration>,
}

impl Default for ResponseBounds {
    /// nats-server's defaults for `allow_responses = true`: one answer within two minutes.
    fn default() -> Self {
        ResponseBounds {
            max_msgs: 1,
            expires: Some(Duration::from_secs(120)),
        }
    }
}

/// nats-server prunes its reply table after this many new entries; so does the tracker.
const PRUNE_EVERY: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    delivered: Instant,
    answers: u32,
}

/// The reply subjects a connection may answer, bounded in count and age.
#[derive(Debug)]
pub struct ResponseTracker {
    bounds: ResponseBounds,
    capacity: usize,
    replies: HashMap<Box<[u8]>, Entry>,
    since_prune: usize,
}

impl ResponseTracker {
    /// A tracker holding at most `capacity` reply subjects: past it, spent and expired ones
    /// are pruned, then the oldest are forgotten.
    pub fn new(bounds: ResponseBounds, capacity: usize) -> Self {
        ResponseTracker {
            bounds,
            capacity: capacity.max(1),
            replies: HashMap::new(),
            since_prune: 0,
        }
    }

    pub fn bounds(&self) -> ResponseBounds {
        self.bounds
    }

    /// A message with this reply subject was delivered to the client at `now`.
    pub fn delivered(&mut self, reply: &[u8], now: Instant) {
        self.replies.insert(
            reply.into(),
            Entry {
                delivered: now,
                answers: 0,
            },
        );
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY || self.replies.len() > self.capacity {
            self.prune(now);
        }
    }

    /// The client publishes to `subject` at `now`: true when it answers a tracked reply
    /// within the bounds, and the answer is counted. A spent or expired entry is removed.
    pub fn answer(&mut self, subject: &[u8], now: Instant) -> bool {
        let bounds = self.bounds;
        let Some(entry) = self.replies.get_mut(subject) else {
            return false;
        };
        entry.answers = entry.answers.saturating_add(1);
        let spent = bounds.max_msgs > 0 && entry.answers > bounds.max_msgs;
        let expired = is_expired(bounds, entry, now);
        if spent || expired {
            self.replies.remove(subject);
            return false;
        }
        true
    }

    /// Whether `subject` is a tracked reply that may still be answered, without counting.
    pub fn may_answer(&self, subject: &[u8], now: Instant) -> bool {
        self.replies.get(subject).is_some_and(|entry| {
            let spent = self.bounds.max_msgs > 0 && entry.answers >= self.bounds.max_msgs;
            !spent && !is_expired(self.bounds, entry, now)
        })
    }

    /// Reply subjects tracked now.
    pub fn len(&self) -> usize {
        self.replies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    fn prune(&mut self, now: Instant) {
        let bounds = self.bounds;
        self.replies.retain(|_, entry| {
            let spent = bounds.max_msgs > 0 && entry.answers >= bounds.max_msgs;
            !spent && !is_expired(bounds, entry, now)
        });
        if self.replies.len() > self.capacity {
            // Still over: forget the oldest deliveries. Rare (a client receiving requests
            // faster than it answers them), so a sort here costs nothing per message.
            let mut by_age: Vec<(Instant, Box<[u8]>)> = self
                .replies
                .iter()
                .map(|(k, e)| (e.delivered, k.clone()))
                .collect();
            by_age.sort_by_key(|(t, _)| *t);
            let excess = self.replies.len() - self.capacity;
            for (_, key) in by_age.into_iter().take(excess) {
                self.replies.remove(&key);
            }
        }
        self.since_prune = 0;
    }
}

fn is_expired(bounds: ResponseBounds, entry: &Entry, now: Instant) -> bool {
    bounds
        .expires
        .is_some_and(|ttl| now.saturating_duration_since(entry.delivered) > ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_answer_by_default() {
        let now = Instant::now();
        let mut t = ResponseTracker::new(ResponseBounds::default(), 16);
        assert!(!t.answer(b"_INBOX.a", now));
        t.delivered(b"_INBOX.a", now);
        assert!(t.may_answer(b"_INBOX.a", now));
        assert!(t.answer(b"_INBOX.a", now));
        assert!(!t.answer(b"_INBOX.a", now));
        assert!(t.is_empty());
    }

    #[test]
    fn bounded_count_and_expiry() {
        let now = Instant::now();
        let bounds = ResponseBounds {
            max_msgs: 3,
            expires: Some(Duration::from_secs(5)),
        };
        let mut t = ResponseTracker::new(bounds, 16);
        t.delivered(b"r", now);
        for _ in 0..3 {
            assert!(t.answer(b"r", now));
        }
        assert!(!t.answer(b"r", now));
        t.delivered(b"r", now);
        assert!(t.answer(b"r", now + Duration::from_secs(5)));
        assert!(!t.answer(b"r", now + Duration::from_secs(6)));

        let mut unlimited = ResponseTracker::new(
            ResponseBounds {
                max_msgs: 0,
                expires: None,
            },
            16,
        );
        unlimited.delivered(b"r", now);
        for _ in 0..100 {
            assert!(unlimited.answer(b"r", now + Duration::from_secs(3600)));
        }
    }

    #[test]
    fn capacity_forgets_the_oldest() {
        let now = Instant::now();
        let bounds = ResponseBounds {
            max_msgs: 1,
            expires: None,
        };
        let mut t = ResponseTracker::new(bounds, 4);
        for i in 0..10u64 {
            t.delivered(format!("r{i}").as_bytes(), now + Duration::from_millis(i));
        }
        assert!(t.len() <= 4);
        assert!(t.may_answer(b"r9", now));
        assert!(!t.may_answer(b"r0", now));
    }
}
