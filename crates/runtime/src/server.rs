//! The gRPC server bootstrap every service runs: health with a named entry that follows the
//! service's readiness, reflection v1 and v1alpha, the per-RPC metrics layer, message size limits
//! and a graceful drain (NOT_SERVING first, then stop accepting, then finish in-flight calls).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::coalesce::CoalescingStream;
use crate::db::Database;
use crate::deadline::AdmissionLayer;
use crate::metrics::RpcMetricsLayer;

/// Settings every service server shares.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long to answer NOT_SERVING before closing listeners, so load balancers and kubelet
    /// stop sending new calls first.
    pub drain_delay: Duration,
    /// How long in-flight calls and open streams (health watches, exports) may run on after the
    /// listener closes; whatever is still open then is cut off.
    pub shutdown_grace: Duration,
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED / OUT_OF_RANGE.
    pub max_message_bytes: usize,
    /// How often readiness (database, downstreams) is re-checked.
    pub readiness_interval: Duration,
    /// Calls served at once before new ones are shed with RESOURCE_EXHAUSTED; 0 is no bound.
    pub max_in_flight: usize,
    /// A connection older than this is asked to close (GOAWAY), so clients reconnect and new
    /// replicas and canaries get a share of the calls.
    pub max_connection_age: Duration,
    /// How long calls on an aged connection may run on before it is closed.
    pub max_connection_age_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            max_message_bytes: 4 * 1024 * 1024,
            readiness_interval: Duration::from_secs(2),
            max_in_flight: 512,
            max_connection_age: Duration::from_secs(300),
            max_connection_age_grace: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Time between NOT_SERVING and closing the listener on SIGTERM.
    #[arg(long = "drain-delay", env = "ALP_DRAIN_DELAY", default_value = "5s", value_parser = crate::time::parse_duration)]
    pub drain_delay: Duration,
    /// Longest wait for in-flight calls after the listener closes; drain delay plus this should
    /// stay below Kubernetes' terminationGracePeriodSeconds.
    #[arg(long = "shutdown-grace", env = "ALP_SHUTDOWN_GRACE", default_value = "20s", value_parser = crate::time::parse_duration)]
    pub shutdown_grace: Duration,
    /// Largest accepted request message in bytes.
    #[arg(long = "max-message-bytes", env = "ALP_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Interval between readiness checks of the database and downstream services.
    #[arg(long = "readiness-interval", env = "ALP_READINESS_INTERVAL", default_value = "2s", value_parser = crate::time::parse_duration)]
    pub readiness_interval: Duration,
    /// Calls in flight before new ones are shed with RESOURCE_EXHAUSTED (0: no bound).
    #[arg(long = "max-in-flight", env = "ALP_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Age after which a client connection is asked to reconnect (spreads load over new replicas).
    #[arg(long = "max-connection-age", env = "ALP_MAX_CONNECTION_AGE", default_value = "5m", value_parser = crate::time::parse_duration)]
    pub max_connection_age: Duration,
    /// Time calls on an aged connection get to finish; longer exports need a longer grace.
    #[arg(long = "max-connection-age-grace", env = "ALP_MAX_CONNECTION_AGE_GRACE", default_value = "2m", value_parser = crate::time::parse_duration)]
    pub max_connection_age_grace: Duration,
}

impl From<&ServerArgs> for ServerConfig {
    fn from(args: &ServerArgs) -> Self {
        Self {
            drain_delay: args.drain_delay,
            shutdown_grace: args.shutdown_grace,
            max_message_bytes: args.max_message_bytes,
            readiness_interval: args.readiness_interval,
            max_in_flight: args.max_in_flight,
            max_connection_age: args.max_connection_age,
            max_connection_age_grace: args.max_connection_age_grace,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Database(#[from] crate::db::DbSetupError),
    #[error("{0}")]
    Setup(String),
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// What must be reachable before a service reports SERVING.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Check)>,
    /// Dependencies the service can answer without, more slowly (Redis): reported on a health
    /// entry of their own, `<service>/<name>`, while the service stays SERVING.
    optional: Vec<(String, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.checks.iter().map(|(name, _)| name)).finish()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name.into(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// A dependency the service can do without; see [`Readiness`].
    pub fn with_optional_check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.optional.push((name.into(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// The shared Redis Cluster, optional: without it caches miss and the database answers.
    pub fn with_redis(self, redis: Option<crate::redis::Redis>) -> Self {
        match redis {
            Some(redis) => {
                self.with_optional_check("redis", move || {
                    let connected = redis.is_connected();
                    async move {
                        if connected { Ok(()) } else { Err("not connected; serving from the database".to_owned()) }
                    }
                })
            }
            None => self,
        }
    }

    /// A service this one calls, on an entry of its own: a pod is not taken out of rotation
    /// for a dependency's outage, which it answers by degrading or failing fast.
    pub fn with_downstream(self, downstream: crate::client::Downstream) -> Self {
        let name = downstream.name().to_owned();
        self.with_optional_check(name, move || std::future::ready(downstream.check_serving()))
    }

    /// The service's own database answers.
    pub fn with_database(self, db: Database) -> Self {
        self.with_check("database", move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|e| e.to_string()) }
        })
    }

    /// Runs every check; the first failure names the dependency.
    pub async fn check(&self) -> Result<(), String> {
        let results = futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move { fut.await.map_err(|reason| format!("{name}: {reason}")) }
        }))
        .await;
        results.into_iter().collect::<Result<Vec<()>, String>>().map(|_| ())
    }
}

/// The health entry for liveness probes: `<service>/live`, SERVING for as long as the process
/// serves RPCs, whatever its dependencies and during a drain.
pub fn liveness_entry(service_name: &str) -> String {
    format!("{service_name}/live")
}

/// Runs one service's routes on `listener` until `shutdown` resolves, then drains.
///
/// `service_name` is the health entry (the proto's full service name) that follows readiness.
pub async fn run(
    service_name: &'static str,
    routes: Routes,
    config: &ServerConfig,
    listener: TcpListener,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, _) = tonic_health::server::health_reporter();
    let closing = CancellationToken::new();
    let health_service = HealthServer::new(ClosingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        closing: closing.clone(),
    });
    reporter.set_service_status(service_name, ServingStatus::NotServing).await;
    reporter.set_service_status("", ServingStatus::NotServing).await;
    // Liveness answers SERVING whenever the server answers at all: a database outage or a drain
    // must take a pod out of rotation, never get it restarted.
    reporter.set_service_status(liveness_entry(service_name), ServingStatus::Serving).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(alp_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(alp_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let draining = CancellationToken::new();
    let monitor = tokio::spawn(monitor_readiness(
        service_name,
        reporter.clone(),
        readiness,
        config.readiness_interval,
        draining.clone(),
    ));

    let address = listener.local_addr().map_err(|e| ServeError::Setup(e.to_string()))?;
    tracing::info!(service = service_name, %address, "listening");

    let drain_delay = config.drain_delay;
    let drain_reporter = reporter.clone();
    let drain_token = draining.clone();
    let signal = async move {
        shutdown.await;
        drain_token.cancel();
        drain_reporter.set_service_status(service_name, ServingStatus::NotServing).await;
        drain_reporter.set_service_status("", ServingStatus::NotServing).await;
        tracing::info!(service = service_name, delay_ms = drain_delay.as_millis() as u64, "draining");
        tokio::time::sleep(drain_delay).await;
        // Watchers have seen NOT_SERVING by now; their streams must end for the drain to finish.
        closing.cancel();
    };

    let routes = routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
    let serving = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_connection_age(config.max_connection_age)
        .max_connection_age_grace(config.max_connection_age_grace)
        .layer(RpcMetricsLayer)
        .layer(AdmissionLayer::new(config.max_in_flight))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener), signal);
    // Graceful shutdown waits for every open stream, and a health Watch never ends by itself.
    let grace = config.shutdown_grace;
    let cut_off = async {
        draining.cancelled().await;
        tokio::time::sleep(drain_delay + grace).await;
    };
    let result = tokio::select! {
        result = serving => result,
        () = cut_off => {
            tracing::warn!(service = service_name, grace_ms = grace.as_millis() as u64, "calls still open after the shutdown grace; closing them");
            Ok(())
        }
    };
    draining.cancel();
    let _ = monitor.await;
    tracing::info!(service = service_name, "stopped");
    result.map_err(ServeError::from)
}

/// The health service, whose `Watch` streams end when the server closes (tonic's never end,
/// which would hold every graceful shutdown for its whole grace period).
struct ClosingHealth {
    inner: HealthService,
    closing: CancellationToken,
}

#[tonic::async_trait]
impl Health for ClosingHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.inner.check(request).await
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        let closing = self.closing.clone().cancelled_owned();
        Ok(tonic::Response::new(Box::pin(stream.take_until(closing))))
    }
}

/// Accepted connections with Nagle's algorithm off, each answer sent in one write
/// ([`CoalescingStream`]). tonic's `tcp_nodelay` applies only to listeners it binds itself;
/// without it, a response written in two segments waits for the peer's delayed ACK (40 ms on
/// Linux). Public for servers built outside [`run`] (the benchmark's reference server).
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<CoalescingStream<tokio::net::TcpStream>>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(CoalescingStream::server(stream))
    })
}

async fn monitor_readiness(
    service_name: &'static str,
    reporter: HealthReporter,
    readiness: Readiness,
    interval: Duration,
    draining: CancellationToken,
) {
    let mut serving: Option<bool> = None;
    let mut optional_up: Vec<Option<bool>> = vec![None; readiness.optional.len()];
    loop {
        let outcome = tokio::select! {
            () = draining.cancelled() => return,
            outcome = readiness.check() => outcome,
        };
        if draining.is_cancelled() {
            return;
        }
        for ((name, check), up) in readiness.optional.iter().zip(optional_up.iter_mut()) {
            let result = check().await;
            let now_up = result.is_ok();
            metrics::gauge!("alp_dependency_up", "service" => service_name, "dependency" => name.clone())
                .set(f64::from(u8::from(now_up)));
            if *up != Some(now_up) {
                let entry = format!("{service_name}/{name}");
                let status = if now_up { ServingStatus::Serving } else { ServingStatus::NotServing };
                reporter.set_service_status(&entry, status).await;
                match &result {
                    Ok(()) => tracing::info!(service = service_name, dependency = %name, "dependency up"),
                    Err(reason) => {
                        tracing::warn!(service = service_name, dependency = %name, %reason, "dependency down")
                    }
                }
                *up = Some(now_up);
            }
        }
        let ready = outcome.is_ok();
        if serving != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(service_name, status).await;
            reporter.set_service_status("", status).await;
            match &outcome {
                Ok(()) => tracing::info!(service = service_name, "ready: SERVING"),
                Err(reason) => tracing::warn!(service = service_name, %reason, "not ready: NOT_SERVING"),
            }
            serving = Some(ready);
        }
        tokio::select! {
            () = draining.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
