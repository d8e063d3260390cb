"""The `million` scenario of bench/run.py (docs/BENCHMARKS.md, "million").

    bench/run.py million [--calls N] [--submit-only] [--makespan-calls M] [--hot-seconds S]

1. POST /batches with N paths (1,000,000 by default, ~40 MB of JSON) to a cofid whose
   max_body_bytes is the default 64 MiB: the submission's time (first byte sent to last byte
   of the answer) and cofid's resident set throughout (VmHWM after it, and VmRSS sampled every
   10 ms while it runs).
2. The hot queries at that size: 30 % of the calls are put at llm1 (pending) ahead of the rest
   at stage 0 and 0.1 % failed, the batch runs for --hot-seconds while GET /batches/{id},
   GET /stages/{stt,llm1}/status and pages of GET /batches/{id}/calls?state=failed are asked
   every 100 ms; then every hot statement's calls, mean and max time from pg_stat_statements.
3. Unless --submit-only: the makespan of a run of --makespan-calls calls (the same topology
   and latencies), as every other scenario measures it.

Every figure goes to bench/out/results.jsonl (scenario "million-submit" for 1 and 2, "million"
for 3) and is printed. Uses bench/run.py's helpers (passed in as `run`).
"""

import datetime
import json
import os
import subprocess
import threading
import time

# (label, SQL LIKE pattern on pg_stat_statements.query): the statements that must cost what
# they claim or read whatever the size of calls.
# pg_stat_statements shows constants as $n: the patterns name none.
HOT = [
    ("claim (GPU and NLP)", "%FOR UPDATE SKIP LOCKED%"),
    ("flush", "%AS r(id bigint, token bigint, %stage smallint%"),
    ("heartbeat", "%ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp()%"),
    ("lease recovery (none expired)", "SELECT EXISTS (SELECT 1 FROM instances WHERE id <>%"),
    ("active batches", "%min(p.stage) FILTER%"),
    ("batch status", "%FROM batches b WHERE b.id = $1%"),
    ("stage status", "%FROM stage_progress p%"),
    ("calls by state (failed)", "%c.status = $4 AND c.status IN%"),
    ("submit: COPY calls", "COPY calls%"),
]


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every 10 ms until stopped; keeps the largest."""

    def __init__(self, run, pid):
        super().__init__(daemon=True)
        self.run_mod = run
        self.pid = pid
        self.peak = 0.0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.peak = max(self.peak, self.run_mod.vm_status_mib(self.pid, "VmRSS") or 0.0)
            self.halt.wait(0.010)


def hot_statements(run, cluster, db):
    """[(label, calls, mean_ms, max_ms, rows per call)] of the HOT statements since the last
    reset."""
    out = []
    for label, pattern in HOT:
        row = cluster.psql(db, "SELECT coalesce(sum(calls), 0), "
                               "coalesce(sum(rows)::float8 / nullif(sum(calls), 0), 0), "
                               "coalesce(sum(total_exec_time) / nullif(sum(calls), 0), 0), "
                               "coalesce(max(max_exec_time), 0) FROM pg_stat_statements "
                               "WHERE dbid = (SELECT oid FROM pg_database "
                               "WHERE datname = current_database()) "
                               "AND query LIKE '%s'" % pattern.replace("'", "''"))
        n, rows, mean, mx = row.strip().split("\t")
        out.append((label, int(n), round(float(mean), 3), round(float(mx), 3),
                    round(float(rows), 1)))
    return out


def start_stack(run, args, bins, procs, cluster, db, body_len, root):
    """cofi-sim and cofid on a fresh database; returns (sim, cofid, api, ports)."""
    logs = os.path.join(run.WORK, "logs")
    os.makedirs(logs, exist_ok=True)
    cluster.fresh_database(db)
    base = run.free_port_block(run.NODES + 2)
    nlp_port, api_port = base + run.NODES, base + run.NODES + 1
    lat = run.SCENARIOS["million"]["latency_ms"]
    sim = procs.start("cofi-sim", [
        bins["cofi-sim"], "--nodes", str(run.NODES), "--base-port", str(base),
        "--node-capacity", str(run.NODE_CAPACITY), "--nlp-port", str(nlp_port),
        "--nlp-capacity", str(run.NLP_CAPACITY), "--latency-ms", run.sim_latency_arg(lat),
        "--seed", "1"], os.path.join(logs, "million-submit-sim.log"))
    for i in range(run.NODES):
        run.wait_http_ok(base + i, "/health", sim, 15, "cofi-sim")
    cfg_path = os.path.join(run.WORK, "million-submit-cofid.json")
    run.write_config(cfg_path, api_port, cluster.url(db), base, nlp_port, body_len)
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.pop("max_body_bytes")  # the default (64 MiB) must hold a million paths
    cfg["input_root"] = root
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    env = {k: v for k, v in os.environ.items()
           if k not in ("COFI_DATABASE_URL", "COFI_LISTEN", "COFI_NLP_API_KEY")}
    cofid = procs.start("cofid", [bins["cofid"], "--config", cfg_path],
                        os.path.join(logs, "million-submit-cofid.log"), env=env)
    run.wait_http_ok(api_port, "/readyz", cofid, 60, "cofid")
    return sim, cofid, run.Http(api_port)


def submit(run, cofid, api, body):
    """POST /batches; returns (batch id, seconds, VmRSS peak sampled, VmHWM, VmRSS before)."""
    rss_before = run.vm_status_mib(cofid.pid, "VmRSS")
    sampler = RssSampler(run, cofid.pid)
    sampler.start()
    t = time.monotonic()
    status, batch = api.request("POST", "/batches", body=body, timeout=600)
    submit_s = time.monotonic() - t
    sampler.halt.set()
    sampler.join()
    if status != 201 or not isinstance(batch, dict):
        raise run.BenchError("POST /batches answered %s: %s" % (status, str(batch)[:300]))
    return batch["id"], submit_s, sampler.peak, run.vm_hwm_mib(cofid.pid), rss_before


def shape_for_hot_queries(cluster, db, batch_id, calls):
    """30 % of the calls at llm1 (pending), ahead of the rest at stage 0; 0.1 % failed. The
    calls put at llm1 have no stt result: they fail there (no transcript), which keeps the NLP
    claims and flushes busy while the GPU claims take the rest."""
    cluster.psql(db, "UPDATE calls SET stage = 5 WHERE batch_id = %d AND seq < %d"
                 % (batch_id, calls * 3 // 10))
    cluster.psql(db, "UPDATE calls SET stage = 2, status = 'failed', last_error = 'bench' "
                     "WHERE batch_id = %d AND seq %% 1000 = 999" % batch_id)
    cluster.psql(db, "VACUUM ANALYZE calls")
    cluster.psql(db, "VACUUM ANALYZE batch_progress")


def ask_while_running(run, api, batch_id, seconds):
    """Runs the batch for `seconds`, asking the read endpoints every 100 ms. Returns how many
    requests were answered 200."""
    status, doc = api.request("POST", "/batches/%d/run" % batch_id, body={"mode": "pipelined"})
    if status != 202:
        raise run.BenchError("POST /run answered %s: %s" % (status, doc))
    end = time.monotonic() + seconds
    cursor = None
    ok = 0
    while time.monotonic() < end:
        tick = time.monotonic()
        q = "/batches/%d/calls?state=failed&limit=100" % batch_id
        if cursor:
            q += "&cursor=%s" % cursor
        for path in ("/batches/%d" % batch_id, "/stages/stt/status", "/stages/llm1/status", q):
            status, doc = api.request("GET", path)
            ok += status == 200
            if path == q and status == 200:
                cursor = doc.get("next_cursor")
        time.sleep(max(0.0, 0.100 - (time.monotonic() - tick)))
    return ok


def million_path(i):
    """Call i's path under .cofi/bench/million: 38 characters, as an upstream system's paths
    (the body of a million is then ~42 MB, as the issue's)."""
    return "2026-12-03/queue-%03d/call-%08d.wav" % (i // 1000, i)


def ensure_million_files(run, n):
    """.cofi/bench/million holds n calls: hard links of .cofi/bench/calls' files."""
    root = os.path.join(run.WORK, "million")
    marker = os.path.join(root, ".count")
    try:
        with open(marker) as f:
            have = int(f.read())
    except (OSError, ValueError):
        have = 0
    if have >= n:
        return root
    run.ensure_calls(n)
    run.say("linking %d files under .cofi/bench/million" % (n - have))
    for i in range(have, n):
        path = os.path.join(root, million_path(i))
        if i % 1000 == 0 or i == have:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.remove(path)
        os.link(os.path.join(run.CALLS_DIR, run.call_path(i)), path)
    with open(marker, "w") as f:
        f.write(str(n))
    return root


# The GPU claim's read as db/work_db.c's work_claim makes it (its candidates: a LATERAL over
# the batches of the claim), timed by EXPLAIN ANALYZE.
CLAIM_READ = ("WITH b AS (SELECT * FROM jsonb_to_recordset('[{\"id\": %d, \"lo\": 0, \"hi\": 4, "
              "\"lim\": 32}]') AS b(id bigint, lo int, hi int, lim int)) SELECT c.id FROM b, "
              "LATERAL (SELECT c.id FROM calls c WHERE c.batch_id = b.id "
              "AND c.status = 'pending' AND c.stage BETWEEN b.lo AND b.hi "
              "AND (c.not_before IS NULL OR c.not_before <= now()) LIMIT least(b.lim, 32) "
              "FOR UPDATE SKIP LOCKED) c LIMIT 32")
OLD_INDEX = ("DROP INDEX calls_pending_idx; CREATE INDEX calls_pending_004 ON calls (batch_id, id) "
             "WHERE status = 'pending';")


def explain_ms(cluster, db, sql_before, query):
    """Execution time of query (ms) after sql_before, all in one transaction rolled back."""
    script = "BEGIN;\n%s\nEXPLAIN (ANALYZE, FORMAT JSON) %s;\nROLLBACK;\n" % (sql_before, query)
    argv = [cluster.psql_bin, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", cluster.host,
            "-p", str(cluster.port), "-U", "postgres", "-d", db, "-f", "-"]
    r = subprocess.run(argv, input=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError("psql: %s" % r.stderr.strip())
    out = r.stdout
    doc = json.loads(out[out.index("["):out.rindex("]") + 1])
    return round(doc[0]["Execution Time"], 3)


def gpu_claim_read_ms(run, cluster, db, batch_id):
    """The GPU claim's read with this build's pending index, and with migration 004's (stage
    not in the key): 30 % of the calls waiting at llm1 ahead of the rest at stage 0."""
    q = CLAIM_READ % batch_id
    explain_ms(cluster, db, "", q)  # warm the cache
    return {
        "calls_pending_idx (batch_id, stage, id), this build": explain_ms(cluster, db, "", q),
        "(batch_id, id) of migration 004, the planner's choice": explain_ms(
            cluster, db, OLD_INDEX, q),
        "(batch_id, id) of migration 004, through the index": explain_ms(
            cluster, db, OLD_INDEX + " SET LOCAL enable_seqscan = off;", q),
    }


def million_submit(run, args, bins, procs, cluster):
    calls = args.calls or run.SCENARIOS["million"]["calls"]
    root = ensure_million_files(run, calls)
    files = [million_path(i) for i in range(calls)]
    body = json.dumps({"name": "bench million", "files": files,
                       "metadata": {"bench": "million"}}).encode()
    del files
    db = "bench_million_submit"
    sim, cofid, api = start_stack(run, args, bins, procs, cluster, db, len(body), root)
    cluster.psql(db, "SELECT pg_stat_statements_reset()")
    batch_id, submit_s, rss_sampled, hwm, rss_before = submit(run, cofid, api, body)
    run.say("million: %d calls submitted in %.2f s (%.1f MB body), cofid VmHWM %.1f MiB"
            % (calls, submit_s, len(body) / 1e6, hwm))
    submit_hot = hot_statements(run, cluster, db)
    del body
    shape_for_hot_queries(cluster, db, batch_id, calls)
    claim_ms = gpu_claim_read_ms(run, cluster, db, batch_id)
    cluster.psql(db, "SELECT pg_stat_statements_reset()")
    answered = ask_while_running(run, api, batch_id, args.hot_seconds)
    hot = hot_statements(run, cluster, db)
    hwm_end = run.vm_hwm_mib(cofid.pid)
    size = cluster.psql(db, "SELECT pg_total_relation_size('calls') / 1048576").strip()
    api.close()
    procs.stop(cofid)
    procs.stop(sim)
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scenario": "million-submit", "calls": calls, "batch_id": batch_id,
        "submit_s": round(submit_s, 3),
        "cofid_rss_before_mib": round(rss_before or 0.0, 1),
        "cofid_rss_sampled_peak_mib": round(rss_sampled, 1),
        "cofid_peak_rss_mib": round(hwm or 0.0, 1),
        "cofid_peak_rss_after_hot_mib": round(hwm_end or 0.0, 1),
        "hot_seconds": args.hot_seconds, "hot_requests_answered": answered,
        "calls_table_mib": int(size or 0), "gpu_claim_ms": claim_ms,
        "submit_statements": [list(h) for h in submit_hot if h[1] > 0],
        "hot_statements": [list(h) for h in hot],
        "commit": run.git_commit(), "tree_dirty": run.tree_dirty(),
        "cofid_sha256": bins["cofid_sha256"], "build_type": bins["build_type"],
        "machine": run.machine_info(),
    }


def print_submit(r):
    print("million-submit: %d calls, POST /batches %.2f s, cofid peak RSS %.1f MiB (sampled "
          "%.1f, before %.1f; %.1f after %s s of running), calls table %d MiB"
          % (r["calls"], r["submit_s"], r["cofid_peak_rss_mib"], r["cofid_rss_sampled_peak_mib"],
             r["cofid_rss_before_mib"], r["cofid_peak_rss_after_hot_mib"], r["hot_seconds"],
             r["calls_table_mib"]), flush=True)
    for when in ("submit", "hot"):
        for label, n, mean, mx, rows in r[when + "_statements"]:
            print("  %-6s  %-30s %7d calls  mean %9.3f ms  max %9.3f ms  %8.1f rows/call"
                  % (when, label, n, mean, mx, rows))
    for label, ms in r["gpu_claim_ms"].items():
        print("  GPU claim's read of 32 calls, %s: %.3f ms" % (label, ms))


def main(args, run):
    procs = run.Processes()
    cluster = run.Cluster()
    os.makedirs(run.OUT, exist_ok=True)
    os.makedirs(run.WORK, exist_ok=True)
    status = 0
    try:
        build_dir = os.path.abspath(args.build or os.path.join(run.ROOT, "build"))
        bins = run.prepare_binaries(build_dir, args.build is None)
        cluster.start()
        r = million_submit(run, args, bins, procs, cluster)
        run.append_result(r)
        print_submit(r)
        if not args.submit_only:
            runner = run.Runner(args, bins, procs, cluster)
            run.ensure_calls(args.makespan_calls)
            m = runner.run("million", "pipelined", args.makespan_calls)
            run.append_result(m)
            print(run.figures_line(m), flush=True)
            print("  " + m["bound_formula"], flush=True)
    except KeyboardInterrupt:
        run.say("interrupted: stopping what was started")
        status = 130
    except run.BenchError as e:
        run.say("error: %s" % e)
        status = 1
    finally:
        procs.stop_all()
        if cluster.host is not None or os.path.exists(run.PG_DIR):
            cluster.stop()
    return status
