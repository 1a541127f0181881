"""test_hardening_api.py - issue 14, the HTTP and API layer: what a client
can do to the node's logs, connections, limits and error bodies, tried on a
real node over real HTTP and raw sockets.

Loopback is 127.0.0.0/8: a client bound to 127.0.0.N is another address to
the node, so one machine plays several clients (and strangers).

usage: test_hardening_api.py DISCEDGE_BINARY MODEL.gguf"""
import http.client
import json
import os
import select
import socket
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import LlmServer, Node  # noqa: E402

BIN = MODEL = None
KEY = "api-key-0123456789abcdef"
# a safety net only: every wait below ends long before, or the test fails
SOCKET_WAIT_S = 60
PER_ADDRESS = 8
REQUEST_TIMEOUT_S = 1


def request(port, method, path, body=None, headers=None, src="127.0.0.1"):
    """(status, parsed JSON or text) of one request from source address src."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SOCKET_WAIT_S, source_address=(src, 0))
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    conn.request(method, path, body=json.dumps(body) if isinstance(body, dict) else body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode("utf-8", "replace")


def raw(port, head, body=b"", src="127.0.0.1"):
    """A socket that has sent head and body, from source address src."""
    s = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_WAIT_S, source_address=(src, 0))
    s.sendall(head + body)
    return s


def read_all(s):
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def post_head(path, length=None, extra=b""):
    """A POST's head; Connection: close, so that read_all ends with the answer."""
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n" % path.encode()
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    return head + extra + b"\r\n"


def final_response(data):
    """The status and JSON body of the final (non-1xx) response in data."""
    while data.startswith(b"HTTP/1.1 1"):
        data = data.split(b"\r\n\r\n", 1)[1]
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


class KeylessNode(unittest.TestCase):
    """One node without API keys, small limits, a short request timeout."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node(BIN, MODEL, node_id="hard-api", extra=[
            "--threads", "1", "--parallel", "2", "--ctx-size", "1024", "--n-predict", "4",
            "--max-body", "65536", "--max-streams-per-key", "1", "--max-sessions-per-user", "1",
            "--max-connections-per-address", str(PER_ADDRESS),
            "--request-timeout", str(REQUEST_TIMEOUT_S)]).start()
        cls.port = cls.node.port

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    def chat(self, src, **body):
        body.setdefault("messages", [{"role": "user", "content": "Hi."}])
        body.setdefault("max_tokens", 2)
        return request(self.port, "POST", "/v1/chat/completions", body, src=src)

    # item 4
    def test_client_text_cannot_forge_log_lines(self):
        # the 413 line quotes the (percent-decoded) URL
        s = raw(self.port, post_head("/completion%0Aforged-by-client%E2%80%A8x%FF", 70000), b"x" * 70000)
        self.assertEqual(final_response(read_all(s))[0], 413)
        self.assertEqual(request(self.port, "GET", "/health")[0], 200)  # the line above is written by now
        log = self.node.log_text()
        self.assertIn("\\x0aforged-by-client\\u{2028}x\\xff", log)
        for line in log.splitlines():
            self.assertFalse(line.startswith("forged"), line)
        self.assertNotIn("\u2028", log)
        with open(os.path.join(self.node.data_dir, "node.log"), "rb") as f:
            f.read().decode("utf-8")  # every line valid UTF-8

    # item 19
    def test_error_bodies_survive_invalid_utf8(self):
        # /%FF decodes to a byte of no UTF-8 character; the long path of
        # two-byte characters is cut by the message's size mid-character
        for path in ("/%FF", "/" + "%C3%A9" * 200, "/v1/sessions/%FF%FE"):
            st, body = request(self.port, "GET", path)
            self.assertIsInstance(body, dict, body)
            self.assertEqual(body["error"]["code"], st, body)
            self.assertIn(st, (400, 404), body)
            self.assertEqual(body["error"]["type"], {400: "invalid_request", 404: "not_found"}[st])

    # item 22 (second half)
    def test_tools_given_as_a_non_array_is_refused(self):
        for tools in ({"type": "function"}, "none", 3):
            st, body = self.chat("127.0.0.22", tools=tools)
            self.assertEqual(st, 400, body)
            self.assertEqual(body["error"]["type"], "invalid_request")
            self.assertIn("tools must be an array", body["error"]["message"])
        self.assertEqual(self.chat("127.0.0.22", tools=[])[0], 200)

    # item 21
    def test_half_closed_client_gets_its_reply(self):
        # sends its request, then shuts down its sending side, then reads
        for stream in (False, True):
            body = json.dumps({"prompt": "Say hi.", "user_id": "half-%d" % stream, "n_predict": 4,
                               "stream": stream}).encode()
            s = raw(self.port, post_head("/completion", len(body)), body, src="127.0.0.21")
            s.shutdown(socket.SHUT_WR)
            status, text = final_response(read_all(s))
            self.assertEqual(status, 200, text)
            if stream:
                last = [line for line in text.split(b"\n") if line.startswith(b"data: ")][-1]
                reply = json.loads(last[6:])
            else:
                reply = json.loads(text)
            self.assertEqual(reply["turn"], 1)
            # and the turn it was answered is committed
            st, meta = request(self.port, "GET", "/v1/sessions/%s?user_id=half-%d" % (reply["session_id"], stream))
            self.assertEqual((st, meta["turn"]), (200, 1))

    # item 20
    def test_openai_user_is_any_string_and_owns_injectively(self):
        src = "127.0.0.20"
        # stateless: nothing is owned, nothing to refuse
        st, r = self.chat(src, user="alice@example.com")
        self.assertEqual(st, 200, r)
        # a session: owned by an id made from the user
        st, r = self.chat(src, user="alice@example.com", store=True)
        self.assertEqual(st, 200, r)
        sid, owner = r["session_id"], r["user"]
        self.assertNotEqual(owner, "alice@example.com")
        st, r2 = self.chat(src, user="alice@example.com", session_id=sid, turn=2)
        self.assertEqual((st, r2.get("turn")), (200, 2), r2)
        # no other user reaches that owner: not the owner id itself sent as a
        # user, not a look-alike
        for other in (owner, "alice_example.com", "alice%40example.com"):
            st, err = self.chat(src, user=other, session_id=sid, turn=3)
            self.assertEqual(st, 403, (other, err))
        # the owner id is how its sessions are read
        st, meta = request(self.port, "GET", "/v1/sessions/%s?user_id=%s" % (sid, owner))
        self.assertEqual((st, meta["turn"], meta["user_id"]), (200, 2, owner))

    # item 16
    def test_keyless_clients_do_not_share_limits(self):
        # one session per user (--max-sessions-per-user 1): a client that
        # names no one holds one, from its address
        st, r = self.chat("127.0.0.161", store=True)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["user"], "anonymous")
        st, err = self.chat("127.0.0.161", store=True)
        self.assertEqual((st, err["error"]["type"]), (429, "quota_exceeded"))
        # a stranger at another address is not refused because of it, on any endpoint
        st, r = self.chat("127.0.0.162", store=True)
        self.assertEqual(st, 200, r)
        st, r = request(self.port, "POST", "/v1/responses", {"input": "Hi.", "max_output_tokens": 2},
                        src="127.0.0.163")
        self.assertEqual(st, 200, r)
        # a claimed name is no lever either: "bob" here holds his session,
        # someone claiming "bob" elsewhere is counted apart
        self.assertEqual(self.chat("127.0.0.164", user="bob", store=True)[0], 200)
        self.assertEqual(self.chat("127.0.0.164", user="bob", store=True)[0], 429)
        self.assertEqual(self.chat("127.0.0.165", user="bob", store=True)[0], 200)
        # generations at once (--max-streams-per-key 1): a stream held open
        # by one client (cancelled when it closes) does not refuse another
        body = json.dumps({"messages": [{"role": "user", "content": "Count to a thousand."}],
                           "max_tokens": 900, "ignore_eos": True, "stream": True}).encode()
        s = raw(self.port, post_head("/v1/chat/completions", len(body)), body, src="127.0.0.166")
        got = b""
        while b"data: " not in got:
            chunk = s.recv(4096)
            self.assertTrue(chunk, got)
            got += chunk
        try:
            st, r = self.chat("127.0.0.167")
            self.assertEqual(st, 200, r)
            st, r = self.chat("127.0.0.166")  # its own address is at its limit
            self.assertEqual((st, r["error"]["type"]), (429, "quota_exceeded"))
        finally:
            s.close()

    # item 14
    def test_idle_connections_from_one_address_lock_no_one_out(self):
        idle = []
        try:
            for _ in range(300):  # more than the node's connections in all before the fix
                try:
                    idle.append(socket.create_connection(("127.0.0.1", self.port), timeout=SOCKET_WAIT_S,
                                                         source_address=("127.0.0.141", 0)))
                except OSError:
                    pass
            st, r = request(self.port, "GET", "/health", src="127.0.0.142")
            self.assertEqual(st, 200, r)
            # the address holding them is refused beyond its share
            open_ones = 0
            for s in idle:
                readable, _, _ = select.select([s], [], [], 0)
                if not readable or s.recv(1, socket.MSG_PEEK) != b"":
                    open_ones += 1
            self.assertLessEqual(open_ones, PER_ADDRESS)
        finally:
            for s in idle:
                s.close()

    def test_slow_header_client_is_dropped_and_answers_are_not(self):
        # half a request, then silence: dropped after --request-timeout
        s = raw(self.port, b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Len", src="127.0.0.143")
        self.assertEqual(read_all(s), b"")
        # a body that stops coming: the same
        s = raw(self.port, post_head("/completion", 1000), b'{"prompt": "', src="127.0.0.143")
        self.assertEqual(read_all(s), b"")
        # an answer taking longer than the request timeout is not cut by it,
        # streamed or not
        for stream in (False, True):
            body = {"prompt": "Tell a story.", "user_id": "slow-%d" % stream, "n_predict": 160, "ignore_eos": True,
                    "stream": stream}
            st, r = request(self.port, "POST", "/completion", body, src="127.0.0.144")
            self.assertEqual(st, 200, r)
            if stream:
                r = json.loads([line for line in r.split("\n") if line.startswith("data: ")][-1][6:])
            self.assertEqual(r["tokens_predicted"], 160)

    def test_unbounded_chunked_body_is_cut_with_413(self):
        s = raw(self.port, post_head("/completion", None, b"Transfer-Encoding: chunked\r\n"), src="127.0.0.145")
        chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
        sent, answer = 0, b""
        try:
            while sent < (512 << 20):  # far past what any limit drains
                readable, _, _ = select.select([s], [], [], 0)
                if readable:
                    break
                s.sendall(chunk)
                sent += 1 << 16
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(s)
        self.assertTrue(answer, "no answer after %d bytes" % sent)
        status, body = final_response(answer)
        self.assertEqual(status, 413, answer[:300])
        self.assertEqual(json.loads(body)["error"]["type"], "payload_too_large")
        self.assertEqual(request(self.port, "GET", "/health", src="127.0.0.145")[0], 200)


class LlmService(unittest.TestCase):
    # item 4, the LLM service's request lines
    def test_llm_service_log_lines_cannot_be_forged(self):
        llm = LlmServer(BIN, MODEL, extra=["--threads", "1", "--parallel", "1", "--kv-cache-sessions", "1"]).start()
        try:
            self.assertEqual(request(llm.fixed_port, "GET", "/x%0Aforged-by-client")[0], 404)
            self.assertEqual(request(llm.fixed_port, "GET", "/health")[0], 200)
            log = llm.log_text()
        finally:
            llm.cleanup()
        self.assertIn("/x\\x0aforged-by-client", log)
        for line in log.splitlines():
            self.assertFalse(line.startswith("forged"), line)


class KeyedNode(unittest.TestCase):
    """API keys: checked on the headers, before any body is read."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dc-hard-keys-")
        keys = os.path.join(cls.dir, "keys")
        with open(keys, "w") as f:
            f.write("%s ann\n" % KEY)
        cls.node = Node(BIN, MODEL, node_id="hard-keys", extra=[
            "--threads", "1", "--parallel", "1", "--ctx-size", "512", "--n-predict", "2", "--api-keys", keys]).start()
        cls.port = cls.node.port

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    # item 14
    def test_wrong_key_on_a_large_body_is_refused_before_the_body(self):
        # a gigabyte announced, not one byte of it sent: the answer comes anyway
        s = raw(self.port, post_head("/completion", 1 << 30, b"Authorization: Bearer not-a-key-0123456789\r\n"))
        status, body = final_response(read_all(s))
        self.assertEqual(status, 401, body)
        self.assertEqual(json.loads(body)["error"]["type"], "invalid_api_key")
        # one the client waits to send (Expect: 100-continue) is not asked for
        s = raw(self.port, post_head("/completion", 2 << 20, b"Expect: 100-continue\r\n"))
        data = read_all(s)
        self.assertFalse(data.startswith(b"HTTP/1.1 100"), data[:100])
        self.assertEqual(final_response(data)[0], 401)
        # over the body limit and sent whole: still 401, not 413
        st, err = request(self.port, "POST", "/completion", b"x" * (2 << 20))
        self.assertEqual((st, err["error"]["type"]), (401, "invalid_api_key"))
        # the right key gets through
        st, r = request(self.port, "POST", "/completion", {"prompt": "Hi."}, {"Authorization": "Bearer " + KEY})
        self.assertEqual((st, r["user_id"]), (200, "ann"))


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0], "-v"])
