//! Hostile input for every RPC of the contract, found through the descriptor set so a new RPC is
//! covered the day it is added: seeded random messages mixing valid ids with empty, huge, unicode,
//! NaN, out-of-range and unknown-enum values. No call may end INTERNAL, UNKNOWN or UNIMPLEMENTED,
//! a rejected call must leave every database untouched, and the suite must keep serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::{ListDueItemsRequest, NextItemsRequest};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::{CreateLearnerRequest, EnrolLearnerRequest, Learner};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};
use sqlx::{Connection, SqliteConnection};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_prost::ProstCodec;

const CALLS_PER_METHOD: usize = 80;
const LEARNER: &str = "fuzz-learner";

/// splitmix64: a fixed seed gives the same run everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, options: &[T]) -> T {
        options[self.below(options.len())].clone()
    }
}

/// Most values are plausible, so calls get past the first check and reach deeper code; the rest
/// are hostile.
const PLAUSIBLE: u64 = 85;

fn string(rng: &mut Rng) -> String {
    if rng.chance(PLAUSIBLE) {
        let plausible = ["arithmetic", "add-1", "add-2", "sub-1", "mul-1", "addition", LEARNER, "sum", "add"];
        return match rng.below(4) {
            0 => format!("attempt-{}", rng.below(20)),
            _ => rng.pick(&plausible).to_owned(),
        };
    }
    let hostile: [&dyn Fn(&mut Rng) -> String; 10] = [
        &|_| String::new(),
        &|_| "unknown-id".into(),
        &|_| "  padded  ".into(),
        &|_| "ünïcødé 🙂 ids".into(),
        &|_| "'; DROP TABLE items; --".into(),
        &|_| "nul\0byte".into(),
        &|_| "x".repeat(129),
        &|rng| "long text ".repeat(rng.below(3000)),
        &|_| "a\nb".into(),
        &|_| "\"quoted\" OR NEAR(a b)".into(),
    ];
    rng.pick(&hostile)(rng)
}

fn scalar(rng: &mut Rng, field: &FieldDescriptor, depth: usize) -> Value {
    let plausible = rng.chance(PLAUSIBLE);
    match field.kind() {
        Kind::Double if plausible => Value::F64(rng.pick(&[0.0, 0.5, 0.8, 0.9, 1.0, -1.0, 2.5])),
        Kind::Double => Value::F64(rng.pick(&[1e308, -1e308, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 7.0])),
        Kind::Float => Value::F32(rng.pick(&[0.0, 0.5, f32::NAN, -1.0, f32::MAX])),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 if plausible => Value::I32(rng.pick(&[0, 1, 2, 3, 4, 10])),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(rng.pick(&[-1, 1001, i32::MAX, i32::MIN])),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(rng.pick(&[0, 1, -1, 86_400, i64::MAX, i64::MIN])),
        Kind::Uint32 | Kind::Fixed32 if plausible => Value::U32(rng.pick(&[0, 1, 3, 10])),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.pick(&[1001, 100_000, u32::MAX])),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.pick(&[0, 1, u64::MAX])),
        Kind::Bool => Value::Bool(rng.chance(50)),
        Kind::String => Value::String(string(rng)),
        Kind::Bytes => Value::Bytes(vec![0xff; rng.below(64)].into()),
        Kind::Enum(descriptor) => {
            let known: Vec<i32> = descriptor.values().map(|v| v.number()).collect();
            Value::EnumNumber(if plausible { rng.pick(&known) } else { rng.pick(&[-1, 99, i32::MAX]) })
        }
        Kind::Message(descriptor) => Value::Message(message(rng, &descriptor, depth + 1)),
    }
}

fn message(rng: &mut Rng, descriptor: &MessageDescriptor, depth: usize) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    match descriptor.full_name() {
        // Well-known types get edge values a random walk would rarely hit.
        "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
            let (seconds, nanos) = if rng.chance(PLAUSIBLE) {
                (rng.pick(&[0, 2, 30, 1_700_000_000, 1_800_000_000]), rng.pick(&[0, 500_000_000]))
            } else {
                (rng.pick(&[-1, 253_402_300_800, -62_135_596_801, i64::MAX, i64::MIN]), rng.pick(&[1_000_000_000, -1]))
            };
            message.set_field_by_name("seconds", Value::I64(seconds));
            message.set_field_by_name("nanos", Value::I32(nanos));
            return message;
        }
        "google.protobuf.FieldMask" => {
            let paths: Vec<Value> = (0..rng.below(4))
                .map(|_| {
                    Value::String(
                        rng.pick(&["display_name", "email", "locale", "desired_retention", "learner_id", "nope", ""])
                            .into(),
                    )
                })
                .collect();
            message.set_field_by_name("paths", Value::List(paths));
            return message;
        }
        _ => {}
    }
    if depth > 3 {
        return message;
    }
    for field in descriptor.fields() {
        if !rng.chance(PLAUSIBLE) {
            continue;
        }
        if field.is_list() {
            let n = if rng.chance(3) { 1500 } else { rng.below(4) };
            let values = (0..n).map(|_| scalar(rng, &field, depth)).collect();
            message.set_field(&field, Value::List(values));
        } else if field.is_map() {
            continue;
        } else {
            message.set_field(&field, scalar(rng, &field, depth));
        }
    }
    message
}

/// PRAGMA data_version changes when another connection commits to the database.
struct WriteWatch {
    connections: Vec<(String, SqliteConnection)>,
}

impl WriteWatch {
    async fn open(dir: &std::path::Path) -> Self {
        let mut connections = Vec::new();
        for service in ["content", "user", "scoring", "scheduler"] {
            let url = alp_runtime::db::sqlite_url(dir, &format!("{service}.db"));
            connections.push((service.to_owned(), SqliteConnection::connect(&url).await.unwrap()));
        }
        Self { connections }
    }

    async fn versions(&mut self) -> HashMap<String, i64> {
        let mut versions = HashMap::new();
        for (service, connection) in &mut self.connections {
            let version: i64 = sqlx::query_scalar("PRAGMA data_version").fetch_one(&mut *connection).await.unwrap();
            versions.insert(service.clone(), version);
        }
        versions
    }

    /// Waits until the outbox relay has nothing left to deliver, so it writes nothing meanwhile.
    async fn quiesce(&mut self) {
        let (_, scheduler) =
            self.connections.iter_mut().find(|(service, _)| service == "scheduler").expect("scheduler database");
        for _ in 0..200 {
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&mut *scheduler).await.unwrap();
            if pending == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the outbox never drained");
    }
}

async fn call(address: SocketAddr, method: &MethodDescriptor, request: DynamicMessage) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(common::channel(address));
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(format!("/{}/{}", method.parent_service().full_name(), method.name())).unwrap();
    // Responses are decoded as `()`: the check is the status, and unknown fields are skipped.
    let codec = ProstCodec::<DynamicMessage, ()>::default();
    if method.is_server_streaming() {
        let mut stream = grpc.server_streaming(tonic::Request::new(request), path, codec).await?.into_inner();
        while let Some(item) = stream.next().await {
            item?;
        }
    } else {
        grpc.unary(tonic::Request::new(request), path, codec).await?;
    }
    Ok(())
}

fn address_of(running: &common::Running, service: &str) -> SocketAddr {
    let a = running.addresses;
    match service {
        "alp.content.v1.ContentService" => a.content,
        "alp.user.v1.UserService" => a.user,
        "alp.scoring.v1.ScoringService" => a.scoring,
        "alp.scheduler.v1.SchedulerService" => a.scheduler,
        other => panic!("no address for {other}"),
    }
}

#[tokio::test]
async fn no_input_crashes_a_service_or_slips_past_validation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let running = common::start(alp::suite::Databases::sqlite(&path), Some(dir)).await;
    alp::seed::demo_course(common::channel(running.addresses.content)).await.unwrap();
    let mut users = UserServiceClient::new(common::channel(running.addresses.user));
    let learner = Learner { learner_id: LEARNER.into(), display_name: "Fuzz".into(), ..Learner::default() };
    users.create_learner(CreateLearnerRequest { learner: Some(learner) }).await.unwrap();
    users
        .enrol_learner(EnrolLearnerRequest { learner_id: LEARNER.into(), course_id: "arithmetic".into() })
        .await
        .unwrap();

    let pool = DescriptorPool::decode(alp_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut watch = WriteWatch::open(&path).await;
    let mut rng = Rng(0x00A1_7EA5_u64);
    let mut codes: HashMap<(String, Code), usize> = HashMap::new();
    let mut calls = 0;
    for service in pool.services().filter(|s| s.full_name().starts_with("alp.")) {
        let address = address_of(&running, service.full_name());
        for method in service.methods() {
            for _ in 0..CALLS_PER_METHOD {
                let request = message(&mut rng, &method.input(), 0);
                watch.quiesce().await;
                let before = watch.versions().await;
                let outcome = call(address, &method, request.clone()).await;
                calls += 1;
                let code = outcome.as_ref().err().map_or(Code::Ok, tonic::Status::code);
                *codes.entry((method.name().to_owned(), code)).or_default() += 1;
                let Err(status) = outcome else { continue };
                assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown | Code::Unimplemented | Code::Unavailable),
                    "{} answered {status:?} to {request:?}",
                    method.full_name()
                );
                if status.code() == Code::InvalidArgument {
                    let field = status.message().split(':').next().unwrap_or_default();
                    assert!(
                        !field.is_empty() && !field.contains(' '),
                        "{}: INVALID_ARGUMENT should start with the field: {:?}",
                        method.full_name(),
                        status.message()
                    );
                }
                assert_eq!(
                    watch.versions().await,
                    before,
                    "{} rejected a call ({status:?}) but wrote to a database: {request:?}",
                    method.full_name()
                );
            }
        }
    }
    let mut summary: Vec<_> = codes.into_iter().collect();
    summary.sort_by(|a, b| a.0.0.cmp(&b.0.0).then(format!("{:?}", a.0.1).cmp(&format!("{:?}", b.0.1))));
    eprintln!("{calls} calls:");
    for ((method, code), n) in summary {
        eprintln!("  {method:<22} {code:?}: {n}");
    }

    // Still serving, and still right.
    for (address, service) in [
        (running.addresses.content, alp_content::SERVICE_NAME),
        (running.addresses.user, alp_user::SERVICE_NAME),
        (running.addresses.scoring, alp_scoring::SERVICE_NAME),
        (running.addresses.scheduler, alp_scheduler::SERVICE_NAME),
    ] {
        common::wait_serving(address, service).await;
    }
    // The fuzz may have deleted its learner; a new one practises normally.
    let learner = Learner { learner_id: "after-fuzz".into(), display_name: "After".into(), ..Learner::default() };
    users.create_learner(CreateLearnerRequest { learner: Some(learner) }).await.unwrap();
    users
        .enrol_learner(EnrolLearnerRequest { learner_id: "after-fuzz".into(), course_id: "arithmetic".into() })
        .await
        .unwrap();
    let mut scheduler = SchedulerServiceClient::new(common::channel(running.addresses.scheduler));
    let next = NextItemsRequest {
        learner_id: "after-fuzz".into(),
        course_id: "arithmetic".into(),
        count: 3,
        ..Default::default()
    };
    assert_eq!(scheduler.next_items(next).await.unwrap().into_inner().items.len(), 3);
    let due = ListDueItemsRequest { learner_id: "after-fuzz".into(), ..ListDueItemsRequest::default() };
    scheduler.list_due_items(due).await.unwrap();
    running.shutdown().await;
}
