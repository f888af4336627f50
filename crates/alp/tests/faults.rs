//! Fault injection between the services, under load, on real sockets: a downstream killed or
//! hung, a replica stopped gracefully, overload, a dependency failing half its calls, and
//! attempts submitted twice. Every test prints what it counted (one `FAULT` line, collected into
//! `target/tmp/fault-report.txt` by the test script) and checks the databases at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use alp::suite::Databases;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::{NextItemsRequest, NextItemsResponse, SubmitAttemptRequest, SubmitAttemptResponse};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::{CreateLearnerRequest, EnrolLearnerRequest, Learner};
use alp_runtime::client::ClientArgs;
use alp_runtime::db::Database;
use alp_runtime::server::ServerConfig;
use common::{channel, test_server_config, wait_serving};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Channel;
use tower::ServiceExt;

const ALP: &str = env!("CARGO_BIN_EXE_alp");
const COURSE: &str = "arithmetic";

/// One scenario at a time: each measures latency and capacity, which neighbours would skew.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Appends one line to the report the test script prints.
fn report(line: String) {
    println!("FAULT {line}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("fault-report.txt")) {
        use std::io::Write;
        let _ = writeln!(file, "{line}");
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Breakers that trip and recover within a test's seconds.
fn quick_breakers(extra: &[&str]) -> ClientArgs {
    let mut overrides: Vec<String> = ["content", "scoring", "user"]
        .iter()
        .flat_map(|d| {
            [
                format!("{d}.breaker-window=10"),
                format!("{d}.breaker-minimum-calls=5"),
                format!("{d}.breaker-open-wait=300ms"),
                format!("{d}.breaker-max-open-wait=1s"),
                format!("{d}.breaker-half-open-calls=2"),
            ]
        })
        .collect();
    overrides.extend(extra.iter().map(|s| (*s).to_owned()));
    ClientArgs { downstream_overrides: overrides, ..ClientArgs::default() }
}

/// The four services on real sockets; content may have several replicas and scoring may run as
/// a child process. Each piece stops on its own token.
struct Suite {
    _dir: tempfile::TempDir,
    databases: Databases,
    contents: Vec<(SocketAddr, CancellationToken)>,
    user: SocketAddr,
    scoring: SocketAddr,
    scoring_process: Option<Child>,
    scheduler: SocketAddr,
    stop: CancellationToken,
}

struct Options {
    content_replicas: usize,
    scoring_as_process: bool,
    clients: ClientArgs,
    scheduler_server: ServerConfig,
    content_drain: Duration,
    /// Put a proxy between the scheduler and content.
    content_proxy: Option<Arc<FaultyProxy>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            content_replicas: 1,
            scoring_as_process: false,
            clients: quick_breakers(&[]),
            scheduler_server: test_server_config(),
            content_drain: Duration::ZERO,
            content_proxy: None,
        }
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

fn start_content(databases: &Databases, listener: TcpListener, drain: Duration, stop: &CancellationToken) {
    let config = alp_content::ContentConfig {
        server: ServerConfig { drain_delay: drain, ..test_server_config() },
        database: databases.content.clone(),
        redis: None,
    };
    tokio::spawn(alp_content::serve_with_shutdown(config, listener, stop.clone().cancelled_owned()));
}

async fn scoring_process(url: &str, address: SocketAddr) -> Child {
    Command::new(ALP)
        .args(["serve", "scoring", "--database-url", url, "--listen", &address.to_string()])
        .args(["--metrics-listen", &free_port().to_string(), "--drain-delay", "0s", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

impl Suite {
    async fn start(options: Options) -> Suite {
        let dir = tempfile::tempdir().unwrap();
        let databases = Databases::sqlite(dir.path());
        alp::suite::migrate(&databases).await.unwrap();
        let stop = CancellationToken::new();
        let mut contents = Vec::new();
        for _ in 0..options.content_replicas {
            let (listener, address) = bind().await;
            let own = stop.child_token();
            start_content(&databases, listener, options.content_drain, &own);
            contents.push((address, own));
        }
        let content_list = contents.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join(",");
        let (user_listener, user) = bind().await;
        let (scoring, scoring_process) = if options.scoring_as_process {
            let address = free_port();
            (address, Some(scoring_process(&databases.scoring.url, address).await))
        } else {
            let (listener, address) = bind().await;
            let config = alp_scoring::ScoringConfig {
                server: test_server_config(),
                database: databases.scoring.clone(),
                policies: alp_scoring::Policies::default(),
                redis: None,
            };
            tokio::spawn(alp_scoring::serve_with_shutdown(config, listener, stop.clone().cancelled_owned()));
            (address, None)
        };
        let clients = &options.clients;
        let user_config = alp_user::UserConfig {
            server: test_server_config(),
            database: databases.user.clone(),
            content: clients.config("content", &content_list).unwrap(),
            redis: None,
        };
        tokio::spawn(alp_user::serve_with_shutdown(user_config, user_listener, stop.clone().cancelled_owned()));
        let scheduler_content = match &options.content_proxy {
            Some(proxy) => proxy.start(contents[0].0).await.to_string(),
            None => content_list,
        };
        let (scheduler_listener, scheduler) = bind().await;
        let scheduler_config = alp_scheduler::SchedulerConfig {
            outbox: alp_scheduler::RelayConfig::default(),
            server: options.scheduler_server.clone(),
            database: databases.scheduler.clone(),
            redis: None,
            downstream: alp_scheduler::DownstreamConfigs {
                content: clients.config("content", &scheduler_content).unwrap(),
                scoring: clients.config("scoring", &scoring.to_string()).unwrap(),
                user: clients.config("user", &user.to_string()).unwrap(),
            },
        };
        tokio::spawn(alp_scheduler::serve_with_shutdown(
            scheduler_config,
            scheduler_listener,
            stop.clone().cancelled_owned(),
        ));
        for dependency in ["content", "scoring", "user"] {
            wait_serving(scheduler, &format!("alp.scheduler.v1.SchedulerService/{dependency}")).await;
        }
        alp::seed::demo_course(channel(contents[0].0)).await.unwrap();
        Suite { _dir: dir, databases, contents, user, scoring, scoring_process, scheduler, stop }
    }

    async fn learner(&self, id: &str) {
        let mut users = UserServiceClient::new(channel(self.user));
        users
            .create_learner(CreateLearnerRequest {
                learner: Some(Learner { learner_id: id.into(), ..Default::default() }),
            })
            .await
            .unwrap();
        users.enrol_learner(EnrolLearnerRequest { learner_id: id.into(), course_id: COURSE.into() }).await.unwrap();
    }

    fn scheduler(&self) -> SchedulerServiceClient<Channel> {
        SchedulerServiceClient::new(channel(self.scheduler))
    }

    /// Attempts recorded in the scheduler's log (the log of record).
    async fn attempts_recorded(&self, attempt_id_prefix: &str) -> i64 {
        let db = Database::connect(&self.databases.scheduler).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE attempt_id LIKE $1")
            .bind(format!("{attempt_id_prefix}%"))
            .fetch_one(db.pool())
            .await
            .unwrap();
        db.close().await;
        count
    }

    fn signal_scoring(&self, signal: &str) {
        let pid = self.scoring_process.as_ref().unwrap().id().unwrap();
        let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What one phase of load saw.
#[derive(Debug, Default)]
struct Tally {
    calls: usize,
    ok: usize,
    degraded: usize,
    /// Degraded answers whose reason names an open circuit.
    circuit_open: usize,
    errors: BTreeMap<String, usize>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn record<T>(&mut self, result: &Result<T, tonic::Status>, elapsed: Duration) {
        self.calls += 1;
        self.latencies.push(elapsed);
        match result {
            Ok(_) => self.ok += 1,
            Err(status) => {
                // tonic's client gives up at the deadline itself, and calls that CANCELLED.
                let code = match status.code() {
                    Code::Cancelled if status.message().contains("Timeout expired") => Code::DeadlineExceeded,
                    code => code,
                };
                *self.errors.entry(alp_runtime::metrics::code_name(code).to_owned()).or_default() += 1;
            }
        }
    }

    fn next_items(&mut self, result: &Result<NextItemsResponse, tonic::Status>, elapsed: Duration) {
        self.record(result, elapsed);
        if let Ok(response) = result
            && response.degraded
        {
            self.degraded += 1;
            self.circuit_open += usize::from(response.degraded_reason.contains("is open"));
        }
    }

    fn errors(&self) -> usize {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        self.ok += other.ok;
        self.degraded += other.degraded;
        self.circuit_open += other.circuit_open;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.latencies.extend(other.latencies);
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn summary(&self) -> String {
        format!(
            "calls {} ok {} degraded {} (circuit open {}) errors {:?} p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            self.calls,
            self.ok,
            self.degraded,
            self.circuit_open,
            self.errors,
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3,
            self.quantile(1.0).as_secs_f64() * 1e3,
        )
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

fn next_request(learner: &str) -> NextItemsRequest {
    NextItemsRequest { learner_id: learner.into(), course_id: COURSE.into(), count: 3, ..Default::default() }
}

fn submit_request(attempt_id: String, learner: &str, item_id: &str) -> SubmitAttemptRequest {
    SubmitAttemptRequest {
        attempt_id,
        learner_id: learner.into(),
        item_id: item_id.into(),
        outcome: Some(Outcome::Correct(true)),
        ..Default::default()
    }
}

/// One learner practising for `length`: NextItems, then SubmitAttempt on its first item, each
/// with `deadline`. Attempt ids are `<learner>-<n>`; `next` continues the numbering.
async fn practise(
    suite: &Suite,
    learner: &str,
    length: Duration,
    deadline: Duration,
    next: &mut usize,
) -> (Tally, Tally, usize) {
    let mut scheduler = suite.scheduler();
    let (mut nexts, mut submits, mut recorded) = (Tally::default(), Tally::default(), 0);
    let until = Instant::now() + length;
    while Instant::now() < until {
        let started = Instant::now();
        let answer = scheduler.next_items(with_deadline(next_request(learner), deadline)).await.map(|r| r.into_inner());
        nexts.next_items(&answer, started.elapsed());
        // A failed NextItems is counted (and judged by the caller); an empty answer is a defect.
        let Ok(answer) = answer else { continue };
        let Some(item) = answer.items.into_iter().next() else { panic!("NextItems offered nothing to practise") };
        *next += 1;
        let request = submit_request(format!("{learner}-{next}"), learner, &item.item_id);
        let started = Instant::now();
        let submitted = scheduler.submit_attempt(with_deadline(request, deadline)).await.map(|r| r.into_inner());
        submits.record(&submitted, started.elapsed());
        if submitted.as_ref().is_ok_and(|s: &SubmitAttemptResponse| !s.duplicate) {
            recorded += 1;
        }
    }
    (nexts, submits, recorded)
}

/// Practises until NextItems ranks through scoring again; how long that took.
async fn until_scored(suite: &Suite, learner: &str, bound: Duration) -> Duration {
    let mut scheduler = suite.scheduler();
    let started = Instant::now();
    while started.elapsed() < bound {
        let answer = scheduler.next_items(with_deadline(next_request(learner), Duration::from_millis(500))).await;
        if answer.is_ok_and(|a| !a.into_inner().degraded) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("NextItems still degraded after {bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_hung_scoring_service_degrades_next_items_and_the_breaker_recovers() {
    let _serial = SERIAL.lock().await;
    let mut suite = Suite::start(Options { scoring_as_process: true, ..Options::default() }).await;
    suite.learner("kim").await;
    let deadline = Duration::from_millis(200);
    let mut n = 0;
    let margin = Duration::from_millis(40);

    let (nexts, submits, mut recorded) = practise(&suite, "kim", Duration::from_millis(800), deadline, &mut n).await;
    assert_eq!((nexts.errors(), nexts.degraded, submits.errors()), (0, 0, 0), "healthy: {}", nexts.summary());

    // kill -9: NextItems answers from the local ordering, attempts fail fast, the circuit opens.
    suite.signal_scoring("-KILL");
    let (nexts, submits, ok) = practise(&suite, "kim", Duration::from_millis(1500), deadline, &mut n).await;
    recorded += ok;
    report(format!("scoring killed: NextItems {}", nexts.summary()));
    report(format!("scoring killed: SubmitAttempt {}", submits.summary()));
    assert_eq!(nexts.errors(), 0, "NextItems stays available: {}", nexts.summary());
    assert_eq!(nexts.degraded, nexts.calls);
    assert!(nexts.circuit_open > 0, "the breaker opened: {}", nexts.summary());
    assert!(submits.calls > 0 && submits.ok == 0, "{}", submits.summary());
    assert!(submits.errors.keys().all(|code| code == "UNAVAILABLE"), "{}", submits.summary());
    assert!(nexts.quantile(1.0) < deadline + margin && submits.quantile(1.0) < deadline + margin);

    // Back on the same port: trial calls close the circuit.
    let mut process = scoring_process(&suite.databases.scoring.url, suite.scoring).await;
    std::mem::swap(suite.scoring_process.as_mut().unwrap(), &mut process);
    let recovered = until_scored(&suite, "kim", Duration::from_secs(10)).await;
    report(format!("scoring restarted: ranked by scoring again after {:.0} ms", recovered.as_secs_f64() * 1e3));

    // SIGSTOP: calls hang; a 50 ms NextItems answers within its deadline, degraded.
    suite.signal_scoring("-STOP");
    let tight = Duration::from_millis(50);
    let mut hung = Tally::default();
    let mut scheduler = suite.scheduler();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let started = Instant::now();
        let answer = scheduler.next_items(with_deadline(next_request("kim"), tight)).await.map(|r| r.into_inner());
        hung.next_items(&answer, started.elapsed());
    }
    let (_, submits, ok) = practise(&suite, "kim", Duration::from_millis(600), deadline, &mut n).await;
    recorded += ok;
    report(format!("scoring hung (SIGSTOP), 50 ms deadline: NextItems {}", hung.summary()));
    report(format!("scoring hung (SIGSTOP), 200 ms deadline: SubmitAttempt {}", submits.summary()));
    assert!(hung.quantile(1.0) < tight + margin, "within the deadline: {}", hung.summary());
    assert!(hung.errors.keys().all(|code| code == "DEADLINE_EXCEEDED"), "{}", hung.summary());
    assert!(hung.circuit_open > 0 && hung.degraded + hung.errors() == hung.calls, "{}", hung.summary());
    assert!(submits.calls > 0 && submits.ok == 0, "{}", submits.summary());
    assert!(submits.quantile(1.0) < deadline + margin, "{}", submits.summary());

    suite.signal_scoring("-CONT");
    let recovered = until_scored(&suite, "kim", Duration::from_secs(10)).await;
    report(format!("scoring resumed (SIGCONT): ranked by scoring again after {:.0} ms", recovered.as_secs_f64() * 1e3));
    let (nexts, submits, ok) = practise(&suite, "kim", Duration::from_millis(500), deadline, &mut n).await;
    recorded += ok;
    assert_eq!((nexts.errors(), submits.errors()), (0, 0), "{} / {}", nexts.summary(), submits.summary());

    let in_log = suite.attempts_recorded("kim-").await;
    report(format!("scoring faults: {recorded} attempts acknowledged, {in_log} in the scheduler's log"));
    assert_eq!(in_log, recorded as i64, "every acknowledged attempt is in the log, and nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_content_replicas_stopping_gracefully_costs_no_call() {
    let _serial = SERIAL.lock().await;
    let suite =
        Suite::start(Options { content_replicas: 2, content_drain: Duration::from_millis(500), ..Options::default() })
            .await;
    for learner in ["ada", "bob"] {
        suite.learner(learner).await;
    }
    let deadline = Duration::from_secs(2);
    let load = |learner: &'static str, offset: usize| {
        let suite = &suite;
        async move {
            let mut n = offset;
            practise(suite, learner, Duration::from_millis(2500), deadline, &mut n).await
        }
    };
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        suite.contents[0].1.cancel();
    };
    let ((ada_next, ada_submit, ada_ok), (bob_next, bob_submit, bob_ok), ()) =
        tokio::join!(load("ada", 0), load("bob", 0), stopper);
    let errors = ada_next.errors() + ada_submit.errors() + bob_next.errors() + bob_submit.errors();
    let calls = ada_next.calls + ada_submit.calls + bob_next.calls + bob_submit.calls;
    report(format!(
        "one of two content replicas stopped (SIGTERM path, 500 ms drain) under load: {calls} calls, {errors} errors; NextItems {}",
        ada_next.summary()
    ));
    assert_eq!(errors, 0, "{} / {}", ada_next.summary(), bob_submit.summary());
    assert!(calls > 50, "{calls} calls");
    let in_log = suite.attempts_recorded("ada-").await + suite.attempts_recorded("bob-").await;
    assert_eq!(in_log, (ada_ok + bob_ok) as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_capacity_is_shed_fast_and_service_returns_after_the_burst() {
    let _serial = SERIAL.lock().await;
    const LIMIT: usize = 4;
    let scheduler_server = ServerConfig { max_in_flight: LIMIT, ..test_server_config() };
    let suite = Suite::start(Options { scheduler_server, ..Options::default() }).await;
    suite.learner("max").await;
    let scheduler = suite.scheduler();

    // Capacity: LIMIT callers back to back.
    let measured = Duration::from_secs(1);
    let started = Instant::now();
    let served = Arc::new(AtomicUsize::new(0));
    let callers = (0..LIMIT).map(|_| {
        let (mut scheduler, served) = (scheduler.clone(), Arc::clone(&served));
        async move {
            while started.elapsed() < measured {
                scheduler.next_items(next_request("max")).await.unwrap();
                served.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    futures::future::join_all(callers).await;
    let capacity = served.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // Open loop at twice that rate; then half the bound's callers back to back, which the bound
    // never sheds once the burst's permits are back (an open loop at half the rate may, when a
    // latency spike of the shared machine puts more than the bound in flight).
    let burst = open_loop(&scheduler, capacity * 2.0, Duration::from_secs(2)).await;
    let after = closed_loop(&scheduler, LIMIT / 2, Duration::from_secs(1)).await;
    let (accepted, rejected) = burst;
    report(format!(
        "overload at 2x capacity ({:.0}/s, in-flight bound {LIMIT}): accepted {} rejected {}",
        capacity * 2.0,
        accepted.summary(),
        rejected.summary()
    ));
    report(format!("after the burst, {} callers back to back: {}", LIMIT / 2, after.summary()));
    assert!(rejected.calls > 0, "the bound shed calls");
    assert_eq!(accepted.errors(), 0, "nothing failed but the shed: {}", accepted.summary());
    assert_eq!(rejected.errors.keys().collect::<Vec<_>>(), ["RESOURCE_EXHAUSTED"]);
    // Relative, not absolute: on a slow machine everything is slower, but refusing a call must
    // stay cheaper than serving one.
    assert!(
        rejected.quantile(0.99) < accepted.quantile(0.99),
        "shed faster than served: shed {}; served {}",
        rejected.summary(),
        accepted.summary()
    );
    assert!(accepted.quantile(0.99) < Duration::from_millis(500), "bounded: {}", accepted.summary());
    assert!(after.calls > 0 && after.ok == after.calls, "normal again: {}", after.summary());
}

/// `callers` tasks sending NextItems back to back for `length`; every answer, shed ones included.
async fn closed_loop(scheduler: &SchedulerServiceClient<Channel>, callers: usize, length: Duration) -> Tally {
    let start = Instant::now();
    let tasks = (0..callers).map(|_| {
        let mut scheduler = scheduler.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            while start.elapsed() < length {
                let started = Instant::now();
                let answer = scheduler.next_items(with_deadline(next_request("max"), Duration::from_secs(2))).await;
                tally.next_items(&answer.map(|r| r.into_inner()), started.elapsed());
            }
            tally
        })
    });
    let mut all = Tally::default();
    for tally in futures::future::join_all(tasks).await {
        all.merge(tally.unwrap());
    }
    all
}

/// Sends NextItems at `rate` per second for `length`, each on its own task; (answered, shed).
async fn open_loop(scheduler: &SchedulerServiceClient<Channel>, rate: f64, length: Duration) -> (Tally, Tally) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let mut sent = 0u32;
    while start.elapsed() < length {
        let mut scheduler = scheduler.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = scheduler.next_items(with_deadline(next_request("max"), Duration::from_secs(2))).await;
            (answer.map(|r| r.into_inner()), started.elapsed())
        }));
        sent += 1;
        tokio::time::sleep_until(start + interval * sent).await;
    }
    let (mut answered, mut shed) = (Tally::default(), Tally::default());
    for task in tasks {
        let (answer, elapsed) = task.await.unwrap();
        match &answer {
            Err(status) if status.code() == Code::ResourceExhausted => shed.next_items(&answer, elapsed),
            _ => answered.next_items(&answer, elapsed),
        }
    }
    (answered, shed)
}

/// A gRPC proxy in front of one content replica that answers every other content call with
/// UNAVAILABLE while `failing`, and counts the content calls it receives. Health passes through.
#[derive(Default)]
struct FaultyProxy {
    failing: AtomicBool,
    received: AtomicUsize,
}

#[derive(Clone)]
struct Forward<const FAULTY: bool> {
    channel: Channel,
    proxy: Arc<FaultyProxy>,
}

impl NamedService for Forward<true> {
    const NAME: &'static str = "alp.content.v1.ContentService";
}

impl NamedService for Forward<false> {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl<const FAULTY: bool> tower::Service<http::Request<tonic::body::Body>> for Forward<FAULTY> {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let (channel, proxy) = (self.channel.clone(), Arc::clone(&self.proxy));
        Box::pin(async move {
            if FAULTY {
                let n = proxy.received.fetch_add(1, Ordering::SeqCst);
                if proxy.failing.load(Ordering::SeqCst) && n % 2 == 0 {
                    return Ok(tonic::Status::unavailable("injected fault").into_http());
                }
            }
            Ok(channel.oneshot(request).await.unwrap_or_else(|e| tonic::Status::unavailable(e.to_string()).into_http()))
        })
    }
}

impl FaultyProxy {
    async fn start(self: &Arc<Self>, target: SocketAddr) -> SocketAddr {
        let channel = channel(target);
        let (listener, address) = bind().await;
        let routes = Routes::new(Forward::<true> { channel: channel.clone(), proxy: Arc::clone(self) })
            .add_service(Forward::<false> { channel, proxy: Arc::clone(self) });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_failing_half_its_calls_gets_no_more_than_the_retry_budget() {
    let _serial = SERIAL.lock().await;
    let proxy = Arc::new(FaultyProxy::default());
    // The breaker stays out of it (it would open at 50 %): this measures the retry budget alone.
    // A floor of 1 retry/s (10 in reserve) so the 20 % share is what binds within seconds.
    let clients = quick_breakers(&[
        "content.breaker-failure-rate=1.0",
        "content.breaker-minimum-calls=1000",
        "content.retry-budget-floor=1",
    ]);
    let suite = Suite::start(Options { content_proxy: Some(Arc::clone(&proxy)), clients, ..Options::default() }).await;
    suite.learner("eve").await;

    proxy.failing.store(true, Ordering::SeqCst);
    let before = proxy.received.load(Ordering::SeqCst);
    let started = Instant::now();
    // One caller at a time: concurrent lookups would share batches, hiding the per-call count.
    let mut scheduler = suite.scheduler();
    let mut submits = Tally::default();
    for n in 0.. {
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        // Items content does not have: the scheduler keeps copies of the items it found, so only
        // these make every submission ask content (and be answered NOT_FOUND when it answers).
        let item = format!("unlisted-{n}");
        let t = Instant::now();
        let answer = scheduler.submit_attempt(submit_request(format!("eve-{n}"), "eve", &item)).await;
        submits.record(&answer, t.elapsed());
    }
    let recorded = submits.ok;
    let seconds = started.elapsed().as_secs_f64();
    let received = proxy.received.load(Ordering::SeqCst) - before;
    let calls = submits.calls;
    // Every call once, plus 20 % of them, plus the floor: 1/s and the 10 held in reserve (and
    // 3 for the budget window's rounding).
    let allowed = calls as f64 * 1.2 + seconds + 10.0 + 3.0;
    report(format!(
        "content failing every other call: {calls} SubmitAttempt -> {received} content calls ({:.2} per call; without a budget 2.00; the budget allows {:.0}); {}",
        received as f64 / calls as f64,
        allowed,
        submits.summary()
    ));
    assert!(received as f64 <= allowed, "{received} content calls for {calls} submissions");
    assert!(received > calls, "failed calls were retried");
    assert!(submits.errors.keys().all(|code| code == "UNAVAILABLE" || code == "NOT_FOUND"), "{}", submits.summary());
    assert!(submits.errors.contains_key("NOT_FOUND"), "content answered some: {}", submits.summary());
    assert_eq!((recorded, suite.attempts_recorded("eve-").await), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_is_recorded_once_however_often_and_however_concurrently_it_arrives() {
    let _serial = SERIAL.lock().await;
    let suite = Suite::start(Options::default()).await;
    suite.learner("dup").await;
    let mut scheduler = suite.scheduler();
    let items =
        scheduler.next_items(NextItemsRequest { count: 10, ..next_request("dup") }).await.unwrap().into_inner().items;
    let item = items[0].item_id.clone();

    // 16 concurrent submissions of one attempt.
    let concurrent = (0..16).map(|_| {
        let mut scheduler = scheduler.clone();
        let request = submit_request("dup-concurrent".into(), "dup", &item);
        async move { scheduler.submit_attempt(request).await.map(|r| r.into_inner().duplicate) }
    });
    let answers: Vec<_> = futures::future::join_all(concurrent).await;
    let firsts = answers.iter().filter(|a| matches!(a, Ok(false))).count();
    let duplicates = answers.iter().filter(|a| matches!(a, Ok(true))).count();
    assert_eq!((firsts, duplicates), (1, 15), "{answers:?}");
    assert_eq!(suite.attempts_recorded("dup-concurrent").await, 1);

    // The response is lost (the caller's deadline runs out, before or after the commit); the
    // retry finds the attempt recorded once, or records it once.
    let (mut committed_before_the_retry, mut lost_answers) = (0, 0);
    for n in 0..10 {
        let id = format!("dup-lost-{n}");
        let item = &items[(n + 1) % items.len()].item_id;
        // From 1 ms (cut before anything) to beyond a typical answer (cut after the commit, or not at all).
        let deadline = Duration::from_millis(1 + 4 * n as u64);
        let lost = scheduler.submit_attempt(with_deadline(submit_request(id.clone(), "dup", item), deadline)).await;
        match &lost {
            Err(status) => assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}"),
            Ok(_) => lost_answers += 1,
        }
        let retried = scheduler.submit_attempt(submit_request(id.clone(), "dup", item)).await.unwrap().into_inner();
        committed_before_the_retry += usize::from(retried.duplicate);
        assert_eq!(suite.attempts_recorded(&id).await, 1);
    }

    // The same id with another answer is refused, naming what differs; the log keeps the first.
    let mut changed = submit_request("dup-concurrent".into(), "dup", &item);
    changed.outcome = Some(Outcome::Correct(false));
    let refused = scheduler.submit_attempt(changed).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(refused.message().contains("outcome"), "{}", refused.message());
    let db = Database::connect(&suite.databases.scheduler).await.unwrap();
    let correct: i64 = sqlx::query_scalar("SELECT correct FROM attempts WHERE attempt_id = 'dup-concurrent'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(correct, 1, "the first answer stands");
    db.close().await;
    report(format!(
        "duplicates: 16 concurrent submissions -> 1 recorded, 15 answered as duplicates; 10 responses lost to deadlines of 1-37 ms then retried -> 10 recorded ({committed_before_the_retry} had committed before the retry, {lost_answers} answered in time); a changed answer under a used id -> ALREADY_EXISTS"
    ));
}
