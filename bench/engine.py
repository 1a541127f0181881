"""engine.py - the LLM service near the hardware limit (issue 4), every node
figure next to the engine's bare cost measured in the same run
(bench/engine_bare.c, straight through the llama.cpp API).

  1. per-turn latency of the 9-turn scenario: tokenized with KV reuse,
     tokenized without (cache_prompt false), raw; ratio to the bare cost of
     the same work (prefill of the tokens the node prefilled + the same
     decode steps)
  2. overhead outside the engine per turn, from the node's own timings:
     total_ms - (queue_ms + prompt_ms + predicted_ms): HTTP, JSON, store
     read and commit, turn check
  3. concurrency sweep: N sessions running the scenario at once (fixed
     n_predict, EOS ignored, so every N does the same work per session):
     aggregate generated tokens/s, p50/p95 turn latency, peak RSS of the
     node, and the bare engine's lockstep batched throughput of the same shape
  4. spill: prefill against saving/restoring a sequence state on disk

usage: python3 bench/engine.py OUTDIR [--reps 3] [--sweep 1,2,4,8,16] [--skip-sweep]
Writes OUTDIR/engine.json and prints markdown tables."""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import Node  # noqa: E402

BIN = os.path.join(ROOT, "build", "discedge")
BARE = os.path.join(ROOT, "build", "engine_bare")
MODEL = os.environ.get("MODEL", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
SCENARIO = os.path.join(ROOT, "scenarios", "robotics-9turn.yaml")


def physical_cores():
    """Distinct (package, core) pairs, as the node counts them."""
    seen, cpu = set(), 0
    while os.path.exists("/sys/devices/system/cpu/cpu%d/topology/core_id" % cpu):
        t = "/sys/devices/system/cpu/cpu%d/topology/" % cpu
        seen.add((open(t + "physical_package_id").read(), open(t + "core_id").read()))
        cpu += 1
    return len(seen) or os.cpu_count() or 1


# node and bare engine use the same thread count
THREADS = os.environ.get("THREADS") or str(physical_cores())


def messages():
    out = []
    with open(SCENARIO) as f:
        inside = False
        for line in f:
            if line.startswith("messages:"):
                inside = True
            elif inside and line.strip().startswith("- "):
                out.append(json.loads(line.strip()[2:]))
    return out


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    t0 = time.perf_counter()
    c.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    ms = (time.perf_counter() - t0) * 1e3
    c.close()
    if r.status != 200:
        raise RuntimeError("HTTP %d: %s" % (r.status, data))
    return ms, data


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return data


def run_scenario(port, user, mode="tokenized", cache=True, n_predict=128, ignore_eos=False):
    sid, rows = None, []
    for turn, q in enumerate(messages(), 1):
        body = dict(prompt=q, user_id=user, turn=turn, mode=mode, temperature=0, seed=123, n_predict=n_predict,
                    cache_prompt=cache, ignore_eos=ignore_eos)
        if sid:
            body["session_id"] = sid
        ms, r = post(port, body)
        sid = r["session_id"]
        t = r["timings"]
        rows.append(dict(turn=turn, latency_ms=ms, total_ms=t["total_ms"], queue_ms=t["queue_ms"],
                         prompt_ms=t["prompt_ms"], predicted_ms=t["predicted_ms"], cache_n=t["cache_n"],
                         tokenize_ms=t["tokenize_ms"], store_read_ms=t["store_read_ms"],
                         store_commit_ms=t["store_commit_ms"],
                         prompt_n=t["prompt_n"], predicted_n=r["tokens_predicted"], eos=r["stopped_eos"],
                         context_tokens=r["context_tokens"]))
    return sid, rows


def trace(port, sid, user, rows):
    """The node's own session as engine_bare's input: per turn the exact
    input ids, the KV the node reused, the reply and its decode steps."""
    s = get(port, "/v1/sessions/%s?user_id=%s&include=turns" % (sid, user))
    turns, ids, out = s["turns"], [], []
    for t, row in zip(turns, rows):
        ids = ids + t["system"] + t["user"]
        # a node decodes every generated token but the last when it stops at
        # n_predict; at end-of-generation it decodes them all
        steps = len(t["reply"]) - (0 if row["eos"] else 1)
        out.append(dict(input=list(ids), cached=row["cache_n"], reply=t["reply"], decode_steps=steps))
        ids = ids + t["reply"] + t["end"]
    return dict(turns=out)


def bare(*args):
    p = subprocess.run([BARE] + [str(a) for a in args], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def per_turn(args, out):
    """Each repetition runs the three variants on one node, then the bare
    engine on that repetition's traces right away (the node idle), so every
    ratio pairs measurements a minute apart at most."""
    node = Node(BIN, MODEL, extra=["--threads", THREADS, "--ctx-size", "4096"]).start()
    res = {"tokenized+reuse": [], "tokenized, no reuse": [], "raw": []}
    try:
        run_scenario(node.port, "warmup", n_predict=16)
        for rep in range(args.reps):
            for name, mode, cache in (("tokenized+reuse", "tokenized", True),
                                      ("tokenized, no reuse", "tokenized", False), ("raw", "raw", True)):
                user = "u%d%s" % (rep, mode[0] + ("c" if cache else "n"))
                sid, rows = run_scenario(node.port, user, mode, cache)
                res[name].append(rows)
                if mode == "tokenized":
                    path = os.path.join(out, "trace-%s-%d.json" % ("reuse" if cache else "noreuse", rep))
                    with open(path, "w") as f:
                        json.dump(trace(node.port, sid, user, rows), f)
                    for row, b in zip(rows, bare("turns", MODEL, path, THREADS, 4096)):
                        row["bare_ms"] = b["bare_ms"]
                        row["ratio"] = row["latency_ms"] / b["bare_ms"]
                print("rep %d %s: %.0f ms" % (rep + 1, name, sum(r["latency_ms"] for r in rows)), file=sys.stderr)
    finally:
        node.cleanup()
    return res


def sweep(ns, out, reps):
    """Each N runs reps times, node then bare engine back to back, N
    interleaved across repetitions; ratios are paired within a repetition
    and the table shows medians (this machine's speed drifts by tens of
    percent over minutes)."""
    runs = {n: [] for n in ns}
    for rep in range(reps):
        for n in ns:
            runs[n].append(sweep_one(n, out, rep))
    results = []
    for n in ns:
        rs = runs[n]
        results.append(dict(
            n=n, errors=sum(r["errors"] for r in rs), reps=len(rs),
            tokens_per_s=statistics.median(r["tokens_per_s"] for r in rs),
            bare_tokens_per_s=statistics.median(r.get("bare_tokens_per_s", 0) for r in rs),
            staggered_tokens_per_s=statistics.median(r.get("staggered_tokens_per_s", 0) for r in rs),
            ratio=statistics.median(r.get("ratio", 0) for r in rs),
            ratio_min=min(r.get("ratio", 0) for r in rs),
            p50_ms=statistics.median(r["p50_ms"] for r in rs), p95_ms=statistics.median(r["p95_ms"] for r in rs),
            peak_rss_mib=max(r["peak_rss_mib"] for r in rs), runs=rs))
    return results


def sweep_one(n, out, rep):
    node = Node(BIN, MODEL, extra=["--threads", THREADS, "--ctx-size", "2048", "--parallel", str(n),
                                   "--kv-cache-sessions", str(n), "--queue", str(n)]).start()
    try:
        run_scenario(node.port, "warmup", n_predict=8, ignore_eos=True)
        lat, sids, rows0 = [], {}, {}
        errors = []

        def session(i):
            try:
                sid, rows = run_scenario(node.port, "s%d" % i, n_predict=64, ignore_eos=True)
                sids[i] = sid
                rows0[i] = rows
                lat.extend(r["latency_ms"] for r in rows)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(str(e))

        t0 = time.perf_counter()
        ts = [threading.Thread(target=session, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        rss = peak_rss_mib(node.proc.pid)
        tr = trace(node.port, sids[0], "s0", rows0[0]) if 0 in sids else None
    finally:
        node.cleanup()
    gen = sum(r["predicted_n"] for rows in rows0.values() for r in rows)
    row = dict(n=n, errors=len(errors), wall_s=wall, tokens_per_s=gen / wall, p50_ms=pct(lat, 50),
               p95_ms=pct(lat, 95), peak_rss_mib=rss)
    if tr:
        path = os.path.join(out, "trace-sweep-%d-%d.json" % (n, rep))
        with open(path, "w") as f:
            json.dump(tr, f)
        b = bare("batched", MODEL, path, THREADS, 2048, n)[0]
        row["bare_tokens_per_s"] = b["tokens_per_s"]
        row["ratio"] = row["tokens_per_s"] / b["tokens_per_s"]
        st = bare("staggered", MODEL, path, THREADS, 2048, n)[0]
        row["staggered_tokens_per_s"] = st["tokens_per_s"]
    print("sweep %s" % row, file=sys.stderr)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sweep", default="1,2,4,8,16")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-turns", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    result = {}
    if not args.skip_turns:
        result["turns"] = per_turn(args, args.out)
    if not args.skip_sweep:
        result["sweep"] = sweep([int(x) for x in args.sweep.split(",")], args.out, args.reps)
    result["spill"] = bare("spill", MODEL, THREADS, 4096, args.out)
    with open(os.path.join(args.out, "engine.json"), "w") as f:
        json.dump(result, f, indent=1)
    report(result)


def report(r):
    if "turns" in r:
        print("\n### Per-turn latency, 9-turn scenario (median of reps; ratio = node / bare engine)\n")
        names = list(r["turns"])
        print("| turn | " + " | ".join("%s ms | ratio" % n for n in names) + " | cached (reuse) |")
        print("|---|" + "---|---|" * len(names) + "---|")
        for i in range(9):
            cells = []
            for n in names:
                reps = r["turns"][n]
                cells.append("%.0f" % statistics.median(x[i]["latency_ms"] for x in reps))
                cells.append("%.3f" % statistics.median(x[i]["ratio"] for x in reps) if "ratio" in reps[0][i] else "-")
            cached = statistics.median(x[i]["cache_n"] for x in r["turns"]["tokenized+reuse"])
            print("| %d | %s | %d |" % (i + 1, " | ".join(cells), cached))
        cells = []
        for n in names:
            reps = r["turns"][n]
            cells.append("%.0f" % statistics.median(sum(t["latency_ms"] for t in x) for x in reps))
            cells.append("%.3f" % statistics.median(sum(t["latency_ms"] for t in x) / sum(t["bare_ms"] for t in x)
                                                    for x in reps) if "ratio" in reps[0][0] else "-")
        print("| all 9 | %s | |" % " | ".join(cells))
        for n in names:
            over = [x["total_ms"] - x["queue_ms"] - x["prompt_ms"] - x["predicted_ms"] for reps in [r["turns"][n]]
                    for rows in reps for x in rows]
            rows = [x for rows in r["turns"][n] for x in rows]
            print("\noverhead outside the engine, %s: median %.3f ms, p99 %.3f ms (%d turns); of which median "
                  "tokenize %.3f, store read %.3f, store commit (fsync) %.3f ms" %
                  (n, statistics.median(over), pct(over, 99), len(over),
                   statistics.median(x["tokenize_ms"] for x in rows), statistics.median(x["store_read_ms"] for x in rows),
                   statistics.median(x["store_commit_ms"] for x in rows)))
    if "sweep" in r:
        print("\n### Concurrency sweep (9-turn scenario per session, 64 tokens per turn, EOS ignored;"
              " medians of %d)\n" % r["sweep"][0]["reps"])
        print("| sessions | tok/s node | tok/s bare lockstep | node/bare (min) | tok/s bare staggered | p50 ms | p95 ms "
              "| peak RSS MiB | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for x in r["sweep"]:
            print("| %d | %.1f | %.1f | %.3f (%.3f) | %.1f | %.0f | %.0f | %.0f | %d |" % (
                x["n"], x["tokens_per_s"], x["bare_tokens_per_s"], x["ratio"], x["ratio_min"],
                x["staggered_tokens_per_s"], x["p50_ms"], x["p95_ms"], x["peak_rss_mib"], x["errors"]))
    print("\n### Spill: prefill vs a sequence state on disk\n")
    print("| tokens | state MiB | prefill ms | save ms (fsync) | restore warm ms | restore cold ms |")
    print("|---|---|---|---|---|---|")
    for x in r["spill"]:
        print("| %d | %.1f | %.1f | %.1f | %.1f | %.1f |" % (x["tokens"], x["state_bytes"] / 1048576.0,
                                                          x["prefill_ms"], x["save_ms"], x["restore_warm_ms"],
                                                          x["restore_cold_ms"]))


if __name__ == "__main__":
    main()
