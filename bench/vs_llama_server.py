"""vs_llama_server.py - DisCEdge against llama.cpp's own llama-server (issue 15):
the 9-turn robotics conversation on one node / one server, and the moving
client (turns 1-2 on the first, 3-4 on the second, 5-6 on the first, 7-9 on
the second) over two nodes / two servers.

llama-server is built from the llama.cpp source the project installs (cmake
-S third_party/llama.cpp -B BUILD -DGGML_NATIVE=ON -DLLAMA_BUILD_UI=OFF
-DLLAMA_USE_PREBUILT_UI=OFF; `--target llama-server`), runs with the same
model, threads and context, one slot each, its prompt cache on (the
default); its client sends the whole history every turn
(/v1/chat/completions). DisCEdge's client sends the new message, the session
id and the turn (/completion); its nodes share a nats-server, warm-up on
(the default with a shared store). Both: 64 tokens a turn, EOS ignored,
greedy, 2 s between turns. The four runs interleave in each repetition (the
order rotates); per turn the client's wall time and the request bytes.

usage: vs_llama_server.py LLAMA_SERVER_BINARY OUT.json [--reps 3] [--n-predict 64] [--think-ms 2000]"""
import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import NatsServer, Node, free_port, stop_all  # noqa: E402

BIN = os.path.join(ROOT, "build", "discedge")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
NATS = os.path.join(ROOT, "third_party", "go", "bin", "nats-server")
MSGS = re.findall(r'^  - "(.*)"$', open(os.path.join(ROOT, "scenarios", "robotics-9turn.yaml")).read(), re.M)
ROAM = [0, 0, 1, 1, 0, 0, 1, 1, 1]  # which of the two serves each turn


def post(port, path, body):
    data = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.monotonic()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = json.loads(resp.read())
    ms = (time.monotonic() - t0) * 1000
    conn.close()
    assert resp.status == 200, (resp.status, out)
    return out, ms, len(data)


class LlamaServer:
    def __init__(self, binary, threads, workdir, name):
        self.port = free_port()
        self.log = open(os.path.join(workdir, name + ".log"), "ab")
        self.proc = subprocess.Popen([binary, "-m", MODEL, "--host", "127.0.0.1", "--port", str(self.port), "-t",
                                      str(threads), "-c", "4096", "-np", "1"], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama-server did not start")

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()


def run_llama(servers, where, a):
    msgs, lat, req = [], [], []
    for i, m in enumerate(MSGS):
        msgs.append({"role": "user", "content": m})
        out, ms, n = post(servers[where[i]].port, "/v1/chat/completions",
                          {"messages": msgs, "max_tokens": a.n_predict, "temperature": 0, "ignore_eos": True})
        msgs.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})
        lat.append(ms)
        req.append(n)
        if i + 1 < len(MSGS):
            time.sleep(a.think_ms / 1000)
    return lat, req


def run_dc(nodes, where, a, user):
    sid, lat, req = None, [], []
    for i, m in enumerate(MSGS):
        body = {"prompt": m, "user_id": user, "turn": i + 1, "n_predict": a.n_predict, "temperature": 0,
                "ignore_eos": True}
        if sid:
            body["session_id"] = sid
        out, ms, n = post(nodes[where[i]].port, "/completion", body)
        sid = out["session_id"]
        lat.append(ms)
        req.append(n)
        if i + 1 < len(MSGS):
            time.sleep(a.think_ms / 1000)
    return lat, req


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("llama_server")
    ap.add_argument("out")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--think-ms", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dc-vs-ls-")
    ns, nodes, servers = None, [], []
    try:
        ns = NatsServer(NATS, work).start()
        for edge in ("edge-1", "edge-2"):
            nodes.append(Node(BIN, MODEL, data_dir=os.path.join(work, edge), node_id=edge,
                              extra=["--store", ns.url, "--threads", str(a.threads), "--ctx-size", "4096"]).start())
        servers = [LlamaServer(a.llama_server, a.threads, work, "ls-%d" % k) for k in (1, 2)]
        kinds = [("dc_same", "dc", [0] * 9), ("ls_same", "ls", [0] * 9), ("dc_roam", "dc", ROAM),
                 ("ls_roam", "ls", ROAM)]
        runs = {k[0]: [] for k in kinds}
        for rep in range(a.reps):
            for tag, who, where in kinds[rep % 4:] + kinds[:rep % 4]:
                if who == "dc":
                    lat, req = run_dc(nodes, where, a, "u-%s-%d" % (tag, rep))
                else:
                    # a new conversation: the servers' slots hold the last one's prefix, as for any client
                    lat, req = run_llama(servers, where, a)
                runs[tag].append({"latency_ms": lat, "request_bytes": req})
                print("rep %d %-8s total %6.0f ms, request bytes %d" % (rep, tag, sum(lat), sum(req)), flush=True)
        summary = {}
        for scope in ("same", "roam"):
            d, l = runs["dc_" + scope], runs["ls_" + scope]
            tot = [sum(d[r]["latency_ms"]) / sum(l[r]["latency_ms"]) for r in range(a.reps)]
            per_turn = [round(statistics.median(d[r]["latency_ms"][k] / l[r]["latency_ms"][k]
                                                for r in range(a.reps)), 3) for k in range(9)]
            summary[scope] = {"dc_over_llama_server_total": round(statistics.median(tot), 3),
                              "per_turn": per_turn,
                              "dc_total_ms": round(statistics.median(sum(x["latency_ms"]) for x in d)),
                              "ls_total_ms": round(statistics.median(sum(x["latency_ms"]) for x in l)),
                              "dc_request_bytes": sum(d[0]["request_bytes"]),
                              "ls_request_bytes": sum(l[0]["request_bytes"])}
        with open(a.out, "w") as f:
            json.dump({"params": vars(a), "runs": runs, "summary": summary}, f, indent=1)
        print(json.dumps(summary, indent=1))
    finally:
        for s in servers:
            s.stop()
        stop_all(nodes, [ns] if ns else [], work)


if __name__ == "__main__":
    main()
