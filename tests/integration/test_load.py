"""test_load.py - many clients at once against two nodes on one NATS store.

64 client threads, each with its own user and session, send turn after turn
for DC_LOAD_SECONDS (default 60; bench/run load runs it for minutes), moving
to the other node every turn. A client that gets 429 (busy, by policy) or
503 (its turn not yet replicated, or the store briefly unavailable) waits a
little and sends the same turn again with the same request_id; anything else
is an error. Each client logs the turns it saw committed; at the end every
session in the store must hold exactly those turns, in order, each as long
as the reply the client got: nothing lost, nothing twice. Meanwhile both
nodes' RSS and open file descriptors are sampled: memory must level off and
descriptors must return to where they started.

usage: test_load.py DISCEDGE_BINARY MODEL.gguf NATS_SERVER [OUT.json]"""
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NatsServer, Node  # noqa: E402

BIN = MODEL = NATS = OUT = None
CLIENTS = 64
SECONDS = float(os.environ.get("DC_LOAD_SECONDS", "60"))
# ASan keeps freed memory in quarantine (up to 256 MiB by default), so a
# sanitized node's RSS climbs for a while by design.
SANITIZED = bool(os.environ.get("DC_SANITIZED"))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Load(unittest.TestCase):
    def test_many_clients_two_nodes(self):
        d = tempfile.mkdtemp(prefix="dc-load-")
        nats = NatsServer(NATS, d).start()
        opts = ("--store", nats.url, "--threads", "1", "--parallel", "4", "--queue", "8", "--sync-timeout", "2000")
        nodes = []
        try:
            nodes = [Node(BIN, MODEL, os.path.join(d, n), n, opts).start() for n in ("edge-1", "edge-2")]
            self.run_load(nodes)
        finally:
            for n in nodes:
                n.cleanup()
            nats.kill()
            shutil.rmtree(d, ignore_errors=True)

    def run_load(self, nodes):
        pids = [n.proc.pid for n in nodes]
        fds_before = [fds(p) for p in pids]
        stop_at = time.monotonic() + SECONDS
        statuses = collections.Counter()
        errors = []
        logs = {}  # user -> (session id, [tokens_predicted of each committed turn])
        lock = threading.Lock()

        def client(i):
            user, rnd = "load-%d" % i, random.Random(i)
            sid, seen, turn = None, [], 1
            while time.monotonic() < stop_at:
                node = nodes[(i + turn) % 2]
                body = {"prompt": "Turn %d of client %d: say something short." % (turn, i), "user_id": user,
                        "turn": turn, "request_id": "%s-t%d" % (user, turn), "n_predict": 8}
                if sid:
                    body["session_id"] = sid
                try:
                    st, r = node.request("POST", "/completion", body)
                except OSError as e:
                    st, r = -1, str(e)
                with lock:
                    statuses[st] += 1
                if st == 200:
                    if r["turn"] != turn or (sid and r["session_id"] != sid):
                        errors.append((user, turn, "answered as turn %s of %s" % (r["turn"], r["session_id"])))
                        return
                    sid = r["session_id"]
                    seen.append(r["tokens_predicted"])
                    turn += 1
                elif st in (429, 503):
                    time.sleep(rnd.uniform(0.05, 0.3))
                else:
                    with lock:
                        errors.append((user, turn, st, r))
                    return
            logs[user] = (sid, seen)

        samples = []

        def sampler():
            while time.monotonic() < stop_at:
                samples.append((time.monotonic(), [rss_kb(p) for p in pids], [fds(p) for p in pids]))
                time.sleep(1)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        watch = threading.Thread(target=sampler)
        t0 = time.monotonic()
        watch.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        watch.join()
        elapsed = time.monotonic() - t0
        self.assertEqual(errors, [])

        # every client's turns, and only those, are in the store
        checked = 0
        for user, (sid, seen) in sorted(logs.items()):
            if not sid:
                continue
            st, info = nodes[0].request("GET", "/v1/sessions/%s?user_id=%s&include=turns" % (sid, user))
            self.assertEqual(st, 200, info)
            self.assertEqual([t["turn"] for t in info["turns"]], list(range(1, len(seen) + 1)), user)
            self.assertEqual([len(t["reply"]) for t in info["turns"]], seen, user)
            checked += len(seen)

        time.sleep(1)  # connections of the last requests close
        fds_after = [fds(p) for p in pids]
        half = [s for s in samples if s[0] > t0 + SECONDS / 2]
        first = [s for s in samples if s[0] <= t0 + SECONDS / 2]
        peak_first = [max(s[1][k] for s in first) for k in range(2)]
        peak_second = [max(s[1][k] for s in half) for k in range(2)]
        report = {"clients": CLIENTS, "seconds": round(elapsed, 1), "requests": sum(statuses.values()),
                  "statuses": {str(k): v for k, v in sorted(statuses.items())}, "turns_checked": checked,
                  "rss_mib_peak_first_half": [round(x / 1024, 1) for x in peak_first],
                  "rss_mib_peak_second_half": [round(x / 1024, 1) for x in peak_second],
                  "fds_before": fds_before, "fds_after": fds_after, "sanitized": SANITIZED}
        print(json.dumps(report), file=sys.stderr)
        if OUT:
            with open(OUT, "w") as f:
                json.dump(report, f, indent=1)
        self.assertTrue(set(statuses) <= {200, 429, 503}, statuses)
        self.assertGreater(checked, CLIENTS)  # the nodes did serve, not only refuse
        # memory levels off: the second half grows no more than a little over the first
        slack = 300 * 1024 if SANITIZED else 64 * 1024
        for k in range(2):
            self.assertLess(peak_second[k], peak_first[k] + slack, report)
        # descriptors come back (a few may be the store's or the engine's own)
        for k in range(2):
            self.assertLessEqual(fds_after[k], fds_before[k] + 4, report)


if __name__ == "__main__":
    BIN, MODEL, NATS = sys.argv[1:4]
    OUT = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4].endswith(".json") else None
    del sys.argv[1:4 + (1 if OUT else 0)]
    unittest.main(verbosity=2)
