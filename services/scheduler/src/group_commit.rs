//! Group commit: attempts submitted at the same time are recorded in one statement and one
//! commit.
//!
//! Each SubmitAttempt hands its record to a writer. While fewer than `max_in_flight` batches
//! are being written, a record goes out at once, alone if nothing else waits, so a quiet
//! scheduler adds no latency. Under load, the records that arrive while the batches in flight
//! commit form the next batch, and PostgreSQL pays its per-statement and per-commit costs once
//! per batch instead of once per attempt: pgbench with 8 clients ran the one-row statement at
//! 7,142/s and the four-row one at 4,311/s, i.e. 17,246 attempts/s (docs/performance.md).
//!
//! A caller is answered only after its batch committed, so an acknowledged attempt is durable,
//! and after the batch's learners' cached memory states were dropped, so their next NextItems
//! reads what the batch wrote: one invalidation, and one announcement to the other replicas,
//! per batch rather than per attempt.
//! A batch the database refused is written again record by record, so one bad record fails
//! alone; when the database was down or too slow, every record of the batch gets that at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alp_runtime::{ErrorKind, ServiceError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::cache::{SchedulerCaches, memory_key};
use crate::error::SchedulerError;
use crate::store::{AttemptRecord, SchedulerStore};

#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Records in one batch.
    pub max_batch: usize,
    /// Batches being written at once. One: the records that arrive while it commits form the
    /// next batch. With two, batches at 1,200 attempts/s were still of one record.
    pub max_in_flight: usize,
    /// Records waiting for a batch; submitters wait beyond it.
    pub queue: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self { max_batch: 64, max_in_flight: 1, queue: 10_000 }
    }
}

/// The sequence numbers of a record's outbox rows, in its order; None when its attempt id was
/// recorded before.
type Written = Result<Option<Vec<i64>>, SchedulerError>;

struct Waiting {
    record: AttemptRecord,
    reply: oneshot::Sender<Written>,
}

/// Batches written so far and the records in them.
#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    records: AtomicU64,
}

/// The front of the writer; cheap to clone. The writer stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Waiting>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting").field("attempt_id", &self.record.attempt.attempt_id).finish_non_exhaustive()
    }
}

impl GroupCommit {
    pub fn new(store: SchedulerStore, caches: SchedulerCaches, config: GroupCommitConfig) -> Self {
        let (queue, receiver) = mpsc::channel(config.queue.max(1));
        let counts = Arc::new(Counts::default());
        tokio::spawn(gather(store, caches, config, receiver, Arc::clone(&counts)));
        Self { queue, counts }
    }

    /// Records the attempt with the next batch; see [`SchedulerStore::record_many`].
    pub async fn record(&self, record: AttemptRecord) -> Result<Option<Vec<i64>>, SchedulerError> {
        let stopped = || SchedulerError::Unavailable("the attempt writer has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        self.queue.send(Waiting { record, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// (batches, records) written so far.
    pub fn written(&self) -> (u64, u64) {
        (self.counts.batches.load(Ordering::Relaxed), self.counts.records.load(Ordering::Relaxed))
    }
}

async fn gather(
    store: SchedulerStore,
    caches: SchedulerCaches,
    config: GroupCommitConfig,
    mut queue: mpsc::Receiver<Waiting>,
    counts: Arc<Counts>,
) {
    let writers = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    while let Some(first) = queue.recv().await {
        // Records that arrive while every writer is busy join this batch.
        let Ok(writer) = Arc::clone(&writers).acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < config.max_batch.max(1) {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        metrics::histogram!("alp_batch_keys", "batcher" => "attempt_records").record(batch.len() as f64);
        let (store, caches) = (store.clone(), caches.clone());
        // In a task of its own: a submitter that gives up never cancels the others' commit.
        tokio::spawn(async move {
            let (records, replies): (Vec<AttemptRecord>, Vec<_>) =
                batch.into_iter().map(|w| (w.record, w.reply)).unzip();
            let written = write(&store, &records).await;
            drop(writer);
            caches.memory.invalidate(&changed_memory(&records, &written)).await;
            for (reply, written) in replies.into_iter().zip(written) {
                // A submitter that left does not want its answer.
                let _ = reply.send(written);
            }
        });
    }
}

/// The cache keys of the memory states the batch wrote, each once.
fn changed_memory(records: &[AttemptRecord], written: &[Written]) -> Vec<String> {
    let mut keys: Vec<String> = records
        .iter()
        .zip(written)
        .filter(|(_, written)| matches!(written, Ok(Some(_))))
        .map(|(r, _)| memory_key(&r.attempt.learner_id, &r.attempt.course_id))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Each record's outcome, in order.
async fn write(store: &SchedulerStore, records: &[AttemptRecord]) -> Vec<Written> {
    match store.record_many(records).await {
        Ok(written) => written.into_iter().map(Ok).collect(),
        // The database is down or slow, not a record bad: every record gets the error at once,
        // rather than a timeout each, one after another, while the next batches wait.
        Err(error)
            if records.len() == 1 || matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::DeadlineExceeded) =>
        {
            let shared = error.to_string();
            let others = (1..records.len()).map(|_| Err(SchedulerError::Unavailable(shared.clone())));
            std::iter::once(Err(error.into())).chain(others).collect()
        }
        Err(error) => {
            tracing::warn!(%error, records = records.len(), "a batch of attempts failed; writing them one by one");
            let mut written = Vec::with_capacity(records.len());
            for record in records {
                written.push(store.record(record).await.map_err(SchedulerError::from));
            }
            written
        }
    }
}
