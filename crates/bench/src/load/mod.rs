//! `alp load`: an open-loop gRPC load generator for the suite. Requests go out at a constant
//! arrival rate (or in steps, or a spike) from a pacing thread; latency is measured from each
//! request's intended send time into HDR histograms; late sends, errors by gRPC code and invalid
//! answers are counted; the result is a table, a JSON file and, for stepped runs, a plot.

pub mod grpc;
pub mod observe;
pub mod pacer;
pub mod report;
pub mod timer;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alp_runtime::time::parse_duration;
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;

use self::observe::{Named, Watch};
use self::pacer::{Lanes, Phase, PhaseStats, Shared};
use self::report::{LoadReport, StepReport};
pub use self::workload::Endpoint;
use self::workload::Workload;
use crate::dataset::DatasetSpec;
use crate::target::TargetArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// --rate for --duration after a warm-up.
    Baseline,
    /// --rate, then a sudden five times --rate, then --rate again, each for --duration.
    Spike,
    /// Steps from --rate up by --factor, each --duration after its own warm-up, until the
    /// suite saturates (successful answers fall under 95 % of the rate, or errors pass 1 %).
    Stress,
    /// --rate for --duration, reported minute by minute.
    Soak,
    /// The rates of --rates, each --duration after its own warm-up.
    Steps,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// What to send.
    #[arg(long, value_enum, default_value_t = Endpoint::Mix)]
    pub endpoint: Endpoint,
    #[arg(long, value_enum, default_value_t = Scenario::Baseline)]
    pub scenario: Scenario,
    /// Requests per second (the starting rate of a stress run).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Rates of a `steps` run, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Growth from one stress step to the next.
    #[arg(long, default_value_t = 1.25)]
    pub factor: f64,
    /// Most steps of a stress run.
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    /// Measured time of each step or phase (a soak's whole length).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each step (before the first phase of a spike or soak).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The p99 a step must stay under to count towards SLO capacity; the endpoint's target when
    /// unset (NextItems 5 ms, GetItem and GetProgress 3 ms, SearchItems 20 ms, SubmitAttempt and
    /// the mix 10 ms).
    #[arg(long, value_parser = parse_duration)]
    pub slo_p99: Option<Duration>,
    /// Deadline of every request (sent as grpc-timeout).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// HTTP/2 connections to each service, dealt among the lanes and used in turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: u32,
    /// Sending threads, each with its own runtime, connections and request stream (lane 0's is
    /// the stream of --seed). One thread sent 8,000/s here at under 0.4 of a core; add lanes
    /// when late sends say one cannot keep up.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub lanes: u32,
    /// A sending thread wakes at most once per window and sends everything then due in one
    /// write per connection: fewer wake-ups and writes, sends up to this much after their time
    /// (measured as send lag; latency still counts from the intended time). 0 wakes for each.
    #[arg(long, default_value = "250us", value_parser = parse_duration)]
    pub send_window: Duration,
    /// Requests in flight at most; a send that finds none free waits and counts as late.
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Process trees whose CPU and memory to report, `name=PID[,PID...]` (repeatable).
    #[arg(long = "watch", value_parser = observe::parse_pids)]
    pub watch: Vec<Named<Vec<u32>>>,
    /// /metrics endpoints whose cache hit ratio to report, `name=host:port` (repeatable).
    #[arg(long = "metrics", value_parser = observe::parse_address)]
    pub metrics: Vec<Named<String>>,
    /// Where to write the JSON result; a stepped run's plot goes beside it (.svg).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the run's first request, gRPC-framed, to this file, print its method's path, and
    /// send nothing: the body for h2load's `-d` (a fixed request, so one learner's hot path).
    #[arg(long)]
    pub write_body: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Exit with failure when any request failed or was answered wrongly (for CI).
    #[arg(long)]
    pub fail_on_errors: bool,
    #[command(flatten)]
    pub dataset: DatasetSpec,
    #[command(flatten)]
    pub target: TargetArgs,
}

impl LoadArgs {
    fn validate(&self) -> anyhow::Result<()> {
        let rates = if self.scenario == Scenario::Steps { self.rates.clone() } else { vec![self.rate] };
        if rates.is_empty() {
            bail!("--rates: a steps run needs at least one rate");
        }
        if let Some(rate) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0 && **r <= 1_000_000.0)) {
            bail!("rate {rate}: must be above 0 and at most 1,000,000 per second");
        }
        if !(self.factor > 1.0 && self.factor <= 10.0) {
            bail!("--factor {}: must be above 1 and at most 10", self.factor);
        }
        if self.duration < Duration::from_secs(1) {
            bail!("--duration: must be at least 1s");
        }
        if self.send_window >= pacer::LATE_AFTER {
            bail!("--send-window: must be under {:?}, after which a send counts as late", pacer::LATE_AFTER);
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight: must be at least 1");
        }
        Ok(())
    }

    fn warmup(&self, rate: f64) -> Option<Phase> {
        (!self.warmup.is_zero()).then(|| Phase {
            label: "warm-up".to_owned(),
            rate,
            duration: self.warmup,
            measured: false,
        })
    }

    fn step(&self, label: String, rate: f64) -> Phase {
        Phase { label, rate, duration: self.duration, measured: true }
    }

    /// The phases of a run whose rates are known up front (all but stress).
    fn phases(&self) -> Vec<Vec<Phase>> {
        let rate = self.rate;
        match self.scenario {
            Scenario::Baseline => {
                vec![self.warmup(rate).into_iter().chain([self.step("baseline".to_owned(), rate)]).collect()]
            }
            Scenario::Spike => vec![
                self.warmup(rate)
                    .into_iter()
                    .chain([
                        self.step("before".to_owned(), rate),
                        self.step("spike 5x".to_owned(), rate * 5.0),
                        self.step("after".to_owned(), rate),
                    ])
                    .collect(),
            ],
            Scenario::Soak => {
                let minutes = self.duration.as_secs().div_ceil(60).max(1);
                let mut phases: Vec<Phase> = self.warmup(rate).into_iter().collect();
                let mut left = self.duration;
                for minute in 1..=minutes {
                    let duration = left.min(Duration::from_secs(60));
                    left -= duration;
                    phases.push(Phase { label: format!("minute {minute}"), rate, duration, measured: true });
                }
                vec![phases]
            }
            Scenario::Steps => self
                .rates
                .iter()
                .map(|&r| self.warmup(r).into_iter().chain([self.step(format!("{r:.0}/s"), r)]).collect())
                .collect(),
            Scenario::Stress => Vec::new(),
        }
    }
}

/// Writes the first request of the run to `path` (see `--write-body`); returns its method's path.
pub fn write_body(args: &LoadArgs, path: &std::path::Path) -> anyhow::Result<String> {
    let (method, body) =
        Workload::new(args.dataset.clone(), args.endpoint, args.seed, "body".to_owned()).next_op().framed();
    std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(method)
}

pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    args.validate()?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let run_id = format!("{:x}", started.as_millis());
    // Addresses are checked here, before any thread starts.
    grpc::LoadClients::new(&args.target)?;
    let slo = args.slo_p99.map_or(args.endpoint.default_slo_ms(), |d| d.as_secs_f64() * 1000.0);
    let mut report = LoadReport {
        endpoint: args.endpoint,
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        seed: args.seed,
        dataset: args.dataset.clone(),
        slo_p99_ms: slo,
        timeout_ms: args.timeout.as_secs_f64() * 1000.0,
        connections: 0,
        machine: crate::machine(),
        started_unix_s: started.as_secs(),
        steps: Vec::new(),
        slo_capacity_rps: None,
        saturation_rps: 0.0,
    };
    let shared = Shared {
        main: tokio::runtime::Handle::current(),
        timeout: args.timeout,
        send_window: args.send_window,
        in_flight: Arc::new(Semaphore::new(args.max_in_flight)),
        watch: Arc::new(Watch { processes: args.watch.clone(), metrics: args.metrics.clone() }),
        current: Arc::new(AtomicUsize::new(0)),
    };
    let workloads = (0..args.lanes)
        .map(|lane| {
            let seed = args.seed.wrapping_add(u64::from(lane).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            Workload::new(args.dataset.clone(), args.endpoint, seed, format!("{run_id}-{lane}"))
        })
        .collect();
    let senders = Lanes::start(&args.target, args.connections as usize, workloads, &shared)?;
    report.connections = senders.connections();
    let mut runs = args.phases();
    let planned: Duration = runs.iter().flatten().map(|p| p.duration).sum();
    let bar = progress_bar(args.quiet, planned);
    let mut rate = args.rate;
    for step in 0.. {
        let phases = if args.scenario == Scenario::Stress {
            if step >= args.max_steps {
                break;
            }
            bar.inc_length((args.warmup + args.duration).as_secs());
            args.warmup(rate).into_iter().chain([args.step(format!("{rate:.0}/s"), rate)]).collect()
        } else if runs.is_empty() {
            break;
        } else {
            runs.remove(0)
        };
        let stats: Vec<Arc<PhaseStats>> = phases.into_iter().map(|p| Arc::new(PhaseStats::new(p))).collect();
        send(&senders, &shared, &stats, &bar, args.max_in_flight).await?;
        let mut saturated = false;
        for phase in stats.iter().filter(|s| s.phase.measured) {
            let step = StepReport::from_stats(phase, slo).await;
            saturated |= step.achieved_rps < 0.95 * step.target_rps || step.error_ratio > 0.01;
            let line = format!(
                "{:<12} {:>7.0}/s achieved, p99 {:.2} ms, errors {:.3} %{}",
                step.label,
                step.achieved_rps,
                step.latency_ms.p99,
                step.error_ratio * 100.0,
                step.invalid.as_ref().map(|r| format!(" (invalid: {r})")).unwrap_or_default()
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            report.steps.push(step);
        }
        if args.scenario == Scenario::Stress && saturated {
            break;
        }
        rate *= args.factor;
    }
    bar.finish_and_clear();
    report.finish();
    if let Some(path) = &args.out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if matches!(args.scenario, Scenario::Stress | Scenario::Steps) {
            let plot = path.with_extension("svg");
            std::fs::write(&plot, report.plot_svg()).with_context(|| format!("cannot write {}", plot.display()))?;
        }
    }
    Ok(report)
}

/// Sends a run of back-to-back phases and waits for every answer.
async fn send(
    lanes: &Lanes,
    shared: &Shared,
    stats: &[Arc<PhaseStats>],
    bar: &ProgressBar,
    max_in_flight: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let position = bar.position();
    let mut sent = std::pin::pin!(lanes.send(stats));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            done = &mut sent => break done?,
            _ = tick.tick() => {
                let current = &stats[shared.current.load(Ordering::Relaxed).min(stats.len() - 1)];
                bar.set_position(position + started.elapsed().as_secs());
                bar.set_message(format!(
                    "{} {:.0}/s: sent {} ok {} errors {} late {}",
                    current.phase.label,
                    current.phase.rate,
                    current.sent.load(Ordering::Relaxed),
                    current.ok.load(Ordering::Relaxed),
                    current.completed.load(Ordering::Relaxed) - current.ok.load(Ordering::Relaxed),
                    current.late.load(Ordering::Relaxed),
                ));
            }
        }
    }
    // Every permit back means every answer is in.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _drained = shared.in_flight.acquire_many(all).await.context("in-flight limit closed")?;
    Ok(())
}

fn progress_bar(quiet: bool, planned: Duration) -> ProgressBar {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(planned.as_secs()) };
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
