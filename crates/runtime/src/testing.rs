//! Databases for tests (feature `testing`): SQLite in a temporary directory, and a fresh, empty
//! PostgreSQL database per test when `ALP_TEST_POSTGRES_URL` names a server (the test command
//! starts one and sets it). With `ALP_REQUIRE_POSTGRES=1` a missing URL fails instead of skipping,
//! so CI cannot pass without exercising PostgreSQL.

use std::future::Future;
use std::time::Duration;

use sqlx::Connection;

use crate::db::{Database, DatabaseConfig, Dialect, MigrationStep, sqlite_url};

/// Polls `check` every 50 ms until it holds, for what happens in other tasks or processes
/// (pub/sub, failover, a background sweep).
///
/// # Panics
/// When it has not held within 20 s; the message names `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(20), "{what} did not happen within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

/// A real Redis Cluster for one test: three primaries and three replicas on loopback ports,
/// started from Debian's `redis-server` and joined with `redis-cli --cluster create`. The
/// nodes stop when this is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<(u16, Option<std::process::Child>)>,
    _dir: tempfile::TempDir,
}

/// Whether Redis tests must run here (`ALP_REQUIRE_REDIS=1`, set by the test command).
fn redis_required() -> bool {
    std::env::var("ALP_REQUIRE_REDIS").as_deref() == Ok("1")
}

/// A loopback port that is free, with its cluster bus port (+10000) free too. Both come from
/// below the kernel's ephemeral range (32768 up), so a port picked for one node cannot be
/// handed out again as another node's ephemeral pick; ports given out by this process are
/// remembered, for tests that start clusters at the same time.
fn free_cluster_port() -> std::io::Result<u16> {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = 10_000 + (std::process::id() % 1000) as u16 * 10;
    for offset in 0..10_000u16 {
        let port = 10_000 + (start - 10_000 + offset) % 10_000;
        if taken.contains(&port) {
            continue;
        }
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            taken.push(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free port pair for a Redis node"))
}

fn redis_cli(args: &[&str]) -> std::io::Result<String> {
    let output = std::process::Command::new("redis-cli").args(args).output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
}

impl RedisCluster {
    /// Starts a cluster; None (the test skips) when `redis-server` is missing and Redis is not
    /// required.
    ///
    /// # Panics
    /// When Redis is required but missing, or the cluster does not come up.
    pub async fn start() -> Option<Self> {
        if std::process::Command::new("redis-server").arg("--version").output().is_err() {
            assert!(!redis_required(), "ALP_REQUIRE_REDIS=1 but redis-server is not installed");
            eprintln!("skipping Redis: redis-server is not installed (scripts/test.sh installs it)");
            return None;
        }
        #[allow(clippy::expect_used)]
        let cluster = Self::launch().await.expect("start a Redis Cluster");
        Some(cluster)
    }

    async fn launch() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port()?;
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf"), "--cluster-node-timeout", "1000"])
                // Replicas sync at once (Redis 7 waits 5 s by default), so a failover can
                // promote one soon after start.
                .args(["--appendonly", "no", "--save", "", "--protected-mode", "no", "--repl-diskless-sync-delay", "0"])
                .args(["--logfile", &format!("redis-{port}.log")])
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()?;
            nodes.push((port, Some(child)));
        }
        let cluster = Self { nodes, _dir: dir };
        for (port, _) in &cluster.nodes {
            cluster
                .wait_for(|| redis_cli(&["-p", &port.to_string(), "ping"]).is_ok_and(|o| o.contains("PONG")))
                .await?;
        }
        let seeds = cluster.seeds();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(seeds.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let created = redis_cli(&args)?;
        if !created.contains("[OK]") {
            return Err(std::io::Error::other(format!("redis-cli --cluster create: {created}")));
        }
        cluster.wait_until_healthy().await?;
        Ok(cluster)
    }

    async fn wait_for(&self, ready: impl Fn() -> bool) -> std::io::Result<()> {
        for _ in 0..300 {
            if ready() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(std::io::Error::other("Redis Cluster not ready after 15 s"))
    }

    /// Waits until every running node says the cluster is ok and every replica has synced
    /// with its primary (a replica that never synced cannot take over).
    ///
    /// # Errors
    /// When it is not within 15 s.
    pub async fn wait_until_healthy(&self) -> std::io::Result<()> {
        self.wait_for(|| {
            self.running_ports().iter().all(|port| {
                let port = port.to_string();
                let ok = redis_cli(&["-p", &port, "cluster", "info"]).is_ok_and(|o| o.contains("cluster_state:ok"));
                let replication = redis_cli(&["-p", &port, "info", "replication"]).unwrap_or_default();
                ok && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            })
        })
        .await
    }

    /// `host:port` of every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|(port, _)| format!("127.0.0.1:{port}")).collect()
    }

    fn running_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|(_, child)| child.is_some()).map(|(port, _)| *port).collect()
    }

    /// The ports of the running primaries.
    pub fn primaries(&self) -> Vec<u16> {
        let Some(port) = self.running_ports().first().copied() else { return Vec::new() };
        let nodes = redis_cli(&["-p", &port.to_string(), "cluster", "nodes"]).unwrap_or_default();
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|address| address.split('@').next()?.rsplit(':').next()?.parse().ok())
            .collect()
    }

    /// Kills a node at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port
                && let Some(mut child) = child.take()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        for port in self.running_ports() {
            self.kill(port);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
