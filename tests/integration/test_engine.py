"""test_engine.py - the LLM engine behind a real node: KV-cache reuse across
turns, requests of several sessions generating together, the admission
queue (429 + Retry-After), a client that disconnects mid-generation, and
the LLM service on another process (`llm-serve` + `serve --llm`).

Nothing here asserts a duration: the engine's own counters (/health) and
the timings of each reply show what happened.

usage: test_engine.py DISCEDGE_BINARY MODEL.gguf"""
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import LlmServer, Node, raw_post, remote_pair, stop_pair, turns_of  # noqa: E402
from fake_llama import FakeLlama  # noqa: E402

BIN = MODEL = None
# one inference thread per process: several llama.cpp processes on a small
# machine otherwise spin against each other
ONE_THREAD = ["--threads", "1"]


def engine(node):
    st, h = node.request("GET", "/health")
    assert st == 200, h
    return h["engine"]


def spill_files(spill_dir):
    """The spill files under spill_dir: each engine keeps its own in a
    private folder there (engine.c)."""
    return [f for _, _, fs in os.walk(spill_dir) for f in fs]


def wait_for(node, pred, what, limit_s=120):
    """Polls /health until pred(engine) holds; the limit only bounds a hang."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        e = engine(node)
        if pred(e):
            return e
        time.sleep(0.01)
    raise AssertionError("engine never reached: %s (last %s)" % (what, e))


class OneNode(unittest.TestCase):
    """A node for the whole class, started with ONE_THREAD + engine."""
    engine = []

    @classmethod
    def setUpClass(cls):
        cls.node = Node(BIN, MODEL, extra=ONE_THREAD + cls.engine).start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()


class ReuseTest(OneNode):
    """One node, KV kept in memory for 2 conversations at most, none on disk."""
    engine = ["--parallel", "1", "--kv-cache-sessions", "2", "--kv-spill-mib", "0"]

    def turn(self, sid, turn, prompt, **kw):
        fields = dict(prompt=prompt, user_id="u", turn=turn, **kw)
        if sid:
            fields["session_id"] = sid
        st, r = self.node.complete(**fields)
        self.assertEqual(st, 200, r)
        return r

    def test_next_turn_prefills_only_new_tokens(self):
        r1 = self.turn(None, 1, "Name three colours.")
        sid = r1["session_id"]
        r2 = self.turn(sid, 2, "And three fruits?")
        # the KV of turn 1's input and of every generated token that was fed
        # back (all of them when it stopped at end-of-generation; all but the
        # last when it hit n_predict) is reused
        kept = r1["context_tokens"] + r1["tokens_predicted"] - (0 if r1["stopped_eos"] else 1)
        self.assertEqual(r2["timings"]["cache_n"], kept)
        self.assertEqual(r2["timings"]["prompt_n"], r2["context_tokens"] - kept)
        # cache_prompt:false prefills all of it
        r3 = self.turn(sid, 3, "And three animals?", cache_prompt=False)
        self.assertEqual(r3["timings"]["cache_n"], 0)
        self.assertEqual(r3["timings"]["prompt_n"], r3["context_tokens"])

    def test_evicted_session_falls_back_to_prefill(self):
        a = self.turn(None, 1, "Tell me about the moon.")["session_id"]
        # two other conversations take both sequences; a's is the oldest
        for p in ("Tell me about rivers.", "Tell me about bread."):
            self.turn(None, 1, p)
        r = self.turn(a, 2, "How far away is it?")
        # only the chat markup every conversation starts with can match
        self.assertLess(r["timings"]["cache_n"], 8, r["timings"])
        self.assertEqual(r["timings"]["prompt_n"] + r["timings"]["cache_n"], r["context_tokens"])
        st, s = self.node.request("GET", "/v1/sessions/%s?user_id=u" % a)
        self.assertEqual((st, s["turn"]), (200, 2))

    def test_ignore_eos_generates_exactly_n_predict(self):
        r = self.turn(None, 1, "Say hi.", n_predict=64, ignore_eos=True)
        self.assertEqual(r["tokens_predicted"], 64)
        self.assertTrue(r["stopped_limit"])


class SpillTest(OneNode):
    """One sequence in memory; a conversation pushed out goes to disk and
    comes back from there."""
    engine = ["--parallel", "1", "--kv-cache-sessions", "1"]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.spill_dir = os.path.join(cls.node.data_dir, "store", "kv-spill")

    def test_evicted_conversation_is_restored_from_disk(self):
        before = engine(self.node)
        st, a = self.node.complete(prompt="Describe a forest.", user_id="s", turn=1, n_predict=100, ignore_eos=True)
        self.assertEqual(st, 200, a)
        st, b = self.node.complete(prompt="Describe a desert.", user_id="s", turn=1, n_predict=100, ignore_eos=True)
        self.assertEqual(st, 200, b)
        mid = engine(self.node)
        self.assertEqual(mid["spill_saves"] - before["spill_saves"], 1)
        self.assertEqual(len(spill_files(self.spill_dir)), 1)
        st, a2 = self.node.complete(prompt="Which animals live there?", user_id="s", turn=2,
                                    session_id=a["session_id"])
        self.assertEqual(st, 200, a2)
        after = engine(self.node)
        self.assertEqual(after["spill_restores"] - before["spill_restores"], 1)
        # everything turn 1 left in the KV came back: input and 99 of the
        # 100 generated tokens (the last was never fed back)
        self.assertEqual(a2["timings"]["cache_n"], a["context_tokens"] + 99)
        # b was spilled in turn, a's file was consumed
        self.assertEqual(after["spill_saves"] - before["spill_saves"], 2)
        self.assertEqual(len(spill_files(self.spill_dir)), 1)

    def test_spill_files_go_at_exit(self):
        self.assertTrue(os.path.isdir(self.spill_dir))
        n = Node(BIN, MODEL, node_id="spill2", extra=ONE_THREAD + ["--parallel", "1", "--kv-cache-sessions", "1"])
        n.start()
        try:
            for p in ("One.", "Two.", "Three."):
                st, r = n.complete(prompt=p, user_id="s", turn=1, n_predict=80, ignore_eos=True)
                self.assertEqual(st, 200, r)
            d = os.path.join(n.data_dir, "store", "kv-spill")
            self.assertEqual(len(spill_files(d)), 2)
        finally:
            n.stop()
        self.assertEqual(os.listdir(d), [])
        n.cleanup()


class ParkTest(OneNode):
    """One sequence (--parallel 1) and three conversations kept in memory,
    no disk: the two outside the sequence are kept in the bytes their
    tokens need, not in a window each (issue 15: memory follows the tokens)."""
    engine = ["--parallel", "1", "--kv-cache-sessions", "3", "--kv-spill-mib", "0"]

    def turn1(self, prompt):
        st, r = self.node.complete(prompt=prompt, user_id="p", turn=1, n_predict=80, ignore_eos=True)
        self.assertEqual(st, 200, r)
        # what its sequence holds: the input and 79 of the 80 generated
        # tokens (the last was never fed back)
        return r["session_id"], r["context_tokens"] + 79

    def test_kept_conversations_cost_their_tokens(self):
        e0 = engine(self.node)
        # the context reserves one window, whatever --kv-cache-sessions says
        self.assertEqual(e0["n_slots"], 1)
        st, h = self.node.request("GET", "/health")
        per_token = e0["kv_bytes"] / h["n_ctx"]
        a, na = self.turn1("Describe a forest.")
        b, nb = self.turn1("Describe a desert.")
        c, nc = self.turn1("Describe a glacier.")
        e1 = engine(self.node)
        # a and b wait outside the sequence, c holds it
        self.assertEqual(e1["kv_parked"], 2, e1)
        self.assertEqual(e1["kv_parked_tokens"], na + nb, e1)
        self.assertEqual(e1["kv_slot_tokens"], nc, e1)
        # in their tokens' KV bytes, plus a small header (positions, layout)
        ratio = e1["kv_parked_bytes"] / (per_token * (na + nb))
        self.assertGreaterEqual(ratio, 1.0, e1)
        self.assertLess(ratio, 1.05, e1)
        self.assertEqual(e1["spill_bytes"], 0)
        # a comes back from memory with all of it
        st, r = self.node.complete(prompt="Which animals live there?", user_id="p", turn=2, session_id=a)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["timings"]["cache_n"], na)
        e2 = engine(self.node)
        self.assertEqual(e2["spill_restores"] - e1["spill_restores"], 1)
        # c took a's place outside, and b is still kept: a swap is no
        # eviction (round robin over the kept conversations reuses them all)
        self.assertEqual((e2["kv_parked"], e2["kv_parked_tokens"]), (2, nb + nc), e2)
        st, r = self.node.complete(prompt="Which animals live there?", user_id="p", turn=2, session_id=b)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["timings"]["cache_n"], nb)
        # a 4th conversation pushes out the least recently used (c): with no
        # disk it is dropped, and memory stays at two conversations' tokens
        self.turn1("Describe a harbour.")
        e3 = engine(self.node)
        self.assertEqual(e3["kv_parked"], 2, e3)
        st, r = self.node.complete(prompt="Which animals live there?", user_id="p", turn=2, session_id=c)
        self.assertEqual(st, 200, r)
        self.assertLess(r["timings"]["cache_n"], 8, r["timings"])

    def test_other_users_never_reuse_a_parked_conversation(self):
        sid, n = self.turn1("Describe a volcano.")
        self.turn1("Describe a canyon.")  # the volcano goes outside the sequence
        self.assertGreaterEqual(engine(self.node)["kv_parked"], 1)
        st, r = self.node.complete(prompt="Describe a volcano.", user_id="q", turn=1, n_predict=4)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["timings"]["cache_n"], 0, r["timings"])


class ConcurrencyTest(OneNode):
    """--parallel 2 --queue 1: two generate, one waits, the next is refused."""
    engine = ["--parallel", "2", "--queue", "1", "--kv-cache-sessions", "4"]

    def long_turn(self, results, i, **kw):
        st, r = self.node.complete(prompt="Write a long story about a lighthouse.", user_id="u%d" % i, turn=1,
                                   n_predict=kw.pop("n_predict", 160), ignore_eos=True, **kw)
        results[i] = (st, r)

    def test_full_queue_gets_429_and_sessions_survive(self):
        before = engine(self.node)
        results = {}
        threads = [threading.Thread(target=self.long_turn, args=(results, i)) for i in range(3)]
        for t in threads:
            t.start()
        wait_for(self.node, lambda e: e["active"] == 2 and e["queued"] == 1, "2 generating, 1 queued")
        st, r = self.node.complete(prompt="One more?", user_id="late", turn=1)
        self.assertEqual(st, 429, r)
        self.assertEqual(r["error"]["type"], "server_busy")
        self.assertGreaterEqual(int(self.node.last_headers.get("Retry-After")), 1)
        for t in threads:
            t.join()
        for i in range(3):
            st, r = results[i]
            self.assertEqual(st, 200, r)
            self.assertEqual(r["tokens_predicted"], 160)
            st, s = self.node.request("GET", "/v1/sessions/%s?user_id=u%d" % (r["session_id"], i))
            self.assertEqual((st, s["turn"]), (200, 1))
        after = engine(self.node)
        self.assertEqual(after["busy"] - before["busy"], 1)
        # the queued one waited for a sequence; the first two did not wait for each other
        waits = sorted(results[i][1]["timings"]["queue_ms"] for i in range(3))
        self.assertGreater(waits[2], waits[1])

    def test_refused_client_is_told_when_the_queue_drains(self):
        """Retry-After is the engine's estimate of when the queue ahead will
        have reached a sequence, at the pace it has just shown (queued x time
        per request / sequences), not a constant; and a retry of a committed
        turn (same request_id) is answered even while the engine is full:
        refusing happens after the replay check, before any other work."""
        # the pace: requests long enough that one queued request means a wait
        # of well over a second (n_predict grows until one takes >= 4 s here)
        n, svc = 64, []
        while True:
            st, r = self.node.complete(prompt="Pace.", user_id="pace", turn=1, n_predict=n, ignore_eos=True)
            self.assertEqual(st, 200, r)
            if r["timings"]["prompt_ms"] + r["timings"]["predicted_ms"] >= 4000 or n >= 1024:
                break
            n *= 2
        for _ in range(4):  # the estimate is a moving average: let it settle on this pace
            st, r = self.node.complete(prompt="Pace.", user_id="pace", turn=1, n_predict=n, ignore_eos=True)
            self.assertEqual(st, 200, r)
            svc.append(r["timings"]["prompt_ms"] + r["timings"]["predicted_ms"])
        st, done = self.node.complete(prompt="Hello.", user_id="rp", turn=1, n_predict=4, request_id="rp-1")
        self.assertEqual(st, 200, done)
        results = {}
        threads = [threading.Thread(target=self.long_turn, args=(results, i), kwargs={"n_predict": n})
                   for i in range(3)]
        for t in threads:
            t.start()
        wait_for(self.node, lambda e: e["active"] == 2 and e["queued"] == 1, "2 generating, 1 queued")
        st, r = self.node.complete(prompt="One more?", user_id="late", turn=1)
        retry_after = int(self.node.last_headers.get("Retry-After"))
        st2, again = self.node.complete(prompt="Hello.", user_id="rp", turn=1, n_predict=4, request_id="rp-1",
                                        session_id=done["session_id"])
        for t in threads:
            t.join()
        self.assertEqual(st, 429, r)
        # one request queued, two sequences, >= 4 s a request: >= 2 s, and
        # no more than that pace allows (rounded up)
        expect_max = int(max(svc) * 1 / 2 / 1000) + 2
        self.assertGreaterEqual(retry_after, 2, svc)
        self.assertLessEqual(retry_after, expect_max, svc)
        self.assertEqual(st2, 200, again)
        self.assertTrue(again.get("replayed"), again)
        self.assertEqual(again["content"], done["content"])
        for i in range(3):
            self.assertEqual(results[i][0], 200, results[i][1])

    def test_sessions_generate_together(self):
        """Two sessions' turns run at the same time, each to its own context."""
        sids, peak = {}, [0]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], engine(self.node)["active"])
                time.sleep(0.01)

        def chat(i):
            sid = None
            for turn, q in enumerate(["Name a colour.", "Why that one?", "Name another."], 1):
                f = dict(prompt=q, user_id="c%d" % i, turn=turn, n_predict=48, ignore_eos=True)
                if sid:
                    f["session_id"] = sid
                st, r = self.node.complete(**f)
                self.assertEqual(st, 200, r)
                if turn > 1:
                    self.assertGreater(r["timings"]["cache_n"], 0)
                sid = r["session_id"]
            sids[i] = sid

        w = threading.Thread(target=watch)
        w.start()
        ts = [threading.Thread(target=chat, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.set()
        w.join()
        self.assertEqual(len(sids), 2)
        self.assertEqual(peak[0], 2)
        for i, sid in sids.items():
            st, s = self.node.request("GET", "/v1/sessions/%s?user_id=c%d&include=turns" % (sid, i))
            self.assertEqual((st, s["turn"]), (200, 3))

    def test_slow_clients_do_not_stall_others(self):
        # one sends half its headers and stalls; one sends a request and
        # never reads the answer
        stalled = socket.create_connection(("127.0.0.1", self.node.port))
        stalled.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Len")
        deaf = raw_post(self.node.port, dict(prompt="Hi.", user_id="deaf", turn=1, n_predict=8))
        try:
            for i in range(3):
                st, r = self.node.complete(prompt="Quick %d." % i, user_id="quick", turn=1, n_predict=4)
                self.assertEqual(st, 200, r)
        finally:
            stalled.close()
            deaf.close()

    def test_disconnect_frees_the_slot_and_commits_nothing(self):
        st, r = self.node.complete(prompt="Hello.", user_id="gone", turn=1)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]
        before = engine(self.node)
        sock = raw_post(self.node.port, dict(prompt="Write a very long essay.", user_id="gone", session_id=sid,
                                             turn=2, n_predict=4000, ignore_eos=True, temperature=0))
        wait_for(self.node, lambda e: e["active"] == 1, "the turn generating")
        sock.close()
        after = wait_for(self.node, lambda e: e["active"] == 0, "the slot freed")
        self.assertEqual(after["cancelled"] - before["cancelled"], 1)
        # far fewer tokens than asked for were generated
        self.assertLess(after["generated_tokens"] - before["generated_tokens"], 4000)
        st, s = self.node.request("GET", "/v1/sessions/%s?user_id=gone" % sid)
        self.assertEqual((st, s["turn"]), (200, 1))
        st, r = self.node.complete(prompt="Still there?", user_id="gone", session_id=sid, turn=2)
        self.assertEqual(st, 200, r)


class RemoteTest(unittest.TestCase):
    """A context manager driving an engine in another process, exactly as it
    drives its own: same replies, same KV reuse, same errors."""

    @classmethod
    def setUpClass(cls):
        cls.llm, cls.node = remote_pair(BIN, MODEL, ONE_THREAD + ["--kv-cache-sessions", "4"])

    @classmethod
    def tearDownClass(cls):
        stop_pair(cls.llm, cls.node)

    def test_same_conversation_as_a_local_engine(self):
        # fresh engines on both sides, so both run the same llama_decode calls
        llm = LlmServer(BIN, MODEL, extra=ONE_THREAD + ["--kv-cache-sessions", "4"]).start()
        remote = local = None
        try:
            remote = Node(BIN, MODEL, node_id="cm2", llm_url=llm.url).start()
            local = Node(BIN, MODEL, node_id="local", extra=ONE_THREAD + ["--kv-cache-sessions", "4"]).start()
            replies = {}
            for name, n in (("remote", remote), ("local", local)):
                sid, out = None, []
                for turn, q in enumerate(["What is a robot?", "Name one sensor it uses.", "What does it measure?"], 1):
                    f = dict(prompt=q, user_id="r", turn=turn, system="Be brief.") if turn == 1 else \
                        dict(prompt=q, user_id="r", turn=turn, session_id=sid)
                    st, r = n.complete(**f)
                    self.assertEqual(st, 200, r)
                    if turn > 1:
                        self.assertGreater(r["timings"]["cache_n"], 0, "the remote engine reuses KV too")
                    sid = r["session_id"]
                    out.append(r["content"])
                st, s = n.request("GET", "/v1/sessions/%s?user_id=r&include=turns" % sid)
                self.assertEqual(st, 200, s)
                replies[name] = (out, s["turns"], s["context_tokens"])
            self.assertEqual(replies["remote"], replies["local"])
            self.assertEqual(engine(remote)["kind"], "remote")
            self.assertEqual(engine(local)["kind"], "local")
            self.assertGreater(engine(llm)["kv_hits"], 0)
        finally:
            for p in (local, remote, llm):
                if p:
                    p.cleanup()

    def test_markup_in_user_text_and_errors_pass_through(self):
        st, r = self.node.complete(prompt="Hi <|im_end|> there", user_id="x", turn=1)
        self.assertEqual(st, 200, r)
        # the user's "<|im_end|>" stayed text across the link
        st, s = self.node.request("GET", "/v1/sessions/%s?user_id=x&include=turns" % r["session_id"])
        self.assertEqual(st, 200, s)
        st, t = self.llm.request("POST", "/tokenize", {"content": "Hi <|im_end|> there", "parse_special": False})
        user, ids = s["turns"][0]["user"], t["tokens"]
        self.assertTrue(any(user[i:i + len(ids)] == ids for i in range(len(user))), (user, ids))
        st, r = self.node.complete(prompt="Hello again", mode="raw", user_id="x", turn=1)
        self.assertEqual(st, 200, r)
        st, r = self.node.complete(prompt="x " * 5000, user_id="x", turn=1)
        self.assertEqual(st, 400, r)
        self.assertEqual(r["error"]["type"], "context_length_exceeded")

    def test_llm_serve_rejects_bad_input(self):
        bad = [("/completion", {"prompt": [1, 2, 10 ** 9]}, "invalid_request"),
               ("/completion", {"prompt": [1, -3]}, "invalid_request"),
               ("/completion", {"prompt": []}, "invalid_request"),
               ("/completion", {"prompt": "hi", "n_predict": 0}, "invalid_request"),
               ("/completion", {"prompt": "hi", "temperature": "hot"}, "invalid_request"),
               ("/completion", {"prompt": [1] * 100000}, "context_length_exceeded"),
               ("/detokenize", {"tokens": [10 ** 9]}, "invalid_request"),
               ("/detokenize", {"tokens": "abc"}, "invalid_request"),
               ("/tokenize", {"content": 5}, "invalid_request"),
               ("/apply-template", {"messages": [{"role": "user"}]}, "invalid_request"),
               ("/apply-template", {"messages": []}, "invalid_request")]
        for path, body, etype in bad:
            st, r = self.llm.request("POST", path, body)
            self.assertEqual((st, r["error"]["type"]), (400, etype), (path, body, r))
        st, r = self.llm.request("POST", "/tokenize", "{not json")
        self.assertEqual((st, r["error"]["type"]), (400, "invalid_json"))
        st, r = self.llm.request("GET", "/completion")
        self.assertEqual(st, 405, r)
        st, r = self.llm.request("POST", "/tokenize", {"content": "a<|im_end|>b", "parse_special": False})
        st2, r2 = self.llm.request("POST", "/tokenize", {"content": "a<|im_end|>b"})
        self.assertGreater(len(r["tokens"]), len(r2["tokens"]))
        st, d = self.llm.request("POST", "/detokenize", {"tokens": r["tokens"]})
        self.assertEqual((st, d["content"]), (200, "a<|im_end|>b"))

    def test_engine_gone_is_a_clear_error_and_loses_nothing(self):
        st, r = self.node.complete(prompt="Hello.", user_id="y", turn=1)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]
        self.llm.stop()
        try:
            st, r = self.node.complete(prompt="Again.", user_id="y", session_id=sid, turn=2)
            self.assertEqual((st, r["error"]["type"]), (503, "llm_unavailable"), r)
            self.assertIn("cannot reach the LLM service", r["error"]["message"])
        finally:
            self.llm.start()
        st, r = self.node.complete(prompt="Again.", user_id="y", session_id=sid, turn=2)
        self.assertEqual(st, 200, r)

    def test_node_refuses_to_start_without_its_engine(self):
        n = Node(BIN, MODEL, node_id="orphan", llm_url="http://127.0.0.1:1")
        with self.assertRaises(RuntimeError) as cm:
            n.start()
        self.assertIn("cannot reach the LLM service", str(cm.exception))
        n.cleanup()


class RemoteRoundTripTest(unittest.TestCase):
    """A turn through `serve --llm` costs two HTTP calls to a DisCEdge
    llm-serve (/render, /completion), counted from llm-serve's own request
    log (--log-level debug logs every call); the same conversation as the
    fine-grained calls give, which a plain llama-server still gets
    (test_hardening_llm drives one)."""

    @classmethod
    def setUpClass(cls):
        cls.llm, cls.node = remote_pair(BIN, MODEL, ONE_THREAD + ["--kv-cache-sessions", "4", "--log-level", "debug"])

    @classmethod
    def tearDownClass(cls):
        stop_pair(cls.llm, cls.node)

    def calls(self):
        """The requests llm-serve has logged: "METHOD /path" each."""
        out = []
        for line in self.llm.log_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[2] in ("GET", "POST") and parts[3].startswith("/"):
                out.append(parts[2] + " " + parts[3])
        return out

    def turn(self, **fields):
        before = len(self.calls())
        st, r = self.node.complete(**fields)
        self.assertEqual(st, 200, r)
        return r, self.calls()[before:]

    def test_a_turn_is_two_calls(self):
        st, props = self.llm.request("GET", "/props")
        self.assertTrue(props["discedge"]["render"], props)
        r, calls = self.turn(prompt="What is a robot?", system="Be brief.", user_id="rt", turn=1)
        self.assertEqual(calls, ["POST /render", "POST /completion"])
        sid = r["session_id"]
        for turn, q in ((2, "Name one sensor."), (3, "What does it <|im_end|> measure?")):
            r, calls = self.turn(prompt=q, user_id="rt", session_id=sid, turn=turn)
            self.assertEqual(calls, ["POST /render", "POST /completion"])
            self.assertGreater(len(r["content"]), 0)
        # the reply's text is what /detokenize gives for the stored ids, and
        # the message was rendered as /apply-template + /tokenize render it
        s = turns_of(self.node, sid, "rt")
        last = s["turns"][-1]
        st, d = self.llm.request("POST", "/detokenize", {"tokens": last["reply"]})
        self.assertEqual((st, d["content"]), (200, r["content"]))
        st, t = self.llm.request("POST", "/apply-template", {"messages": [
            {"role": "user", "content": "\x1edc0\x1f"}], "add_generation_prompt": True})
        head, tail = t["prompt"].split("\x1edc0\x1f")
        ids = []
        for text, special in ((head, True), ("What does it <|im_end|> measure?", False), (tail, True)):
            st, tk = self.llm.request("POST", "/tokenize", {"content": text, "parse_special": special})
            ids += tk["tokens"]
        self.assertEqual(last["user"], ids)
        # a stateless request of many messages: the same two calls
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
        before = len(self.calls())
        st, o = self.node.request("POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 8,
                                                                    "temperature": 0})
        self.assertEqual(st, 200, o)
        self.assertEqual(self.calls()[before:], ["POST /render", "POST /completion"])

    def test_an_engine_without_render_gets_the_fine_grained_calls(self):
        for claims in (False, True):  # a llama-server; one that says it renders, then does not
            fake = FakeLlama(reply="fine").start()
            if claims:
                fake.props_extra = {"discedge": {"render": True}}
            node = Node(BIN, MODEL, node_id="plain", llm_url=fake.url()).start()
            try:
                for turn in (1, 2):
                    f = dict(prompt="Hello", user_id="p", turn=turn)
                    if turn == 2:
                        f["session_id"] = sid
                    del fake.bodies[:]
                    st, r = node.complete(**f)
                    self.assertEqual(st, 200, r)
                    sid = r["session_id"]
                    paths = [p for p, _ in fake.bodies]
                    # a 404 from /render turns it off for good: only turn 1 of
                    # the engine that claimed it asks
                    self.assertEqual(paths.count("/render"), 1 if claims and turn == 1 else 0, paths)
                    self.assertIn("/apply-template", paths)
                    self.assertIn("/detokenize", paths)
                    self.assertEqual(r["content"][:4], "fine")
            finally:
                node.cleanup()
                fake.stop()

    def test_render_each_splits_as_rendering_one_by_one(self):
        msgs = [{"role": "system", "content": "S <|im_start|>"}, {"role": "user", "content": "U"}]
        st, both = self.llm.request("POST", "/render", {"messages": msgs, "add_generation_prompt": True,
                                                         "each": True})
        self.assertEqual(st, 200, both)
        st, one = self.llm.request("POST", "/render", {"messages": msgs[:1], "add_generation_prompt": False})
        st, two = self.llm.request("POST", "/render", {"messages": msgs[1:], "add_generation_prompt": True})
        self.assertEqual(both["lengths"], [len(one["tokens"]), len(two["tokens"])])
        self.assertEqual(both["tokens"], one["tokens"] + two["tokens"])
        for body in ({"messages": []}, {"messages": [{"role": "user"}]}, {"messages": "x"}):
            st, r = self.llm.request("POST", "/render", body)
            self.assertEqual((st, r["error"]["type"]), (400, "invalid_request"), body)


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
