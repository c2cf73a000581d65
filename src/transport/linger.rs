//! Closing a connection without losing its last words.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// How long a closed connection keeps reading what its peer still sends.
const LINGER: Duration = Duration::from_millis(500);
/// How much of it, at most.
const LINGER_BYTES: usize = 256 * 1024;

/// Reads and drops what the peer still sends after this side has written its last words and
/// shut its side down, until the peer closes too, or for [`LINGER`] at most. A socket closed
/// with unread input answers with a reset, and a reset can destroy those last words before
/// the peer reads them: a client that pipelined a PING behind the CONNECT the edge refused
/// would see a reset instead of `-ERR 'Authorization Violation'`, and a browser whose
/// request head was too large a reset instead of the 431.
pub async fn linger<S: AsyncRead + Unpin>(peer: &mut S) {
    // On the heap: an array here would grow every session's future, idle ones included.
    let mut buf = vec![0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match peer.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Before a refused connection closes (a plain-text client on a TLS listener, a bad PROXY
/// header): reads and drops what the peer has sent so far (64 KiB at most), so that the close
/// is a FIN, as nats-server's is, since a socket closed with unread input answers with a
/// reset, which the peer reports as one rather than as the close. Never waits: bytes that
/// arrive later still meet a reset.
pub fn discard_unread(tcp: &TcpStream) {
    let mut buf = [0u8; 4096];
    let mut left = 64 * 1024;
    while left > 0 {
        match tcp.try_read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n.min(left),
        }
    }
}
