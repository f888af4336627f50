//! Progress events to the user service. Each event is written to the outbox in the attempt's
//! transaction, and leaves it only after the user service acknowledged it; the user service
//! dedupes by attempt id, so an event delivered twice counts once.
//!
//! Two ways out: right after an attempt commits, its event joins a batch of the events of the
//! moment (the fast path, milliseconds behind the attempt); and a relay sweeps whatever the fast
//! path could not deliver, polling, with backoff while the user service is down. An outage of
//! the user service delays progress; it never loses it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use alp_proto::user::v1::{ProgressEvent, RecordProgressRequest, RecordProgressResponse};
use alp_runtime::batch::{BatchConfig, Batcher};
use alp_runtime::client::Rpc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::SchedulerStore;

const BATCH_SIZE: u32 = 500;
const IDLE_POLL: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The fast path is not on the caller's path, so it can wait a little for a fuller batch.
const FAST_PATH: BatchConfig =
    BatchConfig { max_size: 500, max_delay: Duration::from_millis(5), queue: 10_000, max_in_flight: 4 };

/// How long the relay leaves a new event to the fast path before sweeping it.
const FAST_PATH_ALLOWANCE: Duration = Duration::from_secs(1);

/// An outbox row: its sequence number and event, known by the event's attempt id.
#[derive(Debug, Clone)]
struct Pending {
    seq: i64,
    event: ProgressEvent,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.event.attempt_id == other.event.attempt_id
    }
}

impl Eq for Pending {}

impl Hash for Pending {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.event.attempt_id.hash(state);
    }
}

type RecordProgress = Rpc<RecordProgressRequest, RecordProgressResponse>;

#[derive(Debug, Clone)]
pub struct OutboxRelay {
    store: SchedulerStore,
    user: RecordProgress,
    fast_path: Batcher<Pending, (), String>,
    wake: Arc<Notify>,
}

impl OutboxRelay {
    pub fn new(store: SchedulerStore, user: RecordProgress) -> Self {
        let fast_path = {
            let (store, user) = (store.clone(), user.clone());
            Batcher::new("user.progress", FAST_PATH, move |rows: Vec<Pending>| {
                let (store, user) = (store.clone(), user.clone());
                async move {
                    deliver(&store, &user, rows.iter().map(|r| (r.seq, r.event.clone())).collect()).await?;
                    Ok(rows.into_iter().map(|row| (row, ())).collect())
                }
            })
        };
        Self { store, user, fast_path, wake: Arc::new(Notify::new()) }
    }

    /// Delivers a just-committed event in the next batch; on failure the event stays in the
    /// outbox and the relay is woken to retry it with backoff.
    pub fn send(&self, seq: i64, event: ProgressEvent) {
        let relay = self.clone();
        tokio::spawn(async move {
            if let Err(error) = relay.fast_path.load(Pending { seq, event }).await {
                tracing::debug!(%error, "progress fast path failed; the relay will retry");
                relay.wake.notify_one();
            }
        });
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let delivered = self.deliver_once().await;
            self.report_pending().await;
            let delay = match delivered {
                Ok(0) => {
                    backoff = MIN_BACKOFF;
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                    }
                    continue;
                }
                Ok(_) => {
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Err(reason) => {
                    tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "progress delivery failed; events stay in the outbox");
                    let delay = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    delay
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes how many events wait, so an outage of the user service shows as a growing gauge.
    async fn report_pending(&self) {
        if let Ok(depth) = self.store.outbox_depth().await {
            metrics::gauge!("alp_scheduler_outbox_pending").set(depth as f64);
        }
    }

    /// Sends one batch from the outbox; the number of events delivered.
    async fn deliver_once(&self) -> Result<usize, String> {
        // Younger events are still with the fast path.
        let recorded_before = alp_runtime::time::now_millis() - FAST_PATH_ALLOWANCE.as_millis() as i64;
        let batch = self.store.outbox_batch(BATCH_SIZE, recorded_before).await.map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(0);
        }
        let count = batch.len();
        deliver(&self.store, &self.user, batch).await?;
        Ok(count)
    }
}

/// Sends events to the user service and, once it acknowledged them, deletes their rows.
async fn deliver(store: &SchedulerStore, user: &RecordProgress, rows: Vec<(i64, ProgressEvent)>) -> Result<(), String> {
    let (seqs, events): (Vec<i64>, Vec<ProgressEvent>) = rows.into_iter().unzip();
    let response = user.call(RecordProgressRequest { events }).await.map_err(|e| e.to_string())?;
    store.outbox_delete(&seqs).await.map_err(|e| e.to_string())?;
    metrics::counter!("alp_scheduler_outbox_delivered_total").increment(seqs.len() as u64);
    tracing::debug!(
        delivered = seqs.len(),
        applied = response.applied_count,
        duplicates = response.duplicate_count,
        unknown_learners = response.unknown_learner_count,
        "progress delivered"
    );
    Ok(())
}
