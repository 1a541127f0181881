"""test_valgrind.py - one node under valgrind memcheck, every route once.

Memcheck runs the node ~30x slower, so this test sends each kind of request
once, with 1-token replies, rather than the whole suite: new and continued
turns in the three modes, chat completions and responses (stream and not,
a previous_response_id fork), session reads and deletes, refused requests,
/health and /metrics, over a sealed store. The node then stops on SIGTERM;
valgrind's exit status is non-zero on any memory error or definite leak.

usage: test_valgrind.py DISCEDGE_BINARY MODEL.gguf"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node  # noqa: E402

BIN = MODEL = None


class Memcheck(unittest.TestCase):
    def test_every_route_once_without_errors_or_leaks(self):
        d = tempfile.mkdtemp(prefix="dc-valgrind-")
        key = os.path.join(d, "store.key")
        subprocess.run([BIN, "keygen", key], check=True)
        vlog = os.path.join(d, "valgrind.log")
        wrapper = ["valgrind", "--tool=memcheck", "--leak-check=full", "--errors-for-leak-kinds=definite",
                   "--show-leak-kinds=definite", "--error-exitcode=99", "--log-file=" + vlog]
        node = Node(BIN, MODEL, os.path.join(d, "n"), extra=["--threads", "2", "--kv-spill-mib", "0", "--ctx-size", "512",
                                                              "--store-key", key, "--n-predict", "2"],
                    wrapper=wrapper).start()
        try:
            def ok(st, r):
                self.assertEqual(st, 200, r)
                return r

            r1 = ok(*node.complete(prompt="Hi.", user_id="vg", n_predict=1))
            sid = r1["session_id"]
            turn2 = dict(prompt="More.", user_id="vg", session_id=sid, turn=2, n_predict=1, request_id="vg-2")
            ok(*node.complete(**turn2))
            self.assertTrue(ok(*node.complete(**turn2))["replayed"])
            ok(*node.complete(prompt="Raw.", user_id="vg", mode="raw", n_predict=1))
            ok(*node.complete(prompt="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", mode="client-side",
                              n_predict=1))
            chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "store": True, "stream": True}
            c = ok(*node.request("POST", "/v1/chat/completions", chat))
            r = ok(*node.request("POST", "/v1/responses", {"input": "Hi", "max_output_tokens": 1}))
            ok(*node.request("POST", "/v1/responses", {"input": "And?", "max_output_tokens": 1,
                                                      "previous_response_id": r["id"]}))
            r2 = ok(*node.request("POST", "/v1/responses", {"input": "Or?", "max_output_tokens": 1,  # a fork
                                                           "previous_response_id": r["id"], "stream": True}))
            ok(*node.request("GET", "/v1/sessions/%s?user_id=vg&include=turns" % sid))
            ok(*node.request("DELETE", "/v1/sessions/%s?user_id=vg" % sid))
            self.assertEqual(node.request("GET", "/v1/sessions/%s?user_id=vg" % sid)[0], 404)
            self.assertEqual(node.request("POST", "/completion", "{not json")[0], 400)
            self.assertEqual(node.request("POST", "/completion", {"prompt": "x", "turn": 2})[0], 400)
            self.assertEqual(node.request("POST", "/completion", "x" * (2 << 20))[0], 413)
            self.assertEqual(node.request("GET", "/nowhere")[0], 404)
            self.assertEqual(node.request("GET", "/v1/models")[0], 200)
            self.assertEqual(node.request("GET", "/health")[0], 200)
            self.assertEqual(node.request("GET", "/metrics")[0], 200)
            self.assertIn("chat.completion.chunk", c)
            self.assertIn("response.completed", r2)
        finally:
            rc = node.stop()
            with open(vlog) as f:
                report = f.read()
            shutil.rmtree(d, ignore_errors=True)
        self.assertIn("ERROR SUMMARY: 0 errors", report, report[-4000:])
        self.assertIn("definitely lost: 0 bytes", report, report[-4000:])
        self.assertEqual(rc, 0, report[-4000:])
        print(report[report.index("HEAP SUMMARY"):], file=sys.stderr)


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1:3]
    del sys.argv[1:3]
    unittest.main(verbosity=2)
