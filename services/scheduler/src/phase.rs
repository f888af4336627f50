//! How long each phase of an endpoint took, as `alp_scheduler_phase_seconds{endpoint,phase}`:
//! a slow tail can then be placed (the reads, scoring's call, the commit) from the metrics of a
//! running pod, without a build that logs it.

use tokio::time::Instant;

/// Times one request's phases, each from the end of the one before.
#[derive(Debug)]
pub struct PhaseTimer {
    endpoint: &'static str,
    since: Instant,
}

impl PhaseTimer {
    pub fn start(endpoint: &'static str) -> Self {
        Self { endpoint, since: Instant::now() }
    }

    /// Records the phase that ends now.
    pub fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        metrics::histogram!("alp_scheduler_phase_seconds", "endpoint" => self.endpoint, "phase" => phase)
            .record(now.duration_since(self.since).as_secs_f64());
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_phase_is_timed_from_the_end_of_the_one_before() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut timer = PhaseTimer::start("SubmitAttempt");
        tokio::time::advance(std::time::Duration::from_millis(20)).await;
        metrics::with_local_recorder(&recorder, || timer.done("reads"));
        tokio::time::advance(std::time::Duration::from_millis(5)).await;
        metrics::with_local_recorder(&recorder, || timer.done("record"));
        let text = handle.render();
        let sum = |phase: &str| -> f64 {
            let series = format!("alp_scheduler_phase_seconds_sum{{endpoint=\"SubmitAttempt\",phase=\"{phase}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("no {phase} in\n{text}"));
            line[series.len()..].parse().unwrap()
        };
        assert!((sum("reads") - 0.020).abs() < 1e-6, "{text}");
        assert!((sum("record") - 0.005).abs() < 1e-6, "the second phase starts where the first ended:\n{text}");
    }
}
