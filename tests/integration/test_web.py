"""test_web.py - the node's web page (GET /) in a real headless browser
(web_chat.mjs, playwright-core driving Debian's chromium): one conversation
sent to node A, then B, then A again, each turn showing the node that
answered; then, server-side, the session holds the three turns. And with
--api-keys: the page's key field is sent as the bearer token.

usage: python3 test_web.py DISCEDGE_BINARY MODEL.gguf
env:   DC_PLAYWRIGHT_NODE_PATH  node_modules holding playwright-core
                                (default: third_party/npm-web/node_modules, scripts/setup.sh)
       DC_WEB_SCREENSHOT        where the page's screenshot goes (default: the test's temp folder)"""
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from dcnode import NodePair  # noqa: E402

BIN = MODEL = None


def get(port, path, headers=None):
    """(status, headers, raw body) of a GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def run_chat(a, b, shot, key=None):
    """Runs web_chat.mjs against nodes a and b; returns its JSON result."""
    env = dict(os.environ)
    env["NODE_PATH"] = os.environ.get("DC_PLAYWRIGHT_NODE_PATH") or os.path.join(
        ROOT, "third_party", "npm-web", "node_modules")
    if not os.path.isdir(os.path.join(env["NODE_PATH"], "playwright-core")):
        raise AssertionError("playwright-core is not in %s: run scripts/setup.sh" % env["NODE_PATH"])
    env.pop("DC_WEB_KEY", None)
    if key:
        env["DC_WEB_KEY"] = key
    t0 = time.monotonic()
    p = subprocess.run(["node", os.path.join(HERE, "web_chat.mjs"), "http://127.0.0.1:%d" % a.port,
                        "http://127.0.0.1:%d" % b.port, shot], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=800)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    print("web_chat.mjs: %.1fs, screenshot %s" % (time.monotonic() - t0, shot), file=sys.stderr)
    if p.returncode != 0:
        raise AssertionError("web_chat.mjs exited %d:\n%s\n%s" % (p.returncode, out, err[-4000:]))
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if len(lines) != 1 or not os.path.getsize(shot):
        raise AssertionError("web_chat.mjs printed no result or no screenshot:\n" + out)
    return json.loads(lines[0])


class WebPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pair = NodePair(BIN, MODEL, prefix="dc-web-")
        cls.a, cls.b, cls.dir = cls.pair.a, cls.pair.b, cls.pair.dir

    @classmethod
    def tearDownClass(cls):
        cls.pair.stop()

    def test_page_is_served(self):
        status, headers, body = get(self.a.port, "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("content-type", "").startswith("text/html"), headers)
        with open(os.path.join(ROOT, "web", "index.html"), "rb") as f:
            self.assertEqual(body, f.read())  # the embedded copy is the file, byte for byte

    def test_conversation_moves_between_nodes(self):
        result = run_chat(self.a, self.b, os.environ.get("DC_WEB_SCREENSHOT") or os.path.join(self.dir, "web_ui.png"))
        sid, turns = result["session_id"], result["turns"]
        self.assertEqual([t["turn"] for t in turns], [1, 2, 3])
        self.assertEqual([t["node"] for t in turns], ["edge-1", "edge-2", "edge-1"])
        tokens = [t["prompt_tokens"] for t in turns]
        self.assertEqual(tokens, sorted(set(tokens)), "context tokens must grow: %s" % tokens)

        # server-side, on node B: the session holds the three turns, and the
        # failed requests between turns 2 and 3 committed nothing
        status, _, body = get(self.b.port, "/v1/sessions/%s?include=turns" % sid, {"X-User-Id": "anonymous"})
        self.assertEqual(status, 200, body)
        stored = json.loads(body)
        self.assertEqual(stored["turn"], 3)
        self.assertEqual([t["turn"] for t in stored["turns"]], [1, 2, 3])

    def test_api_key(self):
        # two more nodes with --api-keys over a store of their own: the page
        # sends the key field as a bearer token; the key's user owns the session
        d = tempfile.mkdtemp(prefix="dc-web-keys-")
        key = "web-test-key-0123456789"
        with open(os.path.join(d, "keys"), "w") as f:
            f.write("%s web-user\n" % key)
        pair = None
        try:
            pair = NodePair(BIN, MODEL, prefix="dc-web-keys-", extra=["--api-keys", os.path.join(d, "keys")])
            self.assertEqual(get(pair.a.port, "/")[0], 200)  # the page itself needs no key
            result = run_chat(pair.a, pair.b, os.path.join(d, "web_ui_key.png"), key=key)
            self.assertEqual([t["node"] for t in result["turns"]], ["edge-1", "edge-2"])
            status, _, body = get(pair.a.port, "/v1/sessions/%s?include=turns" % result["session_id"],
                                  {"Authorization": "Bearer " + key})
            self.assertEqual(status, 200, body)
            stored = json.loads(body)
            self.assertEqual(stored["user_id"], "web-user")
            self.assertEqual([t["turn"] for t in stored["turns"]], [1, 2])
        finally:
            try:
                if pair:
                    pair.stop()
            finally:
                shutil.rmtree(d, ignore_errors=True)

if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0], "-v"])
