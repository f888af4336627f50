//! `alp bench quality`: the adaptive engine on simulated learners with known ground truth.
//! Seeded and single-threaded, so a run is reproducible; writes `quality.md` and
//! `quality-calibration.svg` to the output directory.

pub mod efficiency;
pub mod metrics;
pub mod population;
pub mod practice;
pub mod prediction;
mod report;
pub mod sm2;

use std::path::PathBuf;
use std::time::Instant;

use alp_scoring::model::ranking::RankingPolicy;
use rand::SeedableRng;
use rand::rngs::StdRng;

use self::population::{Population, Spec};

#[derive(Debug, Clone, clap::Args)]
pub struct QualityArgs {
    /// Where the report goes.
    #[arg(long, default_value = "docs")]
    pub out: PathBuf,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Learners in the recall-prediction experiment.
    #[arg(long, default_value_t = 100)]
    pub learners: usize,
    /// Days of study simulated per learner for recall prediction.
    #[arg(long, default_value_t = 150)]
    pub days: i64,
    /// Learners in the adaptive-practice experiment.
    #[arg(long, default_value_t = 400)]
    pub practice_learners: usize,
    /// New items each practice learner meets.
    #[arg(long, default_value_t = 240)]
    pub practice_items: usize,
    /// Learners in the scheduling-efficiency experiment.
    #[arg(long, default_value_t = 100)]
    pub efficiency_learners: usize,
    /// Days they study.
    #[arg(long, default_value_t = 120)]
    pub efficiency_days: i64,
    /// Minutes they study each day.
    #[arg(long, default_value_t = 10)]
    pub study_minutes: i64,
}

/// Sizes small enough for a test; the numbers mean little.
impl QualityArgs {
    pub fn tiny(out: PathBuf) -> Self {
        Self {
            out,
            seed: 1,
            learners: 3,
            days: 40,
            practice_learners: 20,
            practice_items: 20,
            efficiency_learners: 3,
            efficiency_days: 35,
            study_minutes: 5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct QualityReport {
    pub args: QualityArgs,
    pub prediction: prediction::PredictionResult,
    pub prediction_seconds: f64,
    /// With the per-learner target correction, and with a fixed target.
    pub practice: practice::PracticeResult,
    pub practice_fixed: practice::PracticeResult,
    pub practice_seconds: f64,
    pub efficiency: efficiency::EfficiencyResult,
    pub efficiency_seconds: f64,
}

pub fn run(args: &QualityArgs) -> anyhow::Result<QualityReport> {
    let spec = Spec { learners: args.learners, skills: 6, items_per_skill: 50 };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let started = Instant::now();
    tracing::info!(learners = args.learners, days = args.days, "recall prediction: simulating and fitting");
    let population = Population::generate(spec, &mut rng)?;
    let prediction = prediction::run(&population, args.days, 10, args.seed)?;
    let prediction_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    tracing::info!(learners = args.practice_learners, items = args.practice_items, "adaptive practice");
    let spec = Spec { learners: args.practice_learners, items_per_skill: 100, ..spec };
    let population = Population::generate(spec, &mut StdRng::seed_from_u64(args.seed + 1))?;
    let rounds = 10;
    let per_round = args.practice_items.div_ceil(rounds);
    let policy = RankingPolicy::default();
    let practice = practice::run(&population, &policy, rounds, per_round, args.seed);
    let fixed = RankingPolicy { target_gain: 0.0, ..policy };
    let practice_fixed = practice::run(&population, &fixed, rounds, per_round, args.seed);
    let practice_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    tracing::info!(learners = args.efficiency_learners, days = args.efficiency_days, "scheduling efficiency");
    let spec = Spec { learners: args.efficiency_learners, skills: 10, items_per_skill: 100 };
    let population = Population::generate(spec, &mut StdRng::seed_from_u64(args.seed + 2))?;
    let efficiency = efficiency::run(&population, args.efficiency_days, args.study_minutes, args.seed)?;
    let efficiency_seconds = started.elapsed().as_secs_f64();

    let report = QualityReport {
        args: args.clone(),
        prediction,
        prediction_seconds,
        practice,
        practice_fixed,
        practice_seconds,
        efficiency,
        efficiency_seconds,
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("quality.md"), report::markdown(&report))?;
    std::fs::write(args.out.join("quality-calibration.svg"), report::calibration_svg(&report.prediction))?;
    Ok(report)
}
