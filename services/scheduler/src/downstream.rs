//! The scheduler's view of the other services: items from content, learners from user, the
//! models from scoring, and the progress call to user (used by the outbox). Each method is a typed
//! call stack (see `alp_runtime::client`); single item and learner lookups go through batchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::content_service_server::SERVICE_NAME as CONTENT_SERVICE;
use alp_proto::content::v1::{
    BatchGetItemsRequest, BatchGetItemsResponse, Item, ListItemsRequest, ListItemsResponse, ListSkillsRequest,
    ListSkillsResponse,
};
use alp_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use alp_proto::scoring::v1::scoring_service_server::SERVICE_NAME as SCORING_SERVICE;
use alp_proto::scoring::v1::{
    ApplyAttemptsRequest, ApplyAttemptsResponse, EvaluateAttemptRequest, EvaluateAttemptResponse,
    ScoreCandidatesResponse, SkillPrerequisites,
};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::user_service_server::SERVICE_NAME as USER_SERVICE;
use alp_proto::user::v1::{BatchGetLearnersRequest, Learner, RecordProgressRequest, RecordProgressResponse};
use alp_runtime::batch::{BatchConfig, BatchError, Batcher};
use alp_runtime::cache::{Cache, CacheSettings};
use alp_runtime::client::{AddressError, CallError, Downstream, DownstreamConfig, Method, Rpc, deadline_for};
use alp_runtime::redis::Redis;
use alp_runtime::send;
use tonic::Code;

use crate::cache::{ITEM_COPIES, UNFOLLOWED_ITEM_COPIES};
use crate::catalogue::Catalogue;
use crate::error::SchedulerError;
use crate::outbox::{Consumer, Deliver};
use crate::score_request::{self, CatalogueItem, ScoreRequest, SkillGraph};

const DEFAULT_RETENTION: f64 = 0.90;

/// Item lookups wait at most this long for company; SubmitAttempt's whole budget is tens of ms.
const ITEM_BATCH: BatchConfig =
    BatchConfig { max_size: 200, max_delay: Duration::from_millis(2), queue: 10_000, max_in_flight: 8 };
/// The most ids BatchGetItems takes.
const ITEMS_PER_CALL: usize = 500;

/// Profiles this replica has no copy of are asked for together. A restarted scheduler meets
/// thousands of learners a second; one at a time, each cost the user service a cache miss, a
/// database read and a cache write, and queued there (2,000 NextItems/s on fresh services:
/// the scheduler waited p90 100 ms, the handler's p99 250 ms). Those missing while a batch is
/// out form the next, so a quiet scheduler adds no wait.
const LEARNER_BATCH: BatchConfig =
    BatchConfig { max_size: 200, max_delay: Duration::ZERO, queue: 10_000, max_in_flight: 2 };

/// The user service's cache of profiles, which this replica mirrors: its name and the user
/// service's Redis prefix make the channel its replicas announce changes on (`LEARNER_CACHE`
/// and `REDIS_PREFIX` in alp-user; the suite's cache test fails if they part). Changes are
/// announced, so the TTL only bounds a copy whose announcement was lost without a
/// disconnection; ten minutes keep a learner who practises within them off the user service.
const LEARNER_COPIES: CacheSettings =
    CacheSettings { name: "learners", l1_capacity: 100_000, l1_ttl: Duration::from_secs(600), l2_ttl: Duration::ZERO };
const USER_REDIS_PREFIX: &str = "alp:user";
/// Content announces under this prefix the items it changed (`items`, its item cache's name),
/// a course whose items changed (`course_items`, its cache of course item lists) and one whose
/// skills changed (`skills`). The suite's cache test fails if the names part.
const CONTENT_REDIS_PREFIX: &str = "alp:content";

/// Where each downstream is and how to call it.
#[derive(Debug, Clone)]
pub struct DownstreamConfigs {
    pub content: DownstreamConfig,
    pub scoring: DownstreamConfig,
    pub user: DownstreamConfig,
}

/// The typed calls the scheduler makes.
#[derive(Debug, Clone)]
pub struct Downstreams {
    pub content: Downstream,
    pub scoring: Downstream,
    pub user: Downstream,
    batch_get_items: Rpc<BatchGetItemsRequest, BatchGetItemsResponse>,
    list_items: Rpc<ListItemsRequest, ListItemsResponse>,
    list_skills: Rpc<ListSkillsRequest, ListSkillsResponse>,
    pub score_candidates: Rpc<ScoreRequest, ScoreCandidatesResponse>,
    pub evaluate_attempt: Rpc<EvaluateAttemptRequest, EvaluateAttemptResponse>,
    apply_attempts: Rpc<ApplyAttemptsRequest, ApplyAttemptsResponse>,
    record_progress: Rpc<RecordProgressRequest, RecordProgressResponse>,
    items: Batcher<String, Item, CallError>,
    profiles: Batcher<String, Learner, CallError>,
    /// SubmitAttempt's items, as long as the catalogue keeps a course's (see `cache.rs`).
    item_copies: Cache<Item>,
    /// Every NextItems needs the whole course (a thousand items is a few hundred kB): listing it
    /// per call cost more than all the rest of NextItems together.
    course_items: Catalogue<CourseItems>,
    skill_graphs: Catalogue<SkillGraph>,
    /// Profiles as the user service last gave them, dropped when it announces a change: every
    /// NextItems and SubmitAttempt needs one, and asking cost the user service more CPU than
    /// anything else it does. None without Redis, which carries the announcements.
    learner_copies: Option<Cache<Learner>>,
    learners: Arc<Mutex<HashMap<String, Learner>>>,
    item_timeout: Duration,
    learner_timeout: Duration,
}

/// A learner's profile, or the fact that the user service could not say.
#[derive(Debug, Clone)]
pub enum LearnerProfile {
    Known(Learner),
    /// This replica's copy: current but for an announcement still in flight, such as the
    /// enrolment the caller made a moment ago.
    Copied(Learner),
    /// The user service is unavailable and the learner was never seen: answer with defaults.
    Unknown,
}

impl Downstreams {
    pub async fn connect(configs: DownstreamConfigs, redis: Option<&Redis>) -> Result<Self, AddressError> {
        let (item_timeout, learner_timeout) = (configs.content.timeout, configs.user.timeout);
        let content = Downstream::connect("content", CONTENT_SERVICE, configs.content).await?;
        let scoring = Downstream::connect("scoring", SCORING_SERVICE, configs.scoring).await?;
        let user = Downstream::connect("user", USER_SERVICE, configs.user).await?;
        let batch_get_items =
            content.rpc(Method::idempotent("BatchGetItems"), send!(ContentServiceClient::batch_get_items));
        let record_progress = user.rpc(Method::idempotent("RecordProgress"), send!(UserServiceClient::record_progress));
        let items = {
            let rpc = batch_get_items.clone();
            Batcher::new("content.items", ITEM_BATCH, move |ids: Vec<String>| {
                let rpc = rpc.clone();
                async move {
                    let found = rpc.call(BatchGetItemsRequest { item_ids: ids }).await?;
                    Ok(found.items.into_iter().map(|item| (item.item_id.clone(), item)).collect())
                }
            })
        };
        let profiles = {
            let rpc = user.rpc(Method::idempotent("BatchGetLearners"), send!(UserServiceClient::batch_get_learners));
            Batcher::new("user.learners", LEARNER_BATCH, move |ids: Vec<String>| {
                let rpc = rpc.clone();
                async move {
                    let found = rpc.call(BatchGetLearnersRequest { learner_ids: ids }).await?;
                    Ok(found.learners.into_iter().map(|learner| (learner.learner_id.clone(), learner)).collect())
                }
            })
        };
        Ok(Self {
            profiles,
            list_items: content.rpc(Method::idempotent("ListItems"), send!(ContentServiceClient::list_items)),
            list_skills: content.rpc(Method::idempotent("ListSkills"), send!(ContentServiceClient::list_skills)),
            evaluate_attempt: scoring
                .rpc(Method::idempotent("EvaluateAttempt"), send!(ScoringServiceClient::evaluate_attempt)),
            // Idempotent by the attempt id: scoring applies each attempt once.
            apply_attempts: scoring
                .rpc(Method::idempotent("ApplyAttempts"), send!(ScoringServiceClient::apply_attempts)),
            score_candidates: scoring.rpc(Method::idempotent("ScoreCandidates"), score_request::send),
            batch_get_items,
            record_progress,
            items,
            item_copies: Cache::mirror(ITEM_COPIES, redis, CONTENT_REDIS_PREFIX, "items")
                .unwrap_or_else(|| Cache::new(UNFOLLOWED_ITEM_COPIES, None)),
            course_items: Catalogue::following("course_items", redis, CONTENT_REDIS_PREFIX, "course_items"),
            skill_graphs: Catalogue::following("skill_graphs", redis, CONTENT_REDIS_PREFIX, "skills"),
            content,
            scoring,
            user,
            learner_copies: Cache::mirror(LEARNER_COPIES, redis, USER_REDIS_PREFIX, "learners"),
            learners: Arc::default(),
            item_timeout,
            learner_timeout,
        })
    }

    /// How the consumer's outbox rows reach it.
    pub fn deliver_to(&self, consumer: Consumer) -> Deliver {
        match consumer {
            Consumer::Scoring => deliver(self.apply_attempts.clone(), |attempts| ApplyAttemptsRequest { attempts }),
            Consumer::User => deliver(self.record_progress.clone(), |events| RecordProgressRequest { events }),
        }
    }

    /// The learner from the user service; when it is unavailable, the last profile seen (stale
    /// if error), so an outage of the user service does not stop practice.
    pub async fn learner(&self, learner_id: &str) -> Result<LearnerProfile, SchedulerError> {
        if let Some(copies) = &self.learner_copies
            && let Some(learner) = copies.get(learner_id).await
        {
            return Ok(LearnerProfile::Copied(learner));
        }
        self.fetch_learner(learner_id).await
    }

    /// The learner's desired retention once they are known to be enrolled in `course_id`. A copy
    /// without that enrolment is checked with the user service: it may be only a moment old.
    pub async fn retention_in(
        &self,
        profile: LearnerProfile,
        learner_id: &str,
        course_id: &str,
    ) -> Result<f64, SchedulerError> {
        let profile = match profile {
            LearnerProfile::Copied(learner) if !enrolled(&learner, course_id) => self.fetch_learner(learner_id).await?,
            profile => profile,
        };
        retention_if_enrolled(profile, learner_id, course_id)
    }

    async fn fetch_learner(&self, learner_id: &str) -> Result<LearnerProfile, SchedulerError> {
        let lookup = self.profiles.load(learner_id.to_owned());
        let error = match tokio::time::timeout_at(deadline_for(self.learner_timeout), lookup).await {
            Ok(Ok(Some(learner))) => {
                if let Some(copies) = &self.learner_copies {
                    copies.put(learner_id, learner.clone()).await;
                }
                if let Ok(mut cache) = self.learners.lock() {
                    if cache.len() > 100_000 {
                        cache.clear();
                    }
                    cache.insert(learner_id.to_owned(), learner.clone());
                }
                return Ok(LearnerProfile::Known(learner));
            }
            Ok(Ok(None)) => return Err(SchedulerError::not_found("learner", learner_id)),
            Ok(Err(BatchError::Failed(error))) if !error.is_outage() => {
                return Err(SchedulerError::Downstream(error));
            }
            Ok(Err(BatchError::Failed(error))) => error.to_string(),
            Ok(Err(BatchError::Lost(batcher))) => format!("learner lookup lost by batcher {batcher}"),
            Err(_) => "BatchGetLearners exceeded its deadline".to_owned(),
        };
        let cached = self.learners.lock().ok().and_then(|c| c.get(learner_id).cloned());
        tracing::warn!(learner_id, %error, cached = cached.is_some(), "user service unavailable; using the last known profile");
        Ok(cached.map_or(LearnerProfile::Unknown, LearnerProfile::Known))
    }

    /// One item: this replica's copy, else looked up together with the other calls' items of
    /// the moment.
    pub async fn item(&self, item_id: &str) -> Result<Item, SchedulerError> {
        if let Some(item) = self.item_copies.get(item_id).await {
            return Ok(item);
        }
        let lookup = self.items.load(item_id.to_owned());
        match tokio::time::timeout_at(deadline_for(self.item_timeout), lookup).await {
            Ok(Ok(Some(item))) => {
                self.item_copies.put(item_id, item.clone()).await;
                Ok(item)
            }
            Ok(Ok(None)) => Err(SchedulerError::not_found("item", item_id)),
            Ok(Err(BatchError::Failed(error))) => Err(SchedulerError::Downstream(error)),
            Ok(Err(BatchError::Lost(batcher))) => {
                Err(SchedulerError::Unavailable(format!("item lookup lost by batcher {batcher}")))
            }
            Err(_) => Err(SchedulerError::Downstream(CallError::DeadlineExceeded {
                downstream: self.content.name().into(),
                method: "BatchGetItems",
            })),
        }
    }

    /// The course's items in service, from the scheduler's copy.
    pub async fn course_items(&self, course_id: &str) -> Result<Arc<CourseItems>, SchedulerError> {
        let listing = || {
            let (this, course_id) = (self.clone(), course_id.to_owned());
            async move { this.list_course_items(&course_id).await.map(CourseItems::new) }
        };
        self.course_items.get(course_id, listing).await.map_err(|error| course_error(course_id, (*error).clone()))
    }

    /// Items by id: from the course's copy where it has them, the rest (retired, or newer than
    /// the copy) from content; missing ones are left out.
    pub async fn items_of(
        &self,
        course: &CourseItems,
        item_ids: &[&str],
    ) -> Result<Vec<Arc<CatalogueItem>>, SchedulerError> {
        let mut items = Vec::with_capacity(item_ids.len());
        let mut elsewhere = Vec::new();
        for id in item_ids {
            match course.get(id) {
                Some(item) => items.push(item.clone()),
                None => elsewhere.push((*id).to_owned()),
            }
        }
        for chunk in elsewhere.chunks(ITEMS_PER_CALL) {
            let response = self.batch_get_items.call(BatchGetItemsRequest { item_ids: chunk.to_vec() }).await?;
            items.extend(response.items.into_iter().map(|item| Arc::new(CatalogueItem::new(item))));
        }
        Ok(items)
    }

    /// The prerequisites of every skill of a course that has any.
    pub async fn skill_graph(&self, course_id: &str) -> Result<Arc<SkillGraph>, SchedulerError> {
        let listing = || {
            let (this, course_id) = (self.clone(), course_id.to_owned());
            async move { this.list_skill_graph(&course_id).await }
        };
        let graph = self
            .skill_graphs
            .get(course_id, listing)
            .await
            .map_err(|error| course_error(course_id, (*error).clone()))?;
        Ok(graph)
    }

    async fn list_course_items(&self, course_id: &str) -> Result<Vec<Item>, CallError> {
        const MAX_PAGES: usize = 50;
        let mut items = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .list_items
                .call(ListItemsRequest {
                    course_id: course_id.to_owned(),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await?;
            items.extend(page.items);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(items)
    }

    async fn list_skill_graph(&self, course_id: &str) -> Result<SkillGraph, CallError> {
        const MAX_PAGES: usize = 10;
        let mut graph = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .list_skills
                .call(ListSkillsRequest { course_id: course_id.to_owned(), page_size: 1000, page_token })
                .await?;
            graph.extend(page.skills.into_iter().filter(|s| !s.prerequisite_skill_ids.is_empty()).map(|s| {
                SkillPrerequisites { skill_id: s.skill_id, prerequisite_skill_ids: s.prerequisite_skill_ids }
            }));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(SkillGraph::new(&graph))
    }
}

/// The learner's desired retention once they are known to be enrolled in `course_id`.
fn retention_if_enrolled(profile: LearnerProfile, learner_id: &str, course_id: &str) -> Result<f64, SchedulerError> {
    match profile {
        LearnerProfile::Known(learner) | LearnerProfile::Copied(learner) => {
            if !enrolled(&learner, course_id) {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "learner {learner_id:?} is not enrolled in course {course_id:?}; call EnrolLearner first"
                )));
            }
            Ok(if learner.desired_retention > 0.0 { learner.desired_retention } else { DEFAULT_RETENTION })
        }
        LearnerProfile::Unknown => Ok(DEFAULT_RETENTION),
    }
}

fn enrolled(learner: &Learner, course_id: &str) -> bool {
    learner.enrolments.iter().any(|e| e.course_id == course_id)
}

pub fn choice_count(item: &Item) -> u32 {
    u32::try_from(item.choices.len()).unwrap_or(0)
}

/// Decodes outbox rows of message `M` and sends them in one `rpc` call.
fn deliver<M, Req, Resp>(rpc: Rpc<Req, Resp>, request: fn(Vec<M>) -> Req) -> Deliver
where
    M: prost::Message + Default + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    Arc::new(move |rows| {
        let rpc = rpc.clone();
        Box::pin(async move {
            let messages = decode_rows::<M>(&rows)?;
            rpc.call(request(messages)).await.map(drop).map_err(|e| e.to_string())
        })
    })
}

/// Outbox rows as the messages they encode; the scheduler wrote them, so a row that does not
/// decode is a defect to report, not to skip.
fn decode_rows<M: prost::Message + Default>(rows: &[Vec<u8>]) -> Result<Vec<M>, String> {
    rows.iter()
        .map(|row| M::decode(row.as_slice()).map_err(|e| format!("an outbox row does not decode: {e}")))
        .collect()
}

/// A course's items in service, in course order, shared by the calls of the moment.
#[derive(Debug, Default)]
pub struct CourseItems {
    items: Vec<Arc<CatalogueItem>>,
    by_id: HashMap<String, usize>,
}

impl CourseItems {
    fn new(items: Vec<Item>) -> Self {
        let by_id = items.iter().enumerate().map(|(i, item)| (item.item_id.clone(), i)).collect();
        Self { items: items.into_iter().map(|item| Arc::new(CatalogueItem::new(item))).collect(), by_id }
    }

    pub fn get(&self, item_id: &str) -> Option<&Arc<CatalogueItem>> {
        self.by_id.get(item_id).map(|i| &self.items[*i])
    }

    /// The first `want` items not in `seen`.
    pub fn unseen(&self, seen: &foldhash::HashSet<&str>, want: usize) -> Vec<Arc<CatalogueItem>> {
        self.items.iter().filter(|item| !seen.contains(item.item_id.as_str())).take(want).cloned().collect()
    }
}

/// A failed call about a course: NOT_FOUND is the caller's unknown course, anything else is
/// content's trouble.
fn course_error(course_id: &str, error: CallError) -> SchedulerError {
    if error.code() == Code::NotFound {
        SchedulerError::not_found("course", course_id)
    } else {
        SchedulerError::Downstream(error)
    }
}
