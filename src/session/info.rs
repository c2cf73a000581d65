//! Rewriting the upstream's INFO into the edge's: the client must see the listener it
//! connected to, never an upstream address.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;
use nats_edge_filters::{Info, ServerOp};

use crate::proto::encode_server_op;

/// What a listener tells its clients about itself.
#[derive(Debug, Clone)]
pub struct InfoRewrite {
    /// INFO `host` and `port`: the listener's advertised address.
    pub host: String,
    pub port: u16,
    /// INFO `connect_urls`: the configured list, or removed when empty.
    pub connect_urls: Vec<String>,
    /// INFO `tls_required`: the listener is `tls` or `wss`.
    pub tls_required: bool,
    /// INFO `tls_verify`: the listener requires a client certificate.
    pub tls_verify: bool,
    /// The lame-duck INFO has been sent: later INFOs leave the listener's own address out
    /// of `connect_urls` too, as nats-server clears its own URLs for good.
    pub lame_duck_sent: bool,
}

impl InfoRewrite {
    /// Rewrites every address field of an INFO bound for the client at `client`.
    pub fn apply(&self, info: &mut Info, client: SocketAddr) {
        info.host = Some(self.host.clone());
        info.port = Some(self.port);
        info.connect_urls = (!self.connect_urls.is_empty()).then(|| self.connect_urls.clone());
        if self.lame_duck_sent {
            self.leave_out_own_url(info);
        }
        // WebSocket URLs of the cluster are upstream addresses too; the edge's own ws listeners
        // are advertised by the transport layer.
        info.ws_connect_urls = None;
        info.client_ip = Some(client.ip().to_string());
        // The upstream's TLS fields describe the edge's link to it; the client is told about
        // the listener it connected to.
        info.tls_required = self.tls_required.then_some(true);
        info.tls_available = None;
        info.tls_verify = self.tls_verify.then_some(true);
        // `ip` is a route/gateway field carrying a server address; never pass it on.
        info.extra.remove("ip");
    }

    /// Makes a client INFO the lame-duck one: `ldm`, and, as nats-server leaves its own URLs
    /// out of its lame-duck INFO, `connect_urls` without this listener's advertised address,
    /// so that clients reconnect to the others, not to the edge that is going away.
    pub fn lame_duck(&mut self, info: &mut Info) {
        self.lame_duck_sent = true;
        info.ldm = Some(true);
        self.leave_out_own_url(info);
    }

    fn leave_out_own_url(&self, info: &mut Info) {
        if let Some(urls) = info.connect_urls.as_mut() {
            urls.retain(|url| !self.is_own_url(url));
            if urls.is_empty() {
                info.connect_urls = None;
            }
        }
    }

    /// `url` (`host:port`, with or without a scheme) names this listener's advertised address.
    fn is_own_url(&self, url: &str) -> bool {
        let address = url.split_once("://").map_or(url, |(_, rest)| rest);
        let Some((host, port)) = address.rsplit_once(':') else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let own = self.host.trim_start_matches('[').trim_end_matches(']');
        port.parse::<u16>() == Ok(self.port) && host.eq_ignore_ascii_case(own)
    }
}

/// The INFO that goes before an error ending a connection that never reached a session
/// (`maximum connections exceeded`, `Upstream Unavailable`), as nats-server always sends its
/// INFO first and client libraries take anything else first as a protocol error. It is
/// `last`, the listener's latest client INFO, or a minimal one before any client has
/// connected, rewritten for this listener's current settings. Its nonce is a fresh one when
/// the upstream's INFO had one, or when no session has reached the upstream yet (no CONNECT
/// will follow, but nats.go, set up with an nkey, reports "nkeys not supported by the
/// server" for an INFO without one instead of reading the error), and none otherwise.
pub fn info_before_error(last: Option<Info>, rewrite: &InfoRewrite, client: SocketAddr) -> Info {
    let mut info = last.unwrap_or_else(|| {
        // Before any session has reached the upstream, whether it sends nonces is unknown:
        // a nonce, which clients without nkeys ignore, lets an nkey client read the error.
        let mut info = Info {
            headers: Some(true),
            nonce: Some(String::new()),
            ..Info::default()
        };
        info.extra.insert("proto".into(), 1.into());
        info.extra.insert(
            "version".into(),
            serde_json::Value::String(env!("CARGO_PKG_VERSION").into()),
        );
        info
    });
    info.nonce = info.nonce.is_some().then(fresh_nonce);
    info.ldm = None;
    info.extra.remove("client_id");
    rewrite.apply(&mut info, client);
    info
}

/// A nonce shaped as nats-server's: 11 random bytes, base64url without padding.
fn fresh_nonce() -> String {
    let mut bytes = [0u8; 11];
    // A nonce nothing will be signed against: should the system's random source fail,
    // zeros serve as well.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

/// Encodes into `buf` the [`info_before_error`] for `last`, a listener's stored INFO.
pub fn encode_info_before_error(
    last: &Mutex<Option<Info>>,
    rewrite: &InfoRewrite,
    client: SocketAddr,
    buf: &mut BytesMut,
) {
    let last = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let info = info_before_error(last, rewrite, client);
    encode_server_op(&ServerOp::Info(Box::new(info)), buf);
}

/// The fields of nats-server's INFO after the first PONG (`connect_info: true`, the
/// client's account), which no later INFO repeats.
const CONNECT_INFO_FIELDS: [&str; 3] = ["connect_info", "remote_account", "acc_is_sys"];

/// Merges an INFO that replaces `held`, one not yet sent to the client (INFOs wait for the
/// client's first PONG): `next` is the newer state, and keeps what only `held` said about
/// the client's own connection, so the client still learns its account as it would have
/// from nats-server, which sends both.
pub fn replace_held_info(held: Option<Box<Info>>, mut next: Box<Info>) -> Box<Info> {
    if let Some(mut held) = held {
        for field in CONNECT_INFO_FIELDS {
            if !next.extra.contains_key(field) {
                if let Some(value) = held.extra.remove(field) {
                    next.extra.insert(field.to_string(), value);
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An INFO that replaces a held one keeps the held one's account fields, and its own
    /// state otherwise.
    #[test]
    fn a_held_connect_info_survives_a_later_info() {
        let held: Info = serde_json::from_str(
            r#"{"server_id":"S","connect_urls":["a:4222"],"connect_info":true,"remote_account":"APP","acc_is_sys":false}"#,
        )
        .unwrap();
        let next: Info =
            serde_json::from_str(r#"{"server_id":"S","connect_urls":["a:4222","b:4222"]}"#)
                .unwrap();
        let next = Box::new(next);
        let merged = replace_held_info(Some(Box::new(held)), next.clone());
        assert_eq!(merged.connect_urls, next.connect_urls);
        assert_eq!(merged.extra["connect_info"], true);
        assert_eq!(merged.extra["remote_account"], "APP");
        assert_eq!(merged.extra["acc_is_sys"], false);
        assert_eq!(replace_held_info(None, next.clone()), next);
    }

    #[test]
    fn replaces_every_address() {
        let mut info: Info = serde_json::from_str(
            r#"{"server_id":"S","host":"10.0.0.5","port":4222,"connect_urls":["10.0.0.5:4222","10.0.0.6:4222"],
               "ws_connect_urls":["10.0.0.5:8080"],"client_ip":"10.9.9.9","tls_required":true,"ip":"nats://10.0.0.5:6222",
               "ldm":true,"nonce":"abc","future":1}"#,
        )
        .unwrap();
        let mut rw = InfoRewrite {
            host: "edge.example.com".into(),
            port: 4222,
            connect_urls: vec![],
            tls_required: false,
            tls_verify: false,
            lame_duck_sent: false,
        };
        rw.apply(&mut info, "192.0.2.7:5555".parse().unwrap());
        let json = serde_json::to_string(&info).unwrap();
        assert!(!json.contains("10.0.0."), "{json}");
        assert_eq!(info.client_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(info.host.as_deref(), Some("edge.example.com"));
        assert_eq!(info.ldm, Some(true));
        assert_eq!(info.nonce.as_deref(), Some("abc"));
        assert!(info.extra.contains_key("future"));
        assert!(info.tls_required.is_none());

        // A TLS listener in front of a plain upstream, and a plain one in front of TLS.
        let mut plain: Info = serde_json::from_str(r#"{"server_id":"S"}"#).unwrap();
        rw.tls_required = true;
        rw.tls_verify = true;
        rw.apply(&mut plain, "192.0.2.7:5555".parse().unwrap());
        assert_eq!(plain.tls_required, Some(true));
        assert_eq!(plain.tls_verify, Some(true));
        assert_eq!(plain.tls_available, None);
        let mut tls: Info = serde_json::from_str(
            r#"{"server_id":"S","tls_required":true,"tls_verify":true,"tls_available":true}"#,
        )
        .unwrap();
        rw.tls_required = false;
        rw.tls_verify = false;
        rw.apply(&mut tls, "192.0.2.7:5555".parse().unwrap());
        let json = serde_json::to_string(&tls).unwrap();
        assert!(!json.contains("tls"), "{json}");
    }

    #[test]
    fn the_info_before_an_error_is_the_listeners_with_a_fresh_nonce() {
        let rw = InfoRewrite {
            host: "edge.example.com".into(),
            port: 4443,
            connect_urls: vec!["edge.example.com:4443".into()],
            tls_required: true,
            tls_verify: true,
            lame_duck_sent: false,
        };
        let client = "192.0.2.7:5555".parse().unwrap();
        // Before any session: a minimal INFO, with the listener's address and TLS fields,
        // and a nonce.
        let info = info_before_error(None, &rw, client);
        assert_eq!(info.nonce.as_ref().map(String::len), Some(15));
        assert_eq!(info.host.as_deref(), Some("edge.example.com"));
        assert_eq!(info.port, Some(4443));
        assert_eq!(info.tls_required, Some(true));
        assert_eq!(info.tls_verify, Some(true));
        assert_eq!(info.client_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(info.headers, Some(true));
        assert_eq!(info.extra["proto"], 1);
        // After one: the session's INFO, without what belonged to that client, and with the
        // listener's current settings over what the session saw.
        let last: Info = serde_json::from_str(
            r#"{"server_id":"S","version":"2.12.0","host":"old.example.com","port":4222,
               "nonce":"abc","client_id":7,"client_ip":"198.51.100.1","ldm":true}"#,
        )
        .unwrap();
        let info = info_before_error(Some(last.clone()), &rw, client);
        // A fresh nonce, not the last client's: an nkey client reads the error that follows.
        let nonce = info.nonce.clone().expect("a nonce");
        assert_ne!(nonce, "abc");
        assert_eq!(nonce.len(), 15, "{nonce}");
        assert_ne!(info_before_error(Some(last), &rw, client).nonce, info.nonce);
        assert_eq!(info.ldm, None);
        assert!(!info.extra.contains_key("client_id"));
        assert_eq!(info.extra["version"], "2.12.0");
        assert_eq!(info.host.as_deref(), Some("edge.example.com"));
        assert_eq!(info.port, Some(4443));
        assert_eq!(info.client_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(info.tls_required, Some(true));
    }

    #[test]
    fn lame_duck_info_leaves_out_the_listeners_own_url() {
        let mut rw = InfoRewrite {
            host: "Edge-A.example.com".into(),
            port: 4222,
            connect_urls: vec![
                "nats://edge-a.example.com:4222".into(),
                "edge-b.example.com:4222".into(),
                "edge-a.example.com:4223".into(),
                "edge-a.example.com:4222".into(),
            ],
            tls_required: false,
            tls_verify: false,
            lame_duck_sent: false,
        };
        let mut info: Info = serde_json::from_str(r#"{"server_id":"S"}"#).unwrap();
        rw.apply(&mut info, "192.0.2.7:5555".parse().unwrap());
        rw.lame_duck(&mut info);
        assert_eq!(info.ldm, Some(true));
        assert_eq!(
            info.connect_urls,
            Some(vec![
                "edge-b.example.com:4222".to_string(),
                "edge-a.example.com:4223".to_string()
            ])
        );
        // An INFO after it (a cluster change upstream) leaves it out too, without `ldm`.
        let mut later: Info = serde_json::from_str(r#"{"server_id":"S"}"#).unwrap();
        rw.apply(&mut later, "192.0.2.7:5555".parse().unwrap());
        assert_eq!(later.ldm, None);
        assert_eq!(later.connect_urls, info.connect_urls);
        // Only its own: the field goes, as nats-server's does.
        rw.connect_urls = vec!["nats://[::1]:4222".into()];
        rw.host = "::1".into();
        rw.apply(&mut info, "192.0.2.7:5555".parse().unwrap());
        rw.lame_duck(&mut info);
        assert_eq!(info.connect_urls, None);
    }
}
