//! The scoring service: FSRS-6 memory, Elo/Rasch ability and difficulty, candidate ranking.

mod api;
mod error;
pub mod model;
mod store;
mod validate;

use std::future::Future;

use alp_proto::scoring::v1::scoring_service_server::{self, ScoringServiceServer};
use alp_runtime::db::{Database, DatabaseConfig, MigrationStep, PoolDefaults};
use alp_runtime::server::{self, Readiness, ServeError, ServerConfig};
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use api::ScoringApi;
pub use error::ScoringError;
pub use store::{AppliedAttempt, AttemptEffects, Estimate, ScoringStore};

pub const SERVICE_NAME: &str = scoring_service_server::SERVICE_NAME;

/// Scoring is CPU-bound and reads a learner's model once per request: 40 / 8 per pod leaves
/// room for 4-6 pods on one PostgreSQL.
pub const POOL_DEFAULTS: PoolDefaults = PoolDefaults { max_connections: 40, min_connections: 8 };

pub const MIGRATIONS: &[MigrationStep] = &[MigrationStep {
    version: 1,
    description: "scoring",
    postgres: include_str!("../migrations/postgres/0001_scoring.sql"),
    sqlite: include_str!("../migrations/sqlite/0001_scoring.sql"),
}];

#[derive(Debug, Clone)]
pub struct ScoringConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
}

pub async fn serve(config: ScoringConfig, listener: TcpListener) -> Result<(), ServeError> {
    serve_with_shutdown(config, listener, alp_runtime::shutdown::signal()).await
}

pub async fn serve_with_shutdown(
    config: ScoringConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let db = Database::connect(&config.database).await?;
    db.ensure_migrated("scoring", MIGRATIONS).await?;
    let api = ScoringApi::new(ScoringStore::new(db.clone()));
    let routes = Routes::new(ScoringServiceServer::new(api).max_decoding_message_size(config.server.max_message_bytes));
    let readiness = Readiness::new().with_database(db.clone());
    let result = server::run(SERVICE_NAME, routes, &config.server, listener, readiness, shutdown).await;
    db.close().await;
    result
}
