"""test_faults.py - a node killed with SIGKILL mid-generation and
mid-commit, and a store whose disk fills up: every turn is either wholly
committed or absent, a client's retry (same request_id) lands exactly once,
and service resumes.

usage: test_faults.py DISCEDGE_BINARY MODEL.gguf"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node, raw_post  # noqa: E402

BIN = MODEL = None
QUIET = ["--threads", "1", "--kv-spill-mib", "0"]


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class KillNine(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dc-faults-")
        self.node = None

    def tearDown(self):
        if self.node:
            self.node.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, env=None):
        self.node = Node(BIN, MODEL, data_dir=self.dir, node_id="edge-1", extra=QUIET, env=env).start()
        return self.node

    def turns(self, sid, user):
        st, info = self.node.request("GET", "/v1/sessions/%s?user_id=%s&include=turns" % (sid, user))
        self.assertEqual(st, 200, info)
        return info["turns"]

    def retry_lands_once(self, body, turns_before):
        """After the crash: the turn is absent; the client's retry commits it,
        and a second retry is answered with the same reply, not a new turn."""
        sid, user = body["session_id"], body["user_id"]
        self.assertEqual(self.turns(sid, user), turns_before)  # nothing partial, turn 1 as it was
        st, r = self.node.request("POST", "/completion", body)
        self.assertEqual(st, 200, r)
        self.assertEqual((r["turn"], r.get("replayed", False)), (2, False))
        st, again = self.node.request("POST", "/completion", body)
        self.assertEqual(st, 200, again)
        self.assertEqual((again["turn"], again["replayed"], again["content"]), (2, True, r["content"]))
        after = self.turns(sid, user)
        self.assertEqual(len(after), 2)
        self.assertEqual(after[0], turns_before[0])

    def test_kill_mid_generation(self):
        node = self.start()
        st, r1 = node.complete(prompt="Tell me about lighthouses.", user_id="k1", n_predict=8)
        self.assertEqual(st, 200)
        before = self.turns(r1["session_id"], "k1")
        body = dict(prompt="Go on, at length.", session_id=r1["session_id"], user_id="k1", turn=2,
                    request_id="k1-turn-2", n_predict=2000, ignore_eos=True, temperature=0)
        s = raw_post(node.port, body)
        wait_for("the generation", lambda: node.request("GET", "/health")[1]["engine"]["active"] == 1)
        time.sleep(0.3)  # well into it
        node.kill9()
        s.close()
        self.start()
        body["n_predict"] = 8
        self.retry_lands_once(body, before)

    def test_kill_mid_commit(self):
        # every commit pauses inside its write transaction, records written, not yet committed
        node = self.start(env={"DC_FAULT_COMMIT_PAUSE_MS": "4000"})
        st, r1 = node.complete(prompt="Name a colour.", user_id="k2", n_predict=4)
        self.assertEqual(st, 200)
        sid = r1["session_id"]
        body = dict(prompt="Another one.", session_id=sid, user_id="k2", turn=2, request_id="k2-turn-2",
                    n_predict=4, temperature=0)
        s = raw_post(node.port, body)
        wait_for("the paused commit of turn 2",
                 lambda: "fault: commit paused (turn 2 of %s)" % sid in node.log_text())
        node.kill9()
        s.close()
        self.start()
        before = [t for t in self.turns(sid, "k2")]
        self.assertEqual(len(before), 1)
        self.retry_lands_once(body, before)


@unittest.skipUnless(os.geteuid() == 0, "mounting a small tmpfs needs root")
class DiskFull(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dc-diskfull-")
        self.store = os.path.join(self.dir, "store")  # the node's --data-dir (dcnode.Node)
        os.makedirs(self.store)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", self.store], check=True)
        self.node = None

    def tearDown(self):
        try:
            if self.node:
                self.node.cleanup()
        finally:
            subprocess.run(["umount", self.store])
            shutil.rmtree(self.dir, ignore_errors=True)

    def test_full_disk_fails_clearly_and_service_resumes(self):
        self.node = node = Node(BIN, MODEL, data_dir=self.dir, extra=QUIET).start()
        ok = {}  # session id -> its committed turns, as the client saw them
        st, r = node.complete(prompt="Hello.", user_id="full", n_predict=4)
        self.assertEqual(st, 200)
        ok[r["session_id"]] = 1
        filler = os.path.join(self.store, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096) > 0:
                pass
        except OSError:  # ENOSPC: the disk is full
            pass
        os.close(fd)
        # LMDB may reuse free pages for a while: write until the store says no
        failed = None
        for i in range(200):
            body = dict(prompt="Turn %d, with some words to store." % i, user_id="full", n_predict=16,
                        request_id="full-%d" % i, ignore_eos=True)
            st, r = node.request("POST", "/completion", body)
            if st != 200:
                failed = (st, r, body)
                break
            ok[r["session_id"]] = 1
        self.assertIsNotNone(failed, "the 1 MiB disk never filled")
        st, r, body = failed
        self.assertEqual(st, 500, r)
        self.assertEqual(r["error"]["type"], "store_error")
        self.assertIn("No space left on device", r["error"]["message"])
        for sid in ok:  # everything committed before is still there
            st, info = node.request("GET", "/v1/sessions/%s?user_id=full" % sid)
            self.assertEqual((st, info.get("turn")), (200, 1), info)
        os.unlink(filler)  # space returns
        st, r = node.request("POST", "/completion", body)  # the client retries the failed turn
        self.assertEqual(st, 200, r)
        self.assertNotIn("replayed", r)
        ok[r["session_id"]] = 1
        # and after a restart the store opens and holds every committed turn
        node.cleanup()
        self.node = node = Node(BIN, MODEL, data_dir=self.dir, extra=QUIET).start()
        for sid in ok:
            st, info = node.request("GET", "/v1/sessions/%s?user_id=full&include=turns" % sid)
            self.assertEqual((st, info.get("turn")), (200, 1), info)


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    del sys.argv[1:3]
    unittest.main(verbosity=2)
