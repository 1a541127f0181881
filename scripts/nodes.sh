# nodes.sh - sourced by the demo and the benchmark: start discedge nodes on
# free loopback ports and stop them (by PID) when the script exits.
#   node_start NAME DIR [serve options...]   sets NODE_URL; logs in DIR/NAME.log
#   nodes_stop                               stops every node started (also on EXIT)
NODE_PIDS=()
nodes_stop() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  done
  NODE_PIDS=()
}
trap nodes_stop EXIT

node_start() {
  local name=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  build/discedge serve --model "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" --port 0 --node-id "$name" \
    --data-dir "$dir/$name.store" "$@" >"$dir/$name.out" 2>"$dir/$name.log" &
  local pid=$!
  NODE_PIDS+=("$pid")
  for _ in $(seq 1 600); do
    NODE_URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$dir/$name.out" 2>/dev/null || true)
    [ -n "$NODE_URL" ] && { cat "$dir/$name.out"; return 0; }
    kill -0 "$pid" 2>/dev/null || { cat "$dir/$name.log" >&2; return 1; }
    sleep 0.1
  done
  echo "node $name did not start in 60 s" >&2
  return 1
}
