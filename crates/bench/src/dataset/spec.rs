//! The data set as a pure function of its spec: every course, skill, item and learner, their
//! enrolments and attempt histories are derived from the seed and an index, so `alp dataset`
//! and `alp load` agree on ids without sharing any state.

use std::f64::consts::PI;

use alp_proto::content::v1::{AnswerKey, Course, Item, ItemKind, NumericAnswer, Skill, answer_key};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The shape of a data set; `alp dataset` and `alp load` must be given the same values.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// Seed of the data set: ids, content, enrolments and histories follow from it.
    #[arg(long, default_value_t = 7)]
    pub dataset_seed: u64,
    /// Learners (at most 1,000,000).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub learners: u32,
    /// Items, spread evenly over the courses.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub items: u32,
    /// Courses.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub courses: u32,
    /// Skills per course, chained by prerequisites.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub skills_per_course: u32,
    /// Scales the attempt histories: 1.0 gives power users 20 attempts, regular learners 4 and
    /// casual ones 1 on average; 0 loads no history.
    #[arg(long, default_value_t = 1.0)]
    pub history_scale: f64,
}

/// Zipf exponent of popularity: courses' enrolments, items and search words.
pub const ZIPF_EXPONENT: f64 = 1.0;
/// Zipf exponent of learners' activity: gentler, since one person answers one item at a time (at
/// 100 000 learners the most active sends about 1/600 of all requests; with exponent 1 it would
/// send one in twelve).
pub const LEARNER_ZIPF_EXPONENT: f64 = 0.5;
/// Words in the synthetic vocabulary prompts are written in.
const VOCABULARY: usize = 4_000;
/// Days of history before the anchor time.
pub const HISTORY_DAYS: i64 = 30;

/// How a learner uses the product; the most active tenth are power users and the least active
/// three tenths casual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    Power,
    Regular,
    Casual,
}

impl Persona {
    /// Mean attempts in a history at scale 1.
    fn history_attempts(self) -> f64 {
        match self {
            Persona::Power => 20.0,
            Persona::Regular => 4.0,
            Persona::Casual => 1.0,
        }
    }
}

/// An attempt of a learner's history: `answer_offset_ms` after the start of the history window.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryAttempt {
    pub attempt_id: String,
    pub item_id: String,
    pub correct: bool,
    pub response_ms: i64,
    pub answer_offset_ms: i64,
}

impl DatasetSpec {
    /// A data set small enough for a test or the CI smoke run.
    pub fn tiny() -> Self {
        Self { dataset_seed: 7, learners: 300, items: 400, courses: 4, skills_per_course: 5, history_scale: 1.0 }
    }

    fn rng(&self, stream: u64, index: u64) -> StdRng {
        StdRng::seed_from_u64(mix(mix(self.dataset_seed ^ stream.rotate_left(32)) ^ index))
    }

    pub fn course_id(&self, course: u32) -> String {
        format!("course-{course:03}")
    }

    pub fn skill_id(&self, course: u32, skill: u32) -> String {
        format!("c{course:03}-s{skill:03}")
    }

    pub fn item_id(&self, course: u32, index: u32) -> String {
        format!("c{course:03}-i{index:05}")
    }

    pub fn learner_id(&self, learner: u32) -> String {
        format!("learner-{learner:07}")
    }

    /// Items of `course`: an even share, the remainder going to the first courses.
    pub fn items_in(&self, course: u32) -> u32 {
        self.items / self.courses + u32::from(course < self.items % self.courses)
    }

    pub fn course(&self, course: u32) -> Course {
        Course {
            course_id: self.course_id(course),
            title: format!("{} {}", title_case(&word(course as usize * 7 + 1)), course + 1),
            description: format!(
                "A generated course of {} items over {} skills.",
                self.items_in(course),
                self.skills_per_course
            ),
            create_time: None,
        }
    }

    /// Skills of a course: each after the one before it, some after one more earlier skill.
    pub fn skills(&self, course: u32) -> Vec<Skill> {
        let mut rng = self.rng(1, u64::from(course));
        (0..self.skills_per_course)
            .map(|s| {
                let mut prerequisites = Vec::new();
                if s > 0 {
                    prerequisites.push(self.skill_id(course, s - 1));
                    if s > 1 && rng.random_bool(0.3) {
                        prerequisites.push(self.skill_id(course, rng.random_range(0..s - 1)));
                    }
                }
                Skill {
                    skill_id: self.skill_id(course, s),
                    name: title_case(&word(1 + (course * self.skills_per_course + s) as usize % VOCABULARY)),
                    prerequisite_skill_ids: prerequisites,
                    ..Default::default()
                }
            })
            .collect()
    }

    /// The skill an item of a course practises: items come in skill order.
    pub fn skill_of(&self, course: u32, index: u32) -> u32 {
        (u64::from(index) * u64::from(self.skills_per_course) / u64::from(self.items_in(course).max(1))) as u32
    }

    pub fn item(&self, course: u32, index: u32) -> Item {
        let mut rng = self.rng(2, (u64::from(course) << 32) | u64::from(index));
        let skill = self.skill_of(course, index);
        let topic = words(&mut rng, 4);
        let prompt = format!("{} — {}?", title_case(&topic), words(&mut rng, 6));
        let explanation = words(&mut rng, 10);
        let difficulty =
            (normal(&mut rng) + f64::from(skill) / f64::from(self.skills_per_course) - 0.5).clamp(-4.0, 4.0);
        let roll = rng.random::<f64>();
        let (kind, key, choices) = if roll < 0.4 {
            let choices: Vec<String> = (0..4).map(|_| words(&mut rng, 2)).collect();
            (ItemKind::MultipleChoice, answer_key::Key::ChoiceIndex(rng.random_range(0..4)), choices)
        } else if roll < 0.7 {
            let value = f64::from(rng.random_range(0..1000_u32));
            (ItemKind::Numeric, answer_key::Key::Numeric(NumericAnswer { value, tolerance: 0.0 }), Vec::new())
        } else if roll < 0.9 {
            (ItemKind::Flashcard, answer_key::Key::Text(words(&mut rng, 1)), Vec::new())
        } else {
            (ItemKind::FreeText, answer_key::Key::Text(words(&mut rng, 2)), Vec::new())
        };
        Item {
            item_id: self.item_id(course, index),
            course_id: self.course_id(course),
            kind: kind as i32,
            prompt,
            choices,
            answer: Some(AnswerKey { key: Some(key) }),
            explanation,
            skill_ids: vec![self.skill_id(course, skill)],
            tags: vec![word(1 + skill as usize)],
            difficulty,
            ..Default::default()
        }
    }

    /// Learners are ranked by activity: index 0 is the most active.
    pub fn persona(&self, learner: u32) -> Persona {
        let rank = f64::from(learner) / f64::from(self.learners);
        if rank < 0.1 {
            Persona::Power
        } else if rank < 0.7 {
            Persona::Regular
        } else {
            Persona::Casual
        }
    }

    /// Courses the learner is enrolled in (one to three, popular courses more often), in the
    /// order of enrolment.
    pub fn enrolments(&self, learner: u32, courses: &Zipf) -> Vec<u32> {
        let mut rng = self.rng(3, u64::from(learner));
        let wanted = 1 + usize::from(rng.random_bool(0.3)) + usize::from(rng.random_bool(0.1));
        let mut enrolled: Vec<u32> = Vec::with_capacity(wanted);
        for _ in 0..wanted * 4 {
            let course = courses.sample(&mut rng) as u32;
            if !enrolled.contains(&course) {
                enrolled.push(course);
            }
            if enrolled.len() == wanted.min(self.courses as usize) {
                break;
            }
        }
        enrolled
    }

    pub fn course_popularity(&self) -> Zipf {
        Zipf::new(self.courses as usize, ZIPF_EXPONENT)
    }

    /// The learner's attempts in their first course over the history window, oldest first: new
    /// items in course order, with reviews of earlier ones mixed in; success follows a Rasch model
    /// of the learner's ability against the item's difficulty.
    pub fn history(&self, learner: u32, course: u32) -> Vec<HistoryAttempt> {
        let mut rng = self.rng(4, u64::from(learner));
        let mean = self.persona(learner).history_attempts() * self.history_scale;
        // Geometric-ish spread around the persona's mean, so histories differ in length.
        let count = if mean <= 0.0 { 0 } else { (-(1.0 - rng.random::<f64>()).ln() * mean).round() as usize };
        let count = count.min(self.items_in(course) as usize * 3);
        let ability = normal(&mut rng);
        let window_ms = HISTORY_DAYS * 86_400_000;
        let mut offsets: Vec<i64> = (0..count).map(|_| rng.random_range(0..window_ms)).collect();
        offsets.sort_unstable();
        let mut seen: Vec<u32> = Vec::new();
        offsets
            .into_iter()
            .enumerate()
            .map(|(k, offset)| {
                let index = if !seen.is_empty() && (seen.len() as u32 >= self.items_in(course) || rng.random_bool(0.35))
                {
                    seen[rng.random_range(0..seen.len())]
                } else {
                    let next = seen.len() as u32;
                    seen.push(next);
                    next
                };
                let difficulty = self.item(course, index).difficulty;
                let p = 1.0 / (1.0 + (difficulty - ability).exp());
                HistoryAttempt {
                    attempt_id: format!("h-{}-{k:04}", self.learner_id(learner)),
                    item_id: self.item_id(course, index),
                    correct: rng.random_bool(p.clamp(0.02, 0.98)),
                    response_ms: rng.random_range(2_000..40_000),
                    answer_offset_ms: offset,
                }
            })
            .collect()
    }
}

/// Zipf-distributed ranks 0..n (rank 0 the most popular), sampled by inverting the cumulative
/// weights.
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|rank| {
                total += (rank as f64).powf(-exponent);
                total
            })
            .collect();
        Self { cumulative }
    }

    fn vocabulary() -> &'static Zipf {
        static WORDS: std::sync::OnceLock<Zipf> = std::sync::OnceLock::new();
        WORDS.get_or_init(|| Zipf::new(VOCABULARY, ZIPF_EXPONENT))
    }

    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.random::<f64>() * total;
        self.cumulative.partition_point(|&c| c < u).min(self.cumulative.len() - 1)
    }
}

/// A word of the vocabulary people search for, Zipf-popular like the words in prompts.
pub fn search_word(rng: &mut impl Rng) -> String {
    word(Zipf::vocabulary().sample(rng))
}

/// `n` words drawn by popularity, space-separated.
fn words(rng: &mut impl Rng, n: usize) -> String {
    (0..n).map(|_| word(Zipf::vocabulary().sample(rng))).collect::<Vec<_>>().join(" ")
}

/// The `n`th word of the synthetic vocabulary: pronounceable, distinct, deterministic, and never
/// a common English word a search would ignore (two syllables or more and a final `n`).
pub fn word(n: usize) -> String {
    const ONSETS: [&str; 16] = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st"];
    const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];
    let mut n = n + ONSETS.len() * VOWELS.len();
    let mut word = String::new();
    loop {
        word.push_str(ONSETS[n % ONSETS.len()]);
        n /= ONSETS.len();
        word.push_str(VOWELS[n % VOWELS.len()]);
        n /= VOWELS.len();
        if n == 0 {
            break;
        }
    }
    word.push('n');
    word
}

fn title_case(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// SplitMix64's finaliser: spreads nearby seeds over the whole range.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_spec_gives_the_same_data() {
        let spec = DatasetSpec::tiny();
        let courses = spec.course_popularity();
        assert_eq!(spec.item(1, 17), spec.item(1, 17));
        assert_eq!(spec.history(5, 0), spec.history(5, 0));
        assert_eq!(spec.enrolments(9, &courses), spec.enrolments(9, &courses));
        let other = DatasetSpec { dataset_seed: 8, ..spec.clone() };
        assert_ne!(spec.item(1, 17).prompt, other.item(1, 17).prompt);
    }

    #[test]
    fn items_cover_the_requested_count_and_every_skill() {
        let spec = DatasetSpec { items: 403, ..DatasetSpec::tiny() };
        assert_eq!((0..spec.courses).map(|c| spec.items_in(c)).sum::<u32>(), 403);
        let skills: std::collections::HashSet<u32> = (0..spec.items_in(2)).map(|i| spec.skill_of(2, i)).collect();
        assert_eq!(skills.len() as u32, spec.skills_per_course);
    }

    #[test]
    fn skills_only_depend_on_earlier_skills() {
        let spec = DatasetSpec::tiny();
        for skill in spec.skills(1) {
            for prerequisite in &skill.prerequisite_skill_ids {
                assert!(prerequisite < &skill.skill_id, "{prerequisite} before {}", skill.skill_id);
            }
        }
    }

    #[test]
    fn zipf_favours_low_ranks_in_proportion() {
        let zipf = Zipf::new(100, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = [0_u32; 100];
        for _ in 0..200_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // Rank 1 is twice as popular as rank 2 and ten times rank 10.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.8..2.2).contains(&ratio), "{ratio}");
        let ratio = f64::from(counts[0]) / f64::from(counts[9]);
        assert!((8.5..11.5).contains(&ratio), "{ratio}");
    }

    #[test]
    fn histories_are_ordered_and_answer_earlier_items_again() {
        let spec = DatasetSpec { history_scale: 5.0, ..DatasetSpec::tiny() };
        let history = spec.history(0, 0);
        assert!(history.len() > 10, "a power user has a long history: {}", history.len());
        assert!(history.windows(2).all(|w| w[0].answer_offset_ms <= w[1].answer_offset_ms));
        let distinct: std::collections::HashSet<&str> = history.iter().map(|a| a.item_id.as_str()).collect();
        assert!(distinct.len() < history.len(), "some attempts are reviews");
        let none = DatasetSpec { history_scale: 0.0, ..DatasetSpec::tiny() };
        assert!(none.history(0, 0).is_empty());
    }

    #[test]
    fn words_are_distinct_and_searchable() {
        let words: std::collections::HashSet<String> = (0..VOCABULARY).map(word).collect();
        assert_eq!(words.len(), VOCABULARY);
        assert!(words.iter().all(|w| w.len() >= 5), "short words may be stop words");
    }
}
