#!/usr/bin/env bash
# run.sh - the benchmarks. First the single-node one: the paper's 9-turn scenario in each mode
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
source scripts/nodes.sh
node_start bench "$OUT"
URL=$NODE_URL
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

# Replication across nodes (NATS core cluster + two edge nodes): wire bytes
# per turn tokenized vs raw, handover latency, commit-to-visibility.
nodes_stop
python3 bench/replication.py --reps "$REPS" --topology leaf "$OUT" | tee "$OUT/replication.md"

# The engine (issue 4): per-turn latency with and without KV reuse against
# the bare llama.cpp cost of the same work, the concurrency sweep, spill.
python3 bench/engine.py --reps "$REPS" "$OUT/engine" | tee "$OUT/engine.md"
