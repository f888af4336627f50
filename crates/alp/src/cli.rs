//! The command line: `alp dev`, `alp serve <service>`, `alp migrate <service>`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use alp_runtime::client::{ClientArgs, lazy_channel};
use alp_runtime::db::{Database, DatabaseArgs};
use alp_runtime::logging::LogArgs;
use alp_runtime::server::{ServerArgs, ServerConfig};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::suite::{self, Databases, Listeners, Service};

#[derive(Debug, Parser)]
#[command(name = "alp", version, about = "ALP, the Adaptive Learning Platform: four gRPC services in one binary")]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs all four services in one process with embedded SQLite storage and a demo course.
    Dev(DevArgs),
    /// Runs one service (production: PostgreSQL, migrations applied beforehand).
    Serve(ServeArgs),
    /// Applies a service's database migrations.
    Migrate(MigrateArgs),
    /// Loads a seeded, realistic data set into a running suite through its public APIs
    /// (resumable: progress is kept in --checkpoint).
    Dataset(alp_bench::dataset::DatasetArgs),
    /// Drives a running suite with open-loop load and reports latency, throughput and errors.
    Load(Box<alp_bench::load::LoadArgs>),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The adaptive engine on simulated learners: recall prediction, adaptive practice; writes
    /// docs/quality.md and docs/quality-calibration.svg.
    Quality(alp_bench::quality::QualityArgs),
    /// Serves the bare fan-out reference (one Redis GET and three gRPC calls per NextItems) that
    /// docs/capacity.md sets NextItems against.
    Reference(alp_bench::reference::ReferenceArgs),
    /// Serves a bare health service: one of the reference's upstream processes.
    Upstream(alp_bench::reference::UpstreamArgs),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory of the SQLite databases, created when missing.
    #[arg(long, env = "ALP_DATA_DIR", default_value = "alp-data")]
    pub data_dir: PathBuf,
    /// Address the services listen on (ports 50051-50054).
    #[arg(long, env = "ALP_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    /// Port of the Prometheus /metrics endpoint; 0 turns it off.
    #[arg(long, env = "ALP_METRICS_PORT", default_value_t = 9464)]
    pub metrics_port: u16,
    /// Do not create the demo course.
    #[arg(long)]
    pub no_seed: bool,
    #[command(flatten)]
    pub policies: alp_scoring::PolicyArgs,
    /// Optional here: without nodes, caches stay in process.
    #[command(flatten)]
    pub redis: alp_runtime::redis::RedisArgs,
    /// Timeouts, circuit breakers and retries of calls between the services.
    #[command(flatten)]
    pub clients: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    pub service: Service,
    /// gRPC listen address; 127.0.0.1 and the service's port by default
    /// (scheduler 50051, user 50052, content 50053, scoring 50054).
    #[arg(long, env = "ALP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "ALP_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: Option<SocketAddr>,
    /// Content service addresses (user, scheduler): comma-separated host:port, names resolved
    /// again every --downstream-refresh (a headless Service's name lists its ready pods).
    #[arg(long, env = "ALP_CONTENT_ADDR", default_value = "127.0.0.1:50053")]
    pub content_addr: String,
    /// Scoring service addresses (scheduler).
    #[arg(long, env = "ALP_SCORING_ADDR", default_value = "127.0.0.1:50054")]
    pub scoring_addr: String,
    /// User service addresses (scheduler).
    #[arg(long, env = "ALP_USER_ADDR", default_value = "127.0.0.1:50052")]
    pub user_addr: String,
    /// Timeouts, circuit breakers and retries of calls to other services.
    #[command(flatten)]
    pub clients: ClientArgs,
    /// Longest an attempt's outbox row waits for others before its batch goes to scoring or the
    /// user service (scheduler): longer means fewer, larger batches, and progress that lags
    /// more. A learner's next NextItems sends their rows to scoring at once either way.
    #[arg(long, env = "ALP_OUTBOX_MAX_DELAY", default_value = "200ms", value_parser = alp_runtime::time::parse_duration)]
    pub outbox_max_delay: std::time::Duration,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Ranking and mock-test settings (scoring).
    #[command(flatten)]
    pub policies: alp_scoring::PolicyArgs,
    #[command(flatten)]
    pub redis: alp_runtime::redis::RedisArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    pub service: Service,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Dataset(args) => alp_bench::dataset::run(&args).await,
        Command::Load(args) => {
            if let Some(path) = &args.write_body {
                println!("{}", alp_bench::load::write_body(&args, path)?);
                return Ok(());
            }
            let report = alp_bench::load::run(&args).await?;
            print!("{}", report.table());
            if let Some(out) = &args.out {
                tracing::info!(result = %out.display(), "load result written");
            }
            let failed: u64 = report.steps.iter().map(|s| s.completed - s.ok).sum();
            if args.fail_on_errors && failed > 0 {
                anyhow::bail!("{failed} requests failed or were answered wrongly");
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Reference(args)) => alp_bench::reference::run(&args).await,
        Command::Bench(BenchCommand::Upstream(args)) => alp_bench::reference::upstream(&args).await,
        Command::Bench(BenchCommand::Quality(args)) => {
            let out = args.out.clone();
            tokio::task::spawn_blocking(move || alp_bench::quality::run(&args)).await??;
            tracing::info!(report = %out.join("quality.md").display(), "quality benchmark written");
            Ok(())
        }
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let policies = args.policies.policies().map_err(anyhow::Error::msg)?;
    let redis = args.redis.config().map_err(anyhow::Error::msg)?;
    let databases = Databases::sqlite(&args.data_dir);
    suite::migrate(&databases).await?;
    let listeners = Listeners::bind(args.host, Service::default_port).await?;
    let addresses = listeners.addresses()?;
    let stop = CancellationToken::new();
    if args.metrics_port != 0 {
        let address = SocketAddr::new(args.host, args.metrics_port);
        match TcpListener::bind(address).await {
            Ok(listener) => {
                alp_runtime::metrics::spawn(listener, stop.clone().cancelled_owned());
                tracing::info!("metrics on http://{address}/metrics");
            }
            Err(err) => tracing::warn!(%address, error = %err, "metrics endpoint not started"),
        }
    }
    if !args.no_seed {
        let channel = lazy_channel("content", &addresses.content.to_string(), Duration::from_secs(1))?;
        tokio::spawn(async move {
            // The content service starts beside us; give it a moment to listen.
            for _ in 0..50 {
                match crate::seed::demo_course(channel.clone()).await {
                    Ok(created) => {
                        tracing::info!(course = crate::seed::DEMO_COURSE, created, "demo course ready");
                        return;
                    }
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(status) => {
                        tracing::error!(error = %status.message(), "seeding the demo course failed");
                        return;
                    }
                }
            }
        });
    }
    tracing::info!(
        scheduler = %addresses.scheduler,
        user = %addresses.user,
        content = %addresses.content,
        scoring = %addresses.scoring,
        data_dir = %args.data_dir.display(),
        "ALP dev suite starting; Ctrl-C stops it"
    );
    let server = ServerConfig { drain_delay: Duration::ZERO, ..ServerConfig::default() };
    let settings = suite::Settings { server, policies, redis, clients: args.clients, outbox: Default::default() };
    let result = suite::run(listeners, databases, settings, alp_runtime::shutdown::signal()).await;
    stop.cancel();
    result
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let service = args.service;
    let database = args.database.resolve(service.name(), service.pool_defaults())?;
    let server = ServerConfig::from(&args.server);
    let redis = args.redis.config().map_err(anyhow::Error::msg)?;
    let downstream = |name: &str, address: &str| args.clients.config(name, address).map_err(anyhow::Error::msg);
    let address = args.listen.unwrap_or_else(|| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), service.default_port()));
    let listener = TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let stop = CancellationToken::new();
    if let Some(metrics) = args.metrics_listen {
        let metrics_listener =
            TcpListener::bind(metrics).await.with_context(|| format!("cannot listen on {metrics} for metrics"))?;
        alp_runtime::metrics::spawn(metrics_listener, stop.clone().cancelled_owned());
    }
    let result = match service {
        Service::Content => alp_content::serve(alp_content::ContentConfig { server, database, redis }, listener).await,
        Service::User => {
            alp_user::serve(
                alp_user::UserConfig { server, database, content: downstream("content", &args.content_addr)?, redis },
                listener,
            )
            .await
        }
        Service::Scoring => {
            let policies = args.policies.policies().map_err(anyhow::Error::msg)?;
            alp_scoring::serve(alp_scoring::ScoringConfig { server, database, policies, redis }, listener).await
        }
        Service::Scheduler => {
            alp_scheduler::serve(
                alp_scheduler::SchedulerConfig {
                    server,
                    database,
                    downstream: alp_scheduler::DownstreamConfigs {
                        content: downstream("content", &args.content_addr)?,
                        scoring: downstream("scoring", &args.scoring_addr)?,
                        user: downstream("user", &args.user_addr)?,
                    },
                    redis,
                    outbox: alp_scheduler::RelayConfig {
                        max_delay: args.outbox_max_delay,
                        ..alp_scheduler::RelayConfig::default()
                    },
                },
                listener,
            )
            .await
        }
    };
    stop.cancel();
    result.map_err(Into::into)
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let service = args.service;
    let mut database = args.database.resolve(service.name(), service.pool_defaults())?;
    database.max_connections = 1;
    database.min_connections = 0;
    let db = Database::connect(&database).await?;
    db.migrate(service.migrations()).await?;
    db.close().await;
    tracing::info!(service = service.name(), "migrations applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap checks its definitions only when asked: two flattened flags with one id make every
    /// `alp serve` fail at start-up with a "required argument" error naming neither flag.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
