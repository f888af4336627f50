//! Request batching with DataLoader semantics.
//!
//! Callers ask for one key each; a worker gathers the keys that arrive together into one batch,
//! sent when it holds `max_size` distinct keys or `max_delay` after its first key, whichever
//! comes first. Duplicate keys in a batch are sent once and every caller of the key gets the
//! answer. A failed batch gives its error to every waiter and the worker carries on with the
//! next one. Batches run in tasks of their own, so a caller that gives up (its deadline, a
//! dropped request) never cancels a batch the other callers wait on. The queue is bounded and at
//! most `max_in_flight` batches run at once: past that, callers wait to enqueue (backpressure),
//! each within its own deadline.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Distinct keys in one batch.
    pub max_size: usize,
    /// Longest a key waits for others before its batch is sent.
    pub max_delay: Duration,
    /// Keys waiting to join a batch; callers wait beyond it.
    pub queue: usize,
    /// Batches running at once.
    pub max_in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_size: 100, max_delay: Duration::from_millis(2), queue: 10_000, max_in_flight: 8 }
    }
}

/// Why a key got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError<E> {
    /// The batch holding the key failed.
    #[error("{0}")]
    Failed(E),
    /// The batch ended without an answer (it panicked), or the batcher has stopped.
    #[error("batcher {0} lost the request")]
    Lost(Arc<str>),
}

type Answer<V, E> = Result<Option<V>, E>;

struct Waiter<K, V, E> {
    key: K,
    reply: oneshot::Sender<Answer<V, E>>,
}

/// A batching front for one batch call; cheap to clone. The worker stops when the last clone
/// is dropped and the queue is empty.
pub struct Batcher<K, V, E> {
    name: Arc<str>,
    queue: mpsc::Sender<Waiter<K, V, E>>,
}

impl<K, V, E> Clone for Batcher<K, V, E> {
    fn clone(&self) -> Self {
        Self { name: Arc::clone(&self.name), queue: self.queue.clone() }
    }
}

impl<K, V, E> std::fmt::Debug for Batcher<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<K, V, E> Batcher<K, V, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    /// Starts the worker. `load` answers a batch of distinct keys with the values it found;
    /// keys it leaves out are answered `None`.
    pub fn new<F, Fut>(name: &str, config: BatchConfig, load: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
    {
        let name: Arc<str> = name.into();
        let (queue, receiver) = mpsc::channel(config.queue.max(1));
        tokio::spawn(gather(Arc::clone(&name), config, receiver, Arc::new(load)));
        Self { name, queue }
    }

    /// The value of `key`, from the next batch.
    ///
    /// # Errors
    /// The batch's error, or [`BatchError::Lost`] when it ended without an answer.
    pub async fn load(&self, key: K) -> Result<Option<V>, BatchError<E>> {
        let (reply, answer) = oneshot::channel();
        let lost = || BatchError::Lost(Arc::clone(&self.name));
        self.queue.send(Waiter { key, reply }).await.map_err(|_| lost())?;
        match answer.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(BatchError::Failed(error)),
            Err(_) => Err(lost()),
        }
    }
}

async fn gather<K, V, E, F, Fut>(
    name: Arc<str>,
    config: BatchConfig,
    mut receiver: mpsc::Receiver<Waiter<K, V, E>>,
    load: Arc<F>,
) where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + Send + 'static,
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
{
    let running = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let max_size = config.max_size.max(1);
    while let Some(first) = receiver.recv().await {
        let opened = Instant::now();
        let flush_at = opened + config.max_delay;
        let mut waiters: HashMap<K, Vec<oneshot::Sender<Answer<V, E>>>> = HashMap::new();
        waiters.entry(first.key).or_default().push(first.reply);
        let mut closed = false;
        while waiters.len() < max_size {
            tokio::select! {
                biased;
                next = receiver.recv() => match next {
                    Some(waiter) => waiters.entry(waiter.key).or_default().push(waiter.reply),
                    None => {
                        closed = true;
                        break;
                    }
                },
                () = tokio::time::sleep_until(flush_at) => break,
            }
        }
        let linger = opened.elapsed();
        // Waiting here, with the queue unread, is what pushes back on callers.
        let Ok(permit) = Arc::clone(&running).acquire_owned().await else { return };
        metrics::histogram!("alp_batch_keys", "batcher" => name.to_string()).record(waiters.len() as f64);
        metrics::histogram!("alp_batch_linger_seconds", "batcher" => name.to_string()).record(linger.as_secs_f64());
        let keys: Vec<K> = waiters.keys().cloned().collect();
        let batch = load(keys);
        tokio::spawn(async move {
            let result = batch.await;
            drop(permit);
            match result {
                Ok(mut values) => {
                    for (key, replies) in waiters {
                        let value = values.remove(&key);
                        for reply in replies {
                            // A caller that left does not want its answer; nothing to do.
                            let _ = reply.send(Ok(value.clone()));
                        }
                    }
                }
                Err(error) => {
                    for reply in waiters.into_values().flatten() {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;

    type Log = Arc<Mutex<Vec<(Duration, Vec<u32>)>>>;

    /// A batcher whose batches double their keys (leaving out 13), logging each batch's keys and
    /// the time it was sent; keys above 1000 fail the batch.
    fn doubling(config: BatchConfig) -> (Batcher<u32, u32, String>, Log) {
        let log: Log = Arc::default();
        let start = Instant::now();
        let seen = Arc::clone(&log);
        let batcher = Batcher::new("test", config, move |keys: Vec<u32>| {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            seen.lock().unwrap().push((start.elapsed(), sorted));
            async move {
                if keys.iter().any(|k| *k > 1000) {
                    return Err("batch refused".to_owned());
                }
                Ok(keys.into_iter().filter(|k| *k != 13).map(|k| (k, k * 2)).collect())
            }
        });
        (batcher, log)
    }

    fn config(max_size: usize) -> BatchConfig {
        BatchConfig { max_size, max_delay: Duration::from_millis(5), queue: 100, max_in_flight: 4 }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_sent_at_once() {
        let (batcher, log) = doubling(config(3));
        let answers = futures::future::join_all((1..=3).map(|k| batcher.load(k))).await;
        assert_eq!(answers, vec![Ok(Some(2)), Ok(Some(4)), Ok(Some(6))]);
        assert_eq!(*log.lock().unwrap(), vec![(Duration::ZERO, vec![1, 2, 3])]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_is_sent_after_the_delay() {
        let (batcher, log) = doubling(config(10));
        let answers = futures::future::join_all((1..=4).map(|k| batcher.load(k))).await;
        assert_eq!(answers.len(), 4);
        assert_eq!(*log.lock().unwrap(), vec![(Duration::from_millis(5), vec![1, 2, 3, 4])]);
    }

    #[tokio::test(start_paused = true)]
    async fn more_keys_than_a_batch_split_into_batches() {
        let (batcher, log) = doubling(config(2));
        let answers = futures::future::join_all((1..=5).map(|k| batcher.load(k))).await;
        assert!(answers.iter().all(Result::is_ok));
        let sizes: Vec<usize> = log.lock().unwrap().iter().map(|(_, keys)| keys.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_keys_are_sent_once_and_answered_to_every_caller() {
        let (batcher, log) = doubling(config(10));
        let answers = futures::future::join_all([7, 7, 8, 7].map(|k| batcher.load(k))).await;
        assert_eq!(answers, vec![Ok(Some(14)), Ok(Some(14)), Ok(Some(16)), Ok(Some(14))]);
        assert_eq!(log.lock().unwrap()[0].1, vec![7, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_the_batch_does_not_answer_is_none() {
        let (batcher, _log) = doubling(config(10));
        let (found, missing) = tokio::join!(batcher.load(12), batcher.load(13));
        assert_eq!((found, missing), (Ok(Some(24)), Ok(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_error_reaches_every_waiter_and_the_batcher_goes_on() {
        let (batcher, log) = doubling(config(10));
        let failed = futures::future::join_all([1, 2, 2000].map(|k| batcher.load(k))).await;
        let refused = Err(BatchError::Failed("batch refused".to_owned()));
        assert_eq!(failed, vec![refused.clone(), refused.clone(), refused]);
        assert_eq!(batcher.load(3).await, Ok(Some(6)), "the next batch is served");
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_does_not_cancel_the_batch() {
        let (batcher, log) = doubling(config(10));
        let quitter = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.load(1).await })
        };
        tokio::task::yield_now().await;
        let stayer = batcher.load(2);
        tokio::pin!(stayer);
        // The quitter's key is queued; it goes away before the batch is sent.
        tokio::select! {
            _ = &mut stayer => panic!("answered before the delay"),
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        quitter.abort();
        assert_eq!(stayer.await, Ok(Some(4)));
        assert_eq!(log.lock().unwrap()[0].1, vec![1, 2], "the batch kept the departed caller's key");
        // And a caller dropped while its batch runs leaves the others their answers.
        let (batcher, _log) = doubling(config(10));
        let slow = batcher.load(5);
        let kept = batcher.load(6);
        let (kept, ()) = tokio::join!(kept, async { drop(slow) });
        assert_eq!(kept, Ok(Some(12)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_makes_callers_wait() {
        let release = Arc::new(Notify::new());
        let gate = Arc::clone(&release);
        let batches = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&batches);
        let config = BatchConfig { max_size: 1, max_delay: Duration::from_millis(1), queue: 1, max_in_flight: 1 };
        let batcher: Batcher<u32, u32, String> = Batcher::new("gated", config, move |keys: Vec<u32>| {
            *counted.lock().unwrap() += 1;
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                Ok(keys.into_iter().map(|k| (k, k)).collect())
            }
        });
        // 1 runs (held at the gate), 2 waits for a running slot, 3 fills the queue, 4 cannot enqueue.
        let mut pending: Vec<_> = (1..=4)
            .map(|k| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.load(k).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*batches.lock().unwrap(), 1, "one batch runs at a time");
        assert!(pending.iter().all(|task| !task.is_finished()), "everyone waits");
        assert_eq!(batcher.queue.capacity(), 0, "the queue is full");
        for _ in 0..4 {
            release.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut answers = Vec::new();
        for task in pending.drain(..) {
            answers.push(task.await.unwrap());
        }
        assert_eq!(answers, vec![Ok(Some(1)), Ok(Some(2)), Ok(Some(3)), Ok(Some(4))]);
        assert_eq!(*batches.lock().unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_batch_is_lost_for_its_waiters_only() {
        let config = config(10);
        let batcher: Batcher<u32, u32, String> = Batcher::new("panicky", config, |keys: Vec<u32>| async move {
            assert!(!keys.contains(&666), "the batch call panicked");
            Ok(keys.into_iter().map(|k| (k, k)).collect())
        });
        assert_eq!(batcher.load(666).await, Err(BatchError::Lost("panicky".into())));
        assert_eq!(batcher.load(1).await, Ok(Some(1)));
    }
}
