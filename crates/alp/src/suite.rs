//! The four services in one process, each on its own listener, talking to each other over
//! real gRPC exactly as they do in separate pods.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use alp_runtime::client::ClientArgs;
use alp_runtime::db::{Database, DatabaseConfig, MigrationStep, PoolDefaults, sqlite_url};
use alp_runtime::server::{ServeError, ServerConfig};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The services of the suite, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Content,
    User,
    Scoring,
    Scheduler,
}

impl Service {
    pub const ALL: [Service; 4] = [Service::Content, Service::User, Service::Scoring, Service::Scheduler];

    pub fn name(self) -> &'static str {
        match self {
            Service::Content => "content",
            Service::User => "user",
            Service::Scoring => "scoring",
            Service::Scheduler => "scheduler",
        }
    }

    /// The fixed port of `alp dev` and the default of `alp serve`.
    pub fn default_port(self) -> u16 {
        match self {
            Service::Scheduler => 50051,
            Service::User => 50052,
            Service::Content => 50053,
            Service::Scoring => 50054,
        }
    }

    pub fn migrations(self) -> &'static [MigrationStep] {
        match self {
            Service::Content => alp_content::MIGRATIONS,
            Service::User => alp_user::MIGRATIONS,
            Service::Scoring => alp_scoring::MIGRATIONS,
            Service::Scheduler => alp_scheduler::MIGRATIONS,
        }
    }

    pub fn pool_defaults(self) -> PoolDefaults {
        match self {
            Service::Content => alp_content::POOL_DEFAULTS,
            Service::User => alp_user::POOL_DEFAULTS,
            Service::Scoring => alp_scoring::POOL_DEFAULTS,
            Service::Scheduler => alp_scheduler::POOL_DEFAULTS,
        }
    }
}

/// Where each service keeps its data.
#[derive(Debug, Clone)]
pub struct Databases {
    pub content: DatabaseConfig,
    pub user: DatabaseConfig,
    pub scoring: DatabaseConfig,
    pub scheduler: DatabaseConfig,
}

impl Databases {
    /// One SQLite file per service under `dir` (the embedded default).
    pub fn sqlite(dir: &Path) -> Self {
        let config = |service: Service| {
            let defaults = service.pool_defaults();
            DatabaseConfig {
                url: sqlite_url(dir, &format!("{}.db", service.name())),
                application_name: format!("alp-{}", service.name()),
                max_connections: defaults.max_connections,
                min_connections: 1,
                acquire_timeout: std::time::Duration::from_secs(2),
                statement_timeout: std::time::Duration::from_secs(10),
            }
        };
        Self {
            content: config(Service::Content),
            user: config(Service::User),
            scoring: config(Service::Scoring),
            scheduler: config(Service::Scheduler),
        }
    }

    pub fn get(&self, service: Service) -> &DatabaseConfig {
        match service {
            Service::Content => &self.content,
            Service::User => &self.user,
            Service::Scoring => &self.scoring,
            Service::Scheduler => &self.scheduler,
        }
    }
}

/// The listeners of the four services, bound before anything starts (no port races in tests).
#[derive(Debug)]
pub struct Listeners {
    pub content: TcpListener,
    pub user: TcpListener,
    pub scoring: TcpListener,
    pub scheduler: TcpListener,
}

/// The addresses the services listen on.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub content: SocketAddr,
    pub user: SocketAddr,
    pub scoring: SocketAddr,
    pub scheduler: SocketAddr,
}

impl Listeners {
    pub async fn bind(host: std::net::IpAddr, port: impl Fn(Service) -> u16) -> anyhow::Result<Self> {
        let bind = |service: Service| {
            let address = SocketAddr::new(host, port(service));
            async move {
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} for {}", service.name()))
            }
        };
        Ok(Self {
            content: bind(Service::Content).await?,
            user: bind(Service::User).await?,
            scoring: bind(Service::Scoring).await?,
            scheduler: bind(Service::Scheduler).await?,
        })
    }

    pub fn addresses(&self) -> anyhow::Result<Addresses> {
        Ok(Addresses {
            content: self.content.local_addr()?,
            user: self.user.local_addr()?,
            scoring: self.scoring.local_addr()?,
            scheduler: self.scheduler.local_addr()?,
        })
    }
}

/// Applies every service's migrations.
pub async fn migrate(databases: &Databases) -> anyhow::Result<()> {
    for service in Service::ALL {
        let db = Database::connect(databases.get(service)).await?;
        db.migrate(service.migrations()).await.with_context(|| format!("migrating {}", service.name()))?;
        db.close().await;
    }
    Ok(())
}

/// What the four services share besides their listeners and databases.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub server: ServerConfig,
    pub policies: alp_scoring::Policies,
    /// The shared Redis Cluster; None keeps every cache in process.
    pub redis: Option<alp_runtime::redis::RedisConfig>,
    /// How the services call each other.
    pub clients: ClientArgs,
    /// How the scheduler's outbox rows reach scoring and the user service.
    pub outbox: alp_scheduler::RelayConfig,
}

/// Runs the four services until `shutdown` resolves. Migrations must have run.
pub async fn run(
    listeners: Listeners,
    databases: Databases,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Settings { server, policies, redis, clients, outbox } = settings;
    let addresses = listeners.addresses()?;
    let downstream =
        |name: &str, address: SocketAddr| clients.config(name, &address.to_string()).map_err(anyhow::Error::msg);
    let scheduler_downstream = alp_scheduler::DownstreamConfigs {
        content: downstream("content", addresses.content)?,
        scoring: downstream("scoring", addresses.scoring)?,
        user: downstream("user", addresses.user)?,
    };
    let user_content = downstream("content", addresses.content)?;
    let stop = CancellationToken::new();
    let signal = || {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };

    let mut tasks: tokio::task::JoinSet<(&str, Result<(), ServeError>)> = tokio::task::JoinSet::new();
    tasks.spawn(named(
        "content",
        alp_content::serve_with_shutdown(
            alp_content::ContentConfig {
                server: server.clone(),
                database: databases.content.clone(),
                redis: redis.clone(),
            },
            listeners.content,
            signal(),
        ),
    ));
    tasks.spawn(named(
        "user",
        alp_user::serve_with_shutdown(
            alp_user::UserConfig {
                server: server.clone(),
                database: databases.user.clone(),
                content: user_content,
                redis: redis.clone(),
            },
            listeners.user,
            signal(),
        ),
    ));
    tasks.spawn(named(
        "scoring",
        alp_scoring::serve_with_shutdown(
            alp_scoring::ScoringConfig {
                server: server.clone(),
                database: databases.scoring.clone(),
                policies,
                redis: redis.clone(),
            },
            listeners.scoring,
            signal(),
        ),
    ));
    tasks.spawn(named(
        "scheduler",
        alp_scheduler::serve_with_shutdown(
            alp_scheduler::SchedulerConfig {
                server: server.clone(),
                database: databases.scheduler.clone(),
                downstream: scheduler_downstream,
                redis,
                outbox,
            },
            listeners.scheduler,
            signal(),
        ),
    ));

    let watcher = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        watcher.cancel();
    });

    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(err))) => {
                // One service failing stops the others: a half-running suite helps no one.
                stop.cancel();
                failure.get_or_insert(anyhow::anyhow!("{name}: {err}"));
            }
            Err(join) => {
                stop.cancel();
                failure.get_or_insert(anyhow::anyhow!("a service task panicked: {join}"));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

async fn named(
    name: &'static str,
    service: impl Future<Output = Result<(), ServeError>>,
) -> (&'static str, Result<(), ServeError>) {
    (name, service.await)
}
