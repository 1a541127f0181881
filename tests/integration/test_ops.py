"""test_ops.py - what an operator and a plain HTTP client see, with curl:
Server-Sent Events framing of the three streaming endpoints, a client that
disconnects mid-stream (nothing committed), API keys (401, 403, SIGHUP
reload), /metrics through Prometheus's own parser, the request log lines,
--config and --help, and the request limits.

usage: third_party/venv/bin/python test_ops.py DISCEDGE_BINARY MODEL.gguf"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node, raw_post  # noqa: E402

BIN = MODEL = None
KEY_ANN, KEY_BOB, KEY_CAT = "ann-key-0123456789abcdef", "bob-key-0123456789abcdef", "cat-key-0123456789abcdef"


def curl(node, path, body=None, key=None, extra=()):
    """(status, body text) of one request made by curl."""
    cmd = ["curl", "-sS", "-N", "-o", "-", "-w", "\n%{http_code}", "http://127.0.0.1:%d%s" % (node.port, path)]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    if key:
        cmd += ["-H", "Authorization: Bearer " + key]
    out = subprocess.run(cmd + list(extra), check=True, capture_output=True, text=True, timeout=300).stdout
    text, _, status = out.rpartition("\n")
    return int(status), text


def log_until(node, pred, timeout=30):
    """The node's log once pred(log) holds (a line is written after the
    reply it describes went out), or the log as it is after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        log = node.log_text()
        if pred(log) or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def open_stream(node, body):
    """A streaming /completion on a raw socket, read until its first event:
    (the socket, the bytes read)."""
    s = raw_post(node.port, body)
    got = b""
    while b"data: " not in got:  # the reply has begun streaming
        chunk = s.recv(4096)
        assert chunk, "the node closed the stream"
        got += chunk
    return s, got


def sse_events(text):
    """The events of an SSE body as (event name or None, data); fails on
    anything that is not "event:"/"data:" lines in blank-line separated blocks."""
    assert text.endswith("\n\n"), "an SSE body ends with a blank line: %r" % text[-40:]
    events = []
    for block in text[:-2].split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            field, sep, value = line.partition(": ")
            assert sep and field in ("event", "data"), "not an SSE line: %r" % line
            if field == "event":
                name = value
            else:
                data = value
        assert data is not None, "an event without data: %r" % block
        events.append((name, data))
    return events


class Streams(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node(BIN, MODEL, node_id="edge-1").start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    def test_completion_stream_framing(self):
        # ignore_eos: exactly 16 tokens; cache_prompt off: the plain request
        # below is the same computation, not a prefill on top of this one's KV
        same = {"n_predict": 16, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
        status, text = curl(self.node, "/completion", dict(prompt="Count to five.", stream=True, **same))
        self.assertEqual(status, 200)
        events = [json.loads(d) for _, d in sse_events(text)]
        self.assertTrue(all(not e["stop"] for e in events[:-1]))
        last = events[-1]
        self.assertTrue(last["stop"])
        self.assertEqual(last["turn"], 1)
        self.assertEqual(last["tokens_predicted"], 16)
        streamed = "".join(e["content"] for e in events)
        status, whole = self.node.request("GET", "/v1/sessions/%s?user_id=%s" % (last["session_id"], last["user_id"]))
        self.assertEqual(status, 200)
        self.assertEqual(whole["turn"], 1)
        # the same turn, not streamed, gives the same text
        status, plain = self.node.complete(prompt="Count to five.", **same)
        self.assertEqual(plain["content"], streamed)

    def test_chat_and_responses_stream_framing(self):
        status, text = curl(self.node, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0,
                             "stream": True, "stream_options": {"include_usage": True}})
        self.assertEqual(status, 200)
        events = sse_events(text)
        self.assertEqual(events[-1], (None, "[DONE]"))
        chunks = [json.loads(d) for _, d in events[:-1]]
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
        usage = chunks[-1]["usage"]  # the usage chunk comes last, with no choices
        self.assertEqual(chunks[-1]["choices"], [])
        # the model may end its reply on its own before 6 tokens: the reason must say which
        finish = chunks[-2]["choices"][0]["finish_reason"]
        self.assertEqual(finish, "length" if usage["completion_tokens"] == 6 else "stop")

        status, text = curl(self.node, "/v1/responses", {"input": "Hi", "max_output_tokens": 6, "stream": True})
        self.assertEqual(status, 200)
        events = sse_events(text)
        for i, (name, data) in enumerate(events):
            d = json.loads(data)
            self.assertEqual(d["type"], name)  # the event line names the data's type
            self.assertEqual(d["sequence_number"], i)
        self.assertEqual(events[-1][0], "response.completed")

    def test_errors_before_the_stream_keep_their_status(self):
        status, text = curl(self.node, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "x"}], "stream": True,
                             "session_id": "0" * 32, "turn": 2})
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(text)["error"]["type"], "not_found")

    def test_disconnect_mid_stream_commits_nothing(self):
        status, first = self.node.complete(prompt="Tell me a story.", n_predict=8, user_id="dana")
        sid = first["session_id"]
        s, got = open_stream(self.node, {"prompt": "Go on, at length.", "session_id": sid, "user_id": "dana",
                                         "turn": 2, "n_predict": 3000, "ignore_eos": True, "stream": True})
        self.assertIn(b" 200 ", got.split(b"\r\n")[0])
        s.close()
        # the node notices, stops generating, and commits nothing
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, health = self.node.request("GET", "/health")
            if health["engine"]["active"] == 0:
                break
            time.sleep(0.1)
        self.assertEqual(health["engine"]["active"], 0)
        self.assertGreaterEqual(health["engine"]["cancelled"], 1)
        status, meta = self.node.request("GET", "/v1/sessions/%s?user_id=dana" % sid)
        self.assertEqual(meta["turn"], 1)
        # the client sends turn 2 again, and it commits
        status, again = self.node.complete(prompt="Go on.", session_id=sid, user_id="dana", turn=2, n_predict=4)
        self.assertEqual((status, again["turn"]), (200, 2))

    def test_stop_mid_stream_exits_cleanly(self):
        node = Node(BIN, MODEL, node_id="edge-9").start()
        try:
            s, _ = open_stream(node, {"prompt": "Go on, at length.", "n_predict": 3000, "ignore_eos": True,
                                      "stream": True})
        finally:
            # SIGTERM while the reply streams: the stream is cut, the
            # generation cancelled, and the node exits 0 (under the
            # sanitizers: without a leak or a use after free)
            node.cleanup()
        s.close()

    def test_metrics_parse_as_prometheus_text(self):
        self.node.complete(prompt="One more.", n_predict=4)
        curl(self.node, "/nowhere")
        status, text = curl(self.node, "/metrics")
        self.assertEqual(status, 200)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["discedge_requests"].samples}
        self.assertGreaterEqual(requests[("/completion", "200")], 1)
        self.assertGreaterEqual(requests[("other", "404")], 1)
        for name in ("discedge_turn_seconds", "discedge_store_read_seconds", "discedge_store_commit_seconds"):
            self.assertEqual(families[name].type, "histogram")
        count = [s.value for s in families["discedge_turn_seconds"].samples
                 if s.name == "discedge_turn_seconds_count" and s.labels["mode"] == "tokenized"][0]
        self.assertGreaterEqual(count, 1)
        self.assertGreater(families["discedge_generated_tokens"].samples[0].value, 0)
        self.assertGreaterEqual(families["discedge_sessions_active"].samples[0].value, 1)
        for name in ("discedge_kv_cache_hits", "discedge_engine_active", "discedge_prompt_tokens"):
            self.assertIn(name, families)

    def test_log_lines(self):
        secret = "my-secret-prompt-text-%d" % os.getpid()
        status, r = self.node.complete(prompt=secret, n_predict=4, ignore_eos=True)  # exactly 4 generated
        log = log_until(self.node, lambda t: "session=%s" % r["session_id"] in t)
        line = [l for l in log.splitlines() if "session=%s" % r["session_id"] in l][0]
        fields = dict(kv.split("=", 1) for kv in line.split(" request ", 1)[1].split())
        self.assertEqual((fields["method"], fields["route"], fields["status"]), ("POST", "/completion", "200"))
        self.assertEqual((fields["turn"], fields["mode"], fields["generated"]), ("1", "tokenized", "4"))
        self.assertIn("ms", fields)
        self.assertNotIn(secret, log)  # prompts are never logged


class Keys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-keys-")
        cls.keys = os.path.join(cls.dir, "keys")
        with open(cls.keys, "w") as f:
            f.write("# key user\n%s ann\n%s bob  # a comment\n" % (KEY_ANN, KEY_BOB))
        cls.node = Node(BIN, MODEL, data_dir=os.path.join(cls.dir, "n"), extra=["--api-keys", cls.keys]).start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()
        subprocess.run(["rm", "-rf", cls.dir])

    def chat(self, key, **extra):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        body.update(extra)
        return curl(self.node, "/v1/chat/completions", body, key=key)

    def test_401_without_a_valid_key(self):
        for key in (None, "wrong-key-0123456789abcdef", KEY_ANN[:-1]):
            status, text = self.chat(key)
            self.assertEqual(status, 401, key)
            self.assertEqual(json.loads(text)["error"]["type"], "invalid_api_key")
        status, _ = curl(self.node, "/v1/models", extra=["-H", "Authorization: Basic abc"])
        self.assertEqual(status, 401)
        # the page, health and metrics stay open
        for path in ("/", "/health", "/metrics"):
            self.assertEqual(curl(self.node, path)[0], 200, path)
        with open(os.path.join(self.node.data_dir, "node.log")) as f:
            self.assertNotIn(KEY_ANN[:-1], f.read())  # keys are never logged

    def test_403_on_another_users_session(self):
        status, text = self.chat(KEY_ANN, store=True, user="mallory")  # the key says who, not the body
        self.assertEqual(status, 200)
        r = json.loads(text)
        self.assertEqual(r["user"], "ann")
        sid = r["session_id"]
        status, text = self.chat(KEY_BOB, session_id=sid, turn=2)
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(text)["error"]["type"], "forbidden")
        self.assertEqual(curl(self.node, "/v1/sessions/" + sid, key=KEY_BOB)[0], 403)
        self.assertEqual(curl(self.node, "/v1/sessions/" + sid, key=KEY_BOB, extra=["-X", "DELETE"])[0], 403)
        status, text = curl(self.node, "/v1/sessions/" + sid, key=KEY_ANN)
        self.assertEqual((status, json.loads(text)["turn"]), (200, 1))  # intact, and ann's
        self.assertEqual(self.chat(KEY_ANN, session_id=sid, turn=2)[0], 200)

    def test_sighup_reloads_the_keys(self):
        self.assertEqual(self.chat(KEY_CAT)[0], 401)
        with open(self.keys, "a") as f:
            f.write("%s cat\n" % KEY_CAT)
        os.kill(self.node.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.chat(KEY_CAT)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.chat(KEY_CAT)[0], 200)
        # a broken file is refused and the keys stay as they were
        with open(self.keys, "a") as f:
            f.write("short bob\n")
        os.kill(self.node.proc.pid, signal.SIGHUP)
        self.assertIn("API keys not reloaded", log_until(self.node, lambda t: "API keys not reloaded" in t))
        self.assertEqual(self.chat(KEY_CAT)[0], 200)
        with open(self.keys, "w") as f:
            f.write("%s ann\n%s bob\n" % (KEY_ANN, KEY_BOB))
        os.kill(self.node.proc.pid, signal.SIGHUP)


class CommandLine(unittest.TestCase):
    def test_help(self):
        out = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0)
        for opt in ("--model", "--config", "--api-keys", "--store", "/v1/chat/completions", "/metrics"):
            self.assertIn(opt, out.stdout)
        # the deployment example's settings are all known ones
        example = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "discedge.conf")
        out = subprocess.run([BIN, "serve", "--config", example, "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_config_file(self):
        d = tempfile.mkdtemp(prefix="dc-conf-")
        conf = os.path.join(d, "node.conf")
        with open(conf, "w") as f:
            f.write("# a node\nnode-id = from-file\nn-predict 5\nlog-level = \"info\"\n")
        node = Node(BIN, MODEL, data_dir=d, node_id="from-flag", extra=["--config", conf])
        # the command line (--node-id from-flag, given by Node) wins over the file
        node.start()
        try:
            status, h = node.request("GET", "/health")
            self.assertEqual(h["node"], "from-flag")
            status, r = node.request("POST", "/completion", {"prompt": "Hi", "ignore_eos": True})
            self.assertEqual(r["tokens_predicted"], 5)  # n-predict from the file
        finally:
            node.cleanup()
        with open(conf, "a") as f:
            f.write("no-such-setting = 1\n")
        out = subprocess.run([BIN, "serve", "--config", conf], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 2)
        self.assertIn("unknown setting \"no-such-setting\"", out.stderr)
        subprocess.run(["rm", "-rf", d])


class Limits(unittest.TestCase):
    """Each limit refuses with a clear 4xx JSON error and leaves the stored
    sessions as they were."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node(BIN, MODEL, node_id="limits", extra=[
            "--ctx-size", "512", "--max-body", "8192", "--n-predict", "8", "--max-n-predict", "400",
            "--max-streams-per-key", "1", "--max-sessions-per-user", "2"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    def assertRefused(self, status, body, code, kind):
        self.assertEqual(status, code, body)
        self.assertEqual(body["error"]["type"], kind)

    def test_request_sizes(self):
        st, r = self.node.complete(prompt="Hi.", user_id="sizes", n_predict=4)
        self.assertEqual(st, 200)
        sid = r["session_id"]
        more = dict(session_id=sid, user_id="sizes", turn=2)
        self.assertRefused(*self.node.complete(prompt="x" * 9000, **more), 413, "payload_too_large")
        st, err = self.node.complete(prompt="Go on.", n_predict=401, **more)
        self.assertRefused(st, err, 400, "invalid_request")
        self.assertIn("at most 400", err["error"]["message"])
        # within the body limit, beyond the 512-token context
        self.assertRefused(*self.node.complete(prompt="word " * 1500, **more), 400, "context_length_exceeded")
        st, info = self.node.request("GET", "/v1/sessions/%s?user_id=sizes" % sid)
        self.assertEqual(info["turn"], 1)  # untouched
        self.assertEqual(self.node.complete(prompt="Go on.", n_predict=4, **more)[0], 200)

    def test_sessions_per_user(self):
        sids = []
        for i in range(2):
            st, r = self.node.complete(prompt="Session %d." % i, user_id="many", n_predict=2)
            self.assertEqual(st, 200, r)
            sids.append(r["session_id"])
        st, err = self.node.complete(prompt="One too many.", user_id="many", n_predict=2)
        self.assertRefused(st, err, 429, "quota_exceeded")
        self.assertIn("2 sessions", err["error"]["message"])
        # the existing sessions go on; another user is not affected
        self.assertEqual(self.node.complete(prompt="More.", user_id="many", session_id=sids[0], turn=2,
                                            n_predict=2)[0], 200)
        self.assertEqual(self.node.complete(prompt="Mine.", user_id="other", n_predict=2)[0], 200)
        # deleting one makes room
        st, _ = self.node.request("DELETE", "/v1/sessions/%s?user_id=many" % sids[1])
        self.assertEqual(st, 200)
        self.assertEqual(self.node.complete(prompt="Now it fits.", user_id="many", n_predict=2)[0], 200)

    def test_generations_at_once_per_user(self):
        s, _ = open_stream(self.node, {"prompt": "Write a long story.", "user_id": "streamer", "n_predict": 400,
                                       "ignore_eos": True, "stream": True})
        st, err = self.node.complete(prompt="Me too.", user_id="streamer", n_predict=2)
        self.assertRefused(st, err, 429, "quota_exceeded")
        self.assertEqual(self.node.complete(prompt="Someone else.", user_id="bystander", n_predict=2)[0], 200)
        s.close()  # the node cancels the stream and gives its place back
        deadline = time.monotonic() + 60
        while True:
            st, r = self.node.complete(prompt="My turn now.", user_id="streamer", n_predict=2)
            if st == 200 or time.monotonic() > deadline:
                break
            self.assertRefused(st, r, 429, "quota_exceeded")
            time.sleep(0.1)
        self.assertEqual(st, 200, r)


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0], "-v"])
