//! WebSocket listeners (`ws`, and `wss` over the TLS acceptor): a client's WebSocket turned
//! into the byte stream every transport ends as, so nothing after the listener knows the
//! bytes came in frames.
//!
//! A connection passes through the parts in order:
//!
//! - `settings`: the listener's [`WsSettings`], parsed once at start-up (allowed origins,
//!   trusted proxies, cookie names, limits).
//! - `upgrade`: the HTTP request, read and answered by the edge itself ([`accept`]): health
//!   checks, refusals with a status that says why, the origin check, the client's address
//!   from `X-Forwarded-For`, and the `101` that ends it.
//! - `stream`: [`WsStream`], the frames after the upgrade as an `AsyncRead + AsyncWrite`,
//!   with pings, pongs and the close handshake.
//! - `deflate`: permessage-deflate, when the client offers it and `ws.compression` is on:
//!   the answer to the offer, bounded inflation of the client's messages, and deflating
//!   what the edge sends.
//! - `cookies`: credentials read from the request's cookies, put into the client's CONNECT
//!   by [`CookieFilter`].

mod cookies;
mod deflate;
mod settings;
mod stream;
mod upgrade;

pub use cookies::{CookieCredentials, CookieFilter};
pub use settings::{IpNet, Origin, WsSettings};
pub use stream::{
    close_frame_after_error, close_frame_for, FrameError, WsStream, MAX_CONNECTIONS_CLOSE,
};
pub use upgrade::{accept, Reject, Upgraded};
