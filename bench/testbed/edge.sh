#!/usr/bin/env bash
# edge.sh - DisCEdge on the testbed's hosts (bench/testbed/net.sh), one
# scenario run, bytes counted on every host's interface.
#
#   bench/testbed/edge.sh [--profile lan|wan|mobile] [--edges N] [--out DIR] -- SCENARIO-ARGS...
#
# Hosts: core (3 clustered JetStream servers, domain "core"), edge1..N (each
# its leaf nats-server with a mirror and a `discedge serve --threads 1`),
# client (runs `discedge scenario` with SCENARIO-ARGS; nodes are named
# edge-1..edge-N). Profiles:
#   lan     no shaping, no added delay (the paper's setting)
#   wan     20 ms one way between every edge host and the core
#   mobile  wan, plus the client's link at 2 Mbit/s and 40 ms one way
# Delay is relay.py on the TCP connections that cross those links (edge leaf
# to core; client to edges); bandwidth is tc tbf. Everything is torn down at
# exit, also on failure. Writes DIR/bytes.tsv (host, tx, rx for the run) and
# whatever the scenario writes (e.g. --csv DIR/turns.csv).
set -euo pipefail
cd "$(dirname "$0")/../.."
NET=bench/testbed/net.sh
RELAY=bench/testbed/relay.py
NATS=${NATS_SERVER:-third_party/go/bin/nats-server}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PROFILE=lan EDGES=2 OUT=bench/out/testbed-$(date -u +%Y%m%dT%H%M%SZ)
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --edges) EDGES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --) shift; break ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  lan) WAN_MS=0 CLIENT_MS=0 CLIENT_RATE=off ;;
  wan) WAN_MS=20 CLIENT_MS=0 CLIENT_RATE=off ;;
  mobile) WAN_MS=20 CLIENT_MS=40 CLIENT_RATE=2mbit ;;
  *) echo "edge.sh: unknown profile $PROFILE" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

in_ns() { local h=$1; shift; ip netns exec "dctb-$h" "$@"; }
CORE=10.77.0.1

# Waits until FILE has PATTERN, while PID lives (up to SECS).
wait_log() {
  local secs=$1 pid=$2 file=$3 pat=$4 i
  for i in $(seq 1 $((secs * 10))); do
    grep -qs "$pat" "$file" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "edge.sh: no \"$pat\" in $file" >&2
  tail -20 "$file" >&2 || true
  return 1
}

cleanup() { $NET down; }
trap cleanup EXIT
$NET up "$EDGES" >/dev/null

# the core: client 4222+i, routes 6222+i, leaf nodes 7422+i on the core host
for i in 1 2 3; do
  d=$OUT/core$i
  mkdir -p "$d"
  cat >"$d/nats.conf" <<EOF
server_name: core$i
listen: $CORE:$((4221 + i))
jetstream { store_dir: "$d/js", domain: core }
leafnodes { listen: $CORE:$((7421 + i)) }
cluster { name: core, listen: $CORE:$((6221 + i)), routes: ["nats://$CORE:6222", "nats://$CORE:6223", "nats://$CORE:6224"] }
EOF
  in_ns core "$NATS" -c "$d/nats.conf" >"$d/nats.log" 2>&1 &
done
wait_log 30 $! "$OUT/core3/nats.log" "metadata leader" ||
  wait_log 30 $! "$OUT/core1/nats.log" "metadata leader"

for e in $(seq 1 "$EDGES"); do
  host=edge$e addr=10.77.0.$((10 + e)) d=$OUT/edge$e
  mkdir -p "$d"
  # the edge host's way to the core: a relay adding the WAN's one-way delay
  in_ns $host python3 $RELAY serve 127.0.0.1:17422 $CORE:7422 --delay-ms $WAN_MS >"$d/relay.log" 2>&1 &
  cat >"$d/nats.conf" <<EOF
server_name: edge$e
listen: 127.0.0.1:4222
jetstream { store_dir: "$d/js", domain: edge$e }
leafnodes { remotes: [ { urls: ["nats://127.0.0.1:17422"] } ] }
EOF
  wait_log 10 $! "$d/relay.log" "listening"
  in_ns $host "$NATS" -c "$d/nats.conf" >"$d/nats.log" 2>&1 &
  wait_log 30 $! "$d/nats.log" "JetStream using domains"
  in_ns $host build/discedge serve --model "$MODEL" --host $addr --port 8080 --node-id edge-$e --threads 1 \
    --data-dir "$d/data" --store nats://127.0.0.1:4222 --store-core-domain core --store-replicas 3 \
    >"$d/node.out" 2>"$d/node.log" &
  wait_log 60 $! "$d/node.out" "listening on"
  # the client's way to this edge
  in_ns client python3 $RELAY serve 127.0.0.1:$((18080 + e)) $addr:8080 --delay-ms $CLIENT_MS \
    >"$OUT/client-relay$e.log" 2>&1 &
  wait_log 10 $! "$OUT/client-relay$e.log" "listening"
done
$NET shape client "$CLIENT_RATE"

nodes=()
for e in $(seq 1 "$EDGES"); do nodes+=(--node "edge-$e=http://127.0.0.1:$((18080 + e))"); done
hosts=(core client $(seq -f 'edge%g' 1 "$EDGES"))
declare -A before
for h in "${hosts[@]}"; do before[$h]=$($NET bytes $h); done
in_ns client build/discedge scenario "$@" "${nodes[@]}"
printf 'host\ttx_bytes\trx_bytes\n' >"$OUT/bytes.tsv"
for h in "${hosts[@]}"; do
  read -r t0 r0 <<<"${before[$h]}"
  read -r t1 r1 <<<"$($NET bytes $h)"
  printf '%s\t%d\t%d\n' "$h" $((t1 - t0)) $((r1 - r0)) >>"$OUT/bytes.tsv"
done
column -t "$OUT/bytes.tsv"
echo "edge.sh: profile $PROFILE, $EDGES edge hosts; outputs in $OUT"
