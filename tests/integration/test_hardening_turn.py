"""test_hardening_turn.py - the turn protocol at its edges (issue 14, items 6,
12 and 15), on real nodes over real HTTP, with real nats-servers where the
store is involved:

 - a retry (same request_id) sent to a node whose mirror is behind gets the
   reply committed through another node, for a first turn and a later one;
 - a session whose records do not decode can be deleted, on either store,
   and on the embedded store nothing of it is left behind;
 - a turn that commits just after its session's TTL is 404, not 409;
 - two continuations of one stored response both succeed, one in a fork;
 - a leaf node whose core is unreachable answers 503 for a session it has
   never seen, not 404;
 - raw mode renders each stored turn once per request, however many turns
   the context window drops; a session holds at most --max-session-tokens.

usage: test_hardening_turn.py DISCEDGE_BINARY MODEL.gguf NATS_SERVER"""
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import LlmServer, NatsServer, Node, stop_all, turns_of  # noqa: E402

BIN = MODEL = NATS = None
# Nodes on one 2-core host must not oversubscribe it: ggml threads spin.
ONE_THREAD = ("--threads", "1")


def nats_request(port, subject, payload, timeout=10):
    """A core-NATS request, as any NATS client sends one; the reply parsed as JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        inbox = b"_INBOX.hardening_turn"
        s.sendall(b'CONNECT {"verbose":false}\r\nSUB %s 1\r\nPUB %s %s %d\r\n%s\r\n' % (
            inbox, subject.encode(), inbox, len(payload), payload))
        while True:
            line = f.readline()
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                n = int(line.split()[-1])
                return json.loads(f.read(n + 2)[:n])
            elif not line or line.startswith(b"-ERR"):
                raise AssertionError("nats request %s: %r" % (subject, line))


def nats_publish(port, subject, payload):
    """A plain core-NATS publish, as anyone with write access to the store
    could send; the stream captures it as the subject's latest message."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        s.sendall(b'CONNECT {"verbose":false}\r\nPUB %s %d\r\n%s\r\nPING\r\n' % (subject.encode(), len(payload), payload))
        assert f.readline() == b"PONG\r\n"


def keygroup_of(nats):
    """The model's keygroup, from the one stream the nodes created."""
    names = {d for _, dirs, _ in os.walk(os.path.join(nats.dir, "js")) for d in dirs if d.startswith("DISCEDGE_")}
    assert len(names) == 1, names
    return names.pop()[len("DISCEDGE_"):]


def lmdb_entries(path):
    """{name: entries} of the named databases in an LMDB file, read from its
    newest meta page (LMDB 0.9 on a 64-bit little-endian machine): page
    header 16 bytes; MDB_meta = magic, version, address, mapsize, then two
    48-byte MDB_db (free, main; the free one's md_pad is the page size),
    last page, txnid. The main database's root is a leaf page whose nodes
    are the named databases, each an MDB_db with md_entries at offset 32."""
    with open(path, "rb") as f:
        data = f.read()

    def meta(off):
        psize = struct.unpack_from("<I", data, off + 40)[0]
        main = data[off + 88:off + 136]
        txnid = struct.unpack_from("<Q", data, off + 144)[0]
        return psize, main, txnid

    psize = meta(0)[0]
    _, main, _ = max(meta(0), meta(psize), key=lambda m: m[2])
    depth, root = struct.unpack_from("<H", main, 6)[0], struct.unpack_from("<Q", main, 40)[0]
    assert depth == 1, "more named databases than one page holds"
    page = data[root * psize:(root + 1) * psize]
    lower = struct.unpack_from("<H", page, 12)[0]
    out = {}
    for i in range((lower - 16) // 2):
        at = struct.unpack_from("<H", page, 16 + 2 * i)[0]
        ksize = struct.unpack_from("<H", page, at + 6)[0]
        name = page[at + 8:at + 8 + ksize].decode()
        out[name] = struct.unpack_from("<Q", page, at + 8 + ksize + 32)[0]
    return out


class Stream:
    """A streamed POST, read event by event in a thread of its own. The
    constructor returns once the reply's headers are in (for /completion:
    once the first token is)."""

    def __init__(self, node, path, body):
        self.conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=300)
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.events, self.done = [], threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for line in self.resp:
                if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                    self.events.append(json.loads(line[6:]))
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            self.done.set()

    def first_event(self):
        while not self.events and not self.done.is_set():
            time.sleep(0.01)
        return self.events[0] if self.events else None

    def finish(self):
        self.thread.join(300)
        self.conn.close()
        return self.events

    def cut(self):
        """The client leaves mid-stream."""
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(60)
        self.conn.close()


def in_thread(fn, *args, **kw):
    """Runs fn in a thread; the returned callable joins it and gives fn's result."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn(*args, **kw)), daemon=True)
    t.start()
    return lambda: (t.join(300), box["r"])[1]


class Replicated(unittest.TestCase):
    """A core nats-server (JetStream domain "core"), edge-1 connected to it,
    and edge-2 on a leaf nats-server of its own whose mirror of the stream
    never receives anything: a mirror as far behind as a mirror can be, so
    that edge-2 knows of a session only what it committed or read itself."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-hardening-turn-")
        cls.servers, cls.nodes = [], []
        try:
            cls.core = NatsServer(NATS, cls.dir, "core", domain="core", leaf_listen=True).start()
            cls.servers.append(cls.core)
            cls.leaf = NatsServer(NATS, cls.dir, "leaf", domain="edge", leaf_remotes=[cls.core.leaf_port]).start()
            cls.servers.append(cls.leaf)
            cls.a = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "a"), "edge-1",
                                   ("--store", cls.core.url) + ONE_THREAD))
            cls.kg = keygroup_of(cls.core)
            stream = "DISCEDGE_" + cls.kg
            # the leaf's mirror, made before edge-2 would make it: it follows
            # a JetStream domain that does not exist (edge-2 finds the stream
            # there and uses it as it is)
            reply = nats_request(cls.leaf.port, "$JS.API.STREAM.CREATE." + stream, json.dumps({
                "name": stream, "storage": "file", "allow_direct": True,
                "mirror": {"name": stream, "external": {"api": "$JS.nowhere.API"}}}).encode())
            assert "error" not in reply, reply
            cls.b = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "b"), "edge-2",
                                   ("--store", cls.leaf.url, "--store-core-domain", "core", "--sync-timeout", "1000")
                                   + ONE_THREAD))
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls, node):
        cls.nodes.append(node)
        return node.start()

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.nodes, cls.servers, cls.dir)

    def turns(self, node, sid, user):
        return turns_of(node, sid, user)

    def test_retry_on_a_node_whose_mirror_is_behind_gets_the_committed_reply(self):
        user = "retrier"
        # a first turn committed through edge-1, its reply lost, retried on edge-2
        sid = "first-%d" % os.getpid()
        st, r1 = self.a.complete(prompt="Hello", user_id=user, session_id=sid, turn=1, n_predict=8,
                                 request_id="req-1")
        self.assertEqual(st, 200, r1)
        st, again = self.b.complete(prompt="Hello", user_id=user, session_id=sid, turn=1, n_predict=8,
                                    request_id="req-1")
        self.assertEqual((st, again.get("replayed")), (200, True), again)
        self.assertEqual(again["content"], r1["content"])

        # turn 1 through edge-2 (which therefore knows it), turn 2 through
        # edge-1, its reply lost, retried on edge-2: edge-2's view ends at
        # turn 1, which is just what a new turn 2 would continue
        st, r = self.b.complete(prompt="Hello", user_id=user, n_predict=8)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]
        st, r2 = self.a.complete(prompt="Tell me a fact.", user_id=user, session_id=sid, turn=2, n_predict=16,
                                 request_id="req-2")
        self.assertEqual(st, 200, r2)
        st, again = self.b.complete(prompt="Tell me a fact.", user_id=user, session_id=sid, turn=2, n_predict=16,
                                    request_id="req-2")
        self.assertEqual((st, again.get("replayed")), (200, True), again)
        self.assertEqual(again["content"], r2["content"])
        # another request for the same turn is still a conflict
        st, other = self.b.complete(prompt="Tell me a fact.", user_id=user, session_id=sid, turn=2, n_predict=4,
                                    request_id="req-x")
        self.assertEqual((st, other["error"]["type"], other["error"].get("expected_turn")), (409, "turn_conflict", 3),
                         other)
        info = self.turns(self.a, sid, user)
        self.assertEqual([t["turn"] for t in info["turns"]], [1, 2])
        self.assertEqual(len(info["turns"][1]["reply"]), r2["tokens_predicted"])

    def responses(self, node, **body):
        body.setdefault("temperature", 0)
        body.setdefault("user", "forker")
        return node.request("POST", "/v1/responses", body)

    def assertForked(self, sid, fork, user, turns):
        """fork holds a copy of sid's turns before the last, then a turn of its own."""
        self.assertNotEqual(fork, sid)
        orig, copy = self.turns(self.a, sid, user), self.turns(self.a, fork, user)
        self.assertEqual([t["turn"] for t in copy["turns"]], list(range(1, turns + 1)))
        self.assertEqual(copy["turns"][:turns - 1], orig["turns"][:turns - 1])

    def test_continuations_of_one_response_racing_on_one_node_fork(self):
        st, r1 = self.responses(self.a, input="Hello", max_output_tokens=4)
        self.assertEqual(st, 200, r1)
        sid = r1["session_id"]
        # one continuation holds the session's turn 2 while it generates ...
        first = Stream(self.a, "/v1/responses", {"input": "Count slowly to a hundred.", "user": "forker",
                                                 "previous_response_id": r1["id"], "max_output_tokens": 200,
                                                 "ignore_eos": True, "temperature": 0, "stream": True})
        self.assertEqual(first.resp.status, 200)
        # ... the other asks for the same turn meanwhile, and goes on in a fork
        st, second = self.responses(self.a, input="Name a colour.", previous_response_id=r1["id"], max_output_tokens=4)
        events = first.finish()
        done = [e for e in events if e.get("type") == "response.completed"]
        self.assertEqual(len(done), 1, events[-1:])
        self.assertEqual((done[0]["response"]["session_id"], done[0]["response"]["turn"]), (sid, 2))
        self.assertEqual(st, 200, second)
        self.assertEqual(second["turn"], 2)
        self.assertEqual(second["id"], "resp_%s_2" % second["session_id"])
        self.assertForked(sid, second["session_id"], "forker", 2)

    def test_continuations_of_one_response_racing_across_nodes_fork(self):
        st, r1 = self.responses(self.a, input="Hello", max_output_tokens=4)
        self.assertEqual(st, 200, r1)
        sid = r1["session_id"]
        # edge-1 generates a long turn 2; edge-2 commits a short one first
        first = Stream(self.a, "/v1/responses", {"input": "Count slowly to a hundred.", "user": "forker",
                                                 "previous_response_id": r1["id"], "max_output_tokens": 200,
                                                 "ignore_eos": True, "temperature": 0, "stream": True})
        while not any(e.get("type") == "response.output_text.delta" for e in first.events):
            self.assertFalse(first.done.is_set(), first.events)
            time.sleep(0.01)
        st, second = self.responses(self.b, input="Name a colour.", previous_response_id=r1["id"], max_output_tokens=4)
        self.assertEqual((st, second.get("session_id"), second.get("turn")), (200, sid, 2), second)
        # edge-1's commit finds the turn taken: its reply goes on in a fork
        events = first.finish()
        done = [e for e in events if e.get("type") == "response.completed"]
        self.assertEqual(len(done), 1, events[-1:])
        fork = done[0]["response"]["session_id"]
        self.assertEqual(done[0]["response"]["id"], "resp_%s_2" % fork)
        self.assertForked(sid, fork, "forker", 2)

    def test_undecodable_session_can_be_deleted(self):
        st, r = self.a.complete(prompt="Hello", user_id="mangled", n_predict=4)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]
        # the session's latest record is garbage (a damaged or planted record)
        nats_publish(self.core.port, "dce.%s.t.%s" % (self.kg, sid), b"not a commit record")
        st, err = self.a.request("GET", "/v1/sessions/%s?user_id=mangled" % sid)
        self.assertEqual((st, err["error"]["type"]), (500, "store_error"), err)
        st, gone = self.a.request("DELETE", "/v1/sessions/%s?user_id=mangled" % sid)
        self.assertEqual(st, 200, gone)
        st, _ = self.a.request("GET", "/v1/sessions/%s?user_id=mangled" % sid)
        self.assertEqual(st, 404)
        # the id starts over
        st, r = self.a.complete(prompt="Anew", user_id="mangled", session_id=sid, turn=1, n_predict=4)
        self.assertEqual(st, 200, r)

    def test_unseen_session_with_the_core_unreachable_is_503(self):
        st, r = self.a.complete(prompt="Hello", user_id="island", n_predict=4)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]  # never seen by edge-2, and not in its mirror
        self.core.kill()
        try:
            st, err = self.b.request("GET", "/v1/sessions/%s?user_id=island" % sid)
            self.assertEqual((st, err["error"]["type"]), (503, "store_unavailable"), err)
            st, err = self.b.complete(prompt="Again", user_id="island", session_id=sid, turn=2, n_predict=4)
            self.assertEqual((st, err["error"]["type"]), (503, "store_unavailable"), err)
        finally:
            self.core.start()
        deadline = time.monotonic() + 60
        while self.a.request("GET", "/v1/sessions/%s?user_id=island" % sid)[0] != 200:
            self.assertLess(time.monotonic(), deadline, "the core did not come back")
            time.sleep(0.2)


class EmbeddedFork(unittest.TestCase):
    """The same race on the embedded store, whose commit also checks that the
    session is the life it read (creation time and owner): the fork's turn
    must be committed as the copy's next turn, not the original's."""
    responses = Replicated.responses
    turns = Replicated.turns
    assertForked = Replicated.assertForked
    test_continuations_of_one_response_racing_on_one_node_fork = \
        Replicated.test_continuations_of_one_response_racing_on_one_node_fork

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-hardening-turn-fork-")
        cls.a = Node(BIN, MODEL, os.path.join(cls.dir, "a"), "edge-1", ONE_THREAD).start()

    @classmethod
    def tearDownClass(cls):
        cls.a.cleanup()
        shutil.rmtree(cls.dir, ignore_errors=True)


class Embedded(unittest.TestCase):
    """Nodes on the embedded store."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-hardening-turn-emb-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def node(self, name, *extra):
        n = Node(BIN, MODEL, os.path.join(self.dir, name), name, ONE_THREAD + extra).start()
        self.addCleanup(n.cleanup)
        return n

    def test_undecodable_session_can_be_deleted_and_leaves_nothing(self):
        folder = os.path.join(self.dir, "undecodable")
        plain = Node(BIN, MODEL, folder, "plain", ONE_THREAD).start()
        try:
            st, r = plain.complete(prompt="Hello", user_id="owner", n_predict=2)
            self.assertEqual(st, 200, r)
            sid = r["session_id"]
            for turn in (2, 3):
                st, r = plain.complete(prompt="More", user_id="owner", session_id=sid, turn=turn, n_predict=2)
                self.assertEqual(st, 200, r)
            st, r = plain.complete(prompt="Another", user_id="owner", n_predict=2)
            self.assertEqual(st, 200, r)
        finally:
            plain.cleanup()
        # the same folder under a store key: every record there fails to open
        key = os.path.join(self.dir, "store.key")
        subprocess.run([BIN, "keygen", key], check=True)
        sealed = Node(BIN, MODEL, folder, "sealed", ONE_THREAD + ("--store-key", key)).start()
        try:
            st, err = sealed.request("GET", "/v1/sessions/%s?user_id=owner" % sid)
            self.assertEqual((st, err["error"]["type"]), (500, "store_error"), err)
            st, gone = sealed.request("DELETE", "/v1/sessions/%s?user_id=owner" % sid)
            self.assertEqual(st, 200, gone)
            st, _ = sealed.request("GET", "/v1/sessions/%s?user_id=owner" % sid)
            self.assertEqual(st, 404)
        finally:
            sealed.cleanup()
        # what is left: the other session's meta and turn, nothing of this one
        self.assertEqual(lmdb_entries(os.path.join(folder, "store", "data.mdb")), {"meta": 1, "turns": 1})
        shutil.rmtree(folder, ignore_errors=True)

    def test_turn_committing_after_the_ttl_is_404_not_409(self):
        node = self.node("ttl", "--session-ttl", "2", "--parallel", "1")
        st, r = node.complete(prompt="Hello", user_id="late", n_predict=2)
        self.assertEqual(st, 200, r)
        t1 = time.monotonic()
        sid = r["session_id"]
        # a long generation holds the engine's one sequence ...
        blocker = Stream(node, "/completion", {"prompt": "Count slowly to a thousand.", "user_id": "other",
                                               "n_predict": 4000, "ignore_eos": True, "stream": True})
        self.assertIsNotNone(blocker.first_event())
        # ... so turn 2, read while the session is live, waits to generate
        turn2 = in_thread(node.complete, prompt="Go on", user_id="late", session_id=sid, turn=2, n_predict=2)
        time.sleep(max(0.0, t1 + 2.7 - time.monotonic()))  # past the TTL
        self.assertFalse(blocker.done.is_set(), "the long generation ended before the TTL")
        blocker.cut()
        st, err = turn2()
        self.assertEqual((st, err["error"]["type"]), (404, "not_found"), err)
        self.assertIn("while turn 2 was generated", err["error"]["message"])
        st, _ = node.request("GET", "/v1/sessions/%s?user_id=late" % sid)
        self.assertEqual(st, 404)

    def test_session_bound_is_a_clear_400_and_leaves_the_session(self):
        node = self.node("bound", "--max-session-tokens", "400")
        st, r = node.complete(prompt="Hello", user_id="chatty", n_predict=100, ignore_eos=True)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]
        st, r = node.complete(prompt="Go on", user_id="chatty", session_id=sid, turn=2, n_predict=100, ignore_eos=True)
        self.assertEqual(st, 200, r)
        st, info = node.request("GET", "/v1/sessions/%s?user_id=chatty" % sid)
        held = info["context_tokens"]
        self.assertLess(held + 60, 400, info)
        # the message and n_predict would take it past the bound: refused, before any generation
        st, err = node.complete(prompt="Go on", user_id="chatty", session_id=sid, turn=3, n_predict=400 - held,
                                ignore_eos=True)
        self.assertEqual((st, err["error"]["type"]), (400, "session_full"), err)
        self.assertIn("--max-session-tokens", err["error"]["message"])
        st, after = node.request("GET", "/v1/sessions/%s?user_id=chatty" % sid)
        self.assertEqual((after["turn"], after["context_tokens"]), (2, held))
        # what fits still commits
        st, r = node.complete(prompt="Go on", user_id="chatty", session_id=sid, turn=3, n_predict=400 - held - 40,
                              ignore_eos=True)
        self.assertEqual(st, 200, r)


class RawMode(unittest.TestCase):
    def test_raw_mode_renders_each_turn_once_however_many_are_dropped(self):
        """Through a remote engine each piece tokenized is one /tokenize
        request: a turn of a raw session far past the context window makes
        a number of them proportional to the session's turns (it made one
        whole rendering per dropped turn)."""
        llm = LlmServer(BIN, MODEL, extra=["--threads", "1", "--parallel", "1", "--ctx-size", "512",
                                           "--log-level", "debug"]).start()
        node = None
        try:
            node = Node(BIN, MODEL, llm_url=llm.url, node_id="raw").start()
            st, r = node.complete(prompt="Say something.", user_id="raw", mode="raw", n_predict=48, ignore_eos=True)
            self.assertEqual(st, 200, r)
            sid, turns = r["session_id"], 12
            for turn in range(2, turns):
                st, r = node.complete(prompt="Say more.", user_id="raw", mode="raw", session_id=sid, turn=turn,
                                      n_predict=48, ignore_eos=True)
                self.assertEqual(st, 200, r)
            before = llm.log_text().count("POST /tokenize")
            st, r = node.complete(prompt="Say more.", user_id="raw", mode="raw", session_id=sid, turn=turns,
                                  n_predict=48, ignore_eos=True)
            self.assertEqual(st, 200, r)
            self.assertGreaterEqual(r["truncated_turns"], 4, r)
            time.sleep(0.5)  # the last request's log lines
            calls = llm.log_text().count("POST /tokenize") - before
            self.assertLessEqual(calls, 6 * turns, "%d /tokenize requests for one turn" % calls)
        finally:
            if node:
                node.cleanup()
            llm.cleanup()


if __name__ == "__main__":
    BIN, MODEL, NATS = sys.argv[1:4]
    unittest.main(argv=sys.argv[:1] + sys.argv[4:], verbosity=2)
