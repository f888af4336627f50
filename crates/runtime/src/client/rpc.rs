//! One downstream service and the per-method call stacks over it.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tower::retry::budget::TpsBudget;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::endpoints::Endpoints;
use super::retry::Retrying;
use super::transport::Transport;
use super::{AddressError, Call, CallError, DownstreamConfig};
use crate::breaker::{CircuitBreaker, classify};
use crate::metrics::code_name;

/// Sends one request on a replica: the generated client's method, e.g.
/// `|transport, request| ContentServiceClient::new(transport).get_item(request).boxed()`.
pub type SendFn<Req, Resp> =
    fn(Transport, tonic::Request<Req>) -> BoxFuture<'static, Result<tonic::Response<Resp>, tonic::Status>>;

/// What differs between the methods of one downstream.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    pub name: &'static str,
    /// Safe to send twice: reads, and writes the callee dedupes (by attempt id).
    pub idempotent: bool,
    /// Upper bound of one call; the downstream's default when None.
    pub timeout: Option<Duration>,
}

impl Method {
    /// A method that may be retried.
    pub const fn idempotent(name: &'static str) -> Self {
        Self { name, idempotent: true, timeout: None }
    }

    /// A method that is sent once.
    pub const fn once(name: &'static str) -> Self {
        Self { name, idempotent: false, timeout: None }
    }

    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A downstream service: its replicas, circuit breaker and retry budget; cheap to clone.
#[derive(Debug, Clone)]
pub struct Downstream {
    name: Arc<str>,
    endpoints: Endpoints,
    breaker: CircuitBreaker,
    budget: Arc<TpsBudget>,
    config: Arc<DownstreamConfig>,
}

impl Downstream {
    /// Resolves the downstream's replicas and starts following their health entry
    /// `health_service` (the downstream's gRPC service name).
    ///
    /// # Errors
    /// When the configured address is malformed.
    pub async fn connect(name: &str, health_service: &str, config: DownstreamConfig) -> Result<Self, AddressError> {
        let watched = config.health_watch.then_some(health_service);
        let endpoints =
            Endpoints::start(name, &config.address, watched, config.connect_timeout, config.refresh).await?;
        Ok(Self {
            name: name.into(),
            breaker: CircuitBreaker::new(name, config.breaker.clone()),
            budget: config.retry.budget(),
            endpoints,
            config: Arc::new(config),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Readiness: some replica reports SERVING.
    pub fn check_serving(&self) -> Result<(), String> {
        if self.endpoints.any_serving() {
            return Ok(());
        }
        let known = self.endpoints.snapshot();
        Err(format!("no replica of {} is SERVING ({} known)", self.name, known.len()))
    }

    /// The call stack of one method: deadline, retries when idempotent, breaker, p2c.
    pub fn rpc<Req, Resp>(&self, method: Method, send: SendFn<Req, Resp>) -> Rpc<Req, Resp>
    where
        Req: Clone + Send + Sync + 'static,
        Resp: Send + 'static,
    {
        let unary =
            Unary { endpoints: self.endpoints.clone(), name: Arc::clone(&self.name), method: method.name, send };
        let breaking =
            Breaking { inner: unary, breaker: self.breaker.clone(), name: Arc::clone(&self.name), method: method.name };
        let timeout = method.timeout.unwrap_or(self.config.timeout);
        let service = if method.idempotent && self.config.retry.max_attempts > 1 {
            let retrying = Retrying::new(
                breaking,
                self.config.retry,
                Arc::clone(&self.budget),
                Arc::clone(&self.name),
                method.name,
            );
            Budgeted::boxed(retrying, &self.name, method.name, timeout)
        } else {
            Budgeted::boxed(breaking, &self.name, method.name, timeout)
        };
        Rpc { service }
    }
}

/// One method of a downstream as a tower service from its request to its response.
pub struct Rpc<Req, Resp> {
    service: BoxCloneSyncService<Req, Resp, CallError>,
}

impl<Req, Resp> Clone for Rpc<Req, Resp> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone() }
    }
}

impl<Req, Resp> std::fmt::Debug for Rpc<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc").finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Rpc<Req, Resp> {
    /// Sends `request` through the whole stack.
    pub async fn call(&self, request: Req) -> Result<Resp, CallError> {
        self.service.clone().oneshot(request).await
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Service<Req> for Rpc<Req, Resp> {
    type Response = Resp;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Resp, CallError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.service.call(request)
    }
}

/// Share of the remaining budget kept back for the caller's own work after a downstream call
/// gives up (answering with a fallback, say), between 1 ms and 50 ms.
fn reserve(remaining: Duration) -> Duration {
    (remaining / 10).clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// The deadline of one downstream call: the method's timeout, cut to the incoming call's
/// remaining budget less a reserve.
pub fn deadline_for(timeout: Duration) -> Instant {
    let now = Instant::now();
    let own = now + timeout;
    match crate::deadline::current() {
        Some(incoming) => {
            let remaining = incoming.saturating_duration_since(now);
            own.min(now + remaining.saturating_sub(reserve(remaining)))
        }
        None => own,
    }
}

/// Outermost: sets the deadline, refuses to start past it, and counts calls by outcome.
#[derive(Debug)]
struct Budgeted<S, Req> {
    inner: S,
    name: Arc<str>,
    method: &'static str,
    timeout: Duration,
    _request: PhantomData<fn(Req)>,
}

impl<S, Req, Resp> Budgeted<S, Req>
where
    S: Service<Call<Req>, Response = Resp, Error = CallError> + Clone + Send + Sync + 'static,
    S::Future: Send,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn boxed(
        inner: S,
        name: &Arc<str>,
        method: &'static str,
        timeout: Duration,
    ) -> BoxCloneSyncService<Req, Resp, CallError> {
        BoxCloneSyncService::new(Self { inner, name: Arc::clone(name), method, timeout, _request: PhantomData })
    }
}

impl<S: Clone, Req> Clone for Budgeted<S, Req> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            name: Arc::clone(&self.name),
            method: self.method,
            timeout: self.timeout,
            _request: PhantomData,
        }
    }
}

impl<S, Req, Resp> Service<Req> for Budgeted<S, Req>
where
    S: Service<Call<Req>, Response = Resp, Error = CallError> + Clone + Send + 'static,
    S::Future: Send,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Resp, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Req) -> Self::Future {
        let deadline = deadline_for(self.timeout);
        let inner = self.inner.clone();
        let name = Arc::clone(&self.name);
        let method = self.method;
        Box::pin(async move {
            let started = Instant::now();
            let result = if started >= deadline {
                Err(CallError::DeadlineExceeded { downstream: Arc::clone(&name), method })
            } else {
                inner.oneshot(Call { message, deadline }).await
            };
            let code = result.as_ref().map_or_else(CallError::code, |_| tonic::Code::Ok);
            metrics::counter!("alp_client_calls_total", "downstream" => name.to_string(), "method" => method, "code" => code_name(code))
                .increment(1);
            metrics::histogram!("alp_client_call_seconds", "downstream" => name.to_string(), "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// The circuit breaker around each attempt; a rejection answers at once.
#[derive(Debug, Clone)]
struct Breaking<S> {
    inner: S,
    breaker: CircuitBreaker,
    name: Arc<str>,
    method: &'static str,
}

impl<S, T, Resp> Service<Call<T>> for Breaking<S>
where
    S: Service<Call<T>, Response = Resp, Error = CallError> + Clone + Send + 'static,
    S::Future: Send,
    T: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Resp, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call<T>) -> Self::Future {
        let permit = match self.breaker.acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let error = CallError::CircuitOpen { downstream: Arc::clone(&self.name), method: self.method };
                return Box::pin(async move { Err(error) });
            }
        };
        let fails_on_exhausted = self.breaker.config().resource_exhausted_fails;
        let inner = self.inner.clone();
        Box::pin(async move {
            let result = inner.oneshot(call).await;
            let code = result.as_ref().map_or_else(CallError::code, |_| tonic::Code::Ok);
            permit.finish(classify(code, fails_on_exhausted));
            result
        })
    }
}

/// Innermost: one attempt on the replica p2c picks, bounded by the deadline.
struct Unary<Req, Resp> {
    endpoints: Endpoints,
    name: Arc<str>,
    method: &'static str,
    send: SendFn<Req, Resp>,
}

impl<Req, Resp> Clone for Unary<Req, Resp> {
    fn clone(&self) -> Self {
        Self { endpoints: self.endpoints.clone(), name: Arc::clone(&self.name), method: self.method, send: self.send }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Service<Call<Req>> for Unary<Req, Resp> {
    type Response = Resp;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Resp, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call<Req>) -> Self::Future {
        let name = Arc::clone(&self.name);
        let method = self.method;
        let picked = match self.endpoints.pick() {
            Ok(picked) => picked,
            Err(known) => {
                return Box::pin(async move { Err(CallError::NoEndpoint { downstream: name, method, known }) });
            }
        };
        let send = self.send;
        Box::pin(async move {
            let now = Instant::now();
            if now >= call.deadline {
                return Err(CallError::DeadlineExceeded { downstream: name, method });
            }
            let mut request = tonic::Request::new(call.message);
            request.set_timeout(call.deadline - now);
            let answered = tokio::time::timeout_at(call.deadline, send(picked.transport(), request)).await;
            drop(picked);
            match answered {
                Ok(Ok(response)) => Ok(response.into_inner()),
                // tonic reports its own expiry as CANCELLED; past the deadline, it was the deadline.
                Ok(Err(status)) if status.code() == tonic::Code::Cancelled && Instant::now() >= call.deadline => {
                    Err(CallError::DeadlineExceeded { downstream: name, method })
                }
                Ok(Err(status)) => Err(CallError::Status { downstream: name, method, status }),
                Err(_) => Err(CallError::DeadlineExceeded { downstream: name, method }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::breaker::{BreakerConfig, State, Window};
    use crate::client::RetryConfig;

    fn status(code: tonic::Code) -> CallError {
        CallError::Status { downstream: "down".into(), method: "Get", status: tonic::Status::new(code, "scripted") }
    }

    /// An inner service answering from a script (then OK), counting its calls.
    fn scripted(
        script: Vec<tonic::Code>,
    ) -> (
        impl Service<Call<u32>, Response = u32, Error = CallError, Future: Send> + Clone + Send + 'static,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let script = Arc::new(Mutex::new(script.into_iter()));
        let service = tower::service_fn(move |call: Call<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let next = script.lock().unwrap().next();
            async move {
                match next {
                    Some(code) if code != tonic::Code::Ok => Err(status(code)),
                    _ => Ok(call.message),
                }
            }
        });
        (service, calls)
    }

    fn call(message: u32) -> Call<u32> {
        Call { message, deadline: Instant::now() + Duration::from_secs(1) }
    }

    fn breaking<S>(inner: S, config: BreakerConfig) -> Breaking<S> {
        Breaking { inner, breaker: CircuitBreaker::new("down", config), name: "down".into(), method: "Get" }
    }

    fn retrying<S>(inner: S, budget: Arc<TpsBudget>) -> Retrying<S> {
        Retrying::new(inner, RetryConfig::default(), budget, "down".into(), "Get")
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_answers_at_once_without_calling() {
        let (inner, calls) = scripted(vec![tonic::Code::Unavailable; 10]);
        let config = BreakerConfig { minimum_calls: 2, window: Window::Count(2), ..BreakerConfig::default() };
        let service = breaking(inner, config);
        for _ in 0..2 {
            assert_eq!(service.clone().oneshot(call(1)).await.unwrap_err().code(), tonic::Code::Unavailable);
        }
        assert_eq!(service.breaker.state(), State::Open);
        let rejected = service.clone().oneshot(call(1)).await.unwrap_err();
        assert!(matches!(rejected, CallError::CircuitOpen { .. }), "{rejected:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the open circuit did not call through");
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_keep_the_circuit_closed() {
        let (inner, _) = scripted(vec![tonic::Code::InvalidArgument; 10]);
        let config = BreakerConfig { minimum_calls: 2, window: Window::Count(2), ..BreakerConfig::default() };
        let service = breaking(inner, config);
        for _ in 0..10 {
            let _ = service.clone().oneshot(call(1)).await;
        }
        assert_eq!(service.breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_retried_until_it_answers() {
        let (inner, calls) = scripted(vec![tonic::Code::Unavailable, tonic::Code::Unavailable]);
        let service = retrying(inner, RetryConfig::default().budget());
        assert_eq!(service.oneshot(call(7)).await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_are_not_transient_are_not_retried() {
        for code in
            [tonic::Code::InvalidArgument, tonic::Code::NotFound, tonic::Code::Internal, tonic::Code::DeadlineExceeded]
        {
            let (inner, calls) = scripted(vec![code]);
            let error = retrying(inner, RetryConfig::default().budget()).oneshot(call(7)).await.unwrap_err();
            assert_eq!((error.code(), calls.load(Ordering::SeqCst)), (code, 1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_is_not_retried() {
        let (inner, calls) = scripted(vec![tonic::Code::Unavailable; 100]);
        let config = BreakerConfig { minimum_calls: 2, window: Window::Count(2), ..BreakerConfig::default() };
        let service = retrying(breaking(inner, config), RetryConfig::default().budget());
        // The first call's two failures open the circuit; its third attempt is refused.
        let error = service.clone().oneshot(call(1)).await.unwrap_err();
        assert!(matches!(error, CallError::CircuitOpen { .. }), "{error:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let error = service.oneshot(call(1)).await.unwrap_err();
        assert!(matches!(error, CallError::CircuitOpen { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refused at once, not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_deadline() {
        let (inner, calls) = scripted(vec![tonic::Code::Unavailable; 10]);
        let config = RetryConfig {
            max_attempts: 10,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(100),
            ..RetryConfig::default()
        };
        let service = Retrying::new(inner, config, config.budget(), "down".into(), "Get");
        let started = Instant::now();
        let deadline = started + Duration::from_millis(150);
        let error = service.oneshot(Call { message: 1, deadline }).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(Instant::now() <= deadline, "gave up within the deadline");
        assert!(calls.load(Ordering::SeqCst) < 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_against_a_failing_dependency() {
        let (inner, calls) = scripted(vec![tonic::Code::Unavailable; 100_000]);
        let config = RetryConfig { budget_floor_per_second: 1, ..RetryConfig::default() };
        let service = Retrying::new(inner, config, config.budget(), "down".into(), "Get");
        let requests = 1000;
        for _ in 0..requests {
            let _ = service.clone().oneshot(call(1)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = calls.load(Ordering::SeqCst);
        // 20 % of calls plus 1 per second over the 5 s the calls took (and the first window).
        assert!(sent <= requests + requests / 5 + 20, "{sent} calls for {requests} requests");
        assert!(sent > requests, "some retries were allowed");
    }

    #[tokio::test(start_paused = true)]
    async fn downstream_deadlines_keep_a_reserve_of_the_incoming_budget() {
        let timeout = Duration::from_secs(5);
        let now = Instant::now();
        assert_eq!(deadline_for(timeout), now + timeout, "no incoming deadline: the method's timeout");
        let inner = crate::deadline::scope(now + Duration::from_millis(50), async { deadline_for(timeout) }).await;
        assert_eq!(inner, now + Duration::from_millis(45), "a tenth held back");
        let long = crate::deadline::scope(now + Duration::from_secs(60), async { deadline_for(timeout) }).await;
        assert_eq!(long, now + timeout, "the method's own timeout is shorter");
    }
}
