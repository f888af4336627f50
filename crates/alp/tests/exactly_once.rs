//! Exactly once across crashes. An attempt's commit in the scheduler is its only durable write
//! before the answer; scoring's models and the learner's progress follow from the outbox. Under
//! load, with rows committed and not yet applied, each process is killed (`kill -9`) and
//! restarted, and PostgreSQL is restarted with `pg_ctl restart -m immediate`. Then the three
//! databases are reconciled: every acknowledged attempt recorded once, applied once by scoring
//! and counted once in progress. Each fault prints a `FAULT` line for the test script's report.
//!
//! The test starts a PostgreSQL of its own (it restarts it), from `ALP_TEST_PG_BIN` or the
//! newest `/usr/lib/postgresql/*/bin`; without one it is skipped unless `ALP_REQUIRE_POSTGRES`
//! is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::{NextItemsRequest, SubmitAttemptRequest};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::{CreateLearnerRequest, EnrolLearnerRequest, Learner};
use alp_runtime::db::{Database, DatabaseConfig};
use common::{channel, wait_serving};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const ALP: &str = env!("CARGO_BIN_EXE_alp");
const COURSE: &str = "arithmetic";
const LEARNERS: usize = 6;

fn report(line: String) {
    println!("FAULT {line}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("fault-report.txt")) {
        use std::io::Write;
        let _ = writeln!(file, "{line}");
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A PostgreSQL server of this test's own, durable (fsync on), on a loopback port.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    fn binaries() -> Option<PathBuf> {
        if let Ok(bin) = std::env::var("ALP_TEST_PG_BIN") {
            return Some(PathBuf::from(bin));
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        found.sort_by_key(|p| p.to_string_lossy().split('/').nth(4).and_then(|v| v.parse::<u32>().ok()));
        found.pop()
    }

    /// Runs a PostgreSQL program as the postgres user when this is root (PostgreSQL refuses root).
    fn run(&self, program: &str, args: &[&str]) {
        let (ok, stderr) = self.try_run(program, args);
        assert!(ok, "{program} {args:?}: {stderr}");
    }

    fn try_run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let binary = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            std::process::Command::new(binary)
        };
        match command.args(args).stdout(Stdio::null()).output() {
            Ok(output) => (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned()),
            Err(error) => (false, error.to_string()),
        }
    }

    fn start() -> Option<Postgres> {
        let bin = Self::binaries()?;
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port().port();
        let pg = Postgres { bin, dir, port };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        pg.pg_ctl(&["start"]);
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg_ctl(&self, action: &[&str]) {
        let options =
            format!("-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on", self.port, self.dir.path().display());
        let (data, log) = (self.data(), self.dir.path().join("log").display().to_string());
        let mut args = vec!["-D", &data, "-w", "-l", &log, "-o", &options];
        args.extend_from_slice(action);
        self.run("pg_ctl", &args);
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        self.try_run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}

async fn database(url: &str) -> Database {
    let config = DatabaseConfig {
        url: url.to_owned(),
        application_name: "alp-exactly-once-test".into(),
        max_connections: 2,
        min_connections: 0,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(10),
    };
    Database::connect(&config).await.unwrap()
}

/// The four services as `alp serve` processes on PostgreSQL, each restartable on its address.
struct Suite {
    pg: Postgres,
    addresses: BTreeMap<&'static str, SocketAddr>,
    processes: BTreeMap<&'static str, Child>,
}

impl Suite {
    async fn start(pg: Postgres) -> Suite {
        let admin = database(&pg.url("postgres")).await;
        for service in ["content", "user", "scoring", "scheduler"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE alp_{service}")))
                .execute(admin.pool())
                .await
                .unwrap();
            let migrated = Command::new(ALP)
                .args(["migrate", service, "--database-url", &pg.url(&format!("alp_{service}"))])
                .output()
                .await
                .unwrap();
            assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
        }
        admin.close().await;
        let addresses = ["content", "user", "scoring", "scheduler"].into_iter().map(|s| (s, free_port())).collect();
        let mut suite = Suite { pg, addresses, processes: BTreeMap::new() };
        for service in ["content", "user", "scoring", "scheduler"] {
            suite.launch(service);
        }
        for dependency in ["content", "scoring", "user"] {
            wait_serving(suite.addresses["scheduler"], &format!("alp.scheduler.v1.SchedulerService/{dependency}"))
                .await;
        }
        alp::seed::demo_course(channel(suite.addresses["content"])).await.unwrap();
        suite
    }

    fn launch(&mut self, service: &'static str) {
        let address = |s: &str| self.addresses[s].to_string();
        let child = Command::new(ALP)
            .args(["serve", service, "--database-url", &self.pg.url(&format!("alp_{service}"))])
            .args(["--listen", &address(service), "--metrics-listen", &free_port().to_string()])
            .args(["--content-addr", &address("content"), "--scoring-addr", &address("scoring")])
            .args(["--user-addr", &address("user"), "--drain-delay", "0s", "--log-level", "warn"])
            .args(["--breaker-open-wait", "200ms", "--downstream-timeout", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.processes.insert(service, child);
    }

    async fn kill(&mut self, service: &'static str) {
        let mut child = self.processes.remove(service).unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    async fn restart(&mut self, service: &'static str) {
        self.launch(service);
        wait_serving(self.addresses[service], &format!("alp.{service}.v1.{}Service", capitalised(service))).await;
    }

    /// Outbox rows waiting, per consumer.
    async fn outbox(&self) -> BTreeMap<String, i64> {
        let db = database(&self.pg.url("alp_scheduler")).await;
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT consumer, COUNT(*) FROM outbox GROUP BY consumer")
            .fetch_all(db.pool())
            .await
            .unwrap_or_default();
        db.close().await;
        rows.into_iter().collect()
    }
}

fn capitalised(service: &str) -> String {
    let mut name = service.to_owned();
    name[..1].make_ascii_uppercase();
    name
}

/// Ids of the attempts each learner got an OK for (recorded or duplicate), in order.
type Acknowledged = Arc<Mutex<Vec<String>>>;

/// A learner practising until `stop`: NextItems, then SubmitAttempt on its first item, retried
/// with the same attempt id until answered, as a client that must not lose an answer does.
async fn practise(scheduler: SocketAddr, learner: String, stop: CancellationToken, acknowledged: Acknowledged) {
    let mut client = SchedulerServiceClient::new(channel(scheduler));
    let mut n = 0;
    while !stop.is_cancelled() {
        let request =
            NextItemsRequest { learner_id: learner.clone(), course_id: COURSE.into(), count: 3, ..Default::default() };
        let Ok(next) = client.next_items(request).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(item) = next.into_inner().items.into_iter().next() else { continue };
        n += 1;
        let attempt_id = format!("{learner}-{n}");
        let submit = SubmitAttemptRequest {
            attempt_id: attempt_id.clone(),
            learner_id: learner.clone(),
            item_id: item.item_id,
            outcome: Some(Outcome::Correct(n % 3 != 0)),
            ..Default::default()
        };
        // Past the faults: every attempt started is answered in the end.
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let mut request = tonic::Request::new(submit.clone());
            request.set_timeout(Duration::from_secs(2));
            if client.submit_attempt(request).await.is_ok() {
                acknowledged.lock().unwrap().push(attempt_id.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_attempt_is_lost_or_applied_twice_across_crashes_and_a_database_restart() {
    let Some(pg) = Postgres::start() else {
        assert!(std::env::var_os("ALP_REQUIRE_POSTGRES").is_none(), "ALP_REQUIRE_POSTGRES is set, but no initdb");
        eprintln!("skipped: no PostgreSQL binaries");
        return;
    };
    let mut suite = Suite::start(pg).await;
    let mut users = UserServiceClient::new(channel(suite.addresses["user"]));
    let learners: Vec<String> = (0..LEARNERS).map(|n| format!("x{n}")).collect();
    for learner in &learners {
        let created = Learner { learner_id: learner.clone(), ..Default::default() };
        users.create_learner(CreateLearnerRequest { learner: Some(created) }).await.unwrap();
        users
            .enrol_learner(EnrolLearnerRequest { learner_id: learner.clone(), course_id: COURSE.into() })
            .await
            .unwrap();
    }

    let stop = CancellationToken::new();
    let acknowledged: Acknowledged = Arc::default();
    let load: Vec<_> = learners
        .iter()
        .map(|l| tokio::spawn(practise(suite.addresses["scheduler"], l.clone(), stop.clone(), acknowledged.clone())))
        .collect();
    let count = || acknowledged.lock().unwrap().len();

    let mut in_flight_at_faults = 0;
    for fault in ["scoring", "user", "scheduler", "postgres"] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (before, pending) = (count(), suite.outbox().await);
        in_flight_at_faults += pending.values().sum::<i64>();
        let started = Instant::now();
        if fault == "postgres" {
            suite.pg.pg_ctl(&["-m", "immediate", "restart"]);
        } else {
            suite.kill(fault).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            suite.restart(fault).await;
        }
        let down = started.elapsed();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let name =
            if fault == "postgres" { "pg_ctl restart -m immediate".to_owned() } else { format!("kill -9 {fault}") };
        report(format!(
            "exactly once, {name} under load ({LEARNERS} learners), outbox rows not yet applied or not yet deleted {pending:?}: back after {:.1} s; {} attempts acknowledged in the next 1.5 s",
            down.as_secs_f64(),
            count() - before,
        ));
    }
    stop.cancel();
    for task in load {
        task.await.unwrap();
    }

    // The outbox drains: every consumer has applied every row.
    let drained = Instant::now();
    while !suite.outbox().await.values().all(|n| *n == 0) {
        assert!(drained.elapsed() < Duration::from_secs(60), "outbox not drained: {:?}", suite.outbox().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acknowledged: BTreeSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    let ids = |db: &'static str, sql: &'static str| {
        let url = suite.pg.url(db);
        async move {
            let db = database(&url).await;
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(db.pool()).await.unwrap();
            db.close().await;
            rows.into_iter().map(|(id,)| id).collect::<Vec<String>>()
        }
    };
    let recorded = ids("alp_scheduler", "SELECT attempt_id FROM attempts WHERE attempt_id LIKE 'x%'").await;
    let applied = ids("alp_scoring", "SELECT attempt_id FROM applied_attempts WHERE attempt_id LIKE 'x%'").await;
    let counted = ids("alp_user", "SELECT attempt_id FROM progress_events WHERE attempt_id LIKE 'x%'").await;
    let recorded_set: BTreeSet<String> = recorded.iter().cloned().collect();
    let lost: Vec<&String> = acknowledged.difference(&recorded_set).collect();
    let unacknowledged = recorded_set.difference(&acknowledged).count();

    // Counters that an attempt applied twice would move twice: per learner, the attempts and
    // distinct items in progress, and scoring's first attempts and reviews.
    let scheduler = database(&suite.pg.url("alp_scheduler")).await;
    let expected: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT learner_id, COUNT(*), COUNT(DISTINCT item_id) FROM attempts WHERE attempt_id LIKE 'x%'
         GROUP BY learner_id ORDER BY learner_id",
    )
    .fetch_all(scheduler.pool())
    .await
    .unwrap();
    scheduler.close().await;
    let user = database(&suite.pg.url("alp_user")).await;
    let progress: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT learner_id, attempt_count, items_seen FROM course_progress WHERE learner_id LIKE 'x%' ORDER BY learner_id",
    )
    .fetch_all(user.pool())
    .await
    .unwrap();
    user.close().await;
    let scoring = database(&suite.pg.url("alp_scoring")).await;
    let models: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT t.learner_id, t.first_attempts, COALESCE(r.reviews, 0) FROM practice_targets t
         LEFT JOIN learner_reviews r USING (learner_id) WHERE t.learner_id LIKE 'x%' ORDER BY t.learner_id",
    )
    .fetch_all(scoring.pool())
    .await
    .unwrap();
    scoring.close().await;
    let models_expected: Vec<(String, i64, i64)> =
        expected.iter().map(|(l, attempts, items)| (l.clone(), *items, attempts - items)).collect();

    let double = progress.iter().zip(&expected).filter(|(p, e)| p != e).count()
        + models.iter().zip(&models_expected).filter(|(m, e)| m != e).count();
    report(format!(
        "exactly once, reconciled after the faults: {} acknowledged, {} recorded ({} lost, {} recorded but never acknowledged), {} applied by scoring, {} counted in progress; learners whose progress or model counters differ from the log: {double}; {in_flight_at_faults} rows were in the outbox when the faults struck",
        acknowledged.len(),
        recorded.len(),
        lost.len(),
        unacknowledged,
        applied.len(),
        counted.len(),
    ));
    assert!(acknowledged.len() > 50, "the load ran: {} attempts", acknowledged.len());
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
    assert_eq!(recorded_set, acknowledged, "every attempt in the log was answered to its client in the end");
    let sorted = |v: &[String]| v.iter().cloned().collect::<BTreeSet<String>>();
    assert_eq!(applied.len(), recorded.len());
    assert_eq!(sorted(&applied), recorded_set, "scoring applied each recorded attempt, once");
    assert_eq!(counted.len(), recorded.len());
    assert_eq!(sorted(&counted), recorded_set, "progress counted each recorded attempt, once");
    assert_eq!(progress, expected, "per-learner progress counts each attempt once");
    assert_eq!(models, models_expected, "scoring's first attempts and reviews count each attempt once");
}
