//! Which rule set applies to a session, and the reloadable holder of all of them.
//!
//! A session's set is its user's (by identity, when the authenticating filter has named
//! one), else its listener's, else the default. The sets sit behind an [`ArcSwap`]: sessions
//! look their set up once (and again after a reload) without a lock, and [`RewriteRules::reload`] swaps in freshly loaded
//! files for new and live connections at once, or keeps the old ones when a file fails.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::rules::RuleSet;
use super::RuleError;

/// Where the rule sets come from and who gets which.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteConfig {
    /// Named rule files (paths already resolved against the config file's directory).
    pub sets: BTreeMap<String, PathBuf>,
    /// The set for sessions no listener or user override names.
    pub default: Option<String>,
    /// Per listener name.
    pub listeners: BTreeMap<String, String>,
    /// Per user name (needs an identity).
    pub users: BTreeMap<String, String>,
}

impl RewriteConfig {
    /// Whether any rule could apply to a session on `listener`.
    pub fn may_apply(&self, listener: &str) -> bool {
        self.default.is_some() || self.listeners.contains_key(listener) || !self.users.is_empty()
    }

    /// Every set name a key refers to must exist: `(key, name)` of the first that does not.
    fn unknown_reference(&self) -> Option<(String, String)> {
        let refs = self
            .default
            .iter()
            .map(|n| ("rewrite.default".to_string(), n))
            .chain(
                self.listeners
                    .iter()
                    .map(|(l, n)| (format!("listeners.{l}.rewrite"), n)),
            )
            .chain(
                self.users
                    .iter()
                    .map(|(u, n)| (format!("rewrite.users.{u}"), n)),
            );
        for (key, name) in refs {
            if !self.sets.contains_key(name) {
                return Some((key, name.clone()));
            }
        }
        None
    }
}

/// The loaded sets.
#[derive(Debug, Default)]
pub struct LoadedSets {
    pub sets: HashMap<String, Arc<RuleSet>>,
    pub config: RewriteConfig,
}

impl LoadedSets {
    pub fn load(config: &RewriteConfig) -> Result<LoadedSets, RuleError> {
        if let Some((key, name)) = config.unknown_reference() {
            return Err(RuleError::UnknownSet { key, name });
        }
        let mut sets = HashMap::new();
        for (name, file) in &config.sets {
            sets.insert(name.clone(), Arc::new(RuleSet::load(name, file)?));
        }
        Ok(LoadedSets {
            sets,
            config: config.clone(),
        })
    }

    /// The set for a session on `listener`, as `user` when known, and why it applies.
    pub fn for_session(&self, listener: &str, user: Option<&str>) -> Option<(&Arc<RuleSet>, Why)> {
        let by_user = user
            .and_then(|u| self.config.users.get(u))
            .map(|n| (n, Why::User));
        let by_listener = || {
            self.config
                .listeners
                .get(listener)
                .map(|n| (n, Why::Listener))
        };
        let by_default = || self.config.default.as_ref().map(|n| (n, Why::Default));
        let (name, why) = by_user.or_else(by_listener).or_else(by_default)?;
        self.sets.get(name).map(|s| (s, why))
    }
}

/// Why a set applies to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    User,
    Listener,
    Default,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::User => "user",
            Why::Listener => "listener",
            Why::Default => "default",
        }
    }
}

/// The reloadable holder shared by every session.
#[derive(Debug)]
pub struct RewriteRules {
    current: ArcSwap<LoadedSets>,
}

impl RewriteRules {
    /// A holder for sets already loaded.
    pub fn new(sets: LoadedSets) -> RewriteRules {
        RewriteRules {
            current: ArcSwap::from_pointee(sets),
        }
    }

    /// Swaps in sets loaded elsewhere (a reload that checked every part first).
    pub fn store(&self, sets: LoadedSets) {
        self.current.store(Arc::new(sets));
    }

    pub fn load(config: &RewriteConfig) -> Result<RewriteRules, RuleError> {
        Ok(RewriteRules {
            current: ArcSwap::from_pointee(LoadedSets::load(config)?),
        })
    }

    /// What sessions use now.
    pub fn current(&self) -> Arc<LoadedSets> {
        self.current.load_full()
    }

    /// Reads every file again (same configuration) and swaps the result in; on error the
    /// sets in use stay.
    pub fn reload(&self) -> Result<(), RuleError> {
        let config = self.current.load().config.clone();
        self.replace(&config)
    }

    /// Loads a new configuration and swaps it in; on error the sets in use stay.
    pub fn replace(&self, config: &RewriteConfig) -> Result<(), RuleError> {
        let loaded = LoadedSets::load(config)?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }
}
