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
//! A SUB that reuses the sid of a subscription whose end the upstream has not answered yet
//! waits for it too: deliveries of the ended subscription may still be on their way with
//! that sid, and counted toward the new one they would end it early, or let the edge think
//! an auto-unsubscribe done that nats-server, which counts per subscription, has barely
//! begun. A client's `UNSUB` is answered once a PING sent after it (the client's, or one of
//! the edge's own) has had its PONG ([`SessionCtx::answered_op`]); an end the edge made
//! itself, or the subscriptions a second CONNECT dropped, once the upstream has caught up
//! with a held op.

use std::collections::HashMap;

use bytes::Bytes;

use crate::filter::SessionCtx;

/// How many ended sids are remembered at once; past it, every SUB waits for the upstream
/// until it has answered them all.
const MAX_ENDED: usize = 1024;

/// Stands for an end that only a catch-up with a held op answers.
const UNTIL_CAUGHT_UP: u64 = u64::MAX;

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
    /// Sids of ended subscriptions whose end the upstream may not have answered, each with
    /// the client op that ended it ([`UNTIL_CAUGHT_UP`] for the edge's own ends).
    ended: HashMap<Bytes, u64>,
    /// The newest of those ops: once it is answered, none is left waiting.
    ended_newest: u64,
    /// [`SessionCtx::answered_op`] when the full table last dropped its answered ends: no
    /// use looking again before it moves.
    pruned_at: u64,
    /// Past [`MAX_ENDED`]: the op from which every SUB waits.
    ended_overflow: Option<u64>,
}

impl SubAnswers {
    /// A SUB for `sid` reaches the filter, whose table holds `table_len` entries. True when
    /// it must wait for the upstream to answer the ops before it (hold it with
    /// [`crate::Verdict::Defer`]): at the upstream's subscription limit, or when the sid
    /// names a subscription whose end the upstream has not answered yet.
    pub fn must_wait(&mut self, ctx: &SessionCtx, table_len: usize, sid: &[u8]) -> bool {
        if ctx.upstream_caught_up {
            // Every op before this one is answered; this one, shown again, is not, though a
            // first look at it may have given it an order.
            self.answered = match self.latest {
                Some((op, first)) if op == ctx.client_op => first - 1,
                _ => self.seen,
            };
            self.forget_ended();
            return false;
        }
        if !self.ended.is_empty() || self.ended_overflow.is_some() {
            if self.ended_newest <= ctx.answered_op
                && self.ended_overflow.is_none_or(|op| op <= ctx.answered_op)
            {
                self.forget_ended();
            } else if self.ended_overflow.is_some_and(|op| op > ctx.answered_op)
                || self.ended.get(sid).is_some_and(|&op| op > ctx.answered_op)
            {
                return true;
            }
        }
        self.upstream_limit.is_some_and(|limit| table_len >= limit)
    }

    /// The client op `ctx.client_op` ended the subscription `sid` (an UNSUB): deliveries of
    /// it may still be on their way until the upstream has answered that op.
    pub fn ended(&mut self, sid: &[u8], ctx: &SessionCtx) {
        if self.ended.len() >= MAX_ENDED && ctx.answered_op > self.pruned_at {
            // Full: the ends answered since go first.
            self.pruned_at = ctx.answered_op;
            self.ended.retain(|_, op| *op > ctx.answered_op);
            self.ended_newest = self.ended.values().copied().max().unwrap_or(0);
        }
        self.record_ended(sid, ctx.client_op);
    }

    /// The edge ended the subscription `sid` itself: deliveries of it may still be on their
    /// way until the upstream has caught up with a held op.
    pub fn ended_by_the_edge(&mut self, sid: &[u8]) {
        self.record_ended(sid, UNTIL_CAUGHT_UP);
    }

    /// Every subscription ended at once (a second CONNECT): every SUB waits for the upstream
    /// to catch up with it.
    pub fn all_ended(&mut self) {
        self.ended_overflow = Some(UNTIL_CAUGHT_UP);
    }

    fn record_ended(&mut self, sid: &[u8], op: u64) {
        if self.ended.len() >= MAX_ENDED && !self.ended.contains_key(sid) {
            self.ended_overflow = Some(self.ended_overflow.map_or(op, |at| at.max(op)));
            return;
        }
        self.ended.insert(Bytes::copy_from_slice(sid), op);
        self.ended_newest = self.ended_newest.max(op);
    }

    /// Every end answered: the table goes, its memory with it.
    fn forget_ended(&mut self) {
        if !self.ended.is_empty() {
            self.ended = HashMap::new();
        }
        self.ended_newest = 0;
        self.ended_overflow = None;
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

    fn ctx() -> SessionCtx {
        SessionCtx::for_tests()
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

    /// A SUB that reuses the sid of a subscription whose end the upstream has not answered
    /// waits for it, whose deliveries of the old one are then all in: a held op's catch-up,
    /// or the PONG to a PING the client sent after the UNSUB.
    #[test]
    fn a_reused_sid_waits_for_the_ended_subscriptions_deliveries() {
        let mut answers = SubAnswers::default();
        let mut ctx = ctx();
        answers.ended(b"5", op(&mut ctx, false));
        assert!(answers.must_wait(op(&mut ctx, false), 0, b"5"));
        assert!(!answers.must_wait(op(&mut ctx, false), 0, b"6"));
        assert!(!answers.must_wait(op(&mut ctx, true), 0, b"5"));
        assert!(
            !answers.must_wait(op(&mut ctx, false), 0, b"5"),
            "caught up since"
        );
        // Answered by the PONG to the client's own PING after the UNSUB.
        answers.ended(b"7", op(&mut ctx, false));
        let unsub = ctx.client_op;
        ctx.answered_op = unsub - 1;
        assert!(answers.must_wait(op(&mut ctx, false), 0, b"7"));
        ctx.answered_op = unsub;
        assert!(!answers.must_wait(op(&mut ctx, false), 0, b"7"));
        assert!(answers.ended.is_empty(), "forgotten once all are answered");
        // The edge's own end waits for a catch-up, whatever the client's PINGs say.
        answers.ended_by_the_edge(b"8");
        ctx.answered_op = ctx.client_op;
        assert!(answers.must_wait(op(&mut ctx, false), 0, b"8"));
        assert!(!answers.must_wait(op(&mut ctx, true), 0, b"8"));
        // Past the cap, every SUB waits until all are answered.
        for sid in 0..=MAX_ENDED {
            answers.ended(sid.to_string().as_bytes(), op(&mut ctx, false));
        }
        assert!(answers.must_wait(op(&mut ctx, false), 0, b"new"));
        ctx.answered_op = ctx.client_op;
        assert!(!answers.must_wait(op(&mut ctx, false), 0, b"new"));
        // A second CONNECT's drop: every SUB waits for a catch-up.
        answers.all_ended();
        ctx.answered_op = ctx.client_op;
        assert!(answers.must_wait(op(&mut ctx, false), 0, b"new"));
        assert!(!answers.must_wait(op(&mut ctx, true), 0, b"new"));
        assert!(!answers.must_wait(op(&mut ctx, false), 0, b"new"));
    }
}
