"""long_conversation.py - a conversation past its context window (issue 15
item 6).

The 9-turn scenario (~25-token questions, 128-token replies, greedy,
ignore_eos so every reply has its full length) on one node with a 1024-token
window and 2 threads: from turn 7 the oldest turns no longer fit and are
dropped (truncated_turns). Before issue 15 every such turn prefilled the
whole window again; now the engine removes the dropped turns' cells and
shifts the rest into place (src/llm/engine.c, plan_reuse), so a turn
prefills its new tokens only. Per turn it reports the tokens prefilled
(timings.prompt_n), reused (cache_n), turns dropped, prefill time and the
node's own turn time (timings.total_ms), medians over the repetitions.

With --baseline OLD_BINARY the same runs on that build too, alternating per
repetition (the machine may be shared), and the table puts both side by side
with the per-turn ratio new / old.

usage: python3 bench/long_conversation.py [--reps N] [--bin B] [--baseline OLD_B] [OUT_DIR]
Prints a markdown table; OUT_DIR/long_conversation.json holds every turn."""
import argparse
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from dcnode import Node  # noqa: E402

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
MESSAGES = re.findall(r'^  - "(.*)"$', open(os.path.join(ROOT, "scenarios", "robotics-9turn.yaml")).read(), re.M)


def conversation(binary, a):
    """One run of the scenario on a fresh node; a list of per-turn dicts."""
    node = Node(binary, a.model, extra=["--threads", str(a.threads), "--ctx-size", str(a.ctx_size)]).start()
    rows = []
    try:
        sid = None
        for t, msg in enumerate(MESSAGES, 1):
            f = dict(prompt=msg, user_id="long", turn=t, n_predict=a.n_predict, ignore_eos=True, temperature=0,
                     seed=123)
            if sid:
                f["session_id"] = sid
            st, r = node.complete(**f)
            assert st == 200, r
            sid = r["session_id"]
            tm = r["timings"]
            rows.append({"turn": t, "prompt_n": tm["prompt_n"], "cache_n": tm["cache_n"],
                         "truncated_turns": r["truncated_turns"], "prompt_ms": tm["prompt_ms"],
                         "total_ms": tm["total_ms"]})
    finally:
        node.cleanup()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "discedge"))
    ap.add_argument("--baseline", help="an older build to compare with, e.g. one of main before issue 15")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ctx-size", type=int, default=1024)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    builds = [("new", a.bin)] + ([("old", a.baseline)] if a.baseline else [])
    runs = {tag: [] for tag, _ in builds}
    for rep in range(a.reps):
        for tag, binary in builds if rep % 2 == 0 else builds[::-1]:
            runs[tag].append(conversation(binary, a))
            print("%s rep %d: %.0f ms" % (tag, rep, sum(r["total_ms"] for r in runs[tag][-1])), file=sys.stderr,
                  flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "long_conversation.json"), "w") as f:
            json.dump({"args": vars(a), "runs": runs}, f, indent=1)

    med = lambda tag, t, k: statistics.median(run[t - 1][k] for run in runs[tag])  # noqa: E731
    cols = ["turn", "dropped", "prefilled", "reused", "prefill ms", "turn ms"]
    if a.baseline:
        cols += ["old: prefilled", "old: prefill ms", "old: turn ms", "turn ms new / old"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for t in range(1, len(MESSAGES) + 1):
        row = [t, med("new", t, "truncated_turns"), med("new", t, "prompt_n"), med("new", t, "cache_n"),
               "%.0f" % med("new", t, "prompt_ms"), "%.0f" % med("new", t, "total_ms")]
        if a.baseline:
            row += [med("old", t, "prompt_n"), "%.0f" % med("old", t, "prompt_ms"), "%.0f" % med("old", t, "total_ms"),
                    "%.3f" % (med("new", t, "total_ms") / med("old", t, "total_ms"))]
        print("| " + " | ".join(str(x) for x in row) + " |")
    total = {tag: statistics.median(sum(r["total_ms"] for r in run) for run in runs[tag]) for tag in runs}
    print("\nconversation total (median of %d): %.0f ms%s (--ctx-size %d, %d tokens a reply, %d threads)" % (
        a.reps, total["new"], "; old %.0f ms, new / old %.3f" % (total["old"], total["new"] / total["old"])
        if a.baseline else "", a.ctx_size, a.n_predict, a.threads))


if __name__ == "__main__":
    main()
