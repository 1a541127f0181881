"""test_privacy.py - stored context sealed with a deployment key (seal.h),
checked where a store operator would look: nats-server's files on disk and
the stream itself; the deploy examples' NATS user over TLS; and prompts
kept out of the log unless --log-content.

usage: test_privacy.py DISCEDGE_BINARY MODEL.gguf NATS_SERVER"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NatsServer, Node, stop_all  # noqa: E402

BIN = MODEL = NATS = None
ONE_THREAD = ("--threads", "1")


def files_contain(folder, needle):
    for root, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                if needle in f.read():
                    return True
    return False


def nats_publish(port, subject, payload):
    """A plain core-NATS publish, as anyone with write access to the store
    could send; the stream captures it as the subject's latest message."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        s.sendall(b'CONNECT {"verbose":false}\r\nPUB %s %d\r\n%s\r\nPING\r\n' % (subject.encode(), len(payload), payload))
        assert f.readline() == b"PONG\r\n"


class SealedStore(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-privacy-")
        cls.nodes = []
        cls.nats = NatsServer(NATS, cls.dir).start()
        try:
            cls.key = os.path.join(cls.dir, "store.key")
            subprocess.run([BIN, "keygen", cls.key], check=True)
            sealed = ("--store", cls.nats.url, "--store-key", cls.key) + ONE_THREAD
            cls.a = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "a"), "edge-1", sealed))
            cls.b = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "b"), "edge-2", sealed))
            # a node of the same deployment without the key
            cls.c = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "c"), "edge-3", ("--store", cls.nats.url) + ONE_THREAD))
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls, node):
        cls.nodes.append(node)
        return node.start()

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.nodes, (cls.nats,), cls.dir)

    def keygroup(self):
        """The model's keygroup, from the one stream the nodes created."""
        names = [d for _, dirs, _ in os.walk(os.path.join(self.nats.dir, "js")) for d in dirs
                 if d.startswith("DISCEDGE_")]
        self.assertEqual(len(names), 1, names)
        return names[0][len("DISCEDGE_"):]

    def test_sealed_turns_replicate_and_the_store_holds_ciphertext(self):
        user = "privacy-user-sealed"
        st, r1 = self.a.complete(prompt="Name three colours.", user_id=user, n_predict=12)
        self.assertEqual(st, 200, r1)
        sid = r1["session_id"]
        st, r2 = self.b.complete(prompt="And one more.", session_id=sid, user_id=user, turn=2, n_predict=12)
        self.assertEqual(st, 200, r2)  # edge-2 opened edge-1's sealed turn
        self.assertEqual(r2["turn"], 2)
        st, info = self.a.request("GET", "/v1/sessions/%s?user_id=%s&include=turns" % (sid, user))
        self.assertEqual(st, 200)
        self.assertEqual([t["turn"] for t in info["turns"]], [1, 2])
        self.assertEqual(len(info["turns"][1]["reply"]), r2["tokens_predicted"])  # edge-2's reply, as token ids

        js = os.path.join(self.nats.dir, "js")
        self.assertFalse(files_contain(js, user.encode()))  # the user id is in every record's meta
        self.assertFalse(files_contain(js, sid.encode() + user.encode()))

        # the keyless node refuses what it cannot open: a clear 500, nothing fed to its model
        st, err = self.c.complete(prompt="x", session_id=sid, user_id=user, turn=3, n_predict=4)
        self.assertEqual(st, 500, err)
        self.assertEqual(err["error"]["type"], "store_error")
        self.assertIn("no --store-key", err["error"]["message"])

        # positive control: what the keyless node writes is plain, and the sealed nodes refuse it
        plain_user = "privacy-user-plain"
        st, r = self.c.complete(prompt="Hello.", user_id=plain_user, n_predict=4)
        self.assertEqual(st, 200, r)
        self.assertTrue(files_contain(js, plain_user.encode()))
        st, err = self.a.complete(prompt="x", session_id=r["session_id"], user_id=plain_user, turn=2, n_predict=4)
        self.assertEqual(st, 500, err)
        self.assertIn("not encrypted", err["error"]["message"])

        # the sealed session is intact after all that
        st, r3 = self.a.complete(prompt="Thanks.", session_id=sid, user_id=user, turn=3, n_predict=4)
        self.assertEqual(st, 200, r3)

    def test_a_forged_record_is_refused(self):
        user = "privacy-user-forged"
        st, r1 = self.a.complete(prompt="Hi.", user_id=user, n_predict=4)
        self.assertEqual(st, 200, r1)
        sid = r1["session_id"]
        # a well-formed sealed header, but bytes its key did not seal
        subject = "dce.%s.t.%s" % (self.keygroup(), sid)
        nats_publish(self.nats.port, subject, b"DX\x01" + os.urandom(80))
        st, err = self.b.complete(prompt="Go on.", session_id=sid, user_id=user, turn=2, n_predict=4)
        self.assertEqual(st, 500, err)
        self.assertIn("fails authentication", err["error"]["message"])


def make_certs(d):
    """A private CA and a certificate for 127.0.0.1 signed by it (openssl)."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=discedge test CA",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=core-1", "-keyout", "core.key", "-out", "core.csr")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName = IP:127.0.0.1\n")
    run("x509", "-req", "-in", "core.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "core.crt")
    return {k: os.path.join(d, f) for k, f in (("ca", "ca.crt"), ("core", "core.crt"), ("core_key", "core.key"))}


class TlsAndUsers(unittest.TestCase):
    """deploy/nats's client settings on a real nats-server: TLS with a
    private CA, and edge-1's user with exactly the permissions the example
    gives it."""

    def test_deploy_example_user_over_tls(self):
        d = tempfile.mkdtemp(prefix="dc-tls-")
        certs = make_certs(d)
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "nats", "core-1.conf")) as f:
            user_line = [l for l in f if l.strip().startswith("{ user: edge-1,")][0]
        conf = ['tls { cert_file: "%s", key_file: "%s" }' % (certs["core"], certs["core_key"]),
                "authorization { users: [ %s ] }" % user_line.replace("$EDGE1_PASSWORD", "pw-edge-1").strip()]
        nats = NatsServer(NATS, d, extra_conf=conf).start()
        nodes = []
        try:
            url = "tls://edge-1:pw-edge-1@127.0.0.1:%d" % nats.port
            node = Node(BIN, MODEL, os.path.join(d, "a"), "edge-1", ("--store", url, "--store-ca", certs["ca"]) + ONE_THREAD)
            nodes.append(node.start())
            st, r = node.complete(prompt="Over TLS.", user_id="tls", n_predict=4)
            self.assertEqual(st, 200, r)
            st, r = node.complete(prompt="Again.", user_id="tls", session_id=r["session_id"], turn=2, n_predict=4)
            self.assertEqual(st, 200, r)
            # a wrong password, and a client that does not trust the CA, are refused at start
            for store, why in ((("--store", url.replace("pw-edge-1", "wrong"), "--store-ca", certs["ca"]), "uthoriz"),
                               (("--store", url), "")):
                bad = Node(BIN, MODEL, os.path.join(d, "bad"), "bad", store + ONE_THREAD)
                with self.assertRaises(RuntimeError) as cm:
                    bad.start()
                self.assertIn("cannot connect to tls://edge-1:***@127.0.0.1", str(cm.exception))
                self.assertIn(why, str(cm.exception))
                self.assertNotIn("pw-edge-1", str(cm.exception))
                self.assertNotIn(":wrong@", str(cm.exception))
        finally:
            for n in nodes:
                n.cleanup()
            nats.kill()
            shutil.rmtree(d, ignore_errors=True)


class LogContent(unittest.TestCase):
    def test_prompts_and_replies_are_logged_only_when_asked(self):
        secret = "log-content-secret-%d" % os.getpid()
        for flag, expect in (((), False), (("--log-content",), True)):
            node = Node(BIN, MODEL, extra=flag).start()
            try:
                st, r = node.complete(prompt=secret, n_predict=6)
                self.assertEqual(st, 200)
            finally:
                data_dir = node.data_dir
                node.own_dir = False
                node.cleanup()
            with open(os.path.join(data_dir, "node.log")) as f:
                log = f.read()
            shutil.rmtree(data_dir, ignore_errors=True)
            self.assertEqual(secret in log, expect, log[-2000:])
            if expect:
                m = re.search(r"content session=%s turn=1 prompt=\"%s\" reply=(\".*\")$" % (r["session_id"], secret),
                              log, re.M)
                self.assertTrue(m, log[-2000:])
                self.assertEqual(json.loads(m.group(1)), r["content"])


if __name__ == "__main__":
    BIN, MODEL, NATS = sys.argv[1:4]
    del sys.argv[1:4]
    unittest.main(verbosity=2)
