//! What filters report for metrics. The filters crate counts nothing itself: it tells an
//! [`Events`] sink, which the proxy backs with its metrics registry.

/// A sink for the events filters count. Every method has a no-op default, so an embedder
/// implements only what it records.
pub trait Events: Send + Sync {
    /// A publish, subscription or delivery was refused by the ACL.
    fn acl_denied(&self, _user: &str, _direction: DenialKind) {}
    /// A subject was rewritten, in this direction.
    fn rewritten(&self, _direction: RewriteDirection) {}
    /// Tags were added to a published message.
    fn tag_applied(&self) {}
    /// A client sent a header with a reserved tag name (stripped or refused).
    fn tag_spoof(&self) {}
    /// A live session kept its tagging file at a reload: the new file's tags need more room
    /// than its client was told about.
    fn tag_reload_held(&self) {}
}

/// An [`Events`] sink that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl Events for NoEvents {}

/// What an ACL denial refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialKind {
    Publish,
    Subscribe,
    /// A message filtered out at delivery (a wildcard subscription overlapping a deny).
    Delivery,
}

impl DenialKind {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::Publish => "publish",
            DenialKind::Subscribe => "subscribe",
            DenialKind::Delivery => "delivery",
        }
    }
}

/// Which way a rewritten subject was travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RewriteDirection {
    ClientToUpstream = 0,
    UpstreamToClient = 1,
}

impl RewriteDirection {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RewriteDirection::ClientToUpstream => "client_to_upstream",
            RewriteDirection::UpstreamToClient => "upstream_to_client",
        }
    }
}
