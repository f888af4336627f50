//! `alp dataset` and `alp load` through the command line against the suite: the data set lands in
//! every service and a second run resumes rather than repeats; the generator sends exactly its
//! schedule, checks the answers and writes its result and plot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use alp::cli::{Cli, Command};
use alp_bench::dataset::DatasetSpec;
use alp_proto::scheduler::v1::ExportAttemptsRequest;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::user::v1::GetLearnerRequest;
use alp_proto::user::v1::user_service_client::UserServiceClient;
use clap::Parser;
use tokio_stream::StreamExt;

const SHAPE: [&str; 8] = ["--learners", "60", "--items", "80", "--courses", "2", "--skills-per-course", "4"];

fn parse(args: &[&str]) -> Command {
    Cli::try_parse_from(["alp"].iter().chain(args)).unwrap().command
}

fn targets(running: &common::Running) -> Vec<String> {
    let a = &running.addresses;
    vec![
        format!("--scheduler-addr={}", a.scheduler),
        format!("--user-addr={}", a.user),
        format!("--content-addr={}", a.content),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_set_loads_once_and_the_generator_keeps_its_schedule() {
    let running = common::start_sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("dataset.json");
    let targets = targets(&running);
    let dataset_args = |shape: &[&str]| {
        let mut args = vec!["dataset", "--quiet", "--checkpoint", checkpoint.to_str().unwrap()];
        args.extend(shape);
        args.extend(targets.iter().map(String::as_str));
        let Command::Dataset(args) = parse(&args) else { panic!("not a dataset command") };
        args
    };

    let args = dataset_args(&SHAPE);
    alp_bench::dataset::run(&args).await.unwrap();
    // Every learner exists with the enrolments the spec gives; the most active one's history is
    // in the attempt log in full.
    let spec: DatasetSpec = args.spec.clone();
    let courses = spec.course_popularity();
    let mut user = UserServiceClient::new(common::channel(running.addresses.user));
    let last = user
        .get_learner(GetLearnerRequest { learner_id: spec.learner_id(59) })
        .await
        .unwrap()
        .into_inner()
        .learner
        .unwrap();
    assert_eq!(last.enrolments.len(), spec.enrolments(59, &courses).len());
    let first_course = spec.enrolments(0, &courses)[0];
    let history = spec.history(0, first_course);
    assert!(!history.is_empty());
    let mut scheduler = SchedulerServiceClient::new(common::channel(running.addresses.scheduler));
    let mut export = scheduler
        .export_attempts(ExportAttemptsRequest { learner_id: spec.learner_id(0), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut exported = Vec::new();
    while let Some(batch) = export.next().await {
        exported.extend(batch.unwrap().attempts.into_iter().map(|a| a.attempt_id));
    }
    let expected: Vec<String> = history.iter().map(|a| a.attempt_id.clone()).collect();
    assert_eq!(exported, expected);

    // A second run finds everything done; another data set's flags are refused.
    alp_bench::dataset::run(&args).await.unwrap();
    let mut other = SHAPE.to_vec();
    other[1] = "61";
    let error = alp_bench::dataset::run(&dataset_args(&other)).await.unwrap_err().to_string();
    assert!(error.contains("different data set"), "{error}");

    // Three seconds at 40/s after a second's warm-up: 120 measured requests, all answered well.
    let out = dir.path().join("result.json");
    let mut load = vec!["load", "--quiet", "--rate", "40", "--duration", "3s", "--warmup", "1s", "--timeout", "5s"];
    load.extend(SHAPE);
    load.extend(["--out", out.to_str().unwrap()]);
    load.extend(targets.iter().map(String::as_str));
    let Command::Load(args) = parse(&load) else { panic!("not a load command") };
    let report = alp_bench::load::run(&args).await.unwrap();
    assert_eq!(report.steps.len(), 1);
    let step = &report.steps[0];
    assert_eq!(step.sent, 120);
    assert_eq!(step.completed, 120);
    assert!(step.errors.is_empty(), "{:?}", step.errors);
    assert_eq!(step.ok, 120);
    assert!(step.by_operation.contains_key("NextItems(practice)") && step.by_operation.contains_key("SubmitAttempt"));
    assert!(step.latency_ms.p50 > 0.0 && step.latency_ms.p50 <= step.latency_ms.p99);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(written["steps"][0]["sent"], 120);

    // A stepped run reports each step and draws the plot beside the result.
    let mut steps = vec!["load", "--quiet", "--endpoint", "get-item", "--scenario", "steps", "--rates", "20,50"];
    steps.extend(["--duration", "1s", "--warmup", "0s", "--out", out.to_str().unwrap()]);
    steps.extend(SHAPE);
    steps.extend(targets.iter().map(String::as_str));
    let Command::Load(args) = parse(&steps) else { panic!("not a load command") };
    let report = alp_bench::load::run(&args).await.unwrap();
    assert_eq!(report.steps.iter().map(|s| s.sent).collect::<Vec<_>>(), [20, 50]);
    assert!(report.steps.iter().all(|s| s.errors.is_empty()), "{:?}", report.steps);
    let plot = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("polyline"));

    running.shutdown().await;
}

#[test]
fn bad_load_settings_are_named() {
    for (args, field) in [
        (vec!["load", "--scenario", "steps"], "--rates"),
        (vec!["load", "--rate", "0"], "rate 0"),
        (vec!["load", "--factor", "1"], "--factor"),
        (vec!["load", "--duration", "500ms"], "--duration"),
    ] {
        let Command::Load(args) = parse(&args) else { panic!("not a load command") };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let error = runtime.block_on(alp_bench::load::run(&args)).unwrap_err().to_string();
        assert!(error.contains(field), "{error} should name {field}");
    }
}
