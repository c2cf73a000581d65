//! A ws or wss listener's settings, [`WsSettings`], parsed once at start-up from the
//! listener's `ws` table, and the two kinds of value in them that the configuration also
//! validates on its own: an allowed browser [`Origin`] and a trusted proxy's [`IpNet`].

use std::net::IpAddr;
use std::time::Duration;

use crate::config::WsSection;

/// An origin: `scheme://host[:port]`, with the scheme's default port filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// An `allowed_origins` entry, read as nats-server reads its own: an absolute `http` or
    /// `https` URL, of which the scheme, host and port count and a path or query after them
    /// is ignored (a page's URL will do). A `ws`/`wss` URL is refused: no browser sends one as
    /// its origin, so the entry could never match.
    pub fn allowed(s: &str) -> Result<Origin, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` is not an origin such as https://app.example.com"))?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(format!("`{s}`: the scheme must be http or https"));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        Origin::parse(&format!("{scheme}://{authority}"))
            .map_err(|_| format!("`{s}` is not an origin such as https://app.example.com"))
    }

    /// A browser's `Origin` header: `http://host`, `https://host:8443`, ... (a trailing `/`
    /// is allowed).
    pub fn parse(s: &str) -> Result<Origin, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` is not an origin such as https://app.example.com"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return Err(format!("`{s}`: the scheme must be http or https")),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{s}` is not an origin such as https://app.example.com"
            ));
        }
        let (host, port) =
            split_authority(authority, default_port).ok_or_else(|| format!("`{s}`: bad port"))?;
        Ok(Origin { scheme, host, port })
    }
}

/// `host[:port]` (IPv6 in brackets), lower-cased host.
pub(super) fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (host, p.parse().ok()?),
            None if after.is_empty() => (host, default_port),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// An IP address or a CIDR network (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let bad = || format!("`{s}` is not an IP address or CIDR network");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A ws/wss listener's settings, parsed once at start-up.
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// The only path upgrades may ask for; `None`: any.
    pub path: Option<String>,
    pub allowed_origins: Vec<Origin>,
    pub same_origin: bool,
    pub jwt_cookie: Option<String>,
    pub user_cookie: Option<String>,
    pub pass_cookie: Option<String>,
    pub token_cookie: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub ping_interval: Option<Duration>,
    pub max_message_size: usize,
    /// Accept permessage-deflate when the client offers it.
    pub compression: bool,
    /// A `wss` listener: an `Origin` without a port is compared with port 443.
    pub secure: bool,
}

impl WsSettings {
    /// From a validated config section.
    pub fn new(section: &WsSection, secure: bool) -> WsSettings {
        WsSettings {
            path: section.path.clone(),
            allowed_origins: section
                .allowed_origins
                .0
                .iter()
                .filter_map(|o| Origin::allowed(o).ok())
                .collect(),
            same_origin: section.same_origin,
            jwt_cookie: section.jwt_cookie.clone(),
            user_cookie: section.user_cookie.clone(),
            pass_cookie: section.pass_cookie.clone(),
            token_cookie: section.token_cookie.clone(),
            trusted_proxies: section
                .trusted_proxies
                .0
                .iter()
                .filter_map(|p| IpNet::parse(p).ok())
                .collect(),
            ping_interval: (!section.ping_interval.0.is_zero()).then_some(section.ping_interval.0),
            max_message_size: usize::try_from(section.max_message_size.0).unwrap_or(usize::MAX),
            compression: section.compression,
            secure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_origins_read_as_nats_server_reads_them() {
        let app = Origin {
            scheme: "https".into(),
            host: "app.example.com".into(),
            port: 443,
        };
        assert_eq!(Origin::allowed("https://app.example.com"), Ok(app.clone()));
        assert_eq!(Origin::allowed("HTTPS://App.Example.com/"), Ok(app.clone()));
        // A page's URL: its path and query do not count.
        assert_eq!(
            Origin::allowed("https://app.example.com/app/index.html?x=1"),
            Ok(app)
        );
        assert_eq!(Origin::allowed("http://localhost:8080").unwrap().port, 8080);
        for refused in [
            "wss://app.example.com",
            "ws://app.example.com",
            "file:///index.html",
            "app.example.com",
            "https://",
            "https:///path",
            "https://app.example.com:x",
        ] {
            assert!(Origin::allowed(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn ip_nets() {
        let n = IpNet::parse("192.0.2.0/24").unwrap();
        assert!(n.contains("192.0.2.200".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("host").is_err());
    }
}
