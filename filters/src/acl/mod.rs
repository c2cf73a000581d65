//! The `acl` filter: who a connection is (identity), and what it may publish and subscribe
//! to, with nats-server's permission semantics.
//!
//! - **Identity.** In `passthrough` mode the client's credentials go to nats-server, which
//!   decides; the edge keys permissions on the name the client presented. In `edge` mode the
//!   edge authenticates the client against the rule files' users and sends its own
//!   credentials upstream, so client secrets never reach nats-server.
//! - **Permissions** are checked on PUB/HPUB and SUB before anything reaches the upstream; a
//!   refusal is nats-server's `-ERR 'Permissions Violation ...'` and the connection stays open.
//!   A wildcard subscription that overlaps a deny entry is accepted and the denied subjects
//!   are dropped at delivery. `allow_responses` lets a client answer the reply subjects it
//!   received, through the shared [`crate::responses::ResponseTracker`].
//! - **Reload.** Rules live behind an [`arc_swap::ArcSwap`]; a session notices a new set when
//!   the proxy calls [`crate::Filter::on_reload`], re-resolves its user and clears its caches.
//!   As nats-server does on a reload, an `edge`-mode client whose credentials no longer pass
//!   is closed, and subscriptions the new permissions refuse are ended at the upstream (the
//!   client is told); their deliveries still on the way are dropped.

pub mod auth;
pub mod explain;
pub mod matching;
pub mod permissions;
pub mod quote;
pub mod rules;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::errors::{self, SubscriptionRefusal};
use crate::events::{DenialKind, Events};
use crate::filter::{
    ConnFacts, Filter, FilterFactory, Interest, OpKind, Reloaded, SessionCtx, TlsPeer,
};
use crate::identity::{AuthMethod, Identity};
use crate::op::{ClientOp, Connect, Info, ServerOp};
use crate::responses::ResponseTracker;
use crate::sub_answers::SubAnswers;
use crate::verdict::{CloseReason, SlowCheck, Verdict};
use auth::{authenticate, AuthFailure, AuthOutcome, Checks, SecretChecker};
use permissions::Permissions;
use quote::go_quote;
use rules::{AclRules, UpstreamCredentials};

/// Who decides whether a client may connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// nats-server decides, with the client's own credentials.
    #[default]
    Passthrough,
    /// The edge decides, against the users of its rule files.
    Edge,
}

/// The loaded rule files, swapped whole on reload for new and live connections alike.
/// Loading is [`AclRules::load`]; a reload loads first and swaps only when every part of
/// the configuration accepted the change.
pub struct RuleSource {
    current: ArcSwap<AclRules>,
}

impl RuleSource {
    pub fn new(rules: AclRules) -> Self {
        RuleSource {
            current: ArcSwap::from_pointee(rules),
        }
    }

    /// Swaps in newly loaded rules.
    pub fn store(&self, rules: AclRules) {
        self.current.store(Arc::new(rules));
    }

    pub fn current(&self) -> Arc<AclRules> {
        self.current.load_full()
    }
}

/// What every session of the edge shares about identity and permissions.
pub struct AclSettings {
    pub mode: AuthMode,
    /// The upstream runs in operator mode (`auth.operator_mode`): a user JWT names a
    /// passthrough client. Outside it nats-server ignores JWTs, and so does the edge.
    pub operator_mode: bool,
    /// Credentials sent upstream for edge-authenticated users without their own.
    pub upstream: Option<UpstreamCredentials>,
    pub rules: Arc<RuleSource>,
    pub events: Arc<dyn Events>,
}

/// Builds each session's [`AclFilter`].
pub struct AclFactory {
    settings: Arc<AclSettings>,
    checker: Arc<SecretChecker>,
}

impl AclFactory {
    pub fn new(settings: AclSettings) -> Self {
        AclFactory {
            settings: Arc::new(settings),
            checker: Arc::new(SecretChecker::default()),
        }
    }

    /// Whether the edge itself authenticates clients (`edge` mode).
    pub fn authenticates(&self) -> bool {
        self.settings.mode == AuthMode::Edge
    }
}

impl FilterFactory for AclFactory {
    fn build(&self, _conn: &ConnFacts) -> Box<dyn Filter> {
        Box::new(AclFilter::new(self.settings.clone(), self.checker.clone()))
    }
}

/// How many publish decisions a connection remembers (nats-server's `maxPermCacheSize`).
const DECISION_CACHE: usize = 128;
/// How many it forgets when full (nats-server's `pruneSize`).
const DECISION_CACHE_PRUNE: usize = 32;
/// Reply subjects a connection with `allow_responses` tracks at most.
const RESPONSE_CAPACITY: usize = 65_536;
/// A denial of the same subject on the same connection is logged at most once this often.
const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct subjects whose last denial log time a connection remembers.
const DENIAL_LOG_SUBJECTS: usize = 256;
/// Denial lines one connection may log per [`DENIAL_LOG_INTERVAL`], whatever the subjects:
/// a client cycling through distinct denied subjects cannot flood the log.
const DENIAL_LOG_BURST: u32 = 10;
/// The user label of a client that named no user (metrics, where an empty label value is
/// no label at all).
const ANONYMOUS_LABEL: &str = "_anonymous";
/// The user label of a client whose user name is in no rule file (passthrough mode, where
/// the name is the client's claim): such names get no series of their own.
const UNKNOWN_USER_LABEL: &str = "_other";

/// The denial lines a connection logged in the current interval.
struct DenialLogWindow {
    started: Instant,
    lines: u32,
    /// Denials past the burst, not logged: the next line says how many.
    suppressed: u64,
}

/// The user name a CONNECT names, if any.
fn present_name(connect: &Connect) -> Option<&str> {
    connect.user.as_deref().filter(|name| !name.is_empty())
}

/// What a reload makes of a connected client.
enum Standing {
    /// It stays, under the new permissions.
    Authorized,
    /// Its credentials no longer pass: `Authorization Violation`.
    Refused(String),
    /// Its user is gone or goes upstream with other credentials: closed without a word.
    Moved(String),
}

/// A live subscription, as far as delivery filtering needs it.
struct LiveSub {
    subject: Bytes,
    queue: Option<Bytes>,
    /// Refused by rules reloaded since it was made, and being ended at the upstream: the
    /// entry stays, its deliveries still on the way dropped, until the upstream has ended
    /// it ([`Filter::on_unsubscribed`]).
    revoked: bool,
    /// The delivery count at which the upstream ends it (`UNSUB sid max`): its entry goes
    /// when the upstream's subscription does.
    max: Option<u64>,
    /// Deliveries seen, and whether they are all of them: the session's deliveries were
    /// watched from the SUB on without a break (the [`AclFilter::watch_epoch`] it was made
    /// in is still current).
    delivered: u64,
    watched_since: Option<u64>,
    /// Deliveries passed on to the client (those the edge dropped not counted).
    forwarded: u64,
    /// An auto-unsubscribe the edge counts itself. nats-server counts toward `UNSUB sid max`
    /// only the messages it delivers, not those its delivery filter drops; the upstream
    /// behind the edge would count the edge's drops too. So on a subscription whose
    /// deliveries the edge may drop, the max stays here, and at the max-th delivery passed
    /// on the edge ends the subscription at the upstream itself.
    edge_max: Option<u64>,
    /// `edge_max` was reached and the edge is ending the subscription at the upstream: the
    /// deliveries still on the way are dropped, as nats-server would not have made them,
    /// until the upstream has ended it ([`Filter::on_unsubscribed`]).
    ending: bool,
    /// When the SUB came, in the session's order of SUBs: nats-server answers them in that
    /// order, so its refusal of a subject is for the earliest SUB on it still tracked.
    order: u64,
    /// An auto-unsubscribe whose count is not known (sent while deliveries went unseen):
    /// the upstream may have ended the subscription, or may deliver up to its max still.
    /// Kept without looking at deliveries, so a reload that refuses its subject still ends
    /// it: an UNSUB upstream (nats-server ignores one for a sid it no longer has), and no
    /// word to the client, for a subscription that most likely is gone.
    maybe_ended: bool,
}

impl LiveSub {
    /// Its deliveries must be seen whatever the rules: to drop those of a revoked
    /// subscription, or to count an auto-unsubscribe, the edge's or the upstream's. (Were
    /// they to go unseen, the count would stop being known.)
    fn needs_deliveries(&self) -> bool {
        self.revoked || self.edge_max.is_some() || self.max.is_some()
    }
}

/// How many maybe-ended subscriptions ([`LiveSub::maybe_ended`]) a session keeps, the
/// oldest forgotten past it: old-style requests make one each.
const MAX_MAYBE_ENDED: usize = 1024;

/// One session's identity and permissions.
pub struct AclFilter {
    settings: Arc<AclSettings>,
    checker: Arc<SecretChecker>,
    /// The rules this session resolved its permissions from.
    rules: Arc<AclRules>,
    /// The user permissions are keyed on, once the CONNECT has been judged.
    user: Option<Arc<str>>,
    /// The user's permissions; `None`: unrestricted.
    perms: Option<Arc<Permissions>>,
    interest: Interest,
    publish_cache: HashMap<Bytes, bool>,
    responses: Option<ResponseTracker>,
    /// Every subscription the upstream holds for this client, by sid, whatever the user's
    /// permissions: a reload may refuse any of them.
    subs: HashMap<Bytes, LiveSub>,
    /// Bumped whenever deliveries stop being watched: counts made before are incomplete.
    watch_epoch: u64,
    /// Some entry of `subs` needs its deliveries seen ([`LiveSub::needs_deliveries`]).
    subs_need_deliveries: bool,
    /// The sids of maybe-ended entries with their SUB's order, oldest first, for
    /// [`MAX_MAYBE_ENDED`] (the order tells a sid's entry from an earlier one's).
    maybe_ended: VecDeque<(Bytes, u64)>,
    /// The sid of the entry the latest SUB added, taken back if a later filter refuses
    /// that SUB ([`Filter::on_client_op_refused`]).
    added_by_sub: Option<Bytes>,
    /// The order of SUBs ([`LiveSub::order`]) and which the upstream has answered.
    sub_answers: SubAnswers,
    /// Set once a subscription can receive denied subjects (nats-server's delivery filter).
    filter_deliveries: bool,
    /// The user is no longer authorized by reloaded rules (edge mode): the session is
    /// closing, and any op still on the way closes it too.
    revoked: bool,
    /// The credentials the client presented (edge mode), to check again on a reload.
    presented: Option<Connect>,
    /// Whether the client's CONNECT has been judged.
    connected: bool,
    logged: HashMap<Bytes, Instant>,
    denial_log_window: DenialLogWindow,
    /// Where the check of this session's CONNECT, run off its thread, leaves its result,
    /// and the rules it was checked against.
    slow_check: Option<(Arc<OnceLock<AuthOutcome>>, Arc<AclRules>)>,
}

impl AclFilter {
    /// The rules' `no_auth_user` for a passthrough client that gave no name, as nats-server
    /// gives its own `no_auth_user` to a client that sent neither a password nor a token
    /// (either alone is a failed login there); an nkey or JWT nats-server does not read
    /// leaves the client that user too.
    fn no_auth_user_for(&self, connect: &Connect) -> Option<Arc<str>> {
        // nats-server takes no no_auth_user in operator mode.
        if self.settings.operator_mode {
            return None;
        }
        let absent = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        let anonymous = absent(&connect.pass) && absent(&connect.auth_token);
        let user = self.rules.no_auth_user.as_ref().filter(|_| anonymous)?;
        Some(user.name.clone())
    }

    fn new(settings: Arc<AclSettings>, checker: Arc<SecretChecker>) -> Self {
        let rules = settings.rules.current();
        let mut filter = AclFilter {
            settings,
            checker,
            rules,
            user: None,
            perms: None,
            interest: Interest::of(&[OpKind::Connect]),
            publish_cache: HashMap::new(),
            responses: None,
            subs: HashMap::new(),
            watch_epoch: 0,
            sub_answers: SubAnswers::default(),
            subs_need_deliveries: false,
            maybe_ended: VecDeque::new(),
            added_by_sub: None,
            filter_deliveries: false,
            revoked: false,
            presented: None,
            connected: false,
            logged: HashMap::new(),
            denial_log_window: DenialLogWindow {
                started: Instant::now(),
                lines: 0,
                suppressed: 0,
            },
            slow_check: None,
        };
        // Until the CONNECT names a user, the default permissions apply: nats-server takes
        // ops before CONNECT from a client when it requires no auth.
        filter.resolve();
        filter
    }

    /// Takes the permissions of the current user from the current rules.
    fn resolve(&mut self) {
        self.take_permissions();
        self.refresh_interest();
    }

    fn take_permissions(&mut self) {
        self.perms = self.rules.permissions_for(self.user.as_deref()).cloned();
        self.publish_cache.clear();
        self.responses = self
            .perms
            .as_ref()
            .and_then(|p| p.responses)
            .map(|bounds| ResponseTracker::new(bounds, RESPONSE_CAPACITY));
    }

    /// The ops this session's permissions need to see.
    fn refresh_interest(&mut self) {
        // Wherever rules are in force, subscriptions are tracked whatever the user's
        // permissions, so a reload that refuses one can end it, as nats-server checks every
        // subscription of every client on a reload, an unrestricted user's too; and so are
        // the upstream's errors, which say when it refused one itself. Only SUB and UNSUB
        // pay for it, not messages; without rule files (the default) nothing does.
        let mut kinds = vec![OpKind::Connect];
        let tracking = self.perms.is_some() || self.rules.is_configured();
        if tracking {
            kinds.extend([OpKind::Sub, OpKind::Unsub, OpKind::ServerErr]);
        } else {
            // Rules gone (a reload removed every file): only what is still being ended, or
            // counted for an auto-unsubscribe, stays tracked.
            self.subs.retain(|_, s| s.needs_deliveries());
        }
        if let Some(p) = &self.perms {
            if p.restricts_publish() {
                kinds.push(OpKind::Pub);
            }
            // Deliveries are looked at only where one may be refused (a subscription that
            // can receive denied subjects, one being revoked) or answered (responses);
            // elsewhere they keep the fast path.
            if p.responses.is_some() || self.filter_deliveries || self.subs_need_deliveries {
                kinds.push(OpKind::Msg);
            }
        } else if self.subs_need_deliveries {
            // No rules apply any more, but auto-unsubscribes the edge counts are still on.
            kinds.extend([OpKind::Unsub, OpKind::Msg]);
        }
        if self.revoked || (self.settings.mode == AuthMode::Edge && !self.connected) {
            // Every op, to close the session on it.
            kinds.extend([
                OpKind::Pub,
                OpKind::Sub,
                OpKind::Unsub,
                OpKind::Msg,
                OpKind::ClientPing,
                OpKind::ClientPong,
            ]);
        }
        let interest = Interest::of(&kinds);
        if self.interest.contains(OpKind::Msg) && !interest.contains(OpKind::Msg) {
            // Deliveries go unseen from now on: a subscription waiting for its last ones
            // could wait forever, and no count made so far stays complete.
            self.watch_epoch += 1;
            self.subs.retain(|_, s| s.max.is_none());
        }
        self.interest = interest;
    }

    fn user_label(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }

    /// The user as a metric label: a user of the rule files by name, else one of two fixed
    /// labels, so that names a client makes up cannot use up the label slots.
    fn metric_label(&self) -> &str {
        match self.user.as_deref() {
            None | Some("") => ANONYMOUS_LABEL,
            Some(name) if self.rules.user(name).is_some() => name,
            Some(_) => UNKNOWN_USER_LABEL,
        }
    }

    /// Counts every denial, and logs it at most once per subject and interval, and at most
    /// [`DENIAL_LOG_BURST`] lines per interval for the connection. A delivery dropped for
    /// the subscriber's deny list is logged at debug only, as nats-server logs none: another
    /// client's messages must not write this connection's log.
    fn denied(&mut self, kind: DenialKind, subject: &Bytes, queue: Option<&Bytes>) {
        self.settings.events.acl_denied(self.metric_label(), kind);
        if kind == DenialKind::Delivery {
            tracing::debug!(
                user = self.user_label(),
                subject = %String::from_utf8_lossy(subject),
                "delivery denied"
            );
            return;
        }
        let now = Instant::now();
        let due = self
            .logged
            .get(subject)
            .is_none_or(|last| now.duration_since(*last) >= DENIAL_LOG_INTERVAL);
        if !due {
            return;
        }
        let window = &mut self.denial_log_window;
        if now.duration_since(window.started) >= DENIAL_LOG_INTERVAL {
            window.started = now;
            window.lines = 0;
        }
        if window.lines >= DENIAL_LOG_BURST {
            window.suppressed += 1;
            return;
        }
        window.lines += 1;
        let suppressed = std::mem::take(&mut window.suppressed);
        if self.logged.len() >= DENIAL_LOG_SUBJECTS {
            self.logged.clear();
        }
        self.logged.insert(Bytes::copy_from_slice(subject), now);
        tracing::warn!(
            user = self.user_label(),
            direction = kind.as_str(),
            subject = %String::from_utf8_lossy(subject),
            queue = queue.map(|q| String::from_utf8_lossy(q).into_owned()),
            suppressed,
            "permission denied"
        );
    }

    fn on_connect(&mut self, connect: &mut Connect, ctx: &mut SessionCtx) -> Verdict {
        self.connected = true;
        let verdict = match self.settings.mode {
            AuthMode::Passthrough => {
                let nonce = ctx.upstream_nonce.as_deref();
                self.user = match passthrough_user(connect, nonce, self.settings.operator_mode) {
                    Ok(Some(user)) => Some(user),
                    Ok(None) => self.no_auth_user_for(connect),
                    Err(why) => {
                        tracing::warn!(reason = why, "authorization violation");
                        return Verdict::close_with(
                            CloseReason::AuthorizationViolation,
                            errors::AUTHORIZATION_VIOLATION,
                        );
                    }
                };
                ctx.identity = Some(Identity {
                    user: self.user.clone(),
                    method: AuthMethod::Passthrough,
                });
                Verdict::Forward
            }
            AuthMode::Edge => {
                let outcome = match self.slow_check.take() {
                    // The CONNECT again, its check done off this thread against the rules
                    // still in force (after a reload meanwhile, it is checked again).
                    Some((slot, rules)) if Arc::ptr_eq(&rules, &self.rules) => {
                        slot.get().cloned().unwrap_or(Err(AuthFailure::CheckLost))
                    }
                    _ => authenticate(
                        &self.rules,
                        &self.checker,
                        connect,
                        ctx.conn.tls_peer.as_ref(),
                        Checks::CachedOnly,
                    ),
                };
                match outcome {
                    Err(AuthFailure::NeedsSlowCheck) => {
                        // A bcrypt check: done off this thread, with its result left in
                        // this session's slot for the CONNECT's second showing.
                        let slot = Arc::new(OnceLock::new());
                        self.slow_check = Some((slot.clone(), self.rules.clone()));
                        let (rules, checker) = (self.rules.clone(), self.checker.clone());
                        let (connect, tls) = (connect.clone(), ctx.conn.tls_peer.clone());
                        self.connected = false;
                        return Verdict::Offload(SlowCheck::new(move || {
                            // A session gone while this waited its turn (its slot dropped
                            // with it) needs no answer.
                            if Arc::strong_count(&slot) == 1 {
                                return;
                            }
                            let outcome =
                                authenticate(&rules, &checker, &connect, tls.as_ref(), Checks::All);
                            let _ = slot.set(outcome);
                        }));
                    }
                    Ok((user, method)) => {
                        tracing::debug!(user = %user.name, method = method.as_str(), "authenticated");
                        self.user = Some(user.name.clone());
                        ctx.identity = Some(Identity {
                            user: Some(user.name.clone()),
                            method,
                        });
                        self.presented = Some(connect.clone());
                        let creds = user.upstream.as_ref().or(self.settings.upstream.as_ref());
                        replace_credentials(connect, creds);
                        Verdict::Changed
                    }
                    Err(why) => {
                        tracing::warn!(reason = %why, "authorization violation");
                        return Verdict::close_with(
                            CloseReason::AuthorizationViolation,
                            errors::AUTHORIZATION_VIOLATION,
                        );
                    }
                }
            }
        };
        self.resolve();
        verdict
    }

    /// What reloaded rules make of this client (edge mode), as nats-server judges every
    /// client on a reload (`reloadAuthorization`): first whether the user it logged in as
    /// by name (password, certificate or `no_auth_user`) is gone or now goes upstream with
    /// other credentials, nats-server's client moved to another account; then whether its
    /// credentials still name the same user. A bcrypt check is not done here, on the
    /// session's thread: a password hash the reload left as it was still matches, and a
    /// changed one has the client log in again.
    fn standing_after_reload(
        &self,
        old: &AclRules,
        method: Option<AuthMethod>,
        tls: Option<&TlsPeer>,
    ) -> Standing {
        let (Some(connect), Some(name)) = (&self.presented, &self.user) else {
            return Standing::Authorized;
        };
        let (before, now) = (old.user(name), self.rules.user(name));
        let by_name = matches!(
            method,
            Some(AuthMethod::Password | AuthMethod::Certificate | AuthMethod::NoAuthUser)
        );
        match now {
            None if by_name => return Standing::Moved(format!("user `{name}` was removed")),
            Some(now) if before.is_some_and(|before| before.upstream != now.upstream) => {
                return Standing::Moved(format!(
                    "user `{name}` now goes upstream with other credentials"
                ));
            }
            _ => {}
        }
        // A client that named no user: nats-server keeps it as the user it was given. (One
        // that named the no_auth_user is judged by its name below, as a new login would be.)
        if method == Some(AuthMethod::NoAuthUser) && present_name(connect).is_none() {
            // nats-server logs such a client in as that user, name and password: it stays
            // that user while the user's credentials stand, whoever `no_auth_user` names now.
            return match (before, now) {
                (Some(before), Some(now)) if before.same_credentials(now) => Standing::Authorized,
                _ => Standing::Refused(format!("the credentials of user `{name}` changed")),
            };
        }
        match authenticate(&self.rules, &self.checker, connect, tls, Checks::CachedOnly) {
            Ok((user, _)) if user.name == *name => Standing::Authorized,
            Ok((user, _)) => {
                Standing::Refused(format!("the credentials now name user `{}`", user.name))
            }
            Err(AuthFailure::NeedsSlowCheck) => match (before, now) {
                (Some(before), Some(now)) if before.same_credentials(now) => Standing::Authorized,
                _ => Standing::Refused(format!("the credentials of user `{name}` changed")),
            },
            Err(why) => Standing::Refused(why.to_string()),
        }
    }

    fn check_publish(&mut self, subject: &Bytes) -> bool {
        let Some(perms) = &self.perms else {
            return true;
        };
        let allowed = match self.publish_cache.get(subject) {
            Some(allowed) => *allowed,
            None => {
                let allowed = perms.check_publish(subject).allowed;
                if self.publish_cache.len() >= DECISION_CACHE {
                    // As nats-server prunes its cache: some entries go, not all, so a
                    // client publishing to a few more subjects than it holds still finds
                    // most of them.
                    let mut seen = 0;
                    self.publish_cache.retain(|_, _| {
                        seen += 1;
                        seen > DECISION_CACHE_PRUNE
                    });
                }
                self.publish_cache
                    .insert(Bytes::copy_from_slice(subject), allowed);
                allowed
            }
        };
        if allowed {
            return true;
        }
        // Not allowed by the lists: an answer to a reply subject the client received?
        self.responses
            .as_mut()
            .is_some_and(|r| r.answer(subject, Instant::now()))
    }

    fn on_publish(&mut self, subject: &Bytes) -> Verdict {
        if self.check_publish(subject) {
            return Verdict::Forward;
        }
        self.denied(DenialKind::Publish, subject, None);
        Verdict::error(format!(
            "Permissions Violation for Publish to {}",
            go_quote(subject)
        ))
    }

    fn on_subscribe(&mut self, sub: &crate::op::Sub, ctx: &SessionCtx) -> Verdict {
        let held = self.subscriptions_held();
        if self.sub_answers.must_wait(ctx, held, &sub.sid) {
            return Verdict::Defer;
        }
        // A SUB that reuses the sid of a maybe-ended subscription is taken as a new one
        // (the upstream most likely ended the other; clients do not reuse sids).
        if self
            .subs
            .get(&sub.sid)
            .is_some_and(|s| s.maybe_ended && !s.revoked)
        {
            self.subs.remove(&sub.sid);
        }
        if !ctx.upstream_caught_up {
            // Shown again after a deferral, it is the same SUB: what it added stays marked.
            self.added_by_sub = None;
        }
        if let Some(perms) = self.perms.clone() {
            let queue = sub.queue.as_deref();
            if !perms.check_subscribe(&sub.subject, queue).allowed {
                self.denied(DenialKind::Subscribe, &sub.subject, sub.queue.as_ref());
                return Verdict::error(SubscriptionRefusal::text(&sub.subject, queue, None));
            }
            if !self.filter_deliveries && perms.needs_delivery_filter(&sub.subject, queue) {
                // nats-server's delivery filter, from now on: deliveries are looked at.
                self.filter_deliveries = true;
                self.refresh_interest();
            }
        }
        // A reused sid keeps the subscription it names, as nats-server keeps it; one the
        // edge is ending at the upstream is gone there, so the SUB makes a new one.
        let order = self.sub_answers.next_order(ctx);
        let live = LiveSub {
            subject: Bytes::copy_from_slice(&sub.subject),
            queue: sub.queue.as_deref().map(Bytes::copy_from_slice),
            revoked: false,
            max: None,
            delivered: 0,
            forwarded: 0,
            edge_max: None,
            ending: false,
            order,
            maybe_ended: false,
            watched_since: self
                .interest
                .contains(OpKind::Msg)
                .then_some(self.watch_epoch),
        };
        match self.subs.entry(Bytes::copy_from_slice(&sub.sid)) {
            // Deliveries of the subscription being ended may still be on their way: counted
            // toward this one, they would end it early. It waits for the upstream.
            Entry::Occupied(old)
                if (old.get().revoked || old.get().ending) && !ctx.upstream_caught_up =>
            {
                return Verdict::Defer
            }
            Entry::Occupied(mut old) if old.get().revoked || old.get().ending => {
                old.insert(live);
                self.recount_needs();
                self.refresh_interest();
            }
            // The subscription the sid names, once the upstream has taken the SUB that made
            // it. Until then the upstream may still refuse that SUB (its own permissions),
            // and this one would be the subscription: it waits for the upstream to catch up,
            // so the entry holds the subject the upstream has.
            Entry::Occupied(_) if !ctx.upstream_caught_up => return Verdict::Defer,
            Entry::Occupied(_) => {}
            // An invalid subject never becomes a subscription: the upstream refuses it. It
            // waits for the upstream to answer the SUBs before it, as a reused sid does: at
            // the upstream's subscription limit its refusal names no SUB, and must not be
            // taken for one of theirs (see `on_upstream_subscription_limit`).
            Entry::Vacant(_) if !crate::subject::is_valid_subject(&sub.subject) => {
                if !ctx.upstream_caught_up {
                    return Verdict::Defer;
                }
            }
            Entry::Vacant(new) => {
                self.added_by_sub = Some(new.key().clone());
                new.insert(live);
            }
        }
        Verdict::Forward
    }

    /// `UNSUB sid [max]`, as nats-server takes it: without a max, or with one the deliveries
    /// have reached (0 included), the subscription ends now; otherwise when they reach it.
    /// That is known only where every delivery was seen; elsewhere (deliveries were not
    /// watched) the entry stays as maybe ended ([`LiveSub::maybe_ended`]), so a reload can
    /// still end it.
    ///
    /// On a subscription whose deliveries the edge may drop, the max is the edge's to count
    /// ([`LiveSub::edge_max`]): the UNSUB goes no further, and a verbose client gets the
    /// `+OK` nats-server would send for it.
    fn on_unsubscribe(&mut self, unsub: &crate::op::Unsub, ctx: &SessionCtx) -> Verdict {
        let Some(live) = self.subs.get_mut(&unsub.sid) else {
            return Verdict::Forward;
        };
        let counted =
            live.watched_since == Some(self.watch_epoch) && self.interest.contains(OpKind::Msg);
        // A queue subscription's count stays the upstream's: ending it at the edge would
        // drop the messages the upstream still gives this member until it reads the edge's
        // UNSUB, which on nats-server would go to the group's other members.
        let may_drop = self.filter_deliveries
            && live.queue.is_none()
            && self
                .perms
                .as_ref()
                .is_some_and(|p| p.needs_delivery_filter(&live.subject, None));
        match unsub.max {
            // Being ended at the upstream: the entry goes once it has been.
            _ if live.revoked || live.ending => {}
            Some(max)
                if counted && (may_drop || live.edge_max.is_some()) && max > live.forwarded =>
            {
                live.edge_max = Some(max);
                self.subs_need_deliveries = true;
                let verbose = ctx.connect.as_ref().is_none_or(|c| c.is_verbose());
                return if verbose {
                    Verdict::Answer(ServerOp::Ok)
                } else {
                    Verdict::Drop
                };
            }
            // The upstream has delivered at least what the edge passed on, so it ends such
            // a subscription at once too.
            Some(max) if counted && live.edge_max.is_none() && max > live.delivered => {
                live.max = Some(max);
                self.subs_need_deliveries = true;
            }
            // Its count unknown: kept for a reload, as nats-server's reload checks every
            // subscription, however many deliveries it asked for.
            Some(max) if !counted && max > 0 => {
                if !live.maybe_ended {
                    live.maybe_ended = true;
                    let entry = (Bytes::copy_from_slice(&unsub.sid), live.order);
                    self.maybe_ended.push_back(entry);
                    self.forget_oldest_maybe_ended();
                    // A SUB that reuses the sid waits at least for what was on its way.
                    self.sub_answers.ended(&unsub.sid, ctx);
                }
            }
            _ => {
                self.forget(&unsub.sid);
                self.sub_answers.ended(&unsub.sid, ctx);
            }
        }
        Verdict::Forward
    }

    /// Past [`MAX_MAYBE_ENDED`], the oldest maybe-ended entries go (sids already gone, or
    /// reused by a SUB since, are passed over).
    fn forget_oldest_maybe_ended(&mut self) {
        while self.maybe_ended.len() > MAX_MAYBE_ENDED {
            let Some((sid, order)) = self.maybe_ended.pop_front() else {
                break;
            };
            if self
                .subs
                .get(&sid)
                .is_some_and(|s| s.maybe_ended && !s.revoked && s.order == order)
            {
                self.subs.remove(&sid);
            }
        }
    }

    /// The subscriptions the upstream holds for sure, for [`SubAnswers`]: maybe-ended ones
    /// most likely are gone. Counted only at the upstream's subscription limit.
    fn subscriptions_held(&self) -> usize {
        if !self.sub_answers.at_upstream_limit() || self.maybe_ended.is_empty() {
            return self.subs.len();
        }
        self.subs.values().filter(|s| !s.maybe_ended).count()
    }

    /// The upstream's subscription `sid` has ended.
    fn forget(&mut self, sid: &[u8]) {
        if self
            .subs
            .remove(sid)
            .is_some_and(|gone| gone.needs_deliveries())
        {
            // The last such one gone: deliveries may take the fast path again.
            self.recount_needs();
            self.refresh_interest();
        }
    }

    fn recount_needs(&mut self) {
        self.subs_need_deliveries = self.subs.values().any(LiveSub::needs_deliveries);
    }

    fn on_delivery(&mut self, msg: &crate::op::Msg, ctx: &mut SessionCtx) -> Verdict {
        let perms = self.perms.as_deref();
        let mut live = self.subs.get_mut(&msg.sid);
        // The upstream counts every delivery toward an auto-unsubscribe it keeps, dropped or
        // not.
        let last = live.as_deref_mut().is_some_and(|s| {
            s.delivered += 1;
            s.max.is_some_and(|max| s.delivered >= max)
        });
        if live.as_ref().is_some_and(|s| s.ending) {
            // Past the auto-unsubscribe the edge counts: nats-server would not have made it.
            return Verdict::Drop;
        }
        let queue = live.as_ref().and_then(|s| s.queue.clone());
        let refused = live.as_ref().is_some_and(|s| s.revoked)
            || (self.filter_deliveries
                && perms
                    .is_some_and(|p| p.denied_delivery(&msg.subject, queue.as_deref()).is_some()));
        if !refused {
            if let Some(s) = live {
                s.forwarded += 1;
                if s.edge_max.is_some_and(|max| s.forwarded >= max) {
                    // The last one: the edge ends the subscription at the upstream.
                    s.ending = true;
                    ctx.end_subscriptions.push(Bytes::copy_from_slice(&msg.sid));
                }
            }
        }
        let verdict = if refused {
            self.denied(DenialKind::Delivery, &msg.subject, queue.as_ref());
            Verdict::Drop
        } else {
            if let (Some(perms), Some(tracker), Some(reply)) =
                (&self.perms, self.responses.as_mut(), &msg.reply)
            {
                if !perms.check_publish(reply).allowed {
                    // As nats-server checks it (`pubAllowedFullCheck` at delivery): a reply
                    // it already tracks counts this delivery against its answers, and only
                    // one not tracked, or spent or expired by that, starts afresh.
                    let now = Instant::now();
                    if !tracker.answer(reply, now) {
                        tracker.delivered(reply, now);
                    }
                }
            }
            Verdict::Forward
        };
        if last {
            self.forget(&msg.sid);
        }
        verdict
    }
}

impl Filter for AclFilter {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn interest(&self) -> Interest {
        self.interest
    }

    fn on_info(&mut self, info: &mut Info, _ctx: &SessionCtx) {
        if self.settings.mode == AuthMode::Edge {
            // The edge asks for credentials of its own, whatever the upstream wants of it;
            // with a no_auth_user, as nats-server, it does not say so (a client may come
            // without any).
            info.auth_required = self.rules.no_auth_user.is_none().then_some(true);
        }
    }

    fn on_reload(&mut self, ctx: &SessionCtx) -> Reloaded {
        let rules = self.settings.rules.current();
        if Arc::ptr_eq(&rules, &self.rules) {
            return Reloaded::default();
        }
        let old = std::mem::replace(&mut self.rules, rules);
        let mut reloaded = Reloaded::default();
        let method = ctx.identity.as_ref().map(|identity| identity.method);
        match self.standing_after_reload(&old, method, ctx.conn.tls_peer.as_ref()) {
            Standing::Authorized => {}
            // As nats-server closes a client its reloaded configuration no longer
            // authorizes: at once, with `Authorization Violation` and nothing else (its
            // subscriptions are not judged first).
            Standing::Refused(why) => {
                tracing::warn!(user = self.user_label(), reason = %why, "no longer authorized after a reload; closing the connection");
                self.revoked = true;
                reloaded.close = Some((
                    CloseReason::AuthorizationViolation,
                    Some(errors::AUTHORIZATION_VIOLATION),
                ));
                self.refresh_interest();
                return reloaded;
            }
            // As nats-server closes a client whose user is gone or has moved to another
            // account: without a word, so that it logs in again under the new rules.
            Standing::Moved(why) => {
                tracing::warn!(user = self.user_label(), reason = %why, "user changed by a reload; closing the connection for it to log in again");
                self.revoked = true;
                reloaded.close = Some((CloseReason::UserChanged, None));
                self.refresh_interest();
                return reloaded;
            }
        }
        // Rules loaded again unchanged (a reload for a certificate, say) keep the replies
        // this client may still answer and the cached decisions, as nats-server resets them
        // only when its reload changes authorization (any user's: it registers every
        // client's user again then).
        if *old != *self.rules {
            self.take_permissions();
        }
        // Subscriptions the new rules refuse end at the upstream, and the client is told,
        // as nats-server removes them on a reload and tells it.
        let mut revoked = 0;
        match &self.perms {
            Some(perms) => {
                for (sid, live) in self.subs.iter_mut() {
                    let queue = live.queue.as_deref();
                    let ended = live.revoked || live.ending;
                    // A `_sys_` subscription held here is one the edge let through (no
                    // permissions applied then): the upstream refuses it, and its `-ERR` is
                    // on the way, so a reload does not refuse it a second time.
                    let allowed = queue == Some(permissions::SYSTEM_QUEUE)
                        || perms.check_subscribe(&live.subject, queue).allowed;
                    if !ended && !allowed {
                        // The client hears of a subscription it holds for sure, as from
                        // nats-server; one maybe ended is ended without a word.
                        if !live.maybe_ended {
                            reloaded
                                .notices
                                .push(ServerOp::Err(SubscriptionRefusal::text(
                                    &live.subject,
                                    queue,
                                    Some(sid),
                                )));
                        }
                        reloaded.unsubscribe.push(sid.clone());
                        if live.max.is_some() || live.edge_max.is_some() || live.maybe_ended {
                            reloaded.already_unsubscribed += 1;
                        }
                        tracing::info!(
                            user = self.user.as_deref().unwrap_or(""),
                            subject = %String::from_utf8_lossy(&live.subject),
                            sid = %String::from_utf8_lossy(sid),
                            "subscription no longer allowed after a reload; unsubscribing it"
                        );
                        live.revoked = true;
                        revoked += 1;
                    }
                    self.filter_deliveries |= perms.needs_delivery_filter(&live.subject, queue);
                }
                self.recount_needs();
            }
            // No rules apply to this user any more: nothing is refused. While other rules are
            // in force its subscriptions stay tracked, for a later reload that restricts it
            // again (`refresh_interest` drops them once no rule file is left).
            None => self.recount_needs(),
        }
        // Counted as refused SUBs are: each is a subscription the rules now deny.
        for _ in 0..revoked {
            self.settings
                .events
                .acl_denied(self.metric_label(), DenialKind::Subscribe);
        }
        // After the revocations: deliveries of revoked subscriptions must be seen.
        self.refresh_interest();
        reloaded
    }

    fn on_subscriptions_dropped(&mut self) {
        // Those being ended stay, so that their deliveries already on the way are still
        // dropped; a SUB that reuses such a sid replaces the entry once the upstream has
        // caught up, as does one that reuses any dropped sid.
        self.subs.retain(|_, s| s.revoked || s.ending);
        self.sub_answers.all_ended();
        self.recount_needs();
        self.refresh_interest();
    }

    fn on_unsubscribed(&mut self, sids: &[Bytes]) {
        for sid in sids {
            if self.subs.get(sid).is_some_and(|s| s.revoked || s.ending) {
                self.forget(sid);
            }
        }
    }

    fn on_client_op(&mut self, op: &mut ClientOp, ctx: &mut SessionCtx) -> Verdict {
        if self.revoked {
            return Verdict::close_with(
                CloseReason::AuthorizationViolation,
                errors::AUTHORIZATION_VIOLATION,
            );
        }
        if !self.connected && self.settings.mode == AuthMode::Edge {
            if let ClientOp::Connect(connect) = op {
                return self.on_connect(connect, ctx);
            }
            // nats-server requires CONNECT first from a client it must authenticate. One a
            // no_auth_user lets in without it is shown the CONNECT it implies first (the
            // session does that), so an op before any CONNECT is refused.
            tracing::warn!("authorization violation: an op before CONNECT");
            return Verdict::close_with(
                CloseReason::AuthorizationViolation,
                errors::AUTHORIZATION_VIOLATION,
            );
        }
        match op {
            ClientOp::Connect(connect) => self.on_connect(connect, ctx),
            ClientOp::Pub(p) => {
                // nats-server closes a client that sends HPUB without having negotiated
                // headers, before it looks at permissions: leave that to it.
                let headers_refused =
                    p.headers.is_some() && !ctx.connect.as_ref().is_some_and(|c| c.wants_headers());
                if headers_refused {
                    return Verdict::Forward;
                }
                let subject = p.subject.clone();
                self.on_publish(&subject)
            }
            ClientOp::Sub(sub) => self.on_subscribe(sub, ctx),
            ClientOp::Unsub(unsub) => self.on_unsubscribe(unsub, ctx),
            _ => Verdict::Forward,
        }
    }

    fn on_client_op_refused(&mut self, op: &ClientOp) {
        // A SUB a later filter refused (the subscription limit's `-ERR`) never became a
        // subscription: the entry it added goes, so refused SUBs cannot grow the table.
        if let ClientOp::Sub(sub) = op {
            if self.added_by_sub.as_deref() == Some(&sub.sid[..]) {
                self.added_by_sub = None;
                self.subs.remove(&sub.sid);
            }
        }
    }

    fn on_server_op(&mut self, op: &mut ServerOp, ctx: &mut SessionCtx) -> Verdict {
        if self.revoked {
            return Verdict::close_with(
                CloseReason::AuthorizationViolation,
                errors::AUTHORIZATION_VIOLATION,
            );
        }
        match op {
            ServerOp::Msg(msg) => self.on_delivery(msg, ctx),
            ServerOp::Err(text) => {
                self.on_upstream_error(text);
                Verdict::Forward
            }
            _ => Verdict::Forward,
        }
    }
}

impl AclFilter {
    /// An upstream `-ERR` saying nats-server's own permissions refused a SUB, or that its own
    /// reload removed a subscription: that subscription does not exist upstream, so its entry
    /// goes. Otherwise every SUB that the edge's rules allow and nats-server's refuse (in
    /// `passthrough` mode, in front of a server with permissions of its own) would leave an
    /// entry for good: a client could grow the table without limit, and a reload of the
    /// edge's rules that refuses the subject would end whatever later subscription reused
    /// the sid.
    ///
    /// Which entry goes is [`SubscriptionRefusal::pick`]'s answer. Entries the edge is ending
    /// or has revoked stay until the upstream has ended them, for their deliveries still on
    /// the way.
    fn on_upstream_error(&mut self, text: &str) {
        if text == errors::MAX_SUBSCRIPTIONS_EXCEEDED {
            self.on_upstream_subscription_limit();
            return;
        }
        let Some(refused) = SubscriptionRefusal::parse(text) else {
            return;
        };
        let sid = refused.pick(
            self.subs
                .iter()
                .filter(|(_, live)| !live.revoked && !live.ending)
                .map(|(sid, live)| (sid, &live.subject[..], live.queue.as_deref(), live.order)),
        );
        let Some(sid) = sid else {
            return;
        };
        self.subs.remove(&sid);
        if self.added_by_sub.as_ref() == Some(&sid) {
            self.added_by_sub = None;
        }
        self.recount_needs();
        self.refresh_interest();
    }
}

impl AclFilter {
    /// nats-server refused a SUB at its own subscription limit: the entry that SUB made goes
    /// (see [`SubAnswers`]). A refused SUB that made no entry (one reusing a sid, or with an
    /// invalid subject) takes none, as nothing newer is unanswered.
    fn on_upstream_subscription_limit(&mut self) {
        let sid = self.sub_answers.refused_entry(
            self.subs
                .iter()
                .filter(|(_, live)| !live.revoked && !live.ending)
                .map(|(sid, live)| (sid, live.order)),
        );
        if let Some(sid) = sid {
            self.subs.remove(&sid);
            if self.added_by_sub.as_ref() == Some(&sid) {
                self.added_by_sub = None;
            }
            self.recount_needs();
            self.refresh_interest();
        }
        self.sub_answers.refused_at(self.subscriptions_held());
    }
}

/// The name a passthrough client presented: its user, else its nkey, else the subject of
/// its user JWT. nats-server checks that name only if it authenticates clients: in front of
/// one without authorization, any name passes (docs/acl.md says so).
///
/// A CONNECT with more than one kind of credential (user, nkey or JWT, token) is refused:
/// nats-server checks only the one its own configuration uses (a token server ignores
/// `user`, an nkey server prefers `nkey`, a server outside operator mode ignores the JWT),
/// so a valid token with `"user":"admin"` beside it would otherwise pass for admin here.
/// A JWT with an nkey is one credential (nats.js sends its creds that way): the nkey must
/// then be the JWT's subject, the key nats-server checks the signature with.
///
/// An nkey or a JWT subject names the client only when the CONNECT's `sig` is that key's
/// signature of the upstream's nonce, which is what nats-server checks. Otherwise the client
/// is nameless: nats-server ignores an nkey when it has no nkey users (and then sends no
/// nonce), so an unsigned key would let a client pick the edge permissions of any key-named
/// user while nats-server admits it as someone else. A JWT names the client only with
/// `operator_mode`: outside operator mode nats-server ignores JWTs, and a bearer JWT, which
/// it admits there without a signature, proves nothing, so its subject (any user's public
/// key, which is no secret) would take that user's rules.
fn passthrough_user(
    connect: &Connect,
    nonce: Option<&str>,
    operator_mode: bool,
) -> Result<Option<Arc<str>>, &'static str> {
    fn given(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|s| !s.is_empty())
    }
    let (user, nkey, jwt) = (
        given(&connect.user),
        given(&connect.nkey),
        given(&connect.jwt),
    );
    let kinds = [
        user.is_some(),
        nkey.is_some() || jwt.is_some(),
        given(&connect.auth_token).is_some(),
    ]
    .into_iter()
    .filter(|given| *given)
    .count();
    if kinds > 1 {
        return Err(
            "the CONNECT presents more than one kind of credential (user, nkey or jwt, auth_token)",
        );
    }
    if jwt.is_some() && !operator_mode {
        // Once per process: a deployment in operator mode that has not said so would
        // otherwise see its JWT users' rules stop applying with no word.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("a client presented a user JWT, which names no one for the rules without auth.operator_mode = true (set it if the upstream runs in operator mode)");
        }
    }
    let claims = jwt
        .filter(|_| operator_mode)
        .map(|jwt| jwt_claims(jwt).unwrap_or_default());
    let subject = claims.as_ref().map(|c| c.subject.clone());
    if let (Some(nkey), Some(subject)) = (nkey, &subject) {
        if nkey != subject {
            return Err("the CONNECT's nkey is not the subject of its JWT");
        }
    }
    if let Some(user) = user {
        return Ok(Some(Arc::from(user)));
    }
    // Only a user's public key is a name a key can give: a bearer JWT's `sub` is read
    // unverified, and `"sub":"admin"` must not pass for the user `admin` of the rules.
    let key = nkey
        .or(subject.as_deref().filter(|s| !s.is_empty()))
        .filter(|key| {
            let user_key = is_user_key(key);
            if !user_key {
                tracing::info!(
                    key,
                    "the CONNECT's nkey or JWT subject is not a user's public key: its permissions are the defaults"
                );
            }
            user_key
        });
    // A bearer JWT is one nats-server admits without a signature (browsers hold no seed);
    // it checks the JWT's issuer instead, in operator mode, the one mode in which JWT names
    // count at all (docs/acl.md).
    let bearer = nkey.is_none() && claims.as_ref().is_some_and(|c| c.bearer);
    Ok(key.and_then(|key| {
        let signed = bearer || signed_by(key, given(&connect.sig), nonce);
        if !signed {
            tracing::info!(
                key,
                "the CONNECT's signature does not prove its key: its permissions are the defaults"
            );
        }
        signed.then(|| Arc::from(key))
    }))
}

/// Whether `key` is a user's public nkey (`U...`), as nats-server's nkey users and user JWT
/// subjects are.
fn is_user_key(key: &str) -> bool {
    key.starts_with('U') && nkeys::KeyPair::from_public_key(key).is_ok()
}

/// Whether `sig` (base64, URL-safe or standard, as nats-server takes it) is the signature of
/// `nonce` by the nkey `public_key`.
fn signed_by(public_key: &str, sig: Option<&str>, nonce: Option<&str>) -> bool {
    let (Some(sig), Some(nonce)) = (sig, nonce) else {
        return false;
    };
    let Some(sig) = base64url_decode(sig) else {
        return false;
    };
    nkeys::KeyPair::from_public_key(public_key)
        .and_then(|key| key.verify(nonce.as_bytes(), &sig))
        .is_ok()
}

/// What the edge reads of a user JWT, without verifying it (nats-server verifies it).
#[derive(Default)]
struct JwtClaims {
    /// `sub`: the user's public key.
    subject: String,
    /// `nats.bearer_token`: the JWT alone admits its holder, with no signature.
    bearer: bool,
}

fn jwt_claims(jwt: &str) -> Option<JwtClaims> {
    let payload = jwt.split('.').nth(1)?;
    let decoded = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&decoded).ok()?;
    Some(JwtClaims {
        subject: claims.get("sub")?.as_str()?.to_string(),
        bearer: claims
            .pointer("/nats/bearer_token")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    })
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Removes every credential the client sent and puts the edge's own in their place.
fn replace_credentials(connect: &mut Connect, creds: Option<&UpstreamCredentials>) {
    connect.user = None;
    connect.pass = None;
    connect.auth_token = None;
    connect.jwt = None;
    connect.nkey = None;
    connect.sig = None;
    if let Some(creds) = creds {
        connect.user.clone_from(&creds.user);
        connect.pass = creds.password.as_ref().map(|p| p.expose().to_string());
        connect.auth_token = creds.token.as_ref().map(|t| t.expose().to_string());
    }
}

#[cfg(test)]
mod tests;
