"""kv_memory.py - resident memory against the conversations and tokens a
node keeps (issue 15 item 4), and what keeping them outside the context
costs a turn.

Two nodes, same model, --ctx-size 4096, 2 threads, no disk spill
(--kv-spill-mib 0: only memory counts), 8 conversations kept:
  windows   --parallel 8 --kv-cache-sessions 8: one KV stream per kept
            conversation, a whole window each, reserved at start. This is
            the engine before issue 15 item 4 (it made max(--kv-cache-sessions,
            --parallel) streams), and what any server with one slot per kept
            conversation does.
  tokens    --parallel 4 --kv-cache-sessions 8 (the defaults): 4 streams; the
            other kept conversations wait in memory in the bytes their tokens
            need (src/llm/spill.c) and are copied back into a stream for their
            next turn.

Memory: after start, then after each of 8 conversations' first turn
(~T tokens each), then after each one's second turn: the process's RSS
(/proc/PID/status VmRSS), the tokens kept (/health engine.kv_slot_tokens +
kv_parked_tokens) and the parked bytes.

Cost: the same rounds of turns, one request at a time, alternating between
the two nodes turn by turn (the machine may be shared): with 8 conversations
visited round robin, every turn on `tokens` restores a parked state and parks
another; on `windows` none does. Per-turn latency (the node's own
timings.total_ms) medians and their ratio tokens / windows. Then 4
conversations at once on each (batched decoding): aggregate generated
tokens per second, ratio.

usage: python3 bench/kv_memory.py [--reps N] [--n-predict T] [OUT_DIR]
Prints a markdown report; OUT_DIR/kv_memory.json holds every figure."""
import argparse
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import Node  # noqa: E402

BIN = os.path.join(ROOT, "build", "discedge")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
CONFIGS = {"windows": ["--parallel", "8", "--kv-cache-sessions", "8"],
           "tokens": ["--parallel", "4", "--kv-cache-sessions", "8"]}
TOPICS = ["a forest", "a desert", "a glacier", "a harbour", "a volcano", "a canyon", "a meadow", "a reef"]


def rss_mib(node):
    with open("/proc/%d/status" % node.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def engine(node):
    st, h = node.request("GET", "/health")
    assert st == 200, h
    return h["engine"]


def turn(node, user, k, t, sids, n_predict):
    f = dict(prompt="Describe %s in detail." % TOPICS[k] if t == 1 else "Tell me more about it.", user_id=user,
             turn=t, n_predict=n_predict, ignore_eos=True, temperature=0)
    if t > 1:
        f["session_id"] = sids[k]
    st, r = node.complete(**f)
    assert st == 200, r
    sids[k] = r["session_id"]
    return r


def memory_row(node, label):
    e = engine(node)
    return {"at": label, "rss_mib": rss_mib(node), "kept_tokens": e["kv_slot_tokens"] + e["kv_parked_tokens"],
            "parked": e["kv_parked"], "parked_mib": e["kv_parked_bytes"] / 1048576.0,
            "streams_mib": e["kv_bytes"] / 1048576.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=256)
    ap.add_argument("out", nargs="?", default=None)
    a = ap.parse_args()
    common = ["--threads", "2", "--ctx-size", "4096", "--kv-spill-mib", "0"]
    nodes = {name: Node(BIN, MODEL, node_id=name, extra=common + extra).start() for name, extra in CONFIGS.items()}
    out = {"memory": {n: [] for n in nodes}, "turns": {n: [] for n in nodes}, "batched": {n: [] for n in nodes}}
    try:
        # memory, then the cost of round robin: both nodes step through the
        # same turns, alternating, one request at a time
        sids = {n: [None] * 8 for n in nodes}
        for n, node in nodes.items():
            out["memory"][n].append(memory_row(node, "start"))
        for t in range(1, 2 + a.reps):
            for k in range(8):
                for n, node in nodes.items():
                    r = turn(node, "m", k, t, sids[n], a.n_predict)
                    if t > 1:
                        out["turns"][n].append({"turn": t, "conv": k, "total_ms": r["timings"]["total_ms"],
                                                "cache_n": r["timings"]["cache_n"],
                                                "prompt_n": r["timings"]["prompt_n"]})
                    if t <= 2 and k in (0, 3, 7):
                        out["memory"][n].append(memory_row(node, "turn %d of %d conversations" % (t, k + 1)))
        for n, node in nodes.items():
            out["memory"][n].append(memory_row(node, "end"))
            out["restores"] = out.get("restores", {})
            out["restores"][n] = engine(node)["spill_restores"]
        # batched: 4 conversations at once, alternating configurations
        for rep in range(a.reps):
            for n, node in nodes.items():
                bs = [None] * 8
                res = {}

                def one(k):
                    r = turn(node, "b%d" % rep, k, 1, bs, 128)
                    res[k] = r["tokens_predicted"]

                t0 = time.monotonic()
                ths = [threading.Thread(target=one, args=(k,)) for k in range(4)]
                for th in ths:
                    th.start()
                for th in ths:
                    th.join()
                out["batched"][n].append(sum(res.values()) / (time.monotonic() - t0))
    finally:
        for node in nodes.values():
            node.stop()
            node.cleanup()
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "kv_memory.json"), "w") as f:
            json.dump(out, f, indent=1)
    print("### Resident memory against the conversations and tokens kept\n")
    print("ctx-size 4096, 8 conversations kept, %d-token replies, no disk spill.\n" % a.n_predict)
    print("| at | tokens kept | RSS windows (MiB) | RSS tokens (MiB) | parked (tokens) | parked MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for rw, rt in zip(out["memory"]["windows"], out["memory"]["tokens"]):
        print("| %s | %d | %.0f | %.0f | %d | %.1f |" % (rw["at"], rt["kept_tokens"], rw["rss_mib"], rt["rss_mib"],
                                                       rt["parked"], rt["parked_mib"]))
    print("\nKV streams reserved at start: windows %.0f MiB, tokens %.0f MiB.\n" %
          (out["memory"]["windows"][0]["streams_mib"], out["memory"]["tokens"][0]["streams_mib"]))
    mw = statistics.median(x["total_ms"] for x in out["turns"]["windows"])
    mt = statistics.median(x["total_ms"] for x in out["turns"]["tokens"])
    cw = statistics.median(x["cache_n"] for x in out["turns"]["windows"])
    ct = statistics.median(x["cache_n"] for x in out["turns"]["tokens"])
    print("### What a turn pays for it (8 conversations round robin, turns 2..%d)\n" % (1 + a.reps))
    print("| | windows | tokens | tokens / windows |")
    print("|---|---:|---:|---:|")
    print("| turn total_ms, median | %.0f | %.0f | %.3f |" % (mw, mt, mt / mw))
    print("| cache_n, median | %d | %d | |" % (cw, ct))
    print("| restores from memory | %d | %d | |" % (out["restores"]["windows"], out["restores"]["tokens"]))
    bw, bt = statistics.median(out["batched"]["windows"]), statistics.median(out["batched"]["tokens"])
    print("| 4 at once: generated tokens/s, median of %d | %.1f | %.1f | %.3f |" % (a.reps, bw, bt, bt / bw))


if __name__ == "__main__":
    main()
