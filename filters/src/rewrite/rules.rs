//! One rule file: its TOML shape, and the compiled rules that map subjects both ways.
//!
//! A `mount` maps a client namespace under an upstream prefix token for token, so it is
//! reversible by construction and keeps `*` and `>` tokens as they are. A `regex` rule maps
//! subjects whose shape changes; it names its reverse explicitly, and the validation in
//! [`super::validate`] checks that the reverse undoes the forward.

use std::path::{Path, PathBuf};

use regex::bytes::Regex;
use serde::Deserialize;

use super::RuleError;
use crate::subject;
use crate::toml_file;

/// A rule file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// What the set is for; shown by `nats-edge explain`.
    #[serde(default)]
    pub description: Option<String>,
    /// Map the `subjects` of JetStream stream create/update requests (`$JS.API.STREAM.CREATE.*`,
    /// `$JS.API.STREAM.UPDATE.*`) with these rules, so a stream made through a mount
    /// captures the mapped subjects.
    #[serde(default)]
    pub jetstream_stream_subjects: bool,
    /// Map the filter subjects of consumer create requests (`config.filter_subject`,
    /// `config.filter_subjects`, and the filter in a `$JS.API.CONSUMER.CREATE.<stream>.
    /// <consumer>.<filter>` subject), so a consumer created in the client's view selects
    /// the mapped subjects in its stream.
    #[serde(default)]
    pub jetstream_consumer_filters: bool,
    /// The rules, tried in order; the first whose client side matches maps a subject.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleDef>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub name: String,
    pub kind: RuleKind,
    /// mount: the client namespace (`orders.>`, or `>` for everything); regex: the pattern
    /// a client subject must match.
    pub client: String,
    /// mount: the upstream namespace (`tenant.acme.orders.>`); regex: the template
    /// (`devices.$1.$2`).
    pub upstream: String,
    /// regex: the pattern an upstream subject must match to be mapped back.
    #[serde(default)]
    pub reverse_match: Option<String>,
    /// regex: the template that maps it back.
    #[serde(default)]
    pub reverse: Option<String>,
    /// Only published subjects are mapped (no subscriptions, no reply subjects), so no
    /// reverse is needed.
    #[serde(default)]
    pub publish_only: bool,
    /// Subjects checked at load: each must match this rule and survive the round trip.
    #[serde(default)]
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Mount,
    Regex,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Mount => "mount",
            RuleKind::Regex => "regex",
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub publish_only: bool,
    pub examples: Vec<String>,
    pub map: RuleMap,
}

#[derive(Debug, Clone)]
pub enum RuleMap {
    /// Prefixes with their trailing dot (`orders.`), or empty for `>`.
    Mount { client: Vec<u8>, upstream: Vec<u8> },
    Regex {
        client: SubjectPattern,
        upstream: Vec<u8>,
        reverse: Option<(SubjectPattern, Vec<u8>)>,
    },
}

/// A regex rule's pattern. Subjects are bytes, as nats-server reads them, and need not be
/// UTF-8: a subject that is UTF-8 is matched by the pattern as written (Unicode classes and
/// all); one that is not, by the pattern compiled with Unicode off, where `.` and `[^.]` match
/// any byte (and `\w` is ASCII). Otherwise such a subject would slip past every regex rule
/// unmapped. A pattern with a construct that exists only in Unicode (`\p{L}`, `[é]`) has no
/// byte form and matches no such subject.
#[derive(Debug, Clone)]
pub struct SubjectPattern {
    unicode: Regex,
    bytes: Option<Regex>,
}

impl SubjectPattern {
    fn compile(pattern: &str) -> Result<SubjectPattern, String> {
        if !pattern.starts_with('^') || !pattern.ends_with('$') {
            // Unanchored patterns would map part of a subject and leave the rest: refused,
            // rather than surprising.
            return Err(format!(
                "`{pattern}` must be anchored with ^ and $ so it maps whole subjects"
            ));
        }
        let unicode = Regex::new(pattern).map_err(|e| e.to_string())?;
        let bytes = regex::bytes::RegexBuilder::new(pattern)
            .unicode(false)
            .build()
            .ok();
        Ok(SubjectPattern { unicode, bytes })
    }

    /// The form that matches `subject`.
    fn for_subject(&self, subject: &[u8]) -> Option<&Regex> {
        if std::str::from_utf8(subject).is_ok() {
            Some(&self.unicode)
        } else {
            self.bytes.as_ref()
        }
    }

    pub fn is_match(&self, subject: &[u8]) -> bool {
        self.for_subject(subject)
            .is_some_and(|re| re.is_match(subject))
    }

    pub fn as_str(&self) -> &str {
        self.unicode.as_str()
    }
}

impl Rule {
    pub fn kind(&self) -> RuleKind {
        match self.map {
            RuleMap::Mount { .. } => RuleKind::Mount,
            RuleMap::Regex { .. } => RuleKind::Regex,
        }
    }

    /// Whether the client side of this rule matches `subject`.
    pub fn matches_client(&self, subject: &[u8]) -> bool {
        match &self.map {
            RuleMap::Mount { client, .. } => under(client, subject),
            RuleMap::Regex { client, .. } => client.is_match(subject),
        }
    }

    /// The upstream subject for a client subject, when this rule matches it.
    pub fn forward(&self, subject: &[u8]) -> Option<Vec<u8>> {
        self.forward_mapped(subject).map(Mapped::into_vec)
    }

    /// [`Rule::forward`] without building the subject yet.
    pub fn forward_mapped<'a>(&'a self, subject: &'a [u8]) -> Option<Mapped<'a>> {
        match &self.map {
            RuleMap::Mount { client, upstream } => {
                under(client, subject).then(|| Mapped::Remount {
                    prefix: upstream,
                    rest: &subject[client.len()..],
                })
            }
            RuleMap::Regex {
                client, upstream, ..
            } => expand(client, upstream, subject).map(Mapped::Expanded),
        }
    }

    /// The client subject for an upstream subject, when this rule maps it back.
    pub fn reverse(&self, subject: &[u8]) -> Option<Vec<u8>> {
        self.reverse_mapped(subject).map(Mapped::into_vec)
    }

    /// [`Rule::reverse`] without building the subject yet.
    pub fn reverse_mapped<'a>(&'a self, subject: &'a [u8]) -> Option<Mapped<'a>> {
        if self.publish_only {
            return None;
        }
        match &self.map {
            RuleMap::Mount { client, upstream } => {
                under(upstream, subject).then(|| Mapped::Remount {
                    prefix: client,
                    rest: &subject[upstream.len()..],
                })
            }
            RuleMap::Regex { reverse, .. } => {
                let (pattern, template) = reverse.as_ref()?;
                expand(pattern, template, subject).map(Mapped::Expanded)
            }
        }
    }

    /// The rule as one line, for `nats-edge explain` and errors.
    pub fn describe(&self) -> String {
        match &self.map {
            RuleMap::Mount { client, upstream } => format!(
                "mount {}> -> {}>",
                String::from_utf8_lossy(client),
                String::from_utf8_lossy(upstream)
            ),
            RuleMap::Regex {
                client, upstream, ..
            } => format!(
                "regex {} -> {}",
                client.as_str(),
                String::from_utf8_lossy(upstream)
            ),
        }
    }
}

/// Whether `subject` lies under a mount prefix (`orders.` holds `orders.x`, not `orders`).
fn under(prefix: &[u8], subject: &[u8]) -> bool {
    subject.len() > prefix.len() && subject.starts_with(prefix)
}

/// A mapped subject, before it is built: the session writes a mount's into its own buffer
/// (or, when the mount adds no prefix, takes the tail of the subject it had), so a rewrite
/// does not allocate per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped<'a> {
    /// `prefix` followed by `rest`, the tail of the subject being mapped.
    Remount { prefix: &'a [u8], rest: &'a [u8] },
    /// What a regex rule's template expanded to.
    Expanded(Vec<u8>),
}

impl Mapped<'_> {
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Mapped::Remount { prefix, rest } => [prefix, rest].concat(),
            Mapped::Expanded(subject) => subject,
        }
    }
}

fn expand(pattern: &SubjectPattern, template: &[u8], subject: &[u8]) -> Option<Vec<u8>> {
    let captures = pattern.for_subject(subject)?.captures(subject)?;
    let mut out = Vec::with_capacity(template.len() + subject.len());
    captures.expand(template, &mut out);
    Some(out)
}

/// A compiled rule file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The name the configuration gives the set.
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub jetstream_stream_subjects: bool,
    pub jetstream_consumer_filters: bool,
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Reads, compiles and validates a rule file.
    pub fn load(name: &str, file: &Path) -> Result<RuleSet, RuleError> {
        let text = std::fs::read_to_string(file).map_err(|source| RuleError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_toml(name, file, &text)
    }

    /// Compiles and validates rule-file text; `file` names it in errors.
    pub fn from_toml(name: &str, file: &Path, text: &str) -> Result<RuleSet, RuleError> {
        let parsed: RuleFile = toml_file::parse(text).map_err(|fault| RuleError::Parse {
            file: file.to_path_buf(),
            fault,
        })?;
        let set = Self::compile(name, file, parsed)?;
        super::validate::validate(&set)?;
        Ok(set)
    }

    fn compile(name: &str, file: &Path, parsed: RuleFile) -> Result<RuleSet, RuleError> {
        let mut rules = Vec::with_capacity(parsed.rules.len());
        let mut names = std::collections::HashSet::new();
        for def in parsed.rules {
            let bad = |reason: String| RuleError::Rule {
                file: file.to_path_buf(),
                rule: def.name.clone(),
                reason,
            };
            if def.name.is_empty() {
                return Err(bad("name must not be empty".into()));
            }
            if !names.insert(def.name.clone()) {
                return Err(bad("the name is used twice".into()));
            }
            let map = match def.kind {
                RuleKind::Mount => {
                    if def.reverse.is_some() || def.reverse_match.is_some() {
                        return Err(bad(
                            "a mount is its own reverse: remove reverse and reverse_match".into(),
                        ));
                    }
                    RuleMap::Mount {
                        client: mount_prefix(&def.client)
                            .map_err(|r| bad(format!("client: {r}")))?,
                        upstream: mount_prefix(&def.upstream)
                            .map_err(|r| bad(format!("upstream: {r}")))?,
                    }
                }
                RuleKind::Regex => {
                    let client = SubjectPattern::compile(&def.client)
                        .map_err(|r| bad(format!("client: {r}")))?;
                    check_template(&client.unicode, &def.upstream)
                        .map_err(|r| bad(format!("upstream: {r}")))?;
                    let reverse = match (&def.reverse_match, &def.reverse) {
                        (Some(pattern), Some(template)) => {
                            let pattern = SubjectPattern::compile(pattern)
                                .map_err(|r| bad(format!("reverse_match: {r}")))?;
                            check_template(&pattern.unicode, template)
                                .map_err(|r| bad(format!("reverse: {r}")))?;
                            Some((pattern, template.as_bytes().to_vec()))
                        }
                        (None, None) if def.publish_only => None,
                        (None, None) => {
                            return Err(bad(
                                "not reversible: a regex rule that applies to subscriptions and replies needs reverse_match and reverse (or publish_only = true)"
                                    .into(),
                            ))
                        }
                        _ => return Err(bad("reverse_match and reverse go together".into())),
                    };
                    RuleMap::Regex {
                        client,
                        upstream: def.upstream.as_bytes().to_vec(),
                        reverse,
                    }
                }
            };
            rules.push(Rule {
                name: def.name,
                publish_only: def.publish_only,
                examples: def.examples,
                map,
            });
        }
        Ok(RuleSet {
            name: name.to_string(),
            file: file.to_path_buf(),
            description: parsed.description,
            jetstream_stream_subjects: parsed.jetstream_stream_subjects,
            jetstream_consumer_filters: parsed.jetstream_consumer_filters,
            rules,
        })
    }

    /// The first rule whose client side matches, with the upstream subject. Publish-only
    /// rules apply when `published` is set (the subject of a PUB), never to subscriptions
    /// or reply subjects.
    pub fn forward(&self, subject: &[u8], published: bool) -> Option<(&Rule, Vec<u8>)> {
        let rule = self.claims(subject, published)?;
        rule.forward(subject).map(|mapped| (rule, mapped))
    }

    /// The rule [`RuleSet::forward`] would apply.
    pub fn claims(&self, subject: &[u8], published: bool) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| published || !r.publish_only)
            .find(|r| r.matches_client(subject))
    }

    /// [`RuleSet::forward`] without building the subject yet.
    pub fn forward_mapped<'a>(
        &'a self,
        subject: &'a [u8],
        published: bool,
    ) -> Option<(&'a Rule, Mapped<'a>)> {
        let rule = self.claims(subject, published)?;
        rule.forward_mapped(subject).map(|m| (rule, m))
    }

    /// The client subject of an upstream subject: the first rule that maps it back.
    pub fn reverse(&self, subject: &[u8]) -> Option<Vec<u8>> {
        self.reverse_mapped(subject).map(Mapped::into_vec)
    }

    /// [`RuleSet::reverse`] without building the subject yet.
    pub fn reverse_mapped<'a>(&'a self, subject: &'a [u8]) -> Option<Mapped<'a>> {
        self.reverse_rule(subject).map(|(_, mapped)| mapped)
    }

    /// [`RuleSet::reverse_mapped`], with the rule that maps it back.
    pub fn reverse_rule<'a>(&'a self, subject: &'a [u8]) -> Option<(&'a Rule, Mapped<'a>)> {
        self.rules
            .iter()
            .find_map(|r| r.reverse_mapped(subject).map(|mapped| (r, mapped)))
    }

    /// Whether `client`, which `rule` gave back for the upstream subject `upstream`, goes
    /// out to `upstream` again when the client publishes to it (an answer is a publish, so
    /// publish-only rules count). It need not: a broader mount maps `tenant.acme.$JS.API.x`
    /// back to `$JS.API.x`, which a narrower mount listed before it claims.
    pub fn forwards_back(&self, client: &[u8], rule: &Rule, upstream: &[u8]) -> bool {
        self.claims(client, true)
            .is_some_and(|claimed| std::ptr::eq(claimed, rule))
            && match &rule.map {
                // Token for token, so exact once the same rule claims it.
                RuleMap::Mount { .. } => true,
                RuleMap::Regex { .. } => rule.forward(client).as_deref() == Some(upstream),
            }
    }
}

/// `orders.>` -> `orders.`; `>` -> empty.
fn mount_prefix(pattern: &str) -> Result<Vec<u8>, String> {
    let bytes = pattern.as_bytes();
    if !subject::is_valid_subject(bytes) {
        return Err(format!("`{pattern}` is not a valid subject"));
    }
    let prefix = bytes
        .strip_suffix(b">")
        .filter(|p| p.is_empty() || p.ends_with(b"."))
        .ok_or_else(|| format!("`{pattern}` must end with the token `>` (`orders.>`)"))?;
    if prefix.split(|b| *b == b'.').any(|t| t == b"*") {
        return Err(format!(
            "`{pattern}`: a mount prefix cannot hold `*` (use a regex rule)"
        ));
    }
    Ok(prefix.to_vec())
}

/// Every `$n` / `${n}` / `$name` in the template names a group of the pattern.
fn check_template(pattern: &Regex, template: &str) -> Result<(), String> {
    let names: Vec<&str> = pattern.capture_names().flatten().collect();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (group, next) = if bytes.get(i + 1) == Some(&b'{') {
            let end = template[i + 2..]
                .find('}')
                .map(|e| i + 2 + e)
                .ok_or_else(|| format!("`{template}`: unclosed ${{"))?;
            (&template[i + 2..end], end + 1)
        } else {
            let len = template[i + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (&template[i + 1..i + 1 + len], i + 1 + len)
        };
        let known = match group.parse::<usize>() {
            Ok(n) => n < pattern.captures_len(),
            Err(_) => names.contains(&group),
        };
        if !known {
            return Err(format!(
                "`{template}` refers to `${group}`, which the pattern `{}` does not capture (write ${{1}} when a letter follows)",
                pattern.as_str()
            ));
        }
        i = next;
    }
    Ok(())
}
