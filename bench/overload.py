"""overload.py - goodput at full load and under overload, on the same two nodes.

Why: a node that refuses work (429) must not lose the throughput it has. The
figure that matters is completed turns per second: under 4x overload it
should stay at >= 90% of what the same nodes complete at exactly full load.

Set-up: two nodes on one nats-server, each `--threads 1 --parallel P --queue Q`
(default 4 and 4). "Full load" is as many clients as the two nodes have
sequences (2P): every sequence busy, nobody refused. "Overload" is F times as
many (default 4x). Phases alternate (full, over, full, over, ...) so that both
see the same machine; each phase starts from a fresh set of clients.

Each client runs conversations of TURNS turns (then starts a new session, so
that the per-turn cost does not drift with session length between phases),
moves to the other node every turn, asks for N_PREDICT tokens with
ignore_eos (every turn costs the same), and on 429/503 sends the same turn
again with the same request_id after the node's Retry-After (times a random
1.0-1.5 so that refused clients do not come back together) - or, with
--hammer, after 50-300 ms whatever the node says (test_load.py's clients).

A turn counts in the phase in which its reply arrived. At the end every
session in the store must hold exactly the turns its client saw committed.

usage: overload.py [--phase-seconds S] [--reps R] [--factor F] [--hammer] [OUT.json]"""
import argparse
import collections
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import NatsServer, Node  # noqa: E402


def post(node, path, body):
    """Returns (status, parsed body, lower-cased headers); thread-safe."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=300)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def run_phase(nodes, n_clients, seconds, args, tag, committed):
    """Returns (turns completed, requests, statuses) for one phase."""
    stop_at = time.monotonic() + seconds
    done, statuses, lock = [0], collections.Counter(), threading.Lock()
    retry_after = collections.Counter()  # the Retry-After values of the 429s

    def client(i):
        rnd = random.Random("%s-%d" % (tag, i))
        user = "ov-%s-%d" % (tag, i)
        sid, turn, conv = None, 1, 0
        while time.monotonic() < stop_at:
            node = nodes[(i + turn) % 2]
            body = {"prompt": "Client %d, conversation %d, turn %d: go on." % (i, conv, turn), "user_id": user,
                    "turn": turn, "request_id": "%s-c%d-t%d" % (user, conv, turn), "n_predict": args.n_predict,
                    "ignore_eos": True}
            if sid:
                body["session_id"] = sid
            try:
                st, r, hdrs = post(node, "/completion", body)
            except (OSError, ValueError):
                st, r, hdrs = -1, None, {}
            with lock:
                statuses[st] += 1
                if st == 429:
                    retry_after[hdrs.get("retry-after")] += 1
            if st == 200:
                sid = r["session_id"]
                with lock:
                    if time.monotonic() < stop_at:
                        done[0] += 1
                    committed.setdefault((user, sid), []).append(r["tokens_predicted"])
                turn += 1
                if turn > args.turns:
                    sid, turn, conv = None, 1, conv + 1
            elif st in (429, 503):
                if args.hammer:
                    time.sleep(rnd.uniform(0.05, 0.3))
                else:
                    ra = float(hdrs.get("retry-after", "1"))
                    time.sleep(min(ra, stop_at - time.monotonic() + 0.1) * rnd.uniform(1.0, 1.5))
            else:
                raise RuntimeError("client %s turn %d: %s %r" % (user, turn, st, r))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0], sum(statuses.values()), dict(statuses), dict(retry_after)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "discedge"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--nats", default=os.path.join(ROOT, "third_party", "go", "bin", "nats-server"))
    ap.add_argument("--phase-seconds", type=float, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--n-predict", type=int, default=16)
    ap.add_argument("--hammer", action="store_true")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="dc-overload-")
    nats = NatsServer(args.nats, d).start()
    opts = ("--store", nats.url, "--threads", "1", "--parallel", str(args.parallel), "--queue", str(args.queue),
            "--sync-timeout", "2000")
    nodes, rows, committed = [], [], {}
    try:
        nodes = [Node(args.bin, args.model, os.path.join(d, n), n, opts).start() for n in ("edge-1", "edge-2")]
        full = 2 * args.parallel
        for rep in range(args.reps):
            for kind, n in (("full", full), ("over", full * args.factor)):
                turns, reqs, st, ra = run_phase(nodes, n, args.phase_seconds, args, "%s%d" % (kind, rep), committed)
                row = {"rep": rep, "phase": kind, "clients": n, "turns": turns, "requests": reqs,
                       "turns_per_s": round(turns / args.phase_seconds, 2), "statuses": st,
                       "retry_after": ra}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        # nothing lost, nothing twice: every session holds what its client saw
        for (user, sid), seen in committed.items():
            st, info = nodes[0].request("GET", "/v1/sessions/%s?user_id=%s&include=turns" % (sid, user))
            if st != 200 or [len(t["reply"]) for t in info["turns"]] != seen:
                raise RuntimeError("session %s of %s: %s %r != %r" % (sid, user, st, info, seen))
    finally:
        for n in nodes:
            n.cleanup()
        nats.kill()
        shutil.rmtree(d, ignore_errors=True)
    tps = {k: [r["turns_per_s"] for r in rows if r["phase"] == k] for k in ("full", "over")}
    ratios = [o / f for f, o in zip(tps["full"], tps["over"]) if f]
    report = {"args": vars(args), "rows": rows, "sessions_checked": len(committed),
              "full_turns_per_s": tps["full"], "over_turns_per_s": tps["over"],
              "ratio_over_to_full": [round(r, 3) for r in ratios],
              "ratio_mean": round(sum(ratios) / len(ratios), 3) if ratios else None}
    print(json.dumps({k: report[k] for k in ("full_turns_per_s", "over_turns_per_s", "ratio_over_to_full",
                                             "ratio_mean", "sessions_checked")}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
