//! Channels to downstream services and the readiness check that follows their health.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Timeouts of one downstream channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelConfig {
    pub connect_timeout: Duration,
    /// Upper bound of any call on the channel.
    pub request_timeout: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(1), request_timeout: Duration::from_secs(5) }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid address {address:?} for {what}: {reason}")]
pub struct AddressError {
    pub what: String,
    pub address: String,
    pub reason: String,
}

/// A channel that connects on first use (so services can start in any order) and reconnects
/// on its own. `address` is `host:port` or a full `http://host:port` URI.
pub fn lazy_channel(what: &str, address: &str, config: ChannelConfig) -> Result<Channel, AddressError> {
    let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| AddressError {
        what: what.to_owned(),
        address: address.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Asks a downstream's health service whether `service` is SERVING.
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
