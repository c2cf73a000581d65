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
//!
//! A SUB that reuses the sid of a subscription ended since the upstream last caught up waits
//! for it too: deliveries of the ended subscription may still be on their way with that sid,
//! and counted toward the new one they would end it early, or let the edge think an
//! auto-unsubscribe done that nats-server, which counts per subscription, has barely begun.

use std::collections::HashSet;

use bytes::Bytes;

use crate::filter::SessionCtx;

/// How many ended sids are remembered between two catch-ups; past it, every SUB waits for
/// the next one.
const MAX_ENDED: usize = 1024;

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
    /// The client op ([`SessionCtx::client_op`]) given the latest order, and the first order
    /// it was given: a SUB shown again after a deferral has not gone upstream yet.
    latest: Option<(u64, u64)>,
    /// Sids of subscriptions ended since the upstream last caught up, and whether more were
    /// than [`MAX_ENDED`].
    ended: HashSet<Bytes>,
    ended_overflow: bool,
}

impl SubAnswers {
    /// A SUB for `sid` reaches the filter, whose table holds `table_len` entries. True when
    /// it must wait for the upstream to answer the ops before it (hold it with
    /// [`crate::Verdict::Defer`]): at the upstream's subscription limit, or when the sid
    /// names a subscription ended since the upstream last caught up.
    pub fn must_wait(&mut self, ctx: &SessionCtx, table_len: usize, sid: &[u8]) -> bool {
        if ctx.upstream_caught_up {
            // Every op before this one is answered; this one, shown again, is not, though a
            // first look at it may have given it an order.
            self.answered = match self.latest {
                Some((op, first)) if op == ctx.client_op => first - 1,
                _ => self.seen,
            };
            self.ended.clear();
            self.ended_overflow = false;
            return false;
        }
        if self.ended_overflow || self.ended.contains(sid) {
            return true;
        }
        self.upstream_limit.is_some_and(|limit| table_len >= limit)
    }

    /// The subscription `sid` has ended (an UNSUB, or the edge ending it): deliveries of it
    /// may still be on their way.
    pub fn ended(&mut self, sid: &[u8]) {
        if self.ended.len() >= MAX_ENDED {
            self.ended_overflow = true;
        } else {
            self.ended.insert(Bytes::copy_from_slice(sid));
        }
    }

    /// The upstream has refused a SUB at its own limit: the table's size matters now.
    pub fn at_upstream_limit(&self) -> bool {
        self.upstream_limit.is_some()
    }

    /// The order of the SUB being handled (the client op `ctx.client_op`), for the entry it
    /// makes.
    pub fn next_order(&mut self, ctx: &SessionCtx) -> u64 {
        self.seen += 1;
        if self.latest.is_none_or(|(op, _)| op != ctx.client_op) {
            self.latest = Some((ctx.client_op, self.seen));
        }
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
    use crate::filter::ConnFacts;

    fn ctx() -> SessionCtx {
        SessionCtx::new(ConnFacts {
            conn_id: 1,
            listener: "t".into(),
            client_addr: "127.0.0.1:1".parse().unwrap(),
            transport: "tcp",
            tls_peer: None,
        })
    }

    /// The context of a new client op, or of the same one shown again once caught up.
    fn op(ctx: &mut SessionCtx, caught_up: bool) -> &SessionCtx {
        if !caught_up {
            ctx.client_op += 1;
        }
        ctx.upstream_caught_up = caught_up;
        ctx
    }

    #[test]
    fn the_newest_unanswered_entry_is_taken_back() {
        let mut answers = SubAnswers::default();
        let mut ctx = ctx();
        let sids: Vec<Bytes> = ["a", "b", "c"].into_iter().map(Bytes::from).collect();
        let orders: Vec<u64> = sids
            .iter()
            .map(|_| answers.next_order(op(&mut ctx, false)))
            .collect();
        assert!(
            !answers.must_wait(op(&mut ctx, false), 3, b"d"),
            "below any limit: no wait"
        );
        assert!(
            !answers.must_wait(op(&mut ctx, true), 3, b"d"),
            "caught up: a, b and c are answered"
        );
        let entries = || sids.iter().zip(orders.iter().copied());
        assert_eq!(answers.refused_entry(entries()), None);
        let d = Bytes::from("d");
        let d_order = answers.next_order(&ctx);
        let with_d = || entries().chain(std::iter::once((&d, d_order)));
        assert_eq!(answers.refused_entry(with_d()), Some(d.clone()));
        answers.refused_at(3);
        assert!(
            answers.must_wait(op(&mut ctx, false), 3, b"e"),
            "at the refused size: one at a time"
        );
        assert!(
            !answers.must_wait(op(&mut ctx, false), 2, b"e"),
            "below it: no wait"
        );
    }

    /// A SUB given its order on a first look, then held by another filter and shown again
    /// once caught up, is not answered yet: the upstream may still refuse it.
    #[test]
    fn a_sub_shown_again_is_not_yet_answered() {
        let mut answers = SubAnswers::default();
        let mut ctx = ctx();
        let a = Bytes::from("a");
        let a_order = answers.next_order(op(&mut ctx, false));
        let b = Bytes::from("b");
        assert!(!answers.must_wait(op(&mut ctx, false), 1, b"b"));
        let b_order = answers.next_order(&ctx);
        // Shown again: its second look gives it another order, which changes nothing.
        assert!(!answers.must_wait(op(&mut ctx, true), 2, b"b"));
        answers.next_order(&ctx);
        let entries = [(&a, a_order), (&b, b_order)];
        assert_eq!(answers.refused_entry(entries.into_iter()), Some(b.clone()));
    }

    /// A SUB that reuses the sid of a subscription ended since the last catch-up waits for
    /// the upstream, whose deliveries of the old one are then all in.
    #[test]
    fn a_reused_sid_waits_for_the_ended_subscriptions_deliveries() {
        let mut answers = SubAnswers::default();
        let mut ctx = ctx();
        answers.ended(b"5");
        assert!(answers.must_wait(op(&mut ctx, false), 0, b"5"));
        assert!(!answers.must_wait(op(&mut ctx, false), 0, b"6"));
        assert!(!answers.must_wait(op(&mut ctx, true), 0, b"5"));
        assert!(
            !answers.must_wait(op(&mut ctx, false), 0, b"5"),
            "caught up since"
        );
        // Past the cap, every SUB waits for the next catch-up.
        for sid in 0..=MAX_ENDED {
            answers.ended(sid.to_string().as_bytes());
        }
        assert!(answers.must_wait(op(&mut ctx, false), 0, b"new"));
        assert!(!answers.must_wait(op(&mut ctx, true), 0, b"new"));
        assert!(!answers.must_wait(op(&mut ctx, false), 0, b"new"));
    }
}
