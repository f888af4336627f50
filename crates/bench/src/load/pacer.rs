//! The open loop: request `i` of a phase goes out at `start + i / rate` whatever the answers are
//! doing, and each answer's latency is measured from that intended time, so a slow server shows
//! as latency rather than as a generator that quietly slowed down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::grpc::LoadClients;
use super::observe::{Sample, Watch};
use super::timer::PreciseTimer;
use super::workload::{Failure, OpKind, Workload};
use crate::target::TargetArgs;

/// A send later than this after its intended time counts as late: the generator fell behind.
pub const LATE_AFTER: Duration = Duration::from_millis(1);
/// Latencies are recorded in microseconds up to a minute.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A stretch of constant arrival rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub label: String,
    pub rate: f64,
    pub duration: Duration,
    /// Warm-up phases are sent but not reported.
    pub measured: bool,
}

impl Phase {
    pub fn requests(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }

    /// When request `i` of the phase is due, counted from the phase's start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// Latency of one kind of request, or of all.
pub type Latencies = Histogram<u64>;

// The bounds are valid constants: three significant digits between 1 µs and a minute.
#[allow(clippy::expect_used)]
fn histogram() -> Latencies {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What happened to a phase's requests; filled in by the tasks that send them.
#[derive(Debug)]
pub struct PhaseStats {
    pub phase: Phase,
    pub sent: AtomicU64,
    pub late: AtomicU64,
    pub completed: AtomicU64,
    pub ok: AtomicU64,
    /// How far behind its intended time each request was sent.
    send_lag: Mutex<Latencies>,
    latencies: Mutex<(Latencies, BTreeMap<OpKind, Latencies>)>,
    /// Count and first example of each kind of failure.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
    samples: Mutex<Vec<JoinHandle<Sample>>>,
}

impl PhaseStats {
    pub fn new(phase: Phase) -> Self {
        Self {
            phase,
            sent: AtomicU64::new(0),
            late: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            send_lag: Mutex::new(histogram()),
            latencies: Mutex::new((histogram(), BTreeMap::new())),
            errors: Mutex::new(BTreeMap::new()),
            samples: Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, kind: OpKind, latency: Duration, outcome: Result<(), Failure>) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        {
            let mut latencies = self.latencies.lock().unwrap_or_else(PoisonError::into_inner);
            latencies.0.saturating_record(micros);
            latencies.1.entry(kind).or_insert_with(histogram).saturating_record(micros);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(failure) => {
                let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
                errors.entry(failure.kind).or_insert((0, failure.detail)).0 += 1;
            }
        }
    }

    fn sent(&self, lag: Duration) {
        if lag > LATE_AFTER {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let micros = (lag.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.send_lag.lock().unwrap_or_else(PoisonError::into_inner).saturating_record(micros);
    }

    pub fn send_lag(&self) -> Latencies {
        self.send_lag.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn latencies(&self) -> (Latencies, BTreeMap<OpKind, Latencies>) {
        self.latencies.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Count and first example of each kind of failure.
    pub fn errors(&self) -> BTreeMap<String, (u64, String)> {
        self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Samples of the watched processes at the phase's start and end.
    pub async fn samples(&self) -> Vec<Sample> {
        let handles: Vec<_> = std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner));
        let mut samples = Vec::with_capacity(handles.len());
        for handle in handles {
            if let Ok(sample) = handle.await {
                samples.push(sample);
            }
        }
        samples
    }
}

/// What every lane shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The caller's runtime, where the watched processes are sampled.
    pub main: Handle,
    pub timeout: Duration,
    /// The shortest time between two wake-ups of a lane (see `--send-window`).
    pub send_window: Duration,
    /// Bounds requests in flight; a send that finds none free waits (and is late).
    pub in_flight: Arc<Semaphore>,
    pub watch: Arc<Watch>,
    /// Index into the phases of the one being sent, for the progress display.
    pub current: Arc<AtomicUsize>,
}

/// A run's phases for a lane, and where to say it has sent its share.
struct Command {
    phases: Vec<Arc<PhaseStats>>,
    start: Instant,
    sent: oneshot::Sender<()>,
}

/// The senders: each lane is a thread with a single-threaded runtime, its own connections and
/// its own request stream, and sends every `lanes`-th request of the schedule. Pacing, sending
/// and reading answers share the thread, so no request crosses threads and one wake-up serves
/// whatever is due (see `timer.rs`). The lanes live as long as the run, connections included.
#[derive(Debug)]
pub struct Lanes {
    lanes: Vec<mpsc::UnboundedSender<Command>>,
    /// Connections to each service, over all lanes.
    connections: usize,
}

impl Lanes {
    /// Starts `workloads.len()` lanes; `connections` are dealt among them (at least one each).
    ///
    /// # Errors
    /// When a lane cannot start its runtime, timer or clients.
    pub fn start(
        target: &TargetArgs,
        connections: usize,
        workloads: Vec<Workload>,
        shared: &Shared,
    ) -> anyhow::Result<Self> {
        let count = workloads.len();
        let connections = connections.max(count);
        let mut lanes = Vec::with_capacity(count);
        for (index, workload) in workloads.into_iter().enumerate() {
            let (commands, receiver) = mpsc::unbounded_channel();
            let (ready, started) = std::sync::mpsc::channel();
            let lane = Lane {
                index,
                count,
                connections: (index..connections).step_by(count).count(),
                target: target.clone(),
                shared: shared.clone(),
            };
            std::thread::Builder::new()
                .name(format!("alp-load-{index}"))
                .spawn(move || lane.run(workload, receiver, ready))
                .context("cannot start a sending thread")?;
            started.recv().context("a sending thread ended while starting")??;
            lanes.push(commands);
        }
        Ok(Self { lanes, connections })
    }

    /// Connections to each service, over all lanes.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Sends the phases back to back from `start`; returns when every lane has sent its share,
    /// not when the answers are in.
    pub async fn send(&self, phases: &[Arc<PhaseStats>]) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut sent = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            let (done, wait) = oneshot::channel();
            lane.send(Command { phases: phases.to_vec(), start, sent: done })
                .map_err(|_| anyhow::anyhow!("a sending thread has stopped"))?;
            sent.push(wait);
        }
        for wait in sent {
            wait.await.context("a sending thread stopped during the run")?;
        }
        Ok(())
    }
}

struct Lane {
    index: usize,
    count: usize,
    connections: usize,
    target: TargetArgs,
    shared: Shared,
}

impl Lane {
    fn run(
        self,
        mut workload: Workload,
        mut commands: mpsc::UnboundedReceiver<Command>,
        ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
    ) {
        raise_priority();
        // Timers and answers are looked at every 16 tasks rather than 61, so a busy lane still
        // sends on time.
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().event_interval(16).build() {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = ready.send(Err(anyhow::Error::new(error).context("cannot start a sending runtime")));
                return;
            }
        };
        runtime.block_on(async move {
            let started = (|| {
                let clients = (0..self.connections)
                    .map(|_| LoadClients::new(&self.target))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let timer = PreciseTimer::new().context("cannot create a timer")?;
                Ok::<_, anyhow::Error>((clients, timer))
            })();
            let (clients, timer) = match started {
                Ok(started) => {
                    let _ = ready.send(Ok(()));
                    started
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            while let Some(command) = commands.recv().await {
                self.send(&command, &clients, &timer, &mut workload).await;
                let _ = command.sent.send(());
            }
        });
    }

    /// Sends this lane's share of the phases; answers are recorded by the tasks it spawns.
    async fn send(&self, command: &Command, clients: &[LoadClients], timer: &PreciseTimer, workload: &mut Workload) {
        let shared = &self.shared;
        let mut start = command.start;
        let mut next_client = 0;
        let mut woke = Instant::now();
        for (index, stats) in command.phases.iter().enumerate() {
            let begin = (self.index == 0).then(|| {
                shared.current.store(index, Ordering::Relaxed);
                let watch = shared.watch.clone();
                shared.main.spawn(async move { watch.sample().await })
            });
            for i in (self.index as u64..stats.phase.requests()).step_by(self.count) {
                let intended = start + stats.phase.offset(i);
                let op = workload.next_op();
                // A wake-up's sends share a connection, so they leave in one write.
                if intended > Instant::now() {
                    if let Err(error) = timer.sleep_until(intended.max(woke + shared.send_window)).await {
                        tracing::warn!(%error, "the send timer failed; sending at once");
                    }
                    woke = Instant::now();
                    next_client = (next_client + 1) % clients.len();
                }
                let permit = match shared.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => match shared.in_flight.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                stats.sent(intended.elapsed());
                let client = clients[next_client].clone();
                let (stats, timeout) = (stats.clone(), shared.timeout);
                tokio::spawn(async move {
                    let kind = op.kind();
                    let outcome = op.send(&client, timeout).await;
                    stats.record(kind, intended.elapsed(), outcome);
                    drop(permit);
                });
            }
            start += stats.phase.duration;
            let _ = timer.sleep_until(start).await;
            if let Some(begin) = begin {
                let watch = shared.watch.clone();
                let end = shared.main.spawn(async move { watch.sample().await });
                stats.samples.lock().unwrap_or_else(PoisonError::into_inner).extend([begin, end]);
            }
        }
    }
}

/// On a machine whose cores the suite keeps busy, an ordinary thread waking from its sleep can
/// wait milliseconds for a core, and every send behind it is late. Each lane asks for a
/// real-time (FIFO) priority, else a higher nice value, through util-linux (root or CAP_SYS_NICE).
/// Its work is bounded by the rate asked for, so this changes the order the cores serve the
/// processes in, not how much the suite gets. Without either, it runs as it is and late sends
/// say so.
fn raise_priority() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    let Some(tid) = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name().map(|tid| tid.to_string_lossy().into_owned()))
    else {
        return;
    };
    let quiet = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if quiet("chrt", &["--fifo", "-p", "10", &tid]) || quiet("renice", &["-n", "-15", "-p", &tid]) {
        return;
    }
    WARNED.call_once(|| {
        tracing::warn!(
            "cannot raise the pacing thread's priority (chrt/renice refused): sends may be late on a busy machine"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_spread_evenly_over_the_phase() {
        let phase = Phase { label: "x".into(), rate: 400.0, duration: Duration::from_secs(3), measured: true };
        assert_eq!(phase.requests(), 1200);
        assert_eq!(phase.offset(0), Duration::ZERO);
        assert_eq!(phase.offset(1), Duration::from_micros(2500));
        assert_eq!(phase.offset(1199), Duration::from_micros(2_997_500));
    }

    #[test]
    fn records_latency_by_kind_and_errors_by_name() {
        let stats =
            PhaseStats::new(Phase { label: "x".into(), rate: 1.0, duration: Duration::from_secs(1), measured: true });
        stats.record(OpKind::GetItem, Duration::from_micros(800), Ok(()));
        let failure = |kind: &str, detail: &str| Err(Failure { kind: kind.into(), detail: detail.into() });
        stats.record(OpKind::GetItem, Duration::from_millis(3), failure("Unavailable", "first"));
        stats.record(OpKind::GetItem, Duration::from_millis(3), failure("Unavailable", "second"));
        stats.record(OpKind::SearchItems, Duration::from_secs(120), failure("DeadlineExceeded", "slow"));
        let (all, by_kind) = stats.latencies();
        assert_eq!(all.len(), 4);
        assert_eq!(by_kind[&OpKind::GetItem].len(), 3);
        assert!(all.max() >= 59_000_000, "latencies above the bound are kept at the bound");
        assert_eq!(stats.ok.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.errors(),
            BTreeMap::from([
                ("DeadlineExceeded".into(), (1, "slow".into())),
                ("Unavailable".into(), (2, "first".into()))
            ])
        );
    }
}
