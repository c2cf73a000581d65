//! The PROXY protocol (HAProxy, v1 text and v2 binary): reading the header a load balancer
//! puts in front of a connection, and writing one in front of an upstream connection.
//!
//! The reader consumes exactly the header and nothing after it (it peeks, then reads what
//! the header is known to span), so whatever follows (a TLS ClientHello, an HTTP request)
//! is left on the socket for the next layer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (from the specification).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: the fixed part plus room for addresses and TLVs.
const V2_MAX: usize = 16 + 4096;

/// The addresses a header carries: the real client and the address it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddrs {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The result of looking at the start of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes. `addrs` is `None` for v1 `UNKNOWN`, v2 `LOCAL` and
    /// v2 `UNSPEC` (a proxy's own health check): the socket's peer is the client then.
    Complete {
        len: usize,
        addrs: Option<ProxyAddrs>,
    },
}

/// A connection that does not start with a valid header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header: the connection starts with \"{0}\"")]
    Missing(String),
    #[error("invalid v1 header: {0}")]
    V1(&'static str),
    #[error("invalid v2 header: {0}")]
    V2(&'static str),
    #[error("header longer than allowed")]
    TooLong,
}

/// Why reading a header from a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the connection closed before any byte arrived")]
    ClosedEarly,
    #[error("the connection closed inside the PROXY header (after {0} bytes)")]
    Truncated(usize),
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// Looks for a whole header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let v1_len = buf.len().min(V1_PREFIX.len());
    let v2_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..v1_len] == V1_PREFIX[..v1_len] {
        parse_v1(buf)
    } else if buf[..v2_len] == V2_SIGNATURE[..v2_len] {
        parse_v2(buf)
    } else {
        Err(HeaderError::Missing(
            buf[..buf.len().min(16)].escape_ascii().to_string(),
        ))
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(HeaderError::V1("the line does not end with CRLF"));
    }
    let line = &window[V1_PREFIX.len()..lf - 1];
    // After UNKNOWN the receiver ignores the rest of the line, whatever it holds.
    if line
        .strip_prefix(b"UNKNOWN")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b' ')
    {
        return Ok(Parsed::Complete {
            len: lf + 1,
            addrs: None,
        });
    }
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::V1("not ASCII"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or_default();
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(HeaderError::V1("expected 5 fields after PROXY"));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map_err(|_| HeaderError::V1("bad IPv4 source address"))?
                .into(),
            dst.parse::<Ipv4Addr>()
                .map_err(|_| HeaderError::V1("bad IPv4 destination address"))?
                .into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map_err(|_| HeaderError::V1("bad IPv6 source address"))?
                .into(),
            dst.parse::<Ipv6Addr>()
                .map_err(|_| HeaderError::V1("bad IPv6 destination address"))?
                .into(),
        ),
        _ => return Err(HeaderError::V1("protocol must be TCP4, TCP6 or UNKNOWN")),
    };
    let port = |p: &str| -> Result<u16, HeaderError> {
        let valid = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p == "0" || !p.starts_with('0'));
        p.parse()
            .ok()
            .filter(|_| valid)
            .ok_or(HeaderError::V1("bad port"))
    };
    Ok(Parsed::Complete {
        len: lf + 1,
        addrs: Some(ProxyAddrs {
            src: SocketAddr::new(src, port(sport)?),
            dst: SocketAddr::new(dst, port(dport)?),
        }),
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(HeaderError::V2("version is not 2"));
    }
    if command > 1 {
        return Err(HeaderError::V2("command is neither LOCAL nor PROXY"));
    }
    let addr_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + addr_len;
    if len > V2_MAX {
        return Err(HeaderError::TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    if command == 0 {
        // LOCAL: the proxy speaking for itself; addresses (if any) are ignored.
        return Ok(Parsed::Complete { len, addrs: None });
    }
    let body = &buf[16..len];
    let addrs = match buf[13] {
        // UNSPEC: unknown addresses. UDP and unix-socket addresses are valid but carry no
        // TCP peer: the spec has the receiver fall back to UNSPEC for them (a balancer with
        // a unix-socket frontend sends 0x31).
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        // TCP over IPv4.
        0x11 => {
            if body.len() < 12 {
                return Err(HeaderError::V2("address block too short for IPv4"));
            }
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&body[at..at + 4]).unwrap());
            Some(ProxyAddrs {
                src: SocketAddr::new(ip(0), u16::from_be_bytes([body[8], body[9]])),
                dst: SocketAddr::new(ip(4), u16::from_be_bytes([body[10], body[11]])),
            })
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(HeaderError::V2("address block too short for IPv6"));
            }
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&body[at..at + 16]).unwrap());
            Some(ProxyAddrs {
                src: SocketAddr::new(ip(0), u16::from_be_bytes([body[32], body[33]])),
                dst: SocketAddr::new(ip(16), u16::from_be_bytes([body[34], body[35]])),
            })
        }
        _ => return Err(HeaderError::V2("unknown address family or transport")),
    };
    Ok(Parsed::Complete { len, addrs })
}

/// Reads the header at the start of `stream`, consuming exactly its bytes.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<ProxyAddrs>, ReadError> {
    let mut buf = vec![0u8; V2_MAX];
    let mut have = 0;
    loop {
        // Peek at what has arrived beyond the bytes already taken. Bytes are only taken
        // (read) once the header is known to span them, or when all of them are needed, so
        // the next peek waits for new data instead of spinning.
        let n = match stream.peek(&mut buf[have..]).await {
            Ok(n) => n,
            // A reset before any byte is a health check that closed that way: quiet, as a
            // close is.
            Err(e) if have == 0 && super::tls::is_reset(&e) => return Err(ReadError::ClosedEarly),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(if have == 0 {
                ReadError::ClosedEarly
            } else {
                ReadError::Truncated(have)
            });
        }
        match parse(&buf[..have + n])? {
            Parsed::Complete { len, addrs } => {
                stream.read_exact(&mut buf[have..len]).await?;
                return Ok(addrs);
            }
            Parsed::Incomplete => {
                stream.read_exact(&mut buf[have..have + n]).await?;
                have += n;
                if have == buf.len() {
                    return Err(HeaderError::TooLong.into());
                }
            }
        }
    }
}

/// Both addresses in the client's family. When the edge's own address is of the other one
/// (an IPv4 client named by a balancer that reached the edge over IPv6, or the reverse), it
/// is sent as that family's unspecified address: the receiver (nats-server) reads only the
/// source, and nats-server releases before 2.12.12 and 2.14.3 refuse a v1 `TCP6` line that
/// carries an IPv4-mapped address, which is the other way to put the two in one family.
fn same_family(addrs: ProxyAddrs) -> (SocketAddr, SocketAddr) {
    let (src, dst) = (super::canonical(addrs.src), super::canonical(addrs.dst));
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let unspecified = match src.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    (src, SocketAddr::new(unspecified, dst.port()))
}

/// A v1 header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` for a client's connection, or
/// `PROXY UNKNOWN\r\n` for none (the edge's own connection, such as its readiness check),
/// which the receiver takes as the connection's own addresses.
pub fn encode_v1(addrs: Option<ProxyAddrs>) -> Vec<u8> {
    let Some(addrs) = addrs else {
        return b"PROXY UNKNOWN\r\n".to_vec();
    };
    let (src, dst) = same_family(addrs);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 header: the PROXY command over TCP for a client's connection, or the LOCAL command
/// with no addresses for none (see [`encode_v1`]).
pub fn encode_v2(addrs: Option<ProxyAddrs>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    let Some(addrs) = addrs else {
        // Version 2, LOCAL; UNSPEC family; no address block.
        out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        return out;
    };
    let (src, dst) = same_family(addrs);
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => unreachable!("same_family returns one family"),
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(src: &str, dst: &str) -> ProxyAddrs {
        ProxyAddrs {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn v1_round_trip_and_every_split() {
        let a = addrs("192.0.2.7:51234", "10.0.0.1:4222");
        let header = encode_v1(Some(a));
        assert_eq!(header, b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 4222\r\n");
        let mut wire = header.clone();
        wire.extend_from_slice(b"CONNECT {}\r\n");
        for cut in 0..header.len() {
            assert_eq!(parse(&wire[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert_eq!(
            parse(&wire),
            Ok(Parsed::Complete {
                len: header.len(),
                addrs: Some(a)
            })
        );
        let v6 = addrs("[2001:db8::7]:1", "[::1]:4222");
        assert_eq!(
            parse(&encode_v1(Some(v6))),
            Ok(Parsed::Complete {
                len: encode_v1(Some(v6)).len(),
                addrs: Some(v6)
            })
        );
    }

    #[test]
    fn v2_round_trip_and_every_split() {
        for a in [
            addrs("192.0.2.7:51234", "10.0.0.1:4222"),
            addrs("[2001:db8::7]:1", "[2001:db8::1]:4222"),
        ] {
            let header = encode_v2(Some(a));
            for cut in 0..header.len() {
                assert_eq!(
                    parse(&header[..cut]),
                    Ok(Parsed::Incomplete),
                    "cut at {cut}"
                );
            }
            assert_eq!(
                parse(&header),
                Ok(Parsed::Complete {
                    len: header.len(),
                    addrs: Some(a)
                })
            );
        }
    }

    #[test]
    fn mixed_families_take_the_clients() {
        // An IPv4 client of an edge reached over IPv6: TCP4, the edge's address unspecified.
        let a = addrs("192.0.2.7:5", "[2001:db8::1]:4222");
        let line = String::from_utf8(encode_v1(Some(a))).unwrap();
        assert_eq!(line, "PROXY TCP4 192.0.2.7 0.0.0.0 5 4222\r\n");
        let expected = Some(addrs("192.0.2.7:5", "0.0.0.0:4222"));
        assert_eq!(
            parse(&encode_v2(Some(a))).map(|p| match p {
                Parsed::Complete { addrs, .. } => addrs,
                Parsed::Incomplete => None,
            }),
            Ok(expected)
        );
        // The reverse.
        let a = addrs("[2001:db8::7]:5", "10.0.0.1:4222");
        let line = String::from_utf8(encode_v1(Some(a))).unwrap();
        assert_eq!(line, "PROXY TCP6 2001:db8::7 :: 5 4222\r\n");
        // An IPv4-mapped client is an IPv4 one.
        let a = addrs("[::ffff:192.0.2.7]:5", "10.0.0.1:4222");
        let line = String::from_utf8(encode_v1(Some(a))).unwrap();
        assert_eq!(line, "PROXY TCP4 192.0.2.7 10.0.0.1 5 4222\r\n");
    }

    #[test]
    fn the_edges_own_connection_is_unknown_or_local() {
        assert_eq!(encode_v1(None), b"PROXY UNKNOWN\r\n");
        let local = encode_v2(None);
        assert_eq!(
            parse(&local),
            Ok(Parsed::Complete {
                len: 16,
                addrs: None
            })
        );
        assert_eq!(local[12], 0x20);
    }

    #[test]
    fn local_and_unknown_carry_no_address() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Complete {
                len: 15,
                addrs: None
            })
        );
        // Whatever follows UNKNOWN on the line is ignored, as the specification says.
        assert_eq!(
            parse(b"PROXY UNKNOWN \xff 1.2.3.4\r\n"),
            Ok(Parsed::Complete {
                len: 25,
                addrs: None
            })
        );
        assert!(parse(b"PROXY UNKNOWNX\r\n").is_err());
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            Ok(Parsed::Complete {
                len: 16,
                addrs: None
            })
        );
    }

    /// UDP and unix-socket families are valid but not TCP peers: the socket's own address
    /// stands, as for UNSPEC (the spec's fall-back).
    #[test]
    fn v2_non_tcp_families_keep_the_socket_address() {
        for family in [0x12u8, 0x22, 0x31, 0x32] {
            let mut v2 = V2_SIGNATURE.to_vec();
            v2.extend_from_slice(&[0x21, family, 0x00, 0x0c]);
            v2.extend_from_slice(&[0; 12]);
            assert_eq!(
                parse(&v2),
                Ok(Parsed::Complete {
                    len: 28,
                    addrs: None
                }),
                "family {family:#x}"
            );
        }
    }

    #[test]
    fn rejects_forgeries() {
        let bad: &[&[u8]] = &[
            b"CONNECT {}\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{}", b.escape_ascii());
        }
        assert_eq!(
            parse(&[b'P'; 200][..]),
            Err(HeaderError::Missing("PPPPPPPPPPPPPPPP".into()))
        );
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert_eq!(parse(&long), Err(HeaderError::TooLong));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x31, 0x13, 0x00, 0x0c]);
        assert!(matches!(parse(&v2), Err(HeaderError::V2(_))));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x41, 0x00, 0x0c]);
        v2.extend_from_slice(&[0; 12]);
        assert!(matches!(parse(&v2), Err(HeaderError::V2(_))));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert!(matches!(parse(&v2), Err(HeaderError::V2(_))));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&v2), Err(HeaderError::TooLong));
    }
}
