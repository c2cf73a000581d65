//! Response tracking: the reply subjects of messages delivered to a client, so that the
//! client may answer them even where a rule would otherwise stop it.
//!
//! One mechanism for every filter that needs it: the ACL's `allow_responses` (a client may
//! publish to a reply subject it received, a bounded number of times within a bounded time,
//! as nats-server allows) and subject rewrite (a reply subject that came from outside a
//! mount is shown to the client under a subject of the edge's, and an answer to that goes
//! back out to the reply subject it stands for). Each filter keeps its own tracker with its
//! own bounds; a tracker may keep a value with each reply (rewrite keeps the upstream's).

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

/// What a tracker holds, in bytes, at most (reply subjects, and the values kept with them):
/// the count bound alone would let requesters with long reply subjects (up to the
/// control-line limit each) make one connection's tracker hold hundreds of MiB.
const HELD_BYTES: usize = 4 * 1024 * 1024;

/// The bytes a value kept with a reply holds, counted against [`HELD_BYTES`].
pub trait HeldBytes {
    fn held_bytes(&self) -> usize;
}

impl HeldBytes for () {
    fn held_bytes(&self) -> usize {
        0
    }
}

impl HeldBytes for Option<bytes::Bytes> {
    fn held_bytes(&self) -> usize {
        self.as_ref().map_or(0, bytes::Bytes::len)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry<V> {
    delivered: Instant,
    answers: u32,
    value: V,
    /// The reply subject's bytes and the value's, against [`HELD_BYTES`].
    bytes: usize,
}

/// The reply subjects a connection may answer, bounded in count and age, each with a value
/// of the filter's (none by default).
#[derive(Debug)]
pub struct ResponseTracker<V = ()> {
    bounds: ResponseBounds,
    capacity: usize,
    replies: HashMap<Box<[u8]>, Entry<V>>,
    /// The bytes of the entries in `replies`, against [`HELD_BYTES`].
    held_bytes: usize,
    since_prune: usize,
}

impl ResponseTracker<()> {
    /// A message with this reply subject was delivered to the client at `now`.
    pub fn delivered(&mut self, reply: &[u8], now: Instant) {
        self.delivered_with(reply, (), now);
    }
}

impl<V: HeldBytes> ResponseTracker<V> {
    /// A tracker holding at most `capacity` reply subjects (and at most [`HELD_BYTES`] of
    /// them): past either, spent and expired ones are pruned, then the oldest are forgotten.
    pub fn new(bounds: ResponseBounds, capacity: usize) -> Self {
        ResponseTracker {
            bounds,
            capacity: capacity.max(1),
            replies: HashMap::new(),
            held_bytes: 0,
            since_prune: 0,
        }
    }

    fn over(&self) -> bool {
        self.replies.len() > self.capacity || self.held_bytes > HELD_BYTES
    }

    pub fn bounds(&self) -> ResponseBounds {
        self.bounds
    }

    /// A message with this reply subject was delivered to the client at `now`; `value`
    /// is kept with it until it is answered for the last time, expires or is forgotten.
    pub fn delivered_with(&mut self, reply: &[u8], value: V, now: Instant) {
        let entry = Entry {
            delivered: now,
            answers: 0,
            bytes: reply.len() + value.held_bytes(),
            value,
        };
        self.held_bytes += entry.bytes;
        if let Some(replaced) = self.replies.insert(reply.into(), entry) {
            self.held_bytes -= replaced.bytes;
        }
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY || self.over() {
            self.prune(now);
        }
    }

    /// The client publishes to `subject` at `now`: true when it answers a tracked reply
    /// within the bounds, and the answer is counted. A spent or expired entry is removed.
    pub fn answer(&mut self, subject: &[u8], now: Instant) -> bool {
        self.answer_with(subject, now).is_some()
    }

    /// [`ResponseTracker::answer`], giving the value kept with the reply.
    pub fn answer_with(&mut self, subject: &[u8], now: Instant) -> Option<&V> {
        let bounds = self.bounds;
        let entry = self.replies.get_mut(subject)?;
        entry.answers = entry.answers.saturating_add(1);
        let spent = bounds.max_msgs > 0 && entry.answers > bounds.max_msgs;
        let expired = is_expired(bounds, entry, now);
        if spent || expired {
            if let Some(removed) = self.replies.remove(subject) {
                self.held_bytes -= removed.bytes;
            }
            return None;
        }
        self.replies.get(subject).map(|entry| &entry.value)
    }

    /// Whether `subject` is a tracked reply that may still be answered, without counting.
    pub fn may_answer(&self, subject: &[u8], now: Instant) -> bool {
        self.replies.get(subject).is_some_and(|entry| {
            let spent = self.bounds.max_msgs > 0 && entry.answers >= self.bounds.max_msgs;
            !spent && !is_expired(self.bounds, entry, now)
        })
    }

    /// The value kept with `subject`, whatever its age and answers: for a tracker whose
    /// entries end when its filter says so ([`ResponseTracker::forget`]).
    pub fn get_mut(&mut self, subject: &[u8]) -> Option<&mut V> {
        self.replies.get_mut(subject).map(|entry| &mut entry.value)
    }

    /// Forgets `subject` now, giving back its value.
    pub fn forget(&mut self, subject: &[u8]) -> Option<V> {
        let removed = self.replies.remove(subject)?;
        self.held_bytes -= removed.bytes;
        Some(removed.value)
    }

    /// Forgets the spent and expired entries now, and past the bounds the oldest; otherwise
    /// that happens every few thousand deliveries.
    pub fn prune_now(&mut self, now: Instant) {
        self.prune(now);
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
        let mut removed = 0;
        self.replies.retain(|_, entry| {
            let spent = bounds.max_msgs > 0 && entry.answers >= bounds.max_msgs;
            let keep = !spent && !is_expired(bounds, entry, now);
            removed += if keep { 0 } else { entry.bytes };
            keep
        });
        self.held_bytes -= removed;
        // Still over (a client receiving requests faster than it answers them): forget the
        // oldest deliveries, down to 7/8 of the capacity (or, when the bytes are what is
        // over, to 7/8 of those bytes' worth of entries at their average size), so that the
        // next eviction is an eighth of the way away and its cost is shared by all of the
        // deliveries until then. Only the delivery times are copied and partly ordered,
        // never the subjects. Old entries shorter than the average leave it over after one
        // pass: another follows, each forgetting at least one entry.
        while self.over() {
            let by_count = self.capacity * 7 / 8;
            let by_bytes = (HELD_BYTES * 7 / 8)
                .saturating_mul(self.replies.len())
                .checked_div(self.held_bytes)
                .unwrap_or(by_count);
            let keep = by_count.min(by_bytes).max(1);
            let excess = self.replies.len().saturating_sub(keep).max(1);
            let mut ages: Vec<Instant> = self.replies.values().map(|e| e.delivered).collect();
            let (_, &mut cutoff, _) = ages.select_nth_unstable(excess - 1);
            // Exactly `excess` entries, none younger than the cutoff: the older ones first,
            // then as many delivered at the cutoff itself as are still needed.
            let mut left = excess;
            let mut evicted = 0;
            for at_cutoff in [false, true] {
                self.replies.retain(|_, e| {
                    let evict = left > 0
                        && if at_cutoff {
                            e.delivered == cutoff
                        } else {
                            e.delivered < cutoff
                        };
                    left -= usize::from(evict);
                    evicted += if evict { e.bytes } else { 0 };
                    !evict
                });
            }
            self.held_bytes -= evicted;
        }
        self.since_prune = 0;
    }
}

fn is_expired<V>(bounds: ResponseBounds, entry: &Entry<V>, now: Instant) -> bool {
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

    /// Long reply subjects are bounded by their bytes, not only by their count: the oldest
    /// are forgotten, the newest kept, and the byte count stays exact through answers,
    /// pruning and eviction.
    #[test]
    fn held_bytes_are_bounded_too() {
        let now = Instant::now();
        let bounds = ResponseBounds {
            max_msgs: 1,
            expires: Some(Duration::from_secs(60)),
        };
        let mut t = ResponseTracker::new(bounds, 1_000_000);
        let subject = |i: u64| format!("{i:04096}").into_bytes();
        let exact = |t: &ResponseTracker| t.replies.keys().map(|k| k.len()).sum::<usize>();
        for i in 0..4096u64 {
            t.delivered(&subject(i), now + Duration::from_micros(i));
            assert!(t.held_bytes <= HELD_BYTES, "{i}");
        }
        assert_eq!(t.held_bytes, exact(&t));
        assert!(t.len() < 1024, "{}", t.len());
        assert!(t.may_answer(&subject(4095), now));
        assert!(!t.may_answer(&subject(0), now));
        // An answer that spends its entry gives its bytes back; so does expiry.
        let before = t.held_bytes;
        assert!(t.answer(&subject(4095), now));
        assert!(!t.answer(&subject(4095), now));
        assert_eq!(t.held_bytes, before - 4096);
        t.delivered(b"short", now + Duration::from_secs(3600));
        t.prune(now + Duration::from_secs(3600));
        assert_eq!(t.held_bytes, exact(&t));
        assert_eq!(t.len(), 1);

        // The values kept with replies count too: rewrite keeps the upstream's reply subject
        // under a short token of its own.
        let mut kept: ResponseTracker<Option<bytes::Bytes>> =
            ResponseTracker::new(bounds, 1_000_000);
        for i in 0..4096u64 {
            let token = format!("_R_.{i:016x}");
            let upstream = bytes::Bytes::from(subject(i));
            kept.delivered_with(
                token.as_bytes(),
                Some(upstream),
                now + Duration::from_micros(i),
            );
            assert!(kept.held_bytes <= HELD_BYTES, "{i}");
        }
        assert!(kept.len() < 1100, "{}", kept.len());

        // Many short old entries, then long new ones: the oldest are forgotten by age, so
        // one pass at the average size is not enough; every delivery still ends under.
        let mut mixed = ResponseTracker::new(bounds, 1_000_000);
        for i in 0..200_000u64 {
            mixed.delivered(format!("s{i}").as_bytes(), now);
        }
        for i in 0..2048u64 {
            mixed.delivered(
                &subject(i),
                now + Duration::from_secs(1) + Duration::from_micros(i),
            );
            assert!(mixed.held_bytes <= HELD_BYTES, "{i}");
        }
        assert_eq!(mixed.held_bytes, exact(&mixed));
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

        // Even a tracker of one keeps the reply just delivered.
        let mut one = ResponseTracker::new(bounds, 1);
        for i in 0..3u64 {
            one.delivered(format!("q{i}").as_bytes(), now + Duration::from_millis(i));
        }
        assert_eq!(one.len(), 1);
        assert!(one.may_answer(b"q2", now));
    }

    /// Past its capacity the tracker forgets the oldest down to 7/8 of it, so an eviction
    /// comes once per capacity/8 deliveries, not once per delivery; deliveries that share
    /// one instant are forgotten only as far as needed.
    #[test]
    fn eviction_goes_down_to_seven_eighths() {
        let now = Instant::now();
        let bounds = ResponseBounds {
            max_msgs: 0,
            expires: None,
        };
        let mut t = ResponseTracker::new(bounds, 64);
        for i in 0..64u64 {
            t.delivered(format!("r{i}").as_bytes(), now + Duration::from_millis(i));
        }
        assert_eq!(t.len(), 64);
        t.delivered(b"r64", now + Duration::from_millis(64));
        assert_eq!(t.len(), 56);
        assert!(!t.may_answer(b"r8", now));
        assert!(t.may_answer(b"r9", now));
        assert!(t.may_answer(b"r64", now));
        // The next eviction is eight deliveries away.
        for i in 65..73u64 {
            t.delivered(format!("r{i}").as_bytes(), now + Duration::from_millis(i));
        }
        assert_eq!(t.len(), 64);

        let mut same = ResponseTracker::new(bounds, 64);
        for i in 0..1000u64 {
            same.delivered(format!("s{i}").as_bytes(), now);
            let len = same.len();
            assert!(
                len <= 64 && len >= (i as usize + 1).min(56),
                "{len} after {i}"
            );
        }
    }
}
