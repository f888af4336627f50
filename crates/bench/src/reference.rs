//! `alp bench reference`: the bare fan-out this hardware allows, to set NextItems against. A
//! plain tonic server (no admission control, no breakers, no caches) answers NextItems with one
//! GET through the services' own Redis Cluster client and three unary gRPC calls, in turn, on the
//! services' own call connections (`alp_runtime::client::Connection`), to upstreams that run as
//! processes of their own (`alp bench upstream`), as the suite's user, content and scoring do; the
//! reply is built once, five items of the size NextItems returns.
//! The load generator and h2load drive it exactly as they drive the suite.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use alp_proto::scheduler::v1::scheduler_service_server::{SchedulerService, SchedulerServiceServer};
use alp_proto::scheduler::v1::{
    ExportAttemptsRequest, ExportAttemptsResponse, ListDueItemsRequest, ListDueItemsResponse, NextItem,
    NextItemsRequest, NextItemsResponse, SubmitAttemptRequest, SubmitAttemptResponse,
};
use alp_runtime::client::{Connection, Transport};
use alp_runtime::redis::{Redis, RedisArgs};
use alp_runtime::server::incoming;
use anyhow::Context;
use fred::interfaces::KeysInterface;
use prost::Message;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Clone, clap::Args)]
pub struct ReferenceArgs {
    /// Where the reference NextItems listens.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
    /// The upstreams called in turn per request, `host:port` (`alp bench upstream`), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub upstreams: Vec<String>,
    /// Encoded size of the reply in bytes: the suite's NextItems answered 5 items of the data set
    /// in 1,096 (measured with curl on 2026-12-02).
    #[arg(long, default_value_t = 1096)]
    pub reply_bytes: usize,
    /// The Redis Cluster the GET goes to (required).
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Where the upstream's health service listens.
    #[arg(long, default_value = "127.0.0.1:50062")]
    pub listen: SocketAddr,
}

const ONLY_NEXT_ITEMS: &str = "the fan-out reference server answers NextItems only";

struct FanOut {
    redis: Redis,
    key: String,
    upstreams: Vec<HealthClient<Transport>>,
    reply: NextItemsResponse,
}

#[tonic::async_trait]
impl SchedulerService for FanOut {
    async fn next_items(&self, request: Request<NextItemsRequest>) -> Result<Response<NextItemsResponse>, Status> {
        let request = request.into_inner();
        let cached = async { self.redis.admit()?.get::<Option<String>, _>(&self.key).await };
        cached.await.map_err(|e| Status::unavailable(e.to_string()))?;
        for upstream in &self.upstreams {
            upstream.clone().check(HealthCheckRequest { service: String::new() }).await?;
        }
        // The items belong to the course asked for, as the generator checks.
        let mut reply = self.reply.clone();
        if let Some(course) = request.course_id.strip_prefix("course-").filter(|c| c.len() == 3 && c.is_ascii()) {
            for item in &mut reply.items {
                item.item_id.replace_range(1..4, course);
            }
        }
        Ok(Response::new(reply))
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

/// Five items (of course 000 until a request names its course), padded in their explanations
/// to about `bytes` encoded (at most two past it; the smallest such reply when `bytes` is below).
fn reply(bytes: usize) -> NextItemsResponse {
    let item = |k: usize| NextItem {
        item_id: format!("c000-i{k:05}"),
        score: 0.5,
        predicted_recall: 0.9,
        predicted_success: 0.7,
        prompt: "Bala kera pimo suda — tani rovu zeka mifo lune pasi?".to_owned(),
        choices: ["bala", "kera", "pimo", "suda"].map(str::to_owned).to_vec(),
        skill_ids: vec!["c000-s000".to_owned()],
        ..Default::default()
    };
    let mut reply = NextItemsResponse { items: (0..5).map(item).collect(), ..Default::default() };
    // Past the first character of each explanation, a character is a byte (a length prefix that
    // grows a byte is the rare exception), so the reply lands on `bytes` or just past it.
    for k in 0.. {
        if reply.encoded_len() >= bytes {
            break;
        }
        reply.items[k % 5].explanation.push('x');
    }
    reply
}

/// Serves a bare health service, one of the reference's upstreams, until Ctrl-C or SIGTERM.
pub async fn upstream(args: &UpstreamArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let (_, health) = tonic_health::server::health_reporter();
    Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming(listener), alp_runtime::shutdown::signal())
        .await?;
    Ok(())
}

/// Serves the reference until Ctrl-C or SIGTERM.
pub async fn run(args: &ReferenceArgs) -> anyhow::Result<()> {
    let config =
        args.redis.config().map_err(anyhow::Error::msg)?.context("--redis-nodes: the reference needs Redis")?;
    let redis = Redis::connect(&config, "reference").map_err(anyhow::Error::msg)?;
    let key = redis.key("{reference}:value");
    redis.admit()?.set::<(), _, _>(&key, "x".repeat(200), None, None, false).await.context("cannot write to Redis")?;
    let upstreams = args
        .upstreams
        .iter()
        .map(|address| {
            let resolved = address
                .to_socket_addrs()
                .with_context(|| format!("upstream address {address:?}"))?
                .next()
                .with_context(|| format!("upstream address {address:?} resolves to nothing"))?;
            Ok(HealthClient::new(Transport::new(Arc::new(Connection::new(resolved, Duration::from_secs(1))))))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %args.listen, "fan-out reference listening");
    let service = FanOut { redis, key, upstreams, reply: reply(args.reply_bytes) };
    Server::builder()
        .tcp_nodelay(true)
        .add_service(SchedulerServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener), alp_runtime::shutdown::signal())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_has_the_size_asked_for() {
        for bytes in [700, 777, 1096, 1500] {
            let size = reply(bytes).encoded_len();
            assert!((bytes..=bytes + 2).contains(&size), "asked for {bytes}, built {size}");
        }
        let smallest = reply(0).encoded_len();
        assert_eq!(reply(smallest - 1).encoded_len(), smallest);
        assert!(reply(1096).items.iter().all(|item| item.item_id.starts_with("c000-")));
    }
}
