#!/usr/bin/env bash
# demo.sh - the main job: a small DisCEdge deployment on loopback, and a client
# that roams across it.
#   - a core NATS JetStream cluster of 3 servers (the commit authority; the
#     model's stream is replicated 3 ways);
#   - two edge nodes (discedge serve), each preferring a different core server;
#   - the paper's roaming scenario: 9 turns, switching node at turns 3, 5, 7.
# Prints the per-turn table (which node answered, any wait for replication),
# then stops everything it started. Run through `make demo` (set-up and build).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/discedge-demo.XXXXXX)
source scripts/nodes.sh
trap 'nodes_stop; rm -rf "$WORK"' EXIT

echo "starting a 3-server NATS JetStream core cluster..."
nats_cluster_start "$WORK" 3
echo "  ${NATS_URLS[*]}"
IFS=, ; ALL="${NATS_URLS[*]}"; unset IFS
# Two nodes on one 2-core host: one inference thread each, so they never
# oversubscribe the cores (ggml threads spin while they wait).
node_start edge-1 "$WORK" --store "$ALL" --store-replicas 3 --threads 1
EDGE1=$NODE_URL
node_start edge-2 "$WORK" --store "${NATS_URLS[1]},${NATS_URLS[2]},${NATS_URLS[0]}" --store-replicas 3 --threads 1
EDGE2=$NODE_URL
echo
build/discedge scenario scenarios/robotics-9turn-roaming.yaml --node "edge-1=$EDGE1" --node "edge-2=$EDGE2" \
  --mode tokenized --temperature 0 --seed 123 --n-predict 128
echo
echo "node logs (one line per request):"
grep -h 'POST' "$WORK"/edge-*.log | sort | sed 's/^/  /'
