//! One HTTP/2 connection to one replica for unary calls, straight on `h2`.
//!
//! tonic's channel hands each call to a buffer task, then to hyper's dispatch task, which opens
//! the stream and spawns a task to send the body and another to wait for the answer: four tasks
//! and their wake-ups per call, and the body leaves in a later pass of the connection than the
//! headers. Here the calling task opens the stream and queues headers and message together, and
//! the connection task wakes it when the answer is in.
//!
//! The connection is dialled on first use and again after it fails; a PING every 10 s that goes
//! unanswered for 5 s closes it, so a replica that hangs or sits behind a partition costs calls
//! their deadline once, not until TCP gives up.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::Authority;
use tokio::net::TcpStream;
use tonic::Status;

use crate::coalesce::CoalescingStream;

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A replica's connection for calls; share it behind an `Arc`.
#[derive(Debug)]
pub struct Connection {
    address: SocketAddr,
    authority: Authority,
    connect_timeout: Duration,
    /// The open connection's handle, with a number that tells one dial from the next.
    current: Mutex<Option<(u64, SendRequest<Bytes>)>>,
    /// Held while dialling, so that concurrent callers share one new connection.
    dialling: tokio::sync::Mutex<u64>,
}

impl Connection {
    pub fn new(address: SocketAddr, connect_timeout: Duration) -> Self {
        // A socket address is always a valid authority.
        let authority =
            Authority::try_from(address.to_string()).unwrap_or_else(|_| Authority::from_static("localhost"));
        Self { address, authority, connect_timeout, current: Mutex::new(None), dialling: tokio::sync::Mutex::new(0) }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// A handle that may open a stream now: on the open connection, or on a new one when there is
    /// none or it has failed.
    ///
    /// # Errors
    /// UNAVAILABLE when the replica cannot be reached.
    pub async fn ready(&self) -> Result<(u64, SendRequest<Bytes>), Status> {
        if let Some((dial, send)) = self.open() {
            match send.ready().await {
                Ok(send) => return Ok((dial, send)),
                Err(_) => self.forget(dial),
            }
        }
        let (dial, send) = self.dial().await?;
        let send = send.ready().await.map_err(|e| self.failed(dial, &e))?;
        Ok((dial, send))
    }

    /// Drops dial `dial` (when still current), so the next call dials again.
    pub fn forget(&self, dial: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|(open, _)| *open == dial) {
            *current = None;
        }
    }

    /// What a failure on dial `dial` means to the caller. Short of the peer cancelling one
    /// stream, the connection is suspect (closed, going away, refusing streams) and is
    /// forgotten: calls already on it finish there, the next one dials again.
    pub fn failed(&self, dial: u64, error: &h2::Error) -> Status {
        if error.reason() == Some(h2::Reason::CANCEL) && !error.is_io() && !error.is_go_away() {
            return Status::cancelled(format!("{} cancelled the call", self.address));
        }
        self.forget(dial);
        Status::unavailable(format!("connection to {} lost: {error}", self.address))
    }

    fn open(&self) -> Option<(u64, SendRequest<Bytes>)> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn dial(&self) -> Result<(u64, SendRequest<Bytes>), Status> {
        let mut dials = self.dialling.lock().await;
        // Another caller may have dialled while this one waited.
        if let Some(open) = self.open() {
            return Ok(open);
        }
        let unavailable = |what: &str, error: &dyn std::fmt::Display| {
            Status::unavailable(format!("{what} {}: {error}", self.address))
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address)).await {
            Ok(connected) => connected.map_err(|e| unavailable("cannot connect to", &e))?,
            Err(_) => return Err(unavailable("timed out connecting to", &format!("{:?}", self.connect_timeout))),
        };
        tcp.set_nodelay(true).map_err(|e| unavailable("cannot set TCP_NODELAY on", &e))?;
        let handshake = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake::<_, Bytes>(CoalescingStream::client(tcp));
        let (send, connection) = match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(handshake) => handshake.map_err(|e| unavailable("HTTP/2 handshake failed with", &e))?,
            Err(_) => return Err(unavailable("timed out in the HTTP/2 handshake with", &"no SETTINGS")),
        };
        tokio::spawn(drive(connection, self.address));
        *dials += 1;
        let open = (*dials, send);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(open.clone());
        Ok(open)
    }
}

/// Runs the connection until it closes, fails, or stops answering PINGs.
async fn drive(mut connection: h2::client::Connection<CoalescingStream<TcpStream>, Bytes>, address: SocketAddr) {
    let keepalive = connection.ping_pong().map(|mut pings| async move {
        loop {
            tokio::time::sleep(KEEPALIVE_INTERVAL).await;
            match tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(%address, "no answer to a keepalive PING; closing the connection");
                    return;
                }
            }
        }
    });
    let keepalive = async {
        match keepalive {
            Some(keepalive) => keepalive.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        closed = &mut connection => {
            if let Err(error) = closed {
                tracing::debug!(%address, %error, "connection closed");
            }
        }
        () = keepalive => {}
    }
}
