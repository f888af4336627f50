//! Request checks: everything is validated before anything is written.

use std::collections::HashSet;

use alp_proto::content::v1::{Course, Item, ItemKind, SearchItemsRequest, Skill, answer_key};
use alp_runtime::FieldViolation;
use alp_runtime::validate::{count, id, optional_id, range, required_text, text};

pub const MAX_ITEMS_PER_UPSERT: usize = 500;
pub const MAX_IDS_PER_BATCH_GET: usize = 500;
pub const MAX_SKILLS_PER_UPSERT: usize = 1000;
pub const MIN_DIFFICULTY: f64 = -6.0;
pub const MAX_DIFFICULTY: f64 = 6.0;

pub fn course(course: Option<&Course>) -> Result<&Course, FieldViolation> {
    let course = course.ok_or_else(|| FieldViolation::new("course", "is required"))?;
    id("course.course_id", &course.course_id)?;
    required_text("course.title", &course.title, 200)?;
    text("course.description", &course.description, 4000)?;
    Ok(course)
}

pub fn skills(course_id: &str, skills: &[Skill]) -> Result<(), FieldViolation> {
    id("course_id", course_id)?;
    count("skills", skills, MAX_SKILLS_PER_UPSERT)?;
    let mut seen = HashSet::new();
    for (i, skill) in skills.iter().enumerate() {
        let at = |field: &str| format!("skills[{i}].{field}");
        id(&at("skill_id"), &skill.skill_id)?;
        if !seen.insert(skill.skill_id.as_str()) {
            return Err(FieldViolation::new(at("skill_id"), format!("{:?} appears twice", skill.skill_id)));
        }
        if !skill.course_id.is_empty() && skill.course_id != course_id {
            return Err(FieldViolation::new(at("course_id"), "must be empty or equal to course_id"));
        }
        required_text(&at("name"), &skill.name, 200)?;
        if skill.prerequisite_skill_ids.len() > 50 {
            return Err(FieldViolation::new(at("prerequisite_skill_ids"), "must have at most 50 entries"));
        }
        let mut prerequisites = HashSet::new();
        for (j, prerequisite) in skill.prerequisite_skill_ids.iter().enumerate() {
            let field = at(&format!("prerequisite_skill_ids[{j}]"));
            id(&field, prerequisite)?;
            if prerequisite == &skill.skill_id {
                return Err(FieldViolation::new(field, "a skill cannot be its own prerequisite"));
            }
            if !prerequisites.insert(prerequisite.as_str()) {
                return Err(FieldViolation::new(field, format!("{prerequisite:?} appears twice")));
            }
        }
    }
    Ok(())
}

pub fn items(items: &[Item]) -> Result<(), FieldViolation> {
    count("items", items, MAX_ITEMS_PER_UPSERT)?;
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        self::item(item).map_err(|v| v.within(format!("items[{i}]")))?;
        if !seen.insert(item.item_id.as_str()) {
            return Err(FieldViolation::new(
                format!("items[{i}].item_id"),
                format!("{:?} appears twice", item.item_id),
            ));
        }
    }
    Ok(())
}

fn item(item: &Item) -> Result<(), FieldViolation> {
    id("item_id", &item.item_id)?;
    id("course_id", &item.course_id)?;
    let kind = ItemKind::try_from(item.kind).unwrap_or(ItemKind::Unspecified);
    if kind == ItemKind::Unspecified {
        return Err(FieldViolation::new("kind", "must be one of FLASHCARD, MULTIPLE_CHOICE, NUMERIC, FREE_TEXT"));
    }
    required_text("prompt", &item.prompt, 4000)?;
    text("explanation", &item.explanation, 4000)?;
    if kind == ItemKind::MultipleChoice {
        if !(2..=10).contains(&item.choices.len()) {
            return Err(FieldViolation::new("choices", "multiple choice items need 2 to 10 choices"));
        }
        for (j, choice) in item.choices.iter().enumerate() {
            required_text(&format!("choices[{j}]"), choice, 500)?;
        }
    } else if !item.choices.is_empty() {
        return Err(FieldViolation::new("choices", "only multiple choice items have choices"));
    }
    let key = item.answer.as_ref().and_then(|a| a.key.as_ref());
    match (kind, key) {
        (ItemKind::Flashcard | ItemKind::FreeText, Some(answer_key::Key::Text(answer))) => {
            required_text("answer.text", answer, 2000)?;
        }
        (ItemKind::MultipleChoice, Some(answer_key::Key::ChoiceIndex(index))) => {
            if *index as usize >= item.choices.len() {
                return Err(FieldViolation::new(
                    "answer.choice_index",
                    format!("must be below the number of choices ({})", item.choices.len()),
                ));
            }
        }
        (ItemKind::Numeric, Some(answer_key::Key::Numeric(numeric))) => {
            range("answer.numeric.value", numeric.value, -1e15, 1e15)?;
            range("answer.numeric.tolerance", numeric.tolerance, 0.0, 1e15)?;
        }
        (ItemKind::Flashcard | ItemKind::FreeText, _) => {
            return Err(FieldViolation::new("answer", "must set text for this kind"));
        }
        (ItemKind::MultipleChoice, _) => {
            return Err(FieldViolation::new("answer", "must set choice_index for multiple choice"));
        }
        (ItemKind::Numeric, _) => return Err(FieldViolation::new("answer", "must set numeric for numeric items")),
        (ItemKind::Unspecified, _) => {}
    }
    if item.skill_ids.is_empty() || item.skill_ids.len() > 20 {
        return Err(FieldViolation::new("skill_ids", "must name 1 to 20 skills of the course"));
    }
    let mut skills = HashSet::new();
    for (j, skill) in item.skill_ids.iter().enumerate() {
        id("skill_ids", skill).map_err(|v| v.entry(j))?;
        if !skills.insert(skill.as_str()) {
            return Err(FieldViolation::new(format!("skill_ids[{j}]"), format!("{skill:?} appears twice")));
        }
    }
    if item.tags.len() > 20 {
        return Err(FieldViolation::new("tags", "must have at most 20 entries"));
    }
    for (j, tag) in item.tags.iter().enumerate() {
        required_text(&format!("tags[{j}]"), tag, 64)?;
    }
    range("difficulty", item.difficulty, MIN_DIFFICULTY, MAX_DIFFICULTY)
}

pub fn item_ids(field: &str, values: &[String]) -> Result<(), FieldViolation> {
    alp_runtime::validate::ids(field, values, MAX_IDS_PER_BATCH_GET)
}

/// PostgreSQL's English configuration ignores these (the Snowball list); dropping them here too
/// makes both backends answer the same query the same way.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "did",
    "do",
    "does",
    "doing",
    "don",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "s",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "t",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// The words of a search query: letters and digits only, so no query syntax reaches the index,
/// and no stop words.
pub fn search_words(query: &str) -> Result<Vec<String>, FieldViolation> {
    required_text("query", query, 256)?;
    let words: Vec<String> =
        query.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    if words.is_empty() {
        return Err(FieldViolation::new("query", "must contain at least one word"));
    }
    let words: Vec<String> =
        words.into_iter().filter(|w| STOP_WORDS.binary_search(&w.as_str()).is_err()).take(32).collect();
    if words.is_empty() {
        return Err(FieldViolation::new(
            "query",
            "has only common words such as \"what\" or \"the\"; add a specific word",
        ));
    }
    Ok(words)
}

pub fn search_filters(request: &SearchItemsRequest) -> Result<(), FieldViolation> {
    optional_id("course_id", &request.course_id)?;
    optional_id("skill_id", &request.skill_id)?;
    if ItemKind::try_from(request.kind).is_err() {
        return Err(FieldViolation::new("kind", "is not a known item kind"));
    }
    text("tag", &request.tag, 64)?;
    if let Some(min) = request.min_difficulty {
        range("min_difficulty", min, MIN_DIFFICULTY, MAX_DIFFICULTY)?;
    }
    if let Some(max) = request.max_difficulty {
        range("max_difficulty", max, MIN_DIFFICULTY, MAX_DIFFICULTY)?;
    }
    if let (Some(min), Some(max)) = (request.min_difficulty, request.max_difficulty)
        && min > max
    {
        return Err(FieldViolation::new("min_difficulty", "must not exceed max_difficulty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn search_words_drop_syntax_and_stop_words() {
        assert_eq!(
            search_words("What is \"1/2\"* OR fractions?"),
            Ok(vec!["1".into(), "2".into(), "fractions".into()])
        );
        assert!(search_words("what is the").is_err());
        assert!(search_words("?!").is_err());
    }
}
