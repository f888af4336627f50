//! ScoreCandidates as the scheduler sends it: each candidate points at the course's item in the
//! catalogue instead of copying its id and skills, and the skill graph is the catalogue's own.
//!
//! The generated message owns its strings: building one took about a hundred allocations per
//! NextItems, and the retry layer copied it whole once more for every attempt. This type encodes
//! to the bytes of `alp.scoring.v1.ScoreCandidatesRequest` (a test compares them) and is cheap
//! to clone. It is only ever encoded.
//!
//! What is the same in every request, an item's own fields of `Candidate` and a course's skill
//! graph, is encoded once, when the catalogue takes the listing in: encoding them string by
//! string was a tenth of the scheduler's CPU per NextItems.

use std::ops::Deref;
use std::sync::Arc;

use alp_proto::common::v1::MemoryState;
use alp_proto::content::v1::Item;
use alp_proto::scoring::v1::{ScoreCandidatesResponse, SkillPrerequisites, TestAnswer};
use alp_runtime::client::{MAX_ANSWER_BYTES, Transport};
use bytes::{Buf, BufMut, Bytes};
use futures::future::BoxFuture;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use prost_types::Timestamp;

use crate::downstream::choice_count;

/// A course's item as the catalogue holds it: the item, and its fields of
/// `alp.scoring.v1.Candidate` (id, skills, difficulty, choice count) encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogueItem {
    item: Item,
    candidate_fields: Bytes,
}

impl CatalogueItem {
    pub fn new(item: Item) -> Self {
        let choices = choice_count(&item);
        let mut fields = Vec::with_capacity(item.item_id.len() + 16 * item.skill_ids.len() + 24);
        if !item.item_id.is_empty() {
            encoding::string::encode(1, &item.item_id, &mut fields);
        }
        encoding::string::encode_repeated(2, &item.skill_ids, &mut fields);
        if item.difficulty != 0.0 {
            encoding::double::encode(3, &item.difficulty, &mut fields);
        }
        if choices != 0 {
            encoding::uint32::encode(4, &choices, &mut fields);
        }
        Self { item, candidate_fields: fields.into() }
    }
}

impl Deref for CatalogueItem {
    type Target = Item;

    fn deref(&self) -> &Item {
        &self.item
    }
}

/// A course's prerequisites as field 7 of `alp.scoring.v1.ScoreCandidatesRequest`, encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkillGraph {
    encoded: Bytes,
}

impl SkillGraph {
    pub fn new(graph: &[SkillPrerequisites]) -> Self {
        let mut encoded = Vec::with_capacity(encoding::message::encoded_len_repeated(7, graph));
        encoding::message::encode_repeated(7, graph, &mut encoded);
        Self { encoded: encoded.into() }
    }
}

/// `alp.scoring.v1.Candidate`, its item shared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CandidateRef {
    pub item: Arc<CatalogueItem>,
    /// Unset when the learner has not attempted the item; so are the times and the rating.
    pub memory: Option<MemoryState>,
    pub last_review_time: Option<Timestamp>,
    pub due_time: Option<Timestamp>,
    pub last_rating: i32,
}

/// `alp.scoring.v1.ScoreCandidatesRequest`, its candidates and skill graph shared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreRequest {
    pub learner_id: String,
    pub candidates: Arc<Vec<CandidateRef>>,
    pub mode: i32,
    pub count: u32,
    pub desired_retention: f64,
    pub now: Option<Timestamp>,
    pub skill_graph: Arc<SkillGraph>,
    pub mock_test_answers: Arc<Vec<TestAnswer>>,
}

const PATH: &str = "/alp.scoring.v1.ScoringService/ScoreCandidates";

/// Sends a [`ScoreRequest`] as the generated client sends its own message.
pub fn send(
    transport: Transport,
    request: tonic::Request<ScoreRequest>,
) -> BoxFuture<'static, Result<tonic::Response<ScoreCandidatesResponse>, tonic::Status>> {
    Box::pin(async move {
        let mut grpc = tonic::client::Grpc::new(transport).max_decoding_message_size(MAX_ANSWER_BYTES);
        grpc.ready().await.map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<ScoreRequest, ScoreCandidatesResponse>::default();
        grpc.unary(request, http::uri::PathAndQuery::from_static(PATH), codec).await
    })
}

fn encode_only(message: &str) -> DecodeError {
    #[allow(deprecated)]
    DecodeError::new(format!("{message} is only sent"))
}

impl Message for CandidateRef {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.item.candidate_fields);
        if let Some(memory) = &self.memory {
            encoding::message::encode(5, memory, buf);
        }
        if let Some(at) = &self.last_review_time {
            encoding::message::encode(6, at, buf);
        }
        if let Some(at) = &self.due_time {
            encoding::message::encode(7, at, buf);
        }
        if self.last_rating != 0 {
            encoding::int32::encode(8, &self.last_rating, buf);
        }
    }

    fn merge_field(&mut self, _: u32, _: WireType, _: &mut impl Buf, _: DecodeContext) -> Result<(), DecodeError> {
        Err(encode_only("CandidateRef"))
    }

    fn encoded_len(&self) -> usize {
        self.item.candidate_fields.len()
            + self.memory.as_ref().map_or(0, |m| encoding::message::encoded_len(5, m))
            + self.last_review_time.as_ref().map_or(0, |t| encoding::message::encoded_len(6, t))
            + self.due_time.as_ref().map_or(0, |t| encoding::message::encoded_len(7, t))
            + (if self.last_rating != 0 { encoding::int32::encoded_len(8, &self.last_rating) } else { 0 })
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Message for ScoreRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.learner_id.is_empty() {
            encoding::string::encode(1, &self.learner_id, buf);
        }
        for candidate in self.candidates.iter() {
            encoding::message::encode(2, candidate, buf);
        }
        if self.mode != 0 {
            encoding::int32::encode(3, &self.mode, buf);
        }
        if self.count != 0 {
            encoding::uint32::encode(4, &self.count, buf);
        }
        if self.desired_retention != 0.0 {
            encoding::double::encode(5, &self.desired_retention, buf);
        }
        if let Some(now) = &self.now {
            encoding::message::encode(6, now, buf);
        }
        buf.put_slice(&self.skill_graph.encoded);
        encoding::message::encode_repeated(8, &self.mock_test_answers, buf);
    }

    fn merge_field(&mut self, _: u32, _: WireType, _: &mut impl Buf, _: DecodeContext) -> Result<(), DecodeError> {
        Err(encode_only("ScoreRequest"))
    }

    fn encoded_len(&self) -> usize {
        (if self.learner_id.is_empty() { 0 } else { encoding::string::encoded_len(1, &self.learner_id) })
            + encoding::message::encoded_len_repeated(2, &self.candidates)
            + (if self.mode != 0 { encoding::int32::encoded_len(3, &self.mode) } else { 0 })
            + (if self.count != 0 { encoding::uint32::encoded_len(4, &self.count) } else { 0 })
            + (if self.desired_retention != 0.0 {
                encoding::double::encoded_len(5, &self.desired_retention)
            } else {
                0
            })
            + self.now.as_ref().map_or(0, |t| encoding::message::encoded_len(6, t))
            + self.skill_graph.encoded.len()
            + encoding::message::encoded_len_repeated(8, &self.mock_test_answers)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use alp_proto::scoring::v1::{Candidate, ScoreCandidatesRequest};

    use super::*;

    fn item(id: &str, skills: &[&str], difficulty: f64, choices: usize) -> Arc<CatalogueItem> {
        Arc::new(CatalogueItem::new(Item {
            item_id: id.into(),
            skill_ids: skills.iter().map(|s| (*s).to_owned()).collect(),
            difficulty,
            choices: (0..choices).map(|n| format!("choice {n}")).collect(),
            prompt: "not sent".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn encodes_to_the_generated_messages_bytes() {
        let at = |s| Some(Timestamp { seconds: s, nanos: 7 });
        let memory = MemoryState { stability: 3.5, difficulty: 6.25, phase: 2, step: 1, knowledge: Some(0.4) };
        let candidates = vec![
            CandidateRef { item: item("i1", &["s1", "s2"], -0.5, 4), ..Default::default() },
            CandidateRef {
                item: item("i2", &["s2"], 0.0, 0),
                memory: Some(memory),
                last_review_time: at(1_700_000_000),
                due_time: at(1_700_086_400),
                last_rating: 3,
            },
            CandidateRef { item: item("", &[], 1.25, 2), ..Default::default() },
        ];
        let graph = vec![SkillPrerequisites { skill_id: "s2".into(), prerequisite_skill_ids: vec!["s1".into()] }];
        let answers = vec![TestAnswer {
            item_id: "i9".into(),
            skill_ids: vec!["s1".into()],
            initial_difficulty: 0.3,
            choice_count: 4,
            correct: true,
        }];
        let ours = ScoreRequest {
            learner_id: "l1".into(),
            candidates: Arc::new(candidates.clone()),
            mode: 1,
            count: 10,
            desired_retention: 0.9,
            now: at(1_700_100_000),
            skill_graph: Arc::new(SkillGraph::new(&graph)),
            mock_test_answers: Arc::new(answers.clone()),
        };
        let generated = ScoreCandidatesRequest {
            learner_id: "l1".into(),
            candidates: candidates
                .iter()
                .map(|c| Candidate {
                    item_id: c.item.item_id.clone(),
                    skill_ids: c.item.skill_ids.clone(),
                    initial_difficulty: c.item.difficulty,
                    choice_count: choice_count(&c.item),
                    memory: c.memory,
                    last_review_time: c.last_review_time,
                    due_time: c.due_time,
                    last_rating: c.last_rating,
                })
                .collect(),
            mode: 1,
            count: 10,
            desired_retention: 0.9,
            now: at(1_700_100_000),
            skill_graph: graph,
            mock_test_answers: answers,
        };
        assert_eq!(ours.encode_to_vec(), generated.encode_to_vec());
        assert_eq!(ours.encoded_len(), generated.encoded_len());
        assert_eq!(ScoreCandidatesRequest::decode(ours.encode_to_vec().as_slice()).unwrap(), generated);

        let empty = ScoreRequest::default();
        assert_eq!(empty.encode_to_vec(), ScoreCandidatesRequest::default().encode_to_vec());
        assert!(ScoreRequest::decode(generated.encode_to_vec().as_slice()).is_err(), "only sent");
    }
}
