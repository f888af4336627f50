//! A user-service outage delays progress and never loses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use alp::suite::Databases;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::{NextItemsRequest, SubmitAttemptRequest};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::{CreateLearnerRequest, EnrolLearnerRequest, GetProgressRequest, Learner};
use alp_runtime::client::DownstreamConfig;
use common::{channel, test_server_config, wait_serving};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn user_service(
    databases: &Databases,
    listener: TcpListener,
    content: SocketAddr,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), alp_runtime::server::ServeError>> {
    tokio::spawn(alp_user::serve_with_shutdown(
        alp_user::UserConfig {
            server: test_server_config(),
            database: databases.user.clone(),
            content: DownstreamConfig::new(content.to_string()),
            redis: None,
        },
        listener,
        stop.cancelled_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_submitted_while_user_service_is_down_arrives_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let databases = Databases::sqlite(dir.path());
    alp::suite::migrate(&databases).await.unwrap();
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (content_l, scoring_l, scheduler_l, user_l) =
        (bind().await.unwrap(), bind().await.unwrap(), bind().await.unwrap(), bind().await.unwrap());
    let (content, scoring, scheduler, user) = (
        content_l.local_addr().unwrap(),
        scoring_l.local_addr().unwrap(),
        scheduler_l.local_addr().unwrap(),
        user_l.local_addr().unwrap(),
    );
    let stop_all = CancellationToken::new();
    let config = test_server_config();
    tokio::spawn(alp_content::serve_with_shutdown(
        alp_content::ContentConfig { server: config.clone(), database: databases.content.clone(), redis: None },
        content_l,
        stop_all.clone().cancelled_owned(),
    ));
    tokio::spawn(alp_scoring::serve_with_shutdown(
        alp_scoring::ScoringConfig {
            server: config.clone(),
            database: databases.scoring.clone(),
            policies: alp_scoring::Policies::default(),
            redis: None,
        },
        scoring_l,
        stop_all.clone().cancelled_owned(),
    ));
    tokio::spawn(alp_scheduler::serve_with_shutdown(
        alp_scheduler::SchedulerConfig {
            outbox: alp_scheduler::RelayConfig::default(),
            server: config.clone(),
            database: databases.scheduler.clone(),
            downstream: alp_scheduler::DownstreamConfigs {
                content: DownstreamConfig::new(content.to_string()),
                scoring: DownstreamConfig::new(scoring.to_string()),
                user: DownstreamConfig::new(user.to_string()),
            },
            redis: None,
        },
        scheduler_l,
        stop_all.clone().cancelled_owned(),
    ));
    let stop_user = CancellationToken::new();
    let user_task = user_service(&databases, user_l, content, stop_user.clone());
    wait_serving(scheduler, "alp.scheduler.v1.SchedulerService").await;
    wait_serving(user, "alp.user.v1.UserService").await;

    alp::seed::demo_course(channel(content)).await.unwrap();
    let mut users = UserServiceClient::new(channel(user));
    users
        .create_learner(CreateLearnerRequest {
            learner: Some(Learner { learner_id: "lin".into(), ..Default::default() }),
        })
        .await
        .unwrap();
    users
        .enrol_learner(EnrolLearnerRequest { learner_id: "lin".into(), course_id: "arithmetic".into() })
        .await
        .unwrap();
    let mut scheduler_client = SchedulerServiceClient::new(channel(scheduler));
    let next = scheduler_client
        .next_items(NextItemsRequest {
            learner_id: "lin".into(),
            course_id: "arithmetic".into(),
            count: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.items.len(), 5);

    // The user service goes away; practice goes on.
    stop_user.cancel();
    user_task.await.unwrap().unwrap();
    for (i, item) in next.items.iter().enumerate() {
        let answer = scheduler_client
            .submit_attempt(SubmitAttemptRequest {
                attempt_id: format!("lin-{i}"),
                learner_id: "lin".into(),
                item_id: item.item_id.clone(),
                outcome: Some(Outcome::Correct(i % 2 == 0)),
                ..Default::default()
            })
            .await
            .expect("attempts are accepted while the user service is down");
        assert!(!answer.into_inner().duplicate);
    }

    // It comes back on the same address with the same data; the outbox drains into it.
    let listener = TcpListener::bind(user).await.unwrap();
    let stop_user = CancellationToken::new();
    let user_task = user_service(&databases, listener, content, stop_user.clone());
    let mut users = UserServiceClient::new(channel(user));
    let mut counted = 0;
    for _ in 0..300 {
        let progress =
            users.get_progress(GetProgressRequest { learner_id: "lin".into(), course_id: "arithmetic".into() }).await;
        if let Ok(progress) = progress {
            counted = progress.into_inner().courses[0].attempt_count;
            if counted >= 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, 5, "every attempt counted exactly once after the outage");
    let progress = users
        .get_progress(GetProgressRequest { learner_id: "lin".into(), course_id: "arithmetic".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((progress.courses[0].correct_count, progress.courses[0].items_seen), (3, 5));

    stop_user.cancel();
    stop_all.cancel();
    user_task.await.unwrap().unwrap();
}
