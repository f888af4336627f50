//! The scheduler: next-item selection, attempt submission, and the log of record of attempts.

mod api;
pub mod cache;
mod downstream;
mod error;
mod outbox;
mod store;

use std::future::Future;

use alp_proto::content::v1::content_service_server::SERVICE_NAME as CONTENT_SERVICE;
use alp_proto::scheduler::v1::scheduler_service_server::{self, SchedulerServiceServer};
use alp_proto::scoring::v1::scoring_service_server::SERVICE_NAME as SCORING_SERVICE;
use alp_runtime::clients::{ChannelConfig, check_serving, lazy_channel};
use alp_runtime::db::{Database, DatabaseConfig, MigrationStep, PoolDefaults};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::server::{self, Readiness, ServeError, ServerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use api::SchedulerApi;
pub use error::SchedulerError;
pub use store::{AttemptRow, ExportFilter, MemoryRow, SchedulerStore};

pub const SERVICE_NAME: &str = scheduler_service_server::SERVICE_NAME;

/// The service's keys in the shared cluster start with this.
pub const REDIS_PREFIX: &str = "alp:scheduler";

/// DESIGN.md §1: 100 open / 20 idle per pod.
pub const POOL_DEFAULTS: PoolDefaults = PoolDefaults { max_connections: 100, min_connections: 20 };

pub const MIGRATIONS: &[MigrationStep] = &[
    MigrationStep {
        version: 1,
        description: "scheduler",
        postgres: include_str!("../migrations/postgres/0001_scheduler.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_scheduler.sql"),
    },
    MigrationStep {
        version: 2,
        description: "memory phase",
        postgres: include_str!("../migrations/postgres/0002_memory_phase.sql"),
        sqlite: include_str!("../migrations/sqlite/0002_memory_phase.sql"),
    },
    MigrationStep {
        version: 3,
        description: "knowledge and mock tests",
        postgres: include_str!("../migrations/postgres/0003_knowledge_and_mock_tests.sql"),
        sqlite: include_str!("../migrations/sqlite/0003_knowledge_and_mock_tests.sql"),
    },
];

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    /// The shared Redis Cluster; None keeps caches in process.
    pub redis: Option<RedisConfig>,
    pub content_address: String,
    pub scoring_address: String,
    pub user_address: String,
    pub channel: ChannelConfig,
}

pub async fn serve(config: SchedulerConfig, listener: TcpListener) -> Result<(), ServeError> {
    serve_with_shutdown(config, listener, alp_runtime::shutdown::signal()).await
}

/// Runs the scheduler until `shutdown` resolves, then drains. SERVING needs the database,
/// content and scoring; the user service only receives progress, through the outbox, so its
/// outage delays progress and does not stop the scheduler.
pub async fn serve_with_shutdown(
    config: SchedulerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let channel = |what: &str, address: &str| {
        lazy_channel(what, address, config.channel).map_err(|e| ServeError::Setup(e.to_string()))
    };
    let content = channel("content", &config.content_address)?;
    let scoring = channel("scoring", &config.scoring_address)?;
    let user = channel("user", &config.user_address)?;

    let db = Database::connect(&config.database).await?;
    db.ensure_migrated("scheduler", MIGRATIONS).await?;
    let store = store::SchedulerStore::new(db.clone());
    let downstream = downstream::Downstream::new(content.clone(), scoring.clone(), user);
    let relay = outbox::OutboxRelay::new(store.clone(), downstream.user.clone());
    let stop_relay = CancellationToken::new();
    let relay_task = tokio::spawn(relay.clone().run(stop_relay.clone()));

    let redis = Redis::connect_optional(config.redis.as_ref(), REDIS_PREFIX).map_err(ServeError::Setup)?;
    let api = SchedulerApi::new(store, downstream, relay, cache::SchedulerCaches::new(redis.clone()));
    let routes =
        Routes::new(SchedulerServiceServer::new(api).max_decoding_message_size(config.server.max_message_bytes));
    let readiness = Readiness::new()
        .with_database(db.clone())
        .with_check("content", move || check_serving(content.clone(), CONTENT_SERVICE))
        .with_check("scoring", move || check_serving(scoring.clone(), SCORING_SERVICE))
        .with_redis(redis);
    let result = server::run(SERVICE_NAME, routes, &config.server, listener, readiness, shutdown).await;
    stop_relay.cancel();
    let _ = relay_task.await;
    db.close().await;
    result
}
