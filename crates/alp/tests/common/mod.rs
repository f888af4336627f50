//! Starting the suite for tests: SQLite in a temp dir, or fresh PostgreSQL databases when
//! ALP_TEST_POSTGRES_URL names a server (the test command sets it).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use alp::suite::{self, Addresses, Databases, Listeners, Settings};
use alp_runtime::server::ServerConfig;
use alp_runtime::testing;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Running {
    pub addresses: Addresses,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub fn test_server_config() -> ServerConfig {
    ServerConfig {
        drain_delay: Duration::ZERO,
        readiness_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    }
}

pub async fn postgres_databases(admin_url: &str) -> Databases {
    Databases {
        content: testing::postgres(admin_url, "content").await.config,
        user: testing::postgres(admin_url, "user").await.config,
        scoring: testing::postgres(admin_url, "scoring").await.config,
        scheduler: testing::postgres(admin_url, "scheduler").await.config,
    }
}

/// Starts the four services on 127.0.0.1:0 with the given storage and waits until they serve.
pub async fn start(databases: Databases, dir: Option<tempfile::TempDir>) -> Running {
    start_with(databases, dir, Settings { server: test_server_config(), ..Settings::default() }).await
}

pub async fn start_with(databases: Databases, dir: Option<tempfile::TempDir>, settings: Settings) -> Running {
    suite::migrate(&databases).await.unwrap();
    let listeners = Listeners::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), |_| 0).await.unwrap();
    let addresses = listeners.addresses().unwrap();
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let task = tokio::spawn(suite::run(listeners, databases, settings, signal));
    wait_serving(addresses.scheduler, "alp.scheduler.v1.SchedulerService").await;
    for dependency in ["content", "scoring", "user"] {
        wait_serving(addresses.scheduler, &format!("alp.scheduler.v1.SchedulerService/{dependency}")).await;
    }
    Running { addresses, stop, task, _dir: dir }
}

pub async fn start_sqlite() -> Running {
    let dir = tempfile::tempdir().unwrap();
    start(Databases::sqlite(dir.path()), Some(dir)).await
}

pub fn channel(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}")).unwrap().connect_lazy()
}

/// Polls the health entry until SERVING (bounded: 10 s).
pub async fn wait_serving(address: SocketAddr, service: &str) {
    for _ in 0..200 {
        if alp_runtime::client::check_serving(channel(address), service).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{service} at {address} never became SERVING");
}

/// A cache's (L1 hits, L2 hits, misses) so far, from the process's Prometheus recorder.
pub fn cache_counts(handle: &metrics_exporter_prometheus::PrometheusHandle, cache: &str) -> (u64, u64, u64) {
    let text = handle.render();
    let count = |result: &str| {
        text.lines()
            .filter(|l| l.starts_with("alp_cache_requests_total{"))
            .filter(|l| l.contains(&format!("cache=\"{cache}\"")) && l.contains(&format!("result=\"{result}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    (count("l1_hit"), count("l2_hit"), count("miss"))
}
