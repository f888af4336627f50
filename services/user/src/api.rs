//! The gRPC surface of the user service.

use alp_proto::content::v1::{GetCourseRequest, GetCourseResponse};
use alp_proto::user::v1::user_service_server::UserService;
use alp_proto::user::v1::*;
use std::time::Duration;

use alp_runtime::cache::{Cache, CacheSettings};
use alp_runtime::client::Rpc;
use alp_runtime::page;
use alp_runtime::redis::Redis;
use alp_runtime::validate::{id, page_size};
use tonic::{Code, Request, Response, Status};

use crate::error::UserError;
use crate::store::UserStore;
use crate::validate;

#[derive(Debug, Clone)]
pub struct UserApi {
    store: UserStore,
    get_course: Rpc<GetCourseRequest, GetCourseResponse>,
    learners: Cache<Learner>,
    progress: Cache<GetProgressResponse>,
}

/// Profiles are read on every NextItems (retention, enrolments) and change rarely.
pub const LEARNER_CACHE: CacheSettings = CacheSettings {
    name: "learners",
    l1_capacity: 100_000,
    l1_ttl: Duration::from_secs(60),
    l2_ttl: Duration::from_secs(3600),
};

/// Progress lags attempts by design (it arrives through the scheduler's outbox), so a copy a
/// few seconds old on another replica is within what callers already see.
pub const PROGRESS_CACHE: CacheSettings = CacheSettings {
    name: "progress",
    l1_capacity: 100_000,
    l1_ttl: Duration::from_secs(30),
    l2_ttl: Duration::from_secs(600),
};

impl UserApi {
    pub fn new(store: UserStore, get_course: Rpc<GetCourseRequest, GetCourseResponse>, redis: Option<Redis>) -> Self {
        Self {
            store,
            get_course,
            learners: Cache::new(LEARNER_CACHE, redis.clone()),
            progress: Cache::new(PROGRESS_CACHE, redis),
        }
    }

    async fn learner(&self, learner_id: &str) -> std::result::Result<Learner, UserError> {
        if let Some(learner) = self.learners.get(learner_id).await {
            return Ok(learner);
        }
        let learner =
            self.store.get_learner(learner_id).await?.ok_or_else(|| UserError::not_found("learner", learner_id))?;
        self.learners.put(learner_id, learner.clone()).await;
        Ok(learner)
    }

    /// The learners found among `ids` (distinct), through the same cache as [`Self::learner`]:
    /// the scheduler asks for the profiles it has no copy of in batches.
    async fn learners_of(&self, ids: &[String]) -> std::result::Result<Vec<Learner>, UserError> {
        let cached = self.learners.get_many(ids).await;
        let misses: Vec<String> =
            ids.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(id, _)| id.clone()).collect();
        let mut learners: Vec<Learner> = cached.into_iter().flatten().collect();
        if !misses.is_empty() {
            let read = self.store.get_learners(&misses).await.map_err(UserError::from)?;
            let entries: Vec<(String, Learner)> = read.iter().map(|l| (l.learner_id.clone(), l.clone())).collect();
            self.learners.put_many(&entries).await;
            learners.extend(read);
        }
        Ok(learners)
    }

    /// Progress in every course the learner is enrolled in, and whether it was read from the
    /// database rather than the cache (the caller caches it once the learner is known to exist).
    async fn all_progress(&self, learner_id: &str) -> std::result::Result<(Vec<CourseProgress>, bool), UserError> {
        if let Some(cached) = self.progress.get(learner_id).await {
            return Ok((cached.courses, false));
        }
        Ok((self.store.progress(learner_id, "").await?, true))
    }

    async fn changed(&self, learner_id: &str) {
        let key = [learner_id.to_owned()];
        self.learners.invalidate(&key).await;
        self.progress.invalidate(&key).await;
    }
}

type RpcResult<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_learner(&self, request: Request<CreateLearnerRequest>) -> RpcResult<CreateLearnerResponse> {
        let request = request.into_inner();
        let learner = validate::new_learner(request.learner.as_ref()).map_err(UserError::from)?;
        let learner = self.store.create_learner(&learner).await?;
        Ok(Response::new(CreateLearnerResponse { learner: Some(learner) }))
    }

    async fn get_learner(&self, request: Request<GetLearnerRequest>) -> RpcResult<GetLearnerResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(UserError::from)?;
        let learner = self.learner(&request.learner_id).await?;
        Ok(Response::new(GetLearnerResponse { learner: Some(learner) }))
    }

    async fn batch_get_learners(
        &self,
        request: Request<BatchGetLearnersRequest>,
    ) -> RpcResult<BatchGetLearnersResponse> {
        let request = request.into_inner();
        validate::learner_ids("learner_ids", &request.learner_ids).map_err(UserError::from)?;
        let mut unique = request.learner_ids.clone();
        unique.sort();
        unique.dedup();
        let mut learners = self.learners_of(&unique).await?;
        learners.sort_by(|a, b| a.learner_id.cmp(&b.learner_id));
        let missing_learner_ids = unique
            .into_iter()
            .filter(|id| learners.binary_search_by(|l| l.learner_id.as_str().cmp(id)).is_err())
            .collect();
        Ok(Response::new(BatchGetLearnersResponse { learners, missing_learner_ids }))
    }

    async fn update_learner(&self, request: Request<UpdateLearnerRequest>) -> RpcResult<UpdateLearnerResponse> {
        let request = request.into_inner();
        let learner = request
            .learner
            .ok_or_else(|| UserError::from(alp_runtime::FieldViolation::new("learner", "is required")))?;
        id("learner.learner_id", &learner.learner_id).map_err(UserError::from)?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let changes = validate::changes(&learner, &paths).map_err(UserError::from)?;
        let updated = self
            .store
            .update_learner(&learner.learner_id, &changes)
            .await
            .map_err(UserError::from)?
            .ok_or_else(|| UserError::not_found("learner", &learner.learner_id))?;
        self.changed(&learner.learner_id).await;
        Ok(Response::new(UpdateLearnerResponse { learner: Some(updated) }))
    }

    async fn delete_learner(&self, request: Request<DeleteLearnerRequest>) -> RpcResult<DeleteLearnerResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(UserError::from)?;
        if !self.store.delete_learner(&request.learner_id).await.map_err(UserError::from)? {
            return Err(UserError::not_found("learner", &request.learner_id).into());
        }
        self.changed(&request.learner_id).await;
        Ok(Response::new(DeleteLearnerResponse {}))
    }

    async fn list_learners(&self, request: Request<ListLearnersRequest>) -> RpcResult<ListLearnersResponse> {
        let request = request.into_inner();
        let limit = page_size("page_size", request.page_size, 100, 1000).map_err(UserError::from)?;
        let after = page::decode("page_token", &request.page_token).map_err(UserError::from)?.unwrap_or_default();
        let learners = self.store.list_learners(&after, limit).await.map_err(UserError::from)?;
        let next_page_token = page::next_token(&learners, limit, |l| l.learner_id.clone());
        Ok(Response::new(ListLearnersResponse { learners, next_page_token }))
    }

    async fn enrol_learner(&self, request: Request<EnrolLearnerRequest>) -> RpcResult<EnrolLearnerResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(UserError::from)?;
        id("course_id", &request.course_id).map_err(UserError::from)?;
        self.learner(&request.learner_id).await?;
        let course = self.get_course.call(GetCourseRequest { course_id: request.course_id.clone() }).await;
        match course {
            Ok(_) => {}
            Err(error) if error.code() == Code::NotFound => {
                return Err(UserError::not_found("course", &request.course_id).into());
            }
            Err(error) => return Err(UserError::Content(error).into()),
        }
        let (enrolment, already_enrolled) = self.store.enrol(&request.learner_id, &request.course_id).await?;
        if !already_enrolled {
            self.changed(&request.learner_id).await;
        }
        Ok(Response::new(EnrolLearnerResponse { enrolment: Some(enrolment), already_enrolled }))
    }

    async fn get_progress(&self, request: Request<GetProgressRequest>) -> RpcResult<GetProgressResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(UserError::from)?;
        alp_runtime::validate::optional_id("course_id", &request.course_id).map_err(UserError::from)?;
        // Both reads at once: a miss on both costs one database round trip of latency, not two.
        let (learner, progress) =
            tokio::join!(self.learner(&request.learner_id), self.all_progress(&request.learner_id));
        let learner = learner?;
        if !request.course_id.is_empty() && !learner.enrolments.iter().any(|e| e.course_id == request.course_id) {
            return Err(UserError::NotFound {
                entity: "enrolment",
                id: format!("{}/{}", request.learner_id, request.course_id),
            }
            .into());
        }
        let (courses, read) = progress?;
        if read {
            let value = GetProgressResponse { learner_id: request.learner_id.clone(), courses: courses.clone() };
            self.progress.put(&request.learner_id, value).await;
        }
        let courses =
            courses.into_iter().filter(|c| request.course_id.is_empty() || c.course_id == request.course_id).collect();
        Ok(Response::new(GetProgressResponse { learner_id: request.learner_id, courses }))
    }

    async fn record_progress(&self, request: Request<RecordProgressRequest>) -> RpcResult<RecordProgressResponse> {
        let request = request.into_inner();
        validate::events(&request.events).map_err(UserError::from)?;
        let outcome = self.store.record_progress(&request.events).await.map_err(UserError::from)?;
        let mut learners: Vec<String> = request.events.iter().map(|e| e.learner_id.clone()).collect();
        learners.sort();
        learners.dedup();
        self.progress.invalidate(&learners).await;
        Ok(Response::new(RecordProgressResponse {
            applied_count: outcome.applied,
            duplicate_count: outcome.duplicates,
            unknown_learner_count: outcome.unknown_learners,
        }))
    }
}
