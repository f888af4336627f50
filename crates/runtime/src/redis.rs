//! The shared Redis Cluster: each service's own client pool and key prefix.
//!
//! Redis is never the only copy of anything, so the pool is built to fail fast rather than
//! wait: commands time out well below an RPC deadline, a service has a bounded number of
//! commands in flight and fails the next one at once, and reconnection runs in the background
//! with backoff (fred's default policy would never reconnect). Start-up does not wait for Redis
//! either: a service whose cluster is down starts, serves from its database and reconnects when
//! it can.
//!
//! The in-flight bound is ours, not fred's. fred's own (a bounded command queue) miscounts every
//! command it refuses; after an overload it believed more commands were coming and flushed a
//! connection only every 200 commands, so at a low rate every read timed out, for good (fred
//! 10.1, `the_pool_answers_again_after_an_overload` in tests/cache.rs).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Pool, SubscriberClient};
use fred::error::{Error as FredError, ErrorKind as FredErrorKind};
use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy, ServerConfig as FredServer};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::time::parse_duration;

#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis Cluster seed nodes as host:port, comma-separated; none means in-process caches only.
    #[arg(long = "redis-nodes", env = "ALP_REDIS_NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Clients per service (each holds a connection to every primary and pipelines on it).
    #[arg(long = "redis-pool-size", env = "ALP_REDIS_POOL_SIZE", default_value_t = 2)]
    pub pool_size: usize,
    /// Longest wait for one command; keep it well below the RPC deadlines.
    #[arg(long = "redis-command-timeout", env = "ALP_REDIS_COMMAND_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Longest wait for a connection.
    #[arg(long = "redis-connect-timeout", env = "ALP_REDIS_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Commands a service may have in flight (queued, sent or awaiting a reply); beyond it a
    /// command fails at once and the caller reads the database.
    #[arg(long = "redis-max-in-flight", env = "ALP_REDIS_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_commands_in_flight: usize,
}

/// Where the cluster is and how to talk to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    pub nodes: Vec<(String, u16)>,
    pub pool_size: usize,
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_in_flight: usize,
}

impl RedisConfig {
    /// A configuration for these seed nodes with the defaults of the flags.
    ///
    /// # Errors
    /// When a node is not `host:port`.
    pub fn for_nodes(nodes: &[String]) -> Result<Self, String> {
        let parsed = nodes
            .iter()
            .map(|node| {
                let (host, port) =
                    node.rsplit_once(':').ok_or_else(|| format!("redis node {node:?}: expected host:port"))?;
                let port = port.parse::<u16>().map_err(|_| format!("redis node {node:?}: port must be 1-65535"))?;
                Ok((host.to_owned(), port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            nodes: parsed,
            pool_size: 2,
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            max_in_flight: 1000,
        })
    }
}

impl RedisArgs {
    /// None when no nodes are configured.
    ///
    /// # Errors
    /// When a node or a setting is invalid; the message names it.
    pub fn config(&self) -> Result<Option<RedisConfig>, String> {
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
        if nodes.is_empty() {
            return Ok(None);
        }
        if !(1..=64).contains(&self.pool_size) {
            return Err(format!("redis pool size must be between 1 and 64, got {}", self.pool_size));
        }
        if self.command_timeout.is_zero() {
            return Err("redis command timeout must be above zero".to_owned());
        }
        if self.max_commands_in_flight == 0 {
            return Err("redis max in flight must be above zero".to_owned());
        }
        Ok(Some(RedisConfig {
            pool_size: self.pool_size,
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            max_in_flight: self.max_commands_in_flight,
            ..RedisConfig::for_nodes(&nodes)?
        }))
    }
}

/// One service's connection to the cluster: a pool for commands, a subscriber for
/// invalidation messages, and the service's key prefix.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    in_flight: Arc<Semaphore>,
    subscriber: SubscriberClient,
    prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// Builds the pool and starts connecting in the background.
    ///
    /// # Errors
    /// When the configuration is rejected.
    pub fn connect(config: &RedisConfig, prefix: &str) -> Result<Self, String> {
        let server = FredServer::new_clustered(config.nodes.iter().map(|(h, p)| (h.as_str(), *p)).collect());
        let builder = {
            let mut builder = Builder::from_config(Config { server, ..Config::default() });
            builder
                .with_connection_config(|c| {
                    c.connection_timeout = config.connect_timeout;
                    c.internal_command_timeout = config.connect_timeout;
                    // Unbounded: `in_flight` bounds it (see the module's comment).
                    c.max_command_buffer_len = 0;
                    // One retry after a MOVED/ASK or a reconnect, then the caller's fallback.
                    c.max_command_attempts = 2;
                })
                .with_performance_config(|p| {
                    p.default_command_timeout = config.command_timeout;
                    // Room for bursts of invalidation messages before a listener lags.
                    p.broadcast_channel_capacity = 4096;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
            builder
        };
        let pool = builder.build_pool(config.pool_size).map_err(|e| format!("redis: {e}"))?;
        let subscriber = builder.build_subscriber_client().map_err(|e| format!("redis: {e}"))?;
        let _connections = pool.connect_pool();
        let _subscriber_connection = subscriber.connect();
        // Re-subscribes after every reconnection.
        let _resubscriber = subscriber.manage_subscriptions();
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
        Ok(Self { pool, in_flight, subscriber, prefix: prefix.to_owned() })
    }

    /// [`Redis::connect`] when a cluster is configured.
    ///
    /// # Errors
    /// When the configuration is rejected.
    pub fn connect_optional(config: Option<&RedisConfig>, prefix: &str) -> Result<Option<Self>, String> {
        config.map(|c| Self::connect(c, prefix)).transpose()
    }

    /// The pool for one command, counted in flight until the returned handle is dropped.
    ///
    /// # Errors
    /// A backpressure error, at once, when the service already has its maximum in flight.
    pub fn admit(&self) -> Result<Admitted<'_>, FredError> {
        match self.in_flight.try_acquire() {
            Ok(permit) => Ok(Admitted { pool: &self.pool, _permit: permit }),
            Err(_) => {
                metrics::counter!("alp_redis_commands_shed_total", "prefix" => self.prefix.clone()).increment(1);
                Err(FredError::new(FredErrorKind::Backpressure, "too many Redis commands in flight"))
            }
        }
    }

    pub fn subscriber(&self) -> &SubscriberClient {
        &self.subscriber
    }

    /// `<prefix>:<name>`: every key of a service starts with its prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether any pooled client is connected.
    pub fn is_connected(&self) -> bool {
        self.pool.clients().iter().any(ClientLike::is_connected)
    }
}

/// The command pool, admitted for one command: hold it until the reply.
pub struct Admitted<'a> {
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Deref for Admitted<'_> {
    type Target = Pool;

    fn deref(&self) -> &Pool {
        self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_host_and_port() {
        let config = RedisConfig::for_nodes(&["10.0.0.1:7000".into(), "redis-0.redis:6379".into()]).unwrap();
        assert_eq!(config.nodes, vec![("10.0.0.1".to_owned(), 7000), ("redis-0.redis".to_owned(), 6379)]);
        assert!(RedisConfig::for_nodes(&["10.0.0.1".into()]).unwrap_err().contains("host:port"));
        assert!(RedisConfig::for_nodes(&["a:70000".into()]).unwrap_err().contains("1-65535"));
    }
}
