"""test_warm.py - warm handover (issue 15, items 1 and 2), on real nodes
sharing a real nats-server, over real HTTP, with the real model:

 - a session served on one node is warmed on another in the background
   (the node follows the store's commits), and its first turn there reuses
   every stored token and prefills only the new message;
 - a request arriving while a long warm-up runs waits for one warm-up chunk
   at most, and the warm-up then resumes where it stood;
 - a session deleted while another node warms it: the warm-up stops and its
   KV is dropped;
 - the handover hint (POST /v1/sessions/{id}/warm): the owner's only (401,
   403, 404, 405), idempotent, and it warms a session that the automatic
   warm-up leaves alone (--warm-peers);
 - --warm-sessions 0: no warm-up, the turn prefills everything, as before.

What the model says is never asserted (CPUs differ); the reply-equals-a-full-
prefill side is test_llm's warm_within_split_noise, on logits.

usage: test_warm.py DISCEDGE_BINARY MODEL.gguf NATS_SERVER"""
import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NatsServer, Node, stop_all  # noqa: E402

BIN = MODEL = NATS = None
ALICE, MALLORY = "alice-key-0123456789abcdef", "mallory-key-0123456789abcdef"
# Nodes on one 2-core host must not oversubscribe it: ggml threads spin.
COMMON = ["--threads", "1", "--ctx-size", "2048", "--kv-cache-sessions", "4", "--n-predict", "16"]
LONG = " ".join(["The rover logs its wheel odometry, battery voltage and the temperature of each motor."] * 90)


def auth(key):
    return {"Authorization": "Bearer " + key}


def warm_of(node):
    st, h = node.request("GET", "/health")
    assert st == 200, h
    return h["engine"]["warm"]


def user_tokens(node, sid, n):
    """The stored user segment of turn n of alice's session, as edge nodes store it."""
    st, info = node.request("GET", "/v1/sessions/%s?include=turns" % sid, None, auth(ALICE))
    assert st == 200, (st, info)
    return info["turns"][n - 1]["user"]


def wait_for(what, pred, limit_s=120):
    """Polls pred until it holds; the limit only bounds a hang."""
    deadline = time.monotonic() + limit_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def turn(node, key, prompt, sid=None, n=1, n_predict=16, system=None):
    body = {"prompt": prompt, "turn": n, "n_predict": n_predict, "ignore_eos": True, "temperature": 0}
    if sid:
        body["session_id"] = sid
    if system:
        body["system"] = system
    st, r = node.request("POST", "/completion", body, auth(key))
    assert st == 200, (st, r)
    return r


class Warm(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-warm-")
        cls.nats = cls.nodes = None
        cls.nodes = []
        try:
            cls.nats = NatsServer(NATS, cls.dir).start()
            keys = os.path.join(cls.dir, "keys")
            with open(keys, "w") as f:
                f.write("%s alice\n%s mallory\n" % (ALICE, MALLORY))
            store = ["--store", cls.nats.url, "--api-keys", keys] + COMMON

            def node(name, *extra):
                n = Node(BIN, MODEL, data_dir=os.path.join(cls.dir, name), node_id=name,
                         extra=store + list(extra)).start()
                cls.nodes.append(n)
                return n
            cls.a = node("edge-1", "--warm-sessions", "0")  # where the sessions start
            cls.b = node("edge-2")                           # warm-up on, as by default with a store
            cls.c = node("edge-3", "--warm-peers", "edge-9")  # follows nobody it will see: hints only
            cls.d = node("edge-4", "--warm-sessions", "0")  # warm-up off
        except BaseException:
            stop_all(cls.nodes, [cls.nats] if cls.nats else [], cls.dir)
            raise

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.nodes, [cls.nats], cls.dir)

    def conversation(self, turns=3):
        """A session of `turns` turns on edge-1; (session id, its turn count)."""
        # a system message long enough that a new message is under a tenth of the context
        r = turn(self.a, ALICE, "Describe the rover's sensors.", system="You are a robotics assistant. " + LONG[:500])
        sid = r["session_id"]
        for n in range(2, turns + 1):
            turn(self.a, ALICE, "And what does sensor %d measure?" % n, sid, n)
        return sid, turns

    def settled(self, node, requests):
        """node has been asked `requests` warm-ups and has none left to do."""
        w = warm_of(node)
        return w if w["requests"] >= requests and w["pending"] == 0 else None

    def test_a_warmed_turn_on_another_node_prefills_only_its_new_message(self):
        before = warm_of(self.b)
        sid, last = self.conversation(3)
        # every committed turn of edge-1 is one warm-up asked of edge-2
        wait_for("edge-2's warm-ups", lambda: self.settled(self.b, before["requests"] + last))
        r = turn(self.b, ALICE, "Which of them fails first?", sid, last + 1)
        self.assertEqual(r["node"], "edge-2")
        self.assertGreaterEqual(r["timings"]["cache_n"], 0.9 * r["context_tokens"], r["timings"])
        # every stored token came from the warmed KV: only the new message was prefilled
        new = user_tokens(self.b, sid, last + 1)
        self.assertEqual(r["timings"]["prompt_n"], len(new), r["timings"])
        self.assertEqual(r["timings"]["cache_n"], r["context_tokens"] - len(new))
        self.assertGreater(warm_of(self.b)["used"], before["used"])

    def test_a_request_during_a_warm_up_waits_one_chunk_at_most(self):
        before = warm_of(self.b)
        r = turn(self.a, ALICE, LONG, n_predict=4)  # ~1,500 tokens: a dozen warm-up chunks
        sid = r["session_id"]
        wait_for("edge-2 to start warming", lambda: warm_of(self.b)["chunks"] > before["chunks"])
        at_send = warm_of(self.b)
        live = turn(self.b, ALICE, "Hello.", n_predict=2)  # another conversation, while warming
        self.assertEqual(live["turn"], 1)
        after = wait_for("edge-2's warm-up", lambda: self.settled(self.b, before["requests"] + 1))
        # the warm-up was under way when the request came, and went on after it
        self.assertGreater(after["chunks"], at_send["chunks"] + 1, (at_send, after))
        self.assertEqual(after["done"], before["done"] + 1)
        self.assertLessEqual(after["wait_chunks_max"], 1, after)
        # and it resumed where it stood: the next turn here reuses it all
        t2 = turn(self.b, ALICE, "Summarise that.", sid, 2, n_predict=2)
        new = user_tokens(self.b, sid, 2)
        self.assertEqual(t2["timings"]["prompt_n"], len(new), t2["timings"])

    def test_a_session_deleted_while_warming_stops_and_its_kv_goes(self):
        before = warm_of(self.b)
        r = turn(self.a, ALICE, LONG, n_predict=4)
        sid = r["session_id"]
        wait_for("edge-2 to start warming", lambda: warm_of(self.b)["chunks"] > before["chunks"])
        st, _ = self.a.request("DELETE", "/v1/sessions/" + sid, None, auth(ALICE))
        self.assertEqual(st, 200)
        after = wait_for("edge-2 to drop it", lambda: (lambda w: w if w["pending"] == 0 and
                                                       w["unused"] > before["unused"] else None)(warm_of(self.b)))
        self.assertEqual(after["done"], before["done"], "the warm-up of a deleted session ran to its end")
        self.assertLess(after["tokens"] - before["tokens"], r["context_tokens"])
        self.assertEqual(after["slots"], before["slots"])

    def test_the_hint_warms_a_session_for_its_owner_only(self):
        sid, last = self.conversation(2)
        path = "/v1/sessions/%s/warm" % sid
        # edge-3 follows only edge-9: edge-1's commits are not warmed there
        wait_for("edge-2 to see them", lambda: self.settled(self.b, 1))
        self.assertEqual(warm_of(self.c)["requests"], 0)
        st, e = self.c.request("POST", path, {}, {})
        self.assertEqual(st, 401, e)
        st, e = self.c.request("POST", path, {}, auth(MALLORY))
        self.assertEqual(st, 403, e)
        st, e = self.c.request("POST", "/v1/sessions/0123456789abcdef0123456789abcdef/warm", {}, auth(ALICE))
        self.assertEqual(st, 404, e)
        st, e = self.c.request("GET", path, None, auth(ALICE))
        self.assertEqual(st, 405, e)
        self.assertEqual(warm_of(self.c)["requests"], 0, "a refused hint warmed something")
        for _ in range(2):  # idempotent
            st, r = self.c.request("POST", path, {}, auth(ALICE))
            self.assertEqual((st, r["session_id"], r["warming"]), (202, sid, True), r)
        wait_for("edge-3's warm-up", lambda: self.settled(self.c, 1) and warm_of(self.c)["done"] >= 1)
        r = turn(self.c, ALICE, "Anything else?", sid, last + 1)
        new = user_tokens(self.c, sid, last + 1)
        self.assertEqual(r["timings"]["prompt_n"], len(new), r["timings"])

    def test_warm_up_off_prefills_as_before(self):
        self.assertEqual(warm_of(self.d)["sessions"], 0)
        sid, last = self.conversation(2)
        st, r = self.d.request("POST", "/v1/sessions/%s/warm" % sid, {}, auth(ALICE))
        self.assertEqual((st, r["warming"]), (202, False), r)
        r = turn(self.d, ALICE, "Anything else?", sid, last + 1)
        self.assertEqual(r["timings"]["cache_n"], 0, r["timings"])
        self.assertEqual(r["timings"]["prompt_n"], r["context_tokens"])
        w = warm_of(self.d)
        self.assertEqual((w["requests"], w["tokens"], w["slots"]), (0, 0, 0), w)


if __name__ == "__main__":
    BIN, MODEL, NATS = sys.argv[1], sys.argv[2], sys.argv[3]
    unittest.main(argv=sys.argv[:1], verbosity=2)
