//! `alp bench reference`: the bare fan-out this hardware allows, to set NextItems against. A
//! plain tonic server (no admission control, no breakers, no caches) answers NextItems with one
//! Redis GET and three unary gRPC calls to three bare backends in turn, then returns five items
//! of the size NextItems returns. The load generator drives it exactly as it drives the suite.

use std::net::SocketAddr;
use std::time::Duration;

use alp_proto::scheduler::v1::scheduler_service_server::{SchedulerService, SchedulerServiceServer};
use alp_proto::scheduler::v1::{
    ExportAttemptsRequest, ExportAttemptsResponse, ListDueItemsRequest, ListDueItemsResponse, NextItem,
    NextItemsRequest, NextItemsResponse, SubmitAttemptRequest, SubmitAttemptResponse,
};
use alp_runtime::client::lazy_channel;
use alp_runtime::redis::{Redis, RedisArgs};
use alp_runtime::server::incoming;
use anyhow::Context;
use fred::interfaces::KeysInterface;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Clone, clap::Args)]
pub struct ReferenceArgs {
    /// Where the reference NextItems listens.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
    /// The Redis Cluster the GET goes to (required).
    #[command(flatten)]
    pub redis: RedisArgs,
}

const ONLY_NEXT_ITEMS: &str = "the fan-out reference server answers NextItems only";

struct FanOut {
    redis: Redis,
    key: String,
    backends: Vec<HealthClient<Channel>>,
    prompt: String,
}

#[tonic::async_trait]
impl SchedulerService for FanOut {
    async fn next_items(&self, request: Request<NextItemsRequest>) -> Result<Response<NextItemsResponse>, Status> {
        let request = request.into_inner();
        let _cached: Option<String> =
            self.redis.pool().get(&self.key).await.map_err(|e| Status::unavailable(e.to_string()))?;
        for backend in &self.backends {
            backend.clone().check(HealthCheckRequest { service: String::new() }).await?;
        }
        let course = request.course_id.strip_prefix("course-").unwrap_or("000");
        let items = (0..request.count.clamp(1, 50))
            .map(|k| NextItem {
                item_id: format!("c{course}-i{k:05}"),
                prompt: self.prompt.clone(),
                choices: vec!["bala".to_owned(), "kera".to_owned(), "pimo".to_owned(), "suda".to_owned()],
                skill_ids: vec![format!("c{course}-s000")],
                ..Default::default()
            })
            .collect();
        Ok(Response::new(NextItemsResponse { items, ..Default::default() }))
    }

    async fn submit_attempt(
        &self,
        _: Request<SubmitAttemptRequest>,
    ) -> Result<Response<SubmitAttemptResponse>, Status> {
        Err(Status::failed_precondition(ONLY_NEXT_ITEMS))
    }

    async fn list_due_items(&self, _: Request<ListDueItemsRequest>) -> Result<Response<ListDueItemsResponse>, Status> {
        Err(Status::failed_precondition(ONLY_NEXT_ITEMS))
    }

    type ExportAttemptsStream = tokio_stream::Empty<Result<ExportAttemptsResponse, Status>>;

    async fn export_attempts(
        &self,
        _: Request<ExportAttemptsRequest>,
    ) -> Result<Response<Self::ExportAttemptsStream>, Status> {
        Err(Status::failed_precondition(ONLY_NEXT_ITEMS))
    }
}

/// Serves the reference until Ctrl-C or SIGTERM.
pub async fn run(args: &ReferenceArgs) -> anyhow::Result<()> {
    let config =
        args.redis.config().map_err(anyhow::Error::msg)?.context("--redis-nodes: the reference needs Redis")?;
    let redis = Redis::connect(&config, "reference").map_err(anyhow::Error::msg)?;
    let key = redis.key("{reference}:value");
    redis.pool().set::<(), _, _>(&key, "x".repeat(200), None, None, false).await.context("cannot write to Redis")?;
    let mut backends = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (_, health) = tonic_health::server::health_reporter();
        tokio::spawn(Server::builder().tcp_nodelay(true).add_service(health).serve_with_incoming(incoming(listener)));
        backends.push(HealthClient::new(lazy_channel("backend", &address.to_string(), Duration::from_secs(1))?));
    }
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %args.listen, "fan-out reference listening");
    let service =
        FanOut { redis, key, backends, prompt: "Bala kera pimo suda — tani rovu zeka mifo lune pasi?".to_owned() };
    Server::builder()
        .tcp_nodelay(true)
        .add_service(SchedulerServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener), alp_runtime::shutdown::signal())
        .await?;
    Ok(())
}
