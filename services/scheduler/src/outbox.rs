//! What follows from the log of record: each attempt's commit writes one outbox row per
//! consumer (scoring's models, the user service's progress), and a row leaves the outbox only
//! after its consumer acknowledged it. Consumers dedupe by attempt id, so a row delivered twice
//! counts once, and the commit of the attempt is the only durable write before the answer.
//!
//! Two ways out per consumer. Right after an attempt commits, its row joins the consumer's
//! fast path: one batch in flight at a time, and while it is out the next one gathers, so a
//! slow consumer gets fewer, larger batches (group commit). A sweeper delivers whatever the
//! fast path could not, with backoff while the consumer is down. Delivered rows are deleted in
//! bulk a moment later; a crash before that only delivers them again. An outage of a consumer
//! delays its rows; it never loses them.
//!
//! Rows reach a consumer in commit order, except that rows of a failed delivery come again after
//! later ones; scoring then takes those answers in the order delivered.
//!
//! The learner's next NextItems must rank with their latest answer, which scoring learns from
//! its batch: [`Relay::settled`] waits for the learner's rows on this replica's fast path,
//! asking it to send at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::SchedulerStore;

/// Whose rows these are: the `consumer` column of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consumer {
    Scoring,
    User,
}

impl Consumer {
    pub fn as_str(self) -> &'static str {
        match self {
            Consumer::Scoring => "scoring",
            Consumer::User => "user",
        }
    }
}

/// How rows reach one consumer.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Rows in one delivery.
    pub max_batch: usize,
    /// Longest a row waits on the fast path for company.
    pub max_delay: Duration,
    /// Rows waiting for the fast path; past it they are left to the sweeper.
    pub queue: usize,
    /// How long the sweeper leaves a new row to the fast path.
    pub fast_path_allowance: Duration,
    /// The sweeper's poll when idle.
    pub idle_poll: Duration,
    /// How often delivered rows are deleted.
    pub delete_every: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_batch: 500,
            max_delay: Duration::from_millis(200),
            queue: 20_000,
            fast_path_allowance: Duration::from_secs(1),
            idle_poll: Duration::from_secs(2),
            delete_every: Duration::from_millis(250),
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Delivered rows deleted per statement.
const DELETES_PER_STATEMENT: usize = 1000;

/// Sends encoded rows to the consumer; Ok once it has durably applied them.
pub type Deliver = Arc<dyn Fn(Vec<Vec<u8>>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A committed row on its way.
#[derive(Debug)]
struct Pending {
    seq: i64,
    /// Set when the learner's next NextItems waits for the row.
    learner_id: Option<String>,
    event: Vec<u8>,
}

#[derive(Clone)]
pub struct Relay {
    consumer: Consumer,
    config: RelayConfig,
    store: SchedulerStore,
    deliver: Deliver,
    fast_path: mpsc::Sender<Pending>,
    /// Send the batch being gathered now.
    flush: Arc<Notify>,
    /// Wakes the sweeper after the fast path failed.
    wake: Arc<Notify>,
    /// Delivered rows awaiting their bulk delete.
    delivered: Arc<Mutex<Vec<i64>>>,
    /// Per learner, their rows on the fast path; bumped after each delivery.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    deliveries: watch::Sender<u64>,
    /// Ends the fast path once [`Relay::run`] has stopped.
    stopped: CancellationToken,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("consumer", &self.consumer).finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay with its fast path running; [`Relay::run`] starts the sweeper.
    pub fn new(consumer: Consumer, config: RelayConfig, store: SchedulerStore, deliver: Deliver) -> Self {
        let (fast_path, queue) = mpsc::channel(config.queue.max(1));
        let relay = Self {
            consumer,
            config,
            store,
            deliver,
            fast_path,
            flush: Arc::new(Notify::new()),
            wake: Arc::new(Notify::new()),
            delivered: Arc::default(),
            in_flight: Arc::default(),
            deliveries: watch::Sender::new(0),
            stopped: CancellationToken::new(),
        };
        tokio::spawn(relay.clone().fast_path(queue));
        relay
    }

    /// Hands a just-committed row to the fast path. A full queue leaves it to the sweeper.
    /// `awaited`: the learner's next NextItems waits for this row ([`Relay::settled`]).
    pub fn send(&self, seq: i64, learner_id: &str, event: Vec<u8>, awaited: bool) {
        let learner_id = awaited.then(|| learner_id.to_owned());
        if let Some(learner) = &learner_id {
            self.counts().entry(learner.clone()).and_modify(|n| *n += 1).or_insert(1);
        }
        if let Err(full) = self.fast_path.try_send(Pending { seq, learner_id, event }) {
            self.release(full.into_inner().learner_id.as_slice());
        }
    }

    /// Waits, at most `bound`, until none of the learner's rows is on this replica's fast path.
    pub async fn settled(&self, learner_id: &str, bound: Duration) {
        let mut deliveries = self.deliveries.subscribe();
        if !self.counts().contains_key(learner_id) {
            return;
        }
        self.flush.notify_one();
        let until = Instant::now() + bound;
        while self.counts().contains_key(learner_id) {
            if tokio::time::timeout_at(until, deliveries.changed()).await.is_err() {
                tracing::debug!(learner_id, consumer = self.consumer.as_str(), "outbox not settled in time");
                return;
            }
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, learners: &[String]) {
        if learners.is_empty() {
            return;
        }
        let mut counts = self.counts();
        for learner in learners {
            if let Some(n) = counts.get_mut(learner) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(learner);
                }
            }
        }
        drop(counts);
        self.deliveries.send_modify(|n| *n += 1);
    }

    async fn fast_path(self, mut queue: mpsc::Receiver<Pending>) {
        let max_batch = self.config.max_batch.max(1);
        loop {
            let first = tokio::select! {
                next = queue.recv() => next,
                () = self.stopped.cancelled() => None,
            };
            let Some(first) = first else { return };
            let flush_at = Instant::now() + self.config.max_delay;
            let mut batch = vec![first];
            while batch.len() < max_batch {
                tokio::select! {
                    biased;
                    next = queue.recv() => match next {
                        Some(row) => batch.push(row),
                        None => break,
                    },
                    () = self.flush.notified() => break,
                    () = tokio::time::sleep_until(flush_at) => break,
                }
            }
            let learners: Vec<String> = batch.iter_mut().filter_map(|p| p.learner_id.take()).collect();
            let rows = batch.into_iter().map(|p| (p.seq, p.event)).collect();
            // Inline: one batch in flight, and the queue fills the next one meanwhile.
            if let Err(error) = self.deliver_rows(rows).await {
                tracing::debug!(%error, consumer = self.consumer.as_str(), "outbox fast path failed; the sweeper will retry");
                self.wake.notify_one();
            }
            self.release(&learners);
        }
    }

    /// Sends rows to the consumer; once it acknowledged them, they are due for deletion.
    async fn deliver_rows(&self, rows: Vec<(i64, Vec<u8>)>) -> Result<(), String> {
        let (seqs, events): (Vec<i64>, Vec<Vec<u8>>) = rows.into_iter().unzip();
        (self.deliver)(events).await?;
        metrics::counter!("alp_scheduler_outbox_delivered_total", "consumer" => self.consumer.as_str())
            .increment(seqs.len() as u64);
        self.delivered.lock().unwrap_or_else(PoisonError::into_inner).extend(seqs);
        Ok(())
    }

    /// The sweeper and the bulk deletes, until `stop`; then the last deletes.
    pub async fn run(self, stop: CancellationToken) {
        tokio::join!(self.sweep(stop.clone()), self.delete_delivered(stop));
        self.stopped.cancel();
    }

    async fn sweep(&self, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let swept = self.sweep_once().await;
            self.report_pending().await;
            let delay = match swept {
                Ok(0) => {
                    backoff = MIN_BACKOFF;
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(self.config.idle_poll) => {}
                    }
                    continue;
                }
                Ok(_) => {
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Err(reason) => {
                    tracing::warn!(%reason, consumer = self.consumer.as_str(), retry_in_ms = backoff.as_millis() as u64, "outbox delivery failed; rows stay in the outbox");
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

    /// Delivers one batch of rows the fast path left behind; how many.
    async fn sweep_once(&self) -> Result<usize, String> {
        let recorded_before = alp_runtime::time::now_millis() - self.config.fast_path_allowance.as_millis() as i64;
        // Read before the rows: a seq leaves `delivered` only once its delete has committed, so
        // a delivered row is either listed here or no longer in the table below.
        let awaiting_delete: HashSet<i64> =
            self.delivered.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect();
        let limit = u32::try_from(self.config.max_batch).unwrap_or(u32::MAX);
        let mut rows =
            self.store.outbox_batch(self.consumer, limit, recorded_before).await.map_err(|e| e.to_string())?;
        rows.retain(|(seq, _)| !awaiting_delete.contains(seq));
        if rows.is_empty() {
            return Ok(0);
        }
        let count = rows.len();
        self.deliver_rows(rows).await?;
        Ok(count)
    }

    async fn delete_delivered(&self, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.config.delete_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                _ = every.tick() => false,
            };
            // The seqs stay listed until their delete commits, so the sweeper never takes a row
            // being deleted for an undelivered one. Others only append: the copy is a prefix.
            let seqs = self.delivered.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let mut failed = Vec::new();
            for chunk in seqs.chunks(DELETES_PER_STATEMENT) {
                if let Err(error) = self.store.outbox_delete(self.consumer, chunk).await {
                    tracing::warn!(%error, "deleting delivered outbox rows failed");
                    failed.extend_from_slice(chunk);
                }
            }
            let mut delivered = self.delivered.lock().unwrap_or_else(PoisonError::into_inner);
            delivered.drain(..seqs.len());
            // Kept for the next round; meanwhile the sweeper skips them.
            delivered.extend(failed);
            drop(delivered);
            if stopping {
                return;
            }
        }
    }

    /// Publishes how many rows wait, so an outage of a consumer shows as a growing gauge.
    async fn report_pending(&self) {
        if let Ok(depth) = self.store.outbox_depth(self.consumer).await {
            metrics::gauge!("alp_scheduler_outbox_pending", "consumer" => self.consumer.as_str()).set(depth as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use alp_runtime::db::Database;

    use super::*;
    use crate::store::AttemptRecord;

    /// The batches delivered so far; the first `fail` deliveries fail.
    #[derive(Default)]
    struct Recipient {
        batches: Mutex<Vec<Vec<Vec<u8>>>>,
        fail: AtomicUsize,
    }

    fn deliver(consumer: &Arc<Recipient>) -> Deliver {
        let consumer = Arc::clone(consumer);
        Arc::new(move |rows| {
            let consumer = Arc::clone(&consumer);
            Box::pin(async move {
                if consumer.fail.load(Ordering::SeqCst) > 0 {
                    consumer.fail.fetch_sub(1, Ordering::SeqCst);
                    return Err("consumer down".to_owned());
                }
                consumer.batches.lock().unwrap().push(rows);
                Ok(())
            })
        })
    }

    async fn store() -> (SchedulerStore, alp_runtime::testing::TestDatabase) {
        let test_db = alp_runtime::testing::sqlite("scheduler");
        let db = Database::connect(&test_db.config).await.unwrap();
        db.migrate(crate::MIGRATIONS).await.unwrap();
        (SchedulerStore::new(db), test_db)
    }

    /// A store, then paused time: the fast path never touches the database, and the pool's
    /// timeouts must not run on a clock that jumps.
    async fn store_then_pause() -> (SchedulerStore, alp_runtime::testing::TestDatabase) {
        let store = store().await;
        tokio::time::pause();
        store
    }

    const SLOW: RelayConfig = RelayConfig {
        max_batch: 500,
        max_delay: Duration::from_secs(3600),
        queue: 100,
        fast_path_allowance: Duration::ZERO,
        idle_poll: Duration::from_secs(3600),
        delete_every: Duration::from_millis(250),
    };

    #[tokio::test]
    async fn rows_of_the_moment_go_in_one_batch_after_the_delay() {
        let (store, _db) = store_then_pause().await;
        let consumer = Arc::new(Recipient::default());
        let config = RelayConfig { max_delay: Duration::from_millis(50), ..SLOW };
        let relay = Relay::new(Consumer::Scoring, config, store, deliver(&consumer));
        for n in 0..3u8 {
            relay.send(i64::from(n), "ada", vec![n], false);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(consumer.batches.lock().unwrap().is_empty(), "waiting for company");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*consumer.batches.lock().unwrap(), vec![vec![vec![0], vec![1], vec![2]]]);
    }

    #[tokio::test]
    async fn next_items_sends_the_learners_rows_at_once_and_waits_for_them() {
        let (store, _db) = store_then_pause().await;
        let consumer = Arc::new(Recipient::default());
        let relay = Relay::new(Consumer::Scoring, SLOW, store, deliver(&consumer));
        relay.send(1, "ada", vec![1], true);
        relay.send(2, "bob", vec![2], false);
        let started = Instant::now();
        // The delay is an hour: only the flush can deliver within the minute's bound.
        relay.settled("ada", Duration::from_secs(60)).await;
        assert!(started.elapsed() < Duration::from_secs(60), "settled by the flush, not the bound");
        assert_eq!(*consumer.batches.lock().unwrap(), vec![vec![vec![1], vec![2]]]);
        // Nobody else's rows to wait for; and a learner with none returns at once.
        relay.settled("cy", Duration::from_secs(60)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_consumer_that_is_down_delays_the_wait_only_to_its_bound() {
        let (store, _db) = store_then_pause().await;
        let consumer = Arc::new(Recipient { fail: AtomicUsize::new(usize::MAX), ..Recipient::default() });
        let relay = Relay::new(Consumer::Scoring, SLOW, store, deliver(&consumer));
        relay.send(1, "ada", vec![1], true);
        let started = Instant::now();
        relay.settled("ada", Duration::from_millis(200)).await;
        // The failed delivery released the learner: the row is the sweeper's now.
        assert!(started.elapsed() < Duration::from_millis(200));
        assert!(consumer.batches.lock().unwrap().is_empty());
    }

    /// On the real clock, with short intervals: the sweeper and the deletes use the database.
    #[tokio::test]
    async fn the_sweeper_delivers_what_the_fast_path_could_not_and_deletes_it() {
        let (store, _db) = store().await;
        let row = |id: &str| crate::store::AttemptRow {
            attempt_id: id.into(),
            learner_id: "ada".into(),
            course_id: "c".into(),
            item_id: id.into(),
            rating: 3,
            correct: true,
            response_ms: 0,
            answer_ms: 0,
            record_ms: 0,
            stability: 1.0,
            difficulty: 5.0,
            due_ms: 0,
            predicted_recall: 0.0,
            predicted_success: 0.5,
            mock_test_id: String::new(),
        };
        let memory = |id: &str| crate::store::MemoryRow {
            item_id: id.into(),
            course_id: "c".into(),
            stability: 1.0,
            difficulty: 5.0,
            last_review_ms: 0,
            due_ms: 0,
            last_rating: 3,
            review_count: 1,
            lapse_count: 0,
            phase: 2,
            step: 0,
            knowledge: None,
        };
        let scoring = Consumer::Scoring;
        for id in ["a1", "a2"] {
            let record =
                AttemptRecord { attempt: row(id), memory: memory(id), outbox: vec![(scoring, id.as_bytes().to_vec())] };
            store.record(&record).await.unwrap();
        }
        // Down for the fast path's batch and the sweeper's first try.
        let consumer = Arc::new(Recipient { fail: AtomicUsize::new(2), ..Recipient::default() });
        let quick =
            RelayConfig { idle_poll: Duration::from_millis(20), delete_every: Duration::from_millis(20), ..SLOW };
        let relay = Relay::new(scoring, quick, store.clone(), deliver(&consumer));
        let stop = CancellationToken::new();
        let running = tokio::spawn(relay.clone().run(stop.clone()));
        relay.send(1, "ada", b"a1".to_vec(), true);
        relay.settled("ada", Duration::from_secs(1)).await;
        for _ in 0..100 {
            if store.outbox_depth(scoring).await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(store.outbox_depth(scoring).await.unwrap(), 0, "delivered, then deleted");
        assert_eq!(*consumer.batches.lock().unwrap(), vec![vec![b"a1".to_vec(), b"a2".to_vec()]]);
        stop.cancel();
        running.await.unwrap();
    }
}
