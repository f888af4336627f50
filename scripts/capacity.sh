#!/usr/bin/env bash
# Measures the suite's capacity and writes docs/capacity.md (protocol: ../shared/BENCH.md).
#
# Everything runs on this machine: a release build of the four services as separate processes,
# PostgreSQL with durable commits, a 6-node Redis Cluster, the data set loaded through the APIs,
# then for each endpoint and the mix a stepped open-loop run up to saturation; side by side, the
# bare references (a plain tonic fan-out of one Redis GET and three gRPC calls, and pgbench running
# SubmitAttempt's transaction). Results: docs/capacity/*.json and *.svg, then docs/capacity.md.
#
#   scripts/capacity.sh                  # the full run: 62 minutes with the default 60 s steps
#                                        # and 100k learners already loaded
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

say "release build"
cargo build --release --quiet --bin alp
alp=$root/target/release/alp

# --- PostgreSQL: durable commits, kept between runs ------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -d "$work/pg" ]; then
  mkdir -p "$work/pg" && [ "$(id -u)" = 0 ] && chown postgres "$work/pg"
  as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 >/dev/null
fi
touch "$work/logs/postgres.log" && [ "$(id -u)" = 0 ] && chown postgres "$work/logs/postgres.log"
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -w -l "$work/logs/postgres.log" -o "-c listen_addresses=127.0.0.1 -p $pg_port \
  -k $work/pg -c fsync=on -c synchronous_commit=on -c max_connections=400 -c shared_buffers=512MB \
  -c shared_preload_libraries=pg_stat_statements" start >/dev/null
pids=()
declare -A pid=()
cleanup() {
  for p in "${pids[@]}" "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
pg_pid=$(head -n 1 "$work/pg/postmaster.pid")
psql() { "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -qtA "$@"; }
for db in scheduler user content scoring reference; do
  psql -c "SELECT 1 FROM pg_database WHERE datname = 'alp_$db'" | grep -q 1 || psql -c "CREATE DATABASE alp_$db"
done
for service in scheduler user content scoring; do
  "$alp" migrate "$service" --database-url "postgres://postgres@127.0.0.1:$pg_port/alp_$service" >/dev/null
done
"$alp" migrate scheduler --database-url "postgres://postgres@127.0.0.1:$pg_port/alp_reference" >/dev/null
psql -d alp_scheduler -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null

# --- Redis Cluster: 3 primaries + 3 replicas, empty each run (it only holds caches) -----------
rm -rf "$work/redis" && mkdir -p "$work/redis"
nodes=()
for i in 0 1 2 3 4 5; do
  port=$((redis_base + i))
  mkdir -p "$work/redis/$port"
  (cd "$work/redis/$port" && exec redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 --save '' --appendonly no \
    --repl-diskless-sync-delay 0 --daemonize no >"$work/logs/redis-$port.log" 2>&1) &
  pids+=($!)
  nodes+=("127.0.0.1:$port")
done
for node in "${nodes[@]}"; do
  until redis-cli -h 127.0.0.1 -p "${node##*:}" ping >/dev/null 2>&1; do sleep 0.1; done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
until redis-cli -p "$redis_base" cluster info | grep -q 'cluster_state:ok'; do sleep 0.2; done
redis_nodes=$(IFS=,; echo "${nodes[*]}")
redis_pids=$(IFS=,; echo "${pids[*]}")

# --- the suite: four processes, started afresh for each endpoint -----------------------------
# One endpoint's overload must not colour the next one's numbers (a suite recovering from overload
# is its own question: docs/performance.md).
declare -A port=([scheduler]=50051 [user]=50052 [content]=50053 [scoring]=50054)
declare -A metrics=([scheduler]=9471 [user]=9472 [content]=9473 [scoring]=9474)
watch=()
start_suite() {
  for service in content scoring user scheduler; do
    ALP_LOG=warn "$alp" serve "$service" --listen "127.0.0.1:${port[$service]}" \
      --metrics-listen "127.0.0.1:${metrics[$service]}" \
      --database-url "postgres://postgres@127.0.0.1:$pg_port/alp_$service" --redis-nodes "$redis_nodes" \
      >>"$work/logs/$service.log" 2>&1 &
    pid[$service]=$!
  done
  for service in scheduler user content scoring; do
    until (exec 3<>"/dev/tcp/127.0.0.1/${port[$service]}") 2>/dev/null; do sleep 0.1; done
  done
  watch=()
  for service in scheduler user content scoring; do
    watch+=(--watch "$service=${pid[$service]}" --metrics "$service=127.0.0.1:${metrics[$service]}")
  done
  watch+=(--watch "postgres=$pg_pid" --watch "redis=$redis_pids")
}
stop_suite() {
  for service in "${!pid[@]}"; do kill "${pid[$service]}" 2>/dev/null || true; done
  for service in "${!pid[@]}"; do wait "${pid[$service]}" 2>/dev/null || true; done
  pid=()
}
start_suite
shape=(--learners "$learners" --items "$items" --history-scale "$history")

say "data set: $learners learners, $items items (resumes from $work/dataset.json)"
"$alp" dataset "${shape[@]}" --checkpoint "$work/dataset.json" --quiet

if [ -n "${ALP_CAPACITY_HOLD:-}" ]; then
  say "suite running (scheduler 127.0.0.1:50051; PostgreSQL 127.0.0.1:$pg_port; Redis $redis_nodes); Ctrl-C stops it"
  printf '%s\n' "${watch[@]}" | paste -sd' ' >"$work/watch-args"
  sleep infinity
fi

# --- stepped runs up to saturation ------------------------------------------------------------
declare -A start=([next-items]=100 [submit-attempt]=50 [get-progress]=500 [get-item]=1000 [search-items]=20 [mix]=50)
for endpoint in $endpoints; do
  stop_suite
  start_suite
  psql -d alp_scheduler -c 'SELECT pg_stat_statements_reset()' >/dev/null
  say "stress: $endpoint from ${start[$endpoint]}/s, steps of $step (a freshly started suite)"
  "$alp" load --endpoint "$endpoint" --scenario stress --rate "${start[$endpoint]}" --factor 1.4 \
    --duration "$step" --warmup "$warmup" "${shape[@]}" "${watch[@]}" --quiet --out "$results/$endpoint.json"
  # Statements and their execution time per service database over the whole run (warm-ups included).
  psql -d alp_scheduler -c "SELECT json_object_agg(replace(d.datname, 'alp_', ''),
      json_build_object('calls', s.calls, 'exec_ms', round(s.exec_ms::numeric, 1)))
    FROM (SELECT dbid, sum(calls) AS calls, sum(total_exec_time) AS exec_ms FROM pg_stat_statements GROUP BY dbid) s
    JOIN pg_database d ON d.oid = s.dbid WHERE d.datname LIKE 'alp_%'" >"$results/$endpoint-statements.json"
done

# --- the bare references, in the same session -------------------------------------------------
say "reference: plain tonic fan-out (1 Redis GET + 3 gRPC calls)"
ALP_LOG=warn "$alp" bench reference --listen 127.0.0.1:50061 --redis-nodes "$redis_nodes" >"$work/logs/reference.log" 2>&1 &
reference=$!
pids+=($reference)
until (exec 3<>/dev/tcp/127.0.0.1/50061) 2>/dev/null; do sleep 0.1; done
stop_suite
"$alp" load --endpoint next-items --scenario stress --rate 1000 --factor 1.4 --duration "$step" --warmup "$warmup" \
  "${shape[@]}" --scheduler-addr 127.0.0.1:50061 --watch "reference=$reference" --watch "redis=$redis_pids" \
  --quiet --out "$results/reference-fanout.json" || true
kill "$reference"

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
{"commit": "$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')",
 "rustc": "$(rustc -V)", "postgres": "$("$pg_bin/postgres" -V)", "redis": "$(redis-server --version | cut -d' ' -f3)",
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
