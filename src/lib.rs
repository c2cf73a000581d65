//! nats-edge: a transparent NATS reverse proxy and border gateway.
//!
//! Each client connection is paired with its own upstream connection to a nats-server. Two
//! half-duplex forwarders parse every command in each direction, pass it through the filter
//! pipeline of the [`nats_edge_filters`] crate, and re-serialise only what a filter changed.
//!
//! Module map: [`proto`] is the wire codec, [`session`] one proxied connection, [`upstream`]
//! the dialler, [`transport`] the listener kinds (tcp, tls, ws, wss, PROXY protocol),
//! [`edge`] the listeners, [`config`] the layered configuration.

pub mod admin;
pub mod busy_poll;
pub mod config;
pub mod drain;
pub mod edge;
pub mod explain;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod proto;
pub mod registry;
pub mod reload;
pub mod server_version;
pub mod session;
pub mod transport;
pub mod upstream;

pub use config::Config;
pub use edge::Edge;
pub use nats_edge_filters as filters;
