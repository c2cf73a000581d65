//! The rule set each live subscription was mapped with. A subscription exists at the
//! upstream under the subject its SUB was mapped to, so its deliveries map back with the
//! same set, whatever the session's set is now: a reload (or a second CONNECT naming
//! another user) changes what the client's new ops map to, not what its subscriptions at
//! the upstream already are. A SUB no rule claimed went upstream as the client wrote it, so
//! its deliveries reach the client as they are.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::RuleSet;

/// At most this many subscriptions are remembered per session; the deliveries of one made
/// past it are mapped back with the session's current set, as if it had none recorded.
const CAPACITY: usize = 64 * 1024;

#[derive(Default)]
pub(super) struct SubscriptionSets {
    by_sid: HashMap<Bytes, Recorded>,
}

struct Recorded {
    /// The set that mapped the SUB; `None`: it went upstream as the client wrote it.
    set: Option<Arc<RuleSet>>,
    /// Deliveries seen, for an auto-unsubscribe.
    delivered: u64,
    /// `UNSUB sid max`: the upstream ends the subscription at its max-th delivery.
    max: Option<u64>,
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
        if self.by_sid.len() >= CAPACITY || self.by_sid.contains_key(sid) {
            return;
        }
        let recorded = Recorded {
            set,
            delivered: 0,
            max: None,
        };
        self.by_sid.insert(Bytes::copy_from_slice(sid), recorded);
    }

    /// The edge ended these subscriptions at the upstream itself (a reload that refused
    /// them, an auto-unsubscribe the ACL counts).
    pub(super) fn ended(&mut self, sids: &[Bytes]) {
        for sid in sids {
            self.by_sid.remove(sid);
        }
    }

    /// `UNSUB sid [max]`, as nats-server takes it: without a max, or with one the
    /// deliveries have reached, the subscription ends now; otherwise at its max-th delivery.
    pub(super) fn unsubscribed(&mut self, sid: &[u8], max: Option<u64>) {
        let Some(entry) = self.by_sid.get_mut(sid) else {
            return;
        };
        match max {
            Some(max) if max > entry.delivered => entry.max = Some(max),
            _ => {
                self.by_sid.remove(sid);
            }
        }
    }

    /// A delivery on `sid` arrived: how its subject maps back, given the session's `current`
    /// set. The set is shared by every session using it, so it is cloned only when it is no
    /// longer the current one (after a reload), never per delivery.
    pub(super) fn delivered(&mut self, sid: &[u8], current: Option<&Arc<RuleSet>>) -> Delivery {
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
            self.by_sid.remove(sid);
        }
        delivery
    }
}
