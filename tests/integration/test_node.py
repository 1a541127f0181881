"""test_node.py - one real edge node, the real model, real HTTP.

usage: test_node.py DISCEDGE_BINARY MODEL.gguf"""
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node, detokenize, segment_tokens  # noqa: E402

BIN = MODEL = None
CODE_WORD = "PELICAN"


class NodeTest(unittest.TestCase):
    extra = ()

    @classmethod
    def setUpClass(cls):
        cls.node = Node(BIN, MODEL, extra=cls.extra).start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    def new_session(self, user="alice", prompt="Say hello.", **kw):
        st, r = self.node.complete(prompt=prompt, user_id=user, turn=1, **kw)
        self.assertEqual(st, 200, r)
        return r["session_id"]

    def assert_error(self, resp, status, etype):
        st, body = resp
        self.assertEqual(st, status, body)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(body["error"]["code"], status)
        self.assertEqual(body["error"]["type"], etype)
        self.assertTrue(body["error"]["message"])
        return body["error"]


class Conversation(NodeTest):
    def test_fact_from_turn_1_survives_a_restart(self):
        # What DisCEdge guarantees is the context, not what the model makes of
        # it: after a restart, turn 3 is fed exactly the stored turns 1-2 (the
        # code word among them) plus its own message.
        n = self.node
        st, r1 = n.complete(prompt="My secret code word is %s. Please remember it." % CODE_WORD, user_id="carol")
        self.assertEqual(st, 200, r1)
        sid = r1["session_id"]
        self.assertEqual(len(sid), 32)
        self.assertEqual((r1["turn"], r1["mode"], r1["node"], r1["user_id"]), (1, "tokenized", "edge-1", "carol"))
        st, r2 = n.complete(prompt="What is the capital of France?", user_id="carol", session_id=sid, turn=2)
        self.assertEqual(st, 200, r2)
        self.assertGreater(r2["context_tokens"], r1["context_tokens"] + r1["tokens_predicted"])
        st, before = n.request("GET", "/v1/sessions/%s?user_id=carol&include=turns" % sid)
        self.assertEqual(st, 200, before)

        self.assertEqual(n.stop(), 0)  # clean shutdown on SIGTERM
        n.start()

        st, r3 = n.complete(prompt="What is my secret code word?", user_id="carol", session_id=sid, turn=3)
        self.assertEqual(st, 200, r3)
        st, info = n.request("GET", "/v1/sessions/%s?user_id=carol&include=turns" % sid)
        self.assertEqual(st, 200, info)
        self.assertEqual(info["turn"], 3)
        self.assertEqual(info["turns"][:2], before["turns"])  # turns 1-2 came back token for token
        # turn 3's input was turns 1-2 whole, then its own message
        self.assertEqual(r3["context_tokens"], segment_tokens(before["turns"]) + len(info["turns"][2]["user"]))
        self.assertEqual(info["context_tokens"], r3["context_tokens"] + r3["tokens_predicted"] + 2)
        self.assertEqual(len(info["turns"][2]["reply"]), r3["tokens_predicted"])
        # control: a new session of the same user holds its own message only
        st, fresh = n.complete(prompt="What is my secret code word?", user_id="carol")
        self.assertEqual(st, 200, fresh)
        st, other = n.request("GET", "/v1/sessions/%s?user_id=carol&include=turns" % fresh["session_id"])
        self.assertEqual(fresh["context_tokens"], len(other["turns"][0]["system"]) + len(other["turns"][0]["user"]))
        said_1, said_3, said_fresh = detokenize(BIN, MODEL, info["turns"][0]["user"], info["turns"][2]["user"],
                                                other["turns"][0]["user"])
        self.assertIn(CODE_WORD, said_1)  # the code word is in what turn 3 was fed
        self.assertIn("What is my secret code word?", said_3)
        self.assertNotIn(CODE_WORD, said_fresh)

    def test_paper_client_request_shape(self):
        # the paper's Python client: its own user id and model name, reads content/session_id/timings
        body = {"prompt": "What are the fundamental components of an autonomous mobile robot?",
                "mode": "tokenized", "user_id": "robotics_dev", "turn": 1, "temperature": 0, "seed": 123,
                "stream": False, "model": "Qwen/Qwen1.5-0.5B-Chat", "n_predict": 16}
        st, r = self.node.request("POST", "/completion", body)
        self.assertEqual(st, 200, r)
        for k in ("content", "session_id", "timings", "tokens_predicted", "context_tokens", "retries", "node"):
            self.assertIn(k, r)
        for k in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"):
            self.assertIn(k, r["timings"])
        self.assertEqual(r["timings"]["predicted_n"], r["tokens_predicted"])
        self.assertLessEqual(r["tokens_predicted"], 16)

    def test_two_concurrent_requests_for_one_turn(self):
        sid = self.new_session(user="dave")
        barrier = threading.Barrier(2)
        results = []

        def go(text):
            barrier.wait()
            results.append(self.node.complete(prompt=text, user_id="dave", session_id=sid, turn=2))

        threads = [threading.Thread(target=go, args=(t,)) for t in ("Tell me a joke.", "Tell me a story.")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(st for st, _ in results)
        self.assertEqual(statuses, [200, 409], results)
        err = [b for st, b in results if st == 409][0]["error"]
        self.assertEqual((err["type"], err["expected_turn"]), ("turn_conflict", 3))
        st, info = self.node.request("GET", "/v1/sessions/%s?user_id=dave" % sid)
        self.assertEqual(info["turn"], 2)

    def test_raw_and_client_side_modes(self):
        n = self.node
        st, r1 = n.complete(prompt="Name a color.", user_id="erin", mode="raw")
        self.assertEqual(st, 200, r1)
        sid = r1["session_id"]
        st, r2 = n.complete(prompt="Name another one.", user_id="erin", mode="raw", session_id=sid, turn=2)
        self.assertEqual((st, r2["mode"]), (200, "raw"), r2)
        self.assert_error(n.complete(prompt="x", user_id="erin", session_id=sid, turn=3), 400, "mode_mismatch")
        prompt = "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"
        st, r = n.complete(prompt=prompt, mode="client-side")
        self.assertEqual(st, 200, r)
        self.assertEqual(r["mode"], "client-side")
        self.assertNotIn("session_id", r)
        # the client's markup was parsed as control tokens: a 10-token prompt, not ~30 characters' worth
        self.assertLess(r["context_tokens"], 16)

    def test_default_body_limit_is_1_mib(self):
        big = '{"prompt": "%s"}' % ("y" * (1 << 20))
        self.assert_error(self.node.request("POST", "/completion", big), 413, "payload_too_large")
        st, _ = self.node.request("GET", "/health")  # and the node is fine
        self.assertEqual(st, 200)

    def test_delete(self):
        sid = self.new_session(user="frank")
        self.assert_error(self.node.request("DELETE", "/v1/sessions/%s?user_id=mallory" % sid), 403, "forbidden")
        st, r = self.node.request("DELETE", "/v1/sessions/%s?user_id=frank" % sid)
        self.assertEqual((st, r.get("deleted")), (200, True), r)
        self.assert_error(self.node.request("GET", "/v1/sessions/%s?user_id=frank" % sid), 404, "not_found")
        self.assert_error(self.node.complete(prompt="x", user_id="frank", session_id=sid, turn=2), 404, "not_found")
        self.assert_error(self.node.request("DELETE", "/v1/sessions/%s?user_id=frank" % sid), 404, "not_found")


class Errors(NodeTest):
    extra = ("--max-body", "65536")

    def test_every_error_leaves_the_session_intact(self):
        n = self.node
        sid = self.new_session(user="gina")
        st, _ = n.complete(prompt="And again.", user_id="gina", session_id=sid, turn=2)
        self.assertEqual(st, 200)
        post = lambda body, **kw: n.request("POST", "/completion", body, **kw)  # noqa: E731

        self.assert_error(post('{"prompt": "x", '), 400, "invalid_json")
        self.assert_error(post("[]"), 400, "invalid_json")
        self.assert_error(post({"prompt": "x", "mode": "telepathy"}), 400, "invalid_request")
        self.assert_error(post({"prompt": "x", "session_id": sid, "user_id": "gina", "turn": 0}), 400,
                          "invalid_request")
        self.assert_error(post({"prompt": "x", "session_id": sid, "user_id": "gina", "turn": "3"}), 400,
                          "invalid_request")
        self.assert_error(post({"session_id": sid, "user_id": "gina", "turn": 3}), 400, "invalid_request")
        self.assert_error(post({"prompt": "x", "session_id": "../etc", "user_id": "gina", "turn": 3}), 400,
                          "invalid_request")
        self.assert_error(post({"prompt": "x" * 70000, "session_id": sid, "user_id": "gina", "turn": 3}), 413,
                          "payload_too_large")
        self.assert_error(post({"prompt": "x", "session_id": sid, "user_id": "mallory", "turn": 3}), 403,
                          "forbidden")
        self.assert_error(n.request("GET", "/v1/sessions/%s?user_id=mallory" % sid), 403, "forbidden")
        err = self.assert_error(post({"prompt": "x", "session_id": sid, "user_id": "gina", "turn": 2}), 409,
                                "turn_conflict")
        self.assertEqual(err["expected_turn"], 3)
        err = self.assert_error(post({"prompt": "x", "session_id": sid, "user_id": "gina", "turn": 1}), 409,
                                "turn_conflict")
        self.assertEqual(err["expected_turn"], 3)
        err = self.assert_error(post({"prompt": "x", "session_id": sid, "user_id": "gina", "turn": 5}), 503,
                                "stale_context")
        self.assertIn("3 re-reads", err["message"])
        self.assert_error(post({"prompt": "x", "session_id": "nosuchsession", "user_id": "gina", "turn": 4}), 404,
                          "not_found")
        self.assert_error(post({"prompt": "x", "user_id": "gina", "turn": 2}), 400, "invalid_request")
        # the message and the longest reply allowed (--max-n-predict, 4096) overflow the 4096-token context
        self.assert_error(post({"prompt": "x", "user_id": "gina", "n_predict": 4096}), 400,
                          "context_length_exceeded")
        err = self.assert_error(post({"prompt": "x", "user_id": "gina", "n_predict": 100000}), 400, "invalid_request")
        self.assertIn("at most 4096", err["message"])
        self.assert_error(n.request("GET", "/completion"), 405, "method_not_allowed")
        self.assert_error(n.request("PUT", "/v1/sessions/%s?user_id=gina" % sid), 405, "method_not_allowed")
        self.assert_error(n.request("GET", "/v1/nothing"), 404, "not_found")

        st, info = n.request("GET", "/v1/sessions/%s?user_id=gina" % sid)
        self.assertEqual((st, info["turn"]), (200, 2), info)
        st, r = n.complete(prompt="Still there?", user_id="gina", session_id=sid, turn=3)
        self.assertEqual((st, r["turn"]), (200, 3), r)

    def test_health(self):
        st, h = self.node.request("GET", "/health")
        self.assertEqual((st, h["status"], h["node"]), (200, "ok", "edge-1"))


class Incompatible(unittest.TestCase):
    def test_context_of_another_tokenizer_is_refused(self):
        """The node restarts on the same store with a model whose chat
        template differs: its stored token ids are not this model's."""
        from dcnode import model_variant
        node = Node(BIN, MODEL).start()
        try:
            st, r = node.complete(prompt="Hello", user_id="kim", n_predict=4)
            self.assertEqual(st, 200, r)
            sid = r["session_id"]
            self.assertEqual(node.stop(), 0)
            other = model_variant(MODEL, node.data_dir, b"named SmolLM,", b"named SmolLX,", "template-b.gguf")
            swapped = Node(BIN, other, data_dir=node.data_dir).start()
            try:
                st, body = swapped.complete(prompt="Next", user_id="kim", session_id=sid, turn=2, n_predict=4)
                self.assertEqual(st, 409, body)
                self.assertEqual(body["error"]["type"], "incompatible_context")
                st, info = swapped.request("GET", "/v1/sessions/%s?user_id=kim" % sid)
                self.assertEqual((st, info["turn"]), (200, 1))  # refused, not damaged
            finally:
                swapped.cleanup()
        finally:
            node.cleanup()


class Expiry(NodeTest):
    extra = ("--session-ttl", "1")

    def test_idle_session_expires(self):
        sid = self.new_session(user="hank")
        st, _ = self.node.request("GET", "/v1/sessions/%s?user_id=hank" % sid)
        self.assertEqual(st, 200)
        time.sleep(2.2)
        self.assert_error(self.node.request("GET", "/v1/sessions/%s?user_id=hank" % sid), 404, "not_found")
        self.assert_error(self.node.complete(prompt="x", user_id="hank", session_id=sid, turn=2), 404, "not_found")


class Truncation(NodeTest):
    extra = ("--ctx-size", "256")

    def test_oldest_turns_are_dropped_to_fit(self):
        n = self.node
        # ignore_eos: every reply is 60 tokens, so the context outgrows the
        # window by turn 4 whatever the model would have said
        st, r = n.complete(prompt="Remember: apples.", user_id="ivy", system="You are a helpful assistant.",
                           n_predict=60, ignore_eos=True)
        self.assertEqual(st, 200, r)
        sid, truncated = r["session_id"], 0
        for turn in range(2, 9):
            st, r = n.complete(prompt="Tell me more about turn %d." % turn, user_id="ivy", session_id=sid,
                               turn=turn, n_predict=60, ignore_eos=True)
            self.assertEqual(st, 200, r)
            self.assertLessEqual(r["context_tokens"] + 60, 256)
            truncated = max(truncated, r["truncated_turns"])
        self.assertGreater(truncated, 0)
        st, info = n.request("GET", "/v1/sessions/%s?user_id=ivy" % sid)
        self.assertEqual(info["turn"], 8)  # the store keeps every turn; only the model input is cut
        self.assertGreater(info["context_tokens"], 256)
        self.assert_error(n.complete(prompt="word " * 300, user_id="ivy", session_id=sid, turn=9), 400,
                          "context_length_exceeded")


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0], "-v"])
