//! Retries of idempotent calls: jittered exponential backoff within the call's deadline, and a
//! retry budget per downstream (a share of recent calls plus a small floor per second), so a
//! failing dependency sees at most that much extra traffic. Only answers that say "try again"
//! are retried (UNAVAILABLE, RESOURCE_EXHAUSTED from a shedding server, ABORTED); an open
//! circuit, a spent deadline and every client error are not.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

use super::{Call, CallError};

#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Retries allowed as a share of calls over the last `budget_window`.
    pub budget_ratio: f32,
    /// Retries per second allowed whatever the traffic.
    pub budget_floor_per_second: u32,
    pub budget_window: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            budget_ratio: 0.2,
            budget_floor_per_second: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    pub fn budget(&self) -> Arc<TpsBudget> {
        Arc::new(TpsBudget::new(self.budget_window, self.budget_floor_per_second, self.budget_ratio))
    }

    /// Full jitter: uniform in [0, min(max, base·2^retry)].
    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.base_backoff.saturating_mul(1u32 << retry.min(16)).min(self.max_backoff);
        ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

fn worth_retrying(error: &CallError) -> bool {
    matches!(error, CallError::Status { status, .. }
        if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Aborted))
}

/// The retry layer; the budget is shared by every method of one downstream.
#[derive(Debug, Clone)]
pub struct Retrying<S> {
    inner: S,
    config: RetryConfig,
    budget: Arc<TpsBudget>,
    downstream: Arc<str>,
    method: &'static str,
}

impl<S> Retrying<S> {
    pub fn new(
        inner: S,
        config: RetryConfig,
        budget: Arc<TpsBudget>,
        downstream: Arc<str>,
        method: &'static str,
    ) -> Self {
        Self { inner, config, budget, downstream, method }
    }
}

impl<S, T, Resp> Service<Call<T>> for Retrying<S>
where
    S: Service<Call<T>, Response = Resp, Error = CallError> + Clone + Send + 'static,
    S::Future: Send,
    T: Clone + Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Resp, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // Each attempt waits for readiness of its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call<T>) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config;
        let budget = Arc::clone(&self.budget);
        let downstream = Arc::clone(&self.downstream);
        let method = self.method;
        Box::pin(async move {
            budget.deposit();
            let mut attempt = 1;
            loop {
                let error = match inner.clone().oneshot(call.clone()).await {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                };
                if attempt >= config.max_attempts || !worth_retrying(&error) {
                    return Err(error);
                }
                let pause = config.backoff(attempt - 1);
                if tokio::time::Instant::now() + pause >= call.deadline {
                    return Err(error);
                }
                if !budget.withdraw() {
                    metrics::counter!("alp_client_retry_budget_exhausted_total", "downstream" => downstream.to_string())
                        .increment(1);
                    return Err(error);
                }
                metrics::counter!("alp_client_retries_total", "downstream" => downstream.to_string(), "method" => method)
                    .increment(1);
                tracing::debug!(%downstream, method, attempt, pause_ms = pause.as_millis() as u64, error = %error, "retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        })
    }
}
