#!/usr/bin/env python3
"""Draws calls finished over time per stage for a seed-scaled run, pipelined and staged side by
side on the same time axis, from the timelines bench/run.py exports:

    bench/plot.py [--pipelined CSV] [--staged CSV] [--results JSONL] [--out PNG]

Defaults: bench/out/seed-scaled-{pipelined,staged}-timeline.csv, bench/out/results.jsonl (for
the makespans and bounds drawn as vertical lines) and docs/bench-seed-scaled.png. Needs
matplotlib (Debian: python3-matplotlib, installed by scripts/deps.sh --bench; run it with
/usr/bin/python3 if your python3 is another one).
"""

import argparse
import csv
import decimal
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
STAGES = ("distribute", "denoise", "ivr", "lid", "stt", "llm1", "llm2")


def fmt_s(x):
    """Seconds with two decimals, halves rounded up (15.625 -> 15.63), as bench/run.py does."""
    return str(decimal.Decimal(repr(x)).quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_UP))


def read_timeline(path):
    """{stage: sorted finish times in seconds} of the rows that are done."""
    times = {s: [] for s in STAGES}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("state", "done") == "done" and row["stage"] in times:
                times[row["stage"]].append(float(row["finished_s"]))
    for s in times:
        times[s].sort()
    return times


def last_results(path, scenario):
    """{mode: the last result of that scenario and mode} from results.jsonl."""
    found = {}
    try:
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("scenario") == scenario:
                    found[r.get("mode")] = r
    except OSError:
        pass
    return found


def main():
    ap = argparse.ArgumentParser(prog="bench/plot.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipelined", default=os.path.join(OUT, "seed-scaled-pipelined-timeline.csv"))
    ap.add_argument("--staged", default=os.path.join(OUT, "seed-scaled-staged-timeline.csv"))
    ap.add_argument("--results", default=os.path.join(OUT, "results.jsonl"))
    ap.add_argument("--scenario", default="seed-scaled")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench-seed-scaled.png"))
    args = ap.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench/plot.py: matplotlib is missing (apt-get install python3-matplotlib, "
              "then run it with /usr/bin/python3)", file=sys.stderr)
        return 1

    panels = []
    for mode, path in (("pipelined", args.pipelined), ("staged", args.staged)):
        if not os.path.exists(path):
            print("bench/plot.py: %s is missing: run bench/run.py seed-scaled" % path,
                  file=sys.stderr)
            return 1
        panels.append((mode, read_timeline(path)))
    results = last_results(args.results, args.scenario)

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True, sharey=True)
    colors = plt.get_cmap("tab10").colors
    for ax, (mode, times) in zip(axes, panels):
        for i, stage in enumerate(STAGES):
            t = times[stage]
            if t:
                ax.step([0.0] + t, range(len(t) + 1), where="post", color=colors[i],
                        linewidth=1.4, label=stage)
        r = results.get(mode)
        title = mode
        if r:
            key = "staged_bound_s" if mode == "staged" else "pipelined_bound_s"
            ax.axvline(r[key], color="grey", linestyle="--", linewidth=1,
                       label="%s %s s" % ("staged bound" if mode == "staged" else "bound", fmt_s(r[key])))
            ax.axvline(r["makespan_s"], color="black", linestyle=":", linewidth=1,
                       label="makespan %s s" % fmt_s(r["makespan_s"]))
            title = "%s: %d calls, makespan %s s, efficiency %.2f" % (
                mode, r["calls"], fmt_s(r["makespan_s"]), r["efficiency"])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the batch started")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("calls that finished the stage")
    axes[0].set_xlim(left=0)
    axes[0].set_ylim(bottom=0)
    fig.suptitle("cofi, seed-scaled: calls finished per stage over time", fontsize=12)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("bench/plot.py: wrote %s" % os.path.relpath(args.out, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
