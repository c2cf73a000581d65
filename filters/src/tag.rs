//! The `tagging` filter: headers describing the sender, added to every message a client
//! publishes (and optionally a JSON field merged into JSON-object payloads), so upstream
//! consumers know who sent it. Tags cannot be forged: headers the client sends with a
//! reserved name (any configured tag name, or the reserved prefix, in any casing) are
//! stripped before the tags are added, or the message is refused.
//!
//! Headers need the upstream's support (INFO `headers`). A client that did not negotiate
//! headers itself is connected upstream with `headers: true`, so its PUBs can become HPUBs;
//! the edge then strips headers from what is delivered to it, as nats-server would have, and
//! refuses an HPUB from it (nats-server closes such a client without an `-ERR`).
//!
//! The tagged size counts against the effective max_payload: a message the tags would push
//! over is refused with nats-server's own `-ERR 'Maximum Payload Violation'` and close,
//! never forwarded for the upstream to close the shared link.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Deserialize;

use crate::acl::quote::go_quote;
use crate::errors;
use crate::events::Events;
use crate::filter::{ConnFacts, Filter, FilterFactory, Interest, OpKind, Reloaded, SessionCtx};
use crate::headers::{self, HeaderWriter};
use crate::op::{ClientOp, Info, Pub, ServerOp};
use crate::subject;
use crate::toml_file::{self, TomlFault};
use crate::verdict::{CloseReason, Verdict};

/// A tagging file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagFile {
    /// Headers whose names start with this (any casing) are the edge's to set.
    pub reserved_prefix: String,
    /// What happens to a message that carries a reserved header: `strip` it, or `refuse`
    /// the message with a permissions `-ERR` (the connection stays open).
    pub spoofed: SpoofPolicy,
    /// Header names for each tag; an empty name leaves that tag out.
    pub headers: TagHeaders,
    /// Fixed headers added to every message, name to value.
    #[serde(rename = "static")]
    pub static_tags: BTreeMap<String, String>,
    /// JSON-object payloads on these subjects get the tags merged in as one field.
    pub json: Vec<JsonRule>,
}

impl Default for TagFile {
    fn default() -> Self {
        TagFile {
            reserved_prefix: "Nats-Edge-".into(),
            spoofed: SpoofPolicy::Strip,
            headers: TagHeaders::default(),
            static_tags: BTreeMap::new(),
            json: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagHeaders {
    pub user: String,
    pub client_addr: String,
    pub conn_id: String,
    pub tls_subject: String,
}

impl Default for TagHeaders {
    fn default() -> Self {
        TagHeaders {
            user: "Nats-Edge-User".into(),
            client_addr: "Nats-Edge-Client-Addr".into(),
            conn_id: "Nats-Edge-Conn-Id".into(),
            tls_subject: "Nats-Edge-Tls-Subject".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoofPolicy {
    #[default]
    Strip,
    Refuse,
}

/// `[[json]]`: merge the tags into JSON-object payloads published on these subjects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRule {
    /// Subjects in the client's view; wildcards allowed.
    pub subjects: Vec<String>,
    /// The field the tags go in, as an object (`{"user": ..., "client_addr": ..., ...}`).
    pub field: String,
}

/// A tagging file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("tagging rules {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("tagging rules {}:{fault}", file.display())]
    Parse { file: PathBuf, fault: TomlFault },
    #[error("tagging rules {}: {key}: {reason}", file.display())]
    Value {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

/// A validated tagging configuration.
#[derive(Debug, Clone)]
pub struct TagConfig {
    pub file: TagFile,
    /// Every configured name, lower-cased for matching.
    reserved: Vec<Vec<u8>>,
}

impl TagConfig {
    pub fn load(path: &Path) -> Result<TagConfig, TagError> {
        let text = std::fs::read_to_string(path).map_err(|source| TagError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<TagConfig, TagError> {
        let file: TagFile = toml_file::parse(text).map_err(|fault| TagError::Parse {
            file: path.to_path_buf(),
            fault,
        })?;
        Self::new(file).map_err(|(key, reason)| TagError::Value {
            file: path.to_path_buf(),
            key,
            reason,
        })
    }

    /// Checks names and values: header names are visible ASCII without `:` (and not a
    /// status line's `Status` or `Description`), static values are fit for every reader
    /// ([`is_unfit_value`]).
    pub fn new(file: TagFile) -> Result<TagConfig, (String, String)> {
        let h = &file.headers;
        let mut reserved = Vec::new();
        for (key, name) in [
            ("headers.user", &h.user),
            ("headers.client_addr", &h.client_addr),
            ("headers.conn_id", &h.conn_id),
            ("headers.tls_subject", &h.tls_subject),
        ] {
            if !name.is_empty() {
                check_tag_name(name, &reserved).map_err(|r| (key.to_string(), r))?;
                reserved.push(name.as_bytes().to_vec());
            }
        }
        for (name, value) in &file.static_tags {
            let key = format!("static.{name}");
            check_tag_name(name, &reserved).map_err(|r| (key.clone(), r))?;
            // In the JSON field a static tag is a key beside the client's own: one of their
            // names would overwrite it, and Go reads JSON keys in any casing.
            if let Some(own) = JSON_IDENTITY_KEYS
                .iter()
                .find(|own| own.eq_ignore_ascii_case(name))
            {
                return Err((
                    key,
                    format!("`{own}` is a key of the JSON field's own (the client's); name the tag otherwise"),
                ));
            }
            if value.contains(['\r', '\n']) {
                return Err((key, "a header value cannot hold a line end".into()));
            }
            if is_unfit_value(value) {
                return Err((
                    key,
                    "a header value cannot be blank, start or end with white space, or hold \
                     a control byte: client libraries would not all read it alike"
                        .into(),
                ));
            }
            reserved.push(name.as_bytes().to_vec());
        }
        if !file.reserved_prefix.is_empty() {
            let prefix = &file.reserved_prefix;
            check_name(prefix).map_err(|r| ("reserved_prefix".into(), r))?;
            if claims_nats_headers(prefix) {
                return Err((
                    "reserved_prefix".into(),
                    format!(
                        "`{prefix}` would strip headers of NATS's own (`Nats-Msg-Id`, \
                         `Nats-Expected-Last-Subject-Sequence`, ...) that clients send \
                         for JetStream: use a prefix of its own, such as `{NATS_EDGE_PREFIX}`"
                    ),
                ));
            }
        }
        for (i, rule) in file.json.iter().enumerate() {
            if rule.field.is_empty() {
                return Err((format!("json.{i}.field"), "must not be empty".into()));
            }
            for s in &rule.subjects {
                if !subject::is_valid_subject(s.as_bytes()) {
                    return Err((
                        format!("json.{i}.subjects"),
                        format!("`{s}` is not a valid subject"),
                    ));
                }
            }
        }
        Ok(TagConfig { file, reserved })
    }

    /// Whether a client-sent header name is the edge's to set.
    pub fn is_reserved(&self, name: &[u8]) -> bool {
        headers::is_reserved(name, &self.reserved, self.file.reserved_prefix.as_bytes())
    }

    /// The tags for a session, as header name and value, in order. A value client libraries
    /// would not all read alike (blank, as a certificate's empty subject; with white space
    /// at an end or a control byte: see [`is_unfit_value`]) is left out, as an unknown one
    /// is: a consumer then sees no tag, never another value than the edge meant.
    pub fn tags(&self, conn: &ConnFacts, user: Option<&str>) -> Vec<(String, String)> {
        let h = &self.file.headers;
        let mut out = Vec::new();
        let mut add = |name: &str, value: Option<String>| {
            if let (false, Some(v)) = (name.is_empty(), value) {
                if !is_unfit_value(&v) {
                    out.push((name.to_string(), v));
                }
            }
        };
        add(&h.user, user.map(str::to_string));
        add(&h.client_addr, Some(conn.client_addr.to_string()));
        add(&h.conn_id, Some(conn.conn_id.to_string()));
        add(
            &h.tls_subject,
            conn.tls_peer.as_ref().map(|p| p.subject.clone()),
        );
        for (k, v) in &self.file.static_tags {
            out.push((k.clone(), v.clone()));
        }
        out
    }

    /// The tags as a JSON object: `user`, `client_addr`, `conn_id`, `tls_subject` (each when
    /// its header is configured and the value known), then the static tags by name, in
    /// that order.
    pub fn json_value(&self, conn: &ConnFacts, user: Option<&str>) -> JsonTags {
        let h = &self.file.headers;
        let mut out = JsonTags::default();
        let mut add = |key: &str, header: &str, value: Option<String>| {
            if let (false, Some(v)) = (header.is_empty(), value) {
                out.0.push((key.to_string(), v));
            }
        };
        add("user", &h.user, user.map(str::to_string));
        add(
            "client_addr",
            &h.client_addr,
            Some(conn.client_addr.to_string()),
        );
        add("conn_id", &h.conn_id, Some(conn.conn_id.to_string()));
        add(
            "tls_subject",
            &h.tls_subject,
            conn.tls_peer.as_ref().map(|p| p.subject.clone()),
        );
        for (k, v) in &self.file.static_tags {
            out.0.push((k.clone(), v.clone()));
        }
        out
    }

    /// The JSON field for a client subject, when a `[[json]]` rule names it.
    pub fn json_field(&self, subject: &[u8]) -> Option<&str> {
        self.file
            .json
            .iter()
            .find(|r| {
                r.subjects
                    .iter()
                    .any(|p| subject::matches(p.as_bytes(), subject))
            })
            .map(|r| r.field.as_str())
    }
}

/// The part of the `Nats-` header namespace that is the edge's own.
const NATS_EDGE_PREFIX: &str = "Nats-Edge-";

/// Whether a lower-cased name or prefix is in `Nats-` but outside the edge's part of it.
fn in_nats_namespace(lower: &str) -> bool {
    lower.starts_with("nats-") && !lower.starts_with("nats-edge")
}

/// Whether a reserved prefix covers header names NATS uses itself: all of `Nats-` (`Nats`,
/// `nats-`), or part of it outside `Nats-Edge-` (`Nats-Ex` takes JetStream's expectations).
fn claims_nats_headers(prefix: &str) -> bool {
    let prefix = prefix.to_ascii_lowercase();
    if "nats-".starts_with(&prefix) {
        return true;
    }
    in_nats_namespace(&prefix)
}

/// A tag's header name: a header name, not one of NATS's own (a tag named `Nats-Msg-Id`
/// would make JetStream drop messages as duplicates), and not another tag's in any casing
/// (client libraries would disagree on which of the two a lookup finds).
fn check_tag_name(name: &str, earlier: &[Vec<u8>]) -> Result<(), String> {
    check_name(name)?;
    let lower = name.to_ascii_lowercase();
    if in_nats_namespace(&lower) {
        return Err(format!(
            "`{name}` is in NATS's own header namespace: use a name under `{NATS_EDGE_PREFIX}` \
             or outside `Nats-`"
        ));
    }
    // nats.c sets these two from a block's first line (a status and its description),
    // over a header of that name.
    if lower == "status" || lower == "description" {
        return Err(format!(
            "`{name}` is a name some client libraries give the status line: name the tag otherwise"
        ));
    }
    if earlier
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    {
        return Err(format!(
            "`{name}` is another tag's header name (in any casing)"
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!(
            "`{name}` is not a header name (visible ASCII, no `:` or spaces)"
        ));
    }
    Ok(())
}

/// The tagging configuration in use, swapped whole on reload for new and live connections.
pub struct TagSource {
    current: ArcSwap<TagConfig>,
}

impl TagSource {
    pub fn new(config: TagConfig) -> Self {
        TagSource {
            current: ArcSwap::from_pointee(config),
        }
    }

    /// Swaps in a newly loaded configuration.
    pub fn store(&self, config: TagConfig) {
        self.current.store(Arc::new(config));
    }

    pub fn current(&self) -> Arc<TagConfig> {
        self.current.load_full()
    }
}

/// Builds the per-session tagging filter.
pub struct TagFactory {
    pub source: Arc<TagSource>,
    pub events: Arc<dyn Events>,
}

impl FilterFactory for TagFactory {
    fn build(&self, _conn: &ConnFacts) -> Box<dyn Filter> {
        Box::new(Tag {
            source: self.source.clone(),
            config: self.source.current(),
            events: self.events.clone(),
            client_headers: true,
            strips_headers: false,
            connected: false,
            cached: None,
            announced_room: None,
            spoof_logged: None,
            spoofs_unlogged: 0,
        })
    }
}

/// Per-session state of the tagging filter.
pub struct Tag {
    source: Arc<TagSource>,
    /// The configuration this session tags with, until the next reload.
    config: Arc<TagConfig>,
    events: Arc<dyn Events>,
    /// Whether the client itself negotiated headers.
    client_headers: bool,
    /// Whether the edge asked the upstream for headers on behalf of a client that did not:
    /// its deliveries may then carry headers the client cannot read. It stays set: a later
    /// CONNECT does not stop deliveries already on their way.
    strips_headers: bool,
    /// Whether the client has sent its CONNECT, which names its user.
    connected: bool,
    /// The session's tags, and the user they were built for: built again when a CONNECT
    /// names another (nats-server authenticates every CONNECT, not only the first), and
    /// when the client's certificate becomes known (classic TLS, after the INFO).
    cached: Option<(TagsFor, TagLines)>,
    /// The room the last INFO to the client kept out of its `max_payload` for the tags (the
    /// [`Tag::growth`] of then), once one has gone: the client sizes its messages by it.
    announced_room: Option<usize>,
    /// When a forged header was last logged, and how many came since.
    spoof_logged: Option<Instant>,
    spoofs_unlogged: u64,
}

/// What a session's tags were built for: the user, and whether the client's certificate
/// was known.
type TagsFor = (Option<Arc<str>>, bool);

/// A session's tags, formatted once.
#[derive(Clone)]
struct TagLines {
    /// The whole header block of a message that had none: shared by every such message,
    /// so tagging it allocates nothing.
    block: Bytes,
}

impl TagLines {
    /// `Name: value\r\n` for each tag: the block without its version line and its end.
    fn lines(&self) -> &[u8] {
        let start = headers::VERSION.len() + 2;
        self.block
            .get(start..self.block.len().saturating_sub(2))
            .unwrap_or_default()
    }
}

/// A connection that keeps forging tag headers is logged once per this interval; every
/// forgery is counted.
const SPOOF_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Room kept for the user's name in the `max_payload` announced before the CONNECT names the
/// user; the INFO that answers the CONNECT keeps the exact room.
const USER_NAME_ROOM: usize = 128;

/// Room kept for the client certificate's subject in the `max_payload` announced before the
/// certificate is known (classic TLS sends the INFO before the handshake); the INFO that
/// answers the CONNECT keeps the exact room.
const TLS_SUBJECT_ROOM: usize = 256;

impl Tag {
    /// The most the tags add to one of this session's messages: the whole header block (a
    /// message that had none gets the version line and the end too), and the JSON field
    /// where rules add one (keys and spacing the edge writes back never grow). Before the
    /// CONNECT, with [`USER_NAME_ROOM`] for the user's name, and [`TLS_SUBJECT_ROOM`] for
    /// a certificate's subject before a classic TLS handshake.
    fn growth(&mut self, ctx: &SessionCtx) -> usize {
        let headers = &self.config.file.headers;
        let unnamed_user = !self.connected && !headers.user.is_empty();
        let user_room = if unnamed_user { USER_NAME_ROOM } else { 0 };
        let unknown_subject = ctx.conn.tls_handshake_pending && !headers.tls_subject.is_empty();
        let subject_room = if unknown_subject { TLS_SUBJECT_ROOM } else { 0 };
        // `Name: value\r\n` for each.
        let user_line = if unnamed_user {
            headers.user.len() + 4 + user_room
        } else {
            0
        };
        let subject_line = if unknown_subject {
            headers.tls_subject.len() + 4 + subject_room
        } else {
            0
        };
        let unknown_lines = user_line + subject_line;
        let mut growth = 0;
        let tags = self.tag_lines(ctx);
        if ctx.upstream_headers && (unknown_lines > 0 || !tags.lines().is_empty()) {
            growth += tags.block.len() + unknown_lines;
        }
        let field = self
            .config
            .file
            .json
            .iter()
            .map(|rule| json_len(&rule.field))
            .max();
        if let Some(field) = field {
            let user = ctx.identity.as_ref().and_then(|i| i.user.as_deref());
            let value = json_len(&self.config.json_value(&ctx.conn, user));
            // `,"field":{...}`, and `"user":"...",` inside it.
            growth += 2 + field + value;
            if unnamed_user {
                growth += r#""user":"","#.len() + user_room;
            }
            if unknown_subject {
                growth += r#""tls_subject":"","#.len() + subject_room;
            }
        }
        growth
    }

    /// Whether a client's field line names a reserved header, in any casing. The line is
    /// one of a block [`headers::is_strict`] accepts: its name is visible ASCII, so every
    /// client library reads it as the edge does.
    fn names_reserved(&self, line: &[u8]) -> bool {
        headers::split_field(line).is_some_and(|(name, _)| self.config.is_reserved(name))
    }

    fn log_spoof(&mut self, subject: &[u8]) {
        let now = Instant::now();
        if self
            .spoof_logged
            .is_some_and(|last| now.duration_since(last) < SPOOF_LOG_INTERVAL)
        {
            self.spoofs_unlogged += 1;
            return;
        }
        tracing::info!(
            subject = %String::from_utf8_lossy(subject),
            since_last_line = self.spoofs_unlogged,
            "client sent a header with a reserved tag name"
        );
        self.spoof_logged = Some(now);
        self.spoofs_unlogged = 0;
    }

    fn tag_lines(&mut self, ctx: &SessionCtx) -> TagLines {
        let user = ctx.identity.as_ref().and_then(|i| i.user.as_ref());
        let tls_known = ctx.conn.tls_peer.is_some();
        if let Some(((for_user, for_tls), tags)) = &self.cached {
            if for_user.as_deref() == user.map(|u| &**u) && *for_tls == tls_known {
                return tags.clone();
            }
        }
        let for_user = user.cloned();
        let user = user.map(|u| &**u);
        let mut block = HeaderWriter::new(headers::VERSION);
        for (name, value) in &self.config.tags(&ctx.conn, user) {
            block.field(name.as_bytes(), value.as_bytes());
        }
        let tags = TagLines {
            block: block.finish(),
        };
        self.cached = Some(((for_user, tls_known), tags.clone()));
        tags
    }

    fn tag(&mut self, publish: &mut Pub, ctx: &SessionCtx) -> Verdict {
        let tags = self.tag_lines(ctx);
        let mut headers = None;
        if ctx.upstream_headers {
            // `HPUB subject 0 size`: nats-server takes it as a message without headers.
            let block = publish.headers.as_ref().filter(|block| !block.is_empty());
            if let Some(block) = block {
                // Not a header block nats-server and every client would read the same way
                // as the edge: refusing is the only way tags stay unforgeable, and seen.
                if !headers::is_strict(block) || !is_plain_first_line(headers::first_line(block)) {
                    return Verdict::Close {
                        reason: CloseReason::ProtocolViolation,
                        error: None,
                    };
                }
            }
            let spoofed = block.is_some_and(|block| {
                headers::strict_field_lines(block).any(|line| self.names_reserved(line))
            });
            if spoofed {
                self.events.tag_spoof();
                self.log_spoof(&publish.subject);
                if self.config.file.spoofed == SpoofPolicy::Refuse {
                    return Verdict::error(format!(
                        "Permissions Violation for Publish to {}",
                        go_quote(&publish.subject)
                    ));
                }
            }
            let no_tags = tags.lines().is_empty();
            headers = match block {
                // Nothing to add or take out (no header tag applies: JSON-only tags, no
                // certificate to name): the message stays as sent, a PUB a PUB.
                _ if no_tags && !spoofed => None,
                Some(block) => {
                    let mut writer = HeaderWriter::with_capacity(
                        headers::first_line(block),
                        block.len() + tags.lines().len(),
                    );
                    // The edge's lines first: a reader that takes the line after a blank
                    // value for that value (nats.c skips every white space after the
                    // colon, line ends included) cannot swallow a tag.
                    writer.lines(tags.lines());
                    for line in headers::strict_field_lines(block) {
                        if !self.names_reserved(line) {
                            writer.strict_line(line);
                        }
                    }
                    Some(writer.finish())
                }
                None => Some(tags.block),
            };
        }
        let mut payload = None;
        // Only a payload that opens like a JSON object can take the field. Without a JSON
        // rule for its subject the payload is not looked at at all (a payload of blanks is
        // read to its end to find its first byte).
        if let Some(field) = self
            .config
            .json_field(&publish.subject)
            .filter(|_| opens_like_object(&publish.payload))
        {
            let user = ctx.identity.as_ref().and_then(|i| i.user.as_deref());
            let value = self.config.json_value(&ctx.conn, user);
            let Some(merged) = merge_json(&publish.payload, field, value) else {
                // It opens like an object but the edge cannot read it (invalid UTF-8, a lone
                // surrogate escape, deep nesting, another encoding): a consumer's parser
                // may still read it, and the field the client put in it, so it cannot pass
                // without the edge's own field.
                tracing::debug!(
                    subject = %String::from_utf8_lossy(&publish.subject),
                    "refused a JSON payload the edge cannot add its field to"
                );
                return Verdict::error(format!(
                    "Permissions Violation for Publish to {}",
                    go_quote(&publish.subject)
                ));
            };
            payload = Some(merged);
        }
        if headers.is_none() && payload.is_none() {
            return Verdict::Forward;
        }
        let size = headers
            .as_ref()
            .map_or(publish.headers.as_ref().map_or(0, Bytes::len), Bytes::len)
            + payload.as_ref().map_or(publish.payload.len(), Bytes::len);
        if size as u64 > ctx.max_payload {
            return Verdict::close_with(
                CloseReason::MaxPayloadExceeded,
                errors::MAX_PAYLOAD_VIOLATION,
            );
        }
        if let Some(h) = headers {
            publish.headers = Some(h);
        }
        if let Some(p) = payload {
            publish.payload = p;
        }
        self.events.tag_applied();
        Verdict::Changed
    }
}

impl Filter for Tag {
    fn name(&self) -> &'static str {
        "tagging"
    }

    fn interest(&self) -> Interest {
        if !self.strips_headers {
            Interest::of(&[OpKind::Connect, OpKind::Pub])
        } else {
            // Deliveries to a client that did not negotiate headers lose theirs here. The
            // session reads this again after the CONNECT, so a client that did negotiate
            // them, or whose upstream sends none, keeps its deliveries on the fast path.
            Interest::of(&[OpKind::Connect, OpKind::Pub, OpKind::Msg])
        }
    }

    /// A live session tags with the new file from its next message, unless that file's tags
    /// take more room than the client was told about (a new tag, a longer value, a JSON
    /// field): a message of the announced `max_payload` would then be refused with
    /// `Maximum Payload Violation`, on which nats.go closes for good. Such a session keeps the
    /// file it has until the client reconnects (nats-server sends no INFO when its own reload
    /// lowers `max_payload`, so the edge has no precedent for telling it).
    fn on_reload(&mut self, ctx: &SessionCtx) -> Reloaded {
        let Some(room) = self.announced_room else {
            self.config = self.source.current();
            self.cached = None;
            return Reloaded::default();
        };
        let needed_before = self.growth(ctx);
        let kept = std::mem::replace(&mut self.config, self.source.current());
        self.cached = None;
        let needed = self.growth(ctx);
        // More than the file it has needs too: a session whose tags already outgrew the
        // room (a user name longer than the room kept for one) is no worse off.
        if needed > room && needed > needed_before {
            tracing::debug!(
                conn = ctx.conn.conn_id,
                room,
                needed,
                "the new tagging file's tags need more room than this client was told: \
                 it keeps the file it had until it reconnects"
            );
            self.events.tag_reload_held();
            self.config = kept;
            self.cached = None;
        }
        Reloaded::default()
    }

    /// nats.go, nats.js and async-nats check a message's size against the announced
    /// `max_payload` before they send it, and nats.go closes for good on the `-ERR` a message
    /// the tags push over the limit would get: the room the tags take is kept out of what the
    /// client is told. (The limits filter, which runs after this one on an INFO, keeps the
    /// lower of this and its own limit.)
    fn on_info(&mut self, info: &mut Info, ctx: &SessionCtx) {
        let growth = self.growth(ctx);
        self.announced_room = Some(growth);
        let growth = growth as u64;
        if growth > 0 {
            let room = ctx.max_payload.saturating_sub(growth);
            info.max_payload = Some(i64::try_from(room).unwrap_or(i64::MAX));
        }
    }

    fn on_client_op(&mut self, op: &mut ClientOp, ctx: &mut SessionCtx) -> Verdict {
        match op {
            ClientOp::Connect(connect) => {
                self.connected = true;
                self.client_headers = connect.wants_headers();
                if !self.client_headers && ctx.upstream_headers {
                    // no_responders without headers: sent with headers off, so that the
                    // upstream refuses it as nats-server does, after its own checks of the
                    // credentials (asking for headers on its behalf would let it in). Off in
                    // so many words: a second CONNECT is read over the first, which asked.
                    if connect.no_responders == Some(true) {
                        connect.headers = Some(false);
                        return Verdict::Changed;
                    }
                    connect.headers = Some(true);
                    self.strips_headers = true;
                    return Verdict::Changed;
                }
                Verdict::Forward
            }
            ClientOp::Pub(publish) => {
                if publish.headers.is_some() && !self.client_headers {
                    // nats-server closes a client that sends HPUB without having negotiated
                    // headers, silently; the upstream now thinks it did, so the edge does it.
                    return Verdict::Close {
                        reason: CloseReason::ProtocolViolation,
                        error: None,
                    };
                }
                self.tag(publish, ctx)
            }
            _ => Verdict::Forward,
        }
    }

    fn on_server_op(&mut self, op: &mut ServerOp, _ctx: &mut SessionCtx) -> Verdict {
        match op {
            ServerOp::Msg(msg) if !self.client_headers && msg.headers.is_some() => {
                msg.headers = None;
                Verdict::Changed
            }
            _ => Verdict::Forward,
        }
    }
}

/// `NATS/1.0`, or a status (`NATS/1.0 503`, `NATS/1.0 408 Request Timeout`). Anything else
/// after the version is read differently by client libraries (nats.py reads header fields
/// from a fixed offset into the first line), so the edge cannot vouch for what follows it.
fn is_plain_first_line(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(headers::VERSION) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(status) = rest.strip_prefix(b" ") else {
        return false;
    };
    let (Some(code), Some(description)) = (status.get(..3), status.get(3..)) else {
        return false;
    };
    // A leading 0 is no status code to async-nats, which then drops the connection.
    code.iter().all(u8::is_ascii_digit)
        && code[0] != b'0'
        && match description.split_first() {
            None => true,
            Some((b' ', text)) => text
                .iter()
                .all(|b| *b == b'\t' || (*b >= b' ' && *b != 0x7f)),
            Some(_) => false,
        }
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The length of `value` as JSON, as the edge writes it.
fn json_len(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |json| json.len())
}

/// Whether the first significant byte is `{`, past whitespace, NULs and byte-order marks:
/// parsers that skip a BOM (nats.js through TextDecoder, Python) or read UTF-16 and UTF-32
/// (Python's `json.loads` on bytes) see an object there.
fn opens_like_object(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| {
            !matches!(
                b,
                b' ' | b'\t' | b'\n' | b'\r' | 0 | 0xEF | 0xBB | 0xBF | 0xFE | 0xFF
            )
        })
        .is_some_and(|b| *b == b'{')
}

/// The keys the JSON field holds for the client itself.
const JSON_IDENTITY_KEYS: [&str; 4] = ["user", "client_addr", "conn_id", "tls_subject"];

/// The tags as the JSON field's object, its keys in the order they were added (a map type
/// would sort them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JsonTags(pub Vec<(String, String)>);

impl serde::Serialize for JsonTags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The payload with `field` set to the tags, when the edge can read it as a JSON object.
/// The client's members are written back as they came, in their order and with their values'
/// own text: a number no float holds (`123456789012345678901234567890`) keeps every digit.
fn merge_json(payload: &[u8], field: &str, value: JsonTags) -> Option<Bytes> {
    let json = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    let ObjectMembers(members) = serde_json::from_slice(json).ok()?;
    let mut out = Vec::with_capacity(json.len() + 256);
    out.push(b'{');
    // Overwritten, never merged: a client-supplied field of the same name is not trusted.
    // Go's encoding/json matches keys case-insensitively (with Unicode folding) and keeps
    // the last of several, so every key it would read as the field goes, and the edge's
    // comes last.
    for (key, raw) in members.iter().filter(|(key, _)| !folds_to(key, field)) {
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        out.extend_from_slice(raw.get().as_bytes());
        out.push(b',');
    }
    serde_json::to_writer(&mut out, field).ok()?;
    out.push(b':');
    serde_json::to_writer(&mut out, &value).ok()?;
    out.push(b'}');
    Some(Bytes::from(out))
}

/// A JSON object's members in document order, each value as its text.
struct ObjectMembers(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for ObjectMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = ObjectMembers;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ObjectMembers, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(ObjectMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// Whether two keys are equal under simple case folding, as Go's `strings.EqualFold` has
/// them (`ſ` is `s`, the Kelvin sign is `k`).
fn folds_to(a: &str, b: &str) -> bool {
    let fold = |c: char| {
        let lower: Vec<char> = c.to_lowercase().collect();
        let upper: Vec<char> = c.to_uppercase().collect();
        (lower, upper)
    };
    a.chars().count() == b.chars().count()
        && a.chars().zip(b.chars()).all(|(x, y)| {
            if x == y {
                return true;
            }
            let ((xl, xu), (yl, yu)) = (fold(x), fold(y));
            xl == yl || xu == yu
        })
}

/// A value no header tag may carry, since readers would not all read it alike: blank
/// (nothing but white space; some readers take the next line for such a value), with white
/// space at either end (most readers trim it, some do not, some trim Unicode white space
/// too), or with a control byte (a NUL ends the value for C readers).
fn is_unfit_value(value: &str) -> bool {
    let spaced = |c: char| c.is_whitespace() || c == '\u{feff}';
    value.trim_matches(spaced).len() != value.len()
        || value.is_empty()
        || value.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;
