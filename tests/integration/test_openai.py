"""test_openai.py - the official OpenAI Python SDK, unchanged, against real
nodes: models, stateless chat, a server-side session that sends only new
messages (continued on a second node), and errors as the SDK's own
exception types. Runs with the project's venv (scripts/setup.sh).

usage: third_party/venv/bin/python test_openai.py DISCEDGE_BINARY MODEL.gguf"""
import json
import os
import subprocess
import sys
import tempfile
import unittest
import urllib.request

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node  # noqa: E402

BIN = MODEL = None


def client(node):
    # no key is configured on the node; the SDK insists on one
    return openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % node.port, api_key="unused", max_retries=0)


class OpenAISDK(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # two node processes over one embedded store folder (LMDB is safe
        # across processes): a session moves between nodes as in test_scenario
        cls.dir = tempfile.mkdtemp(prefix="dc-openai-")
        cls.a = Node(BIN, MODEL, data_dir=cls.dir, node_id="edge-1").start()
        cls.b = Node(BIN, MODEL, data_dir=cls.dir, node_id="edge-2").start()
        cls.ca, cls.cb = client(cls.a), client(cls.b)
        cls.model = cls.ca.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        cls.a.cleanup()
        cls.b.cleanup()
        subprocess.run(["rm", "-rf", cls.dir])

    def test_models(self):
        models = self.ca.models.list().data
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0].owned_by, "discedge")
        self.assertTrue(models[0].id)

    def test_stateless_chat(self):
        r = self.ca.chat.completions.create(
            model=self.model, max_tokens=16, temperature=0, seed=123,
            messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "What is 2+2?"}])
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertLessEqual(r.usage.completion_tokens, 16)
        self.assertGreater(r.usage.prompt_tokens, 10)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertIsNone((r.model_extra or {}).get("session_id"))  # stateless: nothing stored
        # max_completion_tokens (the current name) limits like max_tokens
        r = self.ca.chat.completions.create(model=self.model, max_completion_tokens=3, temperature=0,
                                            extra_body={"ignore_eos": True},
                                            messages=[{"role": "user", "content": "Count to ten."}])
        self.assertEqual(r.usage.completion_tokens, 3)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_session_sends_only_new_messages_and_moves_nodes(self):
        r1 = self.ca.chat.completions.create(
            model=self.model, max_tokens=24, temperature=0, seed=1, store=True,
            messages=[{"role": "system", "content": "You are a robotics tutor."},
                      {"role": "user", "content": "What is a PID controller?"}])
        sid, turn = r1.model_extra["session_id"], r1.model_extra["turn"]
        self.assertEqual(turn, 1)
        # turn 2 on the other node: only the new message; the node has the rest
        r2 = self.cb.chat.completions.create(
            model=self.model, max_tokens=24, temperature=0, seed=1,
            messages=[{"role": "user", "content": "What does the I term do?"}],
            extra_body={"session_id": sid, "turn": 2})
        self.assertEqual(r2.model_extra["session_id"], sid)
        self.assertEqual(r2.model_extra["turn"], 2)
        self.assertEqual(r2.model_extra["node"], "edge-2")
        # the model saw turn 1 (its prompt and reply) before the new message
        self.assertGreater(r2.usage.prompt_tokens, r1.usage.prompt_tokens + r1.usage.completion_tokens)
        # turn 3 back on the first node, through the headers instead
        r3 = self.ca.chat.completions.create(
            model=self.model, max_tokens=8, temperature=0, messages=[{"role": "user", "content": "Thanks."}],
            extra_headers={"X-Session-Id": sid, "X-Turn": "3"})
        self.assertEqual(r3.model_extra["turn"], 3)
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/sessions/%s?user_id=anonymous&include=turns"
                                    % (self.a.port, sid)) as resp:
            stored = json.load(resp)
        self.assertEqual(stored["turn"], 3)
        self.assertEqual(stored["mode"], "tokenized")
        self.assertEqual([t["turn"] for t in stored["turns"]], [1, 2, 3])
        self.assertTrue(stored["turns"][0]["system"])  # the system message of turn 1, as tokens
        self.assertEqual(stored["turns"][1]["system"], [])
        # the reply is stored as the ids the model generated
        for t, r in zip(stored["turns"], (r1, r2, r3)):
            self.assertEqual(len(t["reply"]), r.usage.completion_tokens)
        # the same turn again (a lost reply retried without request_id) is a conflict
        with self.assertRaises(openai.ConflictError):
            self.ca.chat.completions.create(model=self.model, max_tokens=4,
                                            messages=[{"role": "user", "content": "Thanks."}],
                                            extra_body={"session_id": sid, "turn": 3})

    def test_errors_are_the_sdks_exceptions(self):
        user = [{"role": "user", "content": "hi"}]
        with self.assertRaises(openai.BadRequestError) as e:
            self.ca.chat.completions.create(model=self.model, messages=[{"role": "bot", "content": "x"}])
        self.assertIn("role", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            self.ca.chat.completions.create(model=self.model, messages=[])
        with self.assertRaises(openai.BadRequestError):
            self.ca.chat.completions.create(model=self.model, messages=user, max_tokens=0)
        with self.assertRaises(openai.BadRequestError):  # not supported yet: refused, never ignored
            self.ca.chat.completions.create(model=self.model, messages=user, stop=["\n"])
        with self.assertRaises(openai.BadRequestError):  # a session takes only the new message
            self.ca.chat.completions.create(model=self.model, store=True,
                                            messages=user + [{"role": "assistant", "content": "x"}] + user)
        with self.assertRaises(openai.NotFoundError):
            self.ca.chat.completions.create(model=self.model, messages=user,
                                            extra_body={"session_id": "0" * 32, "turn": 2})


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0], "-v"])
