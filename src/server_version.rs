//! The `version` a nats-server gives in its INFO, for the few behaviours that changed between
//! releases and that the edge must follow.

/// A nats-server release, as `2.12.8` or `2.14.0-RC.1`; parts that do not parse read as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// A release candidate or other pre-release (`-RC.1`): it may predate a change its
    /// release has.
    pub pre_release: bool,
}

impl ServerVersion {
    pub fn parse(version: &str) -> ServerVersion {
        let (release, pre_release) = match version.split_once('-') {
            Some((release, _)) => (release, true),
            None => (version, false),
        };
        let mut parts = release
            .split('.')
            .map(|part| part.parse::<u64>().unwrap_or(0));
        ServerVersion {
            major: parts.next().unwrap_or(0),
            minor: parts.next().unwrap_or(0),
            patch: parts.next().unwrap_or(0),
            pre_release,
        }
    }

    /// Whether a nats-server of this version drops a client's subscriptions on a CONNECT
    /// after its first (`clearAccountSubs`, in 2.11.17, 2.12.8 and 2.14.0; there is no 2.13).
    /// A release candidate of the first release with the change may predate it (2.14.0-RC.1
    /// does): taken as not dropping, the safer mistake (the filters keep entries the upstream
    /// dropped, rather than forget ones it still holds).
    pub fn drops_subs_on_reconnect(self) -> bool {
        let first = matches!(
            (self.major, self.minor, self.patch),
            (2, 11, 17) | (2, 12, 8) | (2, 14, 0)
        );
        if self.pre_release && first {
            return false;
        }
        match (self.major, self.minor) {
            (0..=1, _) => false,
            (2, 11) => self.patch >= 17,
            (2, 12) => self.patch >= 8,
            (2, minor) => minor >= 13,
            _ => true,
        }
    }

    /// Whether a nats-server of this version, with `proxy_protocol` on, skips the PROXY
    /// header of a connection it requires TLS on, and takes the header for the start of the
    /// TLS handshake: 2.12.2 (the first with PROXY protocol) to 2.12.8, and 2.14.0. Fixed in
    /// 2.12.9 and 2.14.1, and their release candidates ("PROXY protocol with required TLS
    /// listener").
    pub fn skips_proxy_header_before_tls(self) -> bool {
        match (self.major, self.minor) {
            (2, 12) => (2..9).contains(&self.patch),
            (2, 14) => self.patch == 0,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_servers_drop_subscriptions_on_a_second_connect() {
        for (version, drops) in [
            ("2.15.1", true),
            ("2.14.0", true),
            ("2.14.0-RC.1", false),
            ("2.14.1-RC.1", true),
            ("2.12.8", true),
            ("2.12.7", false),
            ("2.11.17", true),
            ("2.11.16", false),
            ("2.10.29", false),
            ("3.0.0", true),
            ("garbage", false),
        ] {
            let parsed = ServerVersion::parse(version);
            assert_eq!(parsed.drops_subs_on_reconnect(), drops, "{version}");
        }
    }

    #[test]
    fn which_servers_skip_the_proxy_header_before_tls() {
        for (version, skips) in [
            ("2.12.1", false),
            ("2.12.2", true),
            ("2.12.8", true),
            ("2.12.9-RC.1", false),
            ("2.12.9", false),
            ("2.14.0", true),
            ("2.14.0-RC.3", true),
            ("2.14.1-RC.2", false),
            ("2.14.1", false),
            ("2.15.1", false),
            ("garbage", false),
        ] {
            let parsed = ServerVersion::parse(version);
            assert_eq!(parsed.skips_proxy_header_before_tls(), skips, "{version}");
        }
    }
}
