# nodes.sh - sourced by the demo and the benchmark: start nats-servers and
# discedge nodes on free loopback ports and stop them all (by PID) when the
# script exits, also on failure.
#   nats_cluster_start DIR N        the core: N clustered JetStream servers (domain "core",
#                                   accepting leaf nodes); sets NATS_URLS, LEAF_PORTS (arrays)
#   nats_leaf_start NAME DIR        an edge host's own server: a leaf of the core, with
#                                   JetStream domain NAME; sets LEAF_URL
#   node_start NAME DIR [options]   one discedge node; sets NODE_URL; logs in DIR/NAME.log
#   nodes_stop                      stops everything started (also on EXIT)
NATS_SERVER=${NATS_SERVER:-third_party/go/bin/nats-server}
STARTED_PIDS=()
nodes_stop() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  done
  STARTED_PIDS=()
}
trap nodes_stop EXIT

# N distinct free ports: all bound at once, so none is handed out twice
free_ports() {
  python3 -c 'import socket,sys; ss=[socket.socket() for _ in range(int(sys.argv[1]))]; [s.bind(("127.0.0.1",0)) for s in ss]; print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

wait_for() { # wait_for SECONDS PID COMMAND...: until COMMAND succeeds, while PID lives
  local secs=$1 pid=$2 i
  shift 2
  for i in $(seq 1 $((secs * 10))); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

nats_cluster_start() {
  local dir=$1 n=$2 i r ports
  read -r -a ports <<<"$(free_ports $((3 * n)))"
  local routes=("${ports[@]:0:n}") clients=("${ports[@]:n:n}")
  LEAF_PORTS=("${ports[@]:$((2 * n))}")
  NATS_URLS=()
  for i in $(seq 1 "$n"); do
    local d="$dir/core$i"
    mkdir -p "$d"
    {
      echo "server_name: core$i"
      echo "listen: 127.0.0.1:${clients[$((i - 1))]}"
      echo "jetstream { store_dir: \"$d/js\", domain: core }"
      echo "leafnodes { listen: 127.0.0.1:${LEAF_PORTS[$((i - 1))]} }"
      printf 'cluster { name: core, listen: 127.0.0.1:%s, routes: [' "${routes[$((i - 1))]}"
      for r in "${routes[@]}"; do printf '"nats://127.0.0.1:%s", ' "$r"; done
      echo '] }'
    } >"$d/nats.conf"
    "$NATS_SERVER" -c "$d/nats.conf" >"$d/nats.log" 2>&1 &
    STARTED_PIDS+=("$!")
    NATS_URLS+=("nats://127.0.0.1:${clients[$((i - 1))]}")
  done
  # JetStream is usable once the cluster has elected its metadata leader
  wait_for 30 "${STARTED_PIDS[-1]}" grep -qs "metadata leader" "$dir"/core*/nats.log ||
    { echo "the NATS cluster did not form (logs in $dir)" >&2; return 1; }
}

nats_leaf_start() {
  local name=$1 dir=$2 port p
  port=$(free_ports 1)
  mkdir -p "$dir/$name"
  {
    echo "server_name: $name"
    echo "listen: 127.0.0.1:$port"
    echo "jetstream { store_dir: \"$dir/$name/js\", domain: $name }"
    printf 'leafnodes { remotes: [ { urls: ['
    for p in "${LEAF_PORTS[@]}"; do printf '"nats://127.0.0.1:%s", ' "$p"; done
    echo '] } ] }'
  } >"$dir/$name/nats.conf"
  "$NATS_SERVER" -c "$dir/$name/nats.conf" >"$dir/$name/nats.log" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_for 30 "$!" grep -qs "JetStream using domains" "$dir/$name/nats.log" ||
    { echo "leaf $name did not join the core (log in $dir/$name)" >&2; return 1; }
  LEAF_URL="nats://127.0.0.1:$port"
}

node_start() {
  local name=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  build/discedge serve --model "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" --port 0 --node-id "$name" \
    --data-dir "$dir/$name.store" "$@" >"$dir/$name.out" 2>"$dir/$name.log" &
  local pid=$!
  STARTED_PIDS+=("$pid")
  if ! wait_for 60 "$pid" grep -qs 'listening on' "$dir/$name.out"; then
    echo "node $name did not start:" >&2
    cat "$dir/$name.log" >&2
    return 1
  fi
  NODE_URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$dir/$name.out")
  cat "$dir/$name.out"
}
