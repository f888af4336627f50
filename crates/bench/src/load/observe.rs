//! What the generator watches besides its own requests: CPU time and resident memory of the
//! processes under test (a process and its children, so PostgreSQL's backends count), and the
//! cache counters the services export on /metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Linux reports process times in ticks of 1/100 s (USER_HZ) on every architecture we run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Process trees to follow (`name=PID[,PID…]`) or a /metrics endpoint (`name=host:port`).
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

pub fn parse_pids(text: &str) -> Result<Named<Vec<u32>>, String> {
    let (name, pids) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected name=PID[,PID...]"))?;
    let value = pids
        .split(',')
        .map(|pid| pid.trim().parse().map_err(|_| format!("{text:?}: {pid:?} is not a process id")))
        .collect::<Result<Vec<u32>, String>>()?;
    Ok(Named { name: name.trim().to_owned(), value })
}

pub fn parse_address(text: &str) -> Result<Named<String>, String> {
    let (name, address) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected name=host:port"))?;
    if !address.contains(':') {
        return Err(format!("{text:?}: {address:?} is not host:port"));
    }
    Ok(Named { name: name.trim().to_owned(), value: address.trim().to_owned() })
}

/// The processes and endpoints sampled at the edges of every phase.
#[derive(Debug, Default)]
pub struct Watch {
    pub processes: Vec<Named<Vec<u32>>>,
    pub metrics: Vec<Named<String>>,
}

/// One process tree at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Proportional set size where the kernel reports it (memory shared between the processes of
    /// a tree, such as PostgreSQL's buffers, counted once), else resident set size.
    pub memory_bytes: u64,
}

/// Cache lookups a service has counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheCounts {
    pub hits: f64,
    pub misses: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// The generator itself.
    pub generator_cpu_seconds: f64,
    pub processes: BTreeMap<String, Usage>,
    pub caches: BTreeMap<String, CacheCounts>,
}

impl Watch {
    pub async fn sample(&self) -> Sample {
        let processes = self.processes.clone();
        let usage = tokio::task::spawn_blocking(move || {
            let table = process_table();
            let mut usage: BTreeMap<String, Usage> =
                processes.iter().map(|p| (p.name.clone(), tree_usage(&table, &p.value))).collect();
            usage.insert(String::new(), self_usage());
            usage
        })
        .await
        .unwrap_or_default();
        let mut caches = BTreeMap::new();
        for endpoint in &self.metrics {
            if let Some(counts) = scrape(&endpoint.value).await {
                caches.insert(endpoint.name.clone(), counts);
            }
        }
        let mut processes = usage;
        let generator = processes.remove("").unwrap_or_default();
        Sample { generator_cpu_seconds: generator.cpu_seconds, processes, caches }
    }
}

/// (pid, parent, usage) of every process on the machine.
fn process_table() -> Vec<(u32, u32, Usage)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (parent, usage) = read_process(&format!("/proc/{pid}"))?;
            Some((pid, parent, usage))
        })
        .collect()
}

fn self_usage() -> Usage {
    read_process("/proc/self").map(|(_, usage)| usage).unwrap_or_default()
}

/// The parent and usage of one process, from its `stat` (fields after the command name, which
/// may itself contain spaces and parentheses).
fn read_process(dir: &str) -> Option<(u32, Usage)> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let pages: u64 = fields.get(21)?.parse().ok()?;
    let memory_bytes = proportional_set_size(dir).unwrap_or(pages * 4096);
    Some((parent, Usage { cpu_seconds: ticks / TICKS_PER_SECOND, memory_bytes }))
}

fn proportional_set_size(dir: &str) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("{dir}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Processes and all their descendants, summed.
fn tree_usage(table: &[(u32, u32, Usage)], roots: &[u32]) -> Usage {
    let mut members = roots.to_vec();
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, parent, _) in table {
            if members.contains(parent) && !members.contains(pid) {
                members.push(*pid);
                grew = true;
            }
        }
    }
    table.iter().filter(|(pid, _, _)| members.contains(pid)).fold(Usage::default(), |sum, (_, _, usage)| Usage {
        cpu_seconds: sum.cpu_seconds + usage.cpu_seconds,
        memory_bytes: sum.memory_bytes + usage.memory_bytes,
    })
}

/// The cache counters of one /metrics endpoint; None when it cannot be read.
async fn scrape(address: &str) -> Option<CacheCounts> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(2), fetch).await.ok()??;
    Some(cache_counts(&body))
}

/// Sums `alp_cache_requests_total` over the caches of a service: hits in either level, misses.
pub fn cache_counts(exposition: &str) -> CacheCounts {
    let mut counts = CacheCounts::default();
    for line in exposition.lines().filter(|l| l.starts_with("alp_cache_requests_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        if labels.contains("result=\"miss\"") {
            counts.misses += value;
        } else if labels.contains("_hit\"") {
            counts.hits += value;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let usage = self_usage();
        assert!(usage.memory_bytes > 0);
        let table = process_table();
        let me = std::process::id();
        assert!(tree_usage(&table, &[me]).memory_bytes >= usage.memory_bytes / 2);
    }

    #[test]
    fn counts_hits_of_both_levels_and_misses() {
        let exposition = "# TYPE alp_cache_requests_total counter\n\
            alp_cache_requests_total{cache=\"items\",result=\"l1_hit\"} 90\n\
            alp_cache_requests_total{cache=\"items\",result=\"l2_hit\"} 5\n\
            alp_cache_requests_total{cache=\"items\",result=\"miss\"} 5\n\
            alp_cache_errors_total{cache=\"items\"} 1\n";
        assert_eq!(cache_counts(exposition), CacheCounts { hits: 95.0, misses: 5.0 });
    }

    #[test]
    fn names_what_is_wrong_with_a_watch() {
        assert_eq!(parse_pids("scheduler=42"), Ok(Named { name: "scheduler".into(), value: vec![42] }));
        assert_eq!(parse_pids("redis=1,2").map(|n| n.value), Ok(vec![1, 2]));
        assert!(parse_pids("scheduler").unwrap_err().contains("name=PID"));
        assert!(parse_pids("redis=1,x").unwrap_err().contains("\"x\" is not a process id"));
        assert!(parse_address("user=localhost").unwrap_err().contains("host:port"));
    }
}
