"""test_long_conversation.py - a conversation past its context window keeps
its KV (issue 15 item 6).

Once a session's turns no longer fit, the context manager drops the oldest
whole turns (reply field truncated_turns), so the input loses a range from
its middle: [system][kept turns][new message]. The engine removes those
cells from the session's KV and shifts the rest into place (engine.c,
plan_reuse), so every turn still prefills only what is new: the previous
reply's last token (sampled, never fed back), the turn-end markup and the
new message. The stored tokens and the turn protocol do not change.

The bound is computed from the stored segments (GET
/v1/sessions/{id}?include=turns), never from what the model wrote; every
reply is exactly n_predict tokens (ignore_eos).

Gemma 3 has sliding-window attention: once a conversation is longer than
its window (512 positions), llama.cpp may have let the oldest cells go, and
a shift would leave the turn without cells a fresh prefill has. There the
engine prefills the window as before, and the conversation goes on.

usage: test_long_conversation.py DISCEDGE_BINARY MODEL.gguf GEMMA.gguf"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node, turns_of  # noqa: E402

BIN = MODEL = GEMMA = None
N_PREDICT = 64
MESSAGES = [
    "What are the fundamental components of an autonomous mobile robot?",
    "You mentioned sensors. What are the most common types for obstacle avoidance?",
    "Can you explain the concept of a PID controller in the context of motor control?",
    "Write a simple Python function for a proportional (P) controller.",
    "In your previous code, what do the kp and error variables represent?",
    "How would you modify that function to include the integral (I) component?",
    "Now, let's talk about localization. What is SLAM?",
    "What are some of the main challenges when implementing that on a small, low-power robot?",
    "Can you compare the EKF SLAM and Particle Filter SLAM approaches?",
]


def engine(node):
    st, h = node.request("GET", "/health")
    assert st == 200, h
    return h["engine"]


class LongConversation(unittest.TestCase):
    """One node with a 512-token window (each kept conversation gets the
    whole --ctx-size, engine.c), one sequence, one thread. Its KV is kept
    for one conversation only, so another session's turn in between pushes
    the long one out to the spill folder."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node(BIN, MODEL, extra=["--threads", "1", "--ctx-size", "512", "--parallel", "1",
                                           "--kv-cache-sessions", "1"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    def turn(self, user, sid, turn, prompt):
        fields = dict(prompt=prompt, user_id=user, turn=turn, n_predict=N_PREDICT, ignore_eos=True,
                      system="You are a helpful robotics tutor." if turn == 1 else None)
        fields = {k: v for k, v in fields.items() if v is not None}
        if sid:
            fields["session_id"] = sid
        st, r = self.node.complete(**fields)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["turn"], turn)
        self.assertEqual(r["tokens_predicted"], N_PREDICT)
        return r

    def check_turn(self, r, turns, k, what):
        """Turn k (1-based) of the stored turns: its input is what the turn
        protocol says, and past the first truncation it prefilled at most
        the new message plus the end of turn k-1."""
        t = r["timings"]
        kept = turns[r["truncated_turns"]:k - 1]
        seg = lambda tr: len(tr["user"]) + len(tr["reply"]) + len(tr["end"])  # noqa: E731
        # the input: the system segment, the kept turns, the new message
        self.assertEqual(t["prompt_n"] + t["cache_n"],
                         len(turns[0]["system"]) + sum(seg(tr) for tr in kept) + len(turns[k - 1]["user"]))
        bound = len(turns[k - 1]["user"]) + len(turns[k - 2]["end"]) + 1
        self.assertLessEqual(t["prompt_n"], bound,
                             "%s: turn %d (%d turns dropped) prefilled %d tokens, more than its new ones (%d)"
                             % (what, k, r["truncated_turns"], t["prompt_n"], bound))
        return "turn %d: dropped %d, prefilled %d (bound %d), reused %d" % (
            k, r["truncated_turns"], t["prompt_n"], bound, t["cache_n"])

    def test_turns_past_the_window_prefill_only_new_tokens(self):
        user, sid, replies, log = "long_user", None, [], []
        for k, msg in enumerate(MESSAGES[:7], 1):
            r = self.turn(user, sid, k, msg)
            sid = r["session_id"]
            replies.append(r)
        turns = turns_of(self.node, sid, user)["turns"]
        self.assertEqual(len(turns), 7)
        first = next(k for k, r in enumerate(replies, 1) if r["truncated_turns"] > 0)
        self.assertLess(first, 7, "the window never filled: the test proves nothing")
        for k, r in enumerate(replies, 1):
            if k >= first:
                log.append(self.check_turn(r, turns, k, "in memory"))
        # the stored turns are the protocol's, truncation or not: the first
        # alone holds the system message, every reply is its n_predict ids
        # and ends with the same turn-end markup
        self.assertTrue(turns[0]["system"])
        for tr in turns:
            self.assertEqual(len(tr["reply"]), N_PREDICT)
            self.assertEqual(tr["end"], turns[0]["end"])
            self.assertTrue(tr["user"])
        self.assertTrue(all(not tr["system"] for tr in turns[1:]))

        # After a spill: another conversation takes the only sequence, the
        # long one's KV goes to disk, and its next turn restores it and
        # shifts it as well.
        for k in (8, 9):
            before = engine(self.node)["spill_restores"]
            other = self.turn("other_user", None, 1, "Say something about gardens.")
            self.assertEqual(other["timings"]["cache_n"], 0)
            r = self.turn(user, sid, k, MESSAGES[k - 1])
            self.assertGreater(r["truncated_turns"], 0)
            self.assertEqual(engine(self.node)["spill_restores"], before + 1)
            turns = turns_of(self.node, sid, user)["turns"]
            self.assertEqual(len(turns), k)
            log.append(self.check_turn(r, turns, k, "after a spill restore"))
        print("\n".join(log))


class SlidingWindowModel(unittest.TestCase):
    """Gemma 3 270M (sliding window of 512 positions) on a 768-token
    window: its cache can move positions (both parts have 768 cells), but
    cells 512 positions behind the end may be gone from the sliding-window
    part, so a conversation longer than that must not shift (engine.c,
    plan_reuse). Long messages and short replies fill the window with
    little decoding."""

    def test_sliding_window_past_its_reach_prefills_instead(self):
        node = Node(BIN, GEMMA, extra=["--threads", "1", "--ctx-size", "768", "--parallel", "1",
                                       "--kv-cache-sessions", "1"]).start()
        try:
            sid, dropped, log = None, 0, []
            for k, msg in enumerate(MESSAGES[:5], 1):
                fields = dict(prompt=" ".join([msg] * 12), user_id="gemma_user", turn=k, n_predict=16,
                              ignore_eos=True)
                if sid:
                    fields["session_id"] = sid
                st, r = node.complete(**fields)
                self.assertEqual(st, 200, r)
                sid = r["session_id"]
                if r["truncated_turns"]:
                    dropped += 1
                    # nothing shifted: a whole turn more than the new message ran again
                    turns = turns_of(node, sid, "gemma_user")["turns"]
                    kept = turns[r["truncated_turns"]]
                    self.assertGreater(r["timings"]["prompt_n"], len(turns[k - 1]["user"]) + len(kept["user"]))
                    log.append("gemma turn %d: dropped %d, prefilled %d (new message %d tokens)" % (
                        k, r["truncated_turns"], r["timings"]["prompt_n"], len(turns[k - 1]["user"])))
            self.assertGreater(dropped, 0, "the window never filled: the test proves nothing")
            self.assertEqual(len(turns_of(node, sid, "gemma_user")["turns"]), 5)
            print("\n".join(log))
        finally:
            node.cleanup()


if __name__ == "__main__":
    BIN, MODEL, GEMMA = sys.argv[1], sys.argv[2], sys.argv[3]
    unittest.main(argv=sys.argv[:1], verbosity=2)
