//! Configuration reload (SIGHUP, `nats-edge reload`).
//!
//! Parts of the edge that can take a new configuration while running register a
//! [`Reloadable`]. A reload asks every one of them to [`Reloadable::prepare`] the new
//! configuration first (read and check files, build rules) and applies the staged results
//! only when all of them succeeded, so a bad file leaves everything as it was. Applying
//! swaps what new connections are served with; parts that hold per-connection state
//! (rule sets) may also swap what live connections see.
//!
//! Keys that cannot change without a restart (a listener's address, worker threads, the
//! admin address, ...) are reported by name, never silently ignored.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::{Config, ListenerConfig};
use crate::metrics::Metrics;

/// Why a new configuration cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A value that cannot be used, with its key.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    /// The file did not load (syntax, unknown keys, validation); the message names the key.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The new configuration would not start (a rule file, the proxy key, ...); the message
    /// names the key or the file.
    #[error(transparent)]
    Start(#[from] crate::edge::StartError),
}

impl ReloadError {
    /// A start error met while preparing a reload: a TLS error names its key as a value
    /// error does; every other start error names its own key (`auth.rules`,
    /// `tagging.file`) or file.
    pub fn from_start(e: crate::edge::StartError) -> ReloadError {
        match e {
            crate::edge::StartError::Tls { what, source } => ReloadError::Invalid {
                key: what,
                reason: source.to_string(),
            },
            other => ReloadError::Start(other),
        }
    }
}

/// What a reloadable part will do once every part has accepted the new configuration.
pub struct Staged(Box<dyn FnOnce() + Send>);

impl Staged {
    pub fn new(apply: impl FnOnce() + Send + 'static) -> Staged {
        Staged(Box::new(apply))
    }

    /// Nothing to change.
    pub fn nothing() -> Staged {
        Staged(Box::new(|| {}))
    }
}

/// A part of the edge that can take a new configuration while running.
pub trait Reloadable: Send + Sync {
    /// For logs: `listeners`, `acl rules`, ...
    fn name(&self) -> String;
    /// Checks `new` and builds everything it needs without changing what runs.
    fn prepare(&self, new: &Config) -> Result<Staged, ReloadError>;
}

/// Every registered part, and the configuration running now.
pub struct Reloader {
    parts: Mutex<Vec<Arc<dyn Reloadable>>>,
    current: Mutex<Arc<Config>>,
    loaded_at: Mutex<SystemTime>,
    metrics: Arc<Metrics>,
}

/// A reload that was applied.
#[derive(Debug)]
pub struct Reloaded {
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<String>,
}

impl Reloader {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Reloader {
        Reloader {
            parts: Mutex::new(Vec::new()),
            current: Mutex::new(Arc::new(config)),
            loaded_at: Mutex::new(SystemTime::now()),
            metrics,
        }
    }

    pub fn register(&self, part: Arc<dyn Reloadable>) {
        lock(&self.parts).push(part);
    }

    /// The configuration running now.
    pub fn current(&self) -> Arc<Config> {
        lock(&self.current).clone()
    }

    /// When the running configuration was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        *lock(&self.loaded_at)
    }

    /// Counts and logs a configuration that did not load; the running one stays.
    pub fn failed(&self, source: &str, error: &ReloadError) {
        self.metrics.config_reloaded(false);
        tracing::error!(file = source, error = %error, "configuration reload failed; keeping the running configuration");
    }

    /// Applies `new` when every part accepts it; otherwise changes nothing. `source` (the
    /// file) is for the log.
    pub fn reload(&self, new: Config, source: &str) -> Result<Reloaded, ReloadError> {
        let parts = lock(&self.parts).clone();
        // Every part prepares what will run: keys that need a restart keep their running
        // values (a rewrite turned off keeps its sets until the restart).
        let needs_restart = restart_keys(&self.current(), &new);
        // The new file as a whole must start: a listener the reload cannot add yet (it waits
        // for the restart) has its certificates checked now, or that restart would fail.
        if let Err(e) = crate::edge::check_startable(&new) {
            let e = ReloadError::from_start(e);
            tracing::error!("reload refused: the new file would not start");
            self.failed(source, &e);
            return Err(e);
        }
        let file = new.clone();
        let new = running(&self.current(), new);
        if let Err((key, reason)) = new.check_upstream_is_not_a_listener() {
            let e = ReloadError::Invalid {
                key,
                reason: format!(
                    "{reason} (a listener keeps its running address until the restart, \
                     and one the file drops runs on until then)"
                ),
            };
            self.failed(source, &e);
            return Err(e);
        }
        let mut staged = Vec::with_capacity(parts.len());
        for part in &parts {
            match part.prepare(&new) {
                Ok(s) => staged.push((part.name(), s)),
                Err(e) => {
                    let e = e.in_file_order(&new, &file);
                    tracing::error!(part = part.name(), "reload refused");
                    self.failed(source, &e);
                    return Err(e);
                }
            }
        }
        for (name, s) in staged {
            (s.0)();
            tracing::debug!(part = name, "reloaded");
        }
        for key in &needs_restart {
            tracing::warn!(key = %key, "configuration changed but needs a restart to apply");
        }
        *lock(&self.current) = Arc::new(new);
        *lock(&self.loaded_at) = SystemTime::now();
        self.metrics.config_reloaded(true);
        tracing::info!(
            file = source,
            needs_restart = needs_restart.len(),
            "configuration reloaded"
        );
        Ok(Reloaded { needs_restart })
    }
}

impl ReloadError {
    /// The error with a `listeners.N` key renumbered from what runs to the file being
    /// loaded (which may list listeners another way, or more of them), so it names the
    /// listener's place in that file.
    fn in_file_order(self, running: &Config, file: &Config) -> ReloadError {
        let ReloadError::Invalid { key, reason } = self else {
            return self;
        };
        let renumbered = key
            .strip_prefix("listeners.")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(index, tail)| {
                let name = &running.listeners.get(index.parse::<usize>().ok()?)?.name;
                let at = file.listeners.iter().position(|l| &l.name == name)?;
                Some(format!("listeners.{at}.{tail}"))
            });
        ReloadError::Invalid {
            key: renumbered.unwrap_or(key),
            reason,
        }
    }
}

/// What runs after `new` is applied over `old`: `new`, except the keys that need a restart,
/// which keep their running values (so `/varz` shows what runs, and the next reload warns
/// again about a change still waiting for its restart).
fn running(old: &Config, mut new: Config) -> Config {
    new.worker_threads = old.worker_threads;
    new.busy_poll = old.busy_poll;
    new.log = old.log.clone();
    new.admin = old.admin.clone();
    new.pid_file = old.pid_file.clone();
    if old.auth.mode != new.auth.mode {
        // The rule files go with the mode they were written for: under the running mode,
        // a new mode's files (or none, for passthrough) would turn every client away.
        new.auth.rules = old.auth.rules.clone();
        new.held.rules = true;
    }
    new.auth.mode = old.auth.mode;
    new.auth.upstream = old.auth.upstream.clone();
    new.auth.trusted_proxy = old.auth.trusted_proxy.clone();
    new.auth.operator_mode = old.auth.operator_mode;
    // Rewriting turned on or off waits for the restart whole: the sets, and which listener
    // uses which.
    let rewrite_held = rewrites(old) != rewrites(&new);
    if rewrite_held {
        new.rewrite = old.rewrite.clone();
        new.held.rewrite = true;
    }
    if old.tagging.file.is_some() != new.tagging.file.is_some() {
        new.tagging = old.tagging.clone();
        new.held.tagging = true;
    }
    // The listeners in the new file's order (so an error names a listener's place in the
    // file being loaded), each on its running address. One the new file dropped, or gave
    // another kind, runs on as it was until the restart, with the rule set it names.
    let same = |a: &ListenerConfig, b: &ListenerConfig| a.name == b.name && a.kind == b.kind;
    let from_file = std::mem::take(&mut new.listeners);
    let mut listeners: Vec<ListenerConfig> = from_file
        .iter()
        .filter_map(|n| {
            let o = old.listeners.iter().find(|o| same(o, n))?;
            Some(ListenerConfig {
                bind: o.bind,
                rewrite: if rewrite_held {
                    o.rewrite.clone()
                } else {
                    n.rewrite.clone()
                },
                ..n.clone()
            })
        })
        .collect();
    for o in old
        .listeners
        .iter()
        .filter(|o| !from_file.iter().any(|n| same(o, n)))
    {
        if let Some(set) = &o.rewrite {
            if let Some(path) = old.rewrite.sets.get(set) {
                new.rewrite
                    .sets
                    .entry(set.clone())
                    .or_insert_with(|| path.clone());
            }
        }
        listeners.push(ListenerConfig {
            held_until_restart: true,
            ..o.clone()
        });
    }
    new.listeners = listeners;
    new
}

/// Whether a configuration rewrites subjects at all.
fn rewrites(config: &Config) -> bool {
    config.rewrite_config() != Default::default()
}

/// The keys that differ between `old` and `new` but cannot change while running.
pub fn restart_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    // Listeners are matched by name, as a reload applies them: moving one within the file
    // changes nothing.
    fn names(c: &Config) -> Vec<&str> {
        let mut names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        names
    }
    if names(old) != names(new) {
        keys.push("listeners (added, removed or renamed)".to_string());
    }
    for (i, n) in new.listeners.iter().enumerate() {
        let Some(o) = old.listeners.iter().find(|o| o.name == n.name) else {
            continue;
        };
        if o.bind != n.bind {
            keys.push(format!("listeners.{i}.bind"));
        }
        if o.kind != n.kind {
            keys.push(format!("listeners.{i}.kind"));
        }
    }
    if old.worker_threads != new.worker_threads {
        keys.push("worker_threads".into());
    }
    if old.busy_poll != new.busy_poll {
        keys.push("busy_poll".into());
    }
    if old.log != new.log {
        keys.push("log".into());
    }
    if old.admin != new.admin {
        keys.push("admin".into());
    }
    if old.pid_file != new.pid_file {
        keys.push("pid_file".into());
    }
    // The ACL's mode and upstream credentials, and the proxy signer, are built at start-up;
    // the rule files reload.
    if old.auth.mode != new.auth.mode {
        keys.push("auth.mode".into());
    }
    if old.auth.upstream != new.auth.upstream {
        keys.push("auth.upstream".into());
    }
    if old.auth.operator_mode != new.auth.operator_mode {
        keys.push("auth.operator_mode".into());
    }
    if old.auth.trusted_proxy != new.auth.trusted_proxy {
        keys.push("auth.trusted_proxy".into());
    }
    // The filters a session gets are fixed at start-up; their rule files reload.
    if rewrites(old) != rewrites(new) {
        keys.push("rewrite (turned on or off)".into());
    }
    if old.tagging.file.is_some() != new.tagging.file.is_some() {
        keys.push("tagging.file (turned on or off)".into());
    }
    keys
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        // Top-level keys in `toml` come first, as TOML requires.
        Config::from_toml_str(&format!(
            "{toml}\n[upstream]\nurls = [\"nats://10.0.0.5:4222\"]\n"
        ))
        .unwrap()
    }

    /// Records the configuration each reload prepared.
    struct Seen(Mutex<Vec<Config>>);

    impl Reloadable for Seen {
        fn name(&self) -> String {
            "seen".into()
        }

        fn prepare(&self, new: &Config) -> Result<Staged, ReloadError> {
            lock(&self.0).push(new.clone());
            Ok(Staged::nothing())
        }
    }

    /// Parts prepare what will run: a key that needs a restart keeps its running value
    /// there too, so removing the last rewrite set does not unmount live clients while the
    /// log says it waits for a restart.
    #[test]
    fn parts_prepare_the_configuration_that_will_run() {
        let mounted = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n\
             [rewrite]\ndefault = \"t\"\n[rewrite.sets]\nt = \"t.toml\"\n",
        );
        let reloader = Reloader::new(mounted.clone(), Arc::new(Metrics::new()));
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        reloader.register(seen.clone());
        let unmounted = config("[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n");
        let reloaded = reloader.reload(unmounted, "test").unwrap();
        assert_eq!(reloaded.needs_restart, ["rewrite (turned on or off)"]);
        let prepared = lock(&seen.0).pop().unwrap();
        assert_eq!(prepared.rewrite_config(), mounted.rewrite_config());
        assert_eq!(
            reloader.current().rewrite_config(),
            mounted.rewrite_config()
        );
    }

    /// A reload cannot point the upstream at a listener that runs on until the restart:
    /// one the file moved (it keeps its running address) or dropped.
    #[test]
    fn a_reload_cannot_make_the_upstream_a_running_listener() {
        let file = |listener: &str| {
            Config::from_toml_str(&format!(
                "[[listeners]]\n{listener}\n[upstream]\nurls = [\"nats://127.0.0.1:4222\"]\n"
            ))
            .unwrap()
        };
        let running_config = Config::from_toml_str(
            "[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:4222\"\n\
             [upstream]\nurls = [\"nats://10.0.0.5:4222\"]\n",
        )
        .unwrap();
        for listener in [
            "name = \"a\"\nbind = \"0.0.0.0:5222\"",
            "name = \"b\"\nbind = \"0.0.0.0:5222\"",
        ] {
            let reloader = Reloader::new(running_config.clone(), Arc::new(Metrics::new()));
            let err = reloader.reload(file(listener), "test").unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("upstream.urls.0: 127.0.0.1:4222 is the edge's own listener `a`"),
                "{err}"
            );
            assert_eq!(reloader.current().upstream.urls.0, ["nats://10.0.0.5:4222"]);
        }
    }

    #[test]
    fn names_the_keys_that_need_a_restart() {
        let old = config("[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n");
        let live = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\nmax_connections = 5\n\
             [limits]\nmax_payload = 1024\n",
        );
        assert!(restart_keys(&old, &live).is_empty());
        // Listeners are matched by name: reordering them needs nothing, and a changed
        // address is named by the listener's place in the new file.
        let two = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n\
             [[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:4223\"\n",
        );
        let reordered = config(
            "[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:4223\"\n\
             [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n",
        );
        assert!(restart_keys(&two, &reordered).is_empty());
        assert!(restart_keys(&running(&two, reordered.clone()), &reordered).is_empty());
        let rebound = config(
            "[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:4224\"\n\
             [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n",
        );
        assert_eq!(restart_keys(&two, &rebound), ["listeners.0.bind"]);
        let operator = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n[auth]\noperator_mode = true\n",
        );
        assert_eq!(restart_keys(&old, &operator), ["auth.operator_mode"]);
        assert!(!running(&old, operator).auth.operator_mode);
        let moved = config(
            "worker_threads = 2\nbusy_poll = \"50us\"\n\
             [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4223\"\n\
             [log]\nlevel = \"debug\"\n",
        );
        assert_eq!(
            restart_keys(&old, &moved),
            ["listeners.0.bind", "worker_threads", "busy_poll", "log"]
        );
        // What runs keeps the old values of those keys, so the next reload names them again.
        let kept = running(&old, moved.clone());
        assert_eq!(kept.listeners[0].bind, old.listeners[0].bind);
        assert_eq!(kept.worker_threads, old.worker_threads);
        assert_eq!(kept.busy_poll, old.busy_poll);
        assert_eq!(restart_keys(&kept, &moved).len(), 4);
        // Tagging and rewrite rule files reload, but turning either on or off does not.
        let tagged = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n\
             [tagging]\nfile = \"tags.toml\"\n[rewrite]\ndefault = \"t\"\n\
             [rewrite.sets]\nt = \"t.toml\"\n",
        );
        assert_eq!(
            restart_keys(&old, &tagged),
            [
                "rewrite (turned on or off)",
                "tagging.file (turned on or off)"
            ]
        );
        let kept = running(&old, tagged.clone());
        assert!(kept.tagging.file.is_none());
        assert_eq!(restart_keys(&kept, &tagged).len(), 2);
        // The ACL's mode, its upstream credentials and the proxy signer are fixed at start-up.
        let edge_mode = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n\
             [auth]\nmode = \"edge\"\nrules = [\"r.toml\"]\n\
             [auth.upstream]\nuser = \"edge\"\npassword = \"pw\"\n",
        );
        assert_eq!(
            restart_keys(&old, &edge_mode),
            ["auth.mode", "auth.upstream"]
        );
        let kept = running(&old, edge_mode.clone());
        assert_eq!(kept.auth.mode, old.auth.mode);
        // Its rule files wait with it: under the running mode they would turn clients away.
        assert_eq!(kept.auth.rules, old.auth.rules);
        assert_eq!(restart_keys(&kept, &edge_mode).len(), 2);
        // Under the same mode, the rule files reload.
        let other_rules = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n\
             [auth]\nmode = \"edge\"\nrules = [\"s.toml\"]\n\
             [auth.upstream]\nuser = \"edge\"\npassword = \"pw\"\n",
        );
        assert_eq!(
            running(&edge_mode, other_rules.clone()).auth.rules,
            other_rules.auth.rules
        );
        // Rewriting turned off waits whole: the sets and the listener that uses one.
        let mounted = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\nrewrite = \"t\"\n\
             [rewrite.sets]\nt = \"t.toml\"\n",
        );
        let kept = running(&mounted, old.clone());
        assert_eq!(kept.listeners[0].rewrite.as_deref(), Some("t"));
        assert_eq!(kept.rewrite_config(), mounted.rewrite_config());
        let kept = running(&old, mounted.clone());
        assert_eq!(kept.listeners[0].rewrite, None);
        // A listener the new file drops runs on until the restart, with the set it names
        // even where the new file no longer defines it; the others keep the new file's order.
        let three = config(
            "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\nrewrite = \"t\"\n\
             [[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:4223\"\nrewrite = \"u\"\n\
             [[listeners]]\nname = \"c\"\nbind = \"127.0.0.1:4224\"\n\
             [rewrite.sets]\nt = \"t.toml\"\nu = \"u.toml\"\n",
        );
        let two_left = config(
            "[[listeners]]\nname = \"c\"\nbind = \"127.0.0.1:4224\"\n\
             [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\nrewrite = \"t\"\n\
             [rewrite.sets]\nt = \"t.toml\"\n",
        );
        let kept = running(&three, two_left);
        let names: Vec<&str> = kept.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        // An error names a listener's place in the file, which may list one more.
        let file = config(
            "[[listeners]]\nname = \"new\"\nbind = \"127.0.0.1:4225\"\n\
             [[listeners]]\nname = \"c\"\nbind = \"127.0.0.1:4224\"\n\
             [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:4222\"\n",
        );
        let error = ReloadError::Invalid {
            key: "listeners.1.tls".into(),
            reason: "bad key".into(),
        };
        assert_eq!(
            error.in_file_order(&kept, &file).to_string(),
            "listeners.2.tls: bad key"
        );
        assert_eq!(kept.listeners[2].rewrite.as_deref(), Some("u"));
        assert!(kept.rewrite.sets.contains_key("u"));
        let renamed = config("[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:4222\"\n");
        assert_eq!(
            restart_keys(&old, &renamed),
            ["listeners (added, removed or renamed)"]
        );
    }
}
