//! The demo course `alp dev` seeds through the content API, so a fresh suite has something
//! to practise: arithmetic skills with prerequisites and items of every kind.

use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::{
    AnswerKey, Course, CreateCourseRequest, GetCourseRequest, Item, ItemKind, NumericAnswer, Skill, UpsertItemsRequest,
    UpsertSkillsRequest, answer_key,
};
use tonic::Code;
use tonic::transport::Channel;

pub const DEMO_COURSE: &str = "arithmetic";

fn skill(id: &str, name: &str, prerequisites: &[&str]) -> Skill {
    Skill {
        skill_id: id.to_owned(),
        name: name.to_owned(),
        prerequisite_skill_ids: prerequisites.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn item(id: &str, skill: &str, kind: ItemKind, prompt: &str, key: answer_key::Key, difficulty: f64) -> Item {
    Item {
        item_id: id.to_owned(),
        course_id: DEMO_COURSE.to_owned(),
        kind: kind as i32,
        prompt: prompt.to_owned(),
        answer: Some(AnswerKey { key: Some(key) }),
        skill_ids: vec![skill.to_owned()],
        tags: vec![skill.to_owned()],
        difficulty,
        ..Default::default()
    }
}

fn numeric(value: f64) -> answer_key::Key {
    answer_key::Key::Numeric(NumericAnswer { value, tolerance: 0.0 })
}

fn text(answer: &str) -> answer_key::Key {
    answer_key::Key::Text(answer.to_owned())
}

fn choice(prompt_id: &str, skill: &str, prompt: &str, choices: &[&str], correct: u32, difficulty: f64) -> Item {
    Item {
        choices: choices.iter().map(|c| (*c).to_owned()).collect(),
        ..item(prompt_id, skill, ItemKind::MultipleChoice, prompt, answer_key::Key::ChoiceIndex(correct), difficulty)
    }
}

/// Creates the demo course unless it exists. Returns true when it was created now.
pub async fn demo_course(channel: Channel) -> Result<bool, tonic::Status> {
    let mut content = ContentServiceClient::new(channel);
    match content.get_course(GetCourseRequest { course_id: DEMO_COURSE.to_owned() }).await {
        Ok(_) => return Ok(false),
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(status),
    }
    content
        .create_course(CreateCourseRequest {
            course: Some(Course {
                course_id: DEMO_COURSE.to_owned(),
                title: "Arithmetic basics".to_owned(),
                description: "Addition, subtraction, multiplication and fractions.".to_owned(),
                create_time: None,
            }),
        })
        .await?;
    content
        .upsert_skills(UpsertSkillsRequest {
            course_id: DEMO_COURSE.to_owned(),
            skills: vec![
                skill("addition", "Addition", &[]),
                skill("subtraction", "Subtraction", &["addition"]),
                skill("multiplication", "Multiplication", &["addition"]),
                skill("fractions", "Fractions", &["multiplication", "subtraction"]),
            ],
        })
        .await?;
    use ItemKind::*;
    let items = vec![
        item("add-1", "addition", Numeric, "What is 7 + 5?", numeric(12.0), -2.0),
        item("add-2", "addition", Numeric, "What is 38 + 47?", numeric(85.0), -0.5),
        choice("add-3", "addition", "Which sum equals 100?", &["45 + 45", "64 + 36", "51 + 39"], 1, -1.0),
        item("add-4", "addition", Flashcard, "The result of an addition is called the …", text("sum"), -1.5),
        item("sub-1", "subtraction", Numeric, "What is 15 - 8?", numeric(7.0), -1.5),
        item("sub-2", "subtraction", Numeric, "What is 203 - 78?", numeric(125.0), 0.3),
        choice("sub-3", "subtraction", "Which difference is negative?", &["9 - 4", "4 - 9", "9 - 9"], 1, -0.5),
        item("mul-1", "multiplication", Numeric, "What is 6 × 7?", numeric(42.0), -1.0),
        item("mul-2", "multiplication", Numeric, "What is 12 × 15?", numeric(180.0), 0.5),
        item(
            "mul-3",
            "multiplication",
            Flashcard,
            "The result of a multiplication is called the …",
            text("product"),
            -0.8,
        ),
        choice("frac-1", "fractions", "Which fraction equals one half?", &["2/3", "3/6", "3/4", "1/3"], 1, 0.0),
        item("frac-2", "fractions", FreeText, "Write three quarters as a fraction.", text("3/4"), 0.4),
        item("frac-3", "fractions", Numeric, "What is 1/2 + 1/4 as a decimal?", numeric(0.75), 1.2),
        choice("frac-4", "fractions", "Which fraction is the largest?", &["3/8", "1/2", "5/12", "2/5"], 1, 1.0),
    ];
    content.upsert_items(UpsertItemsRequest { items }).await?;
    Ok(true)
}
