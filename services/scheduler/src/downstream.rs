//! The scheduler's view of the other services: items from content, learners from user, and
//! the models from scoring, each over gRPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::{BatchGetItemsRequest, GetItemRequest, Item, ListItemsRequest, ListSkillsRequest};
use alp_proto::scoring::v1::SkillPrerequisites;
use alp_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::{GetLearnerRequest, Learner};
use tonic::Code;
use tonic::transport::Channel;

use crate::error::SchedulerError;

/// The gRPC clients of the services the scheduler calls.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub content: ContentServiceClient<Channel>,
    pub scoring: ScoringServiceClient<Channel>,
    pub user: UserServiceClient<Channel>,
    learners: Arc<Mutex<HashMap<String, Learner>>>,
}

/// A learner's profile, or the fact that the user service could not say.
#[derive(Debug, Clone)]
pub enum LearnerProfile {
    Known(Learner),
    /// The user service is unavailable and the learner was never seen: answer with defaults.
    Unknown,
}

impl Downstream {
    pub fn new(content: Channel, scoring: Channel, user: Channel) -> Self {
        Self {
            content: ContentServiceClient::new(content),
            scoring: ScoringServiceClient::new(scoring),
            user: UserServiceClient::new(user),
            learners: Arc::default(),
        }
    }

    /// The learner from the user service; when it is unavailable, the last profile seen (stale
    /// if error), so an outage of the user service does not stop practice.
    pub async fn learner(&self, learner_id: &str) -> Result<LearnerProfile, SchedulerError> {
        let answer = self.user.clone().get_learner(GetLearnerRequest { learner_id: learner_id.to_owned() }).await;
        match answer {
            Ok(response) => {
                let learner = response.into_inner().learner.unwrap_or_default();
                if let Ok(mut cache) = self.learners.lock() {
                    if cache.len() > 100_000 {
                        cache.clear();
                    }
                    cache.insert(learner_id.to_owned(), learner.clone());
                }
                Ok(LearnerProfile::Known(learner))
            }
            Err(status) if status.code() == Code::NotFound => Err(SchedulerError::not_found("learner", learner_id)),
            Err(status) => {
                let cached = self.learners.lock().ok().and_then(|c| c.get(learner_id).cloned());
                tracing::warn!(learner_id, error = %status.message(), cached = cached.is_some(), "user service unavailable; using the last known profile");
                Ok(cached.map_or(LearnerProfile::Unknown, LearnerProfile::Known))
            }
        }
    }

    pub async fn item(&self, item_id: &str) -> Result<Item, SchedulerError> {
        match self.content.clone().get_item(GetItemRequest { item_id: item_id.to_owned() }).await {
            Ok(response) => response.into_inner().item.ok_or_else(|| SchedulerError::not_found("item", item_id)),
            Err(status) if status.code() == Code::NotFound => Err(SchedulerError::not_found("item", item_id)),
            Err(status) => Err(SchedulerError::downstream("content", &status)),
        }
    }

    /// Items by id (missing ones are left out).
    pub async fn items(&self, item_ids: &[String]) -> Result<Vec<Item>, SchedulerError> {
        let mut items = Vec::with_capacity(item_ids.len());
        for chunk in item_ids.chunks(500) {
            let response = self
                .content
                .clone()
                .batch_get_items(BatchGetItemsRequest { item_ids: chunk.to_vec() })
                .await
                .map_err(|s| SchedulerError::downstream("content", &s))?;
            items.extend(response.into_inner().items);
        }
        Ok(items)
    }

    /// Active items of a course the learner has not seen, in course order, up to `want`.
    pub async fn unseen_items(
        &self,
        course_id: &str,
        seen: &std::collections::HashSet<String>,
        want: usize,
    ) -> Result<Vec<Item>, SchedulerError> {
        const MAX_PAGES: usize = 50;
        let mut unseen = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let response = self
                .content
                .clone()
                .list_items(ListItemsRequest {
                    course_id: course_id.to_owned(),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await;
            let page = response.map_err(|status| course_error(course_id, &status))?.into_inner();
            unseen.extend(page.items.into_iter().filter(|i| !seen.contains(&i.item_id)));
            if unseen.len() >= want || page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        unseen.truncate(want);
        Ok(unseen)
    }

    /// The prerequisites of every skill of a course that has any.
    pub async fn skill_graph(&self, course_id: &str) -> Result<Vec<SkillPrerequisites>, SchedulerError> {
        const MAX_PAGES: usize = 10;
        let mut graph = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let response = self
                .content
                .clone()
                .list_skills(ListSkillsRequest { course_id: course_id.to_owned(), page_size: 1000, page_token })
                .await;
            let page = response.map_err(|status| course_error(course_id, &status))?.into_inner();
            graph.extend(page.skills.into_iter().filter(|s| !s.prerequisite_skill_ids.is_empty()).map(|s| {
                SkillPrerequisites { skill_id: s.skill_id, prerequisite_skill_ids: s.prerequisite_skill_ids }
            }));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(graph)
    }
}

/// A failed call about a course: NOT_FOUND is the caller's unknown course, anything else is
/// content's trouble.
fn course_error(course_id: &str, status: &tonic::Status) -> SchedulerError {
    if status.code() == Code::NotFound {
        SchedulerError::not_found("course", course_id)
    } else {
        SchedulerError::downstream("content", status)
    }
}
