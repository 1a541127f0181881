"""ab_nodes.py - A/B of two node binaries on the 9-turn scenario (tokenized,
KV reuse, 128 tokens a turn, greedy, --threads 2), alternating per
repetition; per run the total of the node's own turn times (timings.total_ms).
usage: ab_nodes.py OLD_BINARY NEW_BINARY REPS"""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import Node  # noqa: E402

OLD, NEW, REPS = sys.argv[1], sys.argv[2], int(sys.argv[3])
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
msgs = re.findall(r'^  - "(.*)"$', open(os.path.join(ROOT, "scenarios", "robotics-9turn.yaml")).read(), re.M)
res = {"old": [], "new": []}
for rep in range(REPS):
    for tag, b in (("old", OLD), ("new", NEW)) if rep % 2 == 0 else (("new", NEW), ("old", OLD)):
        n = Node(b, MODEL, extra=("--threads", "2", "--ctx-size", "4096")).start()
        try:
            sid, tot = None, 0.0
            for i, m in enumerate(msgs, 1):
                f = dict(prompt=m, user_id="ab", turn=i, n_predict=128, temperature=0, seed=123)
                if sid: f["session_id"] = sid
                st, r = n.complete(**f)
                assert st == 200, r
                sid = r["session_id"]
                tot += r["timings"]["total_ms"]
            res[tag].append(tot)
            print(tag, rep, round(tot), "ms", flush=True)
        finally:
            n.cleanup()
ratios = [n / o for n, o in zip(res["new"], res["old"])]
print(json.dumps({"old_ms": [round(x) for x in res["old"]], "new_ms": [round(x) for x in res["new"]],
                  "new_over_old": [round(r, 3) for r in ratios], "mean": round(sum(ratios) / len(ratios), 3)}))
