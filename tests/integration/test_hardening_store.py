"""test_hardening_store.py - issue 14, the store's items, on real nats-server
processes and real nodes:

  5  a DELETE leaves nothing of the session's records on the core or on any
     edge mirror but its tombstone (no owner, no content);
  7  the expiry sweep does not bury a turn committed while it works, and the
     purge after a tombstone keeps a new life started meanwhile;
  8  a commit built on a context read from an earlier life of the id is refused;
  9  a publish whose acknowledgement is lost is settled: the turn is reported
     committed once, not 503;
 11  reading a session whose mirror holds earlier lives frees what it walked
     over and drops those lives from the mirror;
 13  session ids that are not NATS subject tokens get 400 before any
     generation, on both stores.

The races (7, 8, 9, 11) are driven by store_driver (a C program on the store
itself: see its header); item 10 is in tests/unit/test_codec.c.

usage: test_hardening_store.py DISCEDGE_BINARY MODEL.gguf NATS_SERVER STORE_DRIVER"""
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NatsServer, Node, RawNats, stop_all, wait_replicated  # noqa: E402

BIN = MODEL = NATS = DRIVER = None
ONE_THREAD = ("--threads", "1")


def driver(case, *args, env=None):
    """Runs one store_driver case; returns (exit status, its output)."""
    p = subprocess.run([DRIVER, case] + [str(a) for a in args], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, **(env or {})))
    return p.returncode, p.stdout + p.stderr


class StoreHardening(unittest.TestCase):
    """A core nats-server (JetStream domain "core") and two edge hosts, each
    with its own leaf nats-server holding a mirror (as test_nats.py's
    LeafNodes, with one core server), a node on each; and a node on the
    embedded store."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-hard-store-")
        cls.servers, cls.nodes = [], []
        try:
            cls.core = NatsServer(NATS, cls.dir, "core", domain="core", leaf_listen=True).start()
            cls.servers.append(cls.core)
            cls.leaves = []
            for i in (1, 2):
                leaf = NatsServer(NATS, cls.dir, "leaf%d" % i, domain="edge%d" % i, leaf_remotes=[cls.core.leaf_port])
                cls.servers.append(leaf.start())
                cls.leaves.append(leaf)
            for i, leaf in enumerate(cls.leaves):
                cls.nodes.append(Node(BIN, MODEL, os.path.join(cls.dir, "n%d" % i), "edge-%d" % (i + 1),
                                      ("--store", leaf.url, "--store-core-domain", "core") + ONE_THREAD).start())
            cls.a, cls.b = cls.nodes
            cls.embedded = Node(BIN, MODEL, os.path.join(cls.dir, "e"), "edge-e", ONE_THREAD).start()
            cls.nodes.append(cls.embedded)
            wait_replicated(cls.a, cls.b)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.nodes, cls.servers, cls.dir)

    def node_stream(self, conn):
        """The nodes' stream (the model's keygroup) and its subject prefix."""
        names = conn.api("$JS.API.STREAM.NAMES", {})["streams"]
        name = [n for n in names if n.startswith("DISCEDGE_") and not n.startswith("DISCEDGE_drv")][0]
        return name, "dce.%s.t." % name[len("DISCEDGE_"):]

    def test_delete_leaves_only_a_tombstone_on_core_and_every_mirror(self):
        st, r = self.a.complete(prompt="Hello", user_id="forgetme", n_predict=2)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]
        st, r = self.b.complete(prompt="More", user_id="forgetme", session_id=sid, turn=2, n_predict=2)
        self.assertEqual(st, 200, r)
        conns = [RawNats(s.port) for s in self.servers]  # core, leaf1, leaf2
        try:
            stream, prefix = self.node_stream(conns[0])
            subject = prefix + sid
            deadline = time.monotonic() + 60
            while [c.count(stream, subject) for c in conns] != [2, 2, 2]:  # both mirrors have both turns
                self.assertLess(time.monotonic(), deadline, "mirrors never got both turns")
                time.sleep(0.1)
            st, _ = self.a.request("DELETE", "/v1/sessions/%s?user_id=forgetme" % sid)
            self.assertEqual(st, 200)
            # the core at once; each mirror when its node hears of the delete
            deadline = time.monotonic() + 60
            while True:
                counts = [c.count(stream, subject) for c in conns]
                if counts == [1, 1, 1]:
                    break
                self.assertLess(time.monotonic(), deadline, "messages left (core, leaf1, leaf2): %r" % counts)
                time.sleep(0.2)
            for c in conns:  # what is left is the tombstone, which names no one
                hdrs, data = c.request("$JS.API.DIRECT.GET.%s" % stream, {"last_by_subj": subject})
                self.assertIn("Nats-Sequence", hdrs)
                self.assertNotIn(b"forgetme", data)
            for n in (self.a, self.b):
                self.assertEqual(n.request("GET", "/v1/sessions/%s?user_id=forgetme" % sid)[0], 404)
            # the id starts over on the other edge; what the first edge reads is the new life only
            st, r = self.b.complete(prompt="Anew", user_id="forgetme", session_id=sid, turn=1, n_predict=2)
            self.assertEqual(st, 200, r)
            st, info = self.a.request("GET", "/v1/sessions/%s?user_id=forgetme&include=turns" % sid)
            self.assertEqual((st, [t["turn"] for t in info["turns"]]), (200, [1]), info)
            # A node down at the time of a delete (nobody on its leaf hears
            # of it) cleans its mirror when it starts (its first sweep).
            st, r = self.a.complete(prompt="Hello", user_id="forgetme", n_predict=2)
            sid2 = r["session_id"]
            st, r = self.a.complete(prompt="More", user_id="forgetme", session_id=sid2, turn=2, n_predict=2)
            self.assertEqual(st, 200, r)
            subject = prefix + sid2
            self.b.stop()
            try:
                deadline = time.monotonic() + 60
                while conns[2].count(stream, subject) != 2:
                    self.assertLess(time.monotonic(), deadline, "leaf2's mirror never got both turns")
                    time.sleep(0.1)
                st, _ = self.a.request("DELETE", "/v1/sessions/%s?user_id=forgetme" % sid2)
                self.assertEqual(st, 200)
                while conns[2].count(stream, subject) != 3:  # the tombstone reached it; the turns stay
                    self.assertLess(time.monotonic(), deadline, "leaf2's mirror never got the tombstone")
                    time.sleep(0.1)
            finally:
                self.b.start()
            while conns[2].count(stream, subject) != 1:
                self.assertLess(time.monotonic(), deadline, "leaf2's mirror kept the deleted turns")
                time.sleep(0.2)
        finally:
            for c in conns:
                c.close()

    def test_expiry_sweep_spares_a_turn_committed_while_it_works(self):
        rc, out = driver("sweep", self.core.url, env={"DC_FAULT_BURY_PAUSE_MS": "1500"})
        self.assertEqual(rc, 0, out)

    def test_purge_after_a_tombstone_keeps_a_new_life_started_meanwhile(self):
        rc, out = driver("purge", self.core.url, env={"DC_FAULT_BURY_PAUSE_MS": "1500"})
        self.assertEqual(rc, 0, out)

    def test_commit_on_a_context_from_an_earlier_life_is_refused(self):
        rc, out = driver("reborn", self.core.url)
        self.assertEqual(rc, 0, out)

    def test_lost_publish_ack_is_settled_not_answered_503(self):
        # a server of its own: the case stops it (SIGSTOP) for seconds
        own = NatsServer(NATS, self.dir, "paused").start()
        try:
            rc, out = driver("unacked", own.url, own.proc.pid)
        finally:
            own.kill()
        self.assertEqual(rc, 0, out)
        self.assertIn("publishing it again", out)  # the acknowledgement was lost for real

    def test_earlier_lives_on_a_mirror_are_freed_and_not_walked_again(self):
        rc, out = driver("lives", self.leaves[0].url, "core")
        self.assertEqual(rc, 0, out)
        stream, prefix = out.split()[1], out.split()[3]
        conn = RawNats(self.leaves[0].port)
        try:
            # the read dropped the five earlier lives (ten messages) from the mirror
            self.assertEqual(conn.count(stream, prefix + "lives"), 2)
        finally:
            conn.close()

    def test_ids_that_are_no_subject_token_get_400_on_both_stores(self):
        for node in (self.a, self.embedded):
            for sid in ("a..b", "x.", ".x", "."):
                st, body = node.complete(prompt="Hi", user_id="idcheck", session_id=sid, turn=1, n_predict=2)
                self.assertEqual((st, body["error"]["type"]), (400, "invalid_request"), (node.node_id, sid, body))
                self.assertNotIn("timings", body)
                for method in ("GET", "DELETE"):
                    st, body = node.request(method, "/v1/sessions/%s?user_id=idcheck" % sid)
                    self.assertEqual(st, 400, (node.node_id, method, sid, body))
            # a dot between two characters is a subject's separator: fine on both
            sid = "dotted.%s.id" % node.node_id.replace("-", "")
            for turn in (1, 2):
                st, r = node.complete(prompt="Hi", user_id="idcheck", session_id=sid, turn=turn, n_predict=2)
                self.assertEqual(st, 200, (node.node_id, r))


if __name__ == "__main__":
    BIN, MODEL, NATS, DRIVER = sys.argv[1:5]
    unittest.main(argv=[sys.argv[0], "-v"] + sys.argv[5:])
