//! A run's results: per step the latency percentiles, rates, errors by code, late sends and the
//! cost on the watched processes; the capacity figures derived from the steps; the table printed
//! at the end, the JSON written beside it and the latency-against-throughput plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::observe::Sample;
use super::pacer::{Latencies, PhaseStats};
use super::workload::Endpoint;
use crate::dataset::DatasetSpec;

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub endpoint: Endpoint,
    pub scenario: String,
    pub seed: u64,
    pub dataset: DatasetSpec,
    pub slo_p99_ms: f64,
    pub timeout_ms: f64,
    pub connections: usize,
    pub machine: String,
    pub started_unix_s: u64,
    pub steps: Vec<StepReport>,
    /// The highest rate of a valid step with p99 under the SLO and errors under 0.1 %.
    pub slo_capacity_rps: Option<f64>,
    /// The most successful answers per second any step achieved.
    pub saturation_rps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Latencies) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationReport {
    pub count: u64,
    pub latency_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// CPU cores the process tree kept busy on average.
    pub cpu_cores: f64,
    /// CPU time per successful request, in microseconds.
    pub cpu_us_per_request: f64,
    /// Memory at the end of the step: proportional set size (shared pages split between the
    /// processes sharing them), in MiB.
    pub memory_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub label: String,
    pub target_rps: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub late_sends: u64,
    /// How far behind schedule requests were sent, in ms (the generator's own health).
    pub send_lag_ms: Percentiles,
    pub completed: u64,
    pub ok: u64,
    /// Successful answers per second.
    pub achieved_rps: f64,
    pub error_ratio: f64,
    pub errors: BTreeMap<String, u64>,
    /// The first failure of each kind: the server's message, or the request wrongly answered.
    pub error_examples: BTreeMap<String, String>,
    pub latency_ms: Percentiles,
    pub by_operation: BTreeMap<String, OperationReport>,
    /// CPU cores the generator used.
    pub generator_cpu_cores: f64,
    pub processes: BTreeMap<String, ProcessReport>,
    /// Cache hits over lookups during the step, per service.
    pub cache_hit_ratio: BTreeMap<String, f64>,
    /// Why the step does not count (the generator fell behind, the target was not reached), if so.
    pub invalid: Option<String>,
    pub within_slo: bool,
}

impl StepReport {
    pub async fn from_stats(stats: &PhaseStats, slo_p99_ms: f64) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let phase = &stats.phase;
        let duration = phase.duration.as_secs_f64();
        let (sent, late, completed, ok) =
            (stats.sent.load(Relaxed), stats.late.load(Relaxed), stats.completed.load(Relaxed), stats.ok.load(Relaxed));
        let (all, by_kind) = stats.latencies();
        let samples = stats.samples().await;
        let (begin, end) = match samples.as_slice() {
            [begin, end] => (begin.clone(), end.clone()),
            _ => (Sample::default(), Sample::default()),
        };
        let processes = end
            .processes
            .iter()
            .filter_map(|(name, after)| {
                let before = begin.processes.get(name)?;
                let cpu = after.cpu_seconds - before.cpu_seconds;
                Some((
                    name.clone(),
                    ProcessReport {
                        cpu_cores: cpu / duration,
                        cpu_us_per_request: if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 },
                        memory_mib: after.memory_bytes as f64 / (1024.0 * 1024.0),
                    },
                ))
            })
            .collect();
        let cache_hit_ratio = end
            .caches
            .iter()
            .filter_map(|(name, after)| {
                let before = begin.caches.get(name)?;
                let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
                (hits + misses > 0.0).then(|| (name.clone(), hits / (hits + misses)))
            })
            .collect();
        let achieved = ok as f64 / duration;
        let failures = stats.errors();
        let error_ratio = if completed > 0 { (completed - ok) as f64 / completed as f64 } else { 0.0 };
        let latency = Percentiles::of(&all);
        let invalid = if (sent as f64) < 0.99 * phase.requests() as f64 {
            Some(format!("sent {sent} of {} requests", phase.requests()))
        } else if late as f64 > 0.001 * sent as f64 {
            Some(format!("{late} late sends ({:.2} %)", 100.0 * late as f64 / sent.max(1) as f64))
        } else if achieved < 0.99 * phase.rate {
            Some(format!("achieved {achieved:.0}/s of {:.0}/s", phase.rate))
        } else {
            None
        };
        let within_slo = invalid.is_none() && latency.p99 <= slo_p99_ms && error_ratio < 0.001;
        Self {
            label: phase.label.clone(),
            target_rps: phase.rate,
            duration_s: duration,
            sent,
            late_sends: late,
            send_lag_ms: Percentiles::of(&stats.send_lag()),
            completed,
            ok,
            achieved_rps: achieved,
            error_ratio,
            errors: failures.iter().map(|(kind, (n, _))| (kind.clone(), *n)).collect(),
            error_examples: failures.into_iter().map(|(kind, (_, example))| (kind, example)).collect(),
            by_operation: by_kind
                .iter()
                .map(|(kind, h)| {
                    (kind.name().to_owned(), OperationReport { count: h.len(), latency_ms: Percentiles::of(h) })
                })
                .collect(),
            latency_ms: latency,
            generator_cpu_cores: (end.generator_cpu_seconds - begin.generator_cpu_seconds) / duration,
            processes,
            cache_hit_ratio,
            invalid,
            within_slo,
        }
    }
}

impl LoadReport {
    pub fn finish(&mut self) {
        self.saturation_rps = self.steps.iter().map(|s| s.achieved_rps).fold(0.0, f64::max);
        self.slo_capacity_rps = self
            .steps
            .iter()
            .filter(|s| s.within_slo)
            .map(|s| s.target_rps)
            .fold(None, |m, r| Some(r.max(m.unwrap_or(0.0))));
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>7}  errors",
            "step", "target/s", "achieved", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "late", "gen cpu"
        );
        for step in &self.steps {
            let l = &step.latency_ms;
            let errors = if step.errors.is_empty() {
                "-".to_owned()
            } else {
                step.errors.iter().map(|(code, n)| format!("{code}={n}")).collect::<Vec<_>>().join(" ")
            };
            let mark = match (&step.invalid, step.within_slo) {
                (Some(_), _) => " (invalid)",
                (None, false) => " (over SLO)",
                (None, true) => "",
            };
            let _ = writeln!(
                out,
                "{:<14} {:>8.0} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>8.1} {:>6} {:>7.2}  {errors}{mark}",
                step.label,
                step.target_rps,
                step.achieved_rps,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                step.late_sends,
                step.generator_cpu_cores
            );
        }
        for step in self.steps.iter().filter(|s| !s.error_examples.is_empty()) {
            for (kind, example) in &step.error_examples {
                let _ = writeln!(out, "  {}: first {kind}: {example}", step.label);
            }
        }
        let _ = writeln!(
            out,
            "{}: saturation {:.0}/s; SLO capacity (p99 <= {} ms, errors < 0.1 %): {}",
            self.endpoint,
            self.saturation_rps,
            self.slo_p99_ms,
            self.slo_capacity_rps.map_or("none of the steps".to_owned(), |r| format!("{r:.0}/s"))
        );
        out
    }

    /// Latency percentiles against achieved throughput, one point per step (log latency axis).
    pub fn plot_svg(&self) -> String {
        let (width, height, margin) = (640.0, 400.0, 60.0);
        let x_max = self.steps.iter().map(|s| s.achieved_rps.max(s.target_rps)).fold(1.0, f64::max) * 1.05;
        let highest = self.steps.iter().map(|s| s.latency_ms.p999).fold(self.slo_p99_ms, f64::max);
        let (lo, hi) = (0.1_f64.log10(), (highest * 1.5).max(1.0).log10().ceil());
        let x = |v: f64| margin + v / x_max * (width - 2.0 * margin);
        let y = |ms: f64| height - margin - (ms.max(0.1).log10() - lo) / (hi - lo) * (height - 2.0 * margin);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <rect x=\"{margin}\" y=\"{margin}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n\
             <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"13\">{}: latency against throughput</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">successful requests per second</text>\n\
             <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">latency (ms, log scale)</text>\n",
            width - 2.0 * margin,
            height - 2.0 * margin,
            width / 2.0,
            self.endpoint,
            width / 2.0,
            height - 18.0,
            height / 2.0,
            height / 2.0
        );
        let mut decade = lo;
        while decade <= hi {
            let ms = 10_f64.powf(decade);
            let _ = writeln!(
                svg,
                "<line x1=\"{margin}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{ms}</text>",
                y(ms),
                width - margin,
                margin - 4.0,
                y(ms) + 4.0
            );
            decade += 1.0;
        }
        for i in 0..=4 {
            let v = x_max * f64::from(i) / 4.0;
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{v:.0}</text>",
                x(v),
                height - margin + 14.0
            );
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{margin}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#c00\" stroke-dasharray=\"4\"/><text x=\"{2}\" y=\"{3:.1}\" fill=\"#c00\" text-anchor=\"end\">SLO p99 {4} ms</text>",
            y(self.slo_p99_ms),
            width - margin,
            width - margin - 4.0,
            y(self.slo_p99_ms) - 4.0,
            self.slo_p99_ms
        );
        type Series = (&'static str, &'static str, fn(&Percentiles) -> f64);
        let series: [Series; 3] =
            [("p50", "#1b9e77", |p| p.p50), ("p99", "#d95f02", |p| p.p99), ("p99.9", "#7570b3", |p| p.p999)];
        for (k, (name, colour, pick)) in series.iter().enumerate() {
            let points: Vec<String> =
                self.steps.iter().map(|s| format!("{:.1},{:.1}", x(s.achieved_rps), y(pick(&s.latency_ms)))).collect();
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
                points.join(" "),
                margin + 8.0,
                margin + 16.0 + 14.0 * k as f64
            );
            for point in &points {
                let (px, py) = point.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(svg, "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>");
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}
