"""replication.py - what replication costs, measured on a real deployment on
loopback: a 3-server NATS JetStream core cluster (R3 stream) and two edge
nodes, the paper's roaming scenario (node switch at turns 3, 5, 7).

  1. Bytes on the wire per turn, tokenized vs raw: TCP payload bytes that the
     kernel counted on the store's connections (`ss -tin`, bytes_received on
     both ends of every connection), split into core-internal traffic (route
     connections between the core servers) and edge<->core traffic (the leaf
     connections; with --topology core, the nodes' own connections to the
     core). Not computed from payload sizes.
  2. Turn latency with and without a handover: the roaming run against the
     same turns all on one node.
  3. Commit-to-visibility: after node A answers turn N (committed), how long
     until node B's GET shows turn N; next to the GET round trip on A.

usage: python3 bench/replication.py [--reps 3] [--n-predict 128] OUT_DIR
Run through bench/run.sh (which builds first)."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import NatsServer, Node, nats_cluster  # noqa: E402

try:
    import yaml
except ImportError:
    sys.exit("replication.py needs PyYAML (pip install pyyaml)")

BIN = os.path.join(ROOT, "build", "discedge")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
NATS = os.path.join(ROOT, "third_party", "go", "bin", "nats-server")


def tcp_bytes(ports):
    """Sum of bytes_received over every established loopback TCP socket with
    an endpoint on one of `ports`: each connection is seen from both ends, so
    this counts every byte that crossed it, in either direction, once."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True).stdout
    total, addr = 0, None
    for line in out.splitlines():
        if not line[:1].isspace():  # "Recv-Q Send-Q local:port peer:port"
            addr = [int(a.rsplit(":", 1)[1]) for a in line.split()[2:4]]
            continue
        m = re.search(r"bytes_received:(\d+)", line)
        if addr and m and (addr[0] in ports or addr[1] in ports):
            total += int(m.group(1))
        addr = None
    return total


def turns_of(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    return [(loc["node"], m) for loc in doc["locations"] for m in loc["messages"]]


def run(nodes, turns, mode, n_predict, ports, user):
    """One conversation; returns per-turn rows with wire bytes and latency."""
    sid, rows = None, []
    for i, (name, msg) in enumerate(turns, 1):
        before = {k: tcp_bytes(p) for k, p in ports.items()}
        body = dict(prompt=msg, mode=mode, user_id=user, turn=i, n_predict=n_predict, temperature=0, seed=123)
        if sid:
            body["session_id"] = sid
        t0 = time.monotonic()
        st, r = nodes[name].request("POST", "/completion", body)
        ms = 1e3 * (time.monotonic() - t0)
        if st != 200:
            sys.exit("turn %d on %s: %s %r" % (i, name, st, r))
        sid = r["session_id"]
        time.sleep(0.3)  # let replication and acks settle before reading the counters
        after = {k: tcp_bytes(p) for k, p in ports.items()}
        rows.append(dict(turn=i, node=name, ms=ms, wait_ms=r["wait_ms"], generated=r["tokens_predicted"],
                         context=r["context_tokens"], **{k: after[k] - before[k] for k in ports}))
    return rows


def visibility(a, b, samples):
    """Commit on a, then poll b until it shows the turn."""
    st, r = a.complete(prompt="Hi", user_id="vis", n_predict=1)
    sid, vis, rtt = r["session_id"], [], []
    for turn in range(2, samples + 2):
        st, r = a.complete(prompt="Go", user_id="vis", session_id=sid, turn=turn, n_predict=1)
        t0 = time.monotonic()
        while True:
            st, info = b.request("GET", "/v1/sessions/%s?user_id=vis" % sid)
            if st == 200 and info["turn"] >= turn:
                break
        vis.append(1e3 * (time.monotonic() - t0))
        t0 = time.monotonic()
        a.request("GET", "/v1/sessions/%s?user_id=vis" % sid)
        rtt.append(1e3 * (time.monotonic() - t0))
    return vis, rtt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--topology", choices=("core", "leaf"), default="leaf",
                    help="core: nodes talk to the core servers; leaf: each node has its own leaf "
                         "nats-server with a mirror (the edge topology)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="dc-bench-repl-")
    leaf = args.topology == "leaf"
    core = nats_cluster(NATS, work, domain="core" if leaf else None)
    urls = [s.url for s in core]
    route_ports = set()
    for s in core:
        with open(s.conf) as f:
            route_ports.add(int(re.search(r"cluster \{ name: core, listen: 127\.0\.0\.1:(\d+)", f.read()).group(1)))
    servers = list(core)
    one = ("--threads", "1")
    if leaf:
        lp = [c.leaf_port for c in core]
        leaves = [NatsServer(NATS, work, "leaf%d" % i, domain="edge%d" % i, leaf_remotes=lp[i:] + lp[:i]).start()
                  for i in (1, 2)]
        servers += leaves
        # what crosses the network is edge host <-> core: the leaf connections
        ports = {"route_bytes": route_ports, "edge_core_bytes": set(lp)}
        stores = [("--store", l.url, "--store-core-domain", "core") for l in leaves]
    else:
        ports = {"route_bytes": route_ports, "edge_core_bytes": {s.port for s in core}}
        stores = [("--store", ",".join(urls)), ("--store", ",".join(urls[1:] + urls[:1]))]
    a = Node(BIN, MODEL, os.path.join(work, "a"), "edge-1", stores[0] + ("--store-replicas", "3") + one)
    b = Node(BIN, MODEL, os.path.join(work, "b"), "edge-2", stores[1] + ("--store-replicas", "3") + one)
    a.start()
    b.start()
    nodes = {"edge-1": a, "edge-2": b}
    turns = turns_of(os.path.join(ROOT, "scenarios", "robotics-9turn-roaming.yaml"))
    still = [("edge-1", m) for _, m in turns]
    results = {}
    try:
        run(nodes, still[:2], "tokenized", 8, ports, "warmup")
        # both mirrors follow the core before measuring
        st, r = a.complete(prompt="warm-up", user_id="warmup", n_predict=1)
        while b.request("GET", "/v1/sessions/%s?user_id=warmup" % r["session_id"])[0] != 200:
            time.sleep(0.1)
        for rep in range(args.reps):
            for mode in ("tokenized", "raw"):
                results.setdefault(mode, []).append(run(nodes, turns, mode, args.n_predict, ports, "u%d" % rep))
            results.setdefault("no-handover", []).append(
                run(nodes, still, "tokenized", args.n_predict, ports, "s%d" % rep))
        vis, rtt = visibility(a, b, 30)
        before = {k: tcp_bytes(p) for k, p in ports.items()}
        time.sleep(10)
        idle = {k: (tcp_bytes(p) - before[k]) / 10.0 for k, p in ports.items()}
    finally:
        a.cleanup()
        b.cleanup()
        for s in servers:
            s.kill()
    with open(os.path.join(args.out, "replication.json"), "w") as f:
        json.dump(dict(results=results, visibility_ms=vis, get_rtt_ms=rtt, idle_bytes_per_s=idle), f, indent=1)

    med = statistics.median
    print("| turn | node | tokenized route B | raw route B | tokenized edge-core B | raw edge-core B | "
          "roaming ms | same-node ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for i in range(len(turns)):
        col = lambda mode, k: med(r[i][k] for r in results[mode])  # noqa: E731
        print("| %d | %s | %d | %d | %d | %d | %.0f | %.0f |" % (
            i + 1, turns[i][0], col("tokenized", "route_bytes"), col("raw", "route_bytes"),
            col("tokenized", "edge_core_bytes"), col("raw", "edge_core_bytes"), col("tokenized", "ms"),
            col("no-handover", "ms")))
    tot = lambda mode, k: med(sum(t[k] for t in r) for r in results[mode])  # noqa: E731
    for k in ("route_bytes", "edge_core_bytes"):
        t, r = tot("tokenized", k), tot("raw", k)
        print("\n%s per 9-turn session (median of %d): tokenized %d, raw %d, tokenized vs raw %+.1f%%" % (
            k, args.reps, t, r, 100.0 * (t / r - 1)))
    print("idle background (raft heartbeats, pings), bytes/s: route %.0f, edge-core %.0f" % (
        idle["route_bytes"], idle["edge_core_bytes"]))
    hand = [r[i]["ms"] - s[i]["ms"] for r, s in zip(results["tokenized"], results["no-handover"])
            for i in (2, 4, 6)]
    print("handover turns (3, 5, 7): median extra latency vs the same turn on one node: %+.1f ms" % med(hand))
    print("commit-to-visibility on the other node: median %.2f ms, p90 %.2f ms (GET round trip alone: %.2f ms)" % (
        med(vis), sorted(vis)[int(0.9 * len(vis))], med(rtt)))


if __name__ == "__main__":
    main()
