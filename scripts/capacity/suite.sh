# Sourced by scripts/capacity.sh and scripts/capacity/ab.sh: starts PostgreSQL with durable
# commits (kept in $work/pg between runs) and an empty 6-node Redis Cluster, and defines
# start_suite BINARY / stop_suite for the four services as separate processes, with $watch set to
# the generator's --watch and --metrics flags. Needs: root, work, pg_port, redis_base, alp, say.
# The fixed ports below lie in Linux's ephemeral range (32768-60999): a client socket that happens
# to get one makes the next server that binds it fail ("address already in use"), which stopped two
# A/B series on 2026-12-06. Reserved, they are never handed out as ephemeral ports.
if [ "$(id -u)" = 0 ]; then
  echo "50051-50064,$pg_port" >/proc/sys/net/ipv4/ip_local_reserved_ports 2>/dev/null || true
fi
# --- PostgreSQL: durable commits, kept between runs ------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -d "$work/pg" ]; then
  mkdir -p "$work/pg" && [ "$(id -u)" = 0 ] && chown postgres "$work/pg"
  as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 >/dev/null
fi
touch "$work/logs/postgres.log" && [ "$(id -u)" = 0 ] && chown postgres "$work/logs/postgres.log"
# wal_compression as the README advises for production: full-page images are most of the WAL
# of random writes (docs/performance.md, 2026-12-07, eighth).
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -w -l "$work/logs/postgres.log" -o "-c listen_addresses=127.0.0.1 -p $pg_port \
  -k $work/pg -c fsync=on -c synchronous_commit=on -c wal_compression=lz4 -c max_connections=400 \
  -c shared_buffers=512MB -c shared_preload_libraries=pg_stat_statements" start >/dev/null
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

# Redis commands by name summed over the cluster's nodes since the last reset, as JSON; the
# cluster's own traffic (replication, health checks, topology) left out.
redis_reset_counts() {
  for node in "${nodes[@]}"; do redis-cli -p "${node##*:}" config resetstat >/dev/null; done
}
redis_counts() {
  for node in "${nodes[@]}"; do redis-cli -p "${node##*:}" info commandstats; done | python3 -c '
import json, sys
own = {"replconf", "ping", "info", "cluster", "config", "psync", "sync", "client", "hello", "command", "select"}
calls = {}
for line in sys.stdin:
    name, _, fields = line.strip().partition(":")
    if not name.startswith("cmdstat_"):
        continue
    command = name[len("cmdstat_"):].split("|")[0]
    if command not in own:
        calls[command] = calls.get(command, 0) + int(fields.split(",")[0].split("=")[1])
print(json.dumps(calls, sort_keys=True))'
}

# --- the suite: four processes, started afresh for each endpoint -----------------------------
# One endpoint's overload must not colour the next one's numbers (a suite recovering from overload
# is its own question: docs/performance.md).
declare -A port=([scheduler]=50051 [user]=50052 [content]=50053 [scoring]=50054)
declare -A metrics=([scheduler]=9471 [user]=9472 [content]=9473 [scoring]=9474)
# Runtime workers as the chart gives each pod: its CPU request rounded up (helm/alp/values.yaml:
# 750m, 500m, 600m, 1500m). ALP_CAPACITY_WORKERS=cores leaves tokio's default, one per core.
declare -A workers=([scheduler]=1 [user]=1 [content]=1 [scoring]=2)
watch=()
start_suite() {
  local binary=$1
  for service in content scoring user scheduler; do
    # An empty TOKIO_WORKER_THREADS is refused, so the variable is set or absent (env execs: same pid).
    local runtime=()
    [ "${ALP_CAPACITY_WORKERS:-chart}" = cores ] || runtime=("TOKIO_WORKER_THREADS=${workers[$service]}")
    env "${runtime[@]}" ALP_LOG=warn "$binary" serve "$service" --listen "127.0.0.1:${port[$service]}" \
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
