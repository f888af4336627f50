//! Simulated learners of known ability practise and sit mock tests through the running suite,
//! over gRPC: the engine must pick items near the target, tell the strong from the weak, and
//! end each mock test with an estimate that contains the truth; a learner with a long history
//! gets FSRS parameters of their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use alp_proto::common::v1::{MemoryState, Mode, Rating, Reason};
use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::*;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::*;
use alp_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use alp_proto::scoring::v1::{
    FitLearnerParametersRequest, GetLearnerModelRequest, ParameterFit, PredictRecallRequest, RecallQuery,
};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::*;
use alp_scoring::model::memory::{Card, DAY_MS, MINUTE_MS, MemoryModel};
use common::channel;
use tonic::transport::Channel;

const COURSE: &str = "ladder";
const ITEMS: usize = 60;

/// Item n's true difficulty, from -4 to 4; authors know it, so the estimates start calibrated.
fn difficulty(n: usize) -> f64 {
    -4.0 + 8.0 * n as f64 / (ITEMS - 1) as f64
}

async fn course(content: &mut ContentServiceClient<Channel>) {
    let course = Course { course_id: COURSE.into(), title: "A ladder of difficulty".into(), ..Default::default() };
    content.create_course(CreateCourseRequest { course: Some(course) }).await.unwrap();
    let skill = Skill { skill_id: "climbing".into(), name: "Climbing".into(), ..Default::default() };
    content.upsert_skills(UpsertSkillsRequest { course_id: COURSE.into(), skills: vec![skill] }).await.unwrap();
    let items = (0..ITEMS)
        .map(|n| Item {
            item_id: format!("rung-{n}"),
            course_id: COURSE.into(),
            kind: ItemKind::Numeric as i32,
            prompt: format!("Rung {n}"),
            answer: Some(AnswerKey {
                key: Some(answer_key::Key::Numeric(NumericAnswer { value: n as f64, tolerance: 0.0 })),
            }),
            skill_ids: vec!["climbing".into()],
            difficulty: difficulty(n),
            ..Default::default()
        })
        .collect();
    content.upsert_items(UpsertItemsRequest { items }).await.unwrap();
}

/// A learner who answers by the Rasch model with a fixed ability; deterministic draws.
struct Simulated {
    id: String,
    ability: f64,
    state: u64,
}

impl Simulated {
    fn new(id: &str, ability: f64, seed: u64) -> Self {
        Self { id: id.into(), ability, state: seed }
    }

    fn uniform(&mut self) -> f64 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    fn answers(&mut self, item_id: &str) -> bool {
        let n: usize = item_id.trim_start_matches("rung-").parse().unwrap();
        let p = 1.0 / (1.0 + (difficulty(n) - self.ability).exp());
        self.uniform() < p
    }
}

struct Suite {
    scheduler: SchedulerServiceClient<Channel>,
    scoring: ScoringServiceClient<Channel>,
    user: UserServiceClient<Channel>,
}

impl Suite {
    /// The suite on SQLite with the ladder course, and clients for it.
    async fn start() -> (common::Running, Self) {
        let running = common::start_sqlite().await;
        let a = running.addresses;
        course(&mut ContentServiceClient::new(channel(a.content))).await;
        let suite = Self {
            scheduler: SchedulerServiceClient::new(channel(a.scheduler)),
            scoring: ScoringServiceClient::new(channel(a.scoring)),
            user: UserServiceClient::new(channel(a.user)),
        };
        (running, suite)
    }

    async fn enrol(&mut self, learner: &Simulated) {
        let profile = Learner { learner_id: learner.id.clone(), ..Default::default() };
        self.user.create_learner(CreateLearnerRequest { learner: Some(profile) }).await.unwrap();
        let enrolment = EnrolLearnerRequest { learner_id: learner.id.clone(), course_id: COURSE.into() };
        self.user.enrol_learner(enrolment).await.unwrap();
    }

    async fn next(&mut self, learner: &Simulated, mode: Mode, mock_test_id: &str) -> NextItemsResponse {
        let request = NextItemsRequest {
            learner_id: learner.id.clone(),
            course_id: COURSE.into(),
            count: 1,
            mode: mode as i32,
            mock_test_id: mock_test_id.into(),
        };
        let response = self.scheduler.next_items(request).await.unwrap().into_inner();
        assert!(!response.degraded, "{}", response.degraded_reason);
        response
    }

    async fn answer(&mut self, learner: &mut Simulated, item_id: &str, attempt_id: String, mock_test_id: &str) {
        let correct = learner.answers(item_id);
        let request = SubmitAttemptRequest {
            attempt_id,
            learner_id: learner.id.clone(),
            item_id: item_id.into(),
            outcome: Some(Outcome::Correct(correct)),
            mock_test_id: mock_test_id.into(),
            ..Default::default()
        };
        self.scheduler.submit_attempt(request).await.unwrap();
    }

    /// New items only, one at a time: returns the predicted success of each item offered.
    async fn practise(&mut self, learner: &mut Simulated, attempts: usize) -> Vec<f64> {
        let mut predicted = Vec::new();
        for n in 0..attempts {
            let next = self.next(learner, Mode::Practice, "").await;
            let item = next.items.into_iter().find(|i| i.reason == Reason::New as i32).expect("a new item");
            predicted.push(item.predicted_success);
            let attempt_id = format!("{}-practice-{n}", learner.id);
            self.answer(learner, &item.item_id, attempt_id, "").await;
        }
        predicted
    }

    async fn mock_test(&mut self, learner: &mut Simulated) -> alp_proto::common::v1::MockTestEstimate {
        let test = format!("{}-exam", learner.id);
        for n in 0.. {
            let next = self.next(learner, Mode::MockTest, &test).await;
            let estimate = next.mock_test.unwrap();
            if estimate.finished {
                return estimate;
            }
            let item = &next.items[0];
            self.answer(learner, &item.item_id, format!("{test}-{n}"), &test).await;
        }
        unreachable!()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_learners_practise_and_are_measured_over_grpc() {
    let (running, mut suite) = Suite::start().await;
    let mut strong = Simulated::new("strong", 1.5, 11);
    let mut weak = Simulated::new("weak", -1.0, 12);
    suite.enrol(&strong).await;
    suite.enrol(&weak).await;

    for learner in [&mut strong, &mut weak] {
        let predicted = suite.practise(learner, 12).await;
        // The first pick has nothing to go on but calibrated items: it sits at the target.
        assert!((predicted[0] - 0.8).abs() < 0.05, "{}: {predicted:?}", learner.id);
        let mean = predicted.iter().sum::<f64>() / predicted.len() as f64;
        assert!((mean - 0.8).abs() < 0.1, "{}: {predicted:?}", learner.id);
    }
    let ability = |model: alp_proto::scoring::v1::GetLearnerModelResponse| model.model.unwrap().skills[0].ability;
    let request = |id: &str| GetLearnerModelRequest { learner_id: id.into() };
    let strong_practice = ability(suite.scoring.get_learner_model(request("strong")).await.unwrap().into_inner());
    let weak_practice = ability(suite.scoring.get_learner_model(request("weak")).await.unwrap().into_inner());
    assert!(strong_practice > weak_practice + 1.0, "strong {strong_practice}, weak {weak_practice}");

    // Mock tests, for these two and two more of each kind. One seeded learner's draws run long
    // against them (seed 11 opens with three draws above 0.9), and which item meets which draw
    // depends on timing (difficulties are cached for seconds, and the fitting test running
    // beside this one moves the same items' difficulties), so each estimate is held to 4
    // standard errors and each group's mean to within 0.7 of its truth. Measured: alone, weak
    // mean about -1.2; beside the fitting test once calls got faster (TCP_NODELAY), -1.61.
    let mut group = vec![strong, weak];
    for (id, ability, seed) in
        [("strong-2", 1.5, 13), ("weak-2", -1.0, 14), ("strong-3", 1.5, 17), ("weak-3", -1.0, 18)]
    {
        let mut learner = Simulated::new(id, ability, seed);
        suite.enrol(&learner).await;
        suite.practise(&mut learner, 12).await;
        group.push(learner);
    }
    let mut estimates: Vec<(f64, f64)> = Vec::new();
    for learner in &mut group {
        let estimate = suite.mock_test(learner).await;
        assert!(estimate.status.starts_with("finished"), "{estimate:?}");
        assert!(estimate.standard_error <= 0.6, "{}: {estimate:?}", learner.id);
        let error = (estimate.ability - learner.ability).abs();
        assert!(error <= 4.0 * estimate.standard_error, "{}: {estimate:?} for a true {}", learner.id, learner.ability);
        estimates.push((learner.ability, estimate.ability));
    }
    for truth in [1.5, -1.0] {
        let found: Vec<f64> = estimates.iter().filter(|(t, _)| *t == truth).map(|(_, e)| *e).collect();
        let mean = found.iter().sum::<f64>() / found.len() as f64;
        assert!((mean - truth).abs() <= 0.7, "learners of ability {truth} measured at {found:?}");
    }
    running.shutdown().await;
}

/// Days of a simulated learner's history through the scheduler, with answers dated in the past
/// (as an offline client sends them): due items first, then up to `new_per_day` new ones. The
/// learner remembers by FSRS-6 with their own parameters `truth`. At each of `fit_at`'s review
/// counts it waits for scoring's background fit of that many reviews, which the history after it
/// is scheduled with: scoring learns of answers from the scheduler's outbox, so without the wait
/// how many answers go by before a fit lands would depend on the machine's speed.
async fn study_history(
    scheduler: &mut SchedulerServiceClient<Channel>,
    mut fit_at: Option<(&[i64], &mut ScoringServiceClient<Channel>)>,
    learner: &mut Simulated,
    truth: &MemoryModel,
    days: i64,
    new_per_day: usize,
) -> usize {
    let start = alp_runtime::time::now_millis() - (days + 1) * DAY_MS;
    // Per item: (the scheduler's due time, the learner's true memory).
    let mut studied: Vec<(String, i64, Card)> = Vec::new();
    let mut attempts = 0;
    let mut reviews: i64 = 0;
    for day in 0..days {
        let mut now = start + day * DAY_MS;
        let mut new_today = 0;
        loop {
            let due = studied.iter().enumerate().filter(|(_, s)| s.1 <= now).min_by_key(|(_, s)| s.1).map(|(k, _)| k);
            let (item_id, prior) = match due {
                Some(k) => (studied[k].0.clone(), Some(studied[k].2)),
                None if new_today < new_per_day && studied.len() < ITEMS => (format!("rung-{}", studied.len()), None),
                None => match studied.iter().map(|s| s.1).filter(|d| *d < now + 30 * MINUTE_MS).min() {
                    Some(next) => {
                        now = next;
                        continue;
                    }
                    None => break,
                },
            };
            let correct = match &prior {
                Some(card) => learner.uniform() < truth.retrievability(card.memory, now - card.last_review_ms),
                None => learner.answers(&item_id),
            };
            let rating = if correct { Rating::Good } else { Rating::Again };
            let request = SubmitAttemptRequest {
                attempt_id: format!("{}-{attempts}", learner.id),
                learner_id: learner.id.clone(),
                item_id: item_id.clone(),
                outcome: Some(Outcome::Correct(correct)),
                answer_time: Some(alp_runtime::time::timestamp(now)),
                ..Default::default()
            };
            let attempt = scheduler.submit_attempt(request).await.unwrap().into_inner().attempt.unwrap();
            let due_ms = alp_runtime::time::millis("due_time", &attempt.due_time.unwrap()).unwrap();
            reviews += i64::from(prior.is_some());
            if let Some((_, scoring)) = fit_at.as_mut().filter(|(at, _)| at.contains(&reviews)) {
                wait_for_fit(scoring, &learner.id, reviews).await;
            }
            let card = truth.review(prior.as_ref(), rating, now, 0.9, None).unwrap().card;
            match due {
                Some(k) => studied[k] = (item_id, due_ms, card),
                None => {
                    studied.push((item_id, due_ms, card));
                    new_today += 1;
                }
            }
            attempts += 1;
            now += 20_000;
        }
    }
    attempts
}

/// Waits (bounded, 60 s) until scoring has fitted the learner's parameters on at least
/// `reviews` reviews; the fit.
async fn wait_for_fit(scoring: &mut ScoringServiceClient<Channel>, learner_id: &str, reviews: i64) -> ParameterFit {
    let request = || GetLearnerModelRequest { learner_id: learner_id.into() };
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let m = scoring.get_learner_model(request()).await.unwrap().into_inner().model.unwrap();
            if let Some(fit) = m.last_fit.filter(|f| f.reviews >= reviews) {
                return fit;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a background fit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_with_a_long_history_gets_memory_parameters_of_their_own() {
    let (running, mut suite) = Suite::start().await;
    // Forgets much faster than the defaults assume: a third of the initial stability, and
    // stability grows less with each review.
    let mut w = fsrs::DEFAULT_PARAMETERS.to_vec();
    for s in &mut w[..4] {
        *s *= 0.3;
    }
    w[8] *= 0.6;
    let truth = MemoryModel::with_parameters(&w).unwrap();
    let mut learner = Simulated::new("veteran", 3.0, 21);
    suite.enrol(&learner).await;
    suite.enrol(&Simulated::new("novice", 0.0, 22)).await;

    let model = |id: &str| GetLearnerModelRequest { learner_id: id.into() };
    let before = suite.scoring.get_learner_model(model("veteran")).await.unwrap().into_inner().model.unwrap();
    assert!(!before.parameters_fitted && before.last_fit.is_none());
    assert_eq!(before.fsrs_parameters.len(), 21);

    // At 400 reviews scoring fits in the background by itself, and again at half as many more.
    let fit_at = Some((&[400, 600][..], &mut suite.scoring));
    let attempts = study_history(&mut suite.scheduler, fit_at, &mut learner, &truth, 150, 4).await;
    assert!(attempts > 500, "{attempts} attempts");
    let background = wait_for_fit(&mut suite.scoring, "veteran", 600).await;
    assert!(background.reviews >= 600, "{background:?}");

    let fit = suite
        .scoring
        .fit_learner_parameters(FitLearnerParametersRequest { learner_id: "veteran".into() })
        .await
        .unwrap()
        .into_inner()
        .fit
        .unwrap();
    assert!(fit.kept, "{fit:?}");
    assert!(fit.fitted_log_loss < fit.default_log_loss && fit.holdout_reviews > 50, "{fit:?}");
    let after = suite.scoring.get_learner_model(model("veteran")).await.unwrap().into_inner().model.unwrap();
    assert!(after.parameters_fitted);
    assert_eq!(after.fsrs_parameters, fit.parameters);
    assert_eq!(after.last_fit.unwrap().reviews, fit.reviews);

    // The learner's own parameters now predict their recall; another learner keeps the defaults.
    let query = |learner: &str| PredictRecallRequest {
        learner_id: learner.into(),
        queries: vec![RecallQuery {
            item_id: "rung-1".into(),
            memory: Some(MemoryState { stability: 2.0, difficulty: 5.0, ..Default::default() }),
            last_review_time: Some(alp_runtime::time::timestamp(0)),
        }],
        at: Some(alp_runtime::time::timestamp(10 * DAY_MS)),
    };
    let recall = |r: alp_proto::scoring::v1::PredictRecallResponse| r.predictions[0].recall;
    let own = recall(suite.scoring.predict_recall(query("veteran")).await.unwrap().into_inner());
    let default = recall(suite.scoring.predict_recall(query("novice")).await.unwrap().into_inner());
    assert!((own - default).abs() > 1e-3, "own {own}, default {default}");

    let few = suite.scoring.fit_learner_parameters(FitLearnerParametersRequest { learner_id: "novice".into() }).await;
    let status = few.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("0 reviews"), "{}", status.message());
    let bad = suite.scoring.fit_learner_parameters(FitLearnerParametersRequest { learner_id: String::new() }).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    running.shutdown().await;
}
