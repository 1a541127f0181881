#!/usr/bin/env bash
# demo.sh - the main job: start one edge node on a free loopback port, run the
# paper's 9-turn scenario against it in tokenized mode, print the per-turn
# table, stop the node. Run through `make demo` (which sets up and builds).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/discedge
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
WORK=$(mktemp -d /tmp/discedge-demo.XXXXXX)
source scripts/nodes.sh
trap 'nodes_stop; rm -rf "$WORK"' EXIT

node_start edge-1 "$WORK"
echo
"$BIN" scenario scenarios/robotics-9turn.yaml --node "edge-1=$NODE_URL" --mode tokenized \
  --temperature 0 --seed 123 --n-predict 128
echo
echo "node log (one line per request):"
grep -E 'POST|GET' "$WORK/edge-1.log" | sed 's/^/  /'
