//! What a generated client sends on: a replica's [`Connection`], each request's body handed to
//! HTTP/2 whole.
//!
//! tonic streams even a unary request's body, so HTTP/2 would learn that it has ended only when
//! it asks once more, and say so in an empty DATA frame of its own. A body known to end with its
//! message carries the end on the message's frame, queued with the headers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::Uri;
use http::uri::{PathAndQuery, Scheme};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::Status;
use tonic::body::Body;
use tower::Service;

use super::connection::Connection;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A replica's connection for the generated clients; cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    connection: Arc<Connection>,
}

impl Transport {
    pub fn new(connection: Arc<Connection>) -> Self {
        Self { connection }
    }
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let connection = Arc::clone(&self.connection);
        Box::pin(async move {
            let (mut head, body) = request.into_parts();
            // Encoding a unary message is done in memory: this is ready at once.
            let message = body.collect().await?.to_bytes();
            let path = head.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            head.uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(connection.authority().clone())
                .path_and_query(path)
                .build()?;
            let request = || {
                let mut request = http::Request::new(());
                *request.method_mut() = head.method.clone();
                *request.uri_mut() = head.uri.clone();
                *request.headers_mut() = head.headers.clone();
                request
            };
            // A connection that closed between the check and the call (a GOAWAY after its age)
            // took nothing: the call goes on a new one.
            let mut attempts = 0;
            let (answer, mut stream, dial) = loop {
                attempts += 1;
                let (dial, mut send) = connection.ready().await?;
                match send.send_request(request(), false) {
                    Ok((answer, stream)) => break (answer, stream, dial),
                    Err(error) => {
                        let status = connection.failed(dial, &error);
                        if attempts == 2 {
                            return Err(status.into());
                        }
                    }
                }
            };
            stream.send_data(message, true).map_err(|e| connection.failed(dial, &e))?;
            let answer = answer.await.map_err(|e| connection.failed(dial, &e))?;
            Ok(answer.map(|recv| Body::new(Answer { recv, connection, dial, data_done: false })))
        })
    }
}

/// An answer's body: its messages, then its trailers.
struct Answer {
    recv: h2::RecvStream,
    connection: Arc<Connection>,
    dial: u64,
    data_done: bool,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The bytes are handed over: the peer may send as many again.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(self.connection.failed(self.dial, &error)))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(self.connection.failed(self.dial, &error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
