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
    /// With the set its subscription was mapped with.
    MappedWith(Arc<RuleSet>),
    /// Not at all: its subscription was not mapped.
    AsIs,
    /// Its subscription is not known (made past the capacity): with the session's set.
    Unknown,
}

impl SubscriptionSets {
    /// A SUB went upstream, mapped by `set` or (`None`) as the client wrote it. A SUB that
    /// reuses a sid takes its entry: nats-server ignores it if that subscription still
    /// exists, and then the set only differs if the session's set changed meanwhile.
    pub(super) fn subscribed(&mut self, sid: &[u8], set: Option<Arc<RuleSet>>) {
        let recorded = Recorded {
            set,
            delivered: 0,
            max: None,
        };
        let full = self.by_sid.len() >= CAPACITY;
        match self.by_sid.get_mut(sid) {
            Some(entry) => *entry = recorded,
            None if !full => {
                self.by_sid.insert(Bytes::copy_from_slice(sid), recorded);
            }
            None => {}
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

    /// A delivery on `sid` arrived: how its subject maps back.
    pub(super) fn delivered(&mut self, sid: &[u8]) -> Delivery {
        let Some(entry) = self.by_sid.get_mut(sid) else {
            return Delivery::Unknown;
        };
        entry.delivered += 1;
        let delivery = match &entry.set {
            Some(set) => Delivery::MappedWith(set.clone()),
            None => Delivery::AsIs,
        };
        if entry.max.is_some_and(|max| entry.delivered >= max) {
            self.by_sid.remove(sid);
        }
        delivery
    }
}
