"""summarize.py OUT_DIR - per-turn medians of the benchmark CSVs, by mode.

For every mode and turn: median client-observed latency and its breakdown as
the node reported it (tokenize, prefill, decode, store), context tokens, and
request bytes; then the whole-run medians and the tokenized-vs-raw ratio."""
import csv
import glob
import os
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
rows = defaultdict(lambda: defaultdict(list))  # mode -> turn -> [row]
for path in sorted(glob.glob(os.path.join(out, "*.csv"))):
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["status"] != "200":
                sys.exit("%s: turn %s failed with %s" % (path, r["turn"], r["status"]))
            rows[r["mode"]][int(r["turn"])].append(r)

med = lambda rs, k: statistics.median(float(r[k]) for r in rs)  # noqa: E731
modes = [m for m in ("tokenized", "raw", "client-side") if m in rows]
print("| mode | turn | n | latency ms | tokenize ms | prefill ms | decode ms | store ms | context tok | generated | request B |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for m in modes:
    for t in sorted(rows[m]):
        rs = rows[m][t]
        print("| %s | %d | %d | %.1f | %.3f | %.1f | %.1f | %.3f | %d | %d | %d |" % (
            m, t, len(rs), med(rs, "latency_ms"), med(rs, "tokenize_ms"), med(rs, "prompt_ms"),
            med(rs, "predicted_ms"), med(rs, "store_ms"), med(rs, "context_tokens"), med(rs, "tokens_predicted"),
            med(rs, "request_bytes")))
print()
print("| mode | median latency ms (all turns) | median tokenize ms | median request B | total request B per run |")
print("|---|---:|---:|---:|---:|")
summary = {}
for m in modes:
    allr = [r for t in rows[m] for r in rows[m][t]]
    runs = len(rows[m][1])
    total = sum(float(r["request_bytes"]) for r in allr) / runs
    summary[m] = (med(allr, "latency_ms"), med(allr, "tokenize_ms"), med(allr, "request_bytes"), total)
    print("| %s | %.1f | %.3f | %d | %d |" % ((m,) + summary[m]))
if "tokenized" in summary and "raw" in summary:
    print()
    print("tokenized vs raw, median latency: %+.2f%%; median tokenize time: %.3f vs %.3f ms" % (
        100 * (summary["tokenized"][0] / summary["raw"][0] - 1), summary["tokenized"][1], summary["raw"][1]))
if "tokenized" in summary and "client-side" in summary:
    print("tokenized vs client-side, request bytes per run: %+.1f%%" % (
        100 * (summary["tokenized"][3] / summary["client-side"][3] - 1)))
