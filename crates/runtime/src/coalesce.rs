//! A connection that sends each HTTP/2 answer in one write.
//!
//! h2 flushes a unary answer in two writes: a DATA frame past its chaining threshold (256 bytes
//! when the socket takes vectored writes, 1 KiB otherwise) is queued by reference, and nothing
//! may be queued behind it until it has been written, so the trailers wait for a write of their
//! own. Each write is a system call here and a wake-up at the peer (on loopback the writer also
//! pays the reader's TCP input): a NextItems cost the scheduler three writes where two carry the
//! same bytes, and scoring two where one does.
//!
//! [`CoalescingStream`] takes what h2 writes into a buffer of its own and follows the frame
//! boundaries in it. It reports no vectored writes, so h2 copies DATA frames under 1 KiB in line
//! and never flushes between them and their trailers. When h2 flushes after a larger DATA frame
//! that leaves its stream open, the flush waits once for the connection task's next pass, which
//! queues the trailers; any other flush, and the one after a wait, writes the buffer out. A
//! stream that stays open (a health watch, an export) thus costs at most one extra pass of its
//! connection task per message, never a stall. The wait is a yield: on a runtime with idle
//! workers it may wake one, which is why small frames are kept from needing it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Above this many buffered bytes a write first sends what is buffered.
const HIGH_WATER: usize = 256 * 1024;
/// What a client sends before its first frame.
const CLIENT_PREFACE: usize = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".len();
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const END_STREAM: u8 = 0x1;

/// An HTTP/2 connection's byte stream whose writes are buffered until a message is whole.
#[derive(Debug)]
pub struct CoalescingStream<T> {
    inner: T,
    pending: BytesMut,
    frames: FrameBoundaries,
    /// A flush has waited since the last write; the next one writes.
    waited: bool,
}

impl<T> CoalescingStream<T> {
    /// The server's end of a connection.
    pub fn server(inner: T) -> Self {
        Self::new(inner, 0)
    }

    /// The client's end of a connection: it starts with the connection preface.
    pub fn client(inner: T) -> Self {
        Self::new(inner, CLIENT_PREFACE)
    }

    fn new(inner: T, preface: usize) -> Self {
        Self { inner, pending: BytesMut::new(), frames: FrameBoundaries::new(preface), waited: false }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> CoalescingStream<T> {
    /// Writes the buffer out, as far as the socket takes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(written);
        }
        self.waited = false;
        Poll::Ready(Ok(()))
    }

    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.len() >= HIGH_WATER {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescingStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescingStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        self.frames.follow(buf);
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// h2 then copies DATA frames under 1 KiB into its own buffer rather than chaining them.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() && self.frames.message_left_open() && !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for CoalescingStream<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Where the frames begin in the bytes written so far, and what the last one was.
#[derive(Debug)]
struct FrameBoundaries {
    /// Bytes still to skip: the preface, or the rest of a frame's payload.
    skip: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// The last frame begun was DATA without END_STREAM: trailers or more data will follow.
    open: bool,
}

impl FrameBoundaries {
    fn new(preface: usize) -> Self {
        Self { skip: preface, header: [0; FRAME_HEADER], header_len: 0, open: false }
    }

    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == FRAME_HEADER {
                let [l0, l1, l2, kind, flags, ..] = self.header;
                self.skip = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                self.open = kind == DATA && flags & END_STREAM == 0;
                self.header_len = 0;
            }
        }
    }

    fn message_left_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    const HEADERS: u8 = 0x1;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn frame_boundaries_survive_any_split_of_the_bytes() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        bytes.extend(frame(HEADERS, 0x4, &[7; 40]));
        bytes.extend(frame(DATA, 0, &[9; 1500]));
        for cut in 0..bytes.len() {
            let mut frames = FrameBoundaries::new(CLIENT_PREFACE);
            frames.follow(&bytes[..cut]);
            frames.follow(&bytes[cut..]);
            assert!(frames.message_left_open(), "cut at {cut}");
            frames.follow(&frame(HEADERS, END_STREAM | 0x4, &[1; 12]));
            assert!(!frames.message_left_open(), "cut at {cut}: trailers end the stream");
        }
    }

    struct Counting(std::sync::atomic::AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_message_left_open_waits_one_pass_then_goes_out_whole() {
        let wakes = Arc::new(Counting(0.into()));
        let waker = Arc::clone(&wakes).into();
        let mut cx = Context::from_waker(&waker);
        let mut stream = CoalescingStream::server(Vec::<u8>::new());
        let mut write = |stream: &mut CoalescingStream<Vec<u8>>, bytes: &[u8]| {
            assert!(matches!(Pin::new(stream).poll_write(&mut cx, bytes), Poll::Ready(Ok(n)) if n == bytes.len()));
        };
        let answer = [frame(HEADERS, 0x4, &[1; 30]), frame(DATA, 0, &[2; 600])].concat();
        write(&mut stream, &answer);
        assert!(Pin::new(&mut stream).poll_flush(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1, "the connection task is polled again");
        assert!(stream.get_ref().is_empty(), "nothing written yet");
        let trailers = frame(HEADERS, END_STREAM | 0x4, &[3; 10]);
        write(&mut stream, &trailers);
        assert!(Pin::new(&mut stream).poll_flush(&mut Context::from_waker(&waker)).is_ready());
        assert_eq!(stream.get_ref(), &[answer, trailers].concat(), "one write");

        // The next message that stays open (a stream's next message) waits once again, and a
        // second flush writes it even though its stream is still open.
        let message = frame(DATA, 0, &[4; 300]);
        write(&mut stream, &message);
        assert!(Pin::new(&mut stream).poll_flush(&mut Context::from_waker(&waker)).is_pending());
        assert!(Pin::new(&mut stream).poll_flush(&mut Context::from_waker(&waker)).is_ready());
        assert!(stream.get_ref().ends_with(&message));
    }

    #[test]
    fn a_flush_after_headers_an_ended_stream_or_a_control_frame_writes_at_once() {
        let waker = Arc::new(Counting(0.into())).into();
        let mut cx = Context::from_waker(&waker);
        let mut stream = CoalescingStream::client(Vec::<u8>::new());
        assert!(Pin::new(&mut stream).poll_write(&mut cx, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_ready());
        for frame in [frame(0x6, 0x1, &[0; 8]), frame(HEADERS, 0x4, &[1; 30]), frame(DATA, END_STREAM, &[2; 3000])] {
            assert!(Pin::new(&mut stream).poll_write(&mut cx, &frame).is_ready());
            assert!(
                Pin::new(&mut stream).poll_flush(&mut cx).is_ready(),
                "a flush after a frame of type {} waited",
                frame[3]
            );
            assert!(stream.get_ref().ends_with(&frame));
        }
    }
}
