#!/usr/bin/env bash
# demo.sh - the main job: a small DisCEdge edge deployment on loopback, and a
# client that roams across it (the topology of docs/DEPLOY.md):
#   - the core: 3 clustered NATS JetStream servers (domain "core"), the commit
#     authority; the model's stream is replicated 3 ways;
#   - two edge hosts, each with its own nats-server (a leaf node of the core,
#     with its own JetStream domain and a local mirror of the model's stream)
#     and a discedge node reading from that mirror;
#   - the paper's roaming scenario: 9 turns, switching node at turns 3, 5, 7.
# Prints the per-turn table (which node answered, any wait for replication),
# then stops everything it started. Run through `make demo` (set-up and build).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/discedge-demo.XXXXXX)
source scripts/nodes.sh
trap 'nodes_stop; rm -rf "$WORK"' EXIT

echo "core: 3 clustered NATS JetStream servers"
nats_cluster_start "$WORK" 3
echo "  ${NATS_URLS[*]}"
# Two nodes on one 2-core host: one inference thread each, so they never
# oversubscribe the cores (ggml threads spin while they wait).
for edge in edge-1 edge-2; do
  nats_leaf_start "$edge" "$WORK"
  echo "$edge: leaf nats-server $LEAF_URL (JetStream domain $edge)"
  node_start "$edge" "$WORK" --store "$LEAF_URL" --store-core-domain core --store-replicas 3 --threads 1
  declare "URL_${edge/-/_}=$NODE_URL"
done
echo
build/discedge scenario scenarios/robotics-9turn-roaming.yaml --node "edge-1=$URL_edge_1" --node "edge-2=$URL_edge_2" \
  --mode tokenized --temperature 0 --seed 123 --n-predict 128
echo
echo "node logs (one line per request):"
grep -h 'POST' "$WORK"/edge-*.log | sort | sed 's/^/  /'
