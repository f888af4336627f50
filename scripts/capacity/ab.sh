#!/usr/bin/env bash
# A against B, interleaved (BENCH.md's protocol, step 6): two builds of alp serve the same
# endpoint at the same rate in the order A B B A A B, each on a freshly started suite over the
# same PostgreSQL and Redis Cluster as scripts/capacity.sh (whose data set must be loaded:
# run that first, or ALP_CAPACITY_HOLD=1 scripts/capacity.sh once). Prints the medians and
# ranges of p50, p99 and CPU per request, and writes $ALP_AB_OUT/<endpoint>-<rate>.json.
#
#   scripts/capacity/ab.sh /tmp/old/target/release/alp target/release/alp submit-attempt 100
#
# Knobs: ALP_AB_DURATION (60s), ALP_AB_WARMUP (10s), ALP_AB_OUT (target/ab), ALP_AB_BEFORE (a
# command run with the side, A or B, before each run, with PostgreSQL up and the services
# stopped: e.g. to put that side's schema in place when B migrates), and scripts/capacity.sh's
# ALP_CAPACITY_LEARNERS, _ITEMS, _HISTORY and _WORK. Keep the seven runs within the caches'
# 10-minute entries (warm-up plus duration at most about 75 s): the warm run fills them once,
# and in longer series the last run, always a B, meets them expired.
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 ALP_A ALP_B ENDPOINT RATE" >&2; exit 2; }
a=$(realpath "$1")
b=$(realpath "$2")
endpoint=$3
rate=$4
cd "$(dirname "$0")/../.."
root=$PWD
work=${ALP_CAPACITY_WORK:-/tmp/alp-capacity}
out=${ALP_AB_OUT:-target/ab}
duration=${ALP_AB_DURATION:-60s}
warmup=${ALP_AB_WARMUP:-10s}
shape=(--learners "${ALP_CAPACITY_LEARNERS:-100000}" --items "${ALP_CAPACITY_ITEMS:-20000}"
  --history-scale "${ALP_CAPACITY_HISTORY:-0.1}")
[ -f "$work/dataset.json" ] || { echo "no data set in $work: run scripts/capacity.sh first" >&2; exit 1; }
pg_port=55470
redis_base=7170
alp=$b
say() { printf '\n== %s\n' "$*" >&2; }
mkdir -p "$out/runs" "$work/logs"
source scripts/capacity/suite.sh

# Vacuumed and analysed first, so that autovacuum does not choose one run to be slower (on
# 2026-12-06 a busy PostgreSQL raised single runs' CPU per request by a fifth or more).
"$pg_bin/vacuumdb" -h 127.0.0.1 -p "$pg_port" -U postgres --all --analyze --quiet

runs=()
# An unmeasured run first: the request stream is the same every run, so the first would otherwise
# meet an empty Redis and the caches' cold misses, and always on side A.
for side in W A B B A A B; do
  binary=$a
  [ "$side" = B ] && binary=$b
  stop_suite
  if [ -n "${ALP_AB_BEFORE:-}" ]; then
    # The unmeasured warm run is A's.
    $ALP_AB_BEFORE "$([ "$side" = B ] && echo B || echo A)"
  fi
  start_suite "$binary"
  result="$out/runs/$endpoint-$rate-${#runs[@]}-$side.json"
  say "$side: $endpoint at $rate/s for $duration ($binary)"
  "$binary" load --endpoint "$endpoint" --scenario baseline --rate "$rate" --duration "$duration" \
    --warmup "$warmup" "${shape[@]}" "${watch[@]}" --quiet --out "$result" >/dev/null
  [ "$side" = W ] || runs+=("$side=$result")
  # The next run starts from an empty outbox: what this one committed is delivered first (and a
  # build that reads the outbox differently never meets the other's rows).
  for _ in $(seq 600); do [ "$(psql -d alp_scheduler -c 'SELECT COUNT(*) FROM outbox')" = 0 ] && break; sleep 0.1; done
done
stop_suite
python3 - "$out/$endpoint-$rate.json" "$a" "$b" "${runs[@]}" <<'PY'
import json, statistics, sys
target, a, b, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sides = {"A": [], "B": []}
for run in runs:
    side, path = run.split("=", 1)
    step = json.load(open(path))["steps"][0]
    cpu = sum(p["cpu_us_per_request"] for p in step["processes"].values())
    sides[side].append({"p50_ms": step["latency_ms"]["p50"], "p99_ms": step["latency_ms"]["p99"],
                        "cpu_us_per_request": cpu, "achieved_rps": step["achieved_rps"],
                        "errors": sum(step["errors"].values()), "late_sends": step["late_sends"],
                        "by_process": {k: p["cpu_us_per_request"] for k, p in step["processes"].items()}})
summary = {"a": a, "b": b, "runs": sides, "median": {}}
print(f"{'':>20} {'A median [range]':>26} {'B median [range]':>26} {'B/A':>6}")
for key in ["p50_ms", "p99_ms", "cpu_us_per_request"]:
    va, vb = [r[key] for r in sides["A"]], [r[key] for r in sides["B"]]
    ma, mb = statistics.median(va), statistics.median(vb)
    summary["median"][key] = {"a": ma, "b": mb, "ratio": mb / ma if ma else None,
                              "ranges_overlap": not (max(vb) < min(va) or max(va) < min(vb))}
    print(f"{key:>20} {ma:>10.2f} [{min(va):.2f}–{max(va):.2f}] {mb:>10.2f} [{min(vb):.2f}–{max(vb):.2f}] "
          f"{mb / ma if ma else float('nan'):>6.2f}{'' if summary['median'][key]['ranges_overlap'] else '  (ranges apart)'}")
for side in "AB":
    processes = sides[side][0]["by_process"].keys()
    print(side, "CPU µs/request by process (median):",
          ", ".join(f"{p} {statistics.median(r['by_process'][p] for r in sides[side]):,.0f}" for p in processes))
json.dump(summary, open(target, "w"), indent=1)
PY
