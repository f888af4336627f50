//! The learner and item models as pure functions: FSRS-6 memory (through the `fsrs` crate),
//! Elo/Rasch ability and difficulty, the practice ranking and adaptive mock tests. No I/O here.

pub mod ability;
pub mod attempt;
pub mod fitting;
pub mod memory;
pub mod mock_test;
pub mod ranking;

pub const DEFAULT_RETENTION: f64 = 0.90;
