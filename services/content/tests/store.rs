//! The content store's contract, the same on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alp_content::{ContentError, ContentStore, MIGRATIONS, SearchQuery};
use alp_proto::content::v1::{AnswerKey, Course, Item, ItemKind, Skill, answer_key};
use alp_runtime::testing::on_every_backend;

fn course(id: &str) -> Course {
    Course { course_id: id.into(), title: format!("Course {id}"), description: String::new(), create_time: None }
}

fn skill(id: &str, prerequisites: &[&str]) -> Skill {
    Skill {
        skill_id: id.into(),
        course_id: String::new(),
        name: format!("Skill {id}"),
        prerequisite_skill_ids: prerequisites.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn item(id: &str, course: &str, skills: &[&str], prompt: &str) -> Item {
    Item {
        item_id: id.into(),
        course_id: course.into(),
        kind: ItemKind::Flashcard as i32,
        prompt: prompt.into(),
        answer: Some(AnswerKey { key: Some(answer_key::Key::Text("answer".into())) }),
        skill_ids: skills.iter().map(|s| (*s).to_owned()).collect(),
        ..Item::default()
    }
}

fn search(words: &[&str]) -> SearchQuery {
    SearchQuery {
        words: words.iter().map(|w| (*w).to_owned()).collect(),
        course_id: String::new(),
        skill_id: String::new(),
        kind: 0,
        tag: String::new(),
        min_difficulty: -6.0,
        max_difficulty: 6.0,
        limit: 50,
        offset: 0,
    }
}

fn ids(items: &[(Item, f64)]) -> Vec<&str> {
    items.iter().map(|(item, _)| item.item_id.as_str()).collect()
}

/// Two courses, skills a <- b <- c in "math" and x in "lang".
async fn fixture(store: &ContentStore) {
    store.create_course(&course("math")).await.unwrap();
    store.create_course(&course("lang")).await.unwrap();
    store.upsert_skills("math", &[skill("a", &[]), skill("b", &["a"]), skill("c", &["b"])]).await.unwrap();
    store.upsert_skills("lang", &[skill("x", &[])]).await.unwrap();
}

#[tokio::test]
async fn courses_are_created_once_and_listed_in_id_order() {
    on_every_backend("content", MIGRATIONS, |db| async move {
        let store = ContentStore::new(db);
        for id in ["c2", "c1", "c3"] {
            let created = store.create_course(&course(id)).await.unwrap();
            assert!(created.create_time.is_some());
        }
        let again = store.create_course(&course("c1")).await.unwrap_err();
        assert!(matches!(again, ContentError::AlreadyExists { entity: "course", .. }), "{again:?}");

        assert_eq!(store.get_course("c2").await.unwrap().unwrap().title, "Course c2");
        assert!(store.get_course("nope").await.unwrap().is_none());

        let first: Vec<String> = store.list_courses("", 2).await.unwrap().into_iter().map(|c| c.course_id).collect();
        assert_eq!(first, ["c1", "c2"]);
        let rest: Vec<String> = store.list_courses("c2", 2).await.unwrap().into_iter().map(|c| c.course_id).collect();
        assert_eq!(rest, ["c3"]);
    })
    .await;
}

#[tokio::test]
async fn skills_keep_an_acyclic_prerequisite_graph_within_their_course() {
    on_every_backend("content", MIGRATIONS, |db| async move {
        let store = ContentStore::new(db);
        fixture(&store).await;

        let listed = store.list_skills("math", "", 10).await.unwrap();
        let graph: Vec<(&str, Vec<&str>)> = listed
            .iter()
            .map(|s| (s.skill_id.as_str(), s.prerequisite_skill_ids.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(graph, [("a", vec![]), ("b", vec!["a"]), ("c", vec!["b"])]);
        assert!(listed.iter().all(|s| s.course_id == "math"));

        // a cycle through stored edges is refused and nothing changes
        let cycle = store.upsert_skills("math", &[skill("a", &["c"])]).await.unwrap_err();
        assert!(matches!(&cycle, ContentError::FailedPrecondition(m) if m.contains("cycle")), "{cycle:?}");
        let unknown = store.upsert_skills("math", &[skill("d", &["zzz"])]).await.unwrap_err();
        assert!(matches!(&unknown, ContentError::FailedPrecondition(m) if m.contains("zzz")), "{unknown:?}");
        let foreign = store.upsert_skills("math", &[skill("x", &[])]).await.unwrap_err();
        assert!(matches!(&foreign, ContentError::FailedPrecondition(m) if m.contains("lang")), "{foreign:?}");
        let cross = store.upsert_skills("math", &[skill("d", &["x"])]).await.unwrap_err();
        assert!(matches!(cross, ContentError::FailedPrecondition(_)), "{cross:?}");
        let missing = store.upsert_skills("nope", &[skill("n", &[])]).await.unwrap_err();
        assert!(matches!(missing, ContentError::NotFound { entity: "course", .. }), "{missing:?}");
        assert_eq!(store.list_skills("math", "", 10).await.unwrap(), listed);

        // re-upserting replaces a skill's prerequisites; paging continues after the cursor
        store.upsert_skills("math", &[skill("c", &["a"]), skill("d", &["c", "b"])]).await.unwrap();
        let page = store.list_skills("math", "b", 10).await.unwrap();
        assert_eq!(page[0].prerequisite_skill_ids, ["a"]);
        assert_eq!(page[1].prerequisite_skill_ids, ["b", "c"]);
        assert_eq!(page.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn item_upserts_are_versioned_atomic_and_stay_in_their_course() {
    on_every_backend("content", MIGRATIONS, |db| async move {
        let store = ContentStore::new(db);
        fixture(&store).await;

        let first = store
            .upsert_items(&[item("i1", "math", &["a"], "two plus two"), item("i2", "math", &["b"], "three")])
            .await
            .unwrap();
        assert_eq!((first.created, first.updated), (2, 0));
        assert!(first.items.iter().all(|i| i.version == 1));

        let mut changed = item("i1", "math", &["a", "b"], "two plus three");
        changed.tags = vec!["sum".into()];
        let second = store.upsert_items(&[changed]).await.unwrap();
        assert_eq!((second.created, second.updated), (0, 1));
        let stored = store.get_items(&["i1".into()]).await.unwrap().pop().unwrap();
        assert_eq!(stored.version, 2);
        assert_eq!(stored.prompt, "two plus three");
        assert_eq!(stored.skill_ids, ["a", "b"]);
        assert_eq!(stored.create_time, first.items[0].create_time, "create time survives an update");

        // one bad item fails the whole batch: i3 is not written
        let batch = [item("i3", "math", &["a"], "new"), item("i2", "lang", &["x"], "moved")];
        let moved = store.upsert_items(&batch).await.unwrap_err();
        assert!(
            matches!(&moved, ContentError::FailedPrecondition(m) if m.starts_with("items[1].course_id")),
            "{moved:?}"
        );
        assert!(store.get_items(&["i3".into()]).await.unwrap().is_empty());
        let foreign_skill = store.upsert_items(&[item("i4", "math", &["x"], "p")]).await.unwrap_err();
        assert!(matches!(&foreign_skill, ContentError::FailedPrecondition(m) if m.contains("items[0].skill_ids[0]")));
        let no_course = store.upsert_items(&[item("i5", "nope", &[], "p")]).await.unwrap_err();
        assert!(matches!(no_course, ContentError::NotFound { entity: "course", .. }));

        let mut found: Vec<String> = store
            .get_items(&["i2".into(), "zz".into(), "i1".into()])
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.item_id)
            .collect();
        found.sort();
        assert_eq!(found, ["i1", "i2"]);
        let by_skill: Vec<String> =
            store.list_items("math", "b", false, "", 10).await.unwrap().into_iter().map(|i| i.item_id).collect();
        assert_eq!(by_skill, ["i1", "i2"]);
    })
    .await;
}

#[tokio::test]
async fn retired_items_leave_lists_and_search_but_stay_readable() {
    on_every_backend("content", MIGRATIONS, |db| async move {
        let store = ContentStore::new(db);
        fixture(&store).await;
        store
            .upsert_items(&[item("i1", "math", &["a"], "fraction basics"), item("i2", "math", &["a"], "fraction sums")])
            .await
            .unwrap();

        let retired = store.retire_item("i1").await.unwrap().unwrap();
        assert!(retired.retired);
        assert_eq!(retired.version, 2);
        let again = store.retire_item("i1").await.unwrap().unwrap();
        assert_eq!(again.version, 2, "retiring twice changes nothing");
        assert!(store.retire_item("nope").await.unwrap().is_none());

        let active: Vec<String> =
            store.list_items("math", "", false, "", 10).await.unwrap().into_iter().map(|i| i.item_id).collect();
        assert_eq!(active, ["i2"]);
        assert_eq!(store.live_item_ids("math").await.unwrap(), ["i2"]);
        assert_eq!(store.list_items("math", "", true, "", 10).await.unwrap().len(), 2);
        assert_eq!(ids(&store.search(&search(&["fraction"])).await.unwrap()), ["i2"]);
        assert!(store.get_items(&["i1".into()]).await.unwrap()[0].retired);

        // an update of a retired item keeps it retired
        let updated = store.upsert_items(&[item("i1", "math", &["a"], "fraction basics v2")]).await.unwrap();
        assert!(updated.items[0].retired);
        assert_eq!(updated.items[0].version, 3);
    })
    .await;
}

#[tokio::test]
async fn search_is_stemmed_ranked_filtered_and_paged() {
    on_every_backend("content", MIGRATIONS, |db| async move {
        let store = ContentStore::new(db);
        fixture(&store).await;
        let mut in_prompt = item("p", "math", &["a"], "Adding fractions with unlike denominators");
        in_prompt.tags = vec!["fractions".into()];
        in_prompt.difficulty = 1.0;
        let mut in_explanation = item("e", "math", &["b"], "Simplify the expression");
        in_explanation.explanation = "Find a common denominator for the fractions".into();
        in_explanation.kind = ItemKind::FreeText as i32;
        in_explanation.difficulty = -1.0;
        let other_course = item("l", "lang", &["x"], "Fractions in French");
        let unrelated = item("u", "math", &["c"], "Multiply decimals");
        store.upsert_items(&[in_prompt, in_explanation, other_course, unrelated]).await.unwrap();

        // stemming: "denominator" and "fraction" match "denominators" and "fractions"; a match in
        // the prompt outranks one in the explanation
        let hits = store.search(&search(&["denominator", "fraction"])).await.unwrap();
        assert_eq!(ids(&hits), ["p", "e"]);
        assert!(hits[0].1 > hits[1].1, "relevance is ordered: {hits:?}");
        // every word must match
        assert!(store.search(&search(&["fraction", "decimals"])).await.unwrap().is_empty());

        let filtered = |f: fn(&mut SearchQuery)| {
            let mut query = search(&["fractions"]);
            f(&mut query);
            let store = store.clone();
            async move { ids(&store.search(&query).await.unwrap()).iter().map(|s| (*s).to_owned()).collect::<Vec<_>>() }
        };
        assert_eq!(filtered(|q| q.course_id = "lang".into()).await, ["l"]);
        assert_eq!(filtered(|q| q.skill_id = "b".into()).await, ["e"]);
        assert_eq!(filtered(|q| q.kind = ItemKind::FreeText as i32).await, ["e"]);
        assert_eq!(filtered(|q| q.tag = "fractions".into()).await, ["p"]);
        assert_eq!(filtered(|q| q.min_difficulty = 0.5).await, ["p"]);
        assert_eq!(filtered(|q| q.max_difficulty = -0.5).await, ["e"]);

        let all = filtered(|_| {}).await;
        assert_eq!(all.len(), 3);
        // one word ranks as several do: prompt and tags above the explanation
        let one_word = store.search(&search(&["fractions"])).await.unwrap();
        assert_eq!(ids(&one_word).last(), Some(&"e"), "{one_word:?}");
        assert!(one_word.windows(2).all(|w| w[0].1 >= w[1].1) && one_word[1].1 > one_word[2].1, "{one_word:?}");
        let mut paged = Vec::new();
        for offset in 0..3 {
            let mut query = search(&["fractions"]);
            query.limit = 1;
            query.offset = offset;
            paged.extend(ids(&store.search(&query).await.unwrap()).iter().map(|s| (*s).to_owned()));
        }
        assert_eq!(paged, all, "pages concatenate to the full result");

        // an update re-indexes: the old words no longer find the item
        store.upsert_items(&[item("u", "math", &["c"], "Divide integers")]).await.unwrap();
        assert!(store.search(&search(&["decimals"])).await.unwrap().is_empty());
        assert_eq!(ids(&store.search(&search(&["integers"])).await.unwrap()), ["u"]);
    })
    .await;
}
