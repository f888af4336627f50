# Sourced by scripts/capacity.sh: h2load_probe NAME ADDRESS ENDPOINT writes $results/NAME-h2load.json,
# h2load's closed-loop saturation (4 connections x 16 streams, the machine's threads, one pre-framed
# request from `alp load --write-body`, so one learner's hot path) for $step after $warmup. h2load
# counts HTTP statuses only, and every gRPC answer is HTTP 200, so the same body is sent with curl
# before and after, and its grpc-status (in the trailers) goes into the result: a server that
# answered errors fast would otherwise pass for a fast one. Needs: alp, shape, work, results,
# step, warmup.
h2load_probe() {
  local name=$1 address=$2 endpoint=$3
  local body="$work/$name.body" seconds=${step%s} warm=${warmup%s}
  local method
  method=$("$alp" load --endpoint "$endpoint" "${shape[@]}" --write-body "$body")
  local url="http://$address$method"
  grpc_status() {
    curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @"$body" -o /dev/null -D - "$url" | grep -oP 'grpc-status: \K[0-9]+' || echo none
  }
  local before after
  before=$(grpc_status)
  h2load -D "$seconds" --warm-up-time "$warm" -c 4 -m 16 -t "$(nproc)" -d "$body" \
    -H 'content-type: application/grpc' -H 'te: trailers' "$url" >"$work/$name-h2load.txt" 2>&1 || true
  after=$(grpc_status)
  local rps done failed
  rps=$(grep -oP 'finished in [0-9.]+s, \K[0-9.]+' "$work/$name-h2load.txt" || echo 0)
  done=$(grep -oP 'requests: .* \K[0-9]+(?= done)' "$work/$name-h2load.txt" || echo 0)
  failed=$(grep -oP 'succeeded, \K[0-9]+(?= failed)' "$work/$name-h2load.txt" || echo 0)
  cat >"$results/$name-h2load.json" <<JSON
{"requests_per_s": $rps, "done": $done, "failed": $failed, "connections": 4, "streams": 16,
 "seconds": $seconds, "method": "$method", "grpc_status_before": "$before", "grpc_status_after": "$after"}
JSON
  say "h2load $name: $rps/s (grpc-status before $before, after $after)"
}
