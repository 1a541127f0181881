#!/usr/bin/env bash
# run.sh - the single-node benchmark: the paper's 9-turn scenario in each mode
# (tokenized, raw, client-side), REPS repetitions interleaved by mode, with the
# paper's parameters (temperature 0, seed 123, n_predict 128). Writes one CSV
# per run under bench/out/ and prints the summary table (bench/summarize.py).
#   REPS=3 MODEL=models/... bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=bench/out/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
PID=
cleanup() { if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill "$PID"; wait "$PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

build/discedge serve --model "$MODEL" --port 0 --node-id bench --data-dir "$OUT/store" >"$OUT/node.out" 2>"$OUT/node.log" &
PID=$!
for _ in $(seq 1 600); do
  grep -q 'listening on' "$OUT/node.out" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/node.log" >&2; exit 1; }
  sleep 0.1
done
URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$OUT/node.out")
cat "$OUT/node.out"
# one unmeasured warm-up conversation (page cache, CPU backend)
build/discedge scenario scenarios/robotics-9turn.yaml --node "$URL" --n-predict 16 --quiet

for rep in $(seq 1 "$REPS"); do
  for mode in tokenized raw client-side; do
    echo "rep $rep/$REPS: $mode" >&2
    build/discedge scenario scenarios/robotics-9turn.yaml --node "bench=$URL" --mode "$mode" \
      --temperature 0 --seed 123 --n-predict 128 --quiet --csv "$OUT/$mode-$rep.csv"
  done
done
python3 bench/summarize.py "$OUT" | tee "$OUT/summary.md"
