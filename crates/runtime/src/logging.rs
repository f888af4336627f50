//! Process-wide tracing set-up: text for people, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long = "log-format", env = "ALP_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub format: LogFormat,
    /// Filter in RUST_LOG syntax, e.g. `info` or `info,alp_runtime=debug` (debug logs every request).
    #[arg(long = "log-level", env = "ALP_LOG", default_value = "info", global = true)]
    pub filter: String,
}

/// Installs the global subscriber; a second call (tests) keeps the first.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _already_set = match args.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
