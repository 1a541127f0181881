"""dcnode.py - start a real `discedge serve` on loopback for a test, talk to it
over real HTTP, stop it by PID. Shared by the integration tests."""
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


class Node:
    """One edge node on a free port (--port 0; the node prints the port).
    With llm_url it uses that LLM service (--llm) instead of loading model."""

    def __init__(self, binary, model, data_dir=None, node_id="edge-1", extra=(), llm_url=None, env=None,
                 wrapper=()):
        """wrapper: a command the node runs under (valgrind ...)."""
        self.binary, self.model, self.node_id, self.extra = binary, model, node_id, list(extra)
        self.wrapper = list(wrapper)
        self.llm_url = llm_url
        self.env = dict(os.environ, **env) if env else None
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="dc-node-")
        self.proc = None
        self.port = None

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        self.log = open(os.path.join(self.data_dir, "node.log"), "ab")
        self.proc = subprocess.Popen(self.wrapper + self.command(), stdout=subprocess.PIPE, stderr=self.log,
                                     env=self.env)
        deadline = time.monotonic() + 120
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if b"listening on http://" in line:
                self.port = int(line.split(b"http://127.0.0.1:")[1].split(b" ")[0])
                return self
        self.stop()
        with open(os.path.join(self.data_dir, "node.log"), "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace")
        raise RuntimeError("node %s did not start: %r\n%s" % (self.node_id, line, tail))

    def command(self):
        engine = ["--llm", self.llm_url] if self.llm_url else ["--model", self.model]
        return ([self.binary, "serve"] + engine + ["--host", "127.0.0.1", "--port", "0", "--node-id", self.node_id,
                "--data-dir", os.path.join(self.data_dir, "store")] + self.extra)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=120 if self.wrapper else 30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.proc.stdout.close()
            self.log.close()
        rc = self.proc.returncode if self.proc else 0
        self.proc = None
        return rc

    def kill9(self):
        """kill -9: no shutdown, no flush; what is on disk is what a crash leaves."""
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        self.proc = None

    def log_text(self):
        with open(os.path.join(self.data_dir, "node.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def cleanup(self):
        """Stops the node and fails if it did not exit cleanly: under the
        sanitizers a leak or a UB report makes the exit status non-zero."""
        rc = self.stop()
        if rc != 0:
            with open(os.path.join(self.data_dir, "node.log"), "rb") as f:
                tail = f.read()[-4000:].decode("utf-8", "replace")
            raise AssertionError("node %s exited with %s:\n%s" % (self.node_id, rc, tail))
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def request(self, method, path, body=None, headers=None):
        """Returns (status, parsed JSON body or raw text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        self.last_headers = dict(resp.getheaders())
        conn.close()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode("utf-8", "replace")

    def complete(self, **fields):
        fields.setdefault("temperature", 0)
        fields.setdefault("n_predict", 48)
        fields.setdefault("stream", False)
        return self.request("POST", "/completion", fields)


class NodePair:
    """Two node processes, edge-1 and edge-2, over one embedded store folder
    (LMDB is safe across processes): a real hand-over between nodes on one
    host, without NATS. stop() stops both (raising as Node.cleanup does when
    one exited badly) and removes the folder."""

    def __init__(self, binary, model, prefix="dc-pair-", extra=()):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.a = Node(binary, model, data_dir=self.dir, node_id="edge-1", extra=extra).start()
        try:
            self.b = Node(binary, model, data_dir=self.dir, node_id="edge-2", extra=extra).start()
        except BaseException:
            self.a.stop()
            raise

    def stop(self):
        try:
            self.a.cleanup()
        finally:
            try:
                self.b.cleanup()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)


class LlmServer(Node):
    """`discedge llm-serve`: the engine alone, for nodes started with --llm."""

    def __init__(self, binary, model, extra=()):
        super().__init__(binary, model, node_id="llm", extra=extra)
        self.fixed_port = free_port()  # kept across restarts: nodes hold its URL

    def command(self):
        return [self.binary, "llm-serve", "--model", self.model, "--host", "127.0.0.1",
                "--port", str(self.fixed_port)] + self.extra

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.fixed_port


def remote_pair(binary, model, llm_extra=(), node_id="cm"):
    """A `discedge llm-serve` started with llm_extra and a node on it
    (`serve --llm`): (llm, node). Stop with stop_pair."""
    llm = LlmServer(binary, model, extra=list(llm_extra)).start()
    try:
        return llm, Node(binary, model, node_id=node_id, llm_url=llm.url).start()
    except Exception:
        llm.cleanup()
        raise


def stop_pair(llm, node):
    try:
        node.cleanup()
    finally:
        llm.cleanup()


def detokenize(binary, model, *id_lists):
    """The text of each list of token ids, from a short-lived `discedge
    llm-serve` of the same model (its /detokenize). How a test reads what a
    stored segment says, e.g. that the user's words are in the context the
    model was fed, without asserting anything about what the model wrote."""
    llm = LlmServer(binary, model, extra=["--threads", "1", "--parallel", "1", "--kv-cache-sessions", "1"]).start()
    try:
        out = []
        for ids in id_lists:
            st, d = llm.request("POST", "/detokenize", {"tokens": ids})
            if st != 200:
                raise AssertionError("detokenize: %s %r" % (st, d))
            out.append(d["content"])
        return out
    finally:
        llm.cleanup()


def segment_tokens(turns):
    """Every token of stored turns (GET ...?include=turns gives "turns"): the
    context a next turn is built on, before truncation."""
    return sum(len(t[k]) for t in turns for k in ("system", "user", "reply", "end"))


_given_ports = set()


def raw_post(port, body, path="/completion"):
    """Sends a POST on a raw socket and returns the socket unread: for
    clients that leave, stall, or read a stream themselves."""
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return s


def turns_of(node, sid, user):
    """The session as its owner sees it, with its turns' token segments
    (GET /v1/sessions/{sid}?include=turns); the request must succeed."""
    st, info = node.request("GET", "/v1/sessions/%s?user_id=%s&include=turns" % (sid, user))
    assert st == 200, (st, info)
    return info


def wait_replicated(a, b, limit_s=60):
    """Until a commit on node a shows on node b: a new mirror takes a moment
    to start following the core stream, as a deployment waits before taking
    traffic. The limit only bounds a hang."""
    st, r = a.complete(prompt="warm-up", user_id="warmup", n_predict=1)
    assert st == 200, r
    deadline = time.monotonic() + limit_s
    while b.request("GET", "/v1/sessions/%s?user_id=warmup" % r["session_id"])[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("%s's mirror did not catch up in %d s" % (b.node_id, limit_s))
        time.sleep(0.1)


def stop_all(nodes=(), servers=(), workdir=None):
    """A test's tear-down: its nodes (None for one that never started), then
    the nats-servers they used, then its folder, whatever fails on the way."""
    try:
        for n in nodes:
            if n:
                n.cleanup()
    finally:
        for s in servers:
            s.kill()
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def free_port():
    """A port nobody listens on right now (for servers that need theirs in
    advance, such as NATS cluster routes), never one this process handed out
    before: the kernel may offer a just-closed port again."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


class NatsServer:
    """A real nats-server with JetStream on loopback; optionally one member of
    a cluster (routes to the others)."""

    def __init__(self, binary, workdir, name="n1", cluster=None, route_port=None, routes=(), domain=None,
                 leaf_listen=False, leaf_remotes=(), extra_conf=()):
        """domain: this server's JetStream domain; leaf_listen: accept leaf
        nodes (a core server); leaf_remotes: leaf-listen ports of the core
        servers this one joins as a leaf node (an edge host's own server)."""
        self.binary, self.name = binary, name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.leaf_port = free_port() if leaf_listen else None
        self.conf = os.path.join(self.dir, "nats.conf")
        js = "store_dir: %s" % json.dumps(os.path.join(self.dir, "js"))
        if domain:
            js += ", domain: %s" % domain
        lines = ["server_name: %s" % name, "listen: 127.0.0.1:%d" % self.port, "jetstream { %s }" % js]
        if cluster:
            lines.append("cluster { name: %s, listen: 127.0.0.1:%d, routes: [%s] }" % (
                cluster, route_port, ", ".join("nats://127.0.0.1:%d" % p for p in routes)))
        if leaf_listen:
            lines.append("leafnodes { listen: 127.0.0.1:%d }" % self.leaf_port)
        if leaf_remotes:
            lines.append("leafnodes { remotes: [ { urls: [%s] } ] }" % ", ".join(
                '"nats://127.0.0.1:%d"' % p for p in leaf_remotes))
        lines += list(extra_conf)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def start(self):
        self.log = open(os.path.join(self.dir, "nats.log"), "ab")
        self.proc = subprocess.Popen([self.binary, "-c", self.conf], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("nats-server %s did not start (log in %s)" % (self.name, self.dir))

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        if self.proc:
            self.log.close()
        self.proc = None


class RawNats:
    """Just enough of the NATS client protocol to ask a server's JetStream
    API what it holds: requests (JSON) over one socket."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.s.makefile("rb")
        self.f.readline()  # INFO
        self.s.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nPING\r\n')
        while not self.f.readline().startswith(b"PONG"):
            pass
        # inboxes of their own: servers linked as leaf nodes share subjects
        self.prefix = "_INBOX.%s" % os.urandom(8).hex()
        self.s.sendall(b"SUB %s.* 1\r\n" % self.prefix.encode())
        self.n = itertools.count(1)

    def request(self, subj, req):
        """Returns (headers text, payload bytes) of the reply."""
        data = json.dumps(req).encode()
        inbox = "%s.%d" % (self.prefix, next(self.n))
        self.s.sendall(b"PUB %s %s %d\r\n%s\r\n" % (subj.encode(), inbox.encode(), len(data), data))
        while True:
            line = self.f.readline()
            if line.startswith(b"PING"):
                self.s.sendall(b"PONG\r\n")
                continue
            if not (line.startswith(b"MSG") or line.startswith(b"HMSG")):
                continue
            parts = line.split()
            hlen = int(parts[-2]) if line.startswith(b"HMSG") else 0
            body = self.f.read(int(parts[-1]) + 2)[:-2]
            if parts[1].decode() == inbox:
                return body[:hlen].decode("latin-1"), body[hlen:]

    def api(self, subj, req):
        return json.loads(self.request(subj, req)[1])

    def count(self, stream, subject):
        """Messages the server's copy of stream holds on subject."""
        info = self.api("$JS.API.STREAM.INFO.%s" % stream, {"subjects_filter": subject})
        return (info["state"].get("subjects") or {}).get(subject, 0)

    def close(self):
        self.s.close()


def nats_cluster(binary, workdir, size=3, domain=None):
    """Starts `size` clustered JetStream servers and waits for their
    JetStream meta leader. With a domain they also accept leaf nodes."""
    routes = [free_port() for _ in range(size)]
    servers = [NatsServer(binary, workdir, "core%d" % (i + 1), "core", routes[i], routes, domain=domain,
                          leaf_listen=bool(domain)) for i in range(size)]
    try:
        for s in servers:
            s.start()
    except BaseException:
        for s in servers:
            s.kill()
        raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for s in servers:
            with open(os.path.join(s.dir, "nats.log"), "rb") as f:
                log = f.read()
            if b"JetStream cluster new metadata leader" in log or b"Self is new JetStream cluster metadata leader" in log:
                return servers
        time.sleep(0.1)
    for s in servers:
        s.kill()
    raise RuntimeError("no JetStream meta leader in %s" % workdir)


def model_variant(model, workdir, old=b"Smollm2 135M 8k Lc100K Mix1 Ep2", new=b"Smollm2 135M 8k Lc100K Mix1 EpB",
                  name="model-b.gguf"):
    """A copy of the model with one string of its GGUF header replaced by
    another of the same length (offsets stay valid). The default changes
    general.name: another model identity (keygroup), same weights and
    tokenizer."""
    assert len(old) == len(new)
    with open(model, "rb") as f:
        data = bytearray(f.read())
    i = data.find(old, 0, 4 << 20)
    if i < 0:
        raise RuntimeError("%r not found in %s" % (old, model))
    data[i:i + len(old)] = new
    out = os.path.join(workdir, name)
    with open(out, "wb") as f:
        f.write(data)
    return out
