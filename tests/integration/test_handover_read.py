"""test_handover_read.py - issue 15 item 5, on real nats-server processes and
real nodes: a handover read costs at most one round trip to the core, never
one per missing turn.

The edge topology of test_nats.py's LeafNodes, with one core server: a core
nats-server (JetStream domain "core") and two edge hosts, each with its own
leaf nats-server. edge-1's leaf holds the usual mirror. edge-2's mirror is
made by this test before edge-2 starts, following none of the sessions (a
mirror filter matching nothing): a mirror that has never seen the session,
as one that lags does, deterministically. Every read of a session on edge-2
thus asks its mirror, finds less than the client's turn, and asks the core.
The round trips are the reply's timings.store_read_trips (all) and
store_read_core_trips (to the core). edge-2 and edge-3 do not warm sessions
up (--warm-sessions 0), which would read them before the turn does. edge-3 shares edge-2's leaf and runs
with DC_FAULT_NO_BATCH=1: the per-message read kept for servers that refuse
batched gets.

usage: test_handover_read.py DISCEDGE_BINARY MODEL.gguf NATS_SERVER"""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NatsServer, Node, RawNats, stop_all, turns_of  # noqa: E402

BIN = MODEL = NATS = None
ONE_THREAD = ("--threads", "1")
TURNS = 4  # committed on edge-1 before the handover


class HandoverRead(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-handover-read-")
        cls.servers, cls.nodes = [], []
        try:
            cls.core = NatsServer(NATS, cls.dir, "core", domain="core", leaf_listen=True).start()
            cls.servers.append(cls.core)
            leaves = [NatsServer(NATS, cls.dir, "leaf%d" % i, domain="edge%d" % i, leaf_remotes=[cls.core.leaf_port])
                      for i in (1, 2)]
            for leaf in leaves:
                cls.servers.append(leaf.start())
            store = ("--store-core-domain", "core") + ONE_THREAD
            cls.a = Node(BIN, MODEL, os.path.join(cls.dir, "a"), "edge-1", ("--store", leaves[0].url) + store).start()
            # Warm-up off on the nodes a session moves to: it reads a session
            # as soon as it is committed elsewhere (one round trip to the
            # core too), which would leave the turn's own read nothing to
            # fetch. This file is about that read: on a node not warming (off,
            # full, or the client faster than the commit's note).
            store += ("--warm-sessions", "0")
            cls.nodes.append(cls.a)
            # edge-1 created the core stream: edge-2's mirror of it, before
            # edge-2 starts (which then keeps it: a mirror that exists with
            # another configuration is used as it is)
            core, leaf2 = RawNats(cls.core.port), RawNats(leaves[1].port)
            try:
                names = core.api("$JS.API.STREAM.NAMES", {})["streams"]
                stream = [n for n in names if n.startswith("DISCEDGE_")][0]
                r = leaf2.api("$JS.API.STREAM.CREATE.%s" % stream, {
                    "name": stream, "storage": "file", "allow_direct": True,
                    "mirror": {"name": stream, "filter_subject": "dce.none",
                               "external": {"api": "$JS.core.API"}}})
                assert "error" not in r, r
            finally:
                core.close()
                leaf2.close()
            cls.b = Node(BIN, MODEL, os.path.join(cls.dir, "b"), "edge-2", ("--store", leaves[1].url) + store).start()
            cls.nodes.append(cls.b)
            cls.c = Node(BIN, MODEL, os.path.join(cls.dir, "c"), "edge-3", ("--store", leaves[1].url) + store,
                         env={"DC_FAULT_NO_BATCH": "1"}).start()
            cls.nodes.append(cls.c)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.nodes, cls.servers, cls.dir)

    def turn(self, node, user, sid, turn, prompt):
        st, r = node.complete(prompt=prompt, user_id=user, session_id=sid, turn=turn, n_predict=2, ignore_eos=True)
        self.assertEqual((st, r.get("turn")), (200, turn), r)
        return r

    def conversation(self, user):
        """A session of TURNS turns on edge-1; returns its id and its state
        as edge-1 has it (turns and context)."""
        sid = self.turn(self.a, user, None, 1, "Hello there")["session_id"]
        for t in range(2, TURNS + 1):
            self.turn(self.a, user, sid, t, "And then %d?" % t)
        return sid, turns_of(self.a, sid, user)

    def handover(self, node, user, sid, before, turn):
        """Turn `turn` of sid on node, whose mirror has none of it: the reply
        and what node then stores hold the whole context read from the core."""
        r = self.turn(node, user, sid, turn, "Over here now")
        after = turns_of(node, sid, user)
        self.assertEqual(after["turns"][:turn - 1], before["turns"])
        new = after["turns"][turn - 1]
        # fed: everything stored before the turn, then the turn's own prompt
        self.assertEqual(r["context_tokens"], before["context_tokens"] + len(new["system"]) + len(new["user"]), r)
        return r

    def test_handover_read_is_one_round_trip_to_the_core(self):
        """A node that has nothing of the session reads its TURNS turns from
        the core in one round trip (one to its own mirror before it); later,
        holding turns 1..5, it reads the two committed elsewhere since in
        one round trip too."""
        sid, before = self.conversation("mover")
        r = self.handover(self.b, "mover", sid, before, TURNS + 1)
        trips = (r["timings"].get("store_read_trips"), r["timings"].get("store_read_core_trips"))
        self.assertEqual(trips, (2, 1), r["timings"])
        for t in (TURNS + 2, TURNS + 3):
            self.turn(self.a, "mover", sid, t, "Back at the first node, %d" % t)
        before = turns_of(self.a, sid, "mover")
        r = self.handover(self.b, "mover", sid, before, TURNS + 4)
        trips = (r["timings"].get("store_read_trips"), r["timings"].get("store_read_core_trips"))
        self.assertEqual(trips, (2, 1), r["timings"])

    def test_read_without_batched_gets_is_the_same_context(self):
        """Where the servers refuse batched gets the node reads one message
        per round trip (then one more that finds the end), and gets the same
        context."""
        sid, before = self.conversation("oldserver")
        r = self.handover(self.c, "oldserver", sid, before, TURNS + 1)
        self.assertEqual(r["timings"].get("store_read_core_trips"), TURNS + 1, r["timings"])


if __name__ == "__main__":
    BIN, MODEL, NATS = sys.argv[1:4]
    unittest.main(argv=[sys.argv[0], "-v"] + sys.argv[4:])
