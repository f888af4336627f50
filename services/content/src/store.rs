//! Where content is stored: courses, skills and their prerequisite graph, items and the
//! full-text index, over PostgreSQL or SQLite.

use std::collections::{HashMap, HashSet};

use alp_proto::content::v1::{Course, Item, Skill, answer_key};
use alp_runtime::StoreError;
use alp_runtime::db::{Database, Dialect, Tx, placeholders};
use alp_runtime::time::{now_millis, timestamp};
use prost::Message;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::error::ContentError;

/// A search with its filters, already validated.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub words: Vec<String>,
    pub course_id: String,
    pub skill_id: String,
    pub kind: i32,
    pub tag: String,
    pub min_difficulty: f64,
    pub max_difficulty: f64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Default)]
pub struct UpsertOutcome {
    pub items: Vec<Item>,
    pub created: i32,
    pub updated: i32,
}

#[derive(Debug, Clone)]
pub struct ContentStore {
    db: Database,
}

const ITEM_COLUMNS: &str = "body, retired, version, create_time, update_time";

impl ContentStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn create_course(&self, course: &Course) -> Result<Course, ContentError> {
        let now = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO courses (course_id, title, description, create_time) VALUES ($1, $2, $3, $4)
             ON CONFLICT (course_id) DO NOTHING",
        )
        .bind(&course.course_id)
        .bind(&course.title)
        .bind(&course.description)
        .bind(now)
        .execute(self.db.pool())
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        if inserted == 0 {
            return Err(ContentError::AlreadyExists { entity: "course", id: course.course_id.clone() });
        }
        Ok(Course { create_time: Some(timestamp(now)), ..course.clone() })
    }

    pub async fn get_course(&self, course_id: &str) -> Result<Option<Course>, StoreError> {
        let row = sqlx::query("SELECT course_id, title, description, create_time FROM courses WHERE course_id = $1")
            .bind(course_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| course_from_row(&r)).transpose()
    }

    pub async fn list_courses(&self, after: &str, limit: u32) -> Result<Vec<Course>, StoreError> {
        let rows = sqlx::query(
            "SELECT course_id, title, description, create_time FROM courses WHERE course_id > $1
             ORDER BY course_id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(course_from_row).collect()
    }

    /// Creates or replaces skills of a course. Prerequisites must name skills of the same course
    /// (existing or in this request) and the resulting graph must stay acyclic.
    pub async fn upsert_skills(&self, course_id: &str, skills: &[Skill]) -> Result<Vec<Skill>, ContentError> {
        let mut tx = self.db.begin_write().await?;
        if !exists(&mut tx, "SELECT 1 FROM courses WHERE course_id = $1", course_id).await? {
            return Err(ContentError::not_found("course", course_id));
        }
        let requested: Vec<&str> = skills.iter().map(|s| s.skill_id.as_str()).collect();
        let owners = skill_courses(&mut tx, &requested).await?;
        for (i, skill) in skills.iter().enumerate() {
            if let Some(owner) = owners.get(&skill.skill_id).filter(|owner| *owner != course_id) {
                return Err(ContentError::FailedPrecondition(format!(
                    "skills[{i}].skill_id: skill {:?} belongs to course {owner:?}",
                    skill.skill_id
                )));
            }
        }

        // The course's graph as it will be after this upsert.
        let mut graph: HashMap<String, Vec<String>> = HashMap::new();
        let existing = sqlx::query("SELECT skill_id FROM skills WHERE course_id = $1")
            .bind(course_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        for row in &existing {
            graph.insert(row.try_get(0).map_err(StoreError::from)?, Vec::new());
        }
        let edges = sqlx::query(
            "SELECT p.skill_id, p.prerequisite_id FROM skill_prerequisites p
             JOIN skills s ON s.skill_id = p.skill_id WHERE s.course_id = $1",
        )
        .bind(course_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        for row in &edges {
            let skill: String = row.try_get(0).map_err(StoreError::from)?;
            let prerequisite: String = row.try_get(1).map_err(StoreError::from)?;
            graph.entry(skill).or_default().push(prerequisite);
        }
        for skill in skills {
            graph.insert(skill.skill_id.clone(), skill.prerequisite_skill_ids.clone());
        }
        for (i, skill) in skills.iter().enumerate() {
            for (j, prerequisite) in skill.prerequisite_skill_ids.iter().enumerate() {
                if !graph.contains_key(prerequisite) {
                    return Err(ContentError::FailedPrecondition(format!(
                        "skills[{i}].prerequisite_skill_ids[{j}]: skill {prerequisite:?} is not a skill of course {course_id:?}"
                    )));
                }
            }
        }
        if let Some(cycle) = find_cycle(&graph) {
            return Err(ContentError::FailedPrecondition(format!(
                "prerequisites would form a cycle: {}",
                cycle.join(" -> ")
            )));
        }

        let now = now_millis();
        for skill in skills {
            sqlx::query(
                "INSERT INTO skills (skill_id, course_id, name, update_time) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (skill_id) DO UPDATE SET name = excluded.name, update_time = excluded.update_time",
            )
            .bind(&skill.skill_id)
            .bind(course_id)
            .bind(&skill.name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            sqlx::query("DELETE FROM skill_prerequisites WHERE skill_id = $1")
                .bind(&skill.skill_id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        for skill in skills {
            for prerequisite in &skill.prerequisite_skill_ids {
                sqlx::query("INSERT INTO skill_prerequisites (skill_id, prerequisite_id) VALUES ($1, $2)")
                    .bind(&skill.skill_id)
                    .bind(prerequisite)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(skills.iter().map(|s| Skill { course_id: course_id.to_owned(), ..s.clone() }).collect())
    }

    pub async fn list_skills(&self, course_id: &str, after: &str, limit: u32) -> Result<Vec<Skill>, StoreError> {
        let rows = sqlx::query(
            "SELECT skill_id, name FROM skills WHERE course_id = $1 AND skill_id > $2 ORDER BY skill_id LIMIT $3",
        )
        .bind(course_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        let mut skills = Vec::with_capacity(rows.len());
        for row in &rows {
            skills.push(Skill {
                skill_id: row.try_get(0)?,
                course_id: course_id.to_owned(),
                name: row.try_get(1)?,
                prerequisite_skill_ids: Vec::new(),
            });
        }
        if skills.is_empty() {
            return Ok(skills);
        }
        let sql = format!(
            "SELECT skill_id, prerequisite_id FROM skill_prerequisites WHERE skill_id IN ({}) ORDER BY skill_id, prerequisite_id",
            placeholders(1, skills.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for skill in &skills {
            query = query.bind(skill.skill_id.clone());
        }
        let mut prerequisites: HashMap<String, Vec<String>> = HashMap::new();
        for row in query.fetch_all(self.db.pool()).await? {
            prerequisites.entry(row.try_get(0)?).or_default().push(row.try_get(1)?);
        }
        for skill in &mut skills {
            skill.prerequisite_skill_ids = prerequisites.remove(&skill.skill_id).unwrap_or_default();
        }
        Ok(skills)
    }

    /// Creates or replaces items in one transaction. Every item's course and skills must exist and
    /// the skills must belong to the item's course; an item never moves to another course.
    pub async fn upsert_items(&self, items: &[Item]) -> Result<UpsertOutcome, ContentError> {
        let mut tx = self.db.begin_write().await?;

        let course_ids: HashSet<&str> = items.iter().map(|i| i.course_id.as_str()).collect();
        for course_id in &course_ids {
            if !exists(&mut tx, "SELECT 1 FROM courses WHERE course_id = $1", course_id).await? {
                return Err(ContentError::not_found("course", *course_id));
            }
        }
        let skill_ids: Vec<&str> = items
            .iter()
            .flat_map(|i| i.skill_ids.iter().map(String::as_str))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let skill_course = skill_courses(&mut tx, &skill_ids).await?;
        for (i, item) in items.iter().enumerate() {
            for (j, skill_id) in item.skill_ids.iter().enumerate() {
                match skill_course.get(skill_id) {
                    None => {
                        return Err(ContentError::FailedPrecondition(format!(
                            "items[{i}].skill_ids[{j}]: skill {skill_id:?} does not exist; create it with UpsertSkills first"
                        )));
                    }
                    Some(course) if course != &item.course_id => {
                        return Err(ContentError::FailedPrecondition(format!(
                            "items[{i}].skill_ids[{j}]: skill {skill_id:?} belongs to course {course:?}, not {:?}",
                            item.course_id
                        )));
                    }
                    Some(_) => {}
                }
            }
        }

        let now = now_millis();
        let mut outcome = UpsertOutcome::default();
        for (i, item) in items.iter().enumerate() {
            let previous = sqlx::query("SELECT course_id, version, create_time, retired FROM items WHERE item_id = $1")
                .bind(&item.item_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            let (version, create_time, retired) = match &previous {
                Some(row) => {
                    let course: String = row.try_get(0).map_err(StoreError::from)?;
                    if course != item.course_id {
                        return Err(ContentError::FailedPrecondition(format!(
                            "items[{i}].course_id: item {:?} belongs to course {course:?}; items cannot move between courses",
                            item.item_id
                        )));
                    }
                    outcome.updated += 1;
                    let version: i64 = row.try_get(1).map_err(StoreError::from)?;
                    let retired: i64 = row.try_get(3).map_err(StoreError::from)?;
                    (version + 1, row.try_get::<i64, _>(2).map_err(StoreError::from)?, retired != 0)
                }
                None => {
                    outcome.created += 1;
                    (1, now, false)
                }
            };
            let stored = Item {
                retired,
                version,
                create_time: Some(timestamp(create_time)),
                update_time: Some(timestamp(now)),
                ..item.clone()
            };
            let (primary, secondary) = search_text(&stored);
            sqlx::query(
                "INSERT INTO items (item_id, course_id, kind, difficulty, retired, version, create_time, update_time,
                                    search_primary, search_secondary, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (item_id) DO UPDATE SET
                    kind = excluded.kind, difficulty = excluded.difficulty, version = excluded.version,
                    update_time = excluded.update_time, search_primary = excluded.search_primary,
                    search_secondary = excluded.search_secondary, body = excluded.body",
            )
            .bind(&stored.item_id)
            .bind(&stored.course_id)
            .bind(i64::from(stored.kind))
            .bind(stored.difficulty)
            .bind(i64::from(retired))
            .bind(version)
            .bind(create_time)
            .bind(now)
            .bind(primary)
            .bind(secondary)
            .bind(stored.encode_to_vec())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            replace_links(&mut tx, "item_skills", "skill_id", &stored.item_id, &stored.skill_ids).await?;
            replace_links(&mut tx, "item_tags", "tag", &stored.item_id, &stored.tags).await?;
            outcome.items.push(stored);
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(outcome)
    }

    /// Items by id, in no particular order; ids not found are simply absent.
    pub async fn get_items(&self, item_ids: &[String]) -> Result<Vec<Item>, StoreError> {
        if item_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {ITEM_COLUMNS} FROM items WHERE item_id IN ({})", placeholders(1, item_ids.len()));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in item_ids {
            query = query.bind(id.clone());
        }
        query.fetch_all(self.db.pool()).await?.iter().map(item_from_row).collect()
    }

    pub async fn list_items(
        &self,
        course_id: &str,
        skill_id: &str,
        include_retired: bool,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Item>, StoreError> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM items i
             WHERE i.course_id = $1 AND i.item_id > $2 AND ($3 = 1 OR i.retired = 0)
               AND ($4 = '' OR EXISTS (SELECT 1 FROM item_skills s WHERE s.item_id = i.item_id AND s.skill_id = $4))
             ORDER BY i.item_id LIMIT $5"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(course_id)
            .bind(after)
            .bind(i64::from(include_retired))
            .bind(skill_id)
            .bind(i64::from(limit))
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(item_from_row).collect()
    }

    /// The ids of a course's items in service (not retired), in id order.
    pub async fn live_item_ids(&self, course_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT item_id FROM items WHERE course_id = $1 AND retired = 0 ORDER BY item_id")
            .bind(course_id)
            .fetch_all(self.db.pool())
            .await?)
    }

    pub async fn retire_item(&self, item_id: &str) -> Result<Option<Item>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE items SET retired = 1, version = version + 1, update_time = $2 WHERE item_id = $1 AND retired = 0",
        )
        .bind(item_id)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ITEM_COLUMNS} FROM items WHERE item_id = $1")))
            .bind(item_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(|r| item_from_row(&r)).transpose()
    }

    /// Ranked full-text search over active items: every word must match (stemmed).
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<(Item, f64)>, StoreError> {
        let filters = "i.retired = 0
               AND ($2 = '' OR i.course_id = $2)
               AND ($3 = '' OR EXISTS (SELECT 1 FROM item_skills s WHERE s.item_id = i.item_id AND s.skill_id = $3))
               AND ($4 = 0 OR i.kind = $4)
               AND ($5 = '' OR EXISTS (SELECT 1 FROM item_tags t WHERE t.item_id = i.item_id AND t.tag = $5))
               AND i.difficulty >= $6 AND i.difficulty <= $7";
        let (sql, text) = match self.db.dialect() {
            // One word (validation splits on everything else, so it is one lexeme or a stop
            // word): the page comes from the word's postings in relevance order.
            Dialect::Postgres if query.words.len() == 1 => (
                format!(
                    "SELECT i.body, i.retired, i.version, i.create_time, i.update_time, t.relevance
                     FROM item_terms t JOIN items i ON i.item_id = t.item_id
                     WHERE t.lexeme = (SELECT lexeme FROM unnest(to_tsvector('english', $1)) LIMIT 1)
                       AND {course} AND {filters}
                     ORDER BY t.relevance DESC, t.item_id LIMIT $8 OFFSET $9",
                    // Spelled out, so a cached generic plan still uses the per-course index.
                    course = if query.course_id.is_empty() { "$2 = ''" } else { "t.course_id = $2" },
                ),
                query.words.join(" "),
            ),
            Dialect::Postgres => (
                format!(
                    "SELECT i.body, i.retired, i.version, i.create_time, i.update_time,
                            CAST(ts_rank_cd(i.search_vector, q) AS DOUBLE PRECISION) AS relevance
                     FROM items i, plainto_tsquery('english', $1) q
                     WHERE i.search_vector @@ q AND {filters}
                     ORDER BY relevance DESC, i.item_id LIMIT $8 OFFSET $9"
                ),
                query.words.join(" "),
            ),
            // bm25 is lower-is-better; negate so both backends rank higher-is-better.
            Dialect::Sqlite => (
                format!(
                    "SELECT i.body, i.retired, i.version, i.create_time, i.update_time,
                            -bm25(items_fts, 4.0, 1.0) AS relevance
                     FROM items_fts JOIN items i ON i.rowid = items_fts.rowid
                     WHERE items_fts MATCH $1 AND {filters}
                     ORDER BY relevance DESC, i.item_id LIMIT $8 OFFSET $9"
                ),
                query.words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" "),
            ),
        };
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(text)
            .bind(&query.course_id)
            .bind(&query.skill_id)
            .bind(i64::from(query.kind))
            .bind(&query.tag)
            .bind(query.min_difficulty)
            .bind(query.max_difficulty)
            .bind(i64::from(query.limit))
            .bind(i64::try_from(query.offset).unwrap_or(i64::MAX))
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|row| Ok((item_from_row(row)?, row.try_get::<f64, _>(5)?))).collect()
    }
}

/// The course of each of these skills that exists.
async fn skill_courses(tx: &mut Tx, skill_ids: &[&str]) -> Result<HashMap<String, String>, StoreError> {
    let mut owners = HashMap::new();
    for chunk in skill_ids.chunks(500) {
        let sql =
            format!("SELECT skill_id, course_id FROM skills WHERE skill_id IN ({})", placeholders(1, chunk.len()));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.to_string());
        }
        for row in query.fetch_all(&mut **tx).await? {
            owners.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    Ok(owners)
}

async fn exists(tx: &mut Tx, sql: &'static str, key: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query(sql).bind(key.to_owned()).fetch_optional(&mut **tx).await?.is_some())
}

async fn replace_links(
    tx: &mut Tx,
    table: &str,
    column: &str,
    item_id: &str,
    values: &[String],
) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE item_id = $1")))
        .bind(item_id.to_owned())
        .execute(&mut **tx)
        .await?;
    for value in values.iter().collect::<HashSet<_>>() {
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {table} (item_id, {column}) VALUES ($1, $2)")))
            .bind(item_id.to_owned())
            .bind(value.clone())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn course_from_row(row: &AnyRow) -> Result<Course, StoreError> {
    Ok(Course {
        course_id: row.try_get(0)?,
        title: row.try_get(1)?,
        description: row.try_get(2)?,
        create_time: Some(timestamp(row.try_get(3)?)),
    })
}

fn item_from_row(row: &AnyRow) -> Result<Item, StoreError> {
    let body: Vec<u8> = row.try_get(0)?;
    let mut item = Item::decode(body.as_slice()).map_err(|e| StoreError::Corrupt(format!("item body: {e}")))?;
    item.retired = row.try_get::<i64, _>(1)? != 0;
    item.version = row.try_get(2)?;
    item.create_time = Some(timestamp(row.try_get(3)?));
    item.update_time = Some(timestamp(row.try_get(4)?));
    Ok(item)
}

/// What search matches: prompt and tags weigh most; explanation, choices and answer less.
fn search_text(item: &Item) -> (String, String) {
    let primary = format!("{} {}", item.prompt, item.tags.join(" "));
    let answer = match item.answer.as_ref().and_then(|a| a.key.as_ref()) {
        Some(answer_key::Key::Text(text)) => text.clone(),
        _ => String::new(),
    };
    let secondary = format!("{} {} {}", item.explanation, item.choices.join(" "), answer);
    (primary, secondary)
}

/// A cycle in the prerequisite graph, if there is one, as the path that closes it.
fn find_cycle(graph: &HashMap<String, Vec<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    let mut roots: Vec<&String> = graph.keys().collect();
    roots.sort();
    for root in roots {
        if marks.contains_key(root.as_str()) {
            continue;
        }
        // Iterative DFS: (node, index of next edge), with the current path on the stack.
        let mut stack: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        marks.insert(root.as_str(), Mark::Visiting);
        while let Some((node, next)) = stack.last().copied() {
            let edges = graph.get(node).map(Vec::as_slice).unwrap_or_default();
            if let Some(child) = edges.get(next) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match marks.get(child.as_str()) {
                    Some(Mark::Visiting) => {
                        let start = stack.iter().position(|(n, _)| *n == child.as_str()).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..].iter().map(|(n, _)| (*n).to_owned()).collect();
                        cycle.push(child.clone());
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(child.as_str(), Mark::Visiting);
                        stack.push((child.as_str(), 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        edges.iter().map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect())).collect()
    }

    #[test]
    fn acyclic_graphs_pass() {
        assert_eq!(find_cycle(&graph(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])])), None);
    }

    #[test]
    fn cycles_are_reported_as_a_path() {
        let cycle = find_cycle(&graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]));
        assert_eq!(cycle, Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    }
}
