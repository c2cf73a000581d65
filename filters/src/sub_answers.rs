//! Which SUBs the upstream has answered, for the filters that keep a table of a session's
//! subscriptions (the ACL's, the limits').
//!
//! nats-server refuses a SUB at its own subscription limit (`max_subscriptions`, or an
//! account's) with `-ERR 'maximum subscriptions exceeded'`, which names no SUB, and keeps the
//! connection open. The refused SUB made no subscription, so its table entry must go, or
//! every refused SUB would keep one: a client retrying a subscription would grow the ACL's
//! table without limit and use up the edge's own `max_subscriptions`. The entry that goes is
//! the newest one made by a SUB the upstream had not answered yet: a client at its limit is
//! refused every SUB until one ends, so the newest are the refused ones. That is wrong only
//! when an UNSUB came between SUBs sent together (`SUB a` refused, `UNSUB b`, `SUB c` taken:
//! `c` goes), and only until each SUB goes alone: after a refusal, while the table is as
//! large as it was then, each SUB waits for the upstream to answer the ones before it.

use bytes::Bytes;

/// Orders a session's SUBs and knows which of them the upstream has answered.
#[derive(Debug, Default)]
pub struct SubAnswers {
    /// SUBs seen so far: the order of the latest.
    seen: u64,
    /// The order of the newest SUB the upstream is known to have answered: every SUB up to
    /// it has either made its subscription or been refused.
    answered: u64,
    /// The table's size when the upstream last refused a SUB at its own limit.
    upstream_limit: Option<usize>,
}

impl SubAnswers {
    /// A SUB reaches the filter, whose table holds `table_len` entries; `caught_up` is
    /// [`crate::SessionCtx::upstream_caught_up`]. True when it must wait for the upstream to
    /// answer the SUBs before it (hold it with [`crate::Verdict::Defer`]).
    pub fn must_wait(&mut self, caught_up: bool, table_len: usize) -> bool {
        if caught_up {
            self.answered = self.seen;
            return false;
        }
        self.upstream_limit.is_some_and(|limit| table_len >= limit)
    }

    /// The upstream has refused a SUB at its own limit: the table's size matters now.
    pub fn at_upstream_limit(&self) -> bool {
        self.upstream_limit.is_some()
    }

    /// The order of the SUB being handled, for the entry it makes.
    pub fn next_order(&mut self) -> u64 {
        self.seen += 1;
        self.seen
    }

    /// The upstream refused a SUB at its own limit: of the `entries` (sid and order; leave
    /// out those the refused SUB cannot have made), the one to take back, if any.
    pub fn refused_entry<'a>(
        &self,
        entries: impl Iterator<Item = (&'a Bytes, u64)>,
    ) -> Option<Bytes> {
        entries
            .filter(|(_, order)| *order > self.answered)
            .max_by_key(|(_, order)| *order)
            .map(|(sid, _)| sid.clone())
    }

    /// The refused entry is gone (if there was one) and the table holds `table_len`: from
    /// now on, while it holds as many, SUBs go one at a time.
    pub fn refused_at(&mut self, table_len: usize) {
        self.upstream_limit = Some(table_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_unanswered_entry_is_taken_back() {
        let mut answers = SubAnswers::default();
        let sids: Vec<Bytes> = ["a", "b", "c"].into_iter().map(Bytes::from).collect();
        let orders: Vec<u64> = sids.iter().map(|_| answers.next_order()).collect();
        assert!(
            !answers.must_wait(true, 3),
            "caught up: a, b and c are answered"
        );
        let entries = || sids.iter().zip(orders.iter().copied());
        assert_eq!(answers.refused_entry(entries()), None);
        let d = Bytes::from("d");
        let d_order = answers.next_order();
        let with_d = || entries().chain(std::iter::once((&d, d_order)));
        assert_eq!(answers.refused_entry(with_d()), Some(d.clone()));
        answers.refused_at(3);
        assert!(
            answers.must_wait(false, 3),
            "at the refused size: one at a time"
        );
        assert!(!answers.must_wait(false, 2), "below it: no wait");
    }
}
