//! The rule set each live subscription was mapped with. A subscription exists at the
//! upstream under the subject its SUB was mapped to, so its deliveries map back with the
//! same set, whatever the session's set is now: a reload (or a second CONNECT naming
//! another user, to a nats-server that keeps the client's subscriptions then) changes what
//! the client's new ops map to, not what its subscriptions at the upstream already are. A SUB no rule claimed went upstream as the client wrote it, so
//! its deliveries reach the client as they are.
//!
//! In the common case every subscription was mapped with the session's current set, and
//! then a delivery needs no lookup at all: the table is looked at only once a subscription
//! is unmapped, counts an auto-unsubscribe, or was made with another set.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::RuleSet;

/// At most this many subscriptions are remembered per session (about 100 bytes each, and
/// their sids at most [`SID_BYTES`] in all); the deliveries of one made past either bound
/// are mapped back with the session's current set.
const CAPACITY: usize = 16 * 1024;
/// A sid may be as long as a control line allows (4 KiB by default): the bound on what the
/// table's keys hold, so a client cannot make it hold 64 MiB.
const SID_BYTES: usize = 256 * 1024;

#[derive(Default)]
pub(super) struct SubscriptionSets {
    by_sid: HashMap<Bytes, Recorded>,
    /// The bytes of the sids in `by_sid`.
    sid_bytes: usize,
    /// Entries of unmapped subscriptions.
    as_is: usize,
    /// Entries counting deliveries toward an auto-unsubscribe.
    with_max: usize,
    /// The set every mapped entry was made with, while there is only one.
    sets: Sets,
    /// Deliveries passed without a lookup so far: an entry made before one of them may
    /// have missed deliveries from its count.
    unlooked: u64,
}

#[derive(Default)]
enum Sets {
    #[default]
    None,
    One(Arc<RuleSet>),
    Several,
}

struct Recorded {
    /// The set that mapped the SUB; `None`: it went upstream as the client wrote it.
    set: Option<Arc<RuleSet>>,
    /// Deliveries seen, for an auto-unsubscribe.
    delivered: u64,
    /// `UNSUB sid max`: the upstream ends the subscription at its max-th delivery.
    max: Option<u64>,
    /// [`SubscriptionSets::unlooked`] when the entry was made: while it is the same, every
    /// delivery since was counted.
    unlooked_at: u64,
    /// An auto-unsubscribe whose count is not known: the upstream may have ended it. Such an
    /// entry stays until its sid is reused, or until it has seen `max` deliveries since (no
    /// more can come), and while it stays, deliveries are looked up: a cost only after a
    /// reload moved the set under an auto-unsubscribe.
    maybe_ended: bool,
}

/// How a delivery's subject maps back.
pub(super) enum Delivery {
    /// With the session's current set: its subscription was mapped with it, or is not
    /// known (made past the capacity).
    Current,
    /// With the set its subscription was mapped with, no longer the session's.
    MappedWith(Arc<RuleSet>),
    /// Not at all: its subscription was not mapped.
    AsIs,
}

impl SubscriptionSets {
    /// A SUB went upstream, mapped by `set` or (`None`) as the client wrote it. A SUB that
    /// reuses the sid of a live subscription changes nothing, as nats-server ignores it.
    pub(super) fn subscribed(&mut self, sid: &[u8], set: Option<Arc<RuleSet>>) {
        if self.by_sid.get(sid).is_some_and(|entry| entry.maybe_ended) {
            self.forget(sid);
        }
        if self.by_sid.len() >= CAPACITY
            || self.sid_bytes + sid.len() > SID_BYTES
            || self.by_sid.contains_key(sid)
        {
            return;
        }
        match &set {
            None => self.as_is += 1,
            Some(set) => {
                self.sets = match std::mem::take(&mut self.sets) {
                    Sets::None => Sets::One(set.clone()),
                    Sets::One(one) if Arc::ptr_eq(&one, set) => Sets::One(one),
                    _ => Sets::Several,
                }
            }
        }
        let recorded = Recorded {
            set,
            delivered: 0,
            max: None,
            unlooked_at: self.unlooked,
            maybe_ended: false,
        };
        self.sid_bytes += sid.len();
        self.by_sid.insert(Bytes::copy_from_slice(sid), recorded);
    }

    /// `UNSUB sid [max]`, as nats-server takes it: without a max, or with one the
    /// deliveries have reached, the subscription ends now; otherwise at its max-th delivery.
    /// That is known only where every delivery was counted. Elsewhere an entry made with the
    /// session's `current` set goes now (its last deliveries map back with that set all the
    /// same); one made with an earlier set, or unmapped while the session has a set now,
    /// stays, marked as maybe ended, so that its last deliveries still map back with its
    /// own set (or not at all), until a SUB reuses the sid or `max` more deliveries came.
    /// `watched`: the filter sees deliveries now; an UNSUB while it does not cannot know
    /// its count.
    pub(super) fn unsubscribed(
        &mut self,
        sid: &[u8],
        max: Option<u64>,
        current: Option<&Arc<RuleSet>>,
        watched: bool,
    ) {
        let unlooked = self.unlooked;
        let Some(entry) = self.by_sid.get_mut(sid) else {
            return;
        };
        let counted = watched && entry.unlooked_at == unlooked;
        match max {
            Some(max) if counted && max > entry.delivered => {
                if entry.max.replace(max).is_none() {
                    self.with_max += 1;
                }
            }
            Some(max) if !counted => {
                // Kept where forgetting it would map its last deliveries with another set
                // than its own: an unmapped one's with the set the session has now.
                let earlier_set = match (&entry.set, current) {
                    (Some(set), Some(current)) => !Arc::ptr_eq(set, current),
                    (Some(_), None) | (None, Some(_)) => true,
                    (None, None) => false,
                };
                if entry.maybe_ended && entry.max.is_some() {
                    // Another one: `delivered` counts from the first, no more than the
                    // upstream delivered, so one it has reached is over upstream too.
                    if max > entry.delivered {
                        entry.max = Some(max);
                    } else {
                        self.forget(sid);
                    }
                } else if earlier_set && max > 0 {
                    // The upstream delivers at most `max` more: counted from here, they
                    // bound how long the entry (and the look-up per delivery) stays.
                    entry.maybe_ended = true;
                    entry.delivered = 0;
                    if entry.max.replace(max).is_none() {
                        self.with_max += 1;
                    }
                } else {
                    self.forget(sid);
                }
            }
            _ => self.forget(sid),
        }
    }

    /// Deliveries start or stop being seen (the filter's interest changed): no entry made
    /// before knows its count from here on.
    pub(super) fn deliveries_unseen(&mut self) {
        self.unlooked = self.unlooked.wrapping_add(1);
    }

    /// Some subscription recorded was mapped by a set.
    pub(super) fn any_mapped(&self) -> bool {
        self.by_sid.len() > self.as_is
    }

    /// The upstream dropped every subscription (a CONNECT after the first): each entry stays
    /// for the deliveries already on their way, which still map back with its set, and goes
    /// when a SUB reuses its sid, which is then a new subscription.
    pub(super) fn dropped(&mut self) {
        for entry in self.by_sid.values_mut() {
            entry.maybe_ended = true;
        }
    }

    /// The edge ended these subscriptions at the upstream itself (a reload that refused
    /// them, an auto-unsubscribe the ACL counts).
    pub(super) fn ended(&mut self, sids: &[Bytes]) {
        for sid in sids {
            self.forget(sid);
        }
    }

    fn forget(&mut self, sid: &[u8]) {
        let Some(gone) = self.by_sid.remove(sid) else {
            return;
        };
        self.sid_bytes -= sid.len();
        self.as_is -= usize::from(gone.set.is_none());
        self.with_max -= usize::from(gone.max.is_some());
        if self.by_sid.is_empty() {
            self.sets = Sets::None;
        }
    }

    /// A delivery on `sid` arrived: how its subject maps back, given the session's `current`
    /// set. The set is shared by every session using it, so it is cloned only when it is no
    /// longer the current one (after a reload), never per delivery.
    pub(super) fn delivered(&mut self, sid: &[u8], current: Option<&Arc<RuleSet>>) -> Delivery {
        let all_current = match (&self.sets, current) {
            (Sets::None, _) => true,
            (Sets::One(one), Some(current)) => Arc::ptr_eq(one, current),
            _ => false,
        };
        if all_current && self.as_is == 0 && self.with_max == 0 {
            self.unlooked = self.unlooked.wrapping_add(1);
            return Delivery::Current;
        }
        let Some(entry) = self.by_sid.get_mut(sid) else {
            return Delivery::Current;
        };
        entry.delivered += 1;
        let delivery = match (&entry.set, current) {
            (Some(set), Some(current)) if Arc::ptr_eq(set, current) => Delivery::Current,
            (Some(set), _) => Delivery::MappedWith(set.clone()),
            (None, _) => Delivery::AsIs,
        };
        if entry.max.is_some_and(|max| entry.delivered >= max) {
            self.forget(sid);
        }
        delivery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long sids fill the table's byte bound long before its count: past it nothing more is
    /// recorded, and forgetting an entry gives its bytes back.
    #[test]
    fn long_sids_are_bounded_by_their_bytes() {
        let mut table = SubscriptionSets::default();
        let sid = |i: usize| format!("{i:04096}").into_bytes();
        for i in 0..SID_BYTES / 4096 + 10 {
            table.subscribed(&sid(i), None);
        }
        assert_eq!(table.by_sid.len(), SID_BYTES / 4096);
        assert_eq!(table.sid_bytes, SID_BYTES);
        table.ended(&[Bytes::from(sid(0))]);
        assert_eq!(table.sid_bytes, SID_BYTES - 4096);
        table.subscribed(&sid(99_999), None);
        assert!(table.by_sid.contains_key(&sid(99_999)[..]));
    }

    /// An auto-unsubscribe whose count is not known keeps its entry for at most `max` more
    /// deliveries (no more can come), so the look-up per delivery does not stay for good.
    #[test]
    fn an_uncounted_auto_unsubscribe_goes_after_max_more_deliveries() {
        let set = Arc::new(
            RuleSet::from_toml(
                "t",
                std::path::Path::new("t.toml"),
                "[[rule]]\nname='m'\nkind='mount'\nclient='a.>'\nupstream='x.a.>'\n",
            )
            .unwrap(),
        );
        let mut table = SubscriptionSets::default();
        table.subscribed(b"1", None);
        // The filter did not see deliveries (it was not active) when the UNSUB came.
        table.unsubscribed(b"1", Some(3), Some(&set), false);
        for _ in 0..3 {
            assert!(matches!(table.delivered(b"1", Some(&set)), Delivery::AsIs));
        }
        assert!(table.by_sid.is_empty());
        assert_eq!((table.as_is, table.with_max), (0, 0));
        assert!(matches!(
            table.delivered(b"1", Some(&set)),
            Delivery::Current
        ));
        // `UNSUB sid 0` after it, or one its deliveries since have reached: over at once.
        table.subscribed(b"2", None);
        table.unsubscribed(b"2", Some(3), Some(&set), false);
        table.unsubscribed(b"2", Some(0), Some(&set), false);
        assert!(table.by_sid.is_empty());
        table.subscribed(b"3", None);
        table.unsubscribed(b"3", Some(3), Some(&set), false);
        assert!(matches!(table.delivered(b"3", Some(&set)), Delivery::AsIs));
        table.unsubscribed(b"3", Some(1), Some(&set), false);
        assert!(table.by_sid.is_empty());
        assert_eq!((table.as_is, table.with_max), (0, 0));
    }
}
