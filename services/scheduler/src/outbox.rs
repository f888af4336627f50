//! Delivers progress events from the outbox to the user service in batches. Rows leave the
//! outbox only after the user service acknowledged them; it dedupes by attempt id, so a batch
//! delivered twice (a crash between acknowledge and delete) counts once.

use std::sync::Arc;
use std::time::Duration;

use alp_proto::user::v1::RecordProgressRequest;
use alp_proto::user::v1::user_service_client::UserServiceClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::store::SchedulerStore;

const BATCH_SIZE: u32 = 500;
const IDLE_POLL: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OutboxRelay {
    store: SchedulerStore,
    user: UserServiceClient<Channel>,
    wake: Arc<Notify>,
}

impl OutboxRelay {
    pub fn new(store: SchedulerStore, user: UserServiceClient<Channel>) -> Self {
        Self { store, user, wake: Arc::new(Notify::new()) }
    }

    /// Called after an attempt commits so delivery starts without waiting for the poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let delivered = self.deliver_once().await;
            if !matches!(delivered, Ok(0)) {
                self.report_pending().await;
            }
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

    /// Sends one batch; the number of events delivered.
    async fn deliver_once(&self) -> Result<usize, String> {
        let batch = self.store.outbox_batch(BATCH_SIZE).await.map_err(|e| e.to_string())?;
        if batch.is_empty() {
            metrics::gauge!("alp_scheduler_outbox_pending").set(0.0);
            return Ok(0);
        }
        let (seqs, events): (Vec<i64>, Vec<_>) = batch.into_iter().unzip();
        let response = self
            .user
            .clone()
            .record_progress(RecordProgressRequest { events })
            .await
            .map_err(|s| format!("user service: {}", s.message()))?
            .into_inner();
        self.store.outbox_delete(&seqs).await.map_err(|e| e.to_string())?;
        metrics::counter!("alp_scheduler_outbox_delivered_total").increment(seqs.len() as u64);
        tracing::debug!(
            delivered = seqs.len(),
            applied = response.applied_count,
            duplicates = response.duplicate_count,
            unknown_learners = response.unknown_learner_count,
            "progress delivered"
        );
        Ok(seqs.len())
    }
}
