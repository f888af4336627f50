//! The content service: courses, skills with prerequisites, items; delivery and full-text search.

mod api;
mod error;
mod store;
mod validate;

use std::future::Future;

use alp_proto::content::v1::content_service_server::{self, ContentServiceServer};
use alp_runtime::db::{Database, DatabaseConfig, MigrationStep, PoolDefaults};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::server::{self, Readiness, ServeError, ServerConfig};
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use api::{ContentApi, ITEM_CACHE};
pub use error::ContentError;
pub use store::{ContentStore, SearchQuery};

/// The health entry and the proto service name.
pub const SERVICE_NAME: &str = content_service_server::SERVICE_NAME;

/// Content is read-heavy and mostly cacheable: 50 / 10 per pod covers 4-6 pods within a
/// PostgreSQL's default 100-connection budget alongside a read replica.
pub const POOL_DEFAULTS: PoolDefaults = PoolDefaults { max_connections: 50, min_connections: 10 };

pub const MIGRATIONS: &[MigrationStep] = &[
    MigrationStep {
        version: 1,
        description: "content",
        postgres: include_str!("../migrations/postgres/0001_content.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_content.sql"),
    },
    MigrationStep {
        version: 2,
        description: "search terms",
        postgres: include_str!("../migrations/postgres/0002_search_terms.sql"),
        sqlite: include_str!("../migrations/sqlite/0002_search_terms.sql"),
    },
];

#[derive(Debug, Clone)]
pub struct ContentConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    /// The shared Redis Cluster; None keeps caches in process.
    pub redis: Option<RedisConfig>,
}

/// The service's keys in the shared cluster start with this.
pub const REDIS_PREFIX: &str = "alp:content";

/// Runs the content service on `listener` until SIGTERM or Ctrl-C.
pub async fn serve(config: ContentConfig, listener: TcpListener) -> Result<(), ServeError> {
    serve_with_shutdown(config, listener, alp_runtime::shutdown::signal()).await
}

/// Runs the content service on `listener` until `shutdown` resolves, then drains.
pub async fn serve_with_shutdown(
    config: ContentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let db = Database::connect(&config.database).await?;
    db.ensure_migrated("content", MIGRATIONS).await?;
    let redis = Redis::connect_optional(config.redis.as_ref(), REDIS_PREFIX).map_err(ServeError::Setup)?;
    let api = ContentApi::new(ContentStore::new(db.clone()), redis.clone());
    let routes = Routes::new(ContentServiceServer::new(api).max_decoding_message_size(config.server.max_message_bytes));
    let readiness = Readiness::new().with_database(db.clone()).with_redis(redis);
    let result = server::run(SERVICE_NAME, routes, &config.server, listener, readiness, shutdown).await;
    db.close().await;
    result
}
