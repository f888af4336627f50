//! Storage pools: one sqlx pool per service over PostgreSQL (production) or SQLite (embedded),
//! with explicit limits, and the service's embedded migrations.
//!
//! Stores write one SQL text for both backends (`$1` placeholders work on both; times are stored as
//! Unix milliseconds and ids as text), and ask [`Database::dialect`] only where the backends differ.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AssertSqlSafe, Transaction};

mod pool;

pub use pool::Pool;

use crate::error::StoreError;

pub type Tx = Transaction<'static, Any>;
/// A statement being bound, for helpers that bind a row's columns in one place.
pub type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Self, DbSetupError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else {
            Err(DbSetupError::Url(format!(
                "database URL must start with postgres://, postgresql:// or sqlite:, got {:?}",
                url.split(':').next().unwrap_or_default()
            )))
        }
    }

    /// A subquery of the elements of the JSON array bound at `$param`, each as `sql_type`
    /// (`BIGINT`, `TEXT`), for `IN (…)`. Unlike a list of placeholders it is one statement text
    /// for any number of values, so the statement is prepared and planned once.
    pub fn json_list(self, param: usize, sql_type: &str) -> String {
        match self {
            Dialect::Postgres => format!("SELECT value::{sql_type} FROM jsonb_array_elements_text(${param}::jsonb)"),
            Dialect::Sqlite => format!("SELECT value FROM json_each(${param})"),
        }
    }
}

/// Pool settings of one service's database.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    /// Shown in `pg_stat_activity`, e.g. `alp-scheduler`.
    pub application_name: String,
    pub max_connections: u32,
    pub min_connections: u32,
    /// How long a request waits for a pooled connection; kept below any RPC deadline.
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`.
    pub statement_timeout: Duration,
}

/// Per-service pool sizes (DESIGN.md §1); flags and env override them.
#[derive(Debug, Clone, Copy)]
pub struct PoolDefaults {
    pub max_connections: u32,
    pub min_connections: u32,
}

/// Flags and env shared by every service for its database.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// postgres://user:pass@host:port/db or sqlite:path/to/file.db
    #[arg(long = "database-url", env = "ALP_DATABASE_URL")]
    pub url: Option<String>,
    /// Largest pool size; the service's default when unset (scheduler 100, user 75, content 50, scoring 40).
    #[arg(long = "db-max-connections", env = "ALP_DB_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Connections kept open when idle; the service's default when unset (scheduler 20, user 15, content 10, scoring 8).
    #[arg(long = "db-min-connections", env = "ALP_DB_MIN_CONNECTIONS")]
    pub min_connections: Option<u32>,
    /// Longest wait for a pooled connection.
    #[arg(long = "db-acquire-timeout", env = "ALP_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = crate::time::parse_duration)]
    pub acquire_timeout: Duration,
    /// PostgreSQL statement_timeout.
    #[arg(long = "db-statement-timeout", env = "ALP_DB_STATEMENT_TIMEOUT", default_value = "10s", value_parser = crate::time::parse_duration)]
    pub statement_timeout: Duration,
}

impl DatabaseArgs {
    pub fn resolve(&self, service: &str, defaults: PoolDefaults) -> Result<DatabaseConfig, DbSetupError> {
        let url = self
            .url
            .clone()
            .ok_or_else(|| DbSetupError::Url(format!("--database-url (ALP_DATABASE_URL) is required for {service}")))?;
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        let min_connections = self.min_connections.unwrap_or(defaults.min_connections);
        if max_connections == 0 || min_connections > max_connections {
            return Err(DbSetupError::Url(format!(
                "pool sizes must satisfy 0 < min ≤ max, got min {min_connections} max {max_connections}"
            )));
        }
        Ok(DatabaseConfig {
            url,
            application_name: format!("alp-{service}"),
            max_connections,
            min_connections,
            acquire_timeout: self.acquire_timeout,
            statement_timeout: self.statement_timeout,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("{0}")]
    Url(String),
    #[error("cannot open database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot create directory for {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database schema is at version {current}, this build needs {required}: run `alp migrate {service}`")]
    Outdated { service: String, current: i64, required: i64 },
    #[error("{0}")]
    Query(#[from] StoreError),
}

/// One embedded migration step, the same version on both backends.
#[derive(Debug, Clone, Copy)]
pub struct MigrationStep {
    pub version: i64,
    pub description: &'static str,
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

/// A service's pool and the dialect of the database behind it.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    dialect: Dialect,
}

impl Database {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbSetupError> {
        install_default_drivers();
        let dialect = Dialect::from_url(&config.url)?;
        let mut max_connections = config.max_connections;
        let mut min_connections = config.min_connections;
        if dialect == Dialect::Sqlite {
            create_sqlite_parent_dir(&config.url)?;
            // One writer at a time in SQLite; a few readers beside it are all WAL can use.
            max_connections = max_connections.min(8);
            min_connections = min_connections.min(max_connections);
        }
        let app_name: String =
            config.application_name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
        let statement_timeout_ms = config.statement_timeout.as_millis();
        let busy_timeout_ms = config.acquire_timeout.as_millis().max(1000);
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(min_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            // sqlx pings every pooled connection before handing it out: a second round trip
            // per statement, more of scoring's CPU than its queries. A connection that died
            // meanwhile fails its statement instead, and the pool drops it.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                let setup = match dialect {
                    Dialect::Postgres => {
                        format!("SET application_name = '{app_name}'; SET statement_timeout = {statement_timeout_ms};")
                    }
                    // FULL: a commit is on disk before it is acknowledged, even in WAL mode.
                    Dialect::Sqlite => format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                         PRAGMA busy_timeout = {busy_timeout_ms};"
                    ),
                };
                Box::pin(async move {
                    sqlx::raw_sql(AssertSqlSafe(setup)).execute(conn).await?;
                    Ok(())
                })
            })
            .connect(&config.url)
            .await
            .map_err(DbSetupError::Connect)?;
        Ok(Self { pool: Pool::new(pool, max_connections), dialect })
    }

    /// Where single statements run.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Starts a transaction that will write. SQLite takes the write lock up front so two writers
    /// wait for each other (busy_timeout) instead of failing when a read lock must be upgraded.
    pub async fn begin_write(&self) -> Result<Tx, StoreError> {
        let tx = match self.dialect {
            Dialect::Sqlite => self.pool.sqlx().begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.sqlx().begin().await?,
        };
        Ok(tx)
    }

    /// Cheap round trip used by readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn migrator(&self, steps: &[MigrationStep]) -> Migrator {
        let migrations = steps
            .iter()
            .map(|step| {
                let sql = match self.dialect {
                    Dialect::Postgres => step.postgres,
                    Dialect::Sqlite => step.sqlite,
                };
                Migration::new(
                    step.version,
                    Cow::Borrowed(step.description),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sql),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
    }

    /// Applies pending migrations (`alp migrate`, and `alp dev` at start-up).
    pub async fn migrate(&self, steps: &[MigrationStep]) -> Result<(), DbSetupError> {
        self.migrator(steps).run(self.pool.sqlx()).await?;
        Ok(())
    }

    /// Fails when the schema is behind this build, so a pod never serves on a stale schema.
    pub async fn ensure_migrated(&self, service: &str, steps: &[MigrationStep]) -> Result<(), DbSetupError> {
        let required = steps.iter().map(|s| s.version).max().unwrap_or(0);
        let current: i64 =
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await
                .unwrap_or(0);
        if current < required {
            return Err(DbSetupError::Outdated { service: service.to_owned(), current, required });
        }
        Ok(())
    }
}

fn create_sqlite_parent_dir(url: &str) -> Result<(), DbSetupError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DbSetupError::Directory { path: path.to_owned(), source })?;
    }
    Ok(())
}

/// `rows` parenthesised rows of `columns` placeholders each, numbered from `$first`: the
/// VALUES list of a multi-row insert.
pub fn value_rows(first: usize, rows: usize, columns: usize) -> String {
    (0..rows).map(|r| format!("({})", placeholders(first + r * columns, columns))).collect::<Vec<_>>().join(", ")
}

/// `$first, $first+1, …` for an `IN (…)` list of `n` values.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// A SQLite URL for a file in `dir`, created when missing.
pub fn sqlite_url(dir: &Path, file: &str) -> String {
    format!("sqlite://{}?mode=rwc", dir.join(file).display())
}
