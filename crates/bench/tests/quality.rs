//! The quality benchmark end to end at toy sizes: it runs, writes its report, and its numbers
//! are sane. (The real figures come from the full run in docs/.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alp_bench::quality::{QualityArgs, run};

#[test]
fn a_tiny_run_writes_a_report_with_every_model() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(&QualityArgs::tiny(dir.path().to_owned())).unwrap();
    let names: Vec<&str> = report.prediction.scores.iter().map(|s| s.name).collect();
    assert_eq!(names, ["constant average", "SM-2", "FSRS-6 default", "ALP"]);
    assert!(report.prediction.test_reviews > 50, "{}", report.prediction.test_reviews);
    for s in &report.prediction.scores {
        assert!(s.log_loss.is_finite() && s.log_loss > 0.0, "{s:?}");
        assert!((0.0..=1.0).contains(&s.auc), "{s:?}");
    }
    assert!(report.practice.total_attempts == 20 * 20);
    assert!((0.0..=1.0).contains(&report.practice.realised));
    let md = std::fs::read_to_string(dir.path().join("quality.md")).unwrap();
    assert!(md.contains("| ALP |"), "{md}");
    let svg = std::fs::read_to_string(dir.path().join("quality-calibration.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 4);
}

#[test]
fn the_same_seed_gives_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let a = run(&QualityArgs::tiny(dir.path().to_owned())).unwrap();
    let b = run(&QualityArgs::tiny(dir.path().to_owned())).unwrap();
    assert_eq!(a.prediction.scores[3].log_loss, b.prediction.scores[3].log_loss);
    assert_eq!(a.practice.realised, b.practice.realised);
}
