#!/usr/bin/env bash
# demo.sh - the main job: start one edge node on a free loopback port, run the
# paper's 9-turn scenario against it in tokenized mode, print the per-turn
# table, stop the node. Run through `make demo` (which sets up and builds).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/discedge
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
WORK=$(mktemp -d /tmp/discedge-demo.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill "$PID"; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" serve --model "$MODEL" --port 0 --node-id edge-1 --data-dir "$WORK/store" \
  >"$WORK/node.out" 2>"$WORK/node.log" &
PID=$!
for _ in $(seq 1 600); do
  grep -q 'listening on' "$WORK/node.out" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/node.log" >&2; exit 1; }
  sleep 0.1
done
URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$WORK/node.out")
cat "$WORK/node.out"
echo
"$BIN" scenario scenarios/robotics-9turn.yaml --node "edge-1=$URL" --mode tokenized \
  --temperature 0 --seed 123 --n-predict 128 --csv "$WORK/demo.csv"
echo
echo "node log (one line per request):"
grep -E 'POST|GET' "$WORK/node.log" | sed 's/^/  /'
