//! Calls to other services.
//!
//! Each downstream service is a [`Downstream`]: its replicas (resolved from a list of addresses
//! or DNS names, refreshed, each followed through its health `Watch`), one circuit breaker and
//! one retry budget. Each RPC a service makes is an [`Rpc`], a tower service from the domain
//! request to the domain response with a typed [`CallError`], assembled per method:
//!
//! ```text
//! deadline (the caller's remaining budget, less a reserve) → retry (idempotent methods only,
//! jittered backoff, budget) → circuit breaker → p2c over healthy endpoints → tonic
//! ```
//!
//! Nothing sits on the raw HTTP channel: every layer sees gRPC codes.

mod endpoints;
mod retry;
mod rpc;

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use endpoints::{EndpointHealth, Endpoints};
pub use retry::{RetryConfig, Retrying};
pub use rpc::{Downstream, Method, Rpc};

use crate::breaker::BreakerConfig;
use crate::metrics::code_name;

/// How a service reaches one downstream service.
#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    /// Comma-separated `host:port` (or `http://host:port`) addresses; names are resolved again
    /// every `refresh`, so a Kubernetes headless Service yields every ready pod.
    pub address: String,
    pub connect_timeout: Duration,
    /// Upper bound of one call when the incoming call has no deadline of its own.
    pub timeout: Duration,
    pub refresh: Duration,
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
}

impl DownstreamConfig {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            refresh: Duration::from_secs(5),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

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

    /// The downstream's own message (for a status), or what happened.
    pub fn message(&self) -> String {
        match self {
            CallError::Status { status, .. } => status.message().to_owned(),
            other => other.to_string(),
        }
    }

    /// The downstream said the request itself is wrong or names nothing (as opposed to being
    /// unable to answer).
    pub fn is_answer(&self) -> bool {
        matches!(self, CallError::Status { status, .. } if crate::breaker::classify(status.code(), false) == crate::breaker::Verdict::Success)
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
