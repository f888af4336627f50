//! ALP's benchmarks. `quality` measures the adaptive engine on simulated learners whose true
//! abilities, item difficulties and memory are known.

pub mod quality;
