//! What the generator sends: the request mix by persona and activity, each request built from the
//! data set's spec, and each response checked for what it must contain (an OK that says nothing
//! useful is an error here too).

use std::fmt;

use alp_proto::common::v1::Mode;
use alp_proto::content::v1::{GetItemRequest, GetItemResponse, SearchItemsRequest, SearchItemsResponse};
use alp_proto::scheduler::v1::{
    NextItemsRequest, NextItemsResponse, SubmitAttemptRequest, SubmitAttemptResponse, submit_attempt_request,
};
use alp_proto::user::v1::{GetProgressRequest, GetProgressResponse};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::grpc::LoadClients;
use crate::dataset::spec::{DatasetSpec, LEARNER_ZIPF_EXPONENT, Zipf, search_word};

/// What a run sends: one endpoint alone, or the mixed workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// Personas learner 50 %, power user 30 %, casual user 15 %, admin 5 %; learners practise
    /// 70 %, review 20 % and take mock tests 10 % of the time.
    Mix,
    NextItems,
    SubmitAttempt,
    GetProgress,
    GetItem,
    SearchItems,
}

impl Endpoint {
    /// The p99 a step must stay under to count towards SLO capacity.
    pub fn default_slo_ms(self) -> f64 {
        match self {
            Endpoint::NextItems => 5.0,
            Endpoint::GetProgress | Endpoint::GetItem => 3.0,
            Endpoint::SearchItems => 20.0,
            Endpoint::SubmitAttempt | Endpoint::Mix => 10.0,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Endpoint::Mix => "mix",
            Endpoint::NextItems => "next-items",
            Endpoint::SubmitAttempt => "submit-attempt",
            Endpoint::GetProgress => "get-progress",
            Endpoint::GetItem => "get-item",
            Endpoint::SearchItems => "search-items",
        };
        f.write_str(name)
    }
}

/// The kinds of request, for per-operation latency in a mixed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum OpKind {
    NextItemsPractice,
    NextItemsReview,
    NextItemsMockTest,
    SubmitAttempt,
    GetProgress,
    GetItem,
    SearchItems,
}

impl OpKind {
    pub const ALL: [OpKind; 7] = [
        OpKind::NextItemsPractice,
        OpKind::NextItemsReview,
        OpKind::NextItemsMockTest,
        OpKind::SubmitAttempt,
        OpKind::GetProgress,
        OpKind::GetItem,
        OpKind::SearchItems,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::NextItemsPractice => "NextItems(practice)",
            OpKind::NextItemsReview => "NextItems(review)",
            OpKind::NextItemsMockTest => "NextItems(mock test)",
            OpKind::SubmitAttempt => "SubmitAttempt",
            OpKind::GetProgress => "GetProgress",
            OpKind::GetItem => "GetItem",
            OpKind::SearchItems => "SearchItems",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub enum Op {
    NextItems { request: NextItemsRequest, course_prefix: String },
    SubmitAttempt(SubmitAttemptRequest),
    GetProgress(GetProgressRequest),
    GetItem(GetItemRequest),
    SearchItems(SearchItemsRequest),
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::NextItems { request, .. } => match Mode::try_from(request.mode) {
                Ok(Mode::Review) => OpKind::NextItemsReview,
                Ok(Mode::MockTest) => OpKind::NextItemsMockTest,
                _ => OpKind::NextItemsPractice,
            },
            Op::SubmitAttempt(_) => OpKind::SubmitAttempt,
            Op::GetProgress(_) => OpKind::GetProgress,
            Op::GetItem(_) => OpKind::GetItem,
            Op::SearchItems(_) => OpKind::SearchItems,
        }
    }

    /// The gRPC method's path (the tests hold these to the generated service names).
    pub fn path(&self) -> &'static str {
        match self {
            Op::NextItems { .. } => "/alp.scheduler.v1.SchedulerService/NextItems",
            Op::SubmitAttempt(_) => "/alp.scheduler.v1.SchedulerService/SubmitAttempt",
            Op::GetProgress(_) => "/alp.user.v1.UserService/GetProgress",
            Op::GetItem(_) => "/alp.content.v1.ContentService/GetItem",
            Op::SearchItems(_) => "/alp.content.v1.ContentService/SearchItems",
        }
    }

    /// The gRPC method's path and the request as one length-prefixed gRPC message, for a
    /// generator that replays a fixed body (h2load's `-d`).
    pub fn framed(&self) -> (String, Vec<u8>) {
        let message = match self {
            Op::NextItems { request, .. } => request.encode_to_vec(),
            Op::SubmitAttempt(r) => r.encode_to_vec(),
            Op::GetProgress(r) => r.encode_to_vec(),
            Op::GetItem(r) => r.encode_to_vec(),
            Op::SearchItems(r) => r.encode_to_vec(),
        };
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0); // not compressed
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(&message);
        (self.path().to_owned(), framed)
    }

    /// The request in a line, for the example kept of each kind of failure.
    fn describe(&self) -> String {
        match self {
            Op::NextItems { request, .. } => format!(
                "{} learner {} course {} {}",
                self.kind().name(),
                request.learner_id,
                request.course_id,
                request.mock_test_id
            ),
            Op::SubmitAttempt(r) => {
                format!("SubmitAttempt {} learner {} item {} {}", r.attempt_id, r.learner_id, r.item_id, r.mock_test_id)
            }
            Op::GetProgress(r) => format!("GetProgress learner {}", r.learner_id),
            Op::GetItem(r) => format!("GetItem {}", r.item_id),
            Op::SearchItems(r) => format!("SearchItems {:?} course {:?}", r.query, r.course_id),
        }
    }

    /// Sends the request and checks the answer: Ok, or what went wrong.
    pub async fn send(self, clients: &LoadClients, timeout: std::time::Duration) -> Result<(), Failure> {
        fn code(status: tonic::Status) -> Failure {
            let kind = match status.code() {
                // Transport failures: say which.
                tonic::Code::Unknown | tonic::Code::Internal => {
                    let message: String = status.message().chars().take(60).collect();
                    format!("{:?}: {message}", status.code())
                }
                code => format!("{code:?}"),
            };
            Failure { kind, detail: status.message().to_owned() }
        }
        let path = self.path();
        let invalid = |kind: &str| Failure::invalid(kind, &self.describe());
        match &self {
            Op::NextItems { request, course_prefix } => {
                let response: NextItemsResponse =
                    clients.scheduler.unary(path, request, timeout).await.map_err(code)?;
                if response.degraded {
                    return Err(invalid("invalid: degraded"));
                }
                // Review answers only what is due, which may be nothing.
                if response.items.is_empty() && request.mode != Mode::Review as i32 {
                    return Err(invalid("invalid: no items"));
                }
                if response.items.iter().any(|item| !item.item_id.starts_with(course_prefix.as_str())) {
                    return Err(invalid("invalid: item of another course"));
                }
                Ok(())
            }
            Op::SubmitAttempt(request) => {
                let response: SubmitAttemptResponse =
                    clients.scheduler.unary(path, request, timeout).await.map_err(code)?;
                match response.attempt {
                    Some(attempt) if attempt.attempt_id == request.attempt_id && !response.duplicate => Ok(()),
                    Some(_) if response.duplicate => Err(invalid("invalid: new attempt answered as duplicate")),
                    _ => Err(invalid("invalid: another attempt")),
                }
            }
            Op::GetProgress(request) => {
                let response: GetProgressResponse = clients.user.unary(path, request, timeout).await.map_err(code)?;
                if response.learner_id != request.learner_id {
                    return Err(invalid("invalid: another learner's progress"));
                }
                Ok(())
            }
            Op::GetItem(request) => {
                let response: GetItemResponse = clients.content.unary(path, request, timeout).await.map_err(code)?;
                match response.item {
                    Some(item) if item.item_id == request.item_id => Ok(()),
                    _ => Err(invalid("invalid: another item")),
                }
            }
            Op::SearchItems(request) => {
                let response: SearchItemsResponse =
                    clients.content.unary(path, request, timeout).await.map_err(code)?;
                if response.hits.len() > request.page_size as usize {
                    return Err(invalid("invalid: more hits than the page size"));
                }
                let foreign = response
                    .hits
                    .iter()
                    .filter_map(|hit| hit.item.as_ref())
                    .any(|item| !request.course_id.is_empty() && item.course_id != request.course_id);
                if foreign {
                    return Err(invalid("invalid: hit outside the course filter"));
                }
                Ok(())
            }
        }
    }
}

/// Why a request did not count as a success.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The gRPC code's name, or `invalid: …` for an OK answer without what it must contain.
    pub kind: String,
    /// The server's message, or the request that got the invalid answer.
    pub detail: String,
}

impl Failure {
    fn invalid(kind: &str, request: &str) -> Self {
        Self { kind: kind.to_owned(), detail: request.to_owned() }
    }
}

/// Who sends a request in the mixed workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    Learner,
    PowerUser,
    CasualUser,
    Admin,
}

/// Builds the request stream: deterministic for a seed and data set.
#[derive(Debug)]
pub struct Workload {
    spec: DatasetSpec,
    endpoint: Endpoint,
    rng: StdRng,
    run: String,
    all_learners: Zipf,
    power: Zipf,
    regular: Zipf,
    courses: Zipf,
    items: Vec<Zipf>,
    sequence: u64,
}

impl Workload {
    /// `run` makes this run's attempt and mock-test ids unique.
    pub fn new(spec: DatasetSpec, endpoint: Endpoint, seed: u64, run: String) -> Self {
        // Persona boundaries follow DatasetSpec::persona: the first tenth power, the last three
        // tenths casual.
        let power_end = (spec.learners / 10).max(1);
        let regular_end = (spec.learners * 7 / 10).max(power_end + 1);
        let items = (0..spec.courses).map(|c| Zipf::new(spec.items_in(c) as usize, 1.0)).collect();
        Self {
            all_learners: Zipf::new(spec.learners as usize, LEARNER_ZIPF_EXPONENT),
            power: Zipf::new(power_end as usize, LEARNER_ZIPF_EXPONENT),
            regular: Zipf::new((regular_end - power_end) as usize, LEARNER_ZIPF_EXPONENT),
            courses: spec.course_popularity(),
            items,
            rng: StdRng::seed_from_u64(seed),
            endpoint,
            run,
            spec,
            sequence: 0,
        }
    }

    pub fn next_op(&mut self) -> Op {
        self.sequence += 1;
        match self.endpoint {
            Endpoint::NextItems => {
                let learner = self.all_learners.sample(&mut self.rng) as u32;
                self.next_items(learner, Mode::Practice, String::new())
            }
            Endpoint::SubmitAttempt => {
                let learner = self.all_learners.sample(&mut self.rng) as u32;
                self.submit(learner, None)
            }
            Endpoint::GetProgress => {
                let learner = self.all_learners.sample(&mut self.rng) as u32;
                self.progress(learner)
            }
            Endpoint::GetItem => self.get_item(),
            Endpoint::SearchItems => self.search(),
            Endpoint::Mix => self.mixed(),
        }
    }

    fn mixed(&mut self) -> Op {
        let sender = match self.rng.random::<f64>() {
            x if x < 0.50 => Sender::Learner,
            x if x < 0.80 => Sender::PowerUser,
            x if x < 0.95 => Sender::CasualUser,
            _ => Sender::Admin,
        };
        let spec = &self.spec;
        let learner = match sender {
            Sender::PowerUser => self.power.sample(&mut self.rng) as u32,
            Sender::Learner => (spec.learners / 10).max(1) + self.regular.sample(&mut self.rng) as u32,
            Sender::CasualUser => {
                let start = (spec.learners * 7 / 10).min(spec.learners - 1);
                self.rng.random_range(start..spec.learners)
            }
            Sender::Admin => {
                return match self.rng.random::<f64>() {
                    x if x < 0.5 => self.search(),
                    x if x < 0.8 => self.get_item(),
                    _ => {
                        let learner = self.rng.random_range(0..self.spec.learners);
                        self.progress(learner)
                    }
                };
            }
        }
        .min(spec.learners - 1);
        let answer = self.rng.random_bool(0.5);
        match self.rng.random::<f64>() {
            // Practice: ask for items, answer one.
            x if x < 0.7 => {
                if answer {
                    self.submit(learner, None)
                } else {
                    self.next_items(learner, Mode::Practice, String::new())
                }
            }
            // Review: due items, progress, an answer.
            x if x < 0.9 => match self.rng.random::<f64>() {
                y if y < 0.5 => self.next_items(learner, Mode::Review, String::new()),
                y if y < 0.75 => self.progress(learner),
                _ => self.submit(learner, None),
            },
            // Mock test: one test per learner and run.
            _ => {
                let test = format!("mock-{}-{learner}", self.run);
                if answer { self.submit(learner, Some(test)) } else { self.next_items(learner, Mode::MockTest, test) }
            }
        }
    }

    /// A course the learner is enrolled in.
    fn course_of(&mut self, learner: u32) -> u32 {
        let enrolled = self.spec.enrolments(learner, &self.courses);
        if enrolled.is_empty() {
            return 0;
        }
        enrolled[self.rng.random_range(0..enrolled.len())]
    }

    fn next_items(&mut self, learner: u32, mode: Mode, mock_test_id: String) -> Op {
        let course = self.course_of(learner);
        Op::NextItems {
            request: NextItemsRequest {
                learner_id: self.spec.learner_id(learner),
                course_id: self.spec.course_id(course),
                count: 5,
                mode: mode as i32,
                mock_test_id,
            },
            course_prefix: format!("c{course:03}-"),
        }
    }

    fn submit(&mut self, learner: u32, mock_test_id: Option<String>) -> Op {
        let course = self.course_of(learner);
        let item = self.items[course as usize].sample(&mut self.rng) as u32;
        let response_ms = self.rng.random_range(2_000..30_000_i64);
        Op::SubmitAttempt(SubmitAttemptRequest {
            attempt_id: format!("ld-{}-{}", self.run, self.sequence),
            learner_id: self.spec.learner_id(learner),
            item_id: self.spec.item_id(course, item),
            outcome: Some(submit_attempt_request::Outcome::Correct(self.rng.random_bool(0.75))),
            response_time: Some(prost_types::Duration {
                seconds: response_ms / 1000,
                nanos: (response_ms % 1000) as i32 * 1_000_000,
            }),
            answer_time: None,
            mock_test_id: mock_test_id.unwrap_or_default(),
        })
    }

    fn progress(&mut self, learner: u32) -> Op {
        Op::GetProgress(GetProgressRequest { learner_id: self.spec.learner_id(learner), course_id: String::new() })
    }

    fn get_item(&mut self) -> Op {
        let course = self.courses.sample(&mut self.rng) as u32;
        let item = self.items[course as usize].sample(&mut self.rng) as u32;
        Op::GetItem(GetItemRequest { item_id: self.spec.item_id(course, item) })
    }

    fn search(&mut self) -> Op {
        let course_id = if self.rng.random_bool(0.5) {
            self.spec.course_id(self.courses.sample(&mut self.rng) as u32)
        } else {
            String::new()
        };
        Op::SearchItems(SearchItemsRequest {
            query: search_word(&mut self.rng),
            course_id,
            page_size: 20,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn paths_name_the_generated_services() {
        use alp_proto::content::v1::content_service_server::SERVICE_NAME as CONTENT;
        use alp_proto::scheduler::v1::scheduler_service_server::SERVICE_NAME as SCHEDULER;
        use alp_proto::user::v1::user_service_server::SERVICE_NAME as USER;
        let ops = [
            (Op::NextItems { request: Default::default(), course_prefix: String::new() }, SCHEDULER, "NextItems"),
            (Op::SubmitAttempt(Default::default()), SCHEDULER, "SubmitAttempt"),
            (Op::GetProgress(Default::default()), USER, "GetProgress"),
            (Op::GetItem(Default::default()), CONTENT, "GetItem"),
            (Op::SearchItems(Default::default()), CONTENT, "SearchItems"),
        ];
        for (op, service, method) in ops {
            assert_eq!(op.path(), format!("/{service}/{method}"));
        }
    }

    #[test]
    fn the_mix_follows_the_plan() {
        let mut workload = Workload::new(DatasetSpec::tiny(), Endpoint::Mix, 1, "t".to_owned());
        let mut counts: HashMap<OpKind, u32> = HashMap::new();
        let n = 100_000;
        for _ in 0..n {
            *counts.entry(workload.next_op().kind()).or_default() += 1;
        }
        let share = |kind| f64::from(counts.get(&kind).copied().unwrap_or(0)) / f64::from(n);
        // Learners (95 %): practice 70 % (half NextItems), review 20 %, mock tests 10 %.
        let practice = share(OpKind::NextItemsPractice);
        assert!((0.31..0.35).contains(&practice), "{practice}");
        let mock = share(OpKind::NextItemsMockTest);
        assert!((0.04..0.055).contains(&mock), "{mock}");
        // Admins (5 %): half of their requests are searches.
        let search = share(OpKind::SearchItems);
        assert!((0.02..0.03).contains(&search), "{search}");
    }

    #[test]
    fn requests_name_enrolled_courses_and_real_items() {
        let spec = DatasetSpec::tiny();
        let courses = spec.course_popularity();
        let mut workload = Workload::new(spec.clone(), Endpoint::Mix, 2, "t".to_owned());
        for _ in 0..2_000 {
            match workload.next_op() {
                Op::NextItems { request, .. } => {
                    let learner: u32 = request.learner_id["learner-".len()..].parse().unwrap();
                    let enrolled: Vec<String> =
                        spec.enrolments(learner, &courses).into_iter().map(|c| spec.course_id(c)).collect();
                    assert!(enrolled.contains(&request.course_id), "{request:?} not in {enrolled:?}");
                }
                Op::SubmitAttempt(request) => {
                    let course: u32 = request.item_id[1..4].parse().unwrap();
                    let index: u32 = request.item_id[6..].parse().unwrap();
                    assert!(course < spec.courses && index < spec.items_in(course), "{}", request.item_id);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_same_seed_sends_the_same_requests() {
        let ops = |seed| {
            let mut workload = Workload::new(DatasetSpec::tiny(), Endpoint::Mix, seed, "t".to_owned());
            (0..50).map(|_| format!("{:?}", workload.next_op())).collect::<Vec<_>>()
        };
        assert_eq!(ops(3), ops(3));
        assert_ne!(ops(3), ops(4));
    }
}
