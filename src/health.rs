//! Readiness: whether this edge should be sent new clients (`/readyz`).
//!
//! The rule: the listeners are bound, an upstream is reachable, and the edge is not draining.
//! An upstream is reachable when the most recent dial succeeded, or one did within the
//! success window (twice `admin.upstream_check_interval`): "the most recent dial" is whichever
//! came last of a client session's dial and the admin server's periodic check, so the state
//! costs one Relaxed store per session and follows an upstream that goes away even when no
//! client is connecting, while some dials failing among others that succeed (one bad server
//! behind a Service address, a server at its `max_connections` now and then) does not take
//! the edge in and out of service.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Health {
    started: Instant,
    listeners_bound: AtomicBool,
    /// When a dial last succeeded, and last failed: milliseconds since `started`, plus one;
    /// 0 for never.
    last_reached: AtomicU64,
    last_failed: AtomicU64,
    /// When a client session's dial last succeeded (the periodic check's do not count).
    last_session_reached: AtomicU64,
    /// How long a success counts after a later failure, in milliseconds.
    success_window_ms: u64,
    draining: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health::with_success_window(Duration::ZERO)
    }
}

/// Why the edge is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    ListenersNotBound,
    UpstreamUnknown,
    UpstreamUnreachable,
    Draining,
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::ListenersNotBound => "listeners not bound",
            NotReady::UpstreamUnknown => "no upstream dialled yet",
            NotReady::UpstreamUnreachable => "no upstream reachable",
            NotReady::Draining => "draining",
        }
    }
}

impl Health {
    /// A dial that succeeded keeps the edge ready for `window` after a later one failed.
    pub fn with_success_window(window: Duration) -> Health {
        Health {
            started: Instant::now(),
            listeners_bound: AtomicBool::new(false),
            last_reached: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
            last_session_reached: AtomicU64::new(0),
            success_window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            draining: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Relaxed);
    }

    /// The outcome of the latest upstream dial (every URL tried).
    pub fn upstream_dialled(&self, reachable: bool) {
        let at = if reachable {
            &self.last_reached
        } else {
            &self.last_failed
        };
        at.store(self.now(), Ordering::Relaxed);
    }

    /// The outcome of a client session's dial.
    pub fn session_dialled(&self, reachable: bool) {
        self.upstream_dialled(reachable);
        if reachable {
            self.last_session_reached
                .store(self.now(), Ordering::Relaxed);
        }
    }

    /// Whether a client session's dial reached an upstream less than `window` ago, and no
    /// dial failed since: then a readiness check would learn nothing new.
    pub fn session_reached_within(&self, window: Duration) -> bool {
        let reached = self.last_session_reached.load(Ordering::Relaxed);
        let failed = self.last_failed.load(Ordering::Relaxed);
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        reached != 0 && reached >= failed && self.now().saturating_sub(reached) < window
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Relaxed) {
            Err(NotReady::Draining)
        } else if !self.listeners_bound.load(Ordering::Relaxed) {
            Err(NotReady::ListenersNotBound)
        } else {
            let reached = self.last_reached.load(Ordering::Relaxed);
            let failed = self.last_failed.load(Ordering::Relaxed);
            if reached == 0 && failed == 0 {
                Err(NotReady::UpstreamUnknown)
            } else if failed > reached
                && (reached == 0 || self.now().saturating_sub(reached) >= self.success_window_ms)
            {
                Err(NotReady::UpstreamUnreachable)
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure after a success within the window leaves the edge ready; without a
    /// success for longer, or with none ever, it is not. A success and a failure in the same
    /// millisecond tie: ready.
    #[test]
    fn a_recent_success_outweighs_a_later_failure() {
        let mut health = Health::with_success_window(Duration::from_secs(10));
        // As if started a minute ago, so that "20 s ago" is a time the clock has seen.
        health.started = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .expect("a minute of uptime");
        health.set_listeners_bound();
        assert_eq!(health.ready(), Err(NotReady::UpstreamUnknown));
        health.upstream_dialled(false);
        assert_eq!(health.ready(), Err(NotReady::UpstreamUnreachable));
        let set = |reached: u64, failed: u64| {
            health.last_reached.store(reached, Ordering::Relaxed);
            health.last_failed.store(failed, Ordering::Relaxed);
        };
        let now = health.now();
        set(now, now + 5);
        assert_eq!(
            health.ready(),
            Ok(()),
            "a success 0 ms ago, within the window"
        );
        assert!(now > 20_000, "{now}");
        set(now - 20_000, now);
        assert_eq!(
            health.ready(),
            Err(NotReady::UpstreamUnreachable),
            "no success for longer than the window"
        );
        set(now, now);
        assert_eq!(health.ready(), Ok(()), "a tie");
        set(now + 5, now);
        assert_eq!(health.ready(), Ok(()), "the success came last");
    }

    /// The readiness check is skipped only while the latest dial reached an upstream within
    /// the interval.
    #[test]
    fn a_recent_success_makes_the_check_needless() {
        let mut health = Health::with_success_window(Duration::from_secs(10));
        health.started = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .expect("a minute of uptime");
        let five = Duration::from_secs(5);
        assert!(!health.session_reached_within(five), "nothing dialled yet");
        // The check's own success does not make the next check needless.
        health.upstream_dialled(true);
        assert!(!health.session_reached_within(five));
        health.session_dialled(true);
        assert!(health.session_reached_within(five));
        let set = |reached: u64, failed: u64| {
            health
                .last_session_reached
                .store(reached, Ordering::Relaxed);
            health.last_failed.store(failed, Ordering::Relaxed);
        };
        let now = health.now();
        set(now - 6_000, 0);
        assert!(
            !health.session_reached_within(five),
            "longer ago than the interval"
        );
        set(now - 1_000, now - 500);
        assert!(!health.session_reached_within(five), "a failure since");
    }
}
