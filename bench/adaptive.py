"""The `adaptive` scenario of bench/run.py: two cofid instances on one database against a
cofi-sim whose NLP capacity follows a schedule 100 -> 40 -> 100 (POST /admin/capacity at
run-relative times), with the adaptive NLP limit on (llm.adaptive). Writes

    docs/bench-adaptive.csv   t_s, cofi_in_flight (the API's concurrent requests, sampled
                              every 250 ms), api_capacity, cofi_limit (the cluster's limit
                              as instance 1 reports it), and per second from cofi-sim's
                              series: ok, rejected (429), allowed (capacity / latency)
    docs/bench-adaptive.svg   the three lines over time (drawn by hand: no matplotlib)

and prints the 429 share and the throughput against what the API allowed, per phase and
overall. Called by bench/run.py (`bench/run.py adaptive`); reuses its helpers.
"""

import csv
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
CSV_PATH = os.path.join(DOCS, "bench-adaptive.csv")
SVG_PATH = os.path.join(DOCS, "bench-adaptive.svg")

LLM_MS = 400
LATENCY = {"distribute": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 1,
           "llm1": LLM_MS, "llm2": LLM_MS}
# (seconds from the first NLP request at the cap, capacity from then on)
SCHEDULE = ((0, 100), (15, 40), (40, 100), (60, None))
SAMPLE_S = 0.25


def run_adaptive(R, bins, procs, cluster, calls):
    """One run. R is the bench/run.py module (its helpers). Returns a result dict."""
    db = "bench_adaptive"
    logs = os.path.join(R.WORK, "logs")
    os.makedirs(logs, exist_ok=True)
    cluster.fresh_database(db)
    base = R.free_port_block(R.NODES + 3)
    nlp_port = base + R.NODES
    ports = (base + R.NODES + 1, base + R.NODES + 2)
    sim = procs.start("cofi-sim", [
        bins["cofi-sim"], "--nodes", str(R.NODES), "--base-port", str(base), "--node-capacity",
        str(R.NODE_CAPACITY), "--nlp-port", str(nlp_port), "--nlp-capacity", "100",
        "--latency-ms", R.sim_latency_arg(LATENCY), "--jitter-pct", "5", "--seed", "1"],
        os.path.join(logs, "adaptive-sim.log"))
    for i in range(R.NODES):
        R.wait_http_ok(base + i, "/health", sim, 15, "cofi-sim")
    R.wait_http_ok(nlp_port, "/stats", sim, 15, "cofi-sim")
    files = [R.call_path(i) for i in range(calls)]
    body = json.dumps({"name": "bench adaptive", "files": files}).encode()
    env = {k: v for k, v in os.environ.items()
           if k not in ("COFI_DATABASE_URL", "COFI_LISTEN", "COFI_NLP_API_KEY")}
    apis = []
    for n, port in enumerate(ports):
        cfg_path = os.path.join(R.WORK, "adaptive-cofid-%d.json" % n)
        R.write_config(cfg_path, port, cluster.url(db), base, nlp_port, len(body))
        p = procs.start("cofid", [bins["cofid"], "--config", cfg_path],
                        os.path.join(logs, "adaptive-cofid-%d.log" % n), env=env)
        R.wait_http_ok(port, "/readyz", p, 60, "cofid")
        apis.append(R.Http(port))
    nlp = R.Http(nlp_port)
    status, batch = apis[0].request("POST", "/batches", body=body, timeout=600)
    if status != 201:
        raise R.BenchError("POST /batches answered %s: %s" % (status, str(batch)[:300]))
    bid = batch["id"]
    apis[0].request("POST", "/batches/%s/run" % bid, body={"mode": "pipelined"})

    # Wait for the cluster to reach the cap, then follow the schedule.
    deadline = time.monotonic() + 120
    while True:
        _, st = nlp.request("GET", "/stats")
        if st["in_flight"] >= 90:
            break
        if time.monotonic() > deadline:
            raise R.BenchError("the NLP API never reached 90 in flight: %s" % st["in_flight"])
        time.sleep(0.1)
    t0_sim = st["seconds"]
    t0 = time.monotonic()
    R.say("adaptive: at the cap %.1f s after cofi-sim started; schedule %s" % (t0_sim, SCHEDULE))
    samples = []
    step = 0
    while True:
        now = time.monotonic() - t0
        if step < len(SCHEDULE) and now >= SCHEDULE[step][0]:
            cap = SCHEDULE[step][1]
            if cap is None:
                break
            nlp.request("POST", "/admin/capacity", body={"capacity": cap})
            R.say("adaptive: capacity %d at %.1f s" % (cap, now))
            step += 1
        _, st = nlp.request("GET", "/stats")
        _, s1 = apis[0].request("GET", "/stages/llm1/status")
        samples.append((round(st["seconds"] - t0_sim, 3), st["concurrent"], st["capacity"],
                        s1["adaptive"]["limit"]))
        time.sleep(SAMPLE_S)
    _, st = nlp.request("GET", "/stats")
    _, s1 = apis[0].request("GET", "/stages/llm1/status")
    apis[0].request("POST", "/batches/%s/cancel" % bid)
    for a in apis:
        a.close()
    procs.stop_all()
    return summarise(samples, st, t0_sim, s1["adaptive"]["history"])


def summarise(samples, st, t0_sim, history):
    series = [b for b in st["series"] if b["t"] >= int(t0_sim) + 1]
    end = max(s[0] for s in samples) + t0_sim
    series = [b for b in series if b["t"] + 1 <= end]
    per_s = {b["t"]: b for b in series}
    with open(CSV_PATH, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "cofi_in_flight", "api_capacity", "cofi_limit", "ok_per_s",
                    "rejected_per_s", "allowed_per_s"])
        for t, inflight, cap, lim in samples:
            b = per_s.get(int(t + t0_sim))
            w.writerow([t, inflight, cap, lim, b["ok"] if b else "", b["rejected"] if b else "",
                        round(b["capacity"] * 1000.0 / LLM_MS) if b else ""])
    phases = {}
    for b in series:
        rel = b["t"] - t0_sim
        name = "100 (before)" if rel < SCHEDULE[1][0] else (
            "40" if rel < SCHEDULE[2][0] else "100 (after)")
        ph = phases.setdefault(name, {"ok": 0, "allowed": 0.0, "arrivals": 0, "rejected": 0})
        ph["ok"] += b["ok"]
        ph["allowed"] += b["capacity"] * 1000.0 / LLM_MS
        ph["arrivals"] += b["arrivals"]
        ph["rejected"] += b["rejected"]
    total = {k: sum(p[k] for p in phases.values()) for k in ("ok", "allowed", "arrivals",
                                                              "rejected")}
    phases["run"] = total
    # The same phases without their transitions, which the issue times apart ("following
    # within a few seconds", "back at the cap within seconds"): from the second after the
    # cluster's limit first came down to the capacity, and after the API's in-flight was
    # first back at 90 % of the cap.
    drop, up = SCHEDULE[1], SCHEDULE[2]
    t_followed = next((t for t, _, _, lim in samples if t >= drop[0] and lim <= drop[1]), None)
    t_back = next((t for t, inflight, _, _ in samples if t >= up[0] and inflight >= 90), None)
    steady = (("40, followed", t_followed, up[0]), ("100, back", t_back, end - t0_sim))
    for name, a, b in steady:
        if a is None:
            continue
        ph = phases.setdefault(name, {"ok": 0, "allowed": 0.0, "arrivals": 0, "rejected": 0})
        for bk in series:
            if int(a) + 1 <= bk["t"] - t0_sim < int(b):
                ph["ok"] += bk["ok"]
                ph["allowed"] += bk["capacity"] * 1000.0 / LLM_MS
                ph["arrivals"] += bk["arrivals"]
                ph["rejected"] += bk["rejected"]
    lines = []
    for name, p in phases.items():
        lines.append("%-13s NLP answers %5d of %6.0f allowed (%5.1f %%), requests %5d, 429s %3d "
                     "(%.2f %%)" % (name, p["ok"], p["allowed"], 100.0 * p["ok"] / p["allowed"],
                                    p["arrivals"], p["rejected"],
                                    100.0 * p["rejected"] / max(p["arrivals"], 1)))
    lines.append("following the drop took %s s; at the cap again %s s after the capacity came "
                 "back" % ("%.1f" % (t_followed - drop[0]) if t_followed is not None else "-",
                           "%.1f" % (t_back - up[0]) if t_back is not None else "-"))
    draw_svg(samples)
    return {"phases": phases, "lines": lines, "history": history,
            "max_concurrent": st["max_concurrent"]}


def draw_svg(samples):
    """A line chart of capacity, limit and in-flight over time, as SVG text."""
    w, h, ml, mr, mt, mb = 900, 360, 50, 150, 20, 40
    tmax = max(s[0] for s in samples) or 1
    ymax = 110

    def x(t):
        return ml + (w - ml - mr) * t / tmax

    def y(v):
        return mt + (h - mt - mb) * (1 - v / ymax)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (w, h),
           '<rect width="100%" height="100%" fill="white"/>']
    for v in range(0, ymax + 1, 20):
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>'
                   % (ml, y(v), w - mr, y(v)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (ml - 5, y(v) + 4, v))
    for t in range(0, int(tmax) + 1, 10):
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d s</text>'
                   % (x(t), h - mb + 18, t))
    lines = ((2, "#d62728", "API capacity"), (3, "#1f77b4", "cofi limit (cluster)"),
             (1, "#2ca02c", "in flight at the API"))
    for i, (col, color, label) in enumerate(lines):
        pts = " ".join("%.1f,%.1f" % (x(s[0]), y(s[col])) for s in samples)
        out.append('<polyline fill="none" stroke="%s" stroke-width="%s" points="%s"/>'
                   % (color, "2" if col != 1 else "1", pts))
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>'
                   % (w - mr + 10, mt + 20 * i + 10, w - mr + 30, mt + 20 * i + 10, color))
        out.append('<text x="%d" y="%d">%s</text>' % (w - mr + 35, mt + 20 * i + 14, label))
    out.append('<text x="%d" y="%d" text-anchor="middle">NLP requests in flight, two cofid '
               'instances; capacity 100 -&gt; 40 -&gt; 100</text>' % ((w - mr + ml) // 2, 14))
    out.append("</svg>")
    with open(SVG_PATH, "w") as f:
        f.write("\n".join(out) + "\n")
