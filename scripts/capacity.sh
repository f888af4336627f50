#!/usr/bin/env bash
# Measures the suite's capacity and writes docs/capacity.md (protocol: ../shared/BENCH.md).
#
# Everything runs on this machine: a release build of the four services as separate processes,
# PostgreSQL with durable commits, a 6-node Redis Cluster, the data set loaded through the APIs,
# then for each endpoint and the mix a stepped open-loop run up to saturation; side by side, the
# bare references (a plain tonic fan-out of one Redis GET and three gRPC calls to upstream
# processes, and pgbench running SubmitAttempt's transaction), and h2load's closed-loop saturation of
# the fan-out and of NextItems beside the generator's. Results: docs/capacity/*.json and *.svg, then docs/capacity.md.
#
#   scripts/capacity.sh                  # the full run: about 65 minutes with the default 60 s steps
#                                        # and 100k learners already loaded (the load: 11 minutes)
#   ALP_CAPACITY_STEP=20s scripts/capacity.sh   # shorter steps: a quicker, rougher picture
#
# Knobs (environment): ALP_CAPACITY_LEARNERS (100000), ALP_CAPACITY_ITEMS (20000),
# ALP_CAPACITY_HISTORY (0.1: alp dataset's --history-scale; histories go through SubmitAttempt),
# ALP_CAPACITY_STEP (60s), ALP_CAPACITY_WARMUP (10s), ALP_CAPACITY_WORK (/tmp/alp-capacity: the
# database and the data-set checkpoint live there, so a second run skips the load),
# ALP_CAPACITY_ENDPOINTS (all), ALP_CAPACITY_OUT (docs); ALP_CAPACITY_HOLD=1 starts the suite, loads
# the data set and waits, for profiling by hand (the --watch flags are in $work/watch-args).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
learners=${ALP_CAPACITY_LEARNERS:-100000}
items=${ALP_CAPACITY_ITEMS:-20000}
history=${ALP_CAPACITY_HISTORY:-0.1}
step=${ALP_CAPACITY_STEP:-60s}
warmup=${ALP_CAPACITY_WARMUP:-10s}
work=${ALP_CAPACITY_WORK:-/tmp/alp-capacity}
out=${ALP_CAPACITY_OUT:-docs}
endpoints=${ALP_CAPACITY_ENDPOINTS:-"next-items submit-attempt get-progress get-item search-items mix"}
pg_port=55470
redis_base=7170
results=$out/capacity
say() { printf '\n== %s\n' "$*" >&2; }
mkdir -p "$work" "$results" "$work/logs"
chmod 755 "$work"

if ! command -v h2load >/dev/null 2>&1; then
  say "installing h2load (Debian's nghttp2-client)"
  apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq nghttp2-client)
fi

say "release build"
cargo build --release --quiet --bin alp
alp=$root/target/release/alp
# What was built, not what the tree holds when the report is written an hour later.
commit="$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"

# PostgreSQL, the Redis Cluster, and start_suite/stop_suite for the four services.
source scripts/capacity/suite.sh
source scripts/capacity/h2load.sh
start_suite "$alp"
shape=(--learners "$learners" --items "$items" --history-scale "$history")

say "data set: $learners learners, $items items (resumes from $work/dataset.json)"
"$alp" dataset "${shape[@]}" --checkpoint "$work/dataset.json" --quiet

if [ -n "${ALP_CAPACITY_HOLD:-}" ]; then
  say "suite running (scheduler 127.0.0.1:50051; PostgreSQL 127.0.0.1:$pg_port; Redis $redis_nodes); Ctrl-C stops it"
  printf '%s\n' "${watch[@]}" | paste -sd' ' >"$work/watch-args"
  sleep infinity
fi

# --- stepped runs up to saturation ------------------------------------------------------------
declare -A start=([next-items]=100 [submit-attempt]=50 [get-progress]=500 [get-item]=1000 [search-items]=50 [mix]=50)
for endpoint in $endpoints; do
  stop_suite
  start_suite "$alp"
  psql -d alp_scheduler -c 'SELECT pg_stat_statements_reset()' >/dev/null
  redis_reset_counts
  say "stress: $endpoint from ${start[$endpoint]}/s, steps of $step (a freshly started suite)"
  "$alp" load --endpoint "$endpoint" --scenario stress --rate "${start[$endpoint]}" --factor 1.4 \
    --duration "$step" --warmup "$warmup" "${shape[@]}" "${watch[@]}" --quiet --out "$results/$endpoint.json"
  # Statements and their execution time per service database over the whole run (warm-ups included).
  psql -d alp_scheduler -c "SELECT json_object_agg(replace(d.datname, 'alp_', ''),
      json_build_object('calls', s.calls, 'exec_ms', round(s.exec_ms::numeric, 1)))
    FROM (SELECT dbid, sum(calls) AS calls, sum(total_exec_time) AS exec_ms FROM pg_stat_statements GROUP BY dbid) s
    JOIN pg_database d ON d.oid = s.dbid WHERE d.datname LIKE 'alp_%'" >"$results/$endpoint-statements.json"
  redis_counts >"$results/$endpoint-redis.json"
done
if [[ " $endpoints " == *" next-items "* ]]; then
  stop_suite
  start_suite "$alp"
  h2load_probe next-items 127.0.0.1:50051 next-items
fi

# --- the bare references, in the same session -------------------------------------------------
# Three upstream processes, as NextItems calls user, content and scoring. The reference is started
# afresh for each generator, so that neither generator meets one the other overloaded.
say "reference: plain tonic fan-out (1 Redis GET + 3 gRPC calls to upstream processes)"
stop_suite
upstreams=() upstream_pids=()
for port in 50062 50063 50064; do
  ALP_LOG=warn "$alp" bench upstream --listen "127.0.0.1:$port" >>"$work/logs/upstream.log" 2>&1 &
  upstream_pids+=($!) upstreams+=("127.0.0.1:$port")
done
pids+=("${upstream_pids[@]}")
for port in 50062 50063 50064; do
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    for p in "${upstream_pids[@]}"; do
      kill -0 "$p" 2>/dev/null || { say "an upstream did not start: $work/logs/upstream.log"; exit 1; }
    done
    sleep 0.1
  done
done
start_reference() {
  ALP_LOG=warn "$alp" bench reference --listen 127.0.0.1:50061 --upstreams "$(IFS=,; echo "${upstreams[*]}")" \
    --redis-nodes "$redis_nodes" >>"$work/logs/reference.log" 2>&1 &
  reference=$!
  pids+=($reference)
  until (exec 3<>/dev/tcp/127.0.0.1/50061) 2>/dev/null; do sleep 0.1; done
}
start_reference
h2load_probe reference-fanout 127.0.0.1:50061 next-items
kill "$reference"; wait "$reference" 2>/dev/null || true
start_reference
# The generator's steps are fractions of h2load's saturation, so the report reads at once whether
# `alp load` reaches 90 % of it.
h2load_rps=$(python3 -c "import json; print(json.load(open('$results/reference-fanout-h2load.json'))['requests_per_s'])")
reference_rates=$(python3 -c "print(','.join(str(round($h2load_rps * f)) for f in (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)))")
"$alp" load --endpoint next-items --scenario steps --rates "$reference_rates" --duration "$step" --warmup "$warmup" \
  "${shape[@]}" --scheduler-addr 127.0.0.1:50061 --watch "reference=$reference" \
  --watch "upstreams=$(IFS=,; echo "${upstream_pids[*]}")" --watch "redis=$redis_pids" \
  --quiet --out "$results/reference-fanout.json" || true
kill "$reference" "${upstream_pids[@]}"

say "reference: pgbench, SubmitAttempt's transaction, 8 clients"
pgbench_seconds=$(( $(echo "$step" | tr -dc 0-9) ))
"$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -n -M prepared -c 8 -j 2 -T "$pgbench_seconds" \
  -f scripts/capacity/attempt.sql alp_reference >"$work/pgbench.txt" 2>&1
cat "$work/pgbench.txt" | grep -E 'tps|latency' >&2
tps=$(grep -oP 'tps = \K[0-9.]+' "$work/pgbench.txt" | head -n 1)
latency=$(grep -oP 'latency average = \K[0-9.]+' "$work/pgbench.txt" | head -n 1)
cat >"$results/reference-pgbench.json" <<JSON
{"clients": 8, "seconds": $pgbench_seconds, "tps": $tps, "latency_ms": $latency}
JSON

# --- the report --------------------------------------------------------------------------------
cat >"$results/run.json" <<JSON
{"commit": "$commit",
 "rustc": "$(rustc -V)", "postgres": "$("$pg_bin/postgres" -V)", "redis": "$(redis-server --version | cut -d' ' -f3)",
 "workers": "$(if [ "${ALP_CAPACITY_WORKERS:-chart}" = cores ]; then echo "one per core (tokio's default)"; else for s in scheduler user content scoring; do printf '%s %s, ' "$s" "${workers[$s]}"; done | sed 's/, $//'; fi)",
 "kernel": "$(uname -r)", "memory_gib": $(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo),
 "learners": $learners, "items": $items, "step": "$step", "warmup": "$warmup", "fresh_suite_per_endpoint": true,
 "attempts_loaded": $(grep -oP '"attempts": \K[0-9]+' "$work/dataset.json"),
 "postgres_rows": {"attempts": $(psql -d alp_scheduler -c 'SELECT count(*) FROM attempts'),
                   "memory_states": $(psql -d alp_scheduler -c 'SELECT count(*) FROM memory_states'),
                   "learners": $(psql -d alp_user -c 'SELECT count(*) FROM learners'),
                   "items": $(psql -d alp_content -c 'SELECT count(*) FROM items')}}
JSON
python3 scripts/capacity/report.py "$results" "$out/capacity.md"
say "written: $out/capacity.md"
