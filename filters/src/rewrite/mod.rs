//! The `rewrite` filter: maps subjects between the client's namespace and the upstream's,
//! both ways, everywhere a subject travels: PUB/HPUB subject and reply, SUB subject (the
//! queue name is left alone), MSG/HMSG subject and reply, and the `Nats-Subject` header of
//! the 503 no-responders status.
//!
//! Reply subjects stay answerable across a mount: a reply subject delivered to the client
//! that no rule maps back (it came from outside the mount) is shown to the client as a
//! subject of the edge's (`_R_.<token>`) and remembered with it in a [`ResponseTracker`];
//! when the client publishes to that, it goes out to the reply subject it stands for. The
//! token is the edge's, so a sender outside the mount cannot pick a reply subject that
//! diverts the client's own publishes out of the mount. JetStream's own replies (`$JS.ACK.`,
//! `$JS.FC.`, `$JS.SNAPSHOT.ACK.`) are shown as they are, since clients read the
//! acknowledgement metadata in them.
//!
//! nats-server publishes a trace of a message to the subject in its `Nats-Trace-Dest`
//! header, a report that names the upstream's subjects and servers: in a mount the header
//! is set to a value nats-server takes for "do not trace".
//!
//! JetStream requests and their answers name subjects inside their JSON: with the set's
//! JetStream options those are mapped too (`jetstream.rs`), the answers by the reply
//! subject of the request (among them a snapshot's answer, and the answer to the empty
//! chunk that ends a restore).
//!
//! Only subjects are rebuilt: the payload of a rewritten message is the same `Bytes` slice
//! of the read buffer.

pub mod jetstream;
pub mod rules;
pub mod sets;
mod subscriptions;
pub mod validate;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::acl::quote::{go_quote, go_unquote};
use crate::errors;
use crate::events::{Events, RewriteDirection};
use crate::filter::{ConnFacts, Filter, FilterFactory, Interest, OpKind, Reloaded, SessionCtx};
use crate::headers::{self, HeaderWriter, Headers};
use crate::op::{ClientOp, Msg, Pub, ServerOp};
use crate::responses::{ResponseBounds, ResponseTracker};
use crate::toml_file::TomlFault;
use crate::verdict::{CloseReason, Verdict};

pub use rules::{Mapped, Rule, RuleKind, RuleSet};
pub use sets::{LoadedSets, RewriteConfig, RewriteRules, Why};
use subscriptions::{Delivery, SubscriptionSets};

/// A rule set that cannot be used, naming the file, the rule and the subject that breaks it.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rewrite rules {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("rewrite rules {}:{fault}", file.display())]
    Parse { file: PathBuf, fault: TomlFault },
    #[error("rewrite rules {}: rule `{rule}`: {reason}", file.display())]
    Rule {
        file: PathBuf,
        rule: String,
        reason: String,
    },
    #[error("rewrite rules {}: rule `{rule}`: example `{subject}` does not match the rule", file.display())]
    Example {
        file: PathBuf,
        rule: String,
        subject: String,
    },
    #[error("rewrite rules {}: rule `{rule}` is not reversible: `{subject}` maps to `{mapped}`, which maps back to {back}", file.display())]
    Irreversible {
        file: PathBuf,
        rule: String,
        subject: String,
        mapped: String,
        back: String,
    },
    #[error("rewrite rules {}: rule `{rule}` maps `{subject}` to `{mapped}`, which is not a valid subject", file.display())]
    InvalidResult {
        file: PathBuf,
        rule: String,
        subject: String,
        mapped: String,
    },
    #[error("rewrite rules {}: rules `{first}` and `{second}` both claim the subject `{subject}`", file.display())]
    Conflict {
        file: PathBuf,
        first: String,
        second: String,
        subject: String,
    },
    #[error("rewrite rules {}: rules `{first}` and `{second}` both map to the upstream subject `{subject}`, so it cannot be mapped back", file.display())]
    UpstreamConflict {
        file: PathBuf,
        first: String,
        second: String,
        subject: String,
    },
    #[error("{key}: no rewrite rule set is called `{name}` (define it under [rewrite.sets])")]
    UnknownSet { key: String, name: String },
}

/// How long a reply subject that came from outside a mount stays answerable, and how many
/// the session remembers. Answers are not counted: a JetStream consumer may ack, nak and
/// ack-progress one delivery several times.
const REPLY_BOUNDS: ResponseBounds = ResponseBounds {
    max_msgs: 0,
    expires: Some(Duration::from_secs(600)),
};
const REPLY_CAPACITY: usize = 16 * 1024;

/// Builds the per-session rewrite filter.
pub struct RewriteFactory {
    pub rules: Arc<RewriteRules>,
    pub events: Arc<dyn Events>,
}

impl FilterFactory for RewriteFactory {
    fn build(&self, conn: &ConnFacts) -> Box<dyn Filter> {
        // No rule can apply to this listener: only its subscriptions are recorded, so messages
        // stay on the fast path.
        let loaded = self.rules.current();
        let active = loaded.config.may_apply(&conn.listener);
        let rewriting = !loaded.config.sets.is_empty();
        Box::new(Rewrite {
            rules: self.rules.clone(),
            events: self.events.clone(),
            active,
            rewriting,
            resolved: None,
            replies: ResponseTracker::new(REPLY_BOUNDS, REPLY_CAPACITY),
            tokens: ReplyTokens::new(conn.conn_id),
            arena: SubjectArena::default(),
            subscriptions: SubscriptionSets::default(),
            answered: RecentPublishes::default(),
            api_answers: jetstream::PendingAnswers::default(),
        })
    }
}

/// Per-session state of the rewrite filter.
pub struct Rewrite {
    rules: Arc<RewriteRules>,
    events: Arc<dyn Events>,
    /// A rule may apply to the session (its set, once its CONNECT names the user), or a
    /// subscription it made was mapped, or a reply token stands: its ops are looked at.
    active: bool,
    /// Rule sets are configured: a session that is not active still records its
    /// subscriptions, as unmapped, so that a reload giving its listener rules does not map
    /// their deliveries back with them.
    rewriting: bool,
    /// The session's set, looked up once rather than per op: again when the user it was
    /// looked up for changes (the CONNECT names it) and after a reload.
    resolved: Option<Resolved>,
    /// Reply subjects delivered from outside the mount, by the subject the client sees:
    /// the upstream's reply subject it stands for, or none when it is shown as it is.
    replies: ResponseTracker<Option<Bytes>>,
    tokens: ReplyTokens,
    arena: SubjectArena,
    /// The set each live subscription was mapped with, for its deliveries.
    subscriptions: SubscriptionSets,
    /// The latest publishes whose upstream subject the set does not map back (to tokens,
    /// through publish-only rules): the subject each went to, and the client's, so the
    /// upstream's permissions error or no-responders status for one names the subject the
    /// client used.
    answered: RecentPublishes,
    /// JetStream API requests waiting for their answer, whose subjects are mapped back.
    api_answers: jetstream::PendingAnswers,
}

/// How many publishes [`Rewrite::answered`] keeps: nats-server answers a refused publish,
/// or a request no one listens to, at once, so its answer follows the publish closely.
const RECENT_ANSWERS: usize = 16;

#[derive(Default)]
struct RecentPublishes(VecDeque<(Bytes, Bytes)>);

impl RecentPublishes {
    /// A publish to `client` went upstream to `upstream`; a run of publishes to one subject
    /// is kept once. Both are copied: a mapped subject is a slice of a buffer (the session's
    /// subject arena, the read buffer) that it must not hold on to.
    fn remember(&mut self, upstream: &[u8], client: &[u8]) {
        let repeated = self
            .0
            .back()
            .is_some_and(|(up, c)| up[..] == *upstream && c[..] == *client);
        if repeated {
            return;
        }
        if self.0.len() == RECENT_ANSWERS {
            self.0.pop_front();
        }
        self.0.push_back((
            Bytes::copy_from_slice(upstream),
            Bytes::copy_from_slice(client),
        ));
    }

    /// A publish that maps back went upstream to `upstream`: an older entry for that subject
    /// would name the wrong one.
    fn forget(&mut self, upstream: &[u8]) {
        if !self.0.is_empty() {
            self.0.retain(|(up, _)| up[..] != *upstream);
        }
    }

    /// The client's subject for the latest publish that went upstream to `upstream`.
    fn client_subject(&self, upstream: &[u8]) -> Option<Vec<u8>> {
        self.0
            .iter()
            .rev()
            .find(|(up, _)| up[..] == *upstream)
            .map(|(_, client)| client.to_vec())
    }
}

/// The subjects that stand for reply subjects from outside the mount: `_R_.` and 16 hex
/// digits, counted up from a random start per session.
struct ReplyTokens {
    next: u64,
}

const TOKEN_PREFIX: &[u8] = b"_R_.";

/// The reply subjects JetStream itself puts on its deliveries, shown as they are: clients
/// read the stream, consumer and sequences of a delivery from its `$JS.ACK...` reply
/// subject, and answer flow control and snapshot chunks there. Only these: any other `$JS.`
/// reply shown as it is (`$JS.API.STREAM.PURGE.X`, picked by a sender outside the mount)
/// would send the client's own publishes to that subject, for as long as the reply is
/// remembered, out of the mount onto the upstream's JetStream API.
const JETSTREAM_REPLIES: [&[u8]; 3] = [b"$JS.ACK.", b"$JS.FC.", b"$JS.SNAPSHOT.ACK."];

impl ReplyTokens {
    fn new(conn_id: u64) -> Self {
        use std::hash::BuildHasher;
        ReplyTokens {
            next: std::collections::hash_map::RandomState::new().hash_one(conn_id),
        }
    }

    fn next(&mut self) -> Bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        let mut token = Vec::with_capacity(TOKEN_PREFIX.len() + 16);
        token.extend_from_slice(TOKEN_PREFIX);
        token.extend((0..16).rev().map(|i| HEX[((n >> (i * 4)) & 0xf) as usize]));
        Bytes::from(token)
    }
}

/// A subject's wildcards as a subscription sees them: how many whole-token `*`, and whether
/// it ends in `>`. A mapping must keep them, whatever literal tokens it adds or changes.
fn wildcards(subject: &[u8]) -> (usize, bool) {
    let stars = subject.split(|&b| b == b'.').filter(|t| *t == b"*").count();
    (stars, subject == b">" || subject.ends_with(b".>"))
}

/// The header nats-server reads the destination of a message trace from.
const TRACE_DEST: &[u8] = b"Nats-Trace-Dest";
/// The value nats-server takes for "do not trace" (no valid subject).
const TRACE_DISABLED: &[u8] = b"trace disabled";

/// Headers whose values JetStream reads as subjects, and whether each names where a message
/// is published (publish-only rules apply) rather than a subject read or filtered.
const SUBJECT_HEADERS: [(&[u8], bool); 4] = [
    (b"Nats-Schedule-Target", true),
    (b"Nats-Scheduler", true),
    (b"Nats-Schedule-Source", false),
    (b"Nats-Expected-Last-Subject-Sequence-Subject", false),
];

/// A session's rule set (none when no set applies), and the user it was looked up for.
type Resolved = (Option<Arc<str>>, Option<Arc<RuleSet>>);

/// Where a session's mapped subjects are written: chunks shared by many subjects, so a
/// rewrite allocates once per chunk, not once per message. A subject keeps its chunk alive
/// only until the op it is in has been written.
#[derive(Default)]
struct SubjectArena(BytesMut);

/// Room for a few hundred mapped subjects.
const ARENA_CHUNK: usize = 4096;

impl SubjectArena {
    /// The bytes of a mapped subject. A mount that adds no prefix keeps a tail of
    /// `original`, which costs no copy at all.
    fn build(&mut self, original: &Bytes, mapped: Mapped<'_>) -> Bytes {
        match mapped {
            Mapped::Remount { prefix: [], rest } => {
                // `rest` is a tail of `original`: the mount's prefix was cut off its front.
                original.slice(original.len().saturating_sub(rest.len())..)
            }
            Mapped::Remount { prefix, rest } => {
                let len = prefix.len() + rest.len();
                if self.0.capacity() - self.0.len() < len {
                    self.0.reserve(len.max(ARENA_CHUNK));
                }
                self.0.extend_from_slice(prefix);
                self.0.extend_from_slice(rest);
                self.0.split().freeze()
            }
            Mapped::Expanded(subject) => Bytes::from(subject),
        }
    }
}

impl Rewrite {
    /// Looks the session's set up when it is not known for the current identity.
    fn resolve(&mut self, ctx: &SessionCtx) {
        let user = ctx.identity.as_ref().and_then(|i| i.user.as_ref());
        if matches!(&self.resolved, Some((for_user, _)) if for_user.as_deref() == user.map(|u| &**u))
        {
            return;
        }
        let set = self
            .rules
            .current()
            .for_session(&ctx.conn.listener, user.map(|u| &**u))
            .map(|(set, _)| set.clone());
        self.resolved = Some((user.cloned(), set));
    }

    /// Deliveries are seen only while the filter is active: a change means the counts of
    /// earlier subscriptions' deliveries are no longer known.
    fn set_active(&mut self, active: bool) {
        if active != self.active {
            self.subscriptions.deliveries_unseen();
        }
        self.active = active;
    }

    /// Whether the session's ops need looking at, once its set is known: it has one, or
    /// what an earlier set did (mapped subscriptions, reply tokens) still stands.
    fn applies(&self) -> bool {
        matches!(self.resolved, Some((_, Some(_))))
            || self.subscriptions.any_mapped()
            || !self.replies.is_empty()
    }
}

impl Filter for Rewrite {
    fn name(&self) -> &'static str {
        "rewrite"
    }

    fn interest(&self) -> Interest {
        // The CONNECT names the user, whose set may differ from the listener's.
        if self.active {
            Interest::of(&[
                OpKind::Connect,
                OpKind::Pub,
                OpKind::Sub,
                OpKind::Unsub,
                OpKind::Msg,
                OpKind::ServerErr,
            ])
        } else if self.rewriting {
            Interest::of(&[OpKind::Connect, OpKind::Sub, OpKind::Unsub])
        } else {
            Interest::NONE
        }
    }

    fn on_subscriptions_dropped(&mut self) {
        self.subscriptions.dropped();
    }

    fn on_unsubscribed(&mut self, sids: &[Bytes]) {
        self.subscriptions.ended(sids);
    }

    fn on_reload(&mut self, ctx: &SessionCtx) -> Reloaded {
        self.resolved = None;
        let loaded = self.rules.current();
        self.rewriting = !loaded.config.sets.is_empty();
        // The session's set under the new rules. A listener that lost its rules: the
        // subscriptions they mapped still exist at the upstream under the mapped subjects,
        // and their deliveries still map back (`applies` counts them).
        self.resolve(ctx);
        self.set_active(self.applies());
        Reloaded::default()
    }

    fn on_client_op(&mut self, op: &mut ClientOp, ctx: &mut SessionCtx) -> Verdict {
        self.resolve(ctx);
        if let ClientOp::Connect(_) = op {
            // The user is known now: a session no set applies to (only other users have
            // sets) keeps its messages on the fast path.
            self.set_active(self.applies());
            return Verdict::Forward;
        }
        let set = match &self.resolved {
            Some((_, Some(set))) => Some(set),
            _ => None,
        };
        match op {
            ClientOp::Unsub(unsub) => {
                self.subscriptions
                    .unsubscribed(&unsub.sid, unsub.max, set, self.active);
                return Verdict::Forward;
            }
            // An invalid subject never becomes a subscription: the upstream refuses it.
            ClientOp::Sub(sub) if !crate::subject::is_valid_subject(&sub.subject) => {
                return Verdict::Forward;
            }
            ClientOp::Sub(sub) if set.is_none() => {
                self.subscriptions.subscribed(&sub.sid, None);
                return Verdict::Forward;
            }
            _ => {}
        }
        let Some(set) = set else {
            // No set now (a reload took the listener's away, or a second CONNECT named a
            // user without one), but the tokens an earlier set handed out still stand for
            // reply subjects outside the mount: an answer to one must still reach them.
            if let ClientOp::Pub(publish) = op {
                if map_publish_subjects(
                    publish,
                    None,
                    &mut self.replies,
                    &mut self.arena,
                    &mut self.answered,
                ) {
                    self.events.rewritten(RewriteDirection::ClientToUpstream);
                    return Verdict::Changed;
                }
            }
            return Verdict::Forward;
        };
        let mut changed = false;
        match op {
            ClientOp::Pub(publish) => {
                let size = publish.size();
                // A JetStream API request, or a restore's chunk: the empty one that ends
                // them is answered with the restored stream's info.
                let client_subject = ((set.jetstream_stream_subjects
                    || set.jetstream_consumer_filters)
                    && (publish.subject.starts_with(JETSTREAM_API)
                        || publish.subject.starts_with(jetstream::RESTORE_CHUNKS)))
                .then(|| publish.subject.clone());
                changed |= map_publish_subjects(
                    publish,
                    Some(set),
                    &mut self.replies,
                    &mut self.arena,
                    &mut self.answered,
                );
                if let Some(block) = &publish.headers {
                    match map_subject_headers(block, set) {
                        Ok(Some(mapped)) => {
                            publish.headers = Some(mapped);
                            changed = true;
                        }
                        Ok(None) => {}
                        Err(()) => {
                            // nats-server may read a subject from a block the
                            // edge cannot read: it cannot be let through unmapped.
                            return Verdict::Close {
                                reason: CloseReason::ProtocolViolation,
                                error: None,
                            };
                        }
                    }
                }
                if let Some(client_subject) = client_subject {
                    changed |= map_jetstream_request(&client_subject, publish, set);
                    if let (Some(kind), Some(reply)) = (
                        jetstream::api_answer(&client_subject, &publish.payload, set),
                        &publish.reply,
                    ) {
                        self.api_answers.expect(reply, kind, set);
                    }
                }
                if changed && publish.size() > size && publish.size() as u64 > ctx.max_payload {
                    // The mapped request (longer subjects in a JetStream request, a longer
                    // schedule target) no longer fits: refused as nats-server refuses an
                    // oversized PUB, rather than sent for it to close the upstream link.
                    return Verdict::close_with(
                        CloseReason::MaxPayloadExceeded,
                        errors::MAX_PAYLOAD_VIOLATION,
                    );
                }
            }
            ClientOp::Sub(sub) => {
                let mapped = set.forward_mapped(&sub.subject, false);
                let built = mapped.map(|(_, mapped)| self.arena.build(&sub.subject, mapped));
                if let Some(built) = &built {
                    // A regex rule could make a literal `svc-*` the wildcard `svc.*` (the
                    // client then gets every `svc.` subject, past ACL rules written for the
                    // literal), or a wildcard a literal: refused as nats-server refuses a
                    // subject it cannot take.
                    if wildcards(built) != wildcards(&sub.subject) {
                        tracing::warn!(
                            subject = %String::from_utf8_lossy(&sub.subject),
                            mapped = %String::from_utf8_lossy(built),
                            "subscription refused: its mapping changes its wildcards"
                        );
                        return Verdict::error(errors::INVALID_SUBJECT);
                    }
                }
                self.subscriptions
                    .subscribed(&sub.sid, built.is_some().then(|| set.clone()));
                if let Some(built) = built {
                    sub.subject = built;
                    changed = true;
                }
            }
            _ => {}
        }
        if changed {
            self.events.rewritten(RewriteDirection::ClientToUpstream);
            Verdict::Changed
        } else {
            Verdict::Forward
        }
    }

    fn on_server_op(&mut self, op: &mut ServerOp, ctx: &mut SessionCtx) -> Verdict {
        self.resolve(ctx);
        let set = match &self.resolved {
            Some((_, Some(set))) => Some(set),
            _ => None,
        };
        let msg = match op {
            ServerOp::Msg(msg) => msg,
            ServerOp::Err(text) => {
                // A publish to a token stands for a reply subject from outside the mount, and
                // one through a publish-only rule has no reverse: the error names the
                // subject the client used (a token stands after its set is gone, too).
                let answered = &self.answered;
                let publish = text.starts_with("Permissions Violation for Publish to ");
                let back_of = |subject: &[u8]| {
                    publish
                        .then(|| answered.client_subject(subject))
                        .flatten()
                        .or_else(|| set.and_then(|set| set.reverse(subject)))
                };
                return match reverse_permissions_error(text, back_of) {
                    Some(back) => {
                        *text = back;
                        self.events.rewritten(RewriteDirection::UpstreamToClient);
                        Verdict::Changed
                    }
                    None => Verdict::Forward,
                };
            }
            _ => return Verdict::Forward,
        };
        // The subject maps back with the set its subscription was mapped with; the reply
        // subject and the no-responders status, which the client's next publishes use,
        // with the session's set.
        let earlier;
        let subject_set = match self.subscriptions.delivered(&msg.sid, set) {
            Delivery::Current => set.map(|set| &**set),
            Delivery::MappedWith(set) => {
                earlier = set;
                Some(&*earlier)
            }
            Delivery::AsIs => None,
        };
        let mut changed = false;
        // An answer of the JetStream API shows the stream's or consumer's subjects: in the
        // client's view, with the set that mapped the request.
        changed |= self.api_answers.map_answer(msg);
        if let Some(back) =
            subject_set.and_then(|subject_set| subject_set.reverse_mapped(&msg.subject))
        {
            msg.subject = self.arena.build(&msg.subject, back);
            changed = true;
        }
        if let Some(set) = set {
            changed |= reverse_reply(
                msg,
                set,
                &mut self.replies,
                &mut self.tokens,
                &mut self.arena,
                &self.answered,
            );
        }
        if changed {
            self.events.rewritten(RewriteDirection::UpstreamToClient);
            Verdict::Changed
        } else {
            Verdict::Forward
        }
    }
}

/// Maps the subjects inside a JetStream API request the set asks for; true when anything
/// changed.
fn map_jetstream_request(client_subject: &[u8], publish: &mut Pub, set: &RuleSet) -> bool {
    let mut changed = false;
    if set.jetstream_stream_subjects {
        if let Some(payload) = jetstream::map_stream_subjects(client_subject, &publish.payload, set)
        {
            publish.payload = payload;
            changed = true;
        }
        changed |=
            jetstream::map_stream_lookup(client_subject, &publish.subject, &publish.payload, set)
                .apply(publish);
    }
    if set.jetstream_consumer_filters {
        changed |= jetstream::map_consumer_filters(
            client_subject,
            &publish.subject,
            &publish.payload,
            set,
        )
        .apply(publish);
    }
    changed
}

/// A publish's subject and reply in the upstream's view: one of the session's reply tokens
/// is put back as the reply subject it stands for (one shown as it is goes as it is), any
/// other mapped with `set`, if the session has one (a token stands after a reload took the
/// set away). True when anything changed.
fn map_publish_subjects(
    publish: &mut Pub,
    set: Option<&RuleSet>,
    replies: &mut ResponseTracker<Option<Bytes>>,
    arena: &mut SubjectArena,
    answered: &mut RecentPublishes,
) -> bool {
    let mut changed = false;
    let answer = (!replies.is_empty())
        .then(|| {
            replies
                .answer_with(&publish.subject, Instant::now())
                .cloned()
        })
        .flatten();
    match answer {
        // An answer to a reply subject from outside the mount, under the edge's token for it.
        Some(Some(upstream)) => {
            answered.remember(&upstream, &publish.subject);
            publish.subject = upstream;
            changed = true;
        }
        // An answer to a reply subject shown as it is: it goes out as it is.
        Some(None) => {}
        None => {
            if let Some((rule, mapped)) = set.and_then(|s| s.forward_mapped(&publish.subject, true))
            {
                let mapped = arena.build(&publish.subject, mapped);
                if rule.publish_only {
                    // No reverse: the upstream's answer about it is mapped back from here.
                    answered.remember(&mapped, &publish.subject);
                } else {
                    answered.forget(&mapped);
                }
                publish.subject = mapped;
                changed = true;
            }
        }
    }
    if let Some(reply) = &publish.reply {
        // A token passed on as the reply of another publish (a responder that hands a
        // request on): it still stands for the requester's reply subject outside the
        // mount, which the final answer must reach.
        let stands_for = (reply.starts_with(TOKEN_PREFIX) && !replies.is_empty())
            .then(|| replies.answer_with(reply, Instant::now()).cloned())
            .flatten();
        match stands_for {
            Some(Some(upstream)) => {
                publish.reply = Some(upstream);
                changed = true;
            }
            Some(None) => {}
            None => {
                if let Some((_, mapped)) = set.and_then(|s| s.forward_mapped(reply, false)) {
                    publish.reply = Some(arena.build(reply, mapped));
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Maps a delivery's reply subject (and the subject a no-responders status names) back
/// into the client's view; true when anything changed. Reply subjects from outside the
/// mount are remembered in `replies`.
fn reverse_reply(
    msg: &mut Msg,
    set: &RuleSet,
    replies: &mut ResponseTracker<Option<Bytes>>,
    tokens: &mut ReplyTokens,
    arena: &mut SubjectArena,
    answered: &RecentPublishes,
) -> bool {
    let mut changed = false;
    if let Some(reply) = msg.reply.clone() {
        let inside = set.reverse_rule(&reply).and_then(|(rule, back)| {
            let client = arena.build(&reply, back);
            // An answer must go back where the reply subject came from.
            set.forwards_back(&client, rule, &reply).then_some(client)
        });
        if let Some(client) = inside {
            msg.reply = Some(client);
            changed = true;
        } else if set.claims(&reply, true).is_some() {
            // From outside the mount, and publishing to it would push it inside: the
            // client answers a token of the edge's that stands for it (a subject the
            // sender picked could be one the client publishes to on its own).
            let now = Instant::now();
            if JETSTREAM_REPLIES.iter().any(|p| reply.starts_with(p)) {
                replies.delivered_with(&reply, None, now);
            } else {
                let token = tokens.next();
                replies.delivered_with(&token, Some(Bytes::copy_from_slice(&reply)), now);
                msg.reply = Some(token);
                changed = true;
            }
        }
    }
    // Status messages only: a message's own headers are passed on as they are.
    let status: Option<[u8; 3]> = msg
        .headers
        .as_deref()
        .filter(|_| msg.payload.is_empty())
        .and_then(|block| block.strip_prefix(b"NATS/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.try_into().ok());
    if status == Some(*b"503") {
        let rebuilt = msg
            .headers
            .as_deref()
            .and_then(|block| reverse_status_subject(block, set, answered));
        if let Some(rebuilt) = rebuilt {
            msg.headers = Some(rebuilt);
            changed = true;
        }
    } else if status == Some(*b"100") {
        // A push consumer's idle heartbeat names, in this header, the flow control request
        // its client has not answered yet (nats.go answers it there): an answer that goes
        // as it is, like the flow control request's own reply subject.
        let stalled = msg
            .headers
            .as_deref()
            .and_then(|block| Headers::parse(block).ok())
            .and_then(|parsed| parsed.get(CONSUMER_STALLED))
            .filter(|fc| fc.starts_with(b"$JS.FC.") && set.claims(fc, true).is_some());
        if let Some(fc) = stalled {
            replies.delivered_with(fc, None, Instant::now());
        }
    }
    changed
}

/// The JetStream API, in the client's view: requests that may name subjects in their JSON.
const JETSTREAM_API: &[u8] = b"$JS.API.";

/// The header of a push consumer's idle heartbeat that names a flow control request.
const CONSUMER_STALLED: &[u8] = b"Nats-Consumer-Stalled";

/// nats-server's permissions errors quote the subject in its view (`Permissions Violation
/// for Publish to "tenant.acme.orders.x"`): the client must read its own subject there, as
/// it would from a server of its own, both so the mount does not show and so a client can
/// match the error to the subscription or publish it made. The first quoted subject is
/// mapped back; a queue name after it is left as it is.
fn reverse_permissions_error(
    text: &str,
    back_of: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<String> {
    if !text.starts_with("Permissions Violation for ") {
        return None;
    }
    let start = text.find('"')?;
    let (subject, quoted_len) = go_unquote(&text[start..])?;
    let back = back_of(&subject)?;
    let end = start + quoted_len;
    Some(format!(
        "{}{}{}",
        &text[..start],
        go_quote(&back),
        &text[end..]
    ))
}

/// The header block with the subjects its fields name mapped into the mount (`None` when
/// there is nothing to map); `Err` when the block may name one but cannot be read, since
/// nats-server might still find it there.
///
/// JetStream reads subjects from headers (a schedule's target and source, the subject a
/// publish expects a last sequence on): unmapped, they would name subjects outside the
/// mount, another tenant's among them, in a stream the tenants share. A message trace's
/// destination is set to nats-server's "trace disabled": its report names the upstream's
/// servers, their addresses, the upstream subject and other clients that got the message,
/// none of which a mounted client may see.
fn map_subject_headers(block: &Bytes, set: &RuleSet) -> Result<Option<Bytes>, ()> {
    if !may_name_subject(block) {
        return Ok(None);
    }
    let parsed = Headers::parse(block).map_err(|_| ())?;
    let mut writer = HeaderWriter::new(parsed.first_line);
    let mut changed = false;
    for line in &parsed.all_lines {
        let mapped = headers::split_field(line).and_then(|(name, value)| {
            if name.eq_ignore_ascii_case(TRACE_DEST) {
                return Some((name, TRACE_DISABLED.to_vec()));
            }
            let (_, published) = SUBJECT_HEADERS
                .iter()
                .find(|(header, _)| name.eq_ignore_ascii_case(header))?;
            Some((name, set.forward(value, *published)?.1))
        });
        match mapped {
            Some((name, value)) => {
                writer.field(name, &value);
                changed = true;
            }
            None => writer.line(&parsed, line),
        }
    }
    Ok(changed.then(|| writer.finish()))
}

/// Whether nats-server could read a subject from `block`'s fields (a trace destination, a
/// JetStream schedule, an expected subject). It reads every key from the start of a line up
/// to its colon, as it is, and takes one only under its exact name (its key match is
/// case-sensitive): a block without a line starting with one of those names none. Every
/// tagged PUB carries a block and pays this search, so the searchers are built once:
/// building one costs more than running it over a block of a few hundred bytes.
fn may_name_subject(block: &[u8]) -> bool {
    static FIELD_STARTS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 3]> =
        std::sync::LazyLock::new(|| {
            [
                memchr::memmem::Finder::new(b"\nNats-Trace-Dest:"),
                // Nats-Schedule-Target, -Source and Nats-Scheduler.
                memchr::memmem::Finder::new(b"\nNats-Schedule"),
                memchr::memmem::Finder::new(b"\nNats-Expected-Last-Subject-Sequence-Subject:"),
            ]
        });
    FIELD_STARTS.iter().any(|f| f.find(block).is_some())
}

/// The 503 no-responders status names the request subject in `Nats-Subject`, in the
/// upstream's view: map it back, by the request's own mapping when the set has no reverse
/// for it (a token, a publish-only rule).
fn reverse_status_subject(
    block: &[u8],
    set: &RuleSet,
    answered: &RecentPublishes,
) -> Option<Bytes> {
    reverse_subject_header(block, |subject| {
        answered
            .client_subject(subject)
            .or_else(|| set.reverse(subject))
    })
}

/// The header block with its `Nats-Subject` value put back as `back_of` gives it; `None`
/// when it has none or `back_of` gives nothing.
fn reverse_subject_header(
    block: &[u8],
    back_of: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Bytes> {
    let parsed = Headers::parse(block).ok()?;
    let mut writer = HeaderWriter::new(parsed.first_line);
    let mut changed = false;
    // Each line by its own value: a stored message may carry a `Nats-Subject` of its
    // publisher's beside the one the server adds.
    for line in &parsed.all_lines {
        let back = headers::split_field(line)
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"Nats-Subject"))
            .and_then(|(name, subject)| Some((name, back_of(subject)?)));
        match back {
            Some((name, back)) => {
                writer.field(name, &back);
                changed = true;
            }
            None => writer.line(&parsed, line),
        }
    }
    changed.then(|| writer.finish())
}

/// What `nats-edge explain` shows for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub set: Option<(String, Why)>,
    pub rule: Option<String>,
    pub upstream_subject: String,
}

/// The upstream subject a client subject becomes on `listener` for `user`.
pub fn explain(
    loaded: &LoadedSets,
    listener: &str,
    user: Option<&str>,
    subject: &[u8],
    published: bool,
) -> Explained {
    let Some((set, why)) = loaded.for_session(listener, user) else {
        return Explained {
            set: None,
            rule: None,
            upstream_subject: String::from_utf8_lossy(subject).into_owned(),
        };
    };
    let mapped = set.forward(subject, published);
    Explained {
        set: Some((set.name.clone(), why)),
        rule: mapped
            .as_ref()
            .map(|(r, _)| format!("{} ({})", r.name, r.describe())),
        upstream_subject: String::from_utf8_lossy(mapped.as_ref().map_or(subject, |(_, s)| s))
            .into_owned(),
    }
}

#[cfg(test)]
mod tests;
