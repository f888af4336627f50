//! How each downstream is called: flags for every downstream, and overrides for one.

use std::time::Duration;

use crate::breaker::{BreakerConfig, Window};
use crate::time::parse_duration;

use super::retry::RetryConfig;

/// How a service reaches one downstream service.
#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    /// Comma-separated `host:port` (or `http://host:port`) addresses; names are resolved again
    /// every `refresh`, so a Kubernetes headless Service yields every ready pod.
    pub address: String,
    pub connect_timeout: Duration,
    /// Upper bound of one call when the incoming call's deadline does not cut it shorter.
    pub timeout: Duration,
    pub refresh: Duration,
    /// Follow each replica's health `Watch`; false when the address is a proxy (a mesh's
    /// virtual address) that balances and health-checks by itself.
    pub health_watch: bool,
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
}

impl DownstreamConfig {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            refresh: Duration::from_secs(5),
            health_watch: true,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
        }
    }

    /// Changes one setting by the name its flag has without the leading `--` (`timeout`,
    /// `breaker-open-wait`, `retry-max-attempts`, ...).
    ///
    /// # Errors
    /// An unknown setting or a value that does not parse.
    pub fn set(&mut self, setting: &str, value: &str) -> Result<(), String> {
        let duration = || parse_duration(value);
        let number = || value.parse::<usize>().map_err(|_| format!("{setting}: {value:?} is not a whole number"));
        let rate = || match value.parse::<f64>() {
            Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
            _ => Err(format!("{setting}: {value:?} is not a rate between 0 and 1")),
        };
        match setting {
            "timeout" => self.timeout = duration()?,
            "connect-timeout" => self.connect_timeout = duration()?,
            "refresh" => self.refresh = duration()?,
            "health-watch" => {
                self.health_watch = value.parse().map_err(|_| format!("{setting}: {value:?} is not true or false"))?;
            }
            "breaker-window" => self.breaker.window = parse_window(value)?,
            "breaker-minimum-calls" => self.breaker.minimum_calls = number()?,
            "breaker-failure-rate" => self.breaker.failure_rate = rate()?,
            "breaker-slow-call-rate" => self.breaker.slow_call_rate = rate()?,
            "breaker-slow-call" => self.breaker.slow_call_duration = duration()?,
            "breaker-open-wait" => self.breaker.open_wait = duration()?,
            "breaker-max-open-wait" => self.breaker.max_open_wait = duration()?,
            "breaker-half-open-calls" => self.breaker.half_open_calls = number()?.max(1),
            "breaker-resource-exhausted-fails" => {
                self.breaker.resource_exhausted_fails =
                    value.parse().map_err(|_| format!("{setting}: {value:?} is not true or false"))?;
            }
            "retry-max-attempts" => self.retry.max_attempts = u32::try_from(number()?.max(1)).unwrap_or(u32::MAX),
            "retry-budget-ratio" => self.retry.budget_ratio = rate()? as f32,
            "retry-budget-floor" => self.retry.budget_floor_per_second = u32::try_from(number()?).unwrap_or(u32::MAX),
            other => return Err(format!("unknown downstream setting {other:?}")),
        }
        Ok(())
    }
}

/// `50` (the last 50 calls) or `10s` (the calls of the last 10 seconds).
fn parse_window(value: &str) -> Result<Window, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("breaker-window: must hold at least one call".to_owned()),
        Ok(calls) => Ok(Window::Count(calls)),
        Err(_) => parse_duration(value).map(Window::Time),
    }
}

/// Flags for calls to other services; each applies to every downstream unless an override
/// names one.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Upper bound of one downstream call; an incoming call's deadline cuts it shorter.
    #[arg(long = "downstream-timeout", env = "ALP_DOWNSTREAM_TIMEOUT", default_value = "2s")]
    pub downstream_timeout: String,
    #[arg(long = "downstream-connect-timeout", env = "ALP_DOWNSTREAM_CONNECT_TIMEOUT", default_value = "1s")]
    pub downstream_connect_timeout: String,
    /// How often downstream names are resolved again (headless Services list their pods).
    #[arg(long = "downstream-refresh", env = "ALP_DOWNSTREAM_REFRESH", default_value = "5s")]
    pub downstream_refresh: String,
    /// Follow each downstream replica's health Watch; `false` when the addresses are a service
    /// mesh's (the proxy balances and health-checks per request).
    #[arg(long = "downstream-health-watch", env = "ALP_DOWNSTREAM_HEALTH_WATCH", default_value = "true")]
    pub downstream_health_watch: String,
    /// Calls the breaker judges by: a count (`50`) or a time span (`10s`).
    #[arg(long = "breaker-window", env = "ALP_BREAKER_WINDOW", default_value = "50")]
    pub breaker_window: String,
    /// Calls in the window before its rates count.
    #[arg(long = "breaker-minimum-calls", env = "ALP_BREAKER_MINIMUM_CALLS", default_value = "20")]
    pub breaker_minimum_calls: String,
    /// Failure rate (0-1) that opens the circuit.
    #[arg(long = "breaker-failure-rate", env = "ALP_BREAKER_FAILURE_RATE", default_value = "0.5")]
    pub breaker_failure_rate: String,
    /// Slow-call rate (0-1) that opens the circuit.
    #[arg(long = "breaker-slow-call-rate", env = "ALP_BREAKER_SLOW_CALL_RATE", default_value = "1.0")]
    pub breaker_slow_call_rate: String,
    /// A call this long or longer is slow.
    #[arg(long = "breaker-slow-call", env = "ALP_BREAKER_SLOW_CALL", default_value = "1s")]
    pub breaker_slow_call: String,
    /// First wait in OPEN before trial calls; doubles on each reopening.
    #[arg(long = "breaker-open-wait", env = "ALP_BREAKER_OPEN_WAIT", default_value = "5s")]
    pub breaker_open_wait: String,
    #[arg(long = "breaker-max-open-wait", env = "ALP_BREAKER_MAX_OPEN_WAIT", default_value = "60s")]
    pub breaker_max_open_wait: String,
    /// Trial calls in HALF_OPEN.
    #[arg(long = "breaker-half-open-calls", env = "ALP_BREAKER_HALF_OPEN_CALLS", default_value = "5")]
    pub breaker_half_open_calls: String,
    /// Attempts per idempotent call, the first included.
    #[arg(long = "retry-max-attempts", env = "ALP_RETRY_MAX_ATTEMPTS", default_value = "3")]
    pub retry_max_attempts: String,
    /// Retries allowed as a share of recent calls.
    #[arg(long = "retry-budget-ratio", env = "ALP_RETRY_BUDGET_RATIO", default_value = "0.2")]
    pub retry_budget_ratio: String,
    /// Retries per second allowed whatever the traffic.
    #[arg(long = "retry-budget-floor", env = "ALP_RETRY_BUDGET_FLOOR", default_value = "10")]
    pub retry_budget_floor: String,
    /// One downstream's setting: `<downstream>.<setting>=<value>`, e.g.
    /// `scoring.timeout=300ms` or `user.breaker-open-wait=30s` (repeatable; comma-separated in
    /// the environment).
    #[arg(long = "downstream-override", env = "ALP_DOWNSTREAM_OVERRIDES", value_delimiter = ',')]
    pub downstream_overrides: Vec<String>,
}

impl Default for ClientArgs {
    fn default() -> Self {
        <Self as clap::FromArgMatches>::from_arg_matches(
            &<Self as clap::Args>::augment_args(clap::Command::new("defaults")).get_matches_from(["defaults"]),
        )
        .unwrap_or_else(|_| unreachable!("the defaults parse"))
    }
}

impl ClientArgs {
    /// The configuration of downstream `name` at `address`.
    ///
    /// # Errors
    /// A flag or override that does not parse, or an override of an unknown setting.
    pub fn config(&self, name: &str, address: &str) -> Result<DownstreamConfig, String> {
        let mut config = DownstreamConfig::new(address);
        let shared = [
            ("timeout", &self.downstream_timeout),
            ("connect-timeout", &self.downstream_connect_timeout),
            ("refresh", &self.downstream_refresh),
            ("health-watch", &self.downstream_health_watch),
            ("breaker-window", &self.breaker_window),
            ("breaker-minimum-calls", &self.breaker_minimum_calls),
            ("breaker-failure-rate", &self.breaker_failure_rate),
            ("breaker-slow-call-rate", &self.breaker_slow_call_rate),
            ("breaker-slow-call", &self.breaker_slow_call),
            ("breaker-open-wait", &self.breaker_open_wait),
            ("breaker-max-open-wait", &self.breaker_max_open_wait),
            ("breaker-half-open-calls", &self.breaker_half_open_calls),
            ("retry-max-attempts", &self.retry_max_attempts),
            ("retry-budget-ratio", &self.retry_budget_ratio),
            ("retry-budget-floor", &self.retry_budget_floor),
        ];
        for (setting, value) in shared {
            config.set(setting, value).map_err(|e| format!("--{setting}: {e}"))?;
        }
        for entry in &self.downstream_overrides {
            let (target, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("--downstream-override {entry:?}: expected <downstream>.<setting>=<value>"))?;
            let (downstream, setting) = target
                .split_once('.')
                .ok_or_else(|| format!("--downstream-override {entry:?}: expected <downstream>.<setting>=<value>"))?;
            if !["content", "scoring", "user", "scheduler"].contains(&downstream) {
                return Err(format!("--downstream-override {entry:?}: unknown downstream {downstream:?}"));
            }
            if downstream == name {
                config.set(setting, value).map_err(|e| format!("--downstream-override {entry:?}: {e}"))?;
            } else {
                // Checked even when it is for another downstream, so a typo never goes unnoticed.
                DownstreamConfig::new("")
                    .set(setting, value)
                    .map_err(|e| format!("--downstream-override {entry:?}: {e}"))?;
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let config = ClientArgs::default().config("scoring", "127.0.0.1:50054").unwrap();
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.breaker, BreakerConfig::default());
        assert_eq!(config.retry.max_attempts, 3);
    }

    #[test]
    fn an_override_changes_its_downstream_only() {
        let args = ClientArgs {
            downstream_overrides: vec!["scoring.timeout=300ms".into(), "scoring.breaker-window=10s".into()],
            ..ClientArgs::default()
        };
        let scoring = args.config("scoring", "x:1").unwrap();
        assert_eq!(scoring.timeout, Duration::from_millis(300));
        assert_eq!(scoring.breaker.window, Window::Time(Duration::from_secs(10)));
        assert_eq!(args.config("content", "x:1").unwrap().timeout, Duration::from_secs(2));
        let proxied = ClientArgs { downstream_health_watch: "false".into(), ..ClientArgs::default() };
        assert!(!proxied.config("content", "x:1").unwrap().health_watch);
        assert!(ClientArgs::default().config("content", "x:1").unwrap().health_watch);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |overrides: &[&str]| {
            let args = ClientArgs {
                downstream_overrides: overrides.iter().map(|s| (*s).to_owned()).collect(),
                ..ClientArgs::default()
            };
            args.config("content", "x:1").unwrap_err()
        };
        assert!(bad(&["scoring.timeout"]).contains("expected <downstream>.<setting>=<value>"));
        assert!(bad(&["billing.timeout=1s"]).contains("unknown downstream \"billing\""));
        assert!(bad(&["scoring.colour=red"]).contains("unknown downstream setting \"colour\""));
        assert!(bad(&["scoring.breaker-failure-rate=2"]).contains("not a rate between 0 and 1"));
        assert!(bad(&["scoring.health-watch=maybe"]).contains("not true or false"));
        let args = ClientArgs { breaker_window: "0".into(), ..ClientArgs::default() };
        assert!(args.config("content", "x:1").unwrap_err().starts_with("--breaker-window"));
    }
}
