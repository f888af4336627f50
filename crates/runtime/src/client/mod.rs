//! Calls to other services.
//!
//! Each downstream service is a [`Downstream`]: its replicas (resolved from a list of addresses
//! or DNS names, refreshed, each followed through its health `Watch`), one circuit breaker and
//! one retry budget. Each RPC a service makes is an [`Rpc`], a tower service from the domain
//! request to the domain response with a typed [`CallError`], assembled per method:
//!
//! ```text
//! deadline (the caller's remaining budget, less a reserve) → retry (idempotent methods only,
//! jittered backoff, budget) → circuit breaker → p2c over healthy endpoints → the generated
//! client on the replica's HTTP/2 connection (`connection.rs`)
//! ```
//!
//! Nothing sits on the raw HTTP channel: every layer sees gRPC codes.

mod config;
mod connection;
mod endpoints;
mod retry;
mod rpc;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use config::{ClientArgs, DownstreamConfig};
pub use connection::Connection;
pub use endpoints::{EndpointHealth, Endpoints};
pub use retry::{RetryConfig, Retrying};
pub use rpc::{Downstream, Method, Rpc, SendFn, deadline_for};
pub use transport::Transport;

use crate::ErrorKind;
use crate::metrics::code_name;

/// One attempt's request: the message and the instant the answer is no longer wanted.
#[derive(Debug, Clone)]
pub struct Call<T> {
    pub message: T,
    pub deadline: tokio::time::Instant,
}

/// Why a downstream call did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The downstream answered with this status (or the connection failed, as UNAVAILABLE).
    #[error("{downstream} {method}: {} {}", code_name(status.code()), status.message())]
    Status { downstream: Arc<str>, method: &'static str, status: tonic::Status },
    /// The circuit breaker refused the call without sending it.
    #[error("{downstream} {method}: circuit {downstream} is open")]
    CircuitOpen { downstream: Arc<str>, method: &'static str },
    /// The budget ran out before an answer came (or before the call could start).
    #[error("{downstream} {method}: no answer within the deadline")]
    DeadlineExceeded { downstream: Arc<str>, method: &'static str },
    /// No replica of the downstream is known, or none reports SERVING.
    #[error("{downstream} {method}: no replica is serving ({known} known)")]
    NoEndpoint { downstream: Arc<str>, method: &'static str, known: usize },
}

impl CallError {
    /// The gRPC code the failure amounts to.
    pub fn code(&self) -> Code {
        match self {
            CallError::Status { status, .. } => status.code(),
            CallError::CircuitOpen { .. } | CallError::NoEndpoint { .. } => Code::Unavailable,
            CallError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        }
    }

    /// The downstream could not answer (down, open circuit, out of time, shedding load,
    /// failing inside), as opposed to answering that the request is wrong or names nothing.
    pub fn is_outage(&self) -> bool {
        matches!(
            self.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Internal
                | Code::Unknown
                | Code::DataLoss
                | Code::Cancelled
        )
    }

    /// What the failure means to the caller's caller: an outage is UNAVAILABLE (or
    /// DEADLINE_EXCEEDED); any other answer means this service sent something the downstream
    /// refused, which is this service's bug.
    pub fn kind(&self) -> ErrorKind {
        match self.code() {
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            _ if self.is_outage() => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid address {address:?} for {what}: {reason}")]
pub struct AddressError {
    pub what: String,
    pub address: String,
    pub reason: String,
}

/// A single channel that connects on first use and reconnects on its own, for tools (the demo
/// seed, tests) rather than service-to-service calls. `address` is `host:port` or a full
/// `http://host:port` URI.
pub fn lazy_channel(what: &str, address: &str, connect_timeout: Duration) -> Result<Channel, AddressError> {
    let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| AddressError {
        what: what.to_owned(),
        address: address.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Asks a server's health service whether `service` is SERVING.
pub async fn check_serving(channel: Channel, service: &str) -> Result<(), String> {
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
    request.set_timeout(Duration::from_secs(1));
    match client.check(request).await {
        Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(response) => Err(format!("{service} is {:?}", response.get_ref().status())),
        Err(status) => Err(format!("{service} unreachable: {}", status.message())),
    }
}

/// The largest answer a client decodes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// The [`SendFn`](rpc::SendFn) of a generated client's method:
/// `send!(ContentServiceClient::get_item)`.
#[macro_export]
macro_rules! send {
    ($client:ident :: $method:ident) => {
        |channel, request| {
            ::std::boxed::Box::pin(async move {
                $client::new(channel).max_decoding_message_size($crate::client::MAX_ANSWER_BYTES).$method(request).await
            })
        }
    };
}
