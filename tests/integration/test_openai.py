"""test_openai.py - the official OpenAI Python SDK, unchanged, against real
nodes: models, stateless and streamed chat, a server-side session that
sends only new messages (continued on a second node), a Responses chain
with previous_response_id continued on the second node (and forked from an
older response), and errors as the SDK's own exception types. API keys:
test_ops.py. Runs with the project's venv (scripts/setup.sh).

usage: third_party/venv/bin/python test_openai.py DISCEDGE_BINARY MODEL.gguf"""
import json
import os
import sys
import unittest
import urllib.request

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NodePair  # noqa: E402

BIN = MODEL = None


def client(node):
    # no key is configured on the node; the SDK insists on one
    return openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % node.port, api_key="unused", max_retries=0)


class OpenAISDK(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # a session moves between two nodes, as in test_scenario
        cls.pair = NodePair(BIN, MODEL, prefix="dc-openai-")
        cls.a, cls.b = cls.pair.a, cls.pair.b
        cls.ca, cls.cb = client(cls.a), client(cls.b)
        cls.model = cls.ca.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        cls.pair.stop()

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
        # the model may end before 16 tokens: the reason must say which
        self.assertLessEqual(r.usage.completion_tokens, 16)
        self.assertEqual(r.choices[0].finish_reason, "length" if r.usage.completion_tokens == 16 else "stop")
        self.assertEqual(bool(r.choices[0].message.content), r.usage.completion_tokens > 0)
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

    def test_streamed_chat_is_the_same_reply(self):
        # The same computation twice: cache_prompt off, so neither request
        # reuses KV the other left (a prefill on top of a cache may round a
        # near-tie the other way; test_llm measures that noise); ignore_eos,
        # so there are 24 tokens to stream whatever the model would say.
        msgs = [{"role": "user", "content": "Name three planets."}]
        same = {"cache_prompt": False, "ignore_eos": True}
        whole = self.ca.chat.completions.create(model=self.model, max_tokens=24, temperature=0, messages=msgs,
                                                extra_body=same)
        chunks = list(self.ca.chat.completions.create(model=self.model, max_tokens=24, temperature=0, messages=msgs,
                                                      stream=True, stream_options={"include_usage": True},
                                                      extra_body=same))
        self.assertTrue(all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertGreater(len([c for c in chunks if c.choices and c.choices[0].delta.content]), 3)  # piece by piece
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(len(finals), 1)
        self.assertEqual(finals[0].choices[0].finish_reason, whole.choices[0].finish_reason)
        self.assertEqual(chunks[-1].choices, [])  # include_usage: a last chunk with the usage only
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(whole.usage.completion_tokens, 24)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_streamed_session_turns(self):
        chunks = list(self.ca.chat.completions.create(model=self.model, max_tokens=8, store=True, stream=True,
                                                      messages=[{"role": "user", "content": "Hello!"}]))
        sid = chunks[0].model_extra["session_id"]  # named from the first chunk on
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
        self.assertEqual((final.model_extra["session_id"], final.model_extra["turn"]), (sid, 1))
        chunks = list(self.cb.chat.completions.create(model=self.model, max_tokens=8, stream=True,
                                                      messages=[{"role": "user", "content": "Again."}],
                                                      extra_body={"session_id": sid, "turn": 2}))
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
        self.assertEqual((final.model_extra["turn"], final.model_extra["node"]), (2, "edge-2"))
        # a conflict is found before anything streams: the SDK's own exception
        with self.assertRaises(openai.ConflictError):
            list(self.ca.chat.completions.create(model=self.model, max_tokens=8, stream=True,
                                                 messages=[{"role": "user", "content": "Again."}],
                                                 extra_body={"session_id": sid, "turn": 2}))

    def stored(self, node, sid):
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/sessions/%s?user_id=anonymous&include=turns"
                                    % (node.port, sid)) as resp:
            return json.load(resp)

    def test_responses_chain_across_nodes_and_fork(self):
        r1 = self.ca.responses.create(model=self.model, instructions="You are a robotics tutor.",
                                      input="What is a PID controller?", max_output_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True})
        self.assertEqual(r1.object, "response")
        self.assertEqual(r1.usage.output_tokens, 16)  # ignore_eos: exactly the cap, so some text
        self.assertTrue(r1.output_text)
        self.assertEqual(r1.status, "incomplete")
        # continued on the other node with only the new input
        r2 = self.cb.responses.create(model=self.model, previous_response_id=r1.id, input="And the I term?",
                                      max_output_tokens=16, temperature=0)
        self.assertEqual(r2.previous_response_id, r1.id)
        self.assertEqual(r2.model_extra["node"], "edge-2")
        sid = r1.model_extra["session_id"]
        self.assertEqual((r2.model_extra["session_id"], r2.model_extra["turn"]), (sid, 2))
        self.assertGreater(r2.usage.input_tokens, r1.usage.input_tokens + r1.usage.output_tokens)
        # streamed, from the latest response: turn 3 of the same session
        events = list(self.ca.responses.create(model=self.model, previous_response_id=r2.id, input="Thanks.",
                                               max_output_tokens=8, stream=True))
        types = [e.type for e in events]
        self.assertEqual(types[0], "response.created")
        self.assertEqual(types[-1], "response.completed")
        self.assertIn("response.output_text.delta", types)
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        r3 = events[-1].response
        self.assertEqual(r3.output_text, "".join(e.delta for e in events if e.type == "response.output_text.delta"))
        self.assertEqual(r3.model_extra["turn"], 3)
        self.assertEqual(self.stored(self.a, sid)["turn"], 3)
        # continuing from an older response forks: a new session sharing turns 1-2
        r4 = self.ca.responses.create(model=self.model, previous_response_id=r2.id, input="Something else.",
                                      max_output_tokens=8)
        fork = r4.model_extra["session_id"]
        self.assertNotEqual(fork, sid)
        self.assertEqual(r4.model_extra["turn"], 3)
        a, b = self.stored(self.b, sid), self.stored(self.b, fork)
        self.assertEqual(a["turn"], 3)  # the original is as it was
        self.assertEqual(b["turn"], 3)
        self.assertEqual(a["turns"][:2], b["turns"][:2])  # the same prefix, token for token
        self.assertNotEqual(a["turns"][2]["user"], b["turns"][2]["user"])
        # store:false answers without a session
        r5 = self.ca.responses.create(model=self.model, input="Hi", store=False, max_output_tokens=4)
        self.assertIsNone((r5.model_extra or {}).get("session_id"))
        with self.assertRaises(openai.NotFoundError):  # it cannot be continued
            self.ca.responses.create(model=self.model, previous_response_id=r5.id, input="x")
        with self.assertRaises(openai.NotFoundError):
            self.cb.responses.create(model=self.model, previous_response_id="resp_%s_1" % ("0" * 32), input="x")
        with self.assertRaises(openai.BadRequestError):  # instructions only start a conversation
            self.cb.responses.create(model=self.model, previous_response_id=r1.id, input="x", instructions="y")

    def test_errors_are_the_sdks_exceptions(self):
        user = [{"role": "user", "content": "hi"}]
        with self.assertRaises(openai.BadRequestError) as e:
            self.ca.chat.completions.create(model=self.model, messages=[{"role": "bot", "content": "x"}])
        self.assertIn("role", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            self.ca.chat.completions.create(model=self.model, messages=[])
        with self.assertRaises(openai.BadRequestError):
            self.ca.chat.completions.create(model=self.model, messages=user, max_tokens=0)
        with self.assertRaises(openai.BadRequestError):  # not supported: refused, never ignored
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
