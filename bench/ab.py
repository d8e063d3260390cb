#!/usr/bin/env python3
"""Compares two builds of cofi on one scenario, runs alternated: A B B A A B B A ...

    bench/ab.py --a /tmp/old/build --b build seed-scaled --mode pipelined --rounds 4

Each run is one `bench/run.py SCENARIO --build DIR --repeat 1 --no-plot [ARGS...]`; the
runs alternate between the two builds in the order A B B A (repeated), so a drift of the
machine's speed over the runs falls on both alike. It prints every run's figures, then the
median of each figure per build and the ratio B / A, and the CPU of cofid and PostgreSQL per
transition and relative to cofi-sim's: on these shared machines the whole stack's speed moves
by up to 15 % from one run to the next, and cofi-sim, which neither build changes, is the
yardstick that moves with it (see docs/BENCHMARKS.md, "Comparing two builds").

Both builds must hold cofid, cofi-sim and (for polled) cofi-poll. Exit status: 0, 1 if a run
failed, 2 on bad usage.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "bench", "run.py")
RESULTS = os.path.join(ROOT, "bench", "out", "results.jsonl")

# (label, how to read it from a results.jsonl line, format)
FIGURES = [
    ("makespan s", lambda r: r["makespan_s"], "%.2f"),
    ("efficiency", lambda r: r["efficiency"], "%.3f"),
    ("transitions/s", lambda r: r["transitions_per_s"], "%.0f"),
    ("cofid CPU s", lambda r: r["cpu_s"]["cofid"], "%.2f"),
    ("postgres CPU s", lambda r: r["cpu_s"]["postgres"], "%.2f"),
    ("sim CPU s", lambda r: r["cpu_s"]["sim"], "%.2f"),
    ("machine CPU s", lambda r: r["cpu_s"]["machine"], "%.2f"),
    ("SQL statements/call", lambda r: r["sql_per_call"], "%.2f"),
    ("cofid CPU µs/transition", lambda r: per_transition(r, "cofid"), "%.1f"),
    ("postgres CPU µs/transition", lambda r: per_transition(r, "postgres"), "%.1f"),
    ("sim CPU µs/transition", lambda r: per_transition(r, "sim"), "%.1f"),
    ("cofid / sim CPU", lambda r: r["cpu_s"]["cofid"] / r["cpu_s"]["sim"], "%.3f"),
    ("postgres / sim CPU", lambda r: r["cpu_s"]["postgres"] / r["cpu_s"]["sim"], "%.3f"),
]


def per_transition(r, who):
    return r["cpu_s"][who] * 1e6 / (7 * r["calls"])


def read_last_result():
    with open(RESULTS, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]) if lines else None


def run_once(build, scenario, extra):
    before = read_last_result() if os.path.exists(RESULTS) else None
    argv = [sys.executable, RUN, scenario, "--build", build, "--repeat", "1", "--no-plot"]
    argv += extra
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    after = read_last_result() if os.path.exists(RESULTS) else None
    if p.returncode != 0 or after is None or after == before:
        sys.stderr.write(p.stdout)
        raise RuntimeError("bench/run.py %s --build %s failed (exit %d)" %
                           (scenario, build, p.returncode))
    return after


def figure(rec, get):
    try:
        return float(get(rec))
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def main():
    ap = argparse.ArgumentParser(
        description="Compares two builds on one scenario, runs alternated A B B A.",
        epilog="Further arguments go to bench/run.py (e.g. --mode pipelined, --calls N).")
    ap.add_argument("--a", required=True, metavar="DIR", help="the reference build folder")
    ap.add_argument("--b", required=True, metavar="DIR", help="the build to compare with it")
    ap.add_argument("--rounds", type=int, default=4,
                    help="runs of each build (default 4)")
    ap.add_argument("scenario", choices=["overhead", "seed-scaled", "large", "polled"])
    args, extra = ap.parse_known_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    builds = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    for name, d in builds.items():
        if not os.access(os.path.join(d, "cofid"), os.X_OK):
            ap.error("--%s %s: no cofid there" % (name.lower(), d))
    if args.scenario == "seed-scaled" and "--mode" not in extra:
        extra += ["--mode", "pipelined"]

    order = []
    while len(order) < 2 * args.rounds:
        order += ["A", "B", "B", "A"]
    order = order[:2 * args.rounds]

    runs = {"A": [], "B": []}
    try:
        for i, name in enumerate(order):
            rec = run_once(builds[name], args.scenario, extra)
            runs[name].append(rec)
            print("run %2d  %s  makespan %.2f s  transitions/s %.0f  cpu s: cofid %.2f, "
                  "postgres %.2f, sim %.2f, machine %.2f" %
                  (i + 1, name, rec["makespan_s"], rec["transitions_per_s"],
                   rec["cpu_s"]["cofid"], rec["cpu_s"]["postgres"], rec["cpu_s"]["sim"],
                   rec["cpu_s"]["machine"]), flush=True)
    except (RuntimeError, OSError, ValueError) as e:
        print("ab.py: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ab.py: interrupted", file=sys.stderr)
        return 1

    print()
    for name in ("A", "B"):
        # results.jsonl's "commit" is the working tree's, not the build's: name the binary.
        r0 = runs[name][0]
        print("%s = %s (cofid sha256 %s, built %s)" % (name, builds[name],
                                                     r0.get("cofid_sha256", "?"),
                                                     r0.get("cofid_built", "?")))
    print("%-28s %12s %12s %8s" % ("median of %d runs each" % args.rounds, "A", "B", "B / A"))
    for label, get, fmt in FIGURES:
        vals = {}
        for name in ("A", "B"):
            xs = [v for v in (figure(r, get) for r in runs[name]) if v is not None]
            vals[name] = statistics.median(xs) if xs else None
        if vals["A"] is None or vals["B"] is None:
            continue
        ratio = "%.3f" % (vals["B"] / vals["A"]) if vals["A"] else "-"
        print("%-28s %12s %12s %8s" % (label, fmt % vals["A"], fmt % vals["B"], ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
