//! Readiness: whether this edge should be sent new clients (`/readyz`).
//!
//! The rule: the listeners are bound, the most recent upstream dial succeeded, and the edge is
//! not draining. "The most recent dial" is whichever came last of a client session's dial and
//! the admin server's periodic check (`admin.upstream_check_interval`), so the state costs
//! one Relaxed store per session and follows an upstream that goes away even when no client
//! is connecting.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    listeners_bound: AtomicBool,
    upstream_reachable: AtomicBool,
    /// Whether any dial has finished yet.
    upstream_known: AtomicBool,
    draining: AtomicBool,
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
    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Relaxed);
    }

    /// The outcome of the latest upstream dial (every URL tried).
    pub fn upstream_dialled(&self, reachable: bool) {
        self.upstream_reachable.store(reachable, Ordering::Relaxed);
        self.upstream_known.store(true, Ordering::Relaxed);
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
        } else if !self.upstream_known.load(Ordering::Relaxed) {
            Err(NotReady::UpstreamUnknown)
        } else if !self.upstream_reachable.load(Ordering::Relaxed) {
            Err(NotReady::UpstreamUnreachable)
        } else {
            Ok(())
        }
    }
}
