//! ALP's benchmarks. `quality` measures the adaptive engine on simulated learners whose true
//! abilities, item difficulties and memory are known; `dataset` loads a seeded data set into a
//! running suite and `load` drives it with an open-loop generator.

pub mod dataset;
pub mod load;
pub mod quality;
pub mod reference;
pub mod target;

/// The CPU model and core count, as far as the system says.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim)
                .map(String::from)
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {cores} cores")
}
