//! Large socket reads under TLS.
//!
//! rustls reads the socket at most 4 KiB at a time, so a client streaming at full speed costs
//! a system call per 4 KiB of TLS records, where a plain TCP session reads up to 64 KiB at a
//! time. [`ReadAhead`] sits between the socket and rustls: while the peer is streaming (a
//! read filled all that rustls asked for), it reads up to 64 KiB at once and hands it out from
//! memory. A connection that goes quiet gives the buffer back, so idle connections hold none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The size of a read while the peer is streaming.
const READ_AHEAD: usize = 64 * 1024;

/// A socket whose reads are batched while the peer streams.
pub struct ReadAhead<S> {
    inner: S,
    /// Read but not yet handed out: `buf[start..end]`. Allocated only while streaming.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// The last direct read filled all that was asked: the next one reads ahead.
    streaming: bool,
    /// The first bytes handed out, while a TLS client handshake wants them kept: a server
    /// that answers it in plain text (nats-server refusing a client before TLS) is read
    /// from them once the handshake has failed. `None` otherwise.
    first: Option<Vec<u8>>,
}

/// How many of the first bytes [`ReadAhead::recording`] keeps: room for nats-server's
/// longest refusal line.
const FIRST_BYTES: usize = 128;

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: None,
            start: 0,
            end: 0,
            streaming: false,
            first: None,
        }
    }

    /// A socket that keeps the first bytes it hands out (see [`ReadAhead::first_bytes`]).
    pub fn recording(inner: S) -> Self {
        ReadAhead {
            first: Some(Vec::with_capacity(FIRST_BYTES)),
            ..ReadAhead::new(inner)
        }
    }

    /// The first bytes handed out since [`ReadAhead::recording`]; empty otherwise.
    pub fn first_bytes(&self) -> &[u8] {
        self.first.as_deref().unwrap_or_default()
    }

    /// Stops keeping the first bytes and frees them.
    pub fn stop_recording(&mut self) {
        self.first = None;
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the socket and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.is_none() {
            return this.read_into(cx, out);
        }
        let before = out.filled().len();
        let res = this.read_into(cx, out);
        if let (Poll::Ready(Ok(())), Some(first)) = (&res, &mut this.first) {
            let got = &out.filled()[before..];
            let room = FIRST_BYTES.saturating_sub(first.len());
            first.extend_from_slice(&got[..got.len().min(room)]);
        }
        res
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    fn read_into(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self;
        if this.start == this.end {
            if !this.streaming || out.remaining() >= READ_AHEAD {
                let wanted = out.remaining();
                let before = out.filled().len();
                let res = Pin::new(&mut this.inner).poll_read(cx, out);
                if let Poll::Ready(Ok(())) = res {
                    this.streaming = wanted > 0 && out.filled().len() - before == wanted;
                }
                return res;
            }
            let buf = this
                .buf
                .get_or_insert_with(|| vec![0u8; READ_AHEAD].into_boxed_slice());
            let mut read = ReadBuf::new(buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Quiet for now: give the buffer back until the peer streams again.
                    this.buf = None;
                    this.streaming = false;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    this.start = 0;
                    this.end = read.filled().len();
                    if this.end == 0 {
                        this.buf = None;
                        this.streaming = false;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        if let Some(buf) = &this.buf {
            let n = out.remaining().min(this.end - this.start);
            out.put_slice(&buf[this.start..this.start + n]);
            this.start += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn recording_keeps_the_first_bytes_only_until_stopped() {
        let (mut peer, sock) = tokio::io::duplex(4096);
        let mut ahead = ReadAhead::recording(sock);
        peer.write_all(b"-ERR 'maximum connections exceeded'\r\n")
            .await
            .unwrap();
        let mut chunk = [0u8; 6];
        ahead.read_exact(&mut chunk).await.unwrap();
        assert_eq!(ahead.first_bytes(), b"-ERR '");
        peer.write_all(&[b'x'; 300]).await.unwrap();
        let mut rest = [0u8; 300 + 31];
        ahead.read_exact(&mut rest).await.unwrap();
        assert_eq!(ahead.first_bytes().len(), FIRST_BYTES);
        assert!(ahead
            .first_bytes()
            .starts_with(b"-ERR 'maximum connections exceeded'\r\nxx"));
        ahead.stop_recording();
        assert!(ahead.first_bytes().is_empty());
        assert!(ReadAhead::new(tokio::io::empty()).first_bytes().is_empty());
    }

    #[tokio::test]
    async fn hands_out_every_byte_in_order_and_frees_the_buffer_when_quiet() {
        let (mut peer, sock) = tokio::io::duplex(256 * 1024);
        let mut ahead = ReadAhead::new(sock);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < data.len() {
            let n = ahead.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        assert!(ahead.buf.is_some(), "a streaming peer is read ahead");
        // Nothing more: the read waits, and the buffer is given back meanwhile.
        let waiting = futures_util::FutureExt::now_or_never(ahead.read(&mut chunk));
        assert!(waiting.is_none());
        assert!(ahead.buf.is_none());
        assert_eq!(ahead.buffered(), 0);
        peer.write_all(b"tail").await.unwrap();
        drop(peer);
        let mut rest = Vec::new();
        ahead.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"tail");
    }
}
