"""testbed.py - DisCEdge deployed on the testbed's hosts (net.sh): a NATS
JetStream core cluster on the core host, on every edge host a leaf
nats-server and a `discedge serve`, and a client host that reaches the edges
over the access network. Used by the experiments (paper.py) and the smoke
test of the suite.

  python3 bench/testbed/testbed.py run [--profile P] [--edges N] [--model M] [--threads T]
                                       --out DIR -- SCENARIO-ARGS...
  python3 bench/testbed/testbed.py smoke [--out DIR]

`run` brings a deployment up, runs `discedge scenario SCENARIO-ARGS` on the
client host with the edges named edge-1..edge-N and the link counters
sampled after every turn (DIR/counters.tsv, DIR/links.tsv), and tears it all
down, also on failure or a signal. `smoke` is the suite's check that the
testbed still works: net.sh selfcheck, then a 4-turn roaming conversation
with a handover on two edge hosts, its per-turn link bytes checked.

Profiles (one-way delay from relay.py, bandwidth from tc tbf):
  lan     nothing added (the paper's setting)
  wan     20 ms between every edge host and the core
  mobile  wan, and the client's link at 2 Mbit/s with 40 ms one way
The delays sit on the TCP connections that cross those links: each leaf's
connection to the core, and the client's connection to each edge node."""
import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NET = os.path.join(HERE, "net.sh")
RELAY = os.path.join(HERE, "relay.py")
BIN = os.environ.get("DC_BIN", os.path.join(ROOT, "build", "discedge"))
NATS = os.environ.get("NATS_SERVER", os.path.join(ROOT, "third_party", "go", "bin", "nats-server"))
SMOLLM = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
CORE = "10.77.0.1"

PROFILES = {
    "lan": {"wan_ms": 0, "client_ms": 0, "client_rate": "off"},
    "wan": {"wan_ms": 20, "client_ms": 0, "client_rate": "off"},
    "mobile": {"wan_ms": 20, "client_ms": 40, "client_rate": "2mbit"},
}
def edge_addr(e, net):
    return "10.%d.0.%d" % (77 if net == "backhaul" else 78, 10 + e)


class TestbedError(RuntimeError):
    pass


class Testbed:
    """A deployment on the testbed. start() brings it up (and tears down
    whatever it built if any step fails), stop() tears it down; use it as a
    context manager."""

    def __init__(self, out, profile="lan", edges=2, model=SMOLLM, threads=1, node_args=()):
        if profile not in PROFILES:
            raise TestbedError("unknown profile %s (have %s)" % (profile, ", ".join(PROFILES)))
        self.out, self.profile, self.edges = os.path.abspath(out), profile, edges
        self.model, self.threads, self.node_args = model, threads, list(node_args)
        self.p = PROFILES[profile]
        self.nodes = {}  # edge number -> Popen of its discedge serve

    # -- processes --------------------------------------------------------
    def spawn(self, host, argv, log):
        """Starts argv on HOST's namespace, output to OUT/log; the testbed's
        teardown (net.sh down) stops it with every other process there."""
        path = os.path.join(self.out, log)
        with open(path, "ab") as f:
            return subprocess.Popen(["ip", "netns", "exec", "dctb-" + host] + argv, stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_log(self, proc, log, pattern, secs=60, start=0):
        """Waits until OUT/log has pattern after byte start, while proc lives."""
        path = os.path.join(self.out, log)
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            with open(path, "rb") as f:
                f.seek(start)
                if pattern.encode() in f.read():
                    return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(path, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        raise TestbedError("no %r in %s (exit %s):\n%s" % (pattern, path, proc.poll(), tail))

    # -- lifecycle --------------------------------------------------------
    def start(self):
        os.makedirs(self.out, exist_ok=True)
        subprocess.run([NET, "up", str(self.edges)], check=True, stdout=subprocess.DEVNULL)
        try:
            self._start_core()
            for e in range(1, self.edges + 1):
                self._start_edge(e)
            subprocess.run([NET, "shape", "client", self.p["client_rate"]], check=True)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        subprocess.run([NET, "down"], check=False)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _start_core(self):
        """Three clustered JetStream servers (domain "core") on the core
        host: clients on 4222-4224, routes 6222-6224, leaf nodes 7422-7424."""
        routes = ", ".join('"nats://%s:%d"' % (CORE, 6222 + i) for i in range(3))
        procs = []
        for i in range(1, 4):
            d = os.path.join(self.out, "core%d" % i)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "nats.conf"), "w") as f:
                f.write('server_name: core%d\nlisten: %s:%d\n'
                        'jetstream { store_dir: "%s/js", domain: core }\n'
                        'leafnodes { listen: %s:%d }\n'
                        'cluster { name: core, listen: %s:%d, routes: [%s] }\n'
                        % (i, CORE, 4221 + i, d, CORE, 7421 + i, CORE, 6221 + i, routes))
            procs.append(self.spawn("core", [NATS, "-c", os.path.join(d, "nats.conf")], "core%d/nats.log" % i))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # one of them reports the elected meta leader
            for i in range(1, 4):
                with open(os.path.join(self.out, "core%d/nats.log" % i), "rb") as f:
                    if b"metadata leader" in f.read():
                        return
            time.sleep(0.1)
        raise TestbedError("the core cluster elected no JetStream leader in 60 s (see %s/core*/nats.log)" % self.out)

    def _start_edge(self, e):
        host, d = "edge%d" % e, os.path.join(self.out, "edge%d" % e)
        os.makedirs(d, exist_ok=True)
        # the leaf's way to the core: a relay adding the WAN's one-way delay
        relay = self.spawn(host, ["python3", RELAY, "serve", "127.0.0.1:17422", "%s:7422" % CORE,
                                  "--delay-ms", str(self.p["wan_ms"])], "edge%d/relay.log" % e)
        self.wait_log(relay, "edge%d/relay.log" % e, "listening", 10)
        with open(os.path.join(d, "nats.conf"), "w") as f:
            f.write('server_name: edge%d\nlisten: 127.0.0.1:4222\n'
                    'jetstream { store_dir: "%s/js", domain: edge%d }\n'
                    'leafnodes { remotes: [ { urls: ["nats://127.0.0.1:17422"] } ] }\n' % (e, d, e))
        leaf = self.spawn(host, [NATS, "-c", os.path.join(d, "nats.conf")], "edge%d/nats.log" % e)
        self.wait_log(leaf, "edge%d/nats.log" % e, "JetStream using domains", 30)
        self.start_node(e)
        # the client's way to this edge: a relay on the client host
        relay = self.spawn("client", ["python3", RELAY, "serve", "127.0.0.1:%d" % (18080 + e),
                                      "%s:8080" % edge_addr(e, "access"), "--delay-ms", str(self.p["client_ms"])],
                           "client-relay%d.log" % e)
        self.wait_log(relay, "client-relay%d.log" % e, "listening", 10)

    def start_node(self, e):
        d = os.path.join(self.out, "edge%d" % e)
        log = "edge%d/node.log" % e
        path = os.path.join(self.out, log)
        with open(path, "ab") as f:
            f.write(b"--- testbed: node start\n")
        start = os.path.getsize(path)  # look for "listening on" after here only: a restart appends
        node = self.spawn("edge%d" % e, [BIN, "serve", "--model", self.model, "--host", edge_addr(e, "access"),
                                         "--port", "8080", "--node-id", "edge-%d" % e, "--threads", str(self.threads),
                                         "--data-dir", os.path.join(d, "data"), "--store", "nats://127.0.0.1:4222",
                                         "--store-core-domain", "core", "--store-replicas", "3"] + self.node_args, log)
        self.nodes[e] = node
        self.wait_log(node, log, "listening on", 120, start)

    def restart_nodes(self):
        """Every node stopped (SIGTERM, by PID) and started again: a cold
        engine (no KV cache) for the next repetition; the store is kept."""
        for e, node in self.nodes.items():
            node.send_signal(signal.SIGTERM)
        for e, node in list(self.nodes.items()):
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
            self.start_node(e)

    # -- the client -------------------------------------------------------
    def client_nodes(self):
        out = []
        for e in range(1, self.edges + 1):
            out += ["--node", "edge-%d=http://127.0.0.1:%d" % (e, 18080 + e)]
        return out

    def scenario(self, args, log, counters=None):
        """Starts `discedge scenario ARGS` on the client host (Popen). With
        counters=FILE, every link's counters are appended to FILE before the
        first turn ("0 HOST IFACE TX RX") and after each turn N ("N ...");
        the client waits for that before its next turn, and the sample waits
        SETTLE_S so that the turn's replication has crossed the links."""
        extra = []
        if counters:
            self.sample(counters, 0)
            extra = ["--after-turn", 'sleep %s; "%s" counters | sed "s/^/$DC_TURN /" >> "%s"'
                     % (SETTLE_S, NET, os.path.abspath(counters))]
        return self.spawn("client", [BIN, "scenario"] + args + self.client_nodes() + extra, log)

    def sample(self, path, turn):
        """Appends every link's counters to PATH as the per-turn hook does."""
        with open(path, "a") as f:
            for link, (tx, rx) in self.counters().items():
                f.write("%d %s %d %d\n" % (turn, link.replace("/", " "), tx, rx))

    def counters(self):
        """{"HOST/IFACE": (tx_bytes, rx_bytes)} for every interface now."""
        out = subprocess.run([NET, "counters"], check=True, capture_output=True, text=True).stdout
        return {"%s/%s" % tuple(ln.split()[:2]): tuple(map(int, ln.split()[2:4])) for ln in out.splitlines()}


SETTLE_S = 0.3


def per_turn_bytes(counters_path):
    """counters.tsv -> {turn: {"HOST/IFACE": (tx, rx)}}: bytes each interface
    sent and received during each turn (from the sample after the previous
    turn to the one after this turn)."""
    samples = {}
    with open(counters_path) as f:
        for line in f:
            turn, host, iface, tx, rx = line.split()
            samples.setdefault(int(turn), {})["%s/%s" % (host, iface)] = (int(tx), int(rx))
    turns = sorted(samples)
    return {t: {k: (v[0] - samples[p][k][0], v[1] - samples[p][k][1]) for k, v in samples[t].items()}
            for p, t in zip(turns, turns[1:])}


def write_links(counters_path, out_path):
    rows = per_turn_bytes(counters_path)
    with open(out_path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["turn", "link", "tx_bytes", "rx_bytes"])
        for t, links in rows.items():
            for k, (tx, rx) in sorted(links.items()):
                w.writerow([t, k, tx, rx])
    return rows


def read_turns(csv_path):
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


# -- commands -------------------------------------------------------------
def cmd_run(a):
    with Testbed(a.out, a.profile, a.edges, a.model, a.threads) as tb:
        counters = os.path.join(a.out, "counters.tsv")
        p = tb.scenario(a.scenario_args, "client.log", counters)
        rc = p.wait()
        write_links(counters, os.path.join(a.out, "links.tsv"))
    with open(os.path.join(a.out, "client.log"), errors="replace") as f:
        sys.stdout.write(f.read())
    print("testbed: profile %s, %d edge hosts; outputs in %s" % (a.profile, a.edges, a.out))
    return rc


def check(cond, what):
    if not cond:
        raise TestbedError("smoke: " + what)
    print("ok   " + what)


def cmd_smoke(a):
    """The suite's check: the testbed comes up, shapes, delays and counts,
    DisCEdge runs a roaming conversation on it, and it all goes away."""
    subprocess.run([NET, "up", "2"], check=True, stdout=subprocess.DEVNULL)
    try:
        subprocess.run([NET, "selfcheck"], check=True)
    finally:
        subprocess.run([NET, "down"], check=True)
    scen = os.path.join(ROOT, "scenarios", "robotics-9turn-roaming.yaml")
    out = a.out
    csv_path, counters = os.path.join(out, "turns.csv"), os.path.join(out, "counters.tsv")
    with Testbed(out, "wan", 2, a.model, 1) as tb:
        p = tb.scenario([scen, "--turns", "4", "--n-predict", "16", "--ignore-eos", "--temperature", "0",
                         "--seed", "123", "--quiet", "--csv", csv_path], "client.log", counters)
        rc = p.wait()
    with open(os.path.join(out, "client.log"), errors="replace") as f:
        log = f.read()
    check(rc == 0, "4-turn roaming conversation on the wan profile completes (client exit %d)\n%s" % (rc, log))
    check(not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("dctb-"),
          "teardown left no testbed namespace")
    turns = read_turns(csv_path)
    check([t["status"] for t in turns] == ["200"] * 4, "every turn answered 200")
    check([t["answered_by"] for t in turns] == ["edge-1", "edge-1", "edge-2", "edge-2"],
          "turns 1-2 answered by edge-1, 3-4 by edge-2 (the handover)")
    check(all(int(t["tokens_predicted"]) == 16 for t in turns), "16 tokens generated every turn")
    ctx = [int(t["context_tokens"]) for t in turns]
    check(all(b > a_ for a_, b in zip(ctx, ctx[1:])), "the context grew every turn, across the handover %s" % ctx)
    links = write_links(counters, os.path.join(out, "links.tsv"))
    check(sorted(links) == [1, 2, 3, 4], "link counters sampled after every turn")
    for t, l in links.items():
        req = int(turns[t - 1]["request_bytes"])
        # the client's link carries the request (and TCP/IP headers) upward
        check(l["client/eth0"][0] > req, "turn %d: client link sent %d B > the %d B request" % (t, l["client/eth0"][0], req))
        check(l["core/eth0"][1] > 0 and l["core/eth0"][0] > 0, "turn %d: replication crossed the core link %s"
              % (t, l["core/eth0"]))
        served = 1 if t <= 2 else 2
        check(l["edge%d/eth1" % served][1] > req, "turn %d: edge%d's access link received the request" % (t, served))
    check(links[1]["edge2/eth0"][1] > 0, "turn 1 reached edge2's store before edge2 served anything")
    print("smoke: testbed ok (outputs in %s)" % out)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--profile", default="lan", choices=sorted(PROFILES))
    r.add_argument("--edges", type=int, default=2)
    r.add_argument("--model", default=SMOLLM)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", required=True)
    r.add_argument("scenario_args", nargs=argparse.REMAINDER)
    s = sub.add_parser("smoke")
    s.add_argument("--out", default=None)
    s.add_argument("--model", default=SMOLLM)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("testbed.py: needs root (network namespaces)")
    # a signal tears the testbed down through the finally/with blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.cmd == "run":
        if a.scenario_args[:1] == ["--"]:
            a.scenario_args = a.scenario_args[1:]
        return cmd_run(a)
    own = a.out is None
    if own:
        a.out = tempfile.mkdtemp(prefix="dctb-smoke-")
    try:
        rc = cmd_smoke(a)
    except TestbedError as e:
        print(e, file=sys.stderr)
        return 1
    if own:  # kept on failure, for its logs
        shutil.rmtree(a.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
