"""figures.py - paper.py's raw data -> the paper's figures (gnuplot PNGs with
95% confidence intervals, as the paper draws them) and the tables of
bench/RESULTS.md, our medians next to the paper's.

  python3 bench/testbed/figures.py OUT [--figures bench/figures]

Writes FIGURES/fig3-response-time.png ... fig7-request-bytes.png,
FIGURES/handover-wait.png, FIGURES/mobile-uplink.png, their data files
(FIGURES/data/*.dat), and OUT/report.md (also printed).

Definitions (every one measured, none computed from payload sizes unless
it says "payload"):
  response time   client-observed, from the request's first byte to the
                  reply's last (the scenario client's latency_ms)
  tokens/s        generated tokens per second of generation, as llama.cpp
                  times it (predicted_ms; llama-server's predicted_per_second,
                  the paper's TPS)
  sync bytes      bytes the core host's link sent + received during the turn
                  (all replication between the edges and the core)
  request bytes   bytes the client host's link sent during the turn (the
                  request, plus TCP/IP headers and the ACKs of the reply)
95% CI: mean +- t(0.975, n-1) * sd / sqrt(n) over the repetitions."""
import argparse
import csv
import glob
import math
import os
import statistics
import subprocess
import sys

MODELS = [("smollm2", "SmolLM2-135M Q4_1"), ("qwen", "Qwen1.5-0.5B shape Q4_K_M")]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
HANDOVERS = {3, 5, 7}
CORE_RTT_MS = 2 * 20  # one round trip between an edge and the core on the wan profile (testbed.py PROFILES)
PAPER = {  # the paper's Section 4 figures (TX2 / M2 where it gives both)
    "fig3": "-14.46% (TX2) / -8.75% (M2)",
    "fig4": "+2.85% (TX2) / +1.41% (M2)",
    "fig5": "-15% (TX2) / -13.3% (M2)",
    "fig6": "-6.29% (TX2) / -2.51% (M2)",
    "fig7": "-90%",
}


def ci(xs):
    """(mean, half-width of the 95% CI)"""
    n = len(xs)
    if n < 2:
        return (xs[0] if xs else float("nan")), 0.0
    return statistics.mean(xs), T975.get(n - 1, 1.96) * statistics.stdev(xs) / math.sqrt(n)


def pct(new, old):
    return (new - old) / old * 100.0 if old else float("nan")


def read_csv(path, delim=","):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=delim))


class Runs:
    """Every repetition of one experiment and mode: per turn, the scenario's
    row and the bytes of each link."""

    def __init__(self, d, mode):
        self.reps = []
        for path in sorted(glob.glob(os.path.join(d, "%s-*.csv" % mode))):
            turns = {int(r["turn"]): r for r in read_csv(path)}
            links = {}
            lp = path[:-4] + ".links.tsv"
            if os.path.exists(lp):
                for r in read_csv(lp, "\t"):
                    links.setdefault(int(r["turn"]), {})[r["link"]] = (int(r["tx_bytes"]), int(r["rx_bytes"]))
            self.reps.append((turns, links))

    def __bool__(self):
        return bool(self.reps)

    def turns(self):
        return sorted(self.reps[0][0]) if self.reps else []

    def per_turn(self, f):
        """{turn: [f(row, links) for each repetition]}"""
        return {t: [f(rows[t], links.get(t, {})) for rows, links in self.reps if t in rows] for t in self.turns()}

    def all(self, f):
        return [v for vs in self.per_turn(f).values() for v in vs]


def latency_s(row, links):
    return float(row["latency_ms"]) / 1000.0


def tps(row, links):
    return int(row["tokens_predicted"]) / (float(row["predicted_ms"]) / 1000.0)


def sync_kb(row, links):
    tx, rx = links["core/eth0"]
    return (tx + rx) / 1000.0


def req_kb(row, links):
    return links["client/eth0"][0] / 1000.0


def payload_kb(row, links):
    return int(row["request_bytes"]) / 1000.0


class Report:
    def __init__(self, out, figdir):
        self.out, self.figdir = out, figdir
        self.datadir = os.path.join(figdir, "data")
        os.makedirs(self.datadir, exist_ok=True)
        self.md = []

    def line(self, s=""):
        self.md.append(s)

    def table(self, head, rows):
        self.line("| " + " | ".join(head) + " |")
        self.line("|" + "---|" * len(head))
        for r in rows:
            self.line("| " + " | ".join(str(c) for c in r) + " |")
        self.line()

    # -- the per-turn figures ----------------------------------------------
    def dat(self, name, model, series, f, handovers):
        """FIGURES/data/NAME-MODEL.dat: turn, then mean and CI per series."""
        path = os.path.join(self.datadir, "%s-%s.dat" % (name, model))
        turns = series[0][1].turns()
        cols = [s[1].per_turn(f) for s in series]
        with open(path, "w") as out:
            out.write("# turn " + " ".join("%s_mean %s_ci95" % (s[0], s[0]) for s in series) + "\n")
            for t in turns:
                label = "%d%s" % (t, "*" if handovers and t in HANDOVERS else "")
                vals = []
                for c in cols:
                    m, h = ci(c.get(t, []))
                    vals += ["%.4f" % m, "%.4f" % h]
                out.write("%s %s\n" % (label, " ".join(vals)))
        return path

    def plot(self, name, title, ylabel, panels, series_titles):
        """One PNG, one panel per model (like the paper's M2 / TX2 panels),
        clustered bars with 95% CI error bars."""
        png = os.path.join(self.figdir, "%s.png" % name)
        gp = ['set terminal pngcairo size %d,420 font "Sans,10" noenhanced' % (520 * len(panels)),
              'set output "%s"' % png,
              "set multiplot layout 1,%d title \"%s\"" % (len(panels), title),
              "set style data histogram", "set style histogram errorbars gap 1 lw 1",
              "set style fill solid 0.7 border -1", "set boxwidth 0.9", "set grid ytics",
              "set yrange [0:*]", "set key top left", 'set xlabel "turn"', 'set ylabel "%s"' % ylabel]
        for model_title, path in panels:
            gp.append('set title "%s"' % model_title)
            plots = []
            for i, st in enumerate(series_titles):
                using = "%d:%d%s" % (2 + 2 * i, 3 + 2 * i, ":xtic(1)" if i == 0 else "")
                plots.append('"%s" using %s title "%s"' % (path, using, st))
            gp.append("plot " + ", ".join(plots))
        gp.append("unset multiplot")
        subprocess.run(["gnuplot"], input="\n".join(gp), text=True, check=True)
        return png

    def per_turn_figure(self, name, title, ylabel, exp, modes, f, handovers=False):
        panels = []
        for m, mt in MODELS:
            runs = [(mode, Runs(os.path.join(self.out, m, exp), mode)) for mode in modes]
            if all(r for _, r in runs):
                panels.append((mt, self.dat(name, m, runs, f, handovers)))
        if panels:
            png = self.plot(name, title, ylabel, panels, modes)
            self.line("![%s](figures/%s)" % (title, os.path.basename(png)))
            self.line()

    # -- the comparison with the paper ---------------------------------------
    def comparisons(self):
        rows = []
        specs = [("fig3", "median response time", "single", "tokenized", "raw", latency_s, "s"),
                 ("fig4", "median tokens/s", "single", "tokenized", "raw", tps, "tok/s"),
                 ("fig5", "median sync bytes per turn", "single", "tokenized", "raw", sync_kb, "KB"),
                 ("fig6", "median response time, roaming", "roaming", "tokenized", "client-side", latency_s, "s"),
                 ("fig7", "median request bytes per turn (wire)", "roaming", "tokenized", "client-side", req_kb, "KB"),
                 ("fig7", "median request bytes per turn (payload)", "roaming", "tokenized", "client-side",
                  payload_kb, "KB")]
        for fig, what, exp, a, b, f, unit in specs:
            for m, mt in MODELS:
                ra, rb = Runs(os.path.join(self.out, m, exp), a), Runs(os.path.join(self.out, m, exp), b)
                if not (ra and rb):
                    continue
                va, vb = statistics.median(ra.all(f)), statistics.median(rb.all(f))
                rows.append(["Fig. %s" % fig[3:], what, mt, "%.3f %s" % (va, unit), "%.3f %s (%s)" % (vb, unit, b),
                             "%+.2f%%" % pct(va, vb), PAPER[fig], "%d" % len(ra.reps)])
        self.line("### Our medians next to the paper's (DisCEdge tokenized vs the baseline)")
        self.line()
        self.table(["figure", "measure", "model", "tokenized", "baseline", "change", "paper", "reps"], rows)

    # -- beyond the paper ----------------------------------------------------
    def users(self):
        rows, waits = [], {}
        for m, mt in MODELS:
            for d in sorted(glob.glob(os.path.join(self.out, m, "users", "*")), key=lambda p: int(os.path.basename(p))):
                n = int(os.path.basename(d))
                run = read_csv(os.path.join(d, "run.tsv"), "\t")[0]
                links = {r["link"]: (int(r["tx_bytes"]), int(r["rx_bytes"])) for r in read_csv(os.path.join(d, "links.tsv"), "\t")}
                turns = [r for p in sorted(glob.glob(os.path.join(d, "user*.csv"))) for r in read_csv(p)]
                ok = [r for r in turns if r["status"] == "200"]
                expected = n * 9
                lat = sorted(float(r["latency_ms"]) / 1000 for r in ok)
                hw = sorted(handover_ms(r) for r in ok if int(r["turn"]) in HANDOVERS)
                waits["%s, %d users" % (mt, n)] = (hw, sorted(handover_ms(r) for r in ok
                                                              if int(r["turn"]) not in HANDOVERS | {1}),
                                                   [r for r in ok if int(r["turn"]) in HANDOVERS])
                gen = sum(int(r["tokens_predicted"]) for r in ok)
                rows.append([mt, n, run["n_predict"], "%d/%d" % (len(ok), expected),
                             expected - len(ok), "%.2f" % q(lat, 50), "%.2f" % q(lat, 95),
                             "%.1f / %.1f / %.1f" % (q(hw, 50), q(hw, 95), hw[-1] if hw else float("nan")),
                             "%.2f" % (sum(links["core/eth0"]) / 1000 / max(1, len(ok))),
                             "%.0f" % (gen / float(run["wall_s"])), run["wall_s"]])
        if rows:
            self.line("### Concurrent roaming users (tokenized, wan profile: 20 ms edge-core; 1 thread per node)")
            self.line()
            self.table(["model", "users", "n_predict", "turns 200", "errors", "p50 turn s", "p95 turn s",
                        "handover: wait + read ms p50 / p95 / max", "sync KB per turn", "tok/s (all users)", "wall s"], rows)
        return waits

    def mobile(self):
        rows = []
        for m, mt in MODELS:
            d = os.path.join(self.out, m, "mobile")
            tok, cs = Runs(d, "tokenized"), Runs(d, "client-side")
            if not (tok and cs):
                continue
            up_a, up_b = tok.per_turn(req_kb), cs.per_turn(req_kb)
            lat_a, lat_b = tok.per_turn(latency_s), cs.per_turn(latency_s)
            for t in tok.turns():
                a, b, la, lb = up_a[t], up_b[t], lat_a[t], lat_b[t]
                rows.append([mt, t, "%.2f" % statistics.median(a), "%.2f" % statistics.median(b),
                             "%.1f" % (statistics.median(b) * 8 / 2000 * 1000), "%.2f" % statistics.median(la),
                             "%.2f" % statistics.median(lb), "%+.1f%%" % pct(statistics.median(la), statistics.median(lb))])
            tot_a = statistics.median([sum(l.get(t, {}).get("client/eth0", (0, 0))[0] for t in l) for _, l in tok.reps])
            tot_b = statistics.median([sum(l.get(t, {}).get("client/eth0", (0, 0))[0] for t in l) for _, l in cs.reps])
            rows.append([mt, "all 9", "%.2f" % (tot_a / 1000), "%.2f" % (tot_b / 1000),
                         "%.1f" % (tot_b * 8 / 2e6 * 1000), "", "", ""])
        if rows:
            self.line("### Mobile uplink (client link 2 Mbit/s, 40 ms one way; 20 ms edge-core): what the phone sends")
            self.line()
            self.table(["model", "turn", "tokenized uplink KB", "client-side uplink KB",
                        "client-side upload ms at 2 Mbit/s", "tokenized s", "client-side s", "response time change"],
                       rows)
            self.per_turn_figure("mobile-uplink", "Mobile profile: bytes the client sent per turn (wire)", "KB", "mobile",
                                 ["tokenized", "client-side"], req_kb, handovers=True)

    def handover_waits(self, waits):
        # Not from roaming/mobile: their per-turn counter samples pause the
        # client, which gives replication time a real client does not give.
        waits = {k: v for k, v in waits.items() if v[0]}
        if not waits:
            return
        rows = [[k, len(h), "%.1f" % q(h, 50), "%.1f" % q(h, 90), "%.1f" % h[-1], "%.1f" % q(o, 50),
                 "%.1f" % q(o, 90), sum(1 for r in h if r > q(o, 90))] for k, (h, o, _) in waits.items()]
        self.line("### Handover: time the new node took to get the current context (wan profile)")
        self.line()
        self.line("Per turn, `wait_ms` (waiting for the previous turn to replicate) + `store_read_ms`")
        self.line("(reading the session: the local mirror, or the core when the mirror lags).")
        self.line()
        self.table(["setting", "handovers", "p50 ms", "p90 ms", "max ms", "other turns p50 ms", "other turns p90 ms",
                    "handovers above the others' p90"], rows)
        path = os.path.join(self.datadir, "handover-wait.dat")
        with open(path, "w") as f:
            for k, (h, _, _) in waits.items():
                f.write("# %s\n" % k)
                for i, x in enumerate(h):
                    f.write("%.3f %.4f\n" % (x, (i + 1) / len(h)))
                f.write("\n\n")
        png = os.path.join(self.figdir, "handover-wait.png")
        plots = ['"%s" index %d using 1:2 with steps lw 2 title "%s"' % (path, i, k) for i, k in enumerate(waits)]
        gp = ['set terminal pngcairo size 800,450 font "Sans,10" noenhanced', 'set output "%s"' % png,
              'set title "Handover: wait + read of the session on the new node (CDF, wan profile)"',
              'set xlabel "ms"', 'set ylabel "fraction of handovers"', "set yrange [0:1.05]", "set grid",
              "set key right center", "plot " + ", ".join(plots)]
        subprocess.run(["gnuplot"], input="\n".join(gp), text=True, check=True)
        self.line("![handover wait](figures/handover-wait.png)")
        self.line()
        self.handover_reads(waits)

    def handover_reads(self, waits):
        """Issue 15's goal for the handover read on the wan profile: p50 <= one
        round trip to the core. store_read_ms alone (no replication wait), and
        the round trips the read made to the core (store_read_core_trips: 1
        when the mirror lags, 0 when it had the turn; scenario CSVs from
        before the column show "-")."""
        rows = []
        for k, (_, _, turns) in waits.items():
            reads = sorted(float(r["store_read_ms"]) for r in turns)
            trips = sorted(int(r["store_read_core_trips"]) for r in turns if r.get("store_read_core_trips"))
            lagging = sorted(float(r["store_read_ms"]) for r in turns if int(r.get("store_read_core_trips") or 0) > 0)
            rows.append([k, len(reads), "%.1f" % q(reads, 50), "%.1f" % q(reads, 90), len(lagging),
                         "%.1f" % q(lagging, 50), "%d / %d" % (q(trips, 50), trips[-1]) if trips else "-",
                         "%d" % CORE_RTT_MS, "%.2f" % (q(reads, 50) / CORE_RTT_MS)])
        self.line("### Handover read against one round trip to the core (wan profile)")
        self.line()
        self.line("`store_read_ms` of each handover turn (the mirror, then the core when the mirror lags), and the")
        self.line("round trips it made to the core (`store_read_core_trips`). One round trip: %d ms." % CORE_RTT_MS)
        self.line()
        self.table(["setting", "handovers", "read p50 ms", "read p90 ms", "reads that asked the core",
                    "their p50 ms", "core round trips p50 / max", "one round trip ms", "read p50 / one round trip (goal <= 1)"], rows)


def handover_ms(row):
    return float(row["wait_ms"]) + float(row["store_read_ms"])


def q(xs, p):
    """p-th percentile, nearest rank"""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--figures", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "figures"))
    a = ap.parse_args()
    r = Report(os.path.abspath(a.out), os.path.abspath(a.figures))
    r.line("## Results of %s" % a.out)
    r.line()
    r.comparisons()
    tok_raw, tok_cs = ["tokenized", "raw"], ["tokenized", "client-side"]
    r.per_turn_figure("fig3-response-time", "Fig. 3: response time per turn, one node", "s", "single", tok_raw,
                      latency_s)
    r.per_turn_figure("fig4-tokens-per-second", "Fig. 4: tokens generated per second", "tokens/s", "single",
                      tok_raw, tps)
    r.per_turn_figure("fig5-sync-bytes", "Fig. 5: replication bytes per turn on the core link", "KB", "single",
                      tok_raw, sync_kb)
    r.per_turn_figure("fig6-roaming-response-time", "Fig. 6: roaming client, response time per turn (* = handover)",
                      "s", "roaming", tok_cs, latency_s, handovers=True)
    r.per_turn_figure("fig7-request-bytes", "Fig. 7: bytes the client sent per turn (wire; * = handover)", "KB",
                      "roaming", tok_cs, req_kb, handovers=True)
    waits = r.users()
    r.mobile()
    r.handover_waits(waits)
    text = "\n".join(r.md) + "\n"
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
