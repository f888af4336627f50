//! Request checks for the user service.

use alp_proto::user::v1::{Learner, ProgressEvent};
use alp_runtime::FieldViolation;
use alp_runtime::validate::{count, id, range, text};

use crate::store::LearnerChanges;

pub const DEFAULT_RETENTION: f64 = 0.90;
pub const MAX_EVENTS_PER_BATCH: usize = 1000;
pub const MAX_IDS_PER_BATCH_GET: usize = 500;

/// Checks a new learner and fills defaults; an empty id gets a fresh UUID.
pub fn new_learner(learner: Option<&Learner>) -> Result<Learner, FieldViolation> {
    let mut learner = learner.cloned().ok_or_else(|| FieldViolation::new("learner", "is required"))?;
    if learner.learner_id.is_empty() {
        learner.learner_id = uuid::Uuid::now_v7().to_string();
    }
    id("learner.learner_id", &learner.learner_id)?;
    display_name("learner.display_name", &learner.display_name)?;
    email("learner.email", &learner.email)?;
    if learner.locale.is_empty() {
        learner.locale = "en".to_owned();
    }
    locale("learner.locale", &learner.locale)?;
    if learner.desired_retention == 0.0 {
        learner.desired_retention = DEFAULT_RETENTION;
    }
    retention("learner.desired_retention", learner.desired_retention)?;
    learner.enrolments.clear();
    Ok(learner)
}

/// Turns an update request into the changes it names.
pub fn changes(learner: &Learner, paths: &[String]) -> Result<LearnerChanges, FieldViolation> {
    if paths.is_empty() {
        return Err(FieldViolation::new(
            "update_mask",
            "must name at least one of display_name, email, locale, desired_retention",
        ));
    }
    let mut changes = LearnerChanges::default();
    for (i, path) in paths.iter().enumerate() {
        match path.as_str() {
            "display_name" => {
                display_name("learner.display_name", &learner.display_name)?;
                changes.display_name = Some(learner.display_name.clone());
            }
            "email" => {
                email("learner.email", &learner.email)?;
                changes.email = Some(learner.email.clone());
            }
            "locale" => {
                locale("learner.locale", &learner.locale)?;
                changes.locale = Some(learner.locale.clone());
            }
            "desired_retention" => {
                retention("learner.desired_retention", learner.desired_retention)?;
                changes.desired_retention = Some(learner.desired_retention);
            }
            other => {
                return Err(FieldViolation::new(
                    format!("update_mask.paths[{i}]"),
                    format!("{other:?} is not updatable; use display_name, email, locale or desired_retention"),
                ));
            }
        }
    }
    Ok(changes)
}

fn display_name(field: &str, value: &str) -> Result<(), FieldViolation> {
    text(field, value, 200)
}

fn email(field: &str, value: &str) -> Result<(), FieldViolation> {
    text(field, value, 320)?;
    if !value.is_empty() && (!value.contains('@') || value.contains(char::is_whitespace)) {
        return Err(FieldViolation::new(field, "must be an email address"));
    }
    Ok(())
}

fn locale(field: &str, value: &str) -> Result<(), FieldViolation> {
    let valid = (2..=35).contains(&value.len())
        && value
            .split('-')
            .all(|part| !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !valid {
        return Err(FieldViolation::new(field, "must be a BCP 47 language tag such as \"en\" or \"pt-BR\""));
    }
    Ok(())
}

fn retention(field: &str, value: f64) -> Result<(), FieldViolation> {
    range(field, value, 0.70, 0.97)
}

pub fn learner_ids(field: &str, values: &[String]) -> Result<(), FieldViolation> {
    alp_runtime::validate::ids(field, values, MAX_IDS_PER_BATCH_GET)
}

pub fn events(events: &[ProgressEvent]) -> Result<(), FieldViolation> {
    count("events", events, MAX_EVENTS_PER_BATCH)?;
    for (i, e) in events.iter().enumerate() {
        event(e).map_err(|v| v.within(format!("events[{i}]")))?;
    }
    Ok(())
}

fn event(event: &ProgressEvent) -> Result<(), FieldViolation> {
    id("attempt_id", &event.attempt_id)?;
    id("learner_id", &event.learner_id)?;
    id("course_id", &event.course_id)?;
    id("item_id", &event.item_id)?;
    if event.skill_ids.len() > 20 {
        return Err(FieldViolation::new("skill_ids", "must have at most 20 entries"));
    }
    for (j, skill) in event.skill_ids.iter().enumerate() {
        id("skill_ids", skill).map_err(|v| v.entry(j))?;
    }
    if let Some(time) = &event.answer_time {
        alp_runtime::time::millis("answer_time", time)?;
    }
    Ok(())
}
