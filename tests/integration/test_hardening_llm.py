"""test_hardening_llm.py - issue 14, the engine and LLM-service side: what one
user can learn of another's prompts through the KV cache, a remote engine
that would turn user text into control tokens, credentials and engine error
texts kept from clients, whole characters in a stream from a remote engine,
a stream nobody receives commits nothing, BOS as the model's metadata asks,
and private spill files.

Real nodes on loopback, real HTTP, the real model; where a remote engine
must misbehave on purpose, a small fake llama-server (fake_llama.py).
Nothing here asserts what a model says or how long anything takes.

usage: test_hardening_llm.py DISCEDGE_BINARY MODEL.gguf GEMMA.gguf"""
import http.client
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import LlmServer, Node, raw_post, remote_pair, stop_pair, turns_of  # noqa: E402
from fake_llama import FakeLlama  # noqa: E402

BIN = MODEL = GEMMA = None
# one inference thread per process: several llama.cpp processes on a small
# machine otherwise spin against each other
ONE = ["--threads", "1"]
# tokenizer.ggml.bos_token_id of the pinned Gemma file (scripts/setup.sh)
GEMMA_BOS = 2
SECRET = "You are the assistant of ACME Corp. The launch code is 4471-ZULU."


def engine(node):
    st, h = node.request("GET", "/health")
    assert st == 200, h
    return h["engine"]


def stream_text(node, body):
    """The text of a streamed /completion: its chunks' content, joined."""
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=300)
    c.request("POST", "/completion", json.dumps(dict(body, stream=True)), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read().decode("utf-8")
    c.close()
    assert r.status == 200, data
    events = [json.loads(line[6:]) for line in data.split("\n") if line.startswith("data: ")]
    assert events and events[-1]["stop"], data[-300:]
    return "".join(e["content"] for e in events)


def post_from(src, node, path, body):
    """POST from the loopback address src (each its own key-less client)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=300, source_address=(src, 0))
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def assert_owner_isolation(t, node):
    """Another user sending alice's exact prompt, or a guess of her system
    prompt, finds none of her KV (cache_n / cached_tokens 0), and her
    conversation's KV is still whole for her next turn."""
    st, a1 = node.complete(system=SECRET, prompt="What is the code?", user_id="alice", turn=1, n_predict=16,
                           ignore_eos=True)
    t.assertEqual(st, 200, a1)
    # the same input under other users (each its own: a user's own earlier
    # requests may of course share a prefix with its next)
    st, b = node.complete(system=SECRET, prompt="What is the code?", user_id="bob", turn=1, n_predict=4)
    t.assertEqual(st, 200, b)
    t.assertEqual(b["timings"]["cache_n"], 0, b["timings"])
    t.assertEqual(b["timings"]["prompt_n"], b["context_tokens"])
    st, g = node.complete(system=SECRET, prompt="Hello?", user_id="bob2", turn=1, n_predict=4)
    t.assertEqual(st, 200, g)
    t.assertEqual(g["timings"]["cache_n"], 0, g["timings"])
    st, o = node.request("POST", "/v1/chat/completions",
                         {"messages": [{"role": "system", "content": SECRET},
                                       {"role": "user", "content": "What is the code?"}],
                          "user": "bob3", "max_tokens": 4, "temperature": 0})
    t.assertEqual(st, 200, o)
    t.assertEqual(o["usage"]["prompt_tokens_details"]["cached_tokens"], 0, o["usage"])
    # alice's next turn reuses everything her turn 1 left: its input and
    # every generated token but the last (never fed back at n_predict)
    st, a2 = node.complete(prompt="Why?", session_id=a1["session_id"], user_id="alice", turn=2, n_predict=4)
    t.assertEqual(st, 200, a2)
    t.assertEqual(a2["timings"]["cache_n"], a1["context_tokens"] + 15, a2["timings"])
    # key-less clients that name no one are all "anonymous" on the OpenAI
    # routes; they are still strangers to each other: one at another address
    # finds nothing of the first's prefix, which the first still finds
    chat = {"messages": [{"role": "system", "content": SECRET}, {"role": "user", "content": "And the door?"}],
            "max_tokens": 4, "temperature": 0}
    for src, own in (("127.0.0.31", False), ("127.0.0.32", False), ("127.0.0.31", True)):
        st, o = post_from(src, node, "/v1/chat/completions", chat)
        t.assertEqual(st, 200, o)
        cached = o["usage"]["prompt_tokens_details"]["cached_tokens"]
        if own:
            t.assertGreater(cached, 0, (src, o["usage"]))
        else:
            t.assertEqual(cached, 0, (src, o["usage"]))


class Local(unittest.TestCase):
    """One SmolLM2 node; its streams' responses cannot be created
    (DC_FAULT_SSE_NO_RESPONSE), which only the stream test uses."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node(BIN, MODEL, extra=ONE + ["--parallel", "1", "--kv-cache-sessions", "4"],
                        env={"DC_FAULT_SSE_NO_RESPONSE": "1"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    def test_kv_reuse_is_confined_to_its_owner(self):
        assert_owner_isolation(self, self.node)

    def test_stream_whose_response_cannot_be_created_commits_nothing(self):
        st, r = self.node.complete(prompt="Hello.", user_id="erin", turn=1, n_predict=4)
        self.assertEqual(st, 200, r)
        sid = r["session_id"]
        before = engine(self.node)
        s = raw_post(self.node.port, dict(prompt="Go on.", user_id="erin", session_id=sid, turn=2, n_predict=64,
                                          ignore_eos=True, stream=True))
        got = b""
        try:
            while True:  # no response: the node closes the connection
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        s.close()
        self.assertEqual(got, b"")
        # the same turn again: it waits for the session's lock, which the
        # abandoned generation holds until it has returned; then the turn
        # is still free (before the fix: 409, the nobody's turn committed)
        st, r = self.node.complete(prompt="Go on.", user_id="erin", session_id=sid, turn=2, n_predict=4)
        self.assertEqual(st, 200, r)
        self.assertEqual(turns_of(self.node, sid, "erin")["turn"], 2)
        self.assertEqual(engine(self.node)["cancelled"] - before["cancelled"], 1)

    def test_no_bos_when_the_model_does_not_ask_for_one(self):
        # SmolLM2: tokenizer.ggml.add_bos_token false
        st, r = self.node.complete(prompt="Hi.", user_id="sam", turn=1, n_predict=2)
        self.assertEqual(st, 200, r)
        t = turns_of(self.node, r["session_id"], "sam")["turns"][0]
        self.assertEqual(t["system"], [])
        self.assertEqual(r["context_tokens"], len(t["user"]))


class RemoteEngine(unittest.TestCase):
    """A real `discedge llm-serve` (which honours parse_special) and a node
    on it."""

    @classmethod
    def setUpClass(cls):
        cls.llm, cls.node = remote_pair(BIN, MODEL, ONE + ["--parallel", "1", "--kv-cache-sessions", "4"])

    @classmethod
    def tearDownClass(cls):
        stop_pair(cls.llm, cls.node)

    def test_kv_reuse_is_confined_to_its_owner_on_a_remote_engine(self):
        assert_owner_isolation(self, self.node)

    def test_engine_that_ignores_parse_special_is_refused(self):
        self.assertEqual(engine(self.node)["kind"], "remote")  # llm-serve passed the check
        fake = FakeLlama(ignore_parse_special=True).start()
        d = tempfile.mkdtemp(prefix="dc-llm-")
        try:
            p = subprocess.run([BIN, "serve", "--llm", fake.url(), "--host", "127.0.0.1", "--port", "0",
                                "--data-dir", d], capture_output=True, text=True, timeout=120)
            self.assertNotEqual(p.returncode, 0, p.stdout)
            self.assertIn("ignores parse_special:false", p.stderr)
            self.assertIn("<|im_end|>", p.stderr)
            # the same engine honouring the flag is accepted
            fake.ignore_parse_special = False
            n = Node(BIN, MODEL, node_id="fake-ok", llm_url=fake.url()).start()
            n.cleanup()
        finally:
            fake.stop()
            shutil.rmtree(d, ignore_errors=True)


class BannerNode(Node):
    """A node that keeps the line it printed when it started."""

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        self.log = open(os.path.join(self.data_dir, "node.log"), "ab")
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self.log)
        self.banner = self.proc.stdout.readline().decode()
        assert "listening on http://" in self.banner, self.banner
        self.port = int(self.banner.split("http://127.0.0.1:")[1].split(" ")[0])
        return self


class FakeEngine(unittest.TestCase):
    """A node on the fake engine, its URL holding credentials."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeLlama(reply="日本語のテキスト、").start()
        cls.node = BannerNode(BIN, MODEL, node_id="fake", llm_url=cls.fake.url("dcuser:s3cret-pw")).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.node.cleanup()
        finally:
            cls.fake.stop()

    def test_llm_url_and_engine_errors_never_reach_clients(self):
        self.assertNotIn("s3cret-pw", self.node.banner)
        self.assertIn("127.0.0.1:%d" % self.fake.port, self.node.banner)
        # the engine's own error text stays in the log
        self.fake.fail_with = "cannot open /srv/private-models/x.gguf for tenant acme"
        try:
            st, r = self.node.complete(prompt="Hi.", user_id="u", turn=1, n_predict=4)
        finally:
            self.fake.fail_with = None
        self.assertGreaterEqual(st, 500, r)
        self.assertNotIn("private-models", json.dumps(r))
        self.assertIn("HTTP 500", r["error"]["message"])
        self.assertIn("private-models", self.node.log_text())
        # the engine gone: 503, and neither its URL nor its credentials
        gone = FakeLlama().start()
        n = BannerNode(BIN, MODEL, node_id="fake-gone", llm_url=gone.url("dcuser:s3cret-pw")).start()
        try:
            gone.stop()
            st, r = n.complete(prompt="Hi.", user_id="u", turn=1, n_predict=4)
            self.assertEqual((st, r["error"]["type"]), (503, "llm_unavailable"), r)
            self.assertNotIn("s3cret", json.dumps(r))
            self.assertNotIn(str(gone.port), json.dumps(r))
            self.assertNotIn("s3cret", n.log_text())
        finally:
            n.cleanup()
        self.assertNotIn("s3cret", self.node.log_text())

    def test_remote_stream_sends_whole_characters(self):
        # every character of the reply is three tokens (one per byte), so
        # any cut between ids falls inside one; 600 tokens end on a whole one
        body = dict(prompt="Write.", user_id="v", turn=1, n_predict=600, ignore_eos=True, temperature=0,
                    cache_prompt=False)
        st, plain = self.node.complete(**body)
        self.assertEqual(st, 200, plain)
        self.assertNotIn("\ufffd", plain["content"])
        for _ in range(12):
            self.assertEqual(stream_text(self.node, body), plain["content"])


class Bos(unittest.TestCase):
    """Gemma 3 270M, whose metadata asks for BOS: locally and through
    llm-serve, in every mode."""

    def check_node(self, node):
        st, r1 = node.complete(prompt="Hello.", user_id="g", turn=1, n_predict=2)
        self.assertEqual(st, 200, r1)
        st, r2 = node.complete(prompt="Again.", user_id="g", session_id=r1["session_id"], turn=2, n_predict=2)
        self.assertEqual(st, 200, r2)
        turns = turns_of(node, r1["session_id"], "g")["turns"]
        # turn 1's first segment starts with BOS, and no other segment we
        # built holds one
        self.assertEqual(turns[0]["system"], [GEMMA_BOS])
        built = [tok for t in turns for k in ("system", "user", "end") for tok in t[k]]
        self.assertEqual(built.count(GEMMA_BOS), 1, turns)
        self.assertEqual(r1["context_tokens"], 1 + len(turns[0]["user"]))
        # raw and client-side mode feed the same tokens for the same message
        st, raw = node.complete(prompt="Hello.", mode="raw", user_id="g", turn=1, n_predict=2)
        self.assertEqual((st, raw["context_tokens"]), (200, r1["context_tokens"]), raw)
        st, o = node.request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello."}],
                                                              "max_tokens": 2, "temperature": 0})
        self.assertEqual((st, o["usage"]["prompt_tokens"]), (200, r1["context_tokens"]), o)

    def test_bos_once_when_the_model_asks_for_it(self):
        local = Node(BIN, GEMMA, node_id="gemma", extra=ONE + ["--parallel", "1", "--kv-cache-sessions", "1"]).start()
        try:
            self.check_node(local)
        finally:
            local.cleanup()
        llm = LlmServer(BIN, GEMMA, extra=ONE + ["--parallel", "1", "--kv-cache-sessions", "1"]).start()
        node = None
        try:
            st, t = llm.request("POST", "/tokenize", {"content": "a", "add_special": True})
            self.assertEqual((st, t["tokens"][0]), (200, GEMMA_BOS), t)
            node = Node(BIN, GEMMA, node_id="gemma-cm", llm_url=llm.url).start()
            self.check_node(node)
        finally:
            if node:
                node.cleanup()
            llm.cleanup()


class Spill(unittest.TestCase):
    def test_spill_files_are_private_and_foreign_files_kept(self):
        d = tempfile.mkdtemp(prefix="dc-spill-")
        spill = os.path.join(d, "store", "kv-spill")
        os.makedirs(spill)
        # what another process (in another PID namespace, say) keeps there
        foreign = os.path.join(spill, "kv-999999-1.state")
        with open(foreign, "w") as f:
            f.write("foreign")
        # a folder a crashed engine left (nobody holds its lock)
        crashed = os.path.join(spill, "kv-Zq3xYw")
        os.makedirs(crashed)
        with open(os.path.join(crashed, "1.state"), "w") as f:
            f.write("stale")
        victim = os.path.join(d, "victim")
        with open(victim, "w") as f:
            f.write("victim")
        node = Node(BIN, MODEL, data_dir=d, node_id="spill",
                    extra=ONE + ["--parallel", "1", "--kv-cache-sessions", "1"]).start()
        try:
            # the names the engine used to write, planted as links
            for i in range(1, 9):
                os.symlink(victim, os.path.join(spill, "kv-%d-%d.state" % (node.proc.pid, i)))
            for p in ("Describe a forest.", "Describe a desert.", "Describe a river."):
                st, r = node.complete(prompt=p, user_id="s", turn=1, n_predict=70, ignore_eos=True)
                self.assertEqual(st, 200, r)
            self.assertGreaterEqual(engine(node)["spill_saves"], 2)
            with open(victim) as f:
                self.assertEqual(f.read(), "victim")
            self.assertFalse(os.path.exists(crashed))
            own = [e for e in os.listdir(spill) if os.path.isdir(os.path.join(spill, e))
                   and not os.path.islink(os.path.join(spill, e))]
            self.assertEqual(len(own), 1, os.listdir(spill))
            own = os.path.join(spill, own[0])
            self.assertEqual(stat.S_IMODE(os.stat(own).st_mode), 0o700)
            self.assertTrue(any(e.endswith(".state") for e in os.listdir(own)))
        finally:
            self.assertEqual(node.stop(), 0)
        self.assertFalse(os.path.exists(own))
        self.assertTrue(os.path.exists(foreign))
        self.assertEqual(len([e for e in os.listdir(spill) if os.path.islink(os.path.join(spill, e))]), 8)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    BIN, MODEL, GEMMA = sys.argv[1], sys.argv[2], sys.argv[3]
    unittest.main(argv=sys.argv[:1], verbosity=2)
