//! The scoring service: FSRS-6 memory, Elo/Rasch ability and difficulty, candidate ranking.

mod api;
pub mod cache;
pub mod calibration;
mod error;
pub mod fitter;
pub mod model;
mod store;
mod validate;

use std::future::Future;

use alp_proto::scoring::v1::scoring_service_server::{self, ScoringServiceServer};
use alp_runtime::db::{Database, DatabaseConfig, MigrationStep, PoolDefaults};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::server::{self, Readiness, ServeError, ServerConfig};
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use api::ScoringApi;
pub use calibration::Calibrations;
pub use error::ScoringError;
pub use fitter::FitPolicy;
pub use model::attempt::{PracticePolicy, Recorded};
pub use model::mock_test::MockTestPolicy;
pub use model::ranking::RankingPolicy;
pub use store::{BatchApplied, CalibrationRow, Estimate, LearnerModels, PracticeTarget, ScoringStore, StoredFit};

pub const SERVICE_NAME: &str = scoring_service_server::SERVICE_NAME;

/// Scoring is CPU-bound and reads a learner's model once per request: 40 / 8 per pod leaves
/// room for 4-6 pods on one PostgreSQL.
pub const POOL_DEFAULTS: PoolDefaults = PoolDefaults { max_connections: 40, min_connections: 8 };

pub const MIGRATIONS: &[MigrationStep] = &[
    MigrationStep {
        version: 1,
        description: "scoring",
        postgres: include_str!("../migrations/postgres/0001_scoring.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_scoring.sql"),
    },
    MigrationStep {
        version: 2,
        description: "practice targets",
        postgres: include_str!("../migrations/postgres/0002_practice_targets.sql"),
        sqlite: include_str!("../migrations/sqlite/0002_practice_targets.sql"),
    },
    MigrationStep {
        version: 3,
        description: "learner parameters",
        postgres: include_str!("../migrations/postgres/0003_learner_parameters.sql"),
        sqlite: include_str!("../migrations/sqlite/0003_learner_parameters.sql"),
    },
    MigrationStep {
        version: 4,
        description: "calibration versions",
        postgres: include_str!("../migrations/postgres/0004_calibration_versions.sql"),
        sqlite: include_str!("../migrations/sqlite/0004_calibration_versions.sql"),
    },
];

#[derive(Debug, Clone)]
pub struct ScoringConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub policies: Policies,
    /// The shared Redis Cluster; None keeps caches in process.
    pub redis: Option<RedisConfig>,
}

/// The service's keys in the shared cluster start with this.
pub const REDIS_PREFIX: &str = "alp:scoring";

/// How items are chosen (the practice ranking, the mock-test stopping rule) and when learners'
/// own memory parameters are fitted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    pub ranking: RankingPolicy,
    pub mock_test: MockTestPolicy,
    pub fitting: FitPolicy,
}

impl Policies {
    pub fn validate(&self) -> Result<(), String> {
        self.ranking.validate()?;
        self.mock_test.validate()?;
        self.fitting.validate()
    }
}

/// Command-line settings of the policies; the defaults are those of [`Policies::default`]
/// (the recency window's `120s` excepted, which clap needs as text).
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Success rate new items are chosen for, before each learner's correction.
    #[arg(long, env = "ALP_TARGET_SUCCESS", default_value_t = RankingPolicy::default().target_success)]
    pub target_success: f64,
    /// Items answered this recently wait while anything else is available.
    #[arg(long, env = "ALP_RECENCY_WINDOW", default_value = "120s", value_parser = alp_runtime::time::parse_duration)]
    pub recency_window: std::time::Duration,
    /// Score taken off items answered within the recency window.
    #[arg(long, env = "ALP_RECENCY_PENALTY", default_value_t = RankingPolicy::default().recency_penalty)]
    pub recency_penalty: f64,
    /// Score taken off an item sharing a skill with the item just before it.
    #[arg(long, env = "ALP_SAME_SKILL_PENALTY", default_value_t = RankingPolicy::default().same_skill_penalty)]
    pub same_skill_penalty: f64,
    /// Weight of due reviews (their score is this plus an urgency of 0-1).
    #[arg(long, env = "ALP_REVIEW_WEIGHT", default_value_t = RankingPolicy::default().review_weight)]
    pub review_weight: f64,
    /// Weight of new items (times their closeness to the target, 0-1).
    #[arg(long, env = "ALP_NEW_WEIGHT", default_value_t = RankingPolicy::default().new_weight)]
    pub new_weight: f64,
    /// Weight of not-yet-due reviews (times one minus recall).
    #[arg(long, env = "ALP_EARLY_REVIEW_WEIGHT", default_value_t = RankingPolicy::default().early_review_weight)]
    pub early_review_weight: f64,
    /// First attempts on a prerequisite skill before it can count as mastered.
    #[arg(long, env = "ALP_MASTERY_ATTEMPTS", default_value_t = RankingPolicy::default().mastery_attempts)]
    pub mastery_attempts: i64,
    /// Predicted success on an average item at which a prerequisite counts as mastered.
    #[arg(long, env = "ALP_MASTERY_SUCCESS", default_value_t = RankingPolicy::default().mastery_success)]
    pub mastery_success: f64,
    /// A mock test stops once its standard error is at or below this.
    #[arg(long, env = "ALP_MOCK_TEST_STANDARD_ERROR", default_value_t = MockTestPolicy::default().target_standard_error)]
    pub mock_test_standard_error: f64,
    /// Fewest items of a mock test.
    #[arg(long, env = "ALP_MOCK_TEST_MIN_ITEMS", default_value_t = MockTestPolicy::default().min_items)]
    pub mock_test_min_items: u32,
    /// Most items of a mock test.
    #[arg(long, env = "ALP_MOCK_TEST_MAX_ITEMS", default_value_t = MockTestPolicy::default().max_items)]
    pub mock_test_max_items: u32,
    /// Fit each learner's own FSRS-6 parameters in the background as their reviews grow.
    #[arg(long, env = "ALP_FIT_PARAMETERS", default_value_t = FitPolicy::default().enabled, action = clap::ArgAction::Set)]
    pub fit_parameters: bool,
    /// Reviews (answers after an item's first) before a learner's first fit; at least 400.
    #[arg(long, env = "ALP_FIT_AFTER_REVIEWS", default_value_t = FitPolicy::default().first_after_reviews)]
    pub fit_after_reviews: i64,
}

impl PolicyArgs {
    pub fn policies(&self) -> Result<Policies, String> {
        let ranking = RankingPolicy {
            target_success: self.target_success,
            recency_window_ms: i64::try_from(self.recency_window.as_millis()).unwrap_or(i64::MAX),
            recency_penalty: self.recency_penalty,
            same_skill_penalty: self.same_skill_penalty,
            review_weight: self.review_weight,
            new_weight: self.new_weight,
            early_review_weight: self.early_review_weight,
            mastery_attempts: self.mastery_attempts,
            mastery_success: self.mastery_success,
            ..RankingPolicy::default()
        };
        let mock_test = MockTestPolicy {
            target_standard_error: self.mock_test_standard_error,
            min_items: self.mock_test_min_items,
            max_items: self.mock_test_max_items,
            ..MockTestPolicy::default()
        };
        let fitting = FitPolicy { enabled: self.fit_parameters, first_after_reviews: self.fit_after_reviews };
        let policies = Policies { ranking, mock_test, fitting };
        policies.validate()?;
        Ok(policies)
    }
}

pub async fn serve(config: ScoringConfig, listener: TcpListener) -> Result<(), ServeError> {
    serve_with_shutdown(config, listener, alp_runtime::shutdown::signal()).await
}

pub async fn serve_with_shutdown(
    config: ScoringConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    config.policies.validate().map_err(ServeError::Setup)?;
    let db = Database::connect(&config.database).await?;
    db.ensure_migrated("scoring", MIGRATIONS).await?;
    let redis = Redis::connect_optional(config.redis.as_ref(), REDIS_PREFIX).map_err(ServeError::Setup)?;
    let store = ScoringStore::new(db.clone());
    let calibrations = Calibrations::load(&store).await.map_err(|e| ServeError::Setup(format!("calibrations: {e}")))?;
    calibrations.follow(store.clone());
    let api = ScoringApi::new(store, calibrations, config.policies.clone(), redis.clone());
    let routes = Routes::new(ScoringServiceServer::new(api).max_decoding_message_size(config.server.max_message_bytes));
    let readiness = Readiness::new().with_database(db.clone()).with_redis(redis);
    let result = server::run(SERVICE_NAME, routes, &config.server, listener, readiness, shutdown).await;
    db.close().await;
    result
}
