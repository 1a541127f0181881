"""test_scenario.py - `discedge scenario` against real nodes: the per-turn
table, CSV, roaming between two nodes, and clear errors for bad input.

usage: test_scenario.py DISCEDGE_BINARY MODEL.gguf SCENARIO_DIR"""
import csv
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NodePair, detokenize, segment_tokens  # noqa: E402

BIN = MODEL = SCEN = None


def run(*args):
    p = subprocess.run([BIN, "scenario"] + list(args), capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


class Scenario(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # a real hand-over between two nodes on one host (dcnode.NodePair)
        cls.pair = NodePair(BIN, MODEL, prefix="dc-scen-")
        cls.a, cls.b, cls.dir = cls.pair.a, cls.pair.b, cls.pair.dir

    @classmethod
    def tearDownClass(cls):
        cls.pair.stop()

    @staticmethod
    def url(node):
        return "http://127.0.0.1:%d" % node.port

    def check_csv(self, path, nodes):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 9)
        self.assertEqual([r["status"] for r in rows], ["200"] * 9)
        self.assertEqual([r["node"] for r in rows], nodes)
        self.assertEqual([r["answered_by"] for r in rows], nodes)  # the node ids are the names here
        ctx = [int(r["context_tokens"]) for r in rows]
        self.assertEqual(ctx, sorted(ctx))  # the context grows every turn
        for r in rows:
            self.assertGreater(int(r["request_bytes"]), 0)
            self.assertTrue(r["reply"])
        return rows

    def test_nine_turns_one_node(self):
        out = os.path.join(self.dir, "one.csv")
        rc, stdout, stderr = run(os.path.join(SCEN, "robotics-9turn.yaml"), "--node", "edge-1=" + self.url(self.a),
                                 "--n-predict", "24", "--ignore-eos", "--temperature", "0", "--csv", out)
        self.assertEqual(rc, 0, stderr)
        self.assertIn("Robotics and Autonomous Systems Test", stdout)
        self.assertIn("9 turns", stdout)
        self.check_csv(out, ["edge-1"] * 9)

    def test_roaming_between_nodes(self):
        out = os.path.join(self.dir, "roam.csv")
        rc, stdout, stderr = run(os.path.join(SCEN, "robotics-9turn-roaming.yaml"),
                                 "--node", "edge-1=" + self.url(self.a), "--node", "edge-2=" + self.url(self.b),
                                 "--n-predict", "24", "--ignore-eos", "--temperature", "0", "--csv", out)
        self.assertEqual(rc, 0, stderr)
        self.check_csv(out, ["edge-1", "edge-1", "edge-2", "edge-2", "edge-1", "edge-1", "edge-2", "edge-2", "edge-2"])

    def test_client_side_requests_grow(self):
        out = os.path.join(self.dir, "cs.csv")
        rc, _, stderr = run(os.path.join(SCEN, "robotics-9turn.yaml"), "--node", self.url(self.a),
                            "--mode", "client-side", "--n-predict", "24", "--ignore-eos", "--temperature", "0", "--csv", out)
        self.assertEqual(rc, 0, stderr)
        with open(out) as f:
            sizes = [int(r["request_bytes"]) for r in csv.DictReader(f)]
        self.assertEqual(sizes, sorted(sizes))
        self.assertGreater(sizes[-1], 3 * sizes[0])  # the client resends its whole history

    def test_chat_keeps_the_session_across_nodes(self):
        # The guarantee is the context edge-2 fed the model, not its answer:
        # turn 1 (with the code word) whole, then the new message.
        script = ("My secret code word is PELICAN. Please remember it.\n"
                  "/node %s\n"
                  "What is my secret code word?\n/quit\n") % self.url(self.b)
        p = subprocess.run([BIN, "chat", "--node", self.url(self.a), "--user-id", "chatter", "--n-predict", "32",
                            "--temperature", "0"],
                           input=script, capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.count("bot> "), 2, p.stdout)
        self.assertIn("turn 1, node edge-1", p.stdout)
        self.assertIn("(now talking to %s)" % self.url(self.b), p.stdout)
        m = re.search(r"\[turn 2, node edge-2, \d+ ms, (\d+) context tokens\]", p.stdout)
        self.assertTrue(m, p.stdout)
        m2 = re.search(r"session ([0-9a-f]{32}) \(user chatter\), 2 turns", p.stdout)
        self.assertTrue(m2, p.stdout)
        st, info = self.b.request("GET", "/v1/sessions/%s?user_id=chatter&include=turns" % m2.group(1))
        self.assertEqual(st, 200, info)
        self.assertEqual([t["turn"] for t in info["turns"]], [1, 2])
        t1, t2 = info["turns"]
        fed = segment_tokens([t1]) + len(t2["system"]) + len(t2["user"])
        self.assertEqual(int(m.group(1)), fed)  # edge-2's input: all of turn 1, then turn 2's message
        said_1, said_2 = detokenize(BIN, MODEL, t1["user"], t2["user"])
        self.assertIn("My secret code word is PELICAN.", said_1)
        self.assertIn("What is my secret code word?", said_2)

    def test_bad_input(self):
        rc, _, err = run(os.path.join(SCEN, "robotics-9turn-roaming.yaml"), "--node", "edge-1=" + self.url(self.a))
        self.assertEqual(rc, 2)
        self.assertIn("--node edge-2=URL", err)
        bad = os.path.join(self.dir, "bad.yaml")
        with open(bad, "w") as f:
            f.write("name: [unclosed\n")
        rc, _, err = run(bad, "--node", self.url(self.a))
        self.assertEqual(rc, 2)
        self.assertIn("YAML error", err)
        rc, _, err = run(os.path.join(SCEN, "robotics-9turn.yaml"), "--node", "http://127.0.0.1:1")
        self.assertEqual(rc, 1)
        self.assertIn("turn 1 failed", err)
        rc, _, err = run(os.path.join(SCEN, "robotics-9turn.yaml"), "--node", self.url(self.a), "--turns", "0")
        self.assertEqual(rc, 2)
        self.assertIn("--turns must be at least 1", err)

    def test_turns_and_after_turn_hook(self):
        # the testbed samples its link counters through --after-turn: the
        # hook runs after each turn, in order, with DC_TURN, before the next
        out, log = os.path.join(self.dir, "hook.csv"), os.path.join(self.dir, "hook.log")
        rc, stdout, stderr = run(os.path.join(SCEN, "robotics-9turn.yaml"), "--node", self.url(self.a),
                                 "--n-predict", "8", "--turns", "3", "--csv", out,
                                 "--after-turn", 'echo "$DC_TURN $(wc -l < %s)" >> %s' % (out, log))
        self.assertEqual(rc, 0, stderr)
        with open(log) as f:  # CSV: a header and one row per finished turn
            self.assertEqual(f.read().split("\n"), ["1 2", "2 3", "3 4", ""])
        self.assertIn("3 turns", stdout)
        # a failing hook stops the run after that turn, with a clear error
        rc, _, err = run(os.path.join(SCEN, "robotics-9turn.yaml"), "--node", self.url(self.a),
                         "--n-predict", "8", "--after-turn", "exit 3")
        self.assertEqual(rc, 1)
        self.assertIn("--after-turn command failed", err)
        self.assertIn("after turn 1", err)


if __name__ == "__main__":
    BIN, MODEL, SCEN = sys.argv[1], sys.argv[2], sys.argv[3]
    unittest.main(argv=[sys.argv[0], "-v"])
