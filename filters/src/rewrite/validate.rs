//! Load-time checks of a rule set: every rule that can apply to a subscription or a reply
//! subject must be undone by the set's reverse, and no two rules may claim one subject.
//!
//! Mounts are checked exactly (prefix overlap). Regex rules cannot be checked in closed form,
//! so they are probed: each rule's `examples`, then subjects drawn by a seeded generator from
//! the rule's own literal tokens, the words of the set's other rules (either side), random
//! tokens, `*` and `>`. The first subject that breaks a rule is named in the error.

use super::rules::{Rule, RuleMap, RuleSet};
use super::RuleError;
use crate::subject;

/// Probes drawn per rule at load. Loading stays in the milliseconds for sets of a few rules.
const PROBES_PER_RULE: usize = 400;

pub fn validate(set: &RuleSet) -> Result<(), RuleError> {
    check_mount_overlaps(set)?;
    for (i, rule) in set.rules.iter().enumerate() {
        for example in &rule.examples {
            if !rule.matches_client(example.as_bytes()) {
                return Err(RuleError::Example {
                    file: set.file.clone(),
                    rule: rule.name.clone(),
                    subject: example.clone(),
                });
            }
            check_subject(set, i, example.as_bytes())?;
        }
        let mut gen = SubjectGen::new(0x5eed ^ i as u64, literal_tokens(rule))
            .with_other_words(other_words(set, i));
        for _ in 0..PROBES_PER_RULE {
            let probe = gen.next_subject();
            if rule.matches_client(&probe) {
                check_subject(set, i, &probe)?;
            }
        }
    }
    Ok(())
}

/// Checks one client subject that rule `index` matches.
fn check_subject(set: &RuleSet, index: usize, probe: &[u8]) -> Result<(), RuleError> {
    let rule = &set.rules[index];
    if rule.publish_only && !subject::is_valid_literal_subject(probe) {
        // Only published subjects reach a publish-only rule, and those hold no wildcards.
        return Ok(());
    }
    let text = || String::from_utf8_lossy(probe).into_owned();
    let is_mount = |r: &Rule| matches!(r.map, RuleMap::Mount { .. });
    for (j, other) in set.rules.iter().enumerate() {
        if j == index || !other.matches_client(probe) {
            continue;
        }
        if is_mount(rule) && is_mount(other) {
            // Two mounts: judged exactly by check_mount_overlaps, which lets a narrower
            // mount listed first carve an exception out of a broader one.
            if j < index {
                return Ok(());
            }
            continue;
        }
        return Err(RuleError::Conflict {
            file: set.file.clone(),
            first: set.rules[index.min(j)].name.clone(),
            second: set.rules[index.max(j)].name.clone(),
            subject: text(),
        });
    }
    let Some(mapped) = rule.forward(probe) else {
        return Ok(());
    };
    let valid = if subject::is_valid_literal_subject(probe) {
        subject::is_valid_literal_subject(&mapped)
    } else {
        subject::is_valid_subject(&mapped)
    };
    let mapped_text = String::from_utf8_lossy(&mapped).into_owned();
    if !valid {
        return Err(RuleError::InvalidResult {
            file: set.file.clone(),
            rule: rule.name.clone(),
            subject: text(),
            mapped: mapped_text,
        });
    }
    if rule.publish_only {
        return Ok(());
    }
    let back = set.reverse(&mapped);
    if back.as_deref() != Some(probe) {
        return Err(RuleError::Irreversible {
            file: set.file.clone(),
            rule: rule.name.clone(),
            subject: text(),
            mapped: mapped_text,
            back: back.map_or_else(
                || "nothing (no rule maps it back)".into(),
                |b| format!("`{}`", String::from_utf8_lossy(&b)),
            ),
        });
    }
    Ok(())
}

/// Two mounts claim one subject when one client prefix holds the other (`>` holds all),
/// unless the narrower one comes first. On the upstream side any overlap is refused: the
/// reverse could not tell which rule a delivery came through.
fn check_mount_overlaps(set: &RuleSet) -> Result<(), RuleError> {
    let mounts: Vec<(&Rule, &[u8], &[u8])> = set
        .rules
        .iter()
        .filter_map(|r| match &r.map {
            RuleMap::Mount { client, upstream } => Some((r, &client[..], &upstream[..])),
            RuleMap::Regex { .. } => None,
        })
        .collect();
    for (i, (a, a_client, a_up)) in mounts.iter().enumerate() {
        for (b, b_client, b_up) in &mounts[i + 1..] {
            let clash = |x: &[u8], y: &[u8]| x.starts_with(y) || y.starts_with(x);
            let longer = |x: &[u8], y: &[u8]| {
                let p = if x.len() >= y.len() { x } else { y };
                format!("{}x", String::from_utf8_lossy(p))
            };
            // A narrower mount listed before a broader one is an exception carved out of
            // it (`$JS.API.>` before `>`); any other overlap leaves a rule that never applies
            // or one subject claimed twice.
            let exception = a_client.len() > b_client.len() && a_client.starts_with(b_client);
            if clash(a_client, b_client) && !exception {
                return Err(RuleError::Conflict {
                    file: set.file.clone(),
                    first: a.name.clone(),
                    second: b.name.clone(),
                    subject: longer(a_client, b_client),
                });
            }
            if !a.publish_only && !b.publish_only && clash(a_up, b_up) {
                return Err(RuleError::UpstreamConflict {
                    file: set.file.clone(),
                    first: a.name.clone(),
                    second: b.name.clone(),
                    subject: longer(a_up, b_up),
                });
            }
        }
    }
    Ok(())
}

/// Tokens a rule's subjects are likely built from: a mount's prefix, a pattern's literals.
pub fn literal_tokens(rule: &Rule) -> Vec<Vec<u8>> {
    let source: Vec<u8> = match &rule.map {
        RuleMap::Mount { client, .. } => client.clone(),
        RuleMap::Regex { client, .. } => client.as_str().replace('\\', "").into_bytes(),
    };
    tokens_of(&source)
}

/// The words the set's other rules write, on either side, once each: a probe of rule
/// `index` mixes some in, so that a subject of this rule that another rule maps back (or
/// claims) is drawn too: `orders.dev.x` for a mount of `orders.>` when a regex rule takes
/// `...orders.dev.<one token>` back to `dev.<token>`.
fn other_words(set: &RuleSet, index: usize) -> Vec<Vec<u8>> {
    let own: std::collections::HashSet<Vec<u8>> =
        literal_tokens(&set.rules[index]).into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::new();
    for (i, rule) in set.rules.iter().enumerate() {
        let mut sides = if i == index {
            Vec::new()
        } else {
            literal_tokens(rule)
        };
        match &rule.map {
            RuleMap::Mount { upstream, .. } => sides.extend(tokens_of(upstream)),
            RuleMap::Regex {
                upstream, reverse, ..
            } => {
                sides.extend(tokens_of(upstream));
                if let Some((pattern, template)) = reverse {
                    sides.extend(tokens_of(pattern.as_str().replace('\\', "").as_bytes()));
                    sides.extend(tokens_of(template));
                }
            }
        }
        for word in sides {
            if !own.contains(&word) && seen.insert(word.clone()) {
                words.push(word);
            }
        }
    }
    words
}

/// The words of a pattern or template that can be subject tokens.
fn tokens_of(source: &[u8]) -> Vec<Vec<u8>> {
    source
        .split(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'$')))
        .filter(|t| !t.is_empty() && *t != b"$")
        .map(<[u8]>::to_vec)
        .collect()
}

/// A seeded generator of subjects (xorshift64*): tokens from a rule's literals in order,
/// random tokens (some of them other rules' words), `*`, and a final `>`, so probes land in
/// and around a rule's namespace.
pub struct SubjectGen {
    state: u64,
    literals: Vec<Vec<u8>>,
    others: Vec<Vec<u8>>,
}

impl SubjectGen {
    pub fn new(seed: u64, literals: Vec<Vec<u8>>) -> Self {
        SubjectGen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            literals,
            others: Vec::new(),
        }
    }

    /// Words a quarter of the tokens after the literals' run are drawn from.
    pub fn with_other_words(mut self, others: Vec<Vec<u8>>) -> Self {
        self.others = others;
        self
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// The next subject: valid, possibly with wildcard tokens.
    pub fn next_subject(&mut self) -> Vec<u8> {
        // With bytes that are not UTF-8 (or not ASCII), since subjects need be neither.
        const ALPHABET: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$\xc3\xa9\xff";
        let mut tokens: Vec<Vec<u8>> = Vec::new();
        if !self.literals.is_empty() && self.below(10) < 7 {
            // A run of the rule's literals, in order, from the start.
            let take = 1 + self.below(self.literals.len() as u64) as usize;
            tokens.extend(self.literals.iter().take(take).cloned());
        }
        let extra = self.below(5) as usize;
        for _ in 0..extra.max(usize::from(tokens.is_empty())) {
            let token = match self.below(12) {
                0 => b"*".to_vec(),
                1 if !self.literals.is_empty() => {
                    let i = self.below(self.literals.len() as u64) as usize;
                    self.literals[i].clone()
                }
                2..=4 if !self.others.is_empty() => {
                    let i = self.below(self.others.len() as u64) as usize;
                    self.others[i].clone()
                }
                _ => {
                    let len = 1 + self.below(8) as usize;
                    (0..len)
                        .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize])
                        .collect()
                }
            };
            tokens.push(token);
        }
        if self.below(8) == 0 {
            tokens.push(b">".to_vec());
        }
        tokens.join(&b'.')
    }
}
