"""paper.py - the paper's evaluation (Section 4) on the edge testbed, and
the studies it did not make. Writes raw per-turn data; figures.py turns it
into figures and tables.

  python3 bench/testbed/paper.py [--models smollm2,qwen] [--reps 3] [--exp single,roaming,users,mobile]
                                 [--users 1,4,16] [--n-predict 128] [--users-n-predict 128] OUT

Experiments, per model (SmolLM2-135M, and the Qwen1.5-0.5B-shaped stand-in
built by qwen_shape.c):
  single   the 9-turn scenario on edge-1 (edge-2 replicates), tokenized vs raw:
           response time and tokens/s per turn (Figs. 3, 4), replication
           bytes per turn on the core's link (Fig. 5). Profile lan.
  roaming  the roaming scenario (handovers at turns 3, 5, 7), tokenized vs
           client-side: response time per turn (Fig. 6), the client's
           request bytes per turn on its link (Fig. 7). Profile lan.
  users    1, 4, 16 concurrent roaming users (tokenized), each its own
           session: latency, handover waits, replication bytes, errors.
           Profile wan (20 ms between edges and core), so that a handover
           can find its previous turn not yet replicated; no per-turn
           counter samples here (their pause would give replication time
           that a real client does not give), bytes for the whole run.
  mobile   the roaming experiment on the mobile profile (client link
           2 Mbit/s, 40 ms one way; 20 ms between edges and core).
Every run has the paper's parameters (temperature 0, seed 123, n_predict
128) with EOS ignored, so every turn generates exactly n_predict tokens, and
this is checked. Modes are interleaved within each repetition, and every run
starts on freshly started nodes (no KV cache from an earlier run: the
engine would otherwise reuse the previous run's identical conversation).

Layout: OUT/MODEL/EXP/MODE-REP.csv (the scenario's per-turn CSV) and
MODE-REP.links.tsv (bytes per turn per link); users: OUT/MODEL/users/N/*.
OUT/runs.tsv lists every run with its wall time."""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testbed import ROOT, SETTLE_S, Testbed, TestbedError, read_turns, write_links  # noqa: E402

MODELS = {
    "smollm2": os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen": os.path.join(ROOT, "models", "qwen2-0.5b-shape.Q4_K_M.gguf"),
}
SCENARIOS = os.path.join(ROOT, "scenarios")
SINGLE = os.path.join(SCENARIOS, "robotics-9turn.yaml")
ROAMING = os.path.join(SCENARIOS, "robotics-9turn-roaming.yaml")
# Every node: a conversation is at most ~1,400 tokens here; 2,048 per
# sequence keeps the Qwen-shaped model's KV (96 KiB a token) small.
NODE_ARGS = ["--ctx-size", "2048"]


def ensure_qwen():
    path = MODELS["qwen"]
    if not os.path.exists(path):
        vocab = os.path.join(ROOT, "third_party", "llama.cpp", "models", "ggml-vocab-qwen2.gguf")
        subprocess.run([os.path.join(ROOT, "build", "qwen_shape"), vocab, path], check=True)
    return path


class Runner:
    def __init__(self, out, n_predict):
        self.out, self.n_predict = out, n_predict
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "runs.tsv")
        new = not os.path.exists(path)
        self.runs = open(path, "a")
        if new:
            self.runs.write("model\texperiment\tmode\trep\texit\twall_s\n")

    def log_run(self, tb, exp, mode, rep, rc, wall):
        self.runs.write("%s\t%s\t%s\t%d\t%d\t%.1f\n" % (os.path.basename(tb.model), exp, mode, rep, rc, wall))
        self.runs.flush()

    def params(self, n_predict=None):
        return ["--temperature", "0", "--seed", "123", "--n-predict", str(n_predict or self.n_predict),
                "--ignore-eos", "--quiet"]

    def conversation(self, tb, d, scenario, mode, rep, tag):
        """One conversation, counters sampled per turn; fails loudly if a
        turn failed or generated a different number of tokens."""
        os.makedirs(d, exist_ok=True)
        name = "%s-%d" % (mode, rep)
        csv_path, counters = os.path.join(d, name + ".csv"), os.path.join(d, name + ".counters")
        for p in (csv_path, counters):
            if os.path.exists(p):
                os.remove(p)
        tb.restart_nodes()
        t0 = time.monotonic()
        rc = tb.scenario([scenario, "--mode", mode, "--csv", csv_path] + self.params(), "client.log", counters).wait()
        wall = time.monotonic() - t0
        self.log_run(tb, tag, mode, rep, rc, wall)
        if rc != 0:
            raise TestbedError("%s %s rep %d: the client failed (exit %d); see %s/client.log" % (tag, mode, rep, rc, tb.out))
        write_links(counters, os.path.join(d, name + ".links.tsv"))
        bad = [t["turn"] for t in read_turns(csv_path) if int(t["tokens_predicted"]) != self.n_predict]
        if bad:
            raise TestbedError("%s %s rep %d: turns %s did not generate %d tokens" % (tag, mode, rep, bad, self.n_predict))
        print("  %-8s %-11s rep %d: %5.1f s" % (tag, mode, rep, wall), flush=True)

    def users(self, tb, d, n, n_predict):
        """N roaming users at once, each its own session (user id u<i>),
        started 0.25 s apart; bytes on every link for the whole run."""
        os.makedirs(d, exist_ok=True)
        tb.restart_nodes()
        before = tb.counters()
        t0 = time.monotonic()
        procs = []
        for i in range(n):
            csv_path = os.path.join(d, "user%02d.csv" % i)
            procs.append(tb.scenario([ROAMING, "--mode", "tokenized", "--user-id", "u%02d-%d" % (i, n),
                                      "--csv", csv_path] + self.params(n_predict), "client-users.log"))
            time.sleep(0.25)
        rcs = [p.wait() for p in procs]
        wall = time.monotonic() - t0
        time.sleep(SETTLE_S)
        after = tb.counters()
        with open(os.path.join(d, "links.tsv"), "w") as f:
            f.write("link\ttx_bytes\trx_bytes\n")
            for k in sorted(after):
                f.write("%s\t%d\t%d\n" % (k, after[k][0] - before[k][0], after[k][1] - before[k][1]))
        with open(os.path.join(d, "run.tsv"), "w") as f:
            f.write("users\tn_predict\twall_s\tclients_failed\n%d\t%d\t%.1f\t%d\n"
                    % (n, n_predict, wall, sum(1 for r in rcs if r)))
        self.log_run(tb, "users", "%d users" % n, 1, max(rcs), wall)
        print("  users    %-11s       : %5.1f s, %d clients failed" % (n, wall, sum(1 for r in rcs if r)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--models", default="smollm2,qwen")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--exp", default="single,roaming,users,mobile")
    ap.add_argument("--users", default="1,4,16")
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--users-n-predict", type=int, default=128)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("paper.py: needs root (the testbed's network namespaces)")
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # teardown runs in the with blocks
    exps = a.exp.split(",")
    r = Runner(os.path.abspath(a.out), a.n_predict)
    for m in a.models.split(","):
        model = ensure_qwen() if m == "qwen" else MODELS[m]
        base = os.path.join(r.out, m)
        print("model %s" % m, flush=True)
        # Single-client experiments: one node generates at a time, so each
        # node may use both cores (2 threads). Concurrent users: 1 thread
        # per node, as two nodes generating at once on 2 cores must.
        if "single" in exps or "roaming" in exps:
            with Testbed(os.path.join(base, "tb-lan"), "lan", 2, model, 2, NODE_ARGS) as tb:
                for rep in range(1, a.reps + 1):
                    if "single" in exps:
                        for mode in ("tokenized", "raw"):
                            r.conversation(tb, os.path.join(base, "single"), SINGLE, mode, rep, "single")
                    if "roaming" in exps:
                        for mode in ("tokenized", "client-side"):
                            r.conversation(tb, os.path.join(base, "roaming"), ROAMING, mode, rep, "roaming")
        if "mobile" in exps:
            with Testbed(os.path.join(base, "tb-mobile"), "mobile", 2, model, 2, NODE_ARGS) as tb:
                for rep in range(1, a.reps + 1):
                    for mode in ("tokenized", "client-side"):
                        r.conversation(tb, os.path.join(base, "mobile"), ROAMING, mode, rep, "mobile")
        if "users" in exps:
            with Testbed(os.path.join(base, "tb-users"), "wan", 2, model, 1, NODE_ARGS) as tb:
                for n in map(int, a.users.split(",")):
                    r.users(tb, os.path.join(base, "users", str(n)), n, a.users_n_predict)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TestbedError as e:
        sys.exit("paper.py: %s" % e)
