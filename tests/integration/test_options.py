"""test_options.py - the commands' option tables (src/util/opts.h) from the
outside: a bad value, an unknown option or a bad setting in a --config file
stops the command with status 2 and a message naming the option and the
form it takes; durations and sizes take units and plain numbers keep their
old meaning; --help lists every option each command had.

usage: test_options.py DISCEDGE_BINARY MODEL.gguf"""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcnode import Node  # noqa: E402

BIN = MODEL = None

# Every option the commands had before the tables (getopt's), by command:
# none may go missing from --help.
ENGINE = ["ctx-size", "threads", "parallel", "queue", "kv-cache-sessions", "kv-spill-mib", "kv-spill-dir",
          "backend-dir", "log-level", "kv-type"]
SERVE = ["config", "model", "llm", "host", "port", "node-id", "data-dir", "store", "store-replicas", "sync-timeout",
         "store-core-domain", "session-ttl", "n-predict", "stale-retries", "stale-retry-ms", "max-body", "api-keys",
         "store-key", "store-ca", "log-content", "max-n-predict", "max-streams-per-key", "max-sessions-per-user",
         "max-session-tokens", "max-connections", "max-connections-per-address", "request-timeout",
         "warm-sessions", "warm-window", "warm-peers", "advertise-url", "peer-key-file", "peer-link-mbps"] + ENGINE
LLM_SERVE = ["model", "host", "port", "n-predict"] + ENGINE
CHAT = ["node", "mode", "user-id", "n-predict", "temperature"]
SCENARIO = ["node", "mode", "csv", "n-predict", "temperature", "seed", "user-id", "quiet", "no-cache", "ignore-eos",
            "turns", "after-turn", "think-ms", "hint"]


def run(*args):
    p = subprocess.run([BIN] + list(args), capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


class BadValues(unittest.TestCase):
    def refused(self, says, *args):
        rc, out, err = run(*args)
        self.assertEqual(rc, 2, (args, out, err))
        self.assertIn(says, err, args)
        self.assertNotIn("listening", out)
        return err

    def test_serve(self):
        m = ["serve", "--model", MODEL]
        self.refused('serve: --port: "abc" is not an integer in 0..65535', *m, "--port", "abc")
        self.refused('--port: "70000"', *m, "--port=70000")
        self.refused('serve: --threads: "-1" is not an integer in 0..1024', *m, "--threads", "-1")
        self.refused('--session-ttl: "1y" is not a duration', *m, "--session-ttl", "1y")
        self.refused("(a number of seconds, or with a unit: 500ms, 30s, 10m, 1h, 1d)", *m, "--session-ttl", "1y")
        self.refused('--sync-timeout: "soon"', *m, "--sync-timeout", "soon")
        self.refused('--max-body: "1Q" is not a size', *m, "--max-body", "1Q")
        self.refused('--kv-type: "f32" is not one of f16|q8_0', *m, "--kv-type", "f32")
        self.refused('--log-level: "loud"', *m, "--log-level", "loud")
        self.refused('--peer-link-mbps: "-3"', *m, "--peer-link-mbps", "-3")
        self.refused("serve: unknown option --no-such-option", *m, "--no-such-option", "1")
        self.refused("serve: --port needs a value", *m, "--port")
        self.refused("serve: --max-n-predict is below --n-predict", *m, "--n-predict", "64", "--max-n-predict", "8")
        self.refused("--model PATH or --llm URL is required", "serve", "--port", "1")
        # a URL is never echoed: it may carry a password
        err = self.refused("--llm: expected a URL http://... or https://...", "serve", "--llm", "ftp://u:secret@h")
        self.assertNotIn("secret", err)
        err = self.refused("--store: expected a URL nats://... or tls://...", *m, "--store", "redis://u:secret@h")
        self.assertNotIn("secret", err)

    def test_other_commands(self):
        self.refused('llm-serve: --port: "abc" is not an integer in 0..65535', "llm-serve", "--model", MODEL,
                     "--port", "abc")
        self.refused('llm-serve: --parallel: "0" is not an integer in 1..64', "llm-serve", "--model", MODEL,
                     "--parallel", "0")
        self.refused('chat: --n-predict: "many"', "chat", "--node", "http://127.0.0.1:1", "--n-predict", "many")
        self.refused('chat: --temperature: "hot"', "chat", "--node", "http://127.0.0.1:1", "--temperature", "hot")
        self.refused('scenario: --think-ms: "1x"', "scenario", "x.yaml", "--node", "http://127.0.0.1:1",
                     "--think-ms", "1x")
        self.refused('scenario: --mode: "fast" is not one of tokenized|raw|client-side', "scenario", "x.yaml",
                     "--node", "http://127.0.0.1:1", "--mode", "fast")

    def test_config_file(self):
        d = tempfile.mkdtemp(prefix="dc-opts-")
        conf = os.path.join(d, "node.conf")
        try:
            for text, says in (("port = abc\n", ":1: port: \"abc\" is not an integer in 0..65535"),
                               ("# a node\nsession-ttl = forever\n", ":2: session-ttl: \"forever\" is not a duration"),
                               ("threads -1\n", "threads: \"-1\" is not an integer"),
                               ("no-such-setting = 1\n", "unknown setting \"no-such-setting\""),
                               ("log-content = maybe\n", "log-content: is a flag")):
                with open(conf, "w") as f:
                    f.write(text)
                self.refused(says, "serve", "--model", MODEL, "--config", conf)
            with open(conf, "w") as f:  # llm-serve reads one too
                f.write("n-predict = 5\nparallel = 0\n")
            self.refused("llm-serve: %s:2: parallel: \"0\" is not an integer in 1..64" % conf, "llm-serve",
                         "--config", conf, "--model", MODEL)
        finally:
            os.unlink(conf)
            os.rmdir(d)


class Units(unittest.TestCase):
    def test_durations_and_sizes_parse_before_help(self):
        # options are read before --help is answered: accepted values exit 0
        for args in (["--session-ttl", "1d"], ["--session-ttl", "86400"], ["--sync-timeout", "2s"],
                     ["--request-timeout", "1m"], ["--warm-window", "10m"], ["--max-body", "64K"],
                     ["--kv-spill-mib", "2G"], ["--stale-retry-ms", "10"]):
            rc, out, err = run("serve", *args, "--help")
            self.assertEqual(rc, 0, (args, err))
        # plain numbers keep their unit: --sync-timeout is in ms, so 1h is
        # past its bound of 3600000 ms only when written in ms
        self.assertEqual(run("serve", "--sync-timeout", "3600000", "--help")[0], 0)
        self.assertEqual(run("serve", "--sync-timeout", "3600001", "--help")[0], 2)
        self.assertEqual(run("serve", "--request-timeout", "1500ms", "--help")[0], 2)  # whole seconds only

    def test_a_node_takes_them(self):
        # --max-body 64K: a body over 65536 bytes is refused, one under it is not
        node = Node(BIN, MODEL, node_id="units", extra=["--threads", "1", "--session-ttl", "1d", "--sync-timeout",
                                                         "2s", "--max-body", "64K", "--n-predict", "4"]).start()
        try:
            st, r = node.request("POST", "/completion", {"prompt": "x" * 70000})
            self.assertEqual(st, 413, r)
            st, r = node.request("POST", "/completion", {"prompt": "Hi", "user_id": "u", "turn": 1})
            self.assertEqual(st, 200, r)
        finally:
            node.cleanup()


class Help(unittest.TestCase):
    def test_help_lists_every_option(self):
        for cmd, names in (("serve", SERVE), ("llm-serve", LLM_SERVE), ("chat", CHAT), ("scenario", SCENARIO)):
            rc, out, err = run(cmd, "--help")
            self.assertEqual(rc, 0, (cmd, err))
            for name in names:
                self.assertRegex(out, r"(?m)^  --%s\b" % name, (cmd, name))
            self.assertTrue(all(len(line) <= 80 for line in out.splitlines()), cmd)
        rc, out, _ = run("serve", "--help")
        self.assertIn("--port N              TCP port (0 picks a free one and prints it; default", out)
        self.assertIn("--session-ttl SECS    drop sessions idle this long (default 86400s)", out)


if __name__ == "__main__":
    BIN, MODEL = sys.argv[1], sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
