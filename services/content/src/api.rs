//! The gRPC surface of the content service: validate, call the store, shape the answer.

use alp_proto::content::v1::content_service_server::ContentService;
use alp_proto::content::v1::*;
use std::time::Duration;

use alp_runtime::announce::announce;
use alp_runtime::cache::{Cache, CacheSettings};
use alp_runtime::page;
use alp_runtime::redis::Redis;
use alp_runtime::validate::{id, page_size};
use tonic::{Request, Response, Status};

use crate::error::ContentError;
use crate::store::{ContentStore, SearchQuery};
use crate::validate;

#[derive(Debug, Clone)]
pub struct ContentApi {
    store: ContentStore,
    items: Cache<Item>,
    course_items: Cache<CourseItemIds>,
    /// Where a course whose skills changed is announced (content keeps no copy of skills; the
    /// scheduler does).
    redis: Option<Redis>,
}

/// A course's items in service, in id order: what the scheduler pages through for new items.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CourseItemIds {
    #[prost(string, repeated, tag = "1")]
    pub item_ids: Vec<String>,
}

impl ContentApi {
    pub fn new(store: ContentStore, redis: Option<Redis>) -> Self {
        Self {
            store,
            items: Cache::new(ITEM_CACHE, redis.clone()),
            course_items: Cache::new(COURSE_ITEMS_CACHE, redis.clone()),
            redis,
        }
    }

    /// A page of a course's items in service, after `after`, from the caches where they can,
    /// with the next page token (paging follows the id list, so an item dropped from the page
    /// by a concurrent write cannot end it early).
    async fn live_items_page(
        &self,
        course_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<Item>, String), ContentError> {
        let ids = match self.course_items.get(course_id).await {
            Some(cached) => cached.item_ids,
            None => {
                let ids = self.store.live_item_ids(course_id).await?;
                self.course_items.put(course_id, CourseItemIds { item_ids: ids.clone() }).await;
                ids
            }
        };
        let start = ids.partition_point(|id| id.as_str() <= after);
        let page: Vec<String> = ids.into_iter().skip(start).take(limit as usize).collect();
        let next = page::next_token(&page, limit, Clone::clone);
        let mut items = self.items(&page).await?;
        // Written between the two reads: keep to the page's order, and to items still in service.
        items.retain(|i| !i.retired && i.course_id == course_id);
        items.sort_by(|a, b| a.item_id.cmp(&b.item_id));
        Ok((items, next))
    }

    /// Drops the cached copies a write of these items makes stale: the items, and the item
    /// lists of the courses they were and are in.
    async fn items_changed(&self, before: &[Item], after: &[Item]) {
        let ids: Vec<String> = after.iter().map(|i| i.item_id.clone()).collect();
        self.items.invalidate(&ids).await;
        let mut courses: Vec<String> = before.iter().chain(after).map(|i| i.course_id.clone()).collect();
        courses.sort();
        courses.dedup();
        self.course_items.invalidate(&courses).await;
    }

    /// The items that exist among `ids`, from the cache where it has them.
    async fn items(&self, ids: &[String]) -> Result<Vec<Item>, ContentError> {
        let cached = self.items.get_many(ids).await;
        let missing: Vec<String> =
            ids.iter().zip(&cached).filter(|(_, item)| item.is_none()).map(|(id, _)| id.clone()).collect();
        let mut items: Vec<Item> = cached.into_iter().flatten().collect();
        if !missing.is_empty() {
            let fetched = self.store.get_items(&missing).await?;
            self.items.put_many(&fetched.iter().map(|i| (i.item_id.clone(), i.clone())).collect::<Vec<_>>()).await;
            items.extend(fetched);
        }
        Ok(items)
    }
}

/// Items are read on every NextItems and change rarely: a minute in each replica's memory
/// (the bound on staleness if an invalidation message is lost), an hour in Redis.
pub const ITEM_CACHE: CacheSettings = CacheSettings {
    name: "items",
    l1_capacity: 50_000,
    l1_ttl: Duration::from_secs(60),
    l2_ttl: Duration::from_secs(3600),
};

/// The name under which a course whose skills changed is announced.
pub const SKILLS_CHANGED: &str = "skills";

/// Course item lists change when authors write items; same bounds as the items.
pub const COURSE_ITEMS_CACHE: CacheSettings = CacheSettings {
    name: "course_items",
    l1_capacity: 10_000,
    l1_ttl: Duration::from_secs(60),
    l2_ttl: Duration::from_secs(3600),
};

type RpcResult<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ContentService for ContentApi {
    async fn create_course(&self, request: Request<CreateCourseRequest>) -> RpcResult<CreateCourseResponse> {
        let request = request.into_inner();
        let course = validate::course(request.course.as_ref()).map_err(ContentError::from)?;
        let course = self.store.create_course(course).await?;
        Ok(Response::new(CreateCourseResponse { course: Some(course) }))
    }

    async fn get_course(&self, request: Request<GetCourseRequest>) -> RpcResult<GetCourseResponse> {
        let request = request.into_inner();
        id("course_id", &request.course_id).map_err(ContentError::from)?;
        let course = self
            .store
            .get_course(&request.course_id)
            .await
            .map_err(ContentError::from)?
            .ok_or_else(|| ContentError::not_found("course", &request.course_id))?;
        Ok(Response::new(GetCourseResponse { course: Some(course) }))
    }

    async fn list_courses(&self, request: Request<ListCoursesRequest>) -> RpcResult<ListCoursesResponse> {
        let request = request.into_inner();
        let limit = page_size("page_size", request.page_size, 100, 1000).map_err(ContentError::from)?;
        let after = page::decode("page_token", &request.page_token).map_err(ContentError::from)?.unwrap_or_default();
        let courses = self.store.list_courses(&after, limit).await.map_err(ContentError::from)?;
        let next_page_token = page::next_token(&courses, limit, |c| c.course_id.clone());
        Ok(Response::new(ListCoursesResponse { courses, next_page_token }))
    }

    async fn upsert_skills(&self, request: Request<UpsertSkillsRequest>) -> RpcResult<UpsertSkillsResponse> {
        let request = request.into_inner();
        validate::skills(&request.course_id, &request.skills).map_err(ContentError::from)?;
        let skills = self.store.upsert_skills(&request.course_id, &request.skills).await?;
        if let Some(redis) = &self.redis
            && let Err(error) = announce(redis, SKILLS_CHANGED, std::slice::from_ref(&request.course_id)).await
        {
            // Copies elsewhere catch up at their next periodic refresh.
            tracing::warn!(course_id = request.course_id, %error, "skill change not announced");
        }
        Ok(Response::new(UpsertSkillsResponse { skills }))
    }

    async fn list_skills(&self, request: Request<ListSkillsRequest>) -> RpcResult<ListSkillsResponse> {
        let request = request.into_inner();
        id("course_id", &request.course_id).map_err(ContentError::from)?;
        let limit = page_size("page_size", request.page_size, 1000, 1000).map_err(ContentError::from)?;
        let after = page::decode("page_token", &request.page_token).map_err(ContentError::from)?.unwrap_or_default();
        if after.is_empty() && self.store.get_course(&request.course_id).await.map_err(ContentError::from)?.is_none() {
            return Err(ContentError::not_found("course", &request.course_id).into());
        }
        let skills = self.store.list_skills(&request.course_id, &after, limit).await.map_err(ContentError::from)?;
        let next_page_token = page::next_token(&skills, limit, |s| s.skill_id.clone());
        Ok(Response::new(ListSkillsResponse { skills, next_page_token }))
    }

    async fn upsert_items(&self, request: Request<UpsertItemsRequest>) -> RpcResult<UpsertItemsResponse> {
        let request = request.into_inner();
        validate::items(&request.items).map_err(ContentError::from)?;
        // Where the items were before, so a course they leave drops its list too.
        let before = self.items(&request.items.iter().map(|i| i.item_id.clone()).collect::<Vec<_>>()).await?;
        let outcome = self.store.upsert_items(&request.items).await?;
        self.items_changed(&before, &outcome.items).await;
        Ok(Response::new(UpsertItemsResponse {
            items: outcome.items,
            created_count: outcome.created,
            updated_count: outcome.updated,
        }))
    }

    async fn get_item(&self, request: Request<GetItemRequest>) -> RpcResult<GetItemResponse> {
        let request = request.into_inner();
        id("item_id", &request.item_id).map_err(ContentError::from)?;
        let item = self
            .items(std::slice::from_ref(&request.item_id))
            .await?
            .pop()
            .ok_or_else(|| ContentError::not_found("item", &request.item_id))?;
        Ok(Response::new(GetItemResponse { item: Some(item) }))
    }

    async fn batch_get_items(&self, request: Request<BatchGetItemsRequest>) -> RpcResult<BatchGetItemsResponse> {
        let request = request.into_inner();
        validate::item_ids("item_ids", &request.item_ids).map_err(ContentError::from)?;
        let mut unique = request.item_ids.clone();
        unique.sort();
        unique.dedup();
        let mut items = self.items(&unique).await?;
        items.sort_by(|a, b| a.item_id.cmp(&b.item_id));
        let missing_item_ids =
            unique.into_iter().filter(|id| items.binary_search_by(|i| i.item_id.as_str().cmp(id)).is_err()).collect();
        Ok(Response::new(BatchGetItemsResponse { items, missing_item_ids }))
    }

    async fn list_items(&self, request: Request<ListItemsRequest>) -> RpcResult<ListItemsResponse> {
        let request = request.into_inner();
        id("course_id", &request.course_id).map_err(ContentError::from)?;
        alp_runtime::validate::optional_id("skill_id", &request.skill_id).map_err(ContentError::from)?;
        let limit = page_size("page_size", request.page_size, 100, 1000).map_err(ContentError::from)?;
        let after = page::decode("page_token", &request.page_token).map_err(ContentError::from)?.unwrap_or_default();
        if after.is_empty() && self.store.get_course(&request.course_id).await.map_err(ContentError::from)?.is_none() {
            return Err(ContentError::not_found("course", &request.course_id).into());
        }
        let (items, next_page_token) = if request.skill_id.is_empty() && !request.include_retired {
            self.live_items_page(&request.course_id, &after, limit).await?
        } else {
            let items = self
                .store
                .list_items(&request.course_id, &request.skill_id, request.include_retired, &after, limit)
                .await
                .map_err(ContentError::from)?;
            let next = page::next_token(&items, limit, |i| i.item_id.clone());
            (items, next)
        };
        Ok(Response::new(ListItemsResponse { items, next_page_token }))
    }

    async fn retire_item(&self, request: Request<RetireItemRequest>) -> RpcResult<RetireItemResponse> {
        let request = request.into_inner();
        id("item_id", &request.item_id).map_err(ContentError::from)?;
        let item = self
            .store
            .retire_item(&request.item_id)
            .await
            .map_err(ContentError::from)?
            .ok_or_else(|| ContentError::not_found("item", &request.item_id))?;
        self.items_changed(&[], std::slice::from_ref(&item)).await;
        Ok(Response::new(RetireItemResponse { item: Some(item) }))
    }

    async fn search_items(&self, request: Request<SearchItemsRequest>) -> RpcResult<SearchItemsResponse> {
        let request = request.into_inner();
        let words = validate::search_words(&request.query).map_err(ContentError::from)?;
        validate::search_filters(&request).map_err(ContentError::from)?;
        let limit = page_size("page_size", request.page_size, 20, 100).map_err(ContentError::from)?;
        let fingerprint = format!(
            "{}|{}|{}|{}|{}|{:?}|{:?}",
            words.join(" "),
            request.course_id,
            request.skill_id,
            request.kind,
            request.tag,
            request.min_difficulty,
            request.max_difficulty
        );
        let fingerprint = format!("{:016x}", fnv1a(fingerprint.as_bytes()));
        let offset =
            page::decode_offset("page_token", &request.page_token, &fingerprint).map_err(ContentError::from)?;
        let query = SearchQuery {
            words,
            course_id: request.course_id,
            skill_id: request.skill_id,
            kind: request.kind,
            tag: request.tag,
            min_difficulty: request.min_difficulty.unwrap_or(validate::MIN_DIFFICULTY),
            max_difficulty: request.max_difficulty.unwrap_or(validate::MAX_DIFFICULTY),
            limit,
            offset,
        };
        let hits: Vec<SearchHit> = self
            .store
            .search(&query)
            .await
            .map_err(ContentError::from)?
            .into_iter()
            .map(|(item, relevance)| SearchHit { item: Some(item), relevance })
            .collect();
        let next_page_token = if hits.len() == limit as usize {
            page::encode_offset(offset + u64::from(limit), &fingerprint)
        } else {
            String::new()
        };
        Ok(Response::new(SearchItemsResponse { hits, next_page_token }))
    }
}

/// Stable 64-bit FNV-1a, to bind a page token to its query without storing the query in it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
