"""stream.py - what streaming buys a chat client, and what it costs.

The paper's 9-turn scenario, twice per repetition on one node, as OpenAI chat
sessions (store:true, then session_id + turn): once with stream:false, once
with stream:true, interleaved turn by turn. Per turn it records the time to
the first reply byte (non-streamed: the whole reply) and to the last; the
report compares the two as ratios within the run (the machine is shared).

usage: python3 bench/stream.py [--reps N] [--n-predict N] OUT_DIR
Prints a markdown table; OUT_DIR/stream.json holds every measurement."""
import argparse
import http.client
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node  # noqa: E402
from engine import messages as prompts  # noqa: E402  (the scenario's user messages)

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
BIN = os.path.join(ROOT, "build", "discedge")


def turn(port, body):
    """(first byte s, last byte s, reply JSON or final chunk) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first, data = None, b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - t0
        data += chunk
    last = time.perf_counter() - t0
    conn.close()
    if not body["stream"]:
        return first, last, json.loads(data)
    events = [json.loads(l[6:]) for l in data.decode().split("\n") if l.startswith("data: {")]
    return first, last, [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=128)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    node = Node(BIN, MODEL, extra=["--ctx-size", "4096"]).start()
    rows = []
    try:
        for rep in range(a.reps):
            sid = {}
            for t, text in enumerate(prompts(), 1):
                for stream in ((False, True) if (t + rep) % 2 else (True, False)):
                    body = {"messages": [{"role": "user", "content": text}], "max_tokens": a.n_predict,
                            "temperature": 0, "seed": 123, "stream": stream}
                    body.update({"session_id": sid[stream], "turn": t} if t > 1 else {"store": True})
                    first, last, r = turn(node.port, body)
                    sid[stream] = r["session_id"]
                    assert r["turn"] == t
                    rows.append({"rep": rep, "turn": t, "stream": stream, "first_s": first, "last_s": last})
    finally:
        node.cleanup()
    with open(os.path.join(a.out, "stream.json"), "w") as f:
        json.dump(rows, f, indent=1)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print("| turn | non-streamed: reply (ms) | streamed: first text (ms) | streamed: last (ms) | first / reply | last / reply |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios_first, ratios_last = [], []
    for t in sorted({r["turn"] for r in rows}):
        plain = med([r["last_s"] for r in rows if r["turn"] == t and not r["stream"]])
        first = med([r["first_s"] for r in rows if r["turn"] == t and r["stream"]])
        last = med([r["last_s"] for r in rows if r["turn"] == t and r["stream"]])
        ratios_first.append(first / plain)
        ratios_last.append(last / plain)
        print("| %d | %.0f | %.0f | %.0f | %.3f | %.3f |" % (t, plain * 1e3, first * 1e3, last * 1e3, first / plain,
                                                            last / plain))
    print("\nmedian over turns: first text / whole reply %.3f; streamed total / whole reply %.3f (%d reps, %d tokens)"
          % (med(ratios_first), med(ratios_last), a.reps, a.n_predict))


if __name__ == "__main__":
    main()
