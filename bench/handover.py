"""handover.py - what a move between nodes costs (issue 15): the paper's moving
client (scenarios/robotics-9turn-roaming.yaml, moves at turns 3, 5 and 7)
over two nodes sharing a nats-server on loopback, against the same turns on
one node that holds the session all along.

Variants, interleaved within each repetition (the order rotates):
  same     the 9 turns on one node (the reference: every turn's KV is there)
  none     roaming, warm-up off (--warm-sessions 0): a handover turn prefills
           the whole history
  warm     roaming, warm-up on (the default with a shared store)
  hint     roaming, automatic warm-up limited to a node that does not exist
           (--warm-peers), the client sending POST /v1/sessions/{id}/warm to
           the next node after the last turn before each move (--hint)
  client   roaming, client-side context (--mode client-side, the whole
           history in every request), warm-up off

The client pauses --think-ms between turns (a user reading and typing; the
time warm-up works in). Each pair of nodes has its own nats-server, so one
variant's commits are never warmed by another's nodes. Per handover turn the
ratio of its latency to the same turn's in `same` of the same repetition;
the medians, and each variant's total against `same` and `client`.

usage: handover.py OUT.json [--reps 3] [--n-predict 64] [--think-ms 2000] [--threads 1]"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import NatsServer, Node, stop_all  # noqa: E402

BIN = os.path.join(ROOT, "build", "discedge")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
NATS = os.path.join(ROOT, "third_party", "go", "bin", "nats-server")
ROAM = os.path.join(ROOT, "scenarios", "robotics-9turn-roaming.yaml")
SAME = os.path.join(ROOT, "scenarios", "robotics-9turn.yaml")
MOVES = (3, 5, 7)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--think-ms", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dc-handover-")
    servers, nodes, pairs = [], [], {}
    common = ["--threads", str(a.threads), "--ctx-size", "4096"]
    try:
        for name, extra in (("off", ["--warm-sessions", "0"]), ("on", []), ("hint", ["--warm-peers", "nobody"])):
            ns = NatsServer(NATS, work, name="nats-" + name).start()
            servers.append(ns)
            pair = []
            for edge in ("edge-1", "edge-2"):
                n = Node(BIN, MODEL, data_dir=os.path.join(work, name + "-" + edge), node_id=edge,
                         extra=["--store", ns.url] + common + extra).start()
                nodes.append(n)
                pair.append(n)
            pairs[name] = pair
        variants = [("same", "off", SAME, []), ("none", "off", ROAM, []), ("warm", "on", ROAM, []),
                    ("hint", "hint", ROAM, ["--hint"]), ("client", "off", ROAM, ["--mode", "client-side"])]
        runs = {v[0]: [] for v in variants}
        for rep in range(a.reps):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for tag, pair, scen, extra in order:
                e1, e2 = pairs[pair]
                out = os.path.join(work, "%s-%d.csv" % (tag, rep))
                cmd = [BIN, "scenario", scen, "--node", "edge-1=http://127.0.0.1:%d" % e1.port,
                       "--node", "edge-2=http://127.0.0.1:%d" % e2.port, "--n-predict", str(a.n_predict),
                       "--temperature", "0", "--ignore-eos", "--think-ms", str(a.think_ms), "--quiet",
                       "--user-id", "u-%s-%d" % (tag, rep), "--csv", out] + extra
                subprocess.run(cmd, check=True)
                with open(out) as f:
                    rows = list(csv.DictReader(f))
                lat = [float(r["latency_ms"]) for r in rows]
                runs[tag].append({"latency_ms": lat, "prompt_ms": [float(r["prompt_ms"]) for r in rows],
                                  "node": [r["answered_by"] for r in rows]})
                print("rep %d %-6s total %.0f ms; handover turns %s ms" % (
                    rep, tag, sum(lat), [round(lat[k - 1]) for k in MOVES]), flush=True)
        res = {"params": vars(a), "runs": runs, "summary": {}}
        for tag in runs:
            ratios = [runs[tag][r]["latency_ms"][k - 1] / runs["same"][r]["latency_ms"][k - 1]
                      for r in range(a.reps) for k in MOVES]
            tot = [sum(runs[tag][r]["latency_ms"]) for r in range(a.reps)]
            res["summary"][tag] = {
                "handover_over_same_median": round(statistics.median(ratios), 3),
                "handover_over_same": [round(x, 3) for x in ratios],
                "handover_prompt_ms_median": round(statistics.median(
                    runs[tag][r]["prompt_ms"][k - 1] for r in range(a.reps) for k in MOVES), 1),
                "total_ms_median": round(statistics.median(tot)),
                "total_over_same": round(statistics.median(
                    t / sum(runs["same"][r]["latency_ms"]) for r, t in enumerate(tot)), 3),
                "total_over_client": round(statistics.median(
                    t / sum(runs["client"][r]["latency_ms"]) for r, t in enumerate(tot)), 3)}
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print(json.dumps(res["summary"], indent=1))
    finally:
        stop_all(nodes, servers, work)


if __name__ == "__main__":
    main()
