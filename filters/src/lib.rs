//! The sans-IO policy layer of nats-edge.
//!
//! This crate knows the NATS protocol as values, never as sockets: the ops each side sends
//! ([`ClientOp`], [`ServerOp`]), what a filter may answer about an op ([`Verdict`]), the
//! [`Filter`] trait with its per-session [`FilterFactory`], the [`Chain`] that runs filters in
//! pipeline order, subject validation and matching, and the built-in filters.
//!
//! Everything here is synchronous and allocation-aware: a filter that does not declare an
//! [`Interest`] in an op kind is never shown that op, so the proxy's fast path stays a memchr
//! scan plus a slice of the read buffer.

pub mod acl;
pub mod chain;
pub mod errors;
pub mod events;
pub mod filter;
pub mod headers;
pub mod identity;
pub mod limits;
pub mod op;
pub mod responses;
pub mod rewrite;
pub mod sub_answers;
pub mod subject;
pub mod tag;
pub mod toml_file;
pub mod verdict;

pub use chain::Chain;
pub use events::{DenialKind, Events, NoEvents, RewriteDirection};
pub use filter::{
    ConnFacts, Filter, FilterFactory, Interest, OpKind, Reloaded, SessionCtx, TlsPeer,
};
pub use identity::{AuthMethod, Identity};
pub use op::{ClientOp, Connect, Info, Msg, Pub, ServerOp, Sub, Unsub};
pub use verdict::{CloseReason, SlowCheck, Verdict};
