#!/usr/bin/env python3
"""cofi's benchmark runner: one scenario, one command (see docs/BENCHMARKS.md).

    bench/run.py SCENARIO [--mode pipelined|staged|both] [--calls N] [--build DIR] [--repeat K]

Starts its own PostgreSQL (scripts/pg.sh, data in .cofi/bench-pg, port 25434), and for every
run a fresh database, cofi-sim and cofid; submits one batch, runs it, polls
GET /batches/{id} every 50 ms until it ends, and prints one line of figures per run plus the
bound with its numbers. Every run is appended as a JSON line to bench/out/results.jsonl; the
per-stage finish times of the batch go to bench/out/<scenario>-<mode>-timeline.csv and the
top SQL statements to bench/out/<scenario>-<mode>-statements.csv. Everything it started is
stopped at the end, on errors and on Ctrl-C, the PostgreSQL cluster included.

Standard library only. Benchmarks are not tests: nothing here runs under ctest.
"""

import argparse
import csv
import datetime
import decimal
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import wave

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
OUT = os.path.join(BENCH, "out")
RESULTS = os.path.join(OUT, "results.jsonl")
WORK = os.path.join(ROOT, ".cofi", "bench")
CALLS_DIR = os.path.join(WORK, "calls")
PG_DIR = os.path.join(ROOT, ".cofi", "bench-pg")
# Its own cluster's port: COFI_BENCH_PG_PORT when set (helpers that run side by side each
# take one of their own).
PG_PORT = int(os.environ.get("COFI_BENCH_PG_PORT", "25434"))
PGBIN = os.environ.get("COFI_PGBIN", "/usr/lib/postgresql/15/bin")
PLOT_PNG = os.path.join(ROOT, "docs", "bench-seed-scaled.png")

STAGES = ("distribute", "denoise", "ivr", "lid", "stt", "llm1", "llm2")
MEDIATOR_STAGES = STAGES[:5]
LLM_STAGES = STAGES[5:]
FINAL_STATES = ("completed", "completed_with_errors", "cancelled")

# The topology every scenario uses: cofi-sim's nodes and NLP API, and cofid's limits.
NODES = 4
NODE_CAPACITY = 8
NLP_CAPACITY = 100
LLM_CONCURRENCY = 100

POLL_S = 0.050

SEED_SCALED_MS = {"distribute": 10, "denoise": 10, "ivr": 10, "lid": 10, "stt": 10,
                  "llm1": 5, "llm2": 10}
LARGE_MS = {s: ms / 10 for s, ms in SEED_SCALED_MS.items()}  # cofi-sim takes fractions

# Each scenario: calls, per-stage latency of cofi-sim, the modes run by default, whether
# a poller (cofi-poll or wrk, --poller) polls the API during the run, and its targets (figure,
# comparison, limit, label).
SCENARIOS = {
    "seed-scaled": {
        "calls": 10000, "latency_ms": SEED_SCALED_MS, "modes": ("pipelined", "staged"),
        "poll": False, "targets": [],
    },
    "overhead": {
        "calls": 10000, "latency_ms": {s: 0 for s in STAGES}, "modes": ("pipelined",),
        "poll": False, "targets": [("transitions_per_s", ">=", 10000, "transitions/s")],
    },
    "large": {
        "calls": 200000, "latency_ms": LARGE_MS, "modes": ("pipelined",), "poll": False,
        "targets": [("cofid_peak_rss_mib", "<=", 128, "peak RSS MiB"),
                    ("submit_s", "<=", 5, "POST /batches s")],
    },
    # bench/million.py: POST /batches of 1,000,000 calls (submit time, resident set) and the hot
    # queries at that size while it runs; then, unless --submit-only, the makespan of a run of
    # --makespan-calls calls (100,000 by default) at these latencies.
    "million": {
        "calls": 1000000, "latency_ms": LARGE_MS, "modes": ("pipelined",), "poll": False,
        "targets": [("cofid_peak_rss_mib", "<=", 128, "peak RSS MiB"),
                    ("submit_s", "<=", 30, "POST /batches s")],
    },
    "polled": {
        "calls": 200000, "latency_ms": LARGE_MS, "modes": ("pipelined",), "poll": True,
        "targets": [("poll_requests_per_s", ">=", 5000, "poll responses/s"),
                    ("poll_p99_ms", "<=", 20, "poll p99 ms"),
                    ("slowdown_pct", "<=", 10, "% longer than large")],
    },
    # Two instances, the NLP capacity 100 -> 40 -> 100 while the batch runs (bench/adaptive.py:
    # docs/bench-adaptive.csv and .svg). Ends on the schedule, not with the batch.
    "adaptive": {
        "calls": 8000, "latency_ms": {}, "modes": ("pipelined",), "poll": False, "targets": [],
    },
}

POLLERS = ("cofi-poll", "wrk")
POLL_CONNECTIONS = 200
WRK_THREADS = 2
# Each connection sends one request every this many ms (cofi-poll --interval-ms, or
# bench/poll.lua for wrk): dashboards poll at an interval. 200 connections / 38.5 ms offer
# 5,195 requests/s.
POLL_INTERVAL_MS = 38.5

# results.jsonl lines written before cofi-poll hold wrk's figures under these keys.
WRK_KEYS = {
    "wrk_requests_per_s": "poll_requests_per_s", "wrk_p50_ms": "poll_p50_ms",
    "wrk_p90_ms": "poll_p90_ms", "wrk_p99_ms": "poll_p99_ms", "wrk_requests": "poll_requests",
    "wrk_non_2xx": "poll_non_2xx", "wrk_socket_errors": "poll_errors",
    "wrk_offered_per_s": "poll_offered_per_s", "wrk_connections": "poll_connections",
    "wrk_interval_ms": "poll_interval_ms", "wrk_threads": "poll_threads",
}


def poll_offered_per_s(interval_ms):
    """The request rate the poller's connections offer (None: as fast as answers come)."""
    return POLL_CONNECTIONS * 1000.0 / interval_ms if interval_ms > 0 else None


def normalise_result(r):
    """A results.jsonl line with today's keys (changed in place and returned). Lines from before
    cofi-poll name wrk's figures wrk_* (its p99 is from the send: it becomes poll_p99_ms and
    poll_p99_sent_ms) and wrk's CPU cpu_s["wrk"]; they get the poll_* keys, poller "wrk" and
    cpu_s["poller"]. The old keys stay."""
    if "poller" not in r and any(r.get(k) is not None for k in WRK_KEYS):
        r["poller"] = "wrk"
        for old, new in WRK_KEYS.items():
            if old in r and new not in r:
                r[new] = r[old]
        if "poll_p99_sent_ms" not in r:
            r["poll_p99_sent_ms"] = r.get("wrk_p99_ms")
    cpu = r.get("cpu_s")
    if isinstance(cpu, dict) and "wrk" in cpu and "poller" not in cpu:
        cpu["poller"] = cpu["wrk"]
    return r


class BenchError(Exception):
    """A run could not be carried out; the message says why."""


def say(msg):
    print("[bench] " + msg, file=sys.stderr, flush=True)


def fmt_s(x):
    """Seconds with two decimals, halves rounded up (15.625 -> 15.63)."""
    return str(decimal.Decimal(repr(x)).quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_UP))


def fmt_num(x):
    """A latency or count as short as it can be written: 10, 0.5."""
    return ("%.3f" % x).rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


# ---------------------------------------------------------------------------------------------
# The bound


def stage_slots(stage):
    """How many requests of `stage` the workers can work on at once."""
    if stage in MEDIATOR_STAGES:
        return NODES * NODE_CAPACITY
    return min(NLP_CAPACITY, LLM_CONCURRENCY)


def pipelined_bound(calls, lat):
    """The shortest possible pipelined run: the busiest resource's total time / its slots.
    Returns (seconds, formula with the numbers put in)."""
    med_ms = sum(lat[s] for s in MEDIATOR_STAGES)
    llm_ms = sum(lat[s] for s in LLM_STAGES)
    med_s = calls * med_ms / 1000.0 / stage_slots("stt")
    llm_s = calls * llm_ms / 1000.0 / stage_slots("llm1")
    bound = max(med_s, llm_s)
    formula = "bound = max(%d × (%s) ms / %d slots, %d × (%s) ms / %d slots) = max(%s s, %s s) = %s s" % (
        calls, "+".join(fmt_num(lat[s]) for s in MEDIATOR_STAGES), stage_slots("stt"),
        calls, "+".join(fmt_num(lat[s]) for s in LLM_STAGES), stage_slots("llm1"),
        fmt_s(med_s), fmt_s(llm_s), fmt_s(bound))
    return bound, formula


def staged_bound(calls, lat):
    """The shortest possible staged run: each stage's own bound, one stage after the other.
    Returns (seconds, formula with the numbers put in)."""
    parts = [calls * lat[s] / 1000.0 / stage_slots(s) for s in STAGES]
    bound = sum(parts)
    formula = "staged bound = %d × (%s) ms = %s s = %s s" % (
        calls, " + ".join("%s/%d" % (fmt_num(lat[s]), stage_slots(s)) for s in STAGES),
        " + ".join(fmt_s(p) for p in parts), fmt_s(bound))
    return bound, formula


# ---------------------------------------------------------------------------------------------
# Processes, CPU and memory


def read_proc_stat(pid):
    """(utime, stime, cutime, cstime) of a process in seconds, or None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return tuple(int(rest[i]) / tick for i in (11, 12, 13, 14))


def proc_cpu(pid):
    """utime + stime of a process in seconds (0 once it is gone)."""
    st = read_proc_stat(pid) if pid else None
    return st[0] + st[1] if st else 0.0


def threads_cpu(pid):
    """{tid: (name, utime + stime in seconds)} of every thread of a process."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.index("(") + 1:data.rindex(")")]
        rest = data[data.rindex(")") + 2:].split()
        out[int(tid)] = (name, (int(rest[11]) + int(rest[12])) / tick)
    return out


def tree_cpu(parent):
    """CPU seconds of a process, of its children that ended (cutime/cstime) and of its
    children alive now: for the postmaster, the whole PostgreSQL cluster."""
    st = read_proc_stat(parent) if parent else None
    if st is None:
        return 0.0
    total = sum(st)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        if int(rest[1]) == parent:
            tick = os.sysconf("SC_CLK_TCK")
            total += (int(rest[11]) + int(rest[12])) / tick
    return total


def machine_busy_cpu():
    """CPU seconds all cores spent outside idle and iowait since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / tick


def vm_status_mib(pid, key):
    """A size from /proc/<pid>/status in MiB (key "VmHWM": the peak resident set, "VmRSS":
    the resident set now), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def vm_hwm_mib(pid):
    """Peak resident set (VmHWM) of a process in MiB, or None."""
    return vm_status_mib(pid, "VmHWM")


class Processes:
    """Everything this runner started, so all of it can be stopped, in reverse order."""

    def __init__(self):
        self.running = []  # (name, Popen, log file)

    def start(self, name, argv, log_path, env=None):
        log = open(log_path, "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            log.close()
            raise BenchError("cannot start %s: %s" % (name, e))
        self.running.append((name, p, log))
        return p

    def stop(self, p, sig=signal.SIGTERM, grace=20.0):
        """Sends sig to p, waits up to grace seconds, then SIGKILL. Returns its exit code."""
        for i, (name, q, log) in enumerate(self.running):
            if q is p:
                del self.running[i]
                break
        else:
            return p.returncode
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                say("%s (pid %d) did not stop within %.0f s: SIGKILL" % (name, p.pid, grace))
                p.kill()
                p.wait()
        log.close()
        return p.returncode

    def stop_all(self):
        for name, p, log in reversed(list(self.running)):
            self.stop(p)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class Cluster:
    """The benchmark's own PostgreSQL cluster, driven through scripts/pg.sh."""

    def __init__(self):
        self.host = None
        self.port = PG_PORT
        self.psql_bin = os.path.join(PGBIN, "psql")
        if not os.access(self.psql_bin, os.X_OK):
            self.psql_bin = shutil.which("psql") or "psql"

    def _pg_sh(self, *args):
        argv = [os.path.join(ROOT, "scripts", "pg.sh")] + list(args) + [
            "--dir", PG_DIR, "--port", str(PG_PORT)]
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise BenchError("scripts/pg.sh %s failed:\n%s%s" % (args[0], r.stdout, r.stderr))
        return r.stdout

    def start(self):
        say(self._pg_sh("start").strip())
        env = self._pg_sh("env")
        m = re.search(r"COFI_TEST_PGHOST=(\S+) COFI_TEST_PGPORT=(\d+)", env)
        if m is None:
            raise BenchError("cannot read scripts/pg.sh env: %s" % env)
        self.host, self.port = m.group(1), int(m.group(2))

    def stop(self):
        try:
            self._pg_sh("stop")
        except BenchError as e:
            say(str(e))

    def url(self, db):
        return "postgresql://postgres@/%s?host=%s&port=%d" % (db, self.host, self.port)

    def psql(self, db, sql, as_csv=False):
        argv = [self.psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p",
                str(self.port), "-U", "postgres", "-d", db]
        argv += ["--csv"] if as_csv else ["-At", "-F", "\t"]
        r = subprocess.run(argv + ["-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        if r.returncode != 0:
            raise BenchError("psql (%s): %s" % (sql[:60], r.stderr.strip()))
        return r.stdout

    def fresh_database(self, db):
        self.psql("postgres", 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
        self.psql("postgres", 'CREATE DATABASE "%s"' % db)
        self.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def postmaster_pid(self):
        """The postmaster's pid, from the lock file of its unix socket."""
        try:
            with open(os.path.join(self.host, ".s.PGSQL.%d.lock" % self.port)) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None


# ---------------------------------------------------------------------------------------------
# HTTP


class Http:
    """A keep-alive HTTP/1.1 client for one host:port that reconnects when needed."""

    def __init__(self, port, timeout=30.0):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None, timeout=None):
        """Returns (status, parsed JSON or None). Raises OSError on connection trouble."""
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=timeout or self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        if timeout is not None:
            self.conn.close()
            self.conn = None
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return resp.status, doc

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_http_ok(port, path, proc, limit_s, what):
    """Waits until GET path answers 200 while proc lives."""
    deadline = time.monotonic() + limit_s
    client = Http(port, timeout=2.0)
    try:
        while True:
            try:
                status, _ = client.request("GET", path)
                if status == 200:
                    return
            except OSError:
                client.close()
            if proc.poll() is not None:
                raise BenchError("%s exited with %s before answering %s" % (what, proc.returncode, path))
            if time.monotonic() > deadline:
                raise BenchError("%s did not answer GET %s within %.0f s" % (what, path, limit_s))
            time.sleep(0.1)
    finally:
        client.close()


def free_port_block(n):
    """A first port p such that p .. p+n-1 are all free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 40000)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BenchError("found no %d free consecutive ports" % n)


# ---------------------------------------------------------------------------------------------
# Inputs: binaries and audio files


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_binaries(build_dir, default_build, extra=()):
    """Builds if needed, refuses sanitizer builds, and copies cofid, cofi-sim and the binaries
    named in extra (cofi-poll) to .cofi/bench/bin so a rebuild during the runs does not change
    what is measured. Returns {"cofid": path, "cofi-sim": path, ...}."""
    names = ("cofid", "cofi-sim") + tuple(extra)
    missing = [n for n in names if not os.access(os.path.join(build_dir, n), os.X_OK)]
    if missing:
        if not default_build:
            raise BenchError("%s has no %s: build it first" % (build_dir, ", ".join(missing)))
        say("no binaries in build/: running scripts/build.sh")
        r = subprocess.run([os.path.join(ROOT, "scripts", "build.sh")],
                           stdout=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError("scripts/build.sh failed")
    cache = os.path.join(build_dir, "CMakeCache.txt")
    build_type = None
    if os.path.exists(cache):
        with open(cache) as f:
            text = f.read()
        for opt in ("COFI_SANITIZE", "COFI_TSAN"):
            if re.search(r"^%s:BOOL=ON$" % opt, text, re.M):
                raise BenchError("%s is a sanitizer build (%s=ON): benchmark a plain build "
                                 "(scripts/build.sh)" % (build_dir, opt))
        m = re.search(r"^CMAKE_BUILD_TYPE:STRING=(.*)$", text, re.M)
        build_type = m.group(1) if m else None
    bindir = os.path.join(WORK, "bin")
    os.makedirs(bindir, exist_ok=True)
    out = {"build_dir": build_dir, "build_type": build_type}
    for n in names:
        src = os.path.join(build_dir, n)
        with open(src, "rb") as f:
            blob = f.read()
        if b"__asan_init" in blob or b"__tsan_init" in blob:
            raise BenchError("%s is built with a sanitizer: benchmark a plain build" % src)
        dst = os.path.join(bindir, n)
        tmp = dst + ".tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)
        out[n] = dst
        out[n + "_sha256"] = hashlib.sha256(blob).hexdigest()[:16]
        out[n + "_built"] = datetime.datetime.fromtimestamp(
            os.path.getmtime(src), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def tiny_wav():
    """A valid 20 ms WAV (8 kHz mono 16-bit, silence): 364 bytes."""
    buf = io.BytesIO()
    w = wave.open(buf, "wb")
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(8000)
    w.writeframes(b"\0\0" * 160)
    w.close()
    return buf.getvalue()


def call_path(i):
    """The path of call i relative to the input root: 1,000 files per folder."""
    return "d%03d/c%06d.wav" % (i // 1000, i)


def ensure_calls(n):
    """Makes sure .cofi/bench/calls holds at least n tiny audio files (kept between runs)."""
    marker = os.path.join(CALLS_DIR, ".count")
    have = 0
    try:
        with open(marker) as f:
            have = int(f.read())
    except (OSError, ValueError):
        have = 0
    if have >= n:
        return
    say("writing %d audio files under .cofi/bench/calls" % (n - have))
    blob = tiny_wav()
    for i in range(have, n):
        path = os.path.join(CALLS_DIR, call_path(i))
        if i % 1000 == 0 or i == have:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.remove(path)
        # The files of a folder are hard links of its first one: a million calls take a
        # thousand inodes, and seconds to make.
        first = os.path.join(CALLS_DIR, call_path(i - i % 1000))
        if i % 1000 != 0 and os.path.exists(first):
            os.link(first, path)
            continue
        with open(path, "wb") as f:
            f.write(blob)
    with open(marker, "w") as f:
        f.write(str(n))


# ---------------------------------------------------------------------------------------------
# The poller: cofi-poll (bench/poller.c) or wrk with bench/poll.lua


def parse_duration_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(text):
    """The poll_* figures of wrk's --latency report. wrk times a request from its send, so its
    p99 fills both poll_p99_ms and poll_p99_sent_ms."""
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["poll_requests_per_s"] = float(m.group(1)) if m else None
    for pct in ("50", "90", "99"):
        m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s|m)\s*$" % pct, text, re.M)
        out["poll_p%s_ms" % pct] = parse_duration_ms(*m.groups()) if m else None
    out["poll_p99_sent_ms"] = out["poll_p99_ms"]
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    out["poll_requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["poll_non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["poll_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return out


def parse_cofi_poll(path):
    """The poll_* figures of the JSON object cofi-poll --json wrote. Latencies are from the
    due time less the poller's own lateness (poll_p*_ms), from the due time (poll_p*_due_ms),
    from the send (poll_p*_sent_ms), and the lateness itself (poll_p*_late_ms)."""
    with open(path) as f:
        doc = json.load(f)
    out = {
        "poll_requests_per_s": doc["responses_per_s"], "poll_requests": doc["requests"],
        "poll_non_2xx": doc["non_2xx"], "poll_errors": doc["errors"],
        "poll_errors_by_kind": doc.get("errors_by_kind"), "poll_reconnects": doc.get("reconnects"),
        "poll_skipped": doc.get("skipped"), "poll_unfinished": doc.get("unfinished"),
        "poll_threads": doc.get("threads"), "poll_tick_us": doc.get("tick_us"),
        "poll_cpu_us_per_response": doc.get("cpu_us_per_response"),
    }
    for q in ("p50", "p90", "p99", "p999", "max"):
        for kind in ("", "_due", "_sent", "_late"):
            out["poll_%s%s_ms" % (q, kind)] = doc.get("%s%s_ms" % (q, kind))
    return out


def poller_argv(args, bins, port, batch_id, json_path):
    """The command line of the poller chosen by --poller for a batch on 127.0.0.1:port."""
    url = "http://127.0.0.1:%d" % port
    if args.poller == "wrk":
        return ["wrk", "-t%d" % WRK_THREADS, "-c%d" % POLL_CONNECTIONS, "-d10h", "--latency",
                "-s", os.path.join(BENCH, "poll.lua"), url, "--", str(batch_id),
                "%g" % args.poll_interval_ms, str(POLL_CONNECTIONS // WRK_THREADS)]
    return [bins["cofi-poll"], "--connections", str(POLL_CONNECTIONS), "--interval-ms",
            "%g" % args.poll_interval_ms, "--json", json_path, url,
            "/batches/%s" % batch_id, "/stages/llm1/status"]


# ---------------------------------------------------------------------------------------------
# One run


def machine_info():
    info = {"nproc": os.cpu_count()}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_gib"] = round(int(line.split()[1]) / 1048576.0, 1)
    except OSError:
        pass
    try:
        r = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True)
        m = re.search(r"^Model name:\s*(.+)$", r.stdout, re.M)
        info["cpu_model"] = m.group(1).strip() if m else None
    except OSError:
        info["cpu_model"] = None
    return info


def git_commit():
    try:
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return r.stdout.strip() or None
    except OSError:
        return None


def tree_dirty():
    """True when the working tree differs from HEAD (the binaries may hold uncommitted work)."""
    try:
        r = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 1
    except OSError:
        return None


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def sim_latency_arg(lat):
    return ",".join("%s=%s" % ("upload" if s == "distribute" else s, fmt_num(lat[s]))
                    for s in STAGES)


def write_config(path, port, db_url, base_port, nlp_port, body_bytes, polled=False):
    cfg = {
        "listen": "127.0.0.1:%d" % port,
        "database_url": db_url,
        "input_root": CALLS_DIR,
        "max_body_bytes": max(64 << 20, 4 * body_bytes),
        "nodes": [{"id": "gpu-%d" % (i + 1), "url": "http://127.0.0.1:%d" % (base_port + i),
                   "capacity": NODE_CAPACITY} for i in range(NODES)],
        "mediator": {"timeout_ms": 600000, "max_attempts": 5},
        "llm": {"url": "http://127.0.0.1:%d" % nlp_port, "concurrency": LLM_CONCURRENCY,
                "timeout_ms": 600000, "max_attempts": 5},
        "shutdown_grace_ms": 10000,
    }
    if polled:
        # Every poller connection comes from 127.0.0.1 (200 of them): no per-client limit.
        # Only then, so that builds older than that key (bench/ab.py) run the other scenarios.
        cfg["http"] = {"max_connections_per_client": 0}
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def sql_totals(cluster, db):
    """(statements, total execution ms) PostgreSQL ran in db since the last reset, the
    runner's own left out."""
    out = cluster.psql(db, "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0) "
                           "FROM pg_stat_statements "
                           "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                           "AND query NOT ILIKE '%pg_stat_statements%'")
    n, ms = out.strip().split("\t")
    return int(n), float(ms)


def top_statements(cluster, db, path, n=10):
    """Writes the n statements with the largest total time to path (CSV); returns the top 5."""
    sql = ("SELECT calls, round(total_exec_time::numeric, 1) AS total_ms, "
           "round(mean_exec_time::numeric, 3) AS mean_ms, rows, "
           "regexp_replace(query, '\\s+', ' ', 'g') AS query FROM pg_stat_statements "
           "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
           "AND query NOT ILIKE '%%pg_stat_statements%%' "
           "ORDER BY total_exec_time DESC LIMIT %d" % n)
    text = cluster.psql(db, sql, as_csv=True)
    with open(path, "w") as f:
        f.write(text)
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{"calls": int(r["calls"]), "total_ms": float(r["total_ms"]),
             "mean_ms": float(r["mean_ms"]), "query": r["query"][:240]} for r in rows[:5]]


def export_timeline(cluster, db, batch_id, path):
    """Writes stage, state and finished_s (seconds after the batch's started_at) of every
    call_stages row of the batch to path (CSV with a header)."""
    names = ",".join("'%s'" % s for s in STAGES)
    quoted = path.replace("'", "''")
    cluster.psql(db, "\\copy (SELECT (ARRAY[%s])[cs.stage + 1] AS stage, cs.state, "
                     "round(extract(epoch FROM cs.finished_at - b.started_at)::numeric, 6) "
                     "AS finished_s FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
                     "JOIN batches b ON b.id = c.batch_id WHERE c.batch_id = %d "
                     "ORDER BY 3) TO '%s' WITH (FORMAT csv, HEADER)" % (names, batch_id, quoted))


class Runner:
    """Runs scenarios against one PostgreSQL cluster with one pair of binaries."""

    def __init__(self, args, bins, procs, cluster):
        self.args = args
        self.bins = bins
        self.procs = procs
        self.cluster = cluster
        self.machine = machine_info()
        self.commit = git_commit()
        self.dirty = tree_dirty()

    def run(self, scenario, mode, calls):
        """One run of a scenario in one mode. Returns its result (a dict)."""
        sc = SCENARIOS[scenario]
        lat = sc["latency_ms"]
        tag = "%s-%s" % (scenario, mode)
        db = "bench_" + tag.replace("-", "_")
        logs = os.path.join(WORK, "logs")
        os.makedirs(logs, exist_ok=True)
        self.cluster.fresh_database(db)

        base = free_port_block(NODES + 2)
        nlp_port = base + NODES
        api_port = base + NODES + 1
        sim = self.procs.start("cofi-sim", [
            self.bins["cofi-sim"], "--nodes", str(NODES), "--base-port", str(base),
            "--node-capacity", str(NODE_CAPACITY), "--nlp-port", str(nlp_port),
            "--nlp-capacity", str(NLP_CAPACITY), "--latency-ms", sim_latency_arg(lat),
            "--seed", "1"], os.path.join(logs, tag + "-sim.log"))
        for i in range(NODES):
            wait_http_ok(base + i, "/health", sim, 15, "cofi-sim")
        wait_http_ok(nlp_port, "/stats", sim, 15, "cofi-sim")

        files = [call_path(i) for i in range(calls)]
        body = json.dumps({"name": "bench %s %s" % (scenario, mode), "files": files,
                           "metadata": {"bench": scenario}}).encode()
        cfg_path = os.path.join(WORK, tag + "-cofid.json")
        write_config(cfg_path, api_port, self.cluster.url(db), base, nlp_port, len(body),
                     sc["poll"])
        env = {k: v for k, v in os.environ.items()
               if k not in ("COFI_DATABASE_URL", "COFI_LISTEN", "COFI_NLP_API_KEY")}
        cofid = self.procs.start("cofid", [self.bins["cofid"], "--config", cfg_path],
                                 os.path.join(logs, tag + "-cofid.log"), env=env)
        wait_http_ok(api_port, "/readyz", cofid, 60, "cofid")
        api = Http(api_port)

        # Submission, timed from the first byte sent to the last byte of the reply.
        self.cluster.psql(db, "SELECT pg_stat_statements_reset()")
        t = time.monotonic()
        status, batch = api.request("POST", "/batches", body=body, timeout=600)
        submit_s = time.monotonic() - t
        if status != 201 or not isinstance(batch, dict):
            raise BenchError("POST /batches answered %s: %s" % (status, str(batch)[:300]))
        batch_id = batch["id"]
        say("%s: batch %s with %d calls submitted in %.2f s" % (tag, batch_id, calls, submit_s))
        submit_sql = sql_totals(self.cluster, db)
        # What the submission itself took (VmHWM so far), apart from what the run holds: the
        # largest resident set seen at the polls of the run (every 50 ms), and at its end.
        rss_submit = vm_hwm_mib(cofid.pid)
        rss_run_max = 0.0

        # The run: from just before POST /run to the poll that sees the batch final.
        self.cluster.psql(db, "SELECT pg_stat_statements_reset()")
        pm = self.cluster.postmaster_pid()
        load_before = loadavg()
        if load_before > (os.cpu_count() or 1) * 0.5:
            say("note: load average %.1f before the run on %d cores: other work shares the "
                "machine, figures will be noisy" % (load_before, os.cpu_count() or 1))
        cpu0 = {"cofid": proc_cpu(cofid.pid), "sim": proc_cpu(sim.pid),
                "postgres": tree_cpu(pm), "machine": machine_busy_cpu()}
        threads0 = threads_cpu(cofid.pid)
        poller = None
        poller_log = os.path.join(logs, "%s-%s.log" % (tag, self.args.poller))
        poller_json = os.path.join(logs, tag + "-cofi-poll.json")
        if sc["poll"]:
            if os.path.exists(poller_json):
                os.remove(poller_json)
            poller = self.procs.start(self.args.poller, poller_argv(
                self.args, self.bins, api_port, batch_id, poller_json), poller_log)
        perf = None
        if self.args.perf:
            perf = self.procs.start("perf", [
                "perf", "record", "-F", "299", "-g", "-p", str(cofid.pid), "-o",
                os.path.join(OUT, tag + "-perf.data")], os.path.join(logs, tag + "-perf.log"))
        t0 = time.monotonic()
        status, doc = api.request("POST", "/batches/%s/run" % batch_id, body={"mode": mode})
        if status != 202:
            raise BenchError("POST /batches/%s/run answered %s: %s" % (batch_id, status, doc))
        polls = 0
        deadline = t0 + self.args.timeout
        while True:
            tick = time.monotonic()
            status, doc = api.request("GET", "/batches/%s" % batch_id)
            polls += 1
            rss_run_max = max(rss_run_max, vm_status_mib(cofid.pid, "VmRSS") or 0.0)
            if status == 200 and doc.get("state") in FINAL_STATES and doc.get("finished_at"):
                break
            for name, p in (("cofid", cofid), ("cofi-sim", sim), (self.args.poller, poller)):
                if p is not None and p.poll() is not None:
                    raise BenchError("%s exited (%s) during the run" % (name, p.returncode))
            if tick > deadline:
                raise BenchError("batch %s not final after %.0f s: %s" % (
                    batch_id, self.args.timeout, json.dumps(doc)[:400]))
            time.sleep(max(0.0, POLL_S - (time.monotonic() - tick)))
        observed_s = time.monotonic() - t0
        poller_cpu = proc_cpu(poller.pid) if poller else 0.0
        if poller:
            self.procs.stop(poller, sig=signal.SIGINT, grace=30)
        cpu1 = {"cofid": proc_cpu(cofid.pid), "sim": proc_cpu(sim.pid),
                "postgres": tree_cpu(pm), "machine": machine_busy_cpu()}
        threads1 = threads_cpu(cofid.pid)
        statements, sql_ms = sql_totals(self.cluster, db)
        top = top_statements(self.cluster, db, os.path.join(OUT, tag + "-statements.csv"))

        result = {}
        if perf:
            self.procs.stop(perf, sig=signal.SIGINT, grace=60)
            report = subprocess.run(
                ["perf", "report", "-i", os.path.join(OUT, tag + "-perf.data"), "--no-children",
                 "--sort", "dso,symbol", "--stdio", "-g", "none", "--percent-limit", "0.5"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            with open(os.path.join(OUT, tag + "-perf.txt"), "w") as f:
                f.write(report.stdout)
            say("perf profile of cofid: bench/out/%s-perf.txt" % tag)
        if poller and self.args.poller == "wrk":
            with open(poller_log) as f:
                result.update(parse_wrk(f.read()))
        elif poller:
            try:
                result.update(parse_cofi_poll(poller_json))
            except (OSError, ValueError, KeyError) as e:
                raise BenchError("cofi-poll (exit %s) left no figures in %s: %s; see %s" % (
                    poller.returncode, poller_json, e, poller_log))

        _, nlp_stats = Http(nlp_port).request("GET", "/stats")
        node_max = []
        for i in range(NODES):
            _, st = Http(base + i).request("GET", "/stats")
            node_max.append(st.get("max_in_flight") if st else None)
        row = self.cluster.psql(db, "SELECT extract(epoch FROM finished_at - started_at), state "
                                    "FROM batches WHERE id = %d" % batch_id).strip().split("\t")
        makespan = float(row[0])
        rss = vm_hwm_mib(cofid.pid)
        rss_end = vm_status_mib(cofid.pid, "VmRSS")
        export_timeline(self.cluster, db, batch_id, os.path.join(OUT, tag + "-timeline.csv"))
        api.close()
        self.procs.stop(cofid)
        self.procs.stop(sim)

        failed = {s["name"]: s["failed"] for s in doc.get("stages", []) if s.get("failed")}
        pb, pformula = pipelined_bound(calls, lat)
        sb, sformula = staged_bound(calls, lat)
        bound, formula = (sb, sformula) if mode == "staged" else (pb, pformula)
        cpu = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
        cpu["poller"] = round(poller_cpu, 2)
        # cofid's CPU over the run by thread name (cofid names its threads: cofi-mediator,
        # cofi-llm (all of them together), cofi-flusher, cofi-dispatch, cofid for HTTP...).
        by_name = {}
        for tid, (name, t) in threads1.items():
            by_name[name] = by_name.get(name, 0.0) + t - threads0.get(tid, (name, 0.0))[1]
        busy = sorted(by_name.items(), key=lambda x: -x[1])
        cpu["cofid_threads"] = [[name, round(t, 2)] for name, t in busy[:8]]
        result.update({
            "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "scenario": scenario, "mode": mode, "calls": calls, "batch_id": batch_id,
            "state": row[1], "failed_by_stage": failed,
            "makespan_s": round(makespan, 3), "observed_s": round(observed_s, 3),
            "bound_s": bound, "bound_formula": formula,
            "pipelined_bound_s": round(pb, 3), "staged_bound_s": round(sb, 3),
            "efficiency": round(bound / makespan, 4) if makespan > 0 else None,
            "transitions_per_s": round(len(STAGES) * calls / makespan, 1),
            "cofid_cpu_s": cpu["cofid"],
            "cofid_peak_rss_mib": round(rss, 1) if rss is not None else None,
            "cofid_rss_after_submit_mib": round(rss_submit, 1) if rss_submit is not None else None,
            "cofid_rss_run_max_mib": round(rss_run_max, 1),
            "cofid_rss_end_mib": round(rss_end, 1) if rss_end is not None else None,
            "sql_statements": statements, "sql_per_call": round(statements / calls, 2),
            "nlp_max_in_flight": nlp_stats.get("max_in_flight") if nlp_stats else None,
            "node_max_in_flight": node_max,
            "sql_exec_ms": round(sql_ms, 1),
            "submit_s": round(submit_s, 3), "submit_sql_statements": submit_sql[0],
            "submit_sql_exec_ms": round(submit_sql[1], 1), "polls": polls,
            "cpu_s": cpu, "loadavg_before": load_before,
            "latency_ms": lat, "nodes": NODES, "node_capacity": NODE_CAPACITY,
            "nlp_capacity": NLP_CAPACITY, "llm_concurrency": LLM_CONCURRENCY,
            "commit": self.commit, "tree_dirty": self.dirty, "cofid_sha256": self.bins["cofid_sha256"],
            "cofid_built": self.bins["cofid_built"], "sim_sha256": self.bins["cofi-sim_sha256"], "build_type": self.bins["build_type"],
            "machine": self.machine, "top_statements": top,
        })
        if poller:
            result["poller"] = self.args.poller
            if self.args.poller == "wrk":
                result["poll_threads"] = WRK_THREADS
            else:
                result["poller_sha256"] = self.bins["cofi-poll_sha256"]
            result["poll_connections"] = POLL_CONNECTIONS
            result["poll_interval_ms"] = self.args.poll_interval_ms
            offered = poll_offered_per_s(self.args.poll_interval_ms)
            result["poll_offered_per_s"] = round(offered, 1) if offered else None
        return result


# ---------------------------------------------------------------------------------------------
# Reporting


def check_targets(scenario, r):
    """[(label, value, comparison, limit, met)] for the scenario's targets."""
    out = []
    for key, cmp, limit, label in SCENARIOS[scenario]["targets"]:
        v = r.get(key)
        if v is None:
            continue
        met = v >= limit if cmp == ">=" else v <= limit
        out.append((label, v, cmp, limit, met))
    return out


def cpu_line(r):
    """Where the CPU went over a run: cofid by thread, PostgreSQL, cofi-sim, the machine."""
    c = r["cpu_s"]
    threads = ", ".join("%s %.2f" % (n, t) for n, t in c.get("cofid_threads", []) if t >= 0.05)
    poller = ", %s %.2f" % (r["poller"], c["poller"]) if r.get("poller") and "poller" in c else ""
    return "  cpu s: cofid %.2f (%s), postgres %.2f, sim %.2f%s, machine %.2f of %.2f" % (
        c["cofid"], threads, c["postgres"], c["sim"], poller, c["machine"],
        (os.cpu_count() or 1) * r["observed_s"] if r.get("observed_s") else 0.0)


def figures_line(r):
    """The one line of figures of a run."""
    parts = [
        "%d calls" % r["calls"],
        "makespan %.2f s" % r["makespan_s"],
        "%s %s s" % ("staged bound" if r["mode"] == "staged" else "bound", fmt_s(r["bound_s"])),
        "efficiency %.3f" % r["efficiency"] if r["efficiency"] is not None else "efficiency -",
        "%.0f transitions/s" % r["transitions_per_s"],
        "cofid CPU %.2f s" % r["cofid_cpu_s"],
        "peak RSS %.1f MiB%s" % (r["cofid_peak_rss_mib"], (
            " (%.1f after POST /batches; during the run at most %.1f, %.1f at the end)" % (
                r["cofid_rss_after_submit_mib"], r["cofid_rss_run_max_mib"],
                r["cofid_rss_end_mib"])
            if r.get("cofid_rss_run_max_mib") and r.get("cofid_rss_after_submit_mib") is not None
            and r.get("cofid_rss_end_mib") is not None else "")),
        "%.2f SQL statements/call" % r["sql_per_call"],
        "NLP max in flight %s" % r["nlp_max_in_flight"],
    ]
    if r["scenario"] in ("large", "polled", "million"):
        parts.append("POST /batches %.2f s" % r["submit_s"])
    if r.get("poll_requests_per_s") is not None:
        offered = r.get("poll_offered_per_s")
        if r.get("poller", "wrk") == "wrk":
            p99 = "p99 %.1f ms from the send" % (r["poll_p99_ms"] or 0)
        else:
            p99 = ("p99 %.1f ms from the due time less the poller's lateness (%.1f ms from the "
                   "due time, %.1f ms from the send; the poller's own lateness p99 %.1f ms)" % (
                       r["poll_p99_ms"] or 0, r.get("poll_p99_due_ms") or 0,
                       r.get("poll_p99_sent_ms") or 0, r.get("poll_p99_late_ms") or 0))
        parts.append("%s %.0f responses/s (%s offered), %s, %d non-2xx, %d errors" % (
            r.get("poller", "wrk"), r["poll_requests_per_s"],
            "%.0f/s" % offered if offered else "unlimited", p99, r.get("poll_non_2xx") or 0,
            r.get("poll_errors") or 0))
    if r.get("baseline_makespan_s"):
        parts.append("makespan %+.1f %% vs large (%.2f s)" % (r["slowdown_pct"],
                                                             r["baseline_makespan_s"]))
    if r["state"] != "completed":
        parts.append("state %s %s" % (r["state"], json.dumps(r["failed_by_stage"])))
    targets = check_targets(r["scenario"], r)
    if targets:
        parts.append("targets: " + ", ".join(
            "%s %s %s %s" % (label, fmt_num(round(v, 2) if isinstance(v, float) else v), cmp, fmt_num(limit)) +
            (" ok" if met else " MISSED") for label, v, cmp, limit, met in targets))
    return "%s %s: %s" % (r["scenario"], r["mode"], ", ".join(parts))


def append_result(r):
    os.makedirs(OUT, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(r, sort_keys=True) + "\n")


def last_result(scenario, calls, cofid_sha):
    """The last result of scenario with that many calls and the same cofid binary, or None."""
    found = None
    try:
        with open(RESULTS) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if (r.get("scenario") == scenario and r.get("calls") == calls
                        and r.get("cofid_sha256") == cofid_sha):
                    found = normalise_result(r)
    except OSError:
        pass
    return found


def median_line(scenario, mode, runs):
    keys = ("makespan_s", "efficiency", "transitions_per_s", "cofid_cpu_s", "cofid_peak_rss_mib",
            "sql_per_call", "submit_s", "poll_requests_per_s", "poll_p99_ms", "poll_p99_sent_ms")
    parts = []
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            parts.append("%s %s" % (k, fmt_num(round(statistics.median(vals), 3))))
    return "%s %s: median of %d runs: %s" % (scenario, mode, len(runs), ", ".join(parts))


def plot_python():
    """A python that can import matplotlib (the apt package is for /usr/bin/python3)."""
    for py in (sys.executable, "/usr/bin/python3"):
        if py and os.access(py, os.X_OK) and subprocess.run(
                [py, "-c", "import matplotlib"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL).returncode == 0:
            return py
    return None


def run_plot():
    py = plot_python()
    if py is None:
        say("no python with matplotlib (scripts/deps.sh --bench installs it): no plot")
        return
    r = subprocess.run([py, os.path.join(BENCH, "plot.py")])
    if r.returncode != 0:
        say("bench/plot.py failed")


# ---------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(
        prog="bench/run.py", description="Runs one cofi benchmark scenario (docs/BENCHMARKS.md).")
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--mode", choices=("pipelined", "staged", "both"),
                    help="run mode (default: both for seed-scaled, pipelined otherwise)")
    ap.add_argument("--calls", type=int, help="number of calls (default: the scenario's)")
    ap.add_argument("--build", help="folder with cofid, cofi-sim and cofi-poll (default: "
                                    "build/, built with scripts/build.sh when missing)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode; prints the medians")
    ap.add_argument("--fresh-baseline", action="store_true",
                    help="polled: run large first even when results.jsonl has a large result "
                         "of the same binary and size")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds a run may take before it is abandoned (default 3600)")
    ap.add_argument("--perf", action="store_true",
                    help="profile cofid with perf record during the run (bench/out/*-perf.txt); "
                         "adds overhead, so not for the figures")
    ap.add_argument("--no-plot", action="store_true", help="seed-scaled: do not draw the plot")
    ap.add_argument("--poller", choices=POLLERS, default="cofi-poll",
                    help="polled: what polls the API (default cofi-poll, built into the build "
                         "folder, latency from the due time; wrk: wrk with bench/poll.lua, "
                         "latency from the send)")
    ap.add_argument("--poll-interval-ms", "--wrk-interval-ms", dest="poll_interval_ms",
                    type=float, default=POLL_INTERVAL_MS,
                    help="polled: each of the %d poller connections sends one request every "
                         "this many ms (default %g: %.0f requests/s offered; 0: a closed loop, "
                         "the next request as soon as an answer arrives). --wrk-interval-ms is "
                         "an alias" % (POLL_CONNECTIONS, POLL_INTERVAL_MS,
                                       poll_offered_per_s(POLL_INTERVAL_MS)))
    ap.add_argument("--submit-only", action="store_true",
                    help="million: submit and time the hot queries at that size, but no "
                         "makespan run")
    ap.add_argument("--makespan-calls", type=int, default=100000,
                    help="million: calls of the run whose makespan is measured (default "
                         "100000; a million would take most of an hour on two cores)")
    ap.add_argument("--hot-seconds", type=float, default=30,
                    help="million: seconds the batch runs while the hot queries are timed "
                         "(default 30)")
    args = ap.parse_args()
    if args.calls is not None and args.calls < 1:
        ap.error("--calls must be at least 1")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.poll_interval_ms < 0:
        ap.error("--poll-interval-ms must be at least 0")
    return args


def on_signal(signum, frame):
    raise KeyboardInterrupt


def main():
    args = parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    sc = SCENARIOS[args.scenario]
    calls = args.calls or sc["calls"]
    if args.mode is None:
        modes = sc["modes"]
    elif args.mode == "both":
        modes = ("pipelined", "staged")
    else:
        modes = (args.mode,)
    if sc["poll"] and args.poller == "wrk" and shutil.which("wrk") is None:
        say("wrk is missing: scripts/deps.sh --bench installs it")
        return 1

    if args.scenario == "million":
        import million  # bench/million.py, beside this file
        return million.main(args, sys.modules[__name__])
    elif args.submit_only:
        say("--submit-only is for the million scenario")
        return 2

    procs = Processes()
    cluster = Cluster()
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    status = 0
    try:
        default_build = args.build is None
        build_dir = os.path.abspath(args.build or os.path.join(ROOT, "build"))
        poller_bins = ("cofi-poll",) if sc["poll"] and args.poller == "cofi-poll" else ()
        bins = prepare_binaries(build_dir, default_build, poller_bins)
        ensure_calls(calls)
        cluster.start()
        runner = Runner(args, bins, procs, cluster)
        if args.scenario == "adaptive":
            import adaptive
            r = adaptive.run_adaptive(sys.modules[__name__], bins, procs, cluster, calls)
            for line in r["lines"]:
                print("adaptive: " + line, flush=True)
            print("adaptive: most NLP requests at once %d; limit history (oldest first): %s" % (
                r["max_concurrent"], [(h["limit"], h["reason"]) for h in reversed(r["history"])]),
                flush=True)
            say("wrote docs/bench-adaptive.csv and docs/bench-adaptive.svg")
            return 0

        baseline = None
        if args.scenario == "polled":
            baseline = None if args.fresh_baseline else last_result("large", calls,
                                                                    bins["cofid_sha256"])
            if baseline is None:
                say("no large result of this binary with %d calls: running large first" % calls)
                baseline = runner.run("large", "pipelined", calls)
                append_result(baseline)
                print(figures_line(baseline), flush=True)
                print("  " + baseline["bound_formula"], flush=True)
            else:
                say("baseline: large of %s, makespan %.2f s" % (baseline["time"],
                                                                baseline["makespan_s"]))

        by_mode = {}
        for mode in modes:
            for _ in range(args.repeat):
                r = runner.run(args.scenario, mode, calls)
                if baseline is not None:
                    r["baseline_makespan_s"] = baseline["makespan_s"]
                    r["baseline_time"] = baseline["time"]
                    r["slowdown_pct"] = round(
                        100.0 * (r["makespan_s"] / baseline["makespan_s"] - 1.0), 1)
                append_result(r)
                print(figures_line(r), flush=True)
                print("  " + r["bound_formula"], flush=True)
                print(cpu_line(r), flush=True)
                by_mode.setdefault(mode, []).append(r)
        if args.repeat > 1:
            for mode, runs in by_mode.items():
                print(median_line(args.scenario, mode, runs), flush=True)
        if "pipelined" in by_mode and "staged" in by_mode:
            p = statistics.median(r["makespan_s"] for r in by_mode["pipelined"])
            s = statistics.median(r["makespan_s"] for r in by_mode["staged"])
            print("%s: staged / pipelined makespan = %.2f s / %.2f s = %.2f" % (
                args.scenario, s, p, s / p), flush=True)
            if args.scenario == "seed-scaled" and not args.no_plot:
                run_plot()
    except KeyboardInterrupt:
        say("interrupted: stopping what was started")
        status = 130
    except BenchError as e:
        say("error: %s" % e)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if cluster.host is not None or os.path.exists(PG_DIR):
            cluster.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
