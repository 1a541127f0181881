"""dcnode.py - start a real `discedge serve` on loopback for a test, talk to it
over real HTTP, stop it by PID. Shared by the integration tests."""
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time


class Node:
    """One edge node on a free port (--port 0; the node prints the port)."""

    def __init__(self, binary, model, data_dir=None, node_id="edge-1", extra=()):
        self.binary, self.model, self.node_id, self.extra = binary, model, node_id, list(extra)
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="dc-node-")
        self.proc = None
        self.port = None

    def start(self):
        self.log = open(os.path.join(self.data_dir, "node.log"), "ab")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--model", self.model, "--host", "127.0.0.1", "--port", "0",
             "--node-id", self.node_id, "--data-dir", os.path.join(self.data_dir, "store")] + self.extra,
            stdout=subprocess.PIPE, stderr=self.log)
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
        raise RuntimeError("node did not start: %r (log in %s)" % (line, self.data_dir))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.proc.stdout.close()
            self.log.close()
        rc = self.proc.returncode if self.proc else 0
        self.proc = None
        return rc

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
