//! The server bootstrap every service runs: readiness-driven health, reflection v1, and the
//! drain on shutdown (NOT_SERVING first, open calls finish, stragglers cut off after the grace).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alp_runtime::server::{Readiness, ServerConfig, run};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

const ENTRY: &str = "alp.test.v1.Probe";
/// Upper bound for anything that should happen promptly; never a sleep.
const PROMPTLY: Duration = Duration::from_secs(10);

struct Server {
    channel: Channel,
    address: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), alp_runtime::server::ServeError>>,
}

async fn start(config: ServerConfig, readiness: Readiness) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move { run(ENTRY, Routes::default(), &config, listener, readiness, signal).await });
    let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect_lazy();
    Server { channel, address, stop, task }
}

fn config(drain_delay: Duration, shutdown_grace: Duration) -> ServerConfig {
    ServerConfig {
        drain_delay,
        shutdown_grace,
        readiness_interval: Duration::from_millis(20),
        ..ServerConfig::default()
    }
}

async fn next_status(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let message = tokio::time::timeout(PROMPTLY, watch.next()).await.expect("a health update").unwrap().unwrap();
    ServingStatus::try_from(message.status).unwrap()
}

async fn watch_until(watch: &mut tonic::Streaming<HealthCheckResponse>, wanted: ServingStatus) {
    while next_status(watch).await != wanted {}
}

async fn watch(channel: Channel, service: &str) -> tonic::Streaming<HealthCheckResponse> {
    let request = HealthCheckRequest { service: service.into() };
    HealthClient::new(channel).watch(request).await.unwrap().into_inner()
}

fn list_services() -> ServerReflectionRequest {
    ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) }
}

fn service_names(response: ServerReflectionResponse) -> Vec<String> {
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test]
async fn health_follows_readiness_under_the_named_entry_and_the_server_entry() {
    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    let readiness = Readiness::new().with_check("dependency", move || {
        let ready = flag.load(Ordering::SeqCst);
        async move { if ready { Ok(()) } else { Err("not yet".to_owned()) } }
    });
    let server = start(config(Duration::ZERO, Duration::from_secs(5)), readiness).await;

    let mut named = watch(server.channel.clone(), ENTRY).await;
    let mut overall = watch(server.channel.clone(), "").await;
    let mut live = watch(server.channel.clone(), &alp_runtime::server::liveness_entry(ENTRY)).await;
    assert_eq!(next_status(&mut named).await, ServingStatus::NotServing);
    assert_eq!(next_status(&mut live).await, ServingStatus::Serving, "alive while a dependency is down");
    ready.store(true, Ordering::SeqCst);
    watch_until(&mut named, ServingStatus::Serving).await;
    watch_until(&mut overall, ServingStatus::Serving).await;
    ready.store(false, Ordering::SeqCst);
    watch_until(&mut named, ServingStatus::NotServing).await;
    let live_now = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest { service: alp_runtime::server::liveness_entry(ENTRY) })
        .await
        .unwrap();
    assert_eq!(live_now.into_inner().status, ServingStatus::Serving as i32, "still alive when not ready");

    let unknown = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest { service: "alp.nope.v1.Nope".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    drop((named, overall, live));
    server.stop.cancel();
    tokio::time::timeout(PROMPTLY, server.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn reflection_v1_lists_every_alp_service_and_health() {
    let server = start(config(Duration::ZERO, Duration::from_secs(5)), Readiness::new()).await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([list_services()])).await.unwrap().into_inner();
    let names = service_names(responses.next().await.unwrap().unwrap());
    for expected in [
        "alp.content.v1.ContentService",
        "alp.user.v1.UserService",
        "alp.scoring.v1.ScoringService",
        "alp.scheduler.v1.SchedulerService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    drop(responses);
    server.stop.cancel();
    tokio::time::timeout(PROMPTLY, server.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn drain_says_not_serving_first_and_lets_open_calls_finish() {
    // A long grace: the server must stop because the open call ended, not because time ran out.
    let server = start(config(Duration::from_millis(200), Duration::from_secs(60)), Readiness::new()).await;
    let mut health = watch(server.channel.clone(), ENTRY).await;
    watch_until(&mut health, ServingStatus::Serving).await;

    // An open bidirectional reflection stream stands in for any in-flight call.
    let (requests, outbound) = mpsc::channel(4);
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    requests.send(list_services()).await.unwrap();
    let mut responses = reflection.server_reflection_info(ReceiverStream::new(outbound)).await.unwrap().into_inner();
    assert!(!service_names(responses.next().await.unwrap().unwrap()).is_empty());

    server.stop.cancel();
    assert_eq!(next_status(&mut health).await, ServingStatus::NotServing, "NOT_SERVING as soon as the drain starts");
    drop(health);
    let live = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest { service: alp_runtime::server::liveness_entry(ENTRY) })
        .await
        .unwrap();
    assert_eq!(live.into_inner().status, ServingStatus::Serving as i32, "a draining pod is not restarted");

    // The call opened before the drain is still answered after the listener has closed.
    requests.send(list_services()).await.unwrap();
    assert!(!service_names(responses.next().await.unwrap().unwrap()).is_empty());
    assert!(!server.task.is_finished(), "the server waits for the open call");
    drop(requests);
    assert!(responses.next().await.is_none(), "the call ends cleanly");

    tokio::time::timeout(PROMPTLY, server.task).await.expect("stops once the call ended").unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(server.address).await.is_err(), "no new connections after the drain");
}

#[tokio::test]
async fn calls_still_open_after_the_grace_are_cut_off() {
    let server = start(config(Duration::from_millis(50), Duration::from_millis(200)), Readiness::new()).await;
    // A health watch never ends on its own; without the grace the server would wait forever.
    let mut health = watch(server.channel.clone(), ENTRY).await;
    watch_until(&mut health, ServingStatus::Serving).await;
    server.stop.cancel();
    watch_until(&mut health, ServingStatus::NotServing).await;
    tokio::time::timeout(PROMPTLY, server.task).await.expect("stops after the grace").unwrap().unwrap();
}

#[tokio::test]
async fn a_watched_replica_leaves_when_not_ready_and_a_proxied_address_stays() {
    use alp_runtime::client::{EndpointHealth, Endpoints};

    // Never ready: its database, say, is down.
    let readiness = Readiness::new().with_check("database", || async { Err("down".to_owned()) });
    let server = start(config(Duration::ZERO, Duration::from_secs(5)), readiness).await;
    let target = server.address.to_string();
    let timeout = Duration::from_secs(1);

    let watched = Endpoints::start("probe", &target, Some(ENTRY), timeout, Duration::from_secs(60)).await.unwrap();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while watched.snapshot() != vec![(server.address, EndpointHealth::Down)] {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", watched.snapshot());
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(watched.pick().is_err(), "a replica that says NOT_SERVING gets no calls");

    // Behind a mesh the address is the proxy's: no watch, always in rotation.
    let proxied = Endpoints::start("probe", &target, None, timeout, Duration::from_secs(60)).await.unwrap();
    assert_eq!(proxied.snapshot(), vec![(server.address, EndpointHealth::Serving)]);
    assert!(proxied.any_serving());
    assert!(proxied.pick().is_ok());

    drop((watched, proxied));
    server.stop.cancel();
    tokio::time::timeout(PROMPTLY, server.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_recycling_aged_connections_costs_its_callers_nothing() {
    use alp_runtime::client::{Downstream, DownstreamConfig, Method};

    // Every connection is told to go after 1 s and cut 0.5 s later, health watches included.
    let config = ServerConfig {
        max_connection_age: Duration::from_secs(1),
        max_connection_age_grace: Duration::from_millis(500),
        ..config(Duration::ZERO, Duration::from_secs(5))
    };
    let server = start(config, Readiness::new()).await;
    let probe = Downstream::connect("probe", ENTRY, DownstreamConfig::new(server.address.to_string())).await.unwrap();
    let check = probe.rpc(Method::idempotent("Check"), alp_runtime::send!(HealthClient::check));
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while probe.check_serving().is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the replica never reported SERVING");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Three connection lifetimes, with calls on every connection as it is recycled.
    let until = tokio::time::Instant::now() + Duration::from_millis(4_800);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let check = check.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                while tokio::time::Instant::now() < until {
                    if let Err(error) = check.call(HealthCheckRequest { service: ENTRY.to_owned() }).await {
                        failed.push(error.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                failed
            })
        })
        .collect();
    // A cut watch is reopened, not read as the replica going away (it used to leave the set for
    // a retry's wait, and its callers answered degraded).
    while tokio::time::Instant::now() < until {
        assert_eq!(probe.check_serving(), Ok(()), "out of rotation while the server only recycled its connection");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A call caught on a connection as it is cut is retried on the next one.
    for caller in callers {
        let failed = caller.await.unwrap();
        assert!(failed.is_empty(), "{} calls failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    }

    drop((probe, check));
    server.stop.cancel();
    tokio::time::timeout(PROMPTLY, server.task).await.unwrap().unwrap().unwrap();
}
