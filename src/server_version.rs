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

    /// Whether a nats-server of this version, with `proxy_protocol` on, misreads a PROXY
    /// header sent ahead of TLS, and if so on which connections and where it is fixed.
    /// Where it requires TLS (`tls_required`), 2.12.2 (the first with PROXY protocol) to
    /// 2.12.8 and 2.14.0 skip the header and take it for the start of the TLS handshake
    /// (fixed in 2.12.9 and 2.14.1 and their release candidates, "PROXY protocol with
    /// required TLS listener"). Where TLS is optional (`allow_non_tls`), up to 2.12.11 and
    /// 2.14.2 take the header's first byte for a plain client and hand the ClientHello to
    /// the NATS parser (fixed in 2.12.12 and 2.14.3, "TLS detection with allow_non_tls
    /// inspecting PROXY header byte", in no release candidate).
    pub fn misreads_proxy_header_before_tls(
        self,
        tls_required: bool,
    ) -> Option<(&'static str, &'static str)> {
        let (major, minor, patch) = (self.major, self.minor, self.patch);
        if tls_required {
            let misreads = match (major, minor) {
                (2, 12) => (2..9).contains(&patch),
                (2, 14) => patch == 0,
                _ => false,
            };
            misreads.then_some(("where it requires TLS", "2.12.9 and 2.14.1"))
        } else {
            let misreads = match (major, minor) {
                (2, 12) => (2..12).contains(&patch) || (patch == 12 && self.pre_release),
                (2, 14) => patch < 3 || (patch == 3 && self.pre_release),
                _ => false,
            };
            misreads.then_some((
                "where TLS is optional (allow_non_tls)",
                "2.12.12 and 2.14.3",
            ))
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
    fn which_servers_misread_the_proxy_header_before_optional_tls() {
        for (version, misreads) in [
            ("2.12.1", false),
            ("2.12.2", true),
            ("2.12.11", true),
            ("2.12.12-RC.1", true),
            ("2.12.12", false),
            ("2.14.2", true),
            ("2.14.3", false),
            ("2.15.1", false),
        ] {
            let parsed = ServerVersion::parse(version);
            let got = parsed.misreads_proxy_header_before_tls(false).is_some();
            assert_eq!(got, misreads, "{version}");
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
            let got = parsed.misreads_proxy_header_before_tls(true).is_some();
            assert_eq!(got, skips, "{version}");
        }
    }
}
