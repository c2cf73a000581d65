//! The `limits` filter: nats-server's per-connection limits, enforced at the edge.
//!
//! `max_payload` and `max_control_line` are enforced by the protocol decoder itself, because a
//! border must refuse an oversized op before it has buffered it; this module computes the
//! effective values and announces `max_payload` in INFO. The subscription limit is counted
//! here, per connection, as nats-server counts it: a SUB with a new sid adds one, UNSUB
//! removes it at once or after its auto-unsubscribe count of deliveries, and a SUB that
//! nats-server refuses itself (its own permissions or its own subscription limit, read from
//! its `-ERR`) takes none.

use std::collections::HashMap;

use bytes::Bytes;

use crate::errors::{self, SubscriptionRefusal};
use crate::filter::{Filter, Interest, OpKind, SessionCtx};
use crate::op::{ClientOp, Info, ServerOp};
use crate::sub_answers::SubAnswers;
use crate::subject;
use crate::verdict::Verdict;

/// The limits configured for a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// The edge's own cap on payload size; the effective value is the lower of this and the
    /// upstream's `max_payload`.
    pub max_payload: Option<u64>,
    /// The longest control line accepted (the arguments after the verb), as nats-server counts.
    pub max_control_line: usize,
    /// Subscriptions per connection; `None` is unlimited.
    pub max_subscriptions: Option<usize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload: None,
            max_control_line: 4096,
            max_subscriptions: None,
        }
    }
}

impl LimitsConfig {
    /// The payload limit in force: the lower of the edge's cap and the upstream's, or
    /// nats-server's default of 1 MiB when neither side says.
    pub fn effective_max_payload(&self, upstream: Option<i64>) -> u64 {
        let upstream = upstream.and_then(|v| u64::try_from(v).ok());
        match (self.max_payload, upstream) {
            (Some(edge), Some(up)) => edge.min(up),
            (Some(edge), None) => edge,
            (None, Some(up)) => up,
            (None, None) => 1024 * 1024,
        }
    }
}

/// Per-session state of the limits filter.
pub struct Limits {
    config: LimitsConfig,
    /// Live subscriptions by sid, with their auto-unsubscribe progress.
    subs: HashMap<Bytes, Counted>,
    /// The sid the latest SUB counted, taken back if a later filter refuses that SUB.
    added_by_sub: Option<Bytes>,
    /// The order of SUBs ([`Counted::order`]) and which the upstream has answered.
    sub_answers: SubAnswers,
}

/// A subscription counted toward the limit.
#[derive(Debug, Clone, Default)]
struct Counted {
    /// Its subject and queue, to know it in the upstream's refusal.
    subject: Bytes,
    queue: Option<Bytes>,
    /// When its SUB came, in the session's order of SUBs.
    order: u64,
    /// Its auto-unsubscribe.
    max: Option<u64>,
    delivered: u64,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        Limits {
            config,
            subs: HashMap::new(),
            added_by_sub: None,
            sub_answers: SubAnswers::default(),
        }
    }

    /// Live subscriptions counted so far.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }
}

impl Filter for Limits {
    fn name(&self) -> &'static str {
        "limits"
    }

    fn on_subscriptions_dropped(&mut self) {
        self.subs.clear();
        // Their deliveries may still be on the way: a SUB that reuses a sid waits for them.
        self.sub_answers.all_ended();
    }

    fn interest(&self) -> Interest {
        // Counting deliveries costs a look at every MSG, so only when a limit asks for it.
        // The upstream's errors say when it refused a SUB itself (its own permissions).
        if self.config.max_subscriptions.is_some() {
            Interest::of(&[OpKind::Sub, OpKind::Unsub, OpKind::Msg, OpKind::ServerErr])
        } else {
            Interest::NONE
        }
    }

    fn on_info(&mut self, info: &mut Info, _ctx: &SessionCtx) {
        let effective = self.config.effective_max_payload(info.max_payload);
        info.max_payload = Some(i64::try_from(effective).unwrap_or(i64::MAX));
    }

    fn on_client_op(&mut self, op: &mut ClientOp, ctx: &mut SessionCtx) -> Verdict {
        let Some(max) = self.config.max_subscriptions else {
            return Verdict::Forward;
        };
        match op {
            ClientOp::Sub(sub) => {
                self.added_by_sub = None;
                if self.sub_answers.must_wait(ctx, self.subs.len(), &sub.sid) {
                    return Verdict::Defer;
                }
                // At the limit nats-server refuses any SUB, before it looks at the subject or
                // the sid: one that reuses a sid, or names an invalid subject, too.
                if self.subs.len() >= max {
                    // nats-server frees a slot at once when it delivers an auto-unsubscribe's
                    // last message, or when its reload ends a subscription. The edge learns
                    // of both later: when that MSG comes back, when its own UNSUB has been
                    // taken. So it waits for the upstream to catch up before refusing.
                    if !ctx.upstream_caught_up {
                        return Verdict::Defer;
                    }
                    return Verdict::error(errors::MAX_SUBSCRIPTIONS_EXCEEDED);
                }
                // Below it, an invalid subject is the upstream's to refuse ('Invalid
                // Subject') and never becomes a subscription. It waits for the upstream to
                // answer the SUBs before it: at the upstream's own limit its refusal names no
                // SUB, and must not be taken for one of theirs (see `SubAnswers`).
                if !subject::is_valid_subject(&sub.subject) {
                    if !ctx.upstream_caught_up {
                        return Verdict::Defer;
                    }
                    return Verdict::Forward;
                }
                if self.subs.contains_key(&sub.sid) {
                    // A reused sid is the subscription it names, once the upstream has taken
                    // the SUB that made it. Until then the upstream may still refuse that
                    // SUB (its own permissions), and this one would be the subscription: it
                    // waits for the upstream to catch up, or it would go uncounted.
                    if !ctx.upstream_caught_up {
                        return Verdict::Defer;
                    }
                    return Verdict::Forward;
                }
                let sid = Bytes::copy_from_slice(&sub.sid);
                let counted = Counted {
                    subject: Bytes::copy_from_slice(&sub.subject),
                    queue: sub.queue.as_deref().map(Bytes::copy_from_slice),
                    order: self.sub_answers.next_order(ctx),
                    ..Counted::default()
                };
                self.subs.insert(sid.clone(), counted);
                self.added_by_sub = Some(sid);
            }
            ClientOp::Unsub(unsub) => match unsub.max {
                Some(max) if max > 0 => {
                    if let Some(state) = self.subs.get_mut(&unsub.sid) {
                        if state.delivered >= max {
                            self.subs.remove(&unsub.sid);
                            self.sub_answers.ended(&unsub.sid, ctx);
                        } else {
                            state.max = Some(max);
                        }
                    }
                }
                _ => {
                    if self.subs.remove(&unsub.sid).is_some() {
                        self.sub_answers.ended(&unsub.sid, ctx);
                    }
                }
            },
            _ => {}
        }
        Verdict::Forward
    }

    fn on_client_op_refused(&mut self, op: &ClientOp) {
        // A SUB a later filter refused takes no slot.
        if let ClientOp::Sub(sub) = op {
            if self.added_by_sub.as_deref() == Some(&sub.sid[..]) {
                self.added_by_sub = None;
                self.subs.remove(&sub.sid);
            }
        }
    }

    fn on_unsubscribing(&mut self, sids: &[Bytes]) {
        // Free at once, as nats-server frees them; a SUB that reuses one of the sids waits
        // for the upstream to catch up (the deliveries on their way are the old one's), then
        // counts as a new subscription.
        for sid in sids {
            if self.subs.remove(sid).is_some() {
                self.sub_answers.ended_by_the_edge(sid);
            }
        }
    }

    fn on_server_op(&mut self, op: &mut ServerOp, _ctx: &mut SessionCtx) -> Verdict {
        match op {
            ServerOp::Msg(msg) => {
                if let Some(state) = self.subs.get_mut(&msg.sid) {
                    state.delivered += 1;
                    if state.max.is_some_and(|max| state.delivered >= max) {
                        self.subs.remove(&msg.sid);
                    }
                }
            }
            // A SUB nats-server refused itself (its own permissions or its own limit), or a
            // subscription its reload removed: it takes no slot there, so it takes none here.
            // The edge's own refusals never come this way: these are all the upstream's.
            ServerOp::Err(text) if text == errors::MAX_SUBSCRIPTIONS_EXCEEDED => {
                let refused = self
                    .sub_answers
                    .refused_entry(self.subs.iter().map(|(sid, counted)| (sid, counted.order)));
                if let Some(sid) = refused {
                    self.subs.remove(&sid);
                    if self.added_by_sub.as_ref() == Some(&sid) {
                        self.added_by_sub = None;
                    }
                }
                self.sub_answers.refused_at(self.subs.len());
            }
            ServerOp::Err(text) => {
                let refused = SubscriptionRefusal::parse(text).and_then(|refused| {
                    refused.pick(self.subs.iter().map(|(sid, counted)| {
                        (
                            sid,
                            &counted.subject[..],
                            counted.queue.as_deref(),
                            counted.order,
                        )
                    }))
                });
                if let Some(sid) = refused {
                    self.subs.remove(&sid);
                    if self.added_by_sub.as_ref() == Some(&sid) {
                        self.added_by_sub = None;
                    }
                }
            }
            _ => {}
        }
        Verdict::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Msg, Sub, Unsub};

    fn ctx() -> SessionCtx {
        SessionCtx::for_tests()
    }

    fn sub(sid: &'static str) -> ClientOp {
        ClientOp::Sub(Sub {
            subject: Bytes::from_static(b"foo"),
            queue: None,
            sid: Bytes::from_static(sid.as_bytes()),
        })
    }

    /// `ctx` for a new client op (not one shown again after a deferral).
    fn fresh(ctx: &mut SessionCtx) -> &mut SessionCtx {
        ctx.client_op += 1;
        ctx
    }

    fn msg(sid: &'static str) -> ServerOp {
        ServerOp::Msg(Msg {
            subject: Bytes::from_static(b"foo"),
            sid: Bytes::from_static(sid.as_bytes()),
            reply: None,
            headers: None,
            payload: Bytes::new(),
        })
    }

    #[test]
    fn effective_max_payload_is_the_lower() {
        let mut c = LimitsConfig::default();
        assert_eq!(c.effective_max_payload(Some(2048)), 2048);
        assert_eq!(c.effective_max_payload(None), 1024 * 1024);
        c.max_payload = Some(1000);
        assert_eq!(c.effective_max_payload(Some(2048)), 1000);
        assert_eq!(c.effective_max_payload(Some(10)), 10);
    }

    #[test]
    fn subscription_limit_counts_like_nats_server() {
        let mut ctx = ctx();
        let mut f = Limits::new(LimitsConfig {
            max_subscriptions: Some(2),
            ..LimitsConfig::default()
        });
        assert_eq!(f.on_client_op(&mut sub("1"), &mut ctx), Verdict::Forward);
        assert_eq!(
            f.on_client_op(&mut sub("1"), &mut ctx),
            Verdict::Defer,
            "same sid, before the upstream has taken the first"
        );
        ctx.upstream_caught_up = true;
        assert_eq!(
            f.on_client_op(&mut sub("1"), &mut ctx),
            Verdict::Forward,
            "same sid"
        );
        assert_eq!(f.subscriptions(), 1);
        ctx.upstream_caught_up = false;
        assert_eq!(f.on_client_op(&mut sub("2"), &mut ctx), Verdict::Forward);
        assert_eq!(
            f.on_client_op(&mut sub("3"), &mut ctx),
            Verdict::Defer,
            "a slot may be freed by what the upstream has yet to answer"
        );
        ctx.upstream_caught_up = true;
        assert_eq!(
            f.on_client_op(&mut sub("3"), &mut ctx),
            Verdict::error(errors::MAX_SUBSCRIPTIONS_EXCEEDED)
        );
        ctx.upstream_caught_up = false;
        let mut unsub = ClientOp::Unsub(Unsub {
            sid: Bytes::from_static(b"2"),
            max: Some(2),
        });
        f.on_client_op(&mut unsub, &mut ctx);
        assert_eq!(
            f.subscriptions(),
            2,
            "auto-unsubscribe waits for deliveries"
        );
        f.on_server_op(&mut msg("2"), &mut ctx);
        assert_eq!(f.subscriptions(), 2);
        f.on_server_op(&mut msg("2"), &mut ctx);
        assert_eq!(f.subscriptions(), 1);
        assert_eq!(f.on_client_op(&mut sub("3"), &mut ctx), Verdict::Forward);
        // A subscription the edge ends at the upstream frees its slot at once.
        f.on_unsubscribing(&[Bytes::from_static(b"1")]);
        assert_eq!(f.subscriptions(), 1);
    }

    /// A SUB that nats-server's own permissions refuse takes no slot there: its `-ERR` frees
    /// the slot here, the earliest SUB's on that subject, or the sid a reload names.
    #[test]
    fn a_sub_the_upstream_refuses_frees_its_slot() {
        let mut ctx = ctx();
        let mut f = Limits::new(LimitsConfig {
            max_subscriptions: Some(2),
            ..LimitsConfig::default()
        });
        assert!(f.interest().contains(OpKind::ServerErr));
        for sid in ["1", "2"] {
            f.on_client_op(&mut sub(sid), &mut ctx);
        }
        let mut refusal = |text: &str| {
            f.on_server_op(&mut ServerOp::Err(text.into()), &mut ctx);
            let mut left: Vec<_> = f.subs.keys().cloned().collect();
            left.sort();
            left
        };
        assert_eq!(
            refusal(r#"Permissions Violation for Subscription to "bar""#).len(),
            2
        );
        assert_eq!(
            refusal(r#"Permissions Violation for Subscription to "foo""#),
            [Bytes::from_static(b"2")]
        );
        assert_eq!(
            refusal(r#"Permissions Violation for Subscription to "foo" (sid "2")"#),
            Vec::<Bytes>::new()
        );
    }

    /// nats-server's own subscription limit (its `max_subscriptions`, or a JWT account's or
    /// user's, applied per connection) refuses SUBs the edge counted: each refusal takes back
    /// the newest SUB not yet answered, so refused SUBs do not use up the edge's own limit
    /// (one raised upstream later, by a reload or a JWT update, is then the one in force).
    #[test]
    fn a_sub_refused_at_the_upstreams_limit_frees_its_slot() {
        let mut ctx = ctx();
        let mut f = Limits::new(LimitsConfig {
            max_subscriptions: Some(3),
            ..LimitsConfig::default()
        });
        let limit = || ServerOp::Err(errors::MAX_SUBSCRIPTIONS_EXCEEDED.into());
        assert_eq!(
            f.on_client_op(&mut sub("1"), fresh(&mut ctx)),
            Verdict::Forward
        );
        // 2 shown again (a filter before this one held it), once the upstream caught up.
        ctx.upstream_caught_up = true;
        assert_eq!(
            f.on_client_op(&mut sub("2"), fresh(&mut ctx)),
            Verdict::Forward
        );
        ctx.upstream_caught_up = false;
        assert_eq!(
            f.on_client_op(&mut sub("3"), fresh(&mut ctx)),
            Verdict::Forward
        );
        // Refused: 2 and 3 go in turn (1 was answered when 2 came).
        f.on_server_op(&mut limit(), &mut ctx);
        assert_eq!(f.subscriptions(), 2);
        assert!(f.subs.contains_key(&b"1"[..]) && f.subs.contains_key(&b"2"[..]));
        // At the size of that refusal, SUBs go one at a time.
        assert_eq!(
            f.on_client_op(&mut sub("4"), fresh(&mut ctx)),
            Verdict::Defer
        );
        ctx.upstream_caught_up = true;
        assert_eq!(f.on_client_op(&mut sub("4"), &mut ctx), Verdict::Forward);
        f.on_server_op(&mut limit(), &mut ctx);
        assert_eq!(f.subscriptions(), 2, "4 refused too");
        f.on_server_op(&mut limit(), &mut ctx);
        assert_eq!(
            f.subscriptions(),
            2,
            "nothing unanswered is left to take back"
        );
        ctx.upstream_caught_up = false;
        f.on_client_op(
            &mut ClientOp::Unsub(Unsub {
                sid: Bytes::from_static(b"1"),
                max: None,
            }),
            &mut ctx,
        );
        // An invalid subject waits for the SUBs before it to be answered: at the upstream's
        // limit it is refused with the same words, which must not take a live entry.
        let mut bad = ClientOp::Sub(Sub {
            subject: Bytes::from_static(b"a..b"),
            queue: None,
            sid: Bytes::from_static(b"9"),
        });
        assert_eq!(f.on_client_op(&mut bad, &mut ctx), Verdict::Defer);
        assert_eq!(f.on_client_op(&mut sub("5"), &mut ctx), Verdict::Forward);
        assert_eq!(f.on_client_op(&mut sub("6"), &mut ctx), Verdict::Defer);
    }

    /// `UNSUB 5` then `SUB idle 5`: deliveries of the old subscription may still be on their
    /// way with sid 5. Counted toward the new one, they would let `UNSUB 5 1` end it at the
    /// edge while nats-server, which counts per subscription, keeps it: a way past the
    /// limit. The SUB waits for the upstream to catch up, and so for those deliveries.
    #[test]
    fn a_sid_reused_after_its_unsub_waits_for_the_old_deliveries() {
        let mut ctx = ctx();
        let mut f = Limits::new(LimitsConfig {
            max_subscriptions: Some(2),
            ..LimitsConfig::default()
        });
        let unsub = |max| {
            ClientOp::Unsub(Unsub {
                sid: Bytes::from_static(b"5"),
                max,
            })
        };
        assert_eq!(
            f.on_client_op(&mut sub("5"), fresh(&mut ctx)),
            Verdict::Forward
        );
        f.on_client_op(&mut unsub(None), fresh(&mut ctx));
        assert_eq!(
            f.on_client_op(&mut sub("5"), fresh(&mut ctx)),
            Verdict::Defer
        );
        // The old subscription's last delivery, then the upstream's PONG.
        f.on_server_op(&mut msg("5"), &mut ctx);
        ctx.upstream_caught_up = true;
        assert_eq!(f.on_client_op(&mut sub("5"), &mut ctx), Verdict::Forward);
        ctx.upstream_caught_up = false;
        f.on_client_op(&mut unsub(Some(1)), fresh(&mut ctx));
        assert_eq!(f.subscriptions(), 1, "no delivery of the new one yet");
        // Caught up since: a SUB that reuses another sid goes at once.
        assert_eq!(
            f.on_client_op(&mut sub("6"), fresh(&mut ctx)),
            Verdict::Forward
        );
    }

    /// `SUB bar 1` that the upstream will refuse, then `SUB foo 1` before its answer: the
    /// second waits, and once the refusal has freed the sid it is the subscription counted.
    /// Counted as a reuse, it would leave a subscription upstream the limit never saw.
    #[test]
    fn a_sid_reused_before_the_upstream_refused_its_sub_is_counted() {
        let mut ctx = ctx();
        let mut f = Limits::new(LimitsConfig {
            max_subscriptions: Some(1),
            ..LimitsConfig::default()
        });
        let mut bar = ClientOp::Sub(Sub {
            subject: Bytes::from_static(b"bar"),
            queue: None,
            sid: Bytes::from_static(b"1"),
        });
        assert_eq!(f.on_client_op(&mut bar, &mut ctx), Verdict::Forward);
        assert_eq!(f.on_client_op(&mut sub("1"), &mut ctx), Verdict::Defer);
        let mut refused =
            ServerOp::Err(r#"Permissions Violation for Subscription to "bar""#.into());
        f.on_server_op(&mut refused, &mut ctx);
        ctx.upstream_caught_up = true;
        assert_eq!(f.on_client_op(&mut sub("1"), &mut ctx), Verdict::Forward);
        assert_eq!(f.subscriptions(), 1);
        assert_eq!(
            f.on_client_op(&mut sub("2"), &mut ctx),
            Verdict::error(errors::MAX_SUBSCRIPTIONS_EXCEEDED)
        );
    }
}
