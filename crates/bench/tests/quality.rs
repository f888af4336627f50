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
    let names: Vec<&str> = report.efficiency.outcomes.iter().map(|o| o.scheduler.name()).collect();
    assert_eq!(names, ["SM-2", "FSRS-6 at 0.90", "ALP, default FSRS parameters", "ALP"]);
    for o in &report.efficiency.outcomes {
        // Every scheduler has the same daily time and uses it (the last answer of a day may run over).
        assert!(o.hours >= 35.0 * 5.0 / 60.0 && o.hours < 35.0 * 5.5 / 60.0, "{o:?}");
        assert!(o.remembered > 10.0 && o.remembered <= o.items_met, "{o:?}");
        assert!((0.0..=1.0).contains(&o.review_success), "{o:?}");
    }
    let md = std::fs::read_to_string(dir.path().join("quality.md")).unwrap();
    assert!(md.contains("| FSRS-6 at 0.90 |"), "{md}");
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
    assert_eq!(a.efficiency.outcomes[3].remembered, b.efficiency.outcomes[3].remembered);
}
