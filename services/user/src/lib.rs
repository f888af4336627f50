//! The user service: learners, enrolments and progress aggregates.

mod api;
mod error;
mod store;
mod validate;

use std::future::Future;

use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::content_service_server::SERVICE_NAME as CONTENT_SERVICE;
use alp_proto::user::v1::user_service_server::{self, UserServiceServer};
use alp_runtime::client::{Downstream, DownstreamConfig, Method};
use alp_runtime::db::{Database, DatabaseConfig, MigrationStep, PoolDefaults};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::server::{self, Readiness, ServeError, ServerConfig};
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use api::UserApi;
pub use error::UserError;
pub use store::{LearnerChanges, RecordOutcome, UserStore};

pub const SERVICE_NAME: &str = user_service_server::SERVICE_NAME;

/// DESIGN.md §1: 75 open / 15 idle per pod.
pub const POOL_DEFAULTS: PoolDefaults = PoolDefaults { max_connections: 75, min_connections: 15 };

pub const MIGRATIONS: &[MigrationStep] = &[
    MigrationStep {
        version: 1,
        description: "user",
        postgres: include_str!("../migrations/postgres/0001_user.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_user.sql"),
    },
    MigrationStep {
        version: 2,
        description: "progress without foreign keys",
        postgres: include_str!("../migrations/postgres/0002_progress_without_foreign_keys.sql"),
        sqlite: include_str!("../migrations/sqlite/0002_progress_without_foreign_keys.sql"),
    },
];

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    /// The content service, asked whether a course exists on enrolment.
    pub content: DownstreamConfig,
    /// The shared Redis Cluster; None keeps caches in process.
    pub redis: Option<RedisConfig>,
}

/// The service's keys in the shared cluster start with this.
pub const REDIS_PREFIX: &str = "alp:user";

pub async fn serve(config: UserConfig, listener: TcpListener) -> Result<(), ServeError> {
    serve_with_shutdown(config, listener, alp_runtime::shutdown::signal()).await
}

/// Runs the user service until `shutdown` resolves, then drains. Readiness follows the database
/// only: an unavailable content service fails enrolments, not the rest.
pub async fn serve_with_shutdown(
    config: UserConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let content = Downstream::connect("content", CONTENT_SERVICE, config.content.clone())
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let get_course = content.rpc(Method::idempotent("GetCourse"), alp_runtime::send!(ContentServiceClient::get_course));
    let db = Database::connect(&config.database).await?;
    db.ensure_migrated("user", MIGRATIONS).await?;
    let redis = Redis::connect_optional(config.redis.as_ref(), REDIS_PREFIX).map_err(ServeError::Setup)?;
    let api = UserApi::new(UserStore::new(db.clone()), get_course, redis.clone());
    let routes = Routes::new(UserServiceServer::new(api).max_decoding_message_size(config.server.max_message_bytes));
    let readiness = Readiness::new().with_database(db.clone()).with_downstream(content).with_redis(redis);
    let result = server::run(SERVICE_NAME, routes, &config.server, listener, readiness, shutdown).await;
    db.close().await;
    result
}
