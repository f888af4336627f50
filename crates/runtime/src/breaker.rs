//! A circuit breaker with resilience4j's semantics, for calls to another service.
//!
//! - CLOSED: calls pass; their outcomes fill a sliding window (the last N calls, or the calls of
//!   the last T). Once the window holds `minimum_calls`, a failure rate or slow-call rate at or
//!   above its threshold opens the circuit.
//! - OPEN: calls are rejected at once (the caller answers UNAVAILABLE and does not retry). After
//!   the wait, the next call finds the circuit HALF_OPEN. Each reopening without a close in
//!   between multiplies the wait by `backoff`, up to `max_open_wait`.
//! - HALF_OPEN: `half_open_calls` trial calls pass, the rest are rejected; when every trial has
//!   finished, their rates decide: below the thresholds closes the circuit (window and wait
//!   reset), otherwise it opens again.
//!
//! Outcomes follow the gRPC code (`classify`): UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN
//! and DATA_LOSS are failures (RESOURCE_EXHAUSTED when configured); CANCELLED is ignored (the
//! caller gave up, which says nothing of the callee); every other code is the callee working.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

/// Which calls the rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last N calls.
    Count(usize),
    /// The calls that finished within the last duration.
    Time(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub window: Window,
    pub minimum_calls: usize,
    /// Failure rate (0-1) at or above which the circuit opens.
    pub failure_rate: f64,
    /// Share of slow calls (0-1) at or above which the circuit opens (1.0: only when every call
    /// in the window was slow).
    pub slow_call_rate: f64,
    /// A call taking this long or longer is slow.
    pub slow_call_duration: Duration,
    pub open_wait: Duration,
    pub max_open_wait: Duration,
    pub backoff: f64,
    pub half_open_calls: usize,
    /// Count RESOURCE_EXHAUSTED (the callee shedding load) as a failure.
    pub resource_exhausted_fails: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Count(50),
            minimum_calls: 20,
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: Duration::from_secs(1),
            open_wait: Duration::from_secs(5),
            max_open_wait: Duration::from_secs(60),
            backoff: 2.0,
            half_open_calls: 5,
            resource_exhausted_fails: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What a finished call says about the callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Neither: the call tells nothing (cancelled by the caller).
    Ignored,
}

/// The verdict on a call that ended with `code` (`Code::Ok` for a success).
pub fn classify(code: Code, resource_exhausted_fails: bool) -> Verdict {
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown | Code::DataLoss => {
            Verdict::Failure
        }
        Code::ResourceExhausted if resource_exhausted_fails => Verdict::Failure,
        Code::Cancelled => Verdict::Ignored,
        _ => Verdict::Success,
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    at: Instant,
    failed: bool,
    slow: bool,
}

#[derive(Debug)]
struct Inner {
    state: State,
    window: VecDeque<Outcome>,
    opened_at: Instant,
    wait: Duration,
    /// Trial calls let through in this half-open period, and those finished.
    trials_started: usize,
    trials: Vec<Outcome>,
    /// Bumped on every transition, so a permit from an earlier state is not counted in a later one.
    generation: u64,
}

/// One circuit breaker; cheap to clone.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    name: Arc<str>,
    config: Arc<BreakerConfig>,
    inner: Arc<Mutex<Inner>>,
}

/// A call refused because the circuit is open (or half-open with its trials taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub breaker: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "circuit {} is open", self.breaker)
    }
}

/// Leave to make one call; report how it went with [`Permit::finish`]. Dropped unfinished, the
/// call counts as ignored.
#[derive(Debug)]
pub struct Permit {
    breaker: CircuitBreaker,
    started: Instant,
    generation: u64,
    finished: bool,
}

impl CircuitBreaker {
    pub fn new(name: &str, config: BreakerConfig) -> Self {
        let inner = Inner {
            state: State::Closed,
            window: VecDeque::new(),
            opened_at: Instant::now(),
            wait: config.open_wait,
            trials_started: 0,
            trials: Vec::new(),
            generation: 0,
        };
        metrics::gauge!("alp_circuit_state", "breaker" => name.to_owned()).set(0.0);
        Self { name: name.into(), config: Arc::new(config), inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Leave to call, or a rejection.
    ///
    /// # Errors
    /// When the circuit is open, or half-open with every trial call taken.
    pub fn acquire(&self) -> Result<Permit, Rejected> {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.state == State::Open && now.duration_since(inner.opened_at) >= inner.wait {
            self.transition(&mut inner, State::HalfOpen, now);
        }
        let allowed = match inner.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen if inner.trials_started < self.config.half_open_calls => {
                inner.trials_started += 1;
                true
            }
            State::HalfOpen => false,
        };
        if !allowed {
            metrics::counter!("alp_circuit_rejected_total", "breaker" => self.name.to_string()).increment(1);
            return Err(Rejected { breaker: self.name.to_string() });
        }
        Ok(Permit { breaker: self.clone(), started: now, generation: inner.generation, finished: false })
    }

    fn record(&self, generation: u64, started: Instant, verdict: Verdict) {
        let mut inner = self.lock();
        if generation != inner.generation {
            return;
        }
        let now = Instant::now();
        match (inner.state, verdict) {
            (State::HalfOpen, Verdict::Ignored) => {
                // The trial told nothing: let another call try.
                inner.trials_started = inner.trials_started.saturating_sub(1);
            }
            (_, Verdict::Ignored) | (State::Open, _) => {}
            (state, verdict) => {
                let outcome = Outcome {
                    at: now,
                    failed: verdict == Verdict::Failure,
                    slow: now.duration_since(started) >= self.config.slow_call_duration,
                };
                if state == State::Closed {
                    inner.window.push_back(outcome);
                    self.trim(&mut inner, now);
                    if inner.window.len() >= self.config.minimum_calls.max(1) && self.trips(inner.window.iter()) {
                        self.transition(&mut inner, State::Open, now);
                    }
                } else {
                    inner.trials.push(outcome);
                    if inner.trials.len() >= self.config.half_open_calls {
                        let next = if self.trips(inner.trials.iter()) { State::Open } else { State::Closed };
                        self.transition(&mut inner, next, now);
                    }
                }
            }
        }
    }

    fn trim(&self, inner: &mut Inner, now: Instant) {
        match self.config.window {
            Window::Count(n) => {
                while inner.window.len() > n.max(1) {
                    inner.window.pop_front();
                }
            }
            Window::Time(span) => {
                while inner.window.front().is_some_and(|o| now.duration_since(o.at) > span) {
                    inner.window.pop_front();
                }
            }
        }
    }

    fn trips<'a>(&self, outcomes: impl Iterator<Item = &'a Outcome>) -> bool {
        let (mut calls, mut failed, mut slow) = (0usize, 0usize, 0usize);
        for o in outcomes {
            calls += 1;
            failed += usize::from(o.failed);
            slow += usize::from(o.slow);
        }
        if calls == 0 {
            return false;
        }
        let rate = |n: usize| n as f64 / calls as f64;
        rate(failed) >= self.config.failure_rate || rate(slow) >= self.config.slow_call_rate
    }

    fn transition(&self, inner: &mut Inner, to: State, now: Instant) {
        let from = inner.state;
        match to {
            State::Open => {
                if from == State::HalfOpen {
                    let grown = inner.wait.as_secs_f64() * self.config.backoff;
                    inner.wait = Duration::from_secs_f64(grown.min(self.config.max_open_wait.as_secs_f64()));
                } else {
                    inner.wait = self.config.open_wait;
                }
                inner.opened_at = now;
            }
            State::HalfOpen => {
                inner.trials_started = 0;
                inner.trials.clear();
            }
            State::Closed => {
                inner.window.clear();
                inner.wait = self.config.open_wait;
            }
        }
        inner.state = to;
        inner.generation += 1;
        let code = match to {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        };
        metrics::gauge!("alp_circuit_state", "breaker" => self.name.to_string()).set(code);
        metrics::counter!("alp_circuit_transitions_total", "breaker" => self.name.to_string(), "from" => from.name(), "to" => to.name())
            .increment(1);
        match to {
            State::Open => {
                tracing::warn!(breaker = %self.name, from = from.name(), wait = ?inner.wait, "circuit opened")
            }
            _ => tracing::info!(breaker = %self.name, from = from.name(), to = to.name(), "circuit changed"),
        }
    }
}

impl Permit {
    /// Reports the call's verdict.
    pub fn finish(mut self, verdict: Verdict) {
        self.finished = true;
        self.breaker.record(self.generation, self.started, verdict);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            self.breaker.record(self.generation, self.started, Verdict::Ignored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Window::Count(10),
            minimum_calls: 4,
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: Duration::from_secs(1),
            open_wait: Duration::from_secs(5),
            max_open_wait: Duration::from_secs(15),
            backoff: 2.0,
            half_open_calls: 2,
            resource_exhausted_fails: false,
        }
    }

    fn call(breaker: &CircuitBreaker, verdict: Verdict) -> Result<(), Rejected> {
        breaker.acquire().map(|permit| permit.finish(verdict))
    }

    fn fail_until_open(breaker: &CircuitBreaker) {
        for _ in 0..4 {
            call(breaker, Verdict::Failure).unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_below_the_minimum_calls_do_not_open() {
        let breaker = CircuitBreaker::new("t", config());
        for _ in 0..3 {
            call(&breaker, Verdict::Failure).unwrap();
        }
        assert_eq!(breaker.state(), State::Closed, "three calls are below the minimum of four");
        call(&breaker, Verdict::Failure).unwrap();
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(call(&breaker, Verdict::Success), Err(Rejected { breaker: "t".into() }), "open rejects at once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_over_the_window_and_client_errors_are_successes() {
        let breaker = CircuitBreaker::new("t", config());
        for code in [Code::NotFound, Code::InvalidArgument, Code::Ok, Code::AlreadyExists] {
            call(&breaker, classify(code, false)).unwrap();
        }
        for _ in 0..3 {
            call(&breaker, classify(Code::Unavailable, false)).unwrap();
        }
        assert_eq!(breaker.state(), State::Closed, "3 failures of 7 calls: 43 %");
        call(&breaker, classify(Code::DeadlineExceeded, false)).unwrap();
        assert_eq!(breaker.state(), State::Open, "4 of 8: 50 %");
        assert_eq!(classify(Code::Cancelled, false), Verdict::Ignored);
        assert_eq!(classify(Code::ResourceExhausted, false), Verdict::Success);
        assert_eq!(classify(Code::ResourceExhausted, true), Verdict::Failure);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_wait_trial_calls_decide_and_success_closes() {
        let breaker = CircuitBreaker::new("t", config());
        fail_until_open(&breaker);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(breaker.acquire().is_err(), "still waiting");
        tokio::time::advance(Duration::from_millis(1)).await;
        let first = breaker.acquire().unwrap();
        assert_eq!(breaker.state(), State::HalfOpen);
        let second = breaker.acquire().unwrap();
        assert!(breaker.acquire().is_err(), "only two trials");
        first.finish(Verdict::Success);
        assert_eq!(breaker.state(), State::HalfOpen, "judged when every trial has finished");
        second.finish(Verdict::Success);
        assert_eq!(breaker.state(), State::Closed);
        // Closed again with an empty window: three failures do not reopen it.
        for _ in 0..3 {
            call(&breaker, Verdict::Failure).unwrap();
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_with_a_longer_wait_up_to_the_cap() {
        let breaker = CircuitBreaker::new("t", config());
        fail_until_open(&breaker);
        for wait in [5, 10, 15, 15] {
            tokio::time::advance(Duration::from_secs(wait) - Duration::from_millis(1)).await;
            assert!(breaker.acquire().is_err(), "waits {wait} s");
            tokio::time::advance(Duration::from_millis(1)).await;
            call(&breaker, Verdict::Failure).unwrap();
            call(&breaker, Verdict::Success).unwrap();
            assert_eq!(breaker.state(), State::Open, "one failure of two trials is 50 %");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_trial_frees_its_slot_and_late_results_of_old_calls_are_ignored() {
        let breaker = CircuitBreaker::new("t", config());
        let straggler = breaker.acquire().unwrap();
        fail_until_open(&breaker);
        tokio::time::advance(Duration::from_secs(5)).await;
        let dropped = breaker.acquire().unwrap();
        let kept = breaker.acquire().unwrap();
        drop(dropped);
        let replacement = breaker.acquire().unwrap();
        // A call from before the circuit opened ends now: it does not count as a trial.
        straggler.finish(Verdict::Failure);
        kept.finish(Verdict::Success);
        replacement.finish(Verdict::Success);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_open_the_circuit() {
        let breaker = CircuitBreaker::new("t", BreakerConfig { slow_call_rate: 0.75, ..config() });
        for n in 0..4 {
            let permit = breaker.acquire().unwrap();
            if n < 3 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            permit.finish(Verdict::Success);
        }
        assert_eq!(breaker.state(), State::Open, "three slow of four");
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_window_forgets_old_failures() {
        let breaker =
            CircuitBreaker::new("t", BreakerConfig { window: Window::Time(Duration::from_secs(10)), ..config() });
        for _ in 0..3 {
            call(&breaker, Verdict::Failure).unwrap();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..3 {
            call(&breaker, Verdict::Success).unwrap();
        }
        call(&breaker, Verdict::Failure).unwrap();
        assert_eq!(breaker.state(), State::Closed, "1 failure of the 4 calls within 10 s");
        call(&breaker, Verdict::Failure).unwrap();
        assert_eq!(breaker.state(), State::Closed, "2 of 5");
        call(&breaker, Verdict::Failure).unwrap();
        assert_eq!(breaker.state(), State::Open, "3 of 6");
    }
}
