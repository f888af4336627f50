//! The generator's unary gRPC client, straight on HTTP/2 over the connection the services call
//! each other on (`alp_runtime::client::Connection`). tonic's channel passes each call through a
//! buffer task, hyper's dispatch task and a body task before h2 sees it; at thousands of calls
//! per second those hand-offs and their wake-ups cost the generator more CPU than the bare
//! server it measures. Here the calling task puts the request into the connection itself, so
//! the requests of one wake-up leave in one write. Answers are decoded and checked here.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use alp_runtime::client::Connection;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Uri};
use prost::Message;
use tonic::{Code, Status};

use crate::target::TargetArgs;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to each public service of the suite under load.
#[derive(Debug, Clone)]
pub struct LoadClients {
    pub scheduler: Arc<GrpcConnection>,
    pub user: Arc<GrpcConnection>,
    pub content: Arc<GrpcConnection>,
}

impl LoadClients {
    /// # Errors
    /// When an address is not `host:port` (an `http://` in front is allowed).
    pub fn new(target: &TargetArgs) -> anyhow::Result<Self> {
        let connection =
            |address: &str| GrpcConnection::new(address.strip_prefix("http://").unwrap_or(address)).map(Arc::new);
        Ok(Self {
            scheduler: connection(&target.scheduler_addr)?,
            user: connection(&target.user_addr)?,
            content: connection(&target.content_addr)?,
        })
    }
}

/// One HTTP/2 connection to one server, the suite's own ([`Connection`]): dialled on first use
/// and after a failure.
#[derive(Debug)]
pub struct GrpcConnection {
    connection: Connection,
}

impl GrpcConnection {
    /// # Errors
    /// When `address` is not `host:port` or the host does not resolve.
    pub fn new(address: &str) -> anyhow::Result<Self> {
        let resolved = address
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("address {address:?}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("address {address:?} resolves to nothing"))?;
        Ok(Self { connection: Connection::new(resolved, CONNECT_TIMEOUT) })
    }

    /// Calls `path` with `request` and decodes the answer, within `timeout`.
    ///
    /// # Errors
    /// The server's status, DEADLINE_EXCEEDED after `timeout`, or UNAVAILABLE for transport
    /// failures.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        path: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        match tokio::time::timeout(timeout, self.call(path, request, timeout)).await {
            Ok(answer) => answer,
            Err(_) => Err(Status::deadline_exceeded("Timeout expired")),
        }
    }

    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        let connection = &self.connection;
        let (dial, mut send) = connection.ready().await?;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(connection.authority().clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| Status::internal(format!("request URI: {e}")))?;
        let mut head =
            Request::builder().method(Method::POST).uri(uri).body(()).map_err(|e| Status::internal(e.to_string()))?;
        let headers = head.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        if let Ok(value) = HeaderValue::from_str(&format!("{}m", timeout.as_millis().max(1))) {
            headers.insert("grpc-timeout", value);
        }
        let failed = |error: h2::Error| connection.failed(dial, &error);
        let (answer, mut body) = send.send_request(head, false).map_err(failed)?;
        body.send_data(frame(request), true).map_err(failed)?;

        let answer = answer.await.map_err(failed)?;
        if answer.status() != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", answer.status())));
        }
        // A trailers-only answer carries the status in its headers.
        if let Some(status) = Status::from_header_map(answer.headers()) {
            return Err(if status.code() == Code::Ok {
                Status::internal("an OK answer without a message")
            } else {
                status
            });
        }
        let mut stream = answer.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = stream.data().await {
            let chunk = chunk.map_err(failed)?;
            let _ = stream.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        let trailers = stream.trailers().await.map_err(failed)?.unwrap_or_default();
        match Status::from_header_map(&trailers) {
            Some(status) if status.code() == Code::Ok => unframe(message.freeze()),
            Some(status) => Err(status),
            None => Err(Status::internal("the answer ended without a grpc-status")),
        }
    }
}

/// A message with gRPC's five-byte prefix: not compressed, then the length.
fn frame<M: Message>(message: &M) -> Bytes {
    let length = message.encoded_len();
    let mut framed = BytesMut::with_capacity(length + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    // The buffer was sized for the message, so encoding cannot run out of room.
    let _ = message.encode(&mut framed);
    framed.freeze()
}

/// The one message of a unary answer.
fn unframe<M: Message + Default>(mut framed: Bytes) -> Result<M, Status> {
    if framed.len() < 5 {
        return Err(Status::internal(format!("an answer of {} bytes has no gRPC frame", framed.len())));
    }
    if framed.get_u8() != 0 {
        return Err(Status::internal("a compressed answer, which was not asked for"));
    }
    let length = framed.get_u32() as usize;
    if framed.len() != length {
        return Err(Status::internal(format!("a frame of {length} bytes with {} after it", framed.len())));
    }
    M::decode(framed).map_err(|e| Status::internal(format!("the answer does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alp_proto::content::v1::GetItemRequest;

    #[test]
    fn frames_round_trip_and_bad_frames_are_named() {
        let request = GetItemRequest { item_id: "c000-i00001".into() };
        let framed = frame(&request);
        assert_eq!(framed[0], 0);
        assert_eq!(u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize, framed.len() - 5);
        assert_eq!(unframe::<GetItemRequest>(framed.clone()).unwrap(), request);
        assert!(unframe::<GetItemRequest>(framed.slice(..3)).unwrap_err().message().contains("no gRPC frame"));
        assert!(
            unframe::<GetItemRequest>(framed.slice(..framed.len() - 1)).unwrap_err().message().contains("after it")
        );
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert!(unframe::<GetItemRequest>(compressed.into()).unwrap_err().message().contains("compressed"));
    }

    #[test]
    fn an_address_must_be_host_and_port() {
        assert!(GrpcConnection::new("127.0.0.1:50051").is_ok());
        assert!(GrpcConnection::new("not an address").is_err());
    }
}
