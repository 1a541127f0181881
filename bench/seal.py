"""seal.py - what sealing stored context (serve --store-key) costs a turn.

One nats-server, two nodes on it: one plain, one sealed. The paper's 9-turn
scenario runs on both, interleaved turn by turn (which node goes first
alternates), at temperature 0 with a fixed seed, so both generate the same
tokens and only the store path differs. Per turn it records the node's own
timings: store read, store commit, and its whole time on the request.
The report compares sealed to plain as ratios within the run (the machine
is shared), and prints bench/seal_bench's per-record figures first.

usage: python3 bench/seal.py [--reps N] [--n-predict N] OUT_DIR"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NatsServer, Node  # noqa: E402
from engine import messages as prompts  # noqa: E402  (the scenario's user messages)

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
BIN = os.path.join(ROOT, "build", "discedge")
NATS = os.path.join(ROOT, "third_party", "go", "bin", "nats-server")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=64)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    print("Per record (build/seal_bench):\n")
    print(subprocess.run([os.path.join(ROOT, "build", "seal_bench")], check=True, capture_output=True,
                         text=True).stdout)
    work = tempfile.mkdtemp(prefix="dc-bench-seal-")
    nats = NatsServer(NATS, work).start()
    key = os.path.join(work, "store.key")
    subprocess.run([BIN, "keygen", key], check=True)
    common = ["--store", nats.url, "--threads", "1", "--ctx-size", "4096"]
    nodes = {}
    rows = []
    try:
        nodes[False] = Node(BIN, MODEL, os.path.join(work, "plain"), "plain", common).start()
        nodes[True] = Node(BIN, MODEL, os.path.join(work, "sealed"), "sealed", common + ["--store-key", key]).start()
        for rep in range(a.reps):
            sid = {}
            for t, text in enumerate(prompts(), 1):
                for sealed in ((False, True) if (t + rep) % 2 else (True, False)):
                    body = {"prompt": text, "user_id": "bench", "n_predict": a.n_predict, "temperature": 0,
                            "seed": 123, "turn": t}
                    if t > 1:
                        body["session_id"] = sid[sealed]
                    st, r = nodes[sealed].request("POST", "/completion", body)
                    assert st == 200, r
                    sid[sealed] = r["session_id"]
                    tm = r["timings"]
                    rows.append({"rep": rep, "turn": t, "sealed": sealed, "read_ms": tm["store_read_ms"],
                                 "commit_ms": tm["store_commit_ms"], "total_ms": tm["total_ms"],
                                 "tokens": r["tokens_predicted"]})
    finally:
        for n in nodes.values():
            n.cleanup()
        nats.kill()
        shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(a.out, "seal.json"), "w") as f:
        json.dump(rows, f, indent=1)
    med = statistics.median
    print("Per turn, 9-turn scenario over NATS, %d reps, %d-token replies (medians):\n" % (a.reps, a.n_predict))
    print("| | store read (ms) | store commit (ms) | read + commit (ms) | whole turn (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for sealed in (False, True):
        rs = [r for r in rows if r["sealed"] == sealed]
        print("| %s | %.3f | %.3f | %.3f | %.1f |" % ("sealed" if sealed else "plain", med(r["read_ms"] for r in rs),
              med(r["commit_ms"] for r in rs), med(r["read_ms"] + r["commit_ms"] for r in rs),
              med(r["total_ms"] for r in rs)))
    pairs = {}
    for r in rows:
        pairs.setdefault((r["rep"], r["turn"]), {})[r["sealed"]] = r
    store_ratio = med((p[True]["read_ms"] + p[True]["commit_ms"]) / (p[False]["read_ms"] + p[False]["commit_ms"])
                      for p in pairs.values())
    turn_ratio = med(p[True]["total_ms"] / p[False]["total_ms"] for p in pairs.values())
    same = all(p[True]["tokens"] == p[False]["tokens"] for p in pairs.values())
    print("\nsealed / plain, median of per-turn ratios: store read + commit %.3f, whole turn %.3f "
          "(same reply lengths: %s)" % (store_ratio, turn_ratio, same))


if __name__ == "__main__":
    main()
