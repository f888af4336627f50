//! Databases for tests (feature `testing`): SQLite in a temporary directory, and a fresh, empty
//! PostgreSQL database per test when `ALP_TEST_POSTGRES_URL` names a server (the test command
//! starts one and sets it). With `ALP_REQUIRE_POSTGRES=1` a missing URL fails instead of skipping,
//! so CI cannot pass without exercising PostgreSQL.

use std::future::Future;
use std::time::Duration;

use sqlx::Connection;

use crate::db::{Database, DatabaseConfig, Dialect, MigrationStep, sqlite_url};

/// One test database; a SQLite file lives as long as this value.
#[derive(Debug)]
pub struct TestDatabase {
    pub config: DatabaseConfig,
    pub dialect: Dialect,
    _dir: Option<tempfile::TempDir>,
}

fn config(url: String, service: &str) -> DatabaseConfig {
    DatabaseConfig {
        url,
        application_name: format!("alp-{service}-test"),
        max_connections: 10,
        min_connections: 1,
        acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(10),
    }
}

/// The PostgreSQL admin URL, or None when PostgreSQL tests are not wanted on this machine.
///
/// # Panics
/// When `ALP_REQUIRE_POSTGRES=1` and `ALP_TEST_POSTGRES_URL` is unset.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("ALP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("ALP_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "ALP_REQUIRE_POSTGRES=1 but ALP_TEST_POSTGRES_URL is not set"
            );
            eprintln!("skipping PostgreSQL: ALP_TEST_POSTGRES_URL is not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// A SQLite database in a fresh temporary directory.
///
/// # Panics
/// When no temporary directory can be created.
pub fn sqlite(service: &str) -> TestDatabase {
    #[allow(clippy::expect_used)]
    let dir = tempfile::tempdir().expect("create a temporary directory");
    TestDatabase {
        config: config(sqlite_url(dir.path(), &format!("{service}.db")), service),
        dialect: Dialect::Sqlite,
        _dir: Some(dir),
    }
}

/// A fresh, empty database on the PostgreSQL server behind `admin_url`.
///
/// # Panics
/// When the server cannot be reached or the database cannot be created.
#[allow(clippy::expect_used)]
pub async fn postgres(admin_url: &str, service: &str) -> TestDatabase {
    let name = format!("alp_test_{}_{}", service, uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::postgres::PgConnection::connect(admin_url).await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let _closed = admin.close().await;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    TestDatabase { config: config(format!("{base}/{name}"), service), dialect: Dialect::Postgres, _dir: None }
}

/// SQLite, and PostgreSQL when it is available: the backends every store must pass on.
pub async fn backends(service: &str) -> Vec<TestDatabase> {
    let mut all = vec![sqlite(service)];
    if let Some(admin) = postgres_admin_url() {
        all.push(postgres(&admin, service).await);
    }
    all
}

/// Runs `check` against a migrated database of every backend, naming the backend when it fails.
///
/// # Panics
/// When a database cannot be opened or migrated, or when `check` panics.
#[allow(clippy::expect_used)]
pub async fn on_every_backend<F, Fut>(service: &str, migrations: &[MigrationStep], check: F)
where
    F: Fn(Database) -> Fut,
    Fut: Future<Output = ()>,
{
    for test_db in backends(service).await {
        let dialect = test_db.dialect;
        eprintln!("{service} store on {dialect:?}");
        let db = Database::connect(&test_db.config).await.expect("open the test database");
        db.migrate(migrations).await.expect("migrate the test database");
        check(db.clone()).await;
        db.close().await;
    }
}
