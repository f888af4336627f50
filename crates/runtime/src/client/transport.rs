//! What a generated client sends on: a replica's channel, with each request's body handed to
//! HTTP/2 whole.
//!
//! tonic streams even a unary request's body, so HTTP/2 learns that it has ended only when it
//! asks once more, and says so in an empty DATA frame of its own: three writes per call
//! (headers, the message, the end), each of which wakes the callee. A body that is known to end
//! with its message carries the end on the message's frame.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A replica's channel for the generated clients; cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    channel: Channel,
}

impl Transport {
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The channel made ready above is the one that must take the call.
        let fresh = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, fresh);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Encoding a unary message is done in memory: this is ready at once.
            let message = body.collect().await?.to_bytes();
            let request = http::Request::from_parts(parts, Body::new(Full::new(message)));
            Ok(channel.call(request).await?)
        })
    }
}
