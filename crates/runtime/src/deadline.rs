//! Deadlines and admission on the server side.
//!
//! A call's deadline arrives in the `grpc-timeout` header. [`AdmissionLayer`] reads it, refuses a
//! call whose budget is already spent, runs the handler with the deadline in a task-local (so
//! every downstream call it makes can send the remaining budget on, see [`current`]), and answers
//! DEADLINE_EXCEEDED when the budget runs out (tonic's own server timeout answers CANCELLED,
//! which callers cannot tell from a client hanging up). The same layer sheds load: past a bound
//! on calls in flight it answers RESOURCE_EXHAUSTED at once instead of queueing.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being served by this task, if its caller set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `future` with `deadline` as the current call's deadline.
pub async fn scope<F: Future>(deadline: Instant, future: F) -> F::Output {
    DEADLINE.scope(deadline, future).await
}

/// The value of a `grpc-timeout` header: up to eight digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Health and reflection stay outside the bound: a probe must get its answer while the server
/// sheds everything else.
fn always_admitted(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    in_flight: Option<Arc<Semaphore>>,
    limit: usize,
}

impl AdmissionLayer {
    /// `max_in_flight` of 0 admits every call.
    pub fn new(max_in_flight: usize) -> Self {
        let in_flight = (max_in_flight > 0).then(|| Arc::new(Semaphore::new(max_in_flight)));
        Self { in_flight, limit: max_in_flight }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, in_flight: self.in_flight.clone(), limit: self.limit }
    }
}

#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    in_flight: Option<Arc<Semaphore>>,
    limit: usize,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Admission<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>, Error = Infallible>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let timeout = request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        if timeout.is_some_and(|t| t.is_zero()) {
            let refused = tonic::Status::deadline_exceeded("deadline expired before the call started");
            return Box::pin(async move { Ok(refused.into_http()) });
        }
        let permit = match &self.in_flight {
            Some(in_flight) if !always_admitted(request.uri().path()) => match in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::counter!("alp_grpc_server_shed_total").increment(1);
                    let refused = tonic::Status::resource_exhausted(format!(
                        "server is at its limit of {} calls in flight; retry with backoff",
                        self.limit
                    ));
                    return Box::pin(async move { Ok(refused.into_http()) });
                }
            },
            _ => None,
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            // The permit lives as long as the call.
            let _permit = permit;
            let Some(timeout) = timeout else { return future.await };
            let deadline = Instant::now() + timeout;
            match scope(deadline, tokio::time::timeout_at(deadline, future)).await {
                Ok(response) => response,
                Err(_) => {
                    metrics::counter!("alp_grpc_server_deadline_exceeded_total").increment(1);
                    let expired =
                        tonic::Status::deadline_exceeded(format!("deadline of {} ms exceeded", timeout.as_millis()));
                    Ok(expired.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "5", "5x", "-5m", "123456789m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_visible_inside_the_scope_only() {
        assert_eq!(current(), None);
        let deadline = Instant::now() + Duration::from_millis(40);
        let seen = scope(deadline, async { current() }).await;
        assert_eq!(seen, Some(deadline));
        assert_eq!(current(), None);
    }
}
