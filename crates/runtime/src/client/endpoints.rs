//! The replicas of one downstream service and the choice among them.
//!
//! Addresses come from a list of targets; names are resolved again every refresh (a headless
//! Service's name yields every ready pod), and replicas that disappear from the answers are
//! dropped. Each replica is followed through its health `Watch` stream: it leaves the set the
//! moment it reports NOT_SERVING (a server draining before shutdown does so first), or the watch
//! cannot be reopened (the process died, or hangs), and comes back when it reports SERVING again.
//! A watch that breaks after a long life is reopened at once and the replica keeps its last
//! answer meanwhile: servers cut aged connections (`max_connection_age` plus its grace), and
//! that is no verdict on the replica.
//!
//! A call goes to the less loaded of two replicas drawn at random among those SERVING (p2c, load
//! = calls in flight); when none has reported yet, among those not yet heard from.
//!
//! Behind a proxy (a service mesh's virtual address) an address is not one replica: a watch would
//! follow whichever pod the proxy picked, and that pod's drain would take the whole address out of
//! rotation. Without a health service to watch, every address is taken as SERVING and the proxy
//! does the balancing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::AddressError;
use super::connection::Connection;
use super::transport::Transport;

const WATCH_RETRY_MIN: Duration = Duration::from_millis(50);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// A watch that lived this long before it broke is reopened without a verdict; a shorter one
/// counts as a failure, so a replica that keeps cutting its streams backs off and leaves.
const WATCH_SETTLED: Duration = Duration::from_millis(250);
/// Failed reopens after a settled watch broke before the replica is taken out of rotation.
const WATCH_REPRIEVE: u32 = 2;

/// What a replica last said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointHealth {
    /// Not heard from yet.
    Unknown = 0,
    Serving = 1,
    /// NOT_SERVING, unknown to its server, or unreachable.
    Down = 2,
}

impl EndpointHealth {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => EndpointHealth::Serving,
            2 => EndpointHealth::Down,
            _ => EndpointHealth::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            EndpointHealth::Unknown => "unknown",
            EndpointHealth::Serving => "serving",
            EndpointHealth::Down => "down",
        }
    }
}

#[derive(Debug)]
struct Replica {
    address: SocketAddr,
    /// Carries the health watch.
    channel: Channel,
    /// Carries the calls.
    connection: Arc<Connection>,
    health: AtomicU8,
    in_flight: AtomicUsize,
    /// Stops the health watch when the replica leaves the set.
    stop: CancellationToken,
}

impl Replica {
    fn health(&self) -> EndpointHealth {
        EndpointHealth::from_u8(self.health.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    /// None: addresses are proxies, not replicas; nothing is watched.
    health_service: Option<String>,
    connect_timeout: Duration,
    replicas: RwLock<Vec<Arc<Replica>>>,
    stop: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The replicas of one downstream; cheap to clone. Background tasks stop when the last clone
/// is dropped.
#[derive(Debug, Clone)]
pub struct Endpoints {
    shared: Arc<Shared>,
}

/// The replica chosen for one call; counts as in flight until dropped.
#[derive(Debug)]
pub struct Picked {
    replica: Arc<Replica>,
}

impl Picked {
    pub fn transport(&self) -> Transport {
        Transport::new(Arc::clone(&self.replica.connection))
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `host:port` from `host:port` or `http://host:port`.
fn parse_target(what: &str, target: &str) -> Result<String, AddressError> {
    let error =
        |reason: &str| AddressError { what: what.to_owned(), address: target.to_owned(), reason: reason.to_owned() };
    let bare = match target.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => return Err(error(&format!("scheme {scheme:?} is not supported; use host:port"))),
        None => target,
    };
    let bare = bare.trim_end_matches('/');
    let (host, port) = bare.rsplit_once(':').ok_or_else(|| error("expected host:port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(error("expected host:port with a port number"));
    }
    Ok(bare.to_owned())
}

impl Endpoints {
    /// Resolves `targets` (comma-separated) once, then again every `refresh` in the background,
    /// and follows each replica's `health_service` entry (None: see the module documentation).
    ///
    /// # Errors
    /// When a target is not `host:port`. A name that does not resolve yet is not an error: the
    /// set stays empty and calls fail with no endpoint until it does.
    pub async fn start(
        name: &str,
        targets: &str,
        health_service: Option<&str>,
        connect_timeout: Duration,
        refresh: Duration,
    ) -> Result<Self, AddressError> {
        let targets: Vec<String> = targets
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| parse_target(name, t))
            .collect::<Result<_, _>>()?;
        if targets.is_empty() {
            return Err(AddressError {
                what: name.to_owned(),
                address: String::new(),
                reason: "no address given".to_owned(),
            });
        }
        let shared = Arc::new(Shared {
            name: name.into(),
            health_service: health_service.map(str::to_owned),
            connect_timeout,
            replicas: RwLock::default(),
            stop: CancellationToken::new(),
        });
        let endpoints = Self { shared };
        endpoints.refresh(&targets).await;
        let weak = Arc::downgrade(&endpoints.shared);
        let stop = endpoints.shared.stop.clone();
        tokio::spawn(refresh_loop(weak, targets, refresh, stop));
        Ok(endpoints)
    }

    /// Every known replica and its health.
    pub fn snapshot(&self) -> Vec<(SocketAddr, EndpointHealth)> {
        self.read().iter().map(|r| (r.address, r.health())).collect()
    }

    /// Whether some replica reports SERVING.
    pub fn any_serving(&self) -> bool {
        self.read().iter().any(|r| r.health() == EndpointHealth::Serving)
    }

    /// Picks a replica for one call (see the module documentation); `Err(known)` when none is
    /// usable.
    pub fn pick(&self) -> Result<Picked, usize> {
        let replicas = self.read();
        let usable = |wanted: EndpointHealth| -> Vec<&Arc<Replica>> {
            replicas.iter().filter(|r| r.health() == wanted).collect()
        };
        let mut pool = usable(EndpointHealth::Serving);
        if pool.is_empty() {
            pool = usable(EndpointHealth::Unknown);
        }
        let chosen = match pool.len() {
            0 => return Err(replicas.len()),
            1 => pool[0],
            n => {
                let mut rng = rand::rng();
                let first = rng.random_range(0..n);
                let second = (first + rng.random_range(1..n)) % n;
                let (a, b) = (pool[first], pool[second]);
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) { b } else { a }
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Picked { replica: Arc::clone(chosen) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Replica>>> {
        self.shared.replicas.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves every target and brings the replica set in line with the answers. A target that
    /// fails to resolve keeps the replicas it had.
    async fn refresh(&self, targets: &[String]) {
        let mut resolved: Vec<SocketAddr> = Vec::new();
        let mut kept_for_failed: Vec<String> = Vec::new();
        for target in targets {
            match tokio::time::timeout(self.shared.connect_timeout, tokio::net::lookup_host(target.as_str())).await {
                Ok(Ok(addresses)) => resolved.extend(addresses),
                Ok(Err(err)) => {
                    tracing::warn!(downstream = %self.shared.name, %target, error = %err, "cannot resolve; keeping its replicas");
                    kept_for_failed.push(target.clone());
                }
                Err(_) => {
                    tracing::warn!(downstream = %self.shared.name, %target, "resolution timed out; keeping its replicas");
                    kept_for_failed.push(target.clone());
                }
            }
        }
        resolved.sort_unstable();
        resolved.dedup();
        let mut replicas = self.shared.replicas.write().unwrap_or_else(PoisonError::into_inner);
        let keep_unresolved = !kept_for_failed.is_empty();
        replicas.retain(|replica| {
            let keep = resolved.contains(&replica.address) || keep_unresolved;
            if !keep {
                tracing::info!(downstream = %self.shared.name, address = %replica.address, "replica left");
                replica.stop.cancel();
            }
            keep
        });
        for address in resolved {
            if replicas.iter().any(|r| r.address == address) {
                continue;
            }
            let Some(replica) = self.new_replica(address) else { continue };
            tracing::info!(downstream = %self.shared.name, %address, "replica joined");
            if self.shared.health_service.is_some() {
                tokio::spawn(watch_health(Arc::downgrade(&self.shared), Arc::clone(&replica)));
            } else {
                replica.health.store(EndpointHealth::Serving as u8, Ordering::Relaxed);
            }
            replicas.push(replica);
        }
        drop(replicas);
        self.report();
    }

    fn new_replica(&self, address: SocketAddr) -> Option<Arc<Replica>> {
        let endpoint = Endpoint::from_shared(format!("http://{address}")).ok()?;
        let channel = endpoint
            .connect_timeout(self.shared.connect_timeout)
            .tcp_nodelay(true)
            // A hung replica (SIGSTOP, a partition) is found by keepalive within ~15 s; the
            // breaker and deadlines protect callers long before.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Some(Arc::new(Replica {
            address,
            channel,
            connection: Arc::new(Connection::new(address, self.shared.connect_timeout)),
            health: AtomicU8::new(EndpointHealth::Unknown as u8),
            in_flight: AtomicUsize::new(0),
            stop: self.shared.stop.child_token(),
        }))
    }

    /// Publishes how many replicas are in each health state.
    fn report(&self) {
        let replicas = self.read();
        for health in [EndpointHealth::Unknown, EndpointHealth::Serving, EndpointHealth::Down] {
            let count = replicas.iter().filter(|r| r.health() == health).count();
            metrics::gauge!("alp_client_endpoints", "downstream" => self.shared.name.to_string(), "health" => health.label())
                .set(count as f64);
        }
    }
}

async fn refresh_loop(shared: Weak<Shared>, targets: Vec<String>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        Endpoints { shared }.refresh(&targets).await;
    }
}

/// Follows one replica's health until it leaves the set.
async fn watch_health(shared: Weak<Shared>, replica: Arc<Replica>) {
    let set = |health: EndpointHealth| {
        let before = EndpointHealth::from_u8(replica.health.swap(health as u8, Ordering::Relaxed));
        if before != health
            && let Some(shared) = shared.upgrade()
        {
            if health == EndpointHealth::Down {
                tracing::warn!(downstream = %shared.name, address = %replica.address, "replica out of rotation");
            } else {
                tracing::info!(downstream = %shared.name, address = %replica.address, health = health.label(), "replica health");
            }
            Endpoints { shared }.report();
        }
    };
    let Some((service, open_timeout)) =
        shared.upgrade().and_then(|s| Some((s.health_service.clone()?, s.connect_timeout)))
    else {
        return;
    };
    let mut retry = WATCH_RETRY_MIN;
    // Opens that may still fail before the replica is judged: after a settled watch broke, the
    // channel may try the dead connection once more before it dials a new one.
    let mut reprieve = 0;
    loop {
        let mut client = HealthClient::new(replica.channel.clone());
        // Bounded: a hung process accepts the connection but never answers.
        let opened = tokio::select! {
            () = replica.stop.cancelled() => return,
            opened = tokio::time::timeout(open_timeout, client.watch(HealthCheckRequest { service: service.clone() })) => opened,
        };
        match opened {
            Ok(Ok(response)) => {
                reprieve = 0;
                let opened_at = tokio::time::Instant::now();
                let mut heard = false;
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        () = replica.stop.cancelled() => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(update)) => {
                            heard = true;
                            retry = WATCH_RETRY_MIN;
                            let serving = update.status == ServingStatus::Serving as i32;
                            set(if serving { EndpointHealth::Serving } else { EndpointHealth::Down });
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                if heard && opened_at.elapsed() >= WATCH_SETTLED {
                    reprieve = WATCH_REPRIEVE;
                    continue;
                }
                set(EndpointHealth::Down);
            }
            // A server without a health service is taken at its word that it serves.
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                set(EndpointHealth::Serving);
                return;
            }
            Ok(Err(_)) | Err(_) if reprieve > 0 => reprieve -= 1,
            Ok(Err(_)) | Err(_) => set(EndpointHealth::Down),
        }
        tokio::select! {
            () = replica.stop.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(WATCH_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_and_port() {
        assert_eq!(parse_target("x", "http://127.0.0.1:7001").unwrap(), "127.0.0.1:7001");
        assert_eq!(parse_target("x", "content.alp.svc:7003").unwrap(), "content.alp.svc:7003");
        assert_eq!(parse_target("x", "http://content:7003/").unwrap(), "content:7003");
        for bad in ["https://content:7003", "content", ":7003", "content:http"] {
            assert!(parse_target("x", bad).is_err(), "{bad}");
        }
    }
}
