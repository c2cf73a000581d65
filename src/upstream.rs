//! Reaching nats-server: upstream URLs, dialling them in order with failover, and reading the
//! server's first INFO (the server speaks first; its INFO carries the nonce and max_payload
//! the client must see).

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nats_edge_filters::Info;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::proto::{self, Direction, ScanLimits, Verb};

/// The longest INFO line accepted from an upstream. Cluster INFOs with many connect_urls
/// are long, but not this long.
pub const MAX_SERVER_CONTROL_LINE: usize = 256 * 1024;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Credentials carried in an upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    /// `nats://user:pass@host`
    UserPass { user: String, pass: Secret },
    /// `nats://token@host`
    Token(Secret),
}

/// One parsed `nats://[user:pass@|token@]host[:port]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub host: String,
    pub port: u16,
    pub credentials: Option<UrlCredentials>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{0}`: only nats:// URLs are supported")]
    Scheme(String),
    #[error("`{0}`: {1}")]
    Malformed(String, String),
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let redacted = redact(url);
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| UrlError::Scheme(redacted.clone()))?;
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = userinfo.map(|u| match u.split_once(':') {
            Some((user, pass)) => UrlCredentials::UserPass {
                user: percent_decode(user),
                pass: Secret(percent_decode(pass)),
            },
            None => UrlCredentials::Token(Secret(percent_decode(u))),
        });
        let (host, port) = if hostport.ends_with(']') || !hostport.contains(':') {
            (hostport.to_string(), 4222)
        } else {
            crate::config::parse_host_port(hostport)
                .map_err(|e| UrlError::Malformed(redacted.clone(), e))?
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(UrlError::Malformed(redacted, "no host".into()));
        }
        Ok(UpstreamUrl {
            host,
            port,
            credentials,
        })
    }

    /// `host:port`, for dialling.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Prints as `nats://host:port`, never with credentials.
impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats://{}", self.authority())
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why one upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("closed before sending INFO")]
    ClosedBeforeInfo,
    #[error("read: {0}")]
    Read(io::Error),
    #[error("did not start with a valid INFO")]
    BadInfo,
}

impl DialError {
    /// A short cause for the client's `-ERR`, without any address.
    pub fn client_text(&self) -> &'static str {
        match self {
            DialError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "connection refused"
            }
            DialError::Connect(_) => "connect failed",
            DialError::Timeout(_) => "timed out",
            DialError::ClosedBeforeInfo | DialError::Read(_) => "connection closed",
            DialError::BadInfo => "invalid INFO",
        }
    }
}

/// Every upstream failed.
#[derive(Debug)]
pub struct AllUpstreamsFailed(pub Vec<(String, DialError)>);

impl fmt::Display for AllUpstreamsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (url, err)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{url}: {err}")?;
        }
        Ok(())
    }
}

/// A dialled upstream whose INFO has been read.
pub struct Connected {
    pub stream: TcpStream,
    pub url: UpstreamUrl,
    pub info: Info,
    /// Bytes read after the INFO line (normally none: the server waits for CONNECT).
    pub leftover: BytesMut,
}

/// Tries each URL in order until one connects and sends INFO within `timeout`.
pub async fn dial_any(
    urls: &[UpstreamUrl],
    timeout: Duration,
) -> Result<Connected, AllUpstreamsFailed> {
    let mut failures = Vec::new();
    for url in urls {
        match tokio::time::timeout(timeout, dial(url)).await {
            Ok(Ok((stream, info, leftover))) => {
                return Ok(Connected {
                    stream,
                    url: url.clone(),
                    info,
                    leftover,
                })
            }
            Ok(Err(e)) => failures.push((url.to_string(), e)),
            Err(_) => failures.push((url.to_string(), DialError::Timeout(timeout))),
        }
    }
    Err(AllUpstreamsFailed(failures))
}

async fn dial(url: &UpstreamUrl) -> Result<(TcpStream, Info, BytesMut), DialError> {
    let mut stream = TcpStream::connect(url.authority())
        .await
        .map_err(DialError::Connect)?;
    stream.set_nodelay(true).map_err(DialError::Connect)?;
    let (info, leftover) = read_info(&mut stream).await?;
    Ok((stream, info, leftover))
}

/// Reads the server's first op, which must be INFO.
async fn read_info(stream: &mut TcpStream) -> Result<(Info, BytesMut), DialError> {
    let limits = ScanLimits {
        max_control_line: MAX_SERVER_CONTROL_LINE,
        max_payload: 0,
    };
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match proto::scan(&buf, Direction::ServerToClient, &limits) {
            Ok(Some(frame)) if frame.verb == Verb::Info => {
                let data: Bytes = buf.split_to(frame.len).freeze();
                return match proto::build_server_op(&data, &frame) {
                    Ok(nats_edge_filters::ServerOp::Info(info)) => Ok((*info, buf)),
                    _ => Err(DialError::BadInfo),
                };
            }
            Ok(Some(_)) | Err(_) => return Err(DialError::BadInfo),
            Ok(None) => {}
        }
        if stream.read_buf(&mut buf).await.map_err(DialError::Read)? == 0 {
            return Err(DialError::ClosedBeforeInfo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_with_credentials() {
        let u = UpstreamUrl::parse("nats://alice:s%40cret@10.0.0.5:4223").unwrap();
        assert_eq!(u.host, "10.0.0.5");
        assert_eq!(u.port, 4223);
        assert_eq!(
            u.credentials,
            Some(UrlCredentials::UserPass {
                user: "alice".into(),
                pass: Secret("s@cret".into())
            })
        );
        assert_eq!(u.to_string(), "nats://10.0.0.5:4223");
        let t = UpstreamUrl::parse("nats://tok@host").unwrap();
        assert_eq!(t.port, 4222);
        assert_eq!(
            t.credentials,
            Some(UrlCredentials::Token(Secret("tok".into())))
        );
        let v6 = UpstreamUrl::parse("nats://[::1]:4222").unwrap();
        assert_eq!(v6.authority(), "[::1]:4222");
        assert!(matches!(
            UpstreamUrl::parse("tls://x:1"),
            Err(UrlError::Scheme(_))
        ));
        let err = UpstreamUrl::parse("tls://u:p@x:1").unwrap_err().to_string();
        assert!(!err.contains(":p@"), "{err}");
    }
}
