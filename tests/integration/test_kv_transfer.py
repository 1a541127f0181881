"""test_kv_transfer.py - issue 15 item 3: KV transfer between nodes.

Nodes on one nats-server share a peer key. A session's turns run on edge-1
(A); its next turn on another node fetches A's KV of the stored context
instead of prefilling it, verified against the tokens that node read from
its own store and against its own model. A's --advertise-url points at a
relay in this test, which passes A's answer on or forges it (a token id, the
model fingerprint, a state from an earlier life of the session, a cut
state), so every refusal is shown on a real node's real state.

usage: test_kv_transfer.py DISCEDGE_BINARY MODEL.gguf NATS_SERVER"""
import http.client
import http.server
import os
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import NatsServer, Node, free_port, segment_tokens, stop_all, turns_of  # noqa: E402

BIN = MODEL = NATS = None
PEER_KEY = "peer-key-0123456789abcdef-not-a-client-key"
CLIENT_KEY = "client-key-0123456789abcdef"
USER = "kvx-user"
# A system message long enough that the stored context is worth moving
# (a transfer must gain at least 64 tokens, ctx.c kv_transfer).
SYSTEM = ("You are a careful assistant for a robotics lab. Answer briefly, in plain words, and say when you "
          "are not sure. The lab builds small wheeled robots that map rooms, follow walls and dock to charge; "
          "questions are about their sensors, motors, batteries and software.")
# the blob's header (local.c): magic, version, 4 x u64, 6 x u32, then the token count
HEADER = 4 + 4 + 8 * 4 + 4 * 6
# warm-up off (items 1-2 would prefill the sessions on B first: nothing left to move)
COMMON = ("--threads", "1", "--parallel", "1", "--kv-cache-sessions", "2", "--ctx-size", "1024", "--warm-sessions", "0",
          "--sync-timeout", "10000")


class Relay(http.server.ThreadingHTTPServer):
    """A's advertised address: passes the peer route on to A, or forges its
    answer (mode)."""
    daemon_threads = True

    def __init__(self, port):
        super().__init__(("127.0.0.1", port), RelayHandler)
        self.target, self.mode, self.hits, self.canned = None, "pass", 0, None


class RelayHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        relay = self.server
        relay.hits += 1
        conn = http.client.HTTPConnection("127.0.0.1", relay.target, timeout=60)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() == "x-discedge-peer-key"}
        conn.request("GET", self.path, headers=hdrs)
        resp = conn.getresponse()
        body = bytearray(resp.read())
        status = resp.status
        conn.close()
        if status == 200:
            body = forge(body, relay.mode, relay.canned)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(bytes(body))


def forge(blob, mode, canned):
    if mode == "token":  # one token id of the stored context, changed
        at = HEADER + 4 + 4 * 10
        blob[at:at + 4] = struct.pack("<I", struct.unpack("<I", blob[at:at + 4])[0] ^ 1)
    elif mode == "fingerprint":  # another model's tokenizer
        blob[8] ^= 0xFF
    elif mode == "older":  # a state of an earlier life of the session
        blob = bytearray(canned)
    elif mode == "short":  # a state cut short, its length field made to agree
        n = struct.unpack("<I", blob[HEADER:HEADER + 4])[0]
        at = HEADER + 4 + 4 * n
        state = blob[at + 8:]
        state = state[:len(state) - 4096]
        blob = blob[:at] + struct.pack("<Q", len(state)) + state
    return blob


def health(node):
    st, h = node.request("GET", "/health")
    assert st == 200, h
    return h["engine"]


class KvTransfer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-kvx-")
        cls.nodes, cls.nats, cls.relay = [], None, None
        try:
            cls.nats = NatsServer(NATS, cls.dir).start()
            key = os.path.join(cls.dir, "peer.key")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, (PEER_KEY + "\n").encode())
            os.close(fd)
            keys = os.path.join(cls.dir, "api.keys")
            with open(keys, "w") as f:
                f.write("%s %s\n" % (CLIENT_KEY, USER))
            store = ("--store", cls.nats.url)
            peer = ("--peer-key-file", key, "--peer-link-mbps", "1000000")
            relay_port, b_port, c_port = free_port(), free_port(), free_port()
            cls.a = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "a"), "edge-1", store + COMMON + peer + (
                "--advertise-url", "http://127.0.0.1:%d" % relay_port, "--api-keys", keys)))
            cls.relay = Relay(relay_port)
            cls.relay.target = cls.a.port
            threading.Thread(target=cls.relay.serve_forever, daemon=True).start()
            cls.b = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "b"), "edge-2", store + COMMON + peer + (
                "--port", str(b_port), "--advertise-url", "http://127.0.0.1:%d" % b_port)))
            # another KV type, same model: its states are not A's
            cls.c = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "c"), "edge-3", store + COMMON + peer + (
                "--port", str(c_port), "--advertise-url", "http://127.0.0.1:%d" % c_port, "--kv-type", "q8_0")))
            # no peer key: never fetches
            cls.d = cls.start(Node(BIN, MODEL, os.path.join(cls.dir, "d"), "edge-4", store + COMMON))
            # a new mirror takes a moment to follow the stream (wait_replicated)
            st, r = a_turn(cls.a, prompt="warm-up", n_predict=1)
            assert st == 200, r
            for n in (cls.b, cls.c, cls.d):
                wait_turn(n, r["session_id"], 1)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls, node):
        cls.nodes.append(node)
        return node.start()

    @classmethod
    def tearDownClass(cls):
        if cls.relay:
            cls.relay.shutdown()
            cls.relay.server_close()
        stop_all(cls.nodes, (cls.nats,) if cls.nats else (), cls.dir)

    def setUp(self):
        self.relay.mode = "pass"

    def session_on_a(self, sid, turns=2):
        """A session of `turns` turns on A; its stored context and A's reply."""
        st, r = a_turn(self.a, prompt="What does the wall-following sensor measure?", system=SYSTEM, session_id=sid,
                       turn=1)
        self.assertEqual(st, 200, r)
        for t in range(2, turns + 1):
            st, r = a_turn(self.a, prompt="And how often is it read, roughly?", session_id=sid, turn=t)
            self.assertEqual(st, 200, r)
        st, info = a_request(self.a, "GET", "/v1/sessions/%s?user_id=%s&include=turns" % (sid, USER))
        self.assertEqual(st, 200, info)
        return segment_tokens(info["turns"])

    def next_turn(self, node, sid, turn):
        wait_turn(node, sid, turn - 1)
        st, r = node.complete(prompt="Thanks. Which battery do they use?", session_id=sid, turn=turn, user_id=USER,
                              ignore_eos=True, n_predict=8)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["timings"]["predicted_n"], 8)
        return r

    def test_next_turn_on_another_node_loads_the_previous_nodes_kv(self):
        sid = "kvx-moves"
        stored = self.session_on_a(sid)
        self.assertGreaterEqual(stored, 64)
        before = health(self.b)
        r = self.next_turn(self.b, sid, 3)
        t = r["timings"]
        # the whole stored context but the turn-end markup and the last
        # generated token, which A's slot holds no KV of (never decoded)
        self.assertGreater(t["kv_transfer_n"], 0, t)
        self.assertGreaterEqual(t["cache_n"], t["kv_transfer_n"])
        self.assertGreaterEqual(t["cache_n"], 0.9 * stored, (t, stored))
        self.assertEqual(t["prompt_n"] + t["cache_n"], r["context_tokens"])
        self.assertGreater(t["kv_transfer_ms"], 0)
        after = health(self.b)
        self.assertEqual(after["kv_transfers"], before["kv_transfers"] + 1)
        self.assertEqual(after["kv_transfer_refused"], before["kv_transfer_refused"])
        self.assertGreaterEqual(health(self.a)["kv_exports"], 1)
        print("kv transfer: %d stored tokens, %d moved in %.1f ms; prefilled %d in %.1f ms" % (
            stored, t["kv_transfer_n"], t["kv_transfer_ms"], t["prompt_n"], t["prompt_ms"]))

    def assert_refused_for(self, node, sid, why):
        """The node's log says why it refused the state (ctx.c kv_transfer)."""
        lines = [ln for ln in node.log_text().splitlines() if "session %s: the KV state" % sid in ln]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(why, lines[0])

    def refused(self, sid, mode, why, node=None, canned=None):
        """The next turn of a fresh session of A, on node (B), with the relay
        forging A's state by mode: refused, and the turn prefills all."""
        node = node or self.b
        stored = self.session_on_a(sid)
        self.relay.mode, self.relay.canned = mode, canned
        before, hits = health(node), self.relay.hits
        r = self.next_turn(node, sid, 3)
        t = r["timings"]
        self.assertEqual(self.relay.hits, hits + 1, "the state was not fetched")
        self.assertEqual(t["kv_transfer_n"], 0, t)
        self.assertEqual(t["cache_n"], 0, t)
        self.assertEqual(t["prompt_n"], r["context_tokens"])
        self.assertGreater(r["context_tokens"], stored)
        self.assertEqual(health(node)["kv_transfer_refused"], before["kv_transfer_refused"] + 1)
        self.assert_refused_for(node, sid, why)
        print("refused (%s): prefilled all %d tokens in %.1f ms" % (mode, t["prompt_n"], t["prompt_ms"]))
        # and the session goes on as ever
        self.assertEqual(turns_of(node, sid, USER)["turn"], 3)

    def test_a_state_whose_tokens_are_not_the_stored_ones_is_refused(self):
        self.refused("kvx-forged", "token", "tokens differ from the stored ones at 10")

    def test_a_state_of_an_earlier_life_of_the_session_is_refused(self):
        sid = "kvx-older"
        self.session_on_a(sid, turns=1)
        st, old = self.peer_get(self.a, sid, PEER_KEY)
        self.assertEqual(st, 200)
        st, r = a_request(self.a, "DELETE", "/v1/sessions/%s?user_id=%s" % (sid, USER))
        self.assertEqual(st, 200, r)
        # the same id, started over with another first message
        st, r = a_turn(self.a, prompt="Tell me about the docking station instead.", system=SYSTEM, session_id=sid,
                       turn=1)
        self.assertEqual(st, 200, r)
        st, r = a_turn(self.a, prompt="And how often is it read, roughly?", session_id=sid, turn=2)
        self.assertEqual(st, 200, r)
        self.relay.mode, self.relay.canned = "older", old
        before, hits = health(self.b), self.relay.hits
        r = self.next_turn(self.b, sid, 3)
        self.assertEqual(self.relay.hits, hits + 1)
        self.assertEqual((r["timings"]["kv_transfer_n"], r["timings"]["cache_n"]), (0, 0), r["timings"])
        self.assertEqual(health(self.b)["kv_transfer_refused"], before["kv_transfer_refused"] + 1)
        self.assert_refused_for(self.b, sid, "tokens differ from the stored ones")

    def test_a_state_of_another_model_or_kv_type_is_refused(self):
        self.refused("kvx-other-model", "fingerprint", "tokenizer fingerprint differs")
        # a state llama.cpp cannot load (cut short) is refused by the engine
        self.refused("kvx-short", "short", "does not load into this context")
        # the same model with q8_0 KV (--kv-type) takes no f16 state
        self.refused("kvx-kv-type", "pass", "K type differs", node=self.c)

    @staticmethod
    def peer_get(node, sid, key=None, headers=None):
        hdrs = dict(headers or {})
        if key:
            hdrs["X-DisCEdge-Peer-Key"] = key
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
        conn.request("GET", "/v1/peer/kv/%s" % sid, headers=hdrs)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, body

    def test_the_peer_route_needs_the_peer_key_not_a_client_key(self):
        sid = "kvx-route"
        self.session_on_a(sid, turns=1)
        st, body = self.peer_get(self.a, sid)
        self.assertEqual(st, 401, body)
        self.assertIn(b"error", body)
        st, body = self.peer_get(self.a, sid, headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assertEqual(st, 401, body)
        st, body = self.peer_get(self.a, sid, key=CLIENT_KEY, headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assertEqual(st, 403, body)
        st, body = self.peer_get(self.a, sid, key=PEER_KEY)
        self.assertEqual(st, 200)
        self.assertEqual(body[:4], b"DCKV")
        n = struct.unpack("<I", body[HEADER:HEADER + 4])[0]
        print("state: %d bytes for %d tokens (%.0f a token, header and ids included)" % (len(body), n, len(body) / n))
        # and the peer key opens no client route
        st, r = a_request(self.a, "GET", "/v1/sessions/%s?user_id=%s" % (sid, USER),
                          headers={"X-DisCEdge-Peer-Key": PEER_KEY})
        self.assertEqual(st, 401, r)
        # a node without a peer key has no peer route
        st, body = self.peer_get(self.d, sid, key=PEER_KEY)
        self.assertEqual(st, 404, body)

    def test_without_a_peer_key_nothing_is_fetched(self):
        sid = "kvx-no-key"
        self.session_on_a(sid)
        hits = self.relay.hits
        r = self.next_turn(self.d, sid, 3)
        self.assertEqual(self.relay.hits, hits)
        self.assertEqual((r["timings"]["kv_transfer_n"], r["timings"]["cache_n"]), (0, 0), r["timings"])


def a_request(node, method, path, body=None, headers=None):
    hdrs = {"Authorization": "Bearer " + CLIENT_KEY}
    hdrs.update(headers or {})
    if "X-DisCEdge-Peer-Key" in hdrs:
        del hdrs["Authorization"]
    return node.request(method, path, body, hdrs)


def a_turn(node, **fields):
    fields.setdefault("temperature", 0)
    fields.setdefault("n_predict", 12)
    fields.setdefault("ignore_eos", True)
    return a_request(node, "POST", "/completion", fields)


def wait_turn(node, sid, turn, limit_s=60):
    """Until node's mirror shows sid at turn (the limit only bounds a hang)."""
    deadline = time.monotonic() + limit_s
    while True:
        st, info = node.request("GET", "/v1/sessions/%s?user_id=%s" % (sid, USER))
        if st == 200 and info["turn"] >= turn:
            return
        assert time.monotonic() < deadline, (st, info)
        time.sleep(0.05)


if __name__ == "__main__":
    BIN, MODEL, NATS = sys.argv[1:4]
    del sys.argv[1:4]
    unittest.main(verbosity=2)
