//! The scheduler: next-item selection, attempt submission, and the log of record of attempts.

mod api;
pub mod cache;
mod catalogue;
mod downstream;
mod error;
mod group_commit;
mod outbox;
mod phase;
mod score_request;
mod store;
mod submit_attempt;

use std::future::Future;

use alp_proto::scheduler::v1::scheduler_service_server::{self, SchedulerServiceServer};
use alp_runtime::db::{Database, DatabaseConfig, MigrationStep, PoolDefaults};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::server::{self, Readiness, ServeError, ServerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use api::SchedulerApi;
pub use downstream::DownstreamConfigs;
pub use error::SchedulerError;
pub use group_commit::{GroupCommit, GroupCommitConfig};
pub use outbox::RelayConfig;
pub use store::{AttemptRecord, AttemptRow, Consumer, ExportFilter, MemoryRow, SchedulerStore};

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
    MigrationStep {
        version: 4,
        description: "outbox consumers",
        postgres: include_str!("../migrations/postgres/0004_outbox_consumers.sql"),
        sqlite: include_str!("../migrations/sqlite/0004_outbox_consumers.sql"),
    },
    MigrationStep {
        version: 5,
        description: "fewer index writes",
        postgres: include_str!("../migrations/postgres/0005_fewer_index_writes.sql"),
        sqlite: include_str!("../migrations/sqlite/0005_fewer_index_writes.sql"),
    },
    MigrationStep {
        version: 6,
        description: "hot memory updates",
        postgres: include_str!("../migrations/postgres/0006_hot_memory_updates.sql"),
        sqlite: include_str!("../migrations/sqlite/0006_hot_memory_updates.sql"),
    },
];

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    /// The shared Redis Cluster; None keeps caches in process.
    pub redis: Option<RedisConfig>,
    /// The content, scoring and user services.
    pub downstream: DownstreamConfigs,
    /// How outbox rows reach scoring and the user service.
    pub outbox: RelayConfig,
}

pub async fn serve(config: SchedulerConfig, listener: TcpListener) -> Result<(), ServeError> {
    serve_with_shutdown(config, listener, alp_runtime::shutdown::signal()).await
}

/// Runs the scheduler until `shutdown` resolves, then drains. SERVING needs the database only:
/// content, scoring and user each have a health entry of their own
/// (`alp.scheduler.v1.SchedulerService/scoring`, ...). Without scoring NextItems answers in
/// degraded mode, attempts fail fast and recorded ones wait in the outbox; without user,
/// progress waits in the outbox; without content, calls fail fast.
pub async fn serve_with_shutdown(
    config: SchedulerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let db = Database::connect(&config.database).await?;
    db.ensure_migrated("scheduler", MIGRATIONS).await?;
    let store = store::SchedulerStore::new(db.clone());
    let redis = Redis::connect_optional(config.redis.as_ref(), REDIS_PREFIX).map_err(ServeError::Setup)?;
    let downstream = downstream::Downstreams::connect(config.downstream.clone(), redis.as_ref())
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let dependencies = [downstream.content.clone(), downstream.scoring.clone(), downstream.user.clone()];
    let relay = |consumer| outbox::Relay::new(consumer, config.outbox, store.clone(), downstream.deliver_to(consumer));
    let (scoring_outbox, user_outbox) = (relay(outbox::Consumer::Scoring), relay(outbox::Consumer::User));
    let stop_relays = CancellationToken::new();
    let relays = tokio::spawn({
        let (scoring, user, stop) = (scoring_outbox.clone(), user_outbox.clone(), stop_relays.clone());
        async move { tokio::join!(scoring.run(stop.clone()), user.run(stop)) }
    });

    let caches = cache::SchedulerCaches::new(redis.clone());
    let attempts = submit_attempt::AttemptRecorder::new(
        store.clone(),
        downstream.clone(),
        caches.clone(),
        scoring_outbox.clone(),
        user_outbox,
    );
    let api = SchedulerApi::new(store, downstream, caches, attempts, scoring_outbox);
    let routes =
        Routes::new(SchedulerServiceServer::new(api).max_decoding_message_size(config.server.max_message_bytes));
    let readiness = dependencies
        .into_iter()
        .fold(Readiness::new().with_database(db.clone()), Readiness::with_downstream)
        .with_redis(redis);
    let result = server::run(SERVICE_NAME, routes, &config.server, listener, readiness, shutdown).await;
    stop_relays.cancel();
    let _ = relays.await;
    db.close().await;
    result
}
