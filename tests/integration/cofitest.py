"""Harness of cofi's black-box integration tests: a private database, cofi-sim, cofid, and HTTP
whose every response is checked against the served OpenAPI description.

Each test module is one unittest.TestCase built on CofiCase. Its setUpClass creates a database
`cofi_t_<random>` on the PostgreSQL named by COFI_TEST_PGHOST/COFI_TEST_PGPORT/COFI_TEST_PGUSER
(scripts/test.sh starts one), a work folder, and then calls the class's prepare(), which starts
the processes it needs on free loopback ports. Everything is stopped and dropped at the end.
The binaries come from COFID and COFI_SIM (set by ctest, see tests/CMakeLists.txt).
Deadlines written as scaled(seconds) stretch by COFI_TEST_SLOW (default 1), times 3 when COFID
is a sanitizer build (build-asan/, build-tsan/).

Standard library only, plus jsonschema / openapi_schema_validator / referencing for checking
responses against the API description.
"""

import atexit
import copy
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
from datetime import datetime

SOURCE_DIR = os.environ.get("COFI_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGES = ["distribute", "denoise", "ivr", "lid", "stt", "llm1", "llm2"]
MEDIATOR_STAGES = STAGES[:5]
NODE_ENDPOINTS = ["upload", "denoise", "ivr", "lid", "stt"]  # sim endpoint of each mediator stage
LLM_ENDPOINTS = ["llm1", "llm2"]
FINAL_BATCH_STATES = ("completed", "completed_with_errors", "cancelled")

# Variables that would override the configuration file of a cofid we start (CONTRACTS §6).
_COFID_ENV_OVERRIDES = ("COFI_DATABASE_URL", "COFI_LISTEN", "COFI_NLP_API_KEY",
                        "COFI_TOKEN_OPS", "COFI_TOKEN_DASH")


class HarnessError(RuntimeError):
    """The test environment is not usable (missing variable, binary, database...)."""


def log(msg):
    """Prints one line of test narration on stderr (ctest shows it with --output-on-failure)."""
    sys.stderr.write("[cofitest] %s\n" % msg)
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------
# Waiting


def _slow_factor():
    f = float(os.environ.get("COFI_TEST_SLOW", "1"))
    cofid = os.environ.get("COFID", "")
    if "build-asan" in cofid or "build-tsan" in cofid:
        f *= 3
    return f


# How much slower than an idle machine with a plain build this run may be: COFI_TEST_SLOW
# (default 1), times 3 for a sanitizer build of cofid. Deadlines are scaled(seconds).
SLOW = _slow_factor()


def scaled(seconds):
    """A deadline of `seconds` on an idle machine, stretched by SLOW."""
    return seconds * SLOW

def poll(fn, timeout, interval=0.05, what=None, progress=None):
    """Calls fn until it returns a truthy value, which is returned; raises AssertionError
    naming `what` and the last value seen once `timeout` seconds have passed.

    With `progress` (a function called after each fn), the timeout counts from the last time
    its value changed: a wait for something that keeps moving (a batch whose counts grow) fails
    when it stops moving for `timeout` seconds, not because a busy machine made it slow; but
    never later than 10 * timeout in all."""
    start = time.monotonic()
    deadline = start + timeout
    hard = start + 10 * timeout if progress is not None else deadline
    last = None
    seen = None
    while True:
        last = fn()
        if last:
            return last
        now = time.monotonic()
        if progress is not None:
            value = progress()
            if value != seen:
                seen = value
                deadline = min(now + timeout, hard)
        if now >= deadline:
            still = " (no progress for %.1f s)" % timeout if progress is not None else ""
            raise AssertionError("timed out after %.1f s%s waiting for %s; last value: %s"
                                 % (now - start, still,
                                    what or getattr(fn, "__name__", "a condition"),
                                    _short(last)))
        time.sleep(interval)


def batch_progress(batch):
    """What moves while a batch runs: its done, failed and skipped counts per stage."""
    if not batch or "stages" not in batch:
        return None
    return tuple((s.get("done"), s.get("failed"), s.get("skipped")) for s in batch["stages"])


def status_kib(pid, key):
    """A figure of /proc/<pid>/status in KiB (VmHWM, VmRSS, ...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (key, pid))


def sanitized(pid):
    """True when the process runs with a sanitizer's allocator (its resident set then says
    little about the program's own memory)."""
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    return "libasan" in maps or "libtsan" in maps


def _short(v, n=2000):
    s = repr(v)
    return s if len(s) <= n else s[:n] + "...(%d chars)" % len(s)


# ------------------------------------------------------------------------------------------
# Ports

def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_range(n):
    """The first of n consecutive free ports, picked at random below the kernel's ephemeral
    range (so ports the kernel hands out for port 0 do not collide with it)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        if all(_port_is_free(base + i) for i in range(n)):
            return base
    raise HarnessError("found no %d consecutive free ports" % n)


# ------------------------------------------------------------------------------------------
# Plain HTTP (no exceptions on 4xx/5xx)

class Response:
    """One HTTP answer. Unpacks as (status, headers, json, raw) like the brief's tuple."""

    def __init__(self, status, headers, body, raw):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive .get()
        self.json = body        # parsed JSON, or None when the body is empty or not JSON
        self.raw = raw          # the body's bytes

    def __iter__(self):
        return iter((self.status, self.headers, self.json, self.raw))

    def __repr__(self):
        return "<Response %d %s %s>" % (self.status, self.headers.get("Content-Type"),
                                        _short(self.raw, 600))


def raw_http(port, method, path, body=None, headers=None, raw=None, timeout=30.0,
             host="127.0.0.1"):
    """Sends one request and returns a Response. `body` is sent as JSON (with Content-Type
    application/json unless headers name one); `raw` bytes are sent as they are (only the
    given headers). Connection errors raise OSError."""
    hdrs = dict(headers or {})
    data = None
    if raw is not None:
        data = raw
    elif body is not None:
        data = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=data, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            # The server answered (e.g. 413) and closed before reading the whole body.
            pass
        resp = conn.getresponse()
        payload = resp.read()
        parsed = None
        if payload:
            try:
                parsed = json.loads(payload)
            except ValueError:
                parsed = None
        return Response(resp.status, resp.headers, parsed, payload)
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------
# The API description and response validation

try:
    from openapi_schema_validator import OAS31Validator, oas31_format_checker
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012
    _HAVE_OAS = True
except ImportError:  # pragma: no cover - fallback for a python without them
    _HAVE_OAS = False
import jsonschema  # noqa: E402

_SPEC_URI = "urn:cofi:openapi.json"


def _check_date_time(value):
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value,
                        re.IGNORECASE):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # raises when impossible
    return True


def _format_checker():
    base = oas31_format_checker if _HAVE_OAS else jsonschema.Draft202012Validator.FORMAT_CHECKER
    checker = copy.deepcopy(base)
    checker.checks("date-time", raises=ValueError)(_check_date_time)
    return checker


def _escape(token):
    return token.replace("~", "~0").replace("/", "~1")


class Spec:
    """An OpenAPI 3.1 document (as served by cofid) and checks of responses against it."""

    def __init__(self, doc):
        self.doc = doc
        self.checker = _format_checker()
        if _HAVE_OAS:
            self.registry = Registry().with_resource(_SPEC_URI, DRAFT202012.create_resource(doc))
        self._templates = []
        for t in doc.get("paths", {}):
            rx = "^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(t)) + "$"
            self._templates.append((t.count("{"), re.compile(rx), t))
        self._templates.sort(key=lambda x: x[0])  # literal paths win over templated ones

    def match(self, path):
        """The path template that path (query ignored) falls under, or None."""
        p = urllib.parse.urlsplit(path).path
        for _, rx, t in self._templates:
            if rx.match(p):
                return t
        return None

    def resolve(self, obj, pointer):
        """Follows local $refs of a non-schema object; returns (object, its JSON pointer)."""
        seen = 0
        while isinstance(obj, dict) and "$ref" in obj:
            ref = obj["$ref"]
            if not ref.startswith("#/"):
                raise AssertionError("non-local $ref %r in the API description" % ref)
            pointer = ref[1:]
            obj = self.doc
            for tok in ref[2:].split("/"):
                obj = obj[tok.replace("~1", "/").replace("~0", "~")]
            seen += 1
            if seen > 20:
                raise AssertionError("$ref loop at %s" % ref)
        return obj, pointer

    def _response_object(self, method, template, status):
        """(response object, its pointer, label) that documents this answer, or raises."""
        method = method.lower()
        label = "%s %s" % (method.upper(), template)
        # Unknown paths and methods: 404 / 405, or 401 when authentication is on (it is
        # checked first), as the description's info says.
        if template is None:
            if status not in (404, 401):
                raise AssertionError("a path outside the API description was answered %d, "
                                     "not 404" % status)
            name = "NotFound" if status == 404 else "Unauthorized"
            return self.resolve({"$ref": "#/components/responses/" + name}, None) + ("unknown path",)
        item = self.doc["paths"][template]
        if method not in item:
            if status not in (405, 401):
                raise AssertionError("%s is not in the API description but was answered %d, "
                                     "not 405" % (label, status))
            name = "MethodNotAllowed" if status == 405 else "Unauthorized"
            return self.resolve({"$ref": "#/components/responses/" + name}, None) + (label,)
        responses = item[method].get("responses", {})
        key = str(status)
        if key not in responses:
            key = "%dXX" % (status // 100)
        if key not in responses:
            key = "default"
        if key not in responses:
            raise AssertionError("%s answered %d, a status its description does not document "
                                 "(documented: %s)" % (label, status, ", ".join(sorted(responses))))
        ptr = "/paths/%s/%s/responses/%s" % (_escape(template), method, key)
        return self.resolve(responses[key], ptr) + (label,)

    def validate_schema(self, pointer, instance, what):
        """Checks instance against the schema at pointer of the document (with its $refs)."""
        schema_ref = {"$ref": _SPEC_URI + "#" + pointer}
        if _HAVE_OAS:
            validator = OAS31Validator(schema_ref, registry=self.registry,
                                       format_checker=self.checker)
        else:
            validator = jsonschema.Draft202012Validator(
                _inline(self.doc, self.doc_at(pointer)), format_checker=self.checker)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        if errors:
            msgs = []
            for e in errors[:8]:
                where = "/".join(str(p) for p in e.absolute_path) or "(root)"
                msgs.append("  at %s: %s" % (where, e.message[:300]))
            raise AssertionError("%s does not match its schema %s:\n%s\nbody: %s"
                                 % (what, pointer, "\n".join(msgs), _short(instance, 1500)))

    def doc_at(self, pointer):
        obj = self.doc
        for tok in pointer.lstrip("/").split("/"):
            obj = obj[tok.replace("~1", "/").replace("~0", "~")]
        return obj

    def validate_response(self, method, path_template, status, body, headers=None, raw=None):
        """Checks that `status` is documented for the operation (method, path_template) and
        that body (parsed JSON) matches that response's schema; with headers, also the
        Content-Type and the required response headers. path_template None means a path
        outside the description (must be 404); a method the path does not list must be 405."""
        resp, ptr, label = self._response_object(method, path_template, status)
        what = "the %d answer of %s" % (status, label)
        if headers is not None:
            for name, h in resp.get("headers", {}).items():
                h, _ = self.resolve(h, None)
                if h.get("required") and headers.get(name) is None:
                    raise AssertionError("%s lacks its required header %s" % (what, name))
        content = resp.get("content")
        if not content:
            return
        ctype = None
        if headers is not None:
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype not in content:
                raise AssertionError("%s has Content-Type %r; documented: %s"
                                     % (what, headers.get("Content-Type"), ", ".join(content)))
        if ctype is None:
            ctype = next(iter(content))
        if "schema" not in content[ctype] or not ctype.endswith("json"):
            return  # no schema, or not JSON (e.g. text/plain of GET /metrics)
        if body is None:
            raise AssertionError("%s has no JSON body (raw: %s)" % (what, _short(raw, 300)))
        self.validate_schema("%s/content/%s/schema" % (ptr, _escape(ctype)), body, what)


def _inline(doc, schema, depth=0):
    """A copy of schema with every local $ref replaced by its target (no cycles in ours)."""
    if depth > 50:
        raise AssertionError("$ref nesting too deep")
    if isinstance(schema, dict):
        if "$ref" in schema and schema["$ref"].startswith("#/"):
            target = doc
            for tok in schema["$ref"][2:].split("/"):
                target = target[tok.replace("~1", "/").replace("~0", "~")]
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            merged = {"allOf": [_inline(doc, target, depth + 1)]}
            merged.update({k: _inline(doc, v, depth + 1) for k, v in rest.items()})
            return merged
        return {k: _inline(doc, v, depth + 1) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(doc, v, depth + 1) for v in schema]
    return schema


def repo_openapi():
    """The repo's openapi/openapi.json, parsed."""
    with open(os.path.join(SOURCE_DIR, "openapi", "openapi.json"), encoding="utf-8") as f:
        return json.load(f)


_SPEC = None


def spec_from(port):
    """The module's Spec: fetched from the first cofid that asks, then cached."""
    global _SPEC
    if _SPEC is None:
        r = raw_http(port, "GET", "/openapi.json")
        if r.status != 200 or not isinstance(r.json, dict):
            raise HarnessError("GET /openapi.json answered %d: %s" % (r.status, _short(r.raw, 500)))
        _SPEC = Spec(r.json)
        _SPEC.validate_response("GET", "/openapi.json", r.status, r.json, r.headers, r.raw)
    return _SPEC


# ------------------------------------------------------------------------------------------
# Environment, database

def require_env(name):
    v = os.environ.get(name)
    if not v:
        raise HarnessError(
            "environment variable %s is not set. Run the integration tests through ctest "
            "(tests/CMakeLists.txt sets COFID, COFI_SIM, COFI_SOURCE_DIR) with a PostgreSQL "
            "running and COFI_TEST_PGHOST/COFI_TEST_PGPORT/COFI_TEST_PGUSER set, e.g. "
            "scripts/test.sh, or: scripts/pg.sh start --fast && eval \"$(scripts/pg.sh env)\""
            % name)
    return v


def binary(name):
    path = require_env(name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError("%s=%s is not an executable file (build it first)" % (name, path))
    return path


def _psql_path():
    p = "/usr/lib/postgresql/15/bin/psql"
    if os.access(p, os.X_OK):
        return p
    p = shutil.which("psql")
    if not p:
        raise HarnessError("no psql: neither /usr/lib/postgresql/15/bin/psql nor one on PATH")
    return p


_NULL = "\\N(null)"


class Database:
    """A database of its own on the test PostgreSQL, dropped by drop(). host/port/user name
    another server (e.g. a PrivatePostgres); by default the one of COFI_TEST_PG*."""

    def __init__(self, host=None, port=None, user=None):
        self.host = host or require_env("COFI_TEST_PGHOST")
        self.port = port or require_env("COFI_TEST_PGPORT")
        self.user = user or os.environ.get("COFI_TEST_PGUSER") or "postgres"
        self.psql = _psql_path()
        self.name = "cofi_t_" + secrets.token_hex(6)
        self._dropped = False
        try:
            self._run("postgres", "CREATE DATABASE %s" % self.name)
        except HarnessError as e:
            raise HarnessError("cannot create a test database on PostgreSQL at host=%s port=%s "
                               "user=%s (is it running? scripts/pg.sh start): %s"
                               % (self.host, self.port, self.user, e)) from None

    @property
    def conninfo(self):
        """libpq conninfo of this database, for cofid's database_url."""
        return "host=%s port=%s user=%s dbname=%s" % (self.host, self.port, self.user, self.name)

    def _run(self, dbname, sql):
        cmd = [self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.host,
               "-p", str(self.port), "-U", self.user, "-d", dbname,
               "-F", "\x1f", "-R", "\x1e", "-P", "null=" + _NULL, "-c", sql]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                           env=dict(os.environ, PGCONNECT_TIMEOUT="10"))
        if p.returncode != 0:
            raise HarnessError("psql failed (%d) on %r: %s"
                               % (p.returncode, sql[:200], p.stderr.decode(errors="replace")))
        return p.stdout.decode()

    def query(self, sql):
        """Rows of sql (a list of tuples of str, None for NULL)."""
        out = self._run(self.name, sql).rstrip("\n")
        if not out:
            return []
        rows = []
        for rec in out.split("\x1e"):
            rec = rec.lstrip("\n")
            if rec == "":
                continue
            rows.append(tuple(None if f == _NULL else f for f in rec.split("\x1f")))
        return rows

    def scalar(self, sql):
        """The one value of sql (str or None)."""
        rows = self.query(sql)
        if len(rows) != 1 or len(rows[0]) != 1:
            raise AssertionError("expected one value from %r, got %r" % (sql, rows))
        return rows[0][0]

    def count(self, sql):
        """int(scalar(sql))."""
        return int(self.scalar(sql))

    def snapshot(self):
        """A fingerprint of batches and calls: row counts and a hash of every row."""
        return self.query(
            "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM calls), "
            "(SELECT count(*) FROM call_stages), "
            "(SELECT md5(coalesce(string_agg(b::text, '|' ORDER BY id), '')) FROM batches b), "
            "(SELECT md5(coalesce(string_agg(c::text, '|' ORDER BY id), '')) FROM calls c)")[0]

    def drop(self):
        if self._dropped:
            return
        self._dropped = True
        try:
            self._run("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % self.name)
        except HarnessError as e:
            log("could not drop %s: %s" % (self.name, e))


# ------------------------------------------------------------------------------------------
# Processes

_LIVE = []  # every process we started and have not reaped: killed at exit if still there


def _kill_leftovers():
    for p in list(_LIVE):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_kill_leftovers)


def _tail(path, lines=60):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError as e:
        return "(no log: %s)" % e
    return "\n".join(data.splitlines()[-lines:])


class _Process:
    """Something we started, with its log file."""

    name = "process"

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.log_path = None

    def _spawn(self, argv, env=None, tag=""):
        self.log_path = os.path.join(self.workdir, "%s%s-%d.log" % (self.name, tag, int(time.time() * 1000)))
        logf = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        finally:
            logf.close()
        _LIVE.append(self.proc)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=60):
        if not self.log_path:
            return "(not started)"
        return _tail(self.log_path, lines)

    def _reap(self):
        if self.proc in _LIVE:
            _LIVE.remove(self.proc)

    def kill9(self):
        """SIGKILL and reap."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._reap()


def _sim_http(port, method, path, body=None, timeout=10.0):
    r = raw_http(port, method, path, body=body, timeout=timeout)
    return r


class Sim(_Process):
    """cofi-sim: `nodes` mediator nodes on base_port.., and the NLP API on nlp_port."""

    name = "cofi-sim"

    def __init__(self, workdir, nodes=3, node_capacity=4, nlp_capacity=50, latency=None,
                 jitter_pct=None, fail_rate=None, seed=None, extra_args=()):
        super().__init__(workdir)
        self.nodes = nodes
        self.node_capacity = node_capacity
        self.nlp_capacity = nlp_capacity
        self.latency = dict(latency or {})
        self.jitter_pct = jitter_pct
        self.fail_rate = fail_rate
        self.seed = seed
        self.extra_args = list(extra_args)
        self.base_port = None
        self.nlp_port = None

    def node_port(self, i):
        return self.base_port + i

    def node_url(self, i):
        return "http://127.0.0.1:%d" % self.node_port(i)

    @property
    def nlp_url(self):
        return "http://127.0.0.1:%d" % self.nlp_port

    @property
    def ports(self):
        return [self.node_port(i) for i in range(self.nodes)] + [self.nlp_port]

    def argv(self):
        a = [binary("COFI_SIM"), "--nodes", str(self.nodes), "--base-port", str(self.base_port),
             "--node-capacity", str(self.node_capacity), "--nlp-port", str(self.nlp_port),
             "--nlp-capacity", str(self.nlp_capacity)]
        if self.latency:
            a += ["--latency-ms", ",".join("%s=%s" % kv for kv in self.latency.items())]
        if self.jitter_pct is not None:
            a += ["--jitter-pct", str(self.jitter_pct)]
        if self.fail_rate is not None:
            a += ["--fail-rate", str(self.fail_rate)]
        if self.seed is not None:
            a += ["--seed", str(self.seed)]
        return a + self.extra_args

    def _healthy(self):
        if not self.alive():
            return "dead"
        for port in self.ports:
            try:
                r = raw_http(port, "GET", "/health", timeout=2)
            except OSError:
                return None
            if r.status != 200:
                return None
        return "up"

    def start(self, timeout=15.0):
        """Starts on free ports (retrying on other ports if it cannot bind) and waits until
        every port answers GET /health with 200."""
        last = None
        for attempt in range(5):
            self.base_port = free_port_range(self.nodes)
            self.nlp_port = free_port()
            while self.base_port <= self.nlp_port < self.base_port + self.nodes:
                self.nlp_port = free_port()
            self._spawn(self.argv(), tag="-%d" % attempt)
            state = poll(self._healthy, timeout, what="cofi-sim to answer /health on every port")
            if state == "up" and self.alive():
                log("cofi-sim up: nodes on %d..%d, NLP on %d (%s)"
                    % (self.base_port, self.base_port + self.nodes - 1, self.nlp_port, self.log_path))
                return self
            last = self.log_tail(20)
            self.kill9()
            log("cofi-sim exited at start (attempt %d), retrying on other ports:\n%s"
                % (attempt + 1, last))
        raise HarnessError("cofi-sim did not start:\n%s" % last)

    def stats(self, port):
        """GET /stats of one port, as a dict."""
        r = _sim_http(port, "GET", "/stats")
        if r.status != 200 or not isinstance(r.json, dict):
            raise AssertionError("cofi-sim GET /stats on %d answered %d: %s"
                                 % (port, r.status, _short(r.raw, 300)))
        return r.json

    def node_stats(self):
        """/stats of every node, in node order."""
        return [self.stats(self.node_port(i)) for i in range(self.nodes)]

    def nlp_stats(self):
        return self.stats(self.nlp_port)

    def rules(self, port, rules):
        """Replaces the failure rules of one port (POST /admin/rules)."""
        r = _sim_http(port, "POST", "/admin/rules", body={"rules": rules})
        if r.status // 100 != 2:
            raise AssertionError("cofi-sim POST /admin/rules on %d answered %d: %s"
                                 % (port, r.status, _short(r.raw, 300)))
        return r.json

    def stats_all(self):
        """/stats of every port (nodes in order, then the NLP API) in one request to the NLP
        port's GET /stats/all: readable even while a node is down."""
        r = _sim_http(self.nlp_port, "GET", "/stats/all")
        ports = r.json.get("ports") if isinstance(r.json, dict) else None
        if r.status != 200 or not isinstance(ports, list):
            raise AssertionError("cofi-sim GET /stats/all answered %d: %s"
                                 % (r.status, _short(r.raw, 300)))
        by_port = {s.get("port"): s for s in ports}
        return [by_port[p] for p in self.ports]

    def clear_rules(self, port):
        """Removes every failure rule of one port (DELETE /admin/rules)."""
        r = _sim_http(port, "DELETE", "/admin/rules")
        if r.status // 100 != 2:
            raise AssertionError("cofi-sim DELETE /admin/rules on %d answered %d: %s"
                                 % (port, r.status, _short(r.raw, 300)))

    def rules_all_nodes(self, rules):
        for i in range(self.nodes):
            self.rules(self.node_port(i), rules)

    def down(self, i, mode="refuse"):
        """Takes node i down (refuse, hang or error), through the NLP port's admin route."""
        r = _sim_http(self.nlp_port, "POST", "/admin/nodes/%d/down" % i, body={"mode": mode})
        if r.status // 100 != 2:
            raise AssertionError("cofi-sim down %d answered %d: %s" % (i, r.status, _short(r.raw, 300)))
        return r.json

    def up(self, i):
        r = _sim_http(self.nlp_port, "POST", "/admin/nodes/%d/up" % i)
        if r.status // 100 != 2:
            raise AssertionError("cofi-sim up %d answered %d: %s" % (i, r.status, _short(r.raw, 300)))
        return r.json

    def stop(self):
        """SIGTERM and wait (SIGKILL after 10 s). Idempotent."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log("cofi-sim did not stop within 10 s of SIGTERM: SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reap()


def sum_stat(stats_list, field, endpoint):
    """Sum over ports of stats[field][endpoint] (0 where absent)."""
    return sum(int(s.get(field, {}).get(endpoint, 0)) for s in stats_list)


class Cofid(_Process):
    """cofid with a configuration file written for the test, on a free port."""

    name = "cofid"

    def __init__(self, workdir, database, input_root, nodes, llm_url, llm_concurrency=20,
                 max_body_bytes=1 << 20, mediator=None, llm=None, auth_tokens=None, env=None,
                 log_level="info", extra=None, port=None):
        """nodes: [(id, url, capacity)]. mediator / llm: overrides of the worker settings.
        auth_tokens: {ENV_NAME: (token, scope)}: the tokens and the env that carries them.
        port: listen on this port (e.g. a restart on the port of a killed cofid, which then
        has the same instance id); by default a free one."""
        super().__init__(workdir)
        self.database = database
        self.input_root = input_root
        self.nodes = list(nodes)
        self.llm_url = llm_url
        self.llm_concurrency = llm_concurrency
        self.max_body_bytes = max_body_bytes
        self.mediator = {"timeout_ms": 10000, "max_attempts": 5, "backoff_base_ms": 20,
                         "backoff_max_ms": 200}
        self.mediator.update(mediator or {})
        self.llm = {"timeout_ms": 10000, "max_attempts": 5, "backoff_base_ms": 20,
                    "backoff_max_ms": 200}
        self.llm.update(llm or {})
        self.auth_tokens = dict(auth_tokens or {})
        self.env = dict(env or {})
        self.log_level = log_level
        self.extra = dict(extra or {})
        self.fixed_port = port
        self.port = None
        self.config_path = None

    @property
    def instance_id(self):
        """This cofid's name in the work queue: COFI_INSTANCE_ID, or host:port."""
        return self.env.get("COFI_INSTANCE_ID") or "%s:%d" % (socket.gethostname()[:127], self.port)

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def config(self):
        cfg = {
            "listen": "127.0.0.1:%d" % self.port,
            "database_url": self.database.conninfo,
            "input_root": self.input_root,
            "max_body_bytes": self.max_body_bytes,
            "nodes": [{"id": i, "url": u, "capacity": c} for (i, u, c) in self.nodes],
            "mediator": dict(self.mediator),
            "llm": dict(self.llm, url=self.llm_url, concurrency=self.llm_concurrency),
        }
        if self.auth_tokens:
            cfg["auth"] = {"tokens": [{"token_env": k, "scope": scope}
                                      for k, (_, scope) in self.auth_tokens.items()]}
        if self.log_level:
            cfg["log_level"] = self.log_level
        cfg.update(self.extra)
        return cfg

    def _env(self):
        env = {k: v for k, v in os.environ.items() if k not in _COFID_ENV_OVERRIDES}
        for k, (token, _) in self.auth_tokens.items():
            env[k] = token
        env.update(self.env)
        return env

    def _ready(self):
        if not self.alive():
            return "dead"
        try:
            r = raw_http(self.port, "GET", "/readyz", timeout=2)
        except OSError:
            return None
        return "ready" if r.status == 200 else None

    def start(self, timeout=20.0):
        """Writes the config, starts cofid and waits for GET /readyz 200; retries on another
        port when the process exits at start (e.g. its port was taken meanwhile)."""
        last = None
        for attempt in range(3):
            self.port = self.fixed_port or free_port()
            self.config_path = os.path.join(self.workdir, "cofid-%d.json" % self.port)
            with open(self.config_path, "w") as f:
                json.dump(self.config(), f, indent=2)
            self._spawn([binary("COFID"), "--config", self.config_path], env=self._env(),
                        tag="-%d" % self.port)
            state = poll(self._ready, timeout, interval=0.05, what="cofid GET /readyz 200")
            if state == "ready" and self.alive():
                spec = spec_from(self.port)
                r = raw_http(self.port, "GET", "/readyz")
                spec.validate_response("GET", "/readyz", r.status, r.json, r.headers, r.raw)
                log("cofid ready on port %d (%s)" % (self.port, self.log_path))
                return self
            last = self.log_tail(30)
            rc = self.proc.poll()
            self._reap()
            log("cofid exited at start with %s (attempt %d):\n%s" % (rc, attempt + 1, last))
        raise HarnessError("cofid did not start:\n%s" % last)

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def http(self, method, path, body=None, headers=None, raw=None, timeout=30.0):
        """One request to this cofid; the answer is checked against the API description
        (status documented, body and headers match) before it is returned as a Response,
        which unpacks as (status, headers, json, raw)."""
        try:
            r = raw_http(self.port, method, path, body=body, headers=headers, raw=raw,
                         timeout=timeout)
        except (OSError, http.client.HTTPException) as e:
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=5)  # did it crash? (e.g. a sanitizer report)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("%s %s: cofid is not running any more (exit status %s); "
                                     "last lines of its log:\n%s"
                                     % (method, path, self.proc.returncode, self.log_tail(40)))
            raise AssertionError("%s %s: no HTTP answer from cofid: %r" % (method, path, e))
        spec = spec_from(self.port)
        spec.validate_response(method, spec.match(path), r.status, r.json, r.headers, r.raw)
        return r

    def stop(self, timeout=40.0):
        """SIGTERM, wait, and assert a clean exit (code 0). Idempotent."""
        if self.proc is None:
            return
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self._reap()
                raise AssertionError("cofid did not exit within %.0f s of SIGTERM:\n%s"
                                     % (timeout, self.log_tail()))
        rc = self.proc.returncode
        was_live = self.proc in _LIVE
        self._reap()
        if was_live and rc != 0:
            raise AssertionError("cofid exited with %s after SIGTERM (expected 0):\n%s"
                                 % (rc, self.log_tail()))


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, made and driven by scripts/pg.sh (--fast), for
    tests that stop and start the server. Never the shared test cluster of COFI_TEST_PG*."""

    def __init__(self, parent_dir, port=None):
        # The server runs as `postgres` when we are root: it must reach the data dir's parent.
        self.root = tempfile.mkdtemp(prefix="pg-", dir=parent_dir)
        os.chmod(self.root, 0o755)
        os.chmod(parent_dir, os.stat(parent_dir).st_mode | 0o711)
        self.dir = os.path.join(self.root, "data")
        # Below the kernel's ephemeral range: while the server is stopped, an outgoing
        # connection could otherwise take its port and the restart would fail.
        self.port = port or free_port_range(1)
        self.script = os.path.join(SOURCE_DIR, "scripts", "pg.sh")
        self.host = None  # the unix socket directory, known once started
        self._started = False

    def _pg(self, *args, timeout=120):
        p = subprocess.run(["bash", self.script] + list(args) + ["--dir", self.dir, "--port",
                                                                str(self.port)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if p.returncode != 0:
            raise HarnessError("scripts/pg.sh %s failed (%d): %s %s"
                               % (" ".join(args), p.returncode, p.stdout.decode(errors="replace"),
                                  p.stderr.decode(errors="replace")))
        return p.stdout.decode()

    def start(self):
        """Starts the cluster (initdb the first time) and waits until it accepts connections."""
        self._pg("start", "--fast")
        self._started = True
        env = self._pg("env")
        m = re.search(r"COFI_TEST_PGHOST=(\S+)", env)
        if not m:
            raise HarnessError("scripts/pg.sh env printed no COFI_TEST_PGHOST: %s" % env)
        self.host = m.group(1)
        log("private PostgreSQL up on port %d (%s)" % (self.port, self.dir))
        return self

    def stop(self):
        """Fast shutdown; waits until the server is gone."""
        self._pg("stop")

    def destroy(self):
        """Stops the server and deletes its files. Idempotent."""
        if self._started:
            try:
                self.stop()
            except (HarnessError, subprocess.TimeoutExpired) as e:
                log("could not stop the private PostgreSQL: %s" % e)
            self._started = False
            if self.host and os.path.basename(self.host).startswith("cofi-"):
                shutil.rmtree(self.host, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def database(self):
        """A new Database on this cluster."""
        return Database(host=self.host, port=str(self.port), user="postgres")


# ------------------------------------------------------------------------------------------
# Files

def make_files(root, n, prefix="call", subdir=None, size=256):
    """Writes n small files under root (in subdir when given) and returns their paths
    relative to root, in order. The bytes are a tiny WAV header plus a counter."""
    d = os.path.join(root, subdir) if subdir else root
    os.makedirs(d, exist_ok=True)
    out = []
    for i in range(n):
        name = "%s-%05d.wav" % (prefix, i)
        payload = b"RIFF" + (size - 8).to_bytes(4, "little") + b"WAVE" + \
            ("%s %d " % (prefix, i)).encode().ljust(size - 12, b".")
        with open(os.path.join(d, name), "wb") as f:
            f.write(payload)
        out.append(os.path.join(subdir, name) if subdir else name)
    return out


# ------------------------------------------------------------------------------------------
# The test case base

class CofiCase(unittest.TestCase):
    """Base of every integration test module: a database and a work folder per class, and
    helpers to start cofi-sim and cofid, to call the API (validated) and read the database.
    Subclasses put their set-up in the classmethod prepare()."""

    database = None
    workdir = None
    input_root = None
    cofid = None     # the cofid self.http talks to
    sim = None       # the simulator started last by start_sim
    processes = []

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.processes = []
        binary("COFID")
        binary("COFI_SIM")
        cls.workdir = tempfile.mkdtemp(prefix="cofi-it-%s-" % cls.__name__.lower())
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.input_root = os.path.join(cls.workdir, "input")
        os.makedirs(cls.input_root)
        cls.database = Database()
        cls.addClassCleanup(cls.database.drop)
        log("%s: database %s, work folder %s" % (cls.__name__, cls.database.name, cls.workdir))
        try:
            cls.prepare()
        except BaseException:
            cls.dump_logs()
            raise

    @classmethod
    def prepare(cls):
        """Starts what the module needs (override)."""

    # --- processes

    @classmethod
    def start_sim(cls, owner=None, **kw):
        """Starts a cofi-sim (kwargs of Sim), stopped at the end of the class, or of the test
        when owner (a TestCase) is given. Becomes cls.sim."""
        sim = Sim(cls.workdir, **kw)
        cls.processes.append(sim)
        (owner.addCleanup if owner else cls.addClassCleanup)(sim.stop)
        sim.start()
        cls.sim = sim
        return sim

    @classmethod
    def start_cofid(cls, sim=None, owner=None, primary=True, node_capacities=None, **kw):
        """Starts a cofid against sim's nodes (ids gpu-0.., capacities node_capacities or the
        sim's) and NLP API, with this class's database and input_root; kwargs of Cofid.
        Stopped (asserting exit code 0) at the end of the class or of owner's test.
        With primary, it becomes cls.cofid, the one self.http talks to."""
        if sim is None:
            nodes = kw.pop("nodes", None)
            llm_url = kw.pop("llm_url", None)
            if nodes is None:
                dead = free_port()
                nodes = [("gpu-0", "http://127.0.0.1:%d" % dead, 4)]
                llm_url = llm_url or "http://127.0.0.1:%d" % dead
        else:
            caps = node_capacities or [sim.node_capacity] * sim.nodes
            nodes = [("gpu-%d" % i, sim.node_url(i), caps[i]) for i in range(sim.nodes)]
            llm_url = sim.nlp_url
        kw.setdefault("database", cls.database)
        kw.setdefault("input_root", cls.input_root)
        c = Cofid(cls.workdir, nodes=nodes, llm_url=llm_url, **kw)
        cls.processes.append(c)
        (owner.addCleanup if owner else cls.addClassCleanup)(c.stop)
        c.start()
        if primary:
            cls.cofid = c
        return c

    @classmethod
    def dump_logs(cls, lines=60):
        for p in cls.processes:
            sys.stderr.write("\n----- last lines of %s (%s) -----\n%s\n"
                             % (p.name, p.log_path, p.log_tail(lines)))
        sys.stderr.flush()

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            type(self).dump_logs()
        return out

    # --- the API

    def http(self, method, path, body=None, headers=None, raw=None, cofid=None):
        """One request to cofid (default: the primary one), validated against the API
        description. Returns a Response: (status, headers, json, raw)."""
        return (cofid or self.cofid).http(method, path, body=body, headers=headers, raw=raw)

    def db(self, sql):
        """Rows of sql on this module's database."""
        return self.database.query(sql)

    def assertStatus(self, r, status, msg=None):
        if r.status != status:
            self.fail("%sexpected HTTP %d, got %d: %s"
                      % (msg + ": " if msg else "", status, r.status, _short(r.raw, 1000)))

    def assertProblem(self, r, status, msg=None):
        """r is an RFC 9457 problem with this status."""
        self.assertStatus(r, status, msg)
        ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/problem+json", msg)
        self.assertIsInstance(r.json, dict, msg)
        for k in ("type", "title", "detail"):
            self.assertIsInstance(r.json.get(k), str, "%s: problem member %s" % (msg, k))
            self.assertTrue(r.json[k], "%s: problem member %s is empty" % (msg, k))
        self.assertEqual(r.json.get("status"), status, msg)

    def create_batch(self, files, name=None, metadata=None, mode=None, headers=None, cofid=None):
        body = {"files": files}
        if name is not None:
            body["name"] = name
        if metadata is not None:
            body["metadata"] = metadata
        if mode is not None:
            body["mode"] = mode
        r = self.http("POST", "/batches", body=body, headers=headers, cofid=cofid)
        self.assertStatus(r, 201, "POST /batches")
        return r.json

    def run_batch(self, batch_id, mode=None, cofid=None):
        body = {"mode": mode} if mode is not None else None
        r = self.http("POST", "/batches/%d/run" % batch_id, body=body, cofid=cofid)
        self.assertStatus(r, 202, "POST /batches/%d/run" % batch_id)
        return r.json

    def get_batch(self, batch_id, cofid=None):
        r = self.http("GET", "/batches/%d" % batch_id, cofid=cofid)
        self.assertStatus(r, 200, "GET /batches/%d" % batch_id)
        return r.json

    def wait_batch_final(self, batch_id, timeout=60.0, cofid=None, on_poll=None):
        """Polls GET /batches/{id} until the batch is completed, completed_with_errors or
        cancelled with finished_at set; returns it. on_poll(batch) sees every snapshot.
        Fails once the batch's counts stop moving for `timeout` seconds (scaled): a stuck batch
        fails the test, a slow machine does not."""
        snap = {}

        def done():
            b = self.get_batch(batch_id, cofid=cofid)
            snap["b"] = b
            if on_poll:
                on_poll(b)
            if b["state"] in FINAL_BATCH_STATES and b["finished_at"] is not None:
                return b
            return None
        return poll(done, scaled(timeout), interval=0.1, what="batch %d to end" % batch_id,
                    progress=lambda: batch_progress(snap.get("b")))

    def run_batch_to_end(self, files, mode=None, timeout=60.0, create_mode=None, name=None,
                         on_poll=None, cofid=None):
        """POST /batches, POST /batches/{id}/run (with mode when given) and poll until the
        batch ends; returns the final batch object."""
        b = self.create_batch(files, name=name, mode=create_mode, cofid=cofid)
        self.assertEqual(b["state"], "created")
        self.run_batch(b["id"], mode=mode, cofid=cofid)
        t0 = time.monotonic()
        final = self.wait_batch_final(b["id"], timeout=timeout, cofid=cofid, on_poll=on_poll)
        log("batch %d (%d files) ended %s in %.1f s"
            % (b["id"], len(files), final["state"], time.monotonic() - t0))
        return final

    def list_all_calls(self, batch_id, limit=1000, state=None, cofid=None):
        """Every call of a batch, walking the pages."""
        calls = []
        cursor = None
        for _ in range(10000):
            q = {"limit": str(limit)}
            if cursor:
                q["cursor"] = cursor
            if state:
                q["state"] = state
            r = self.http("GET", "/batches/%d/calls?%s" % (batch_id, urllib.parse.urlencode(q)),
                          cofid=cofid)
            self.assertStatus(r, 200)
            calls.extend(r.json["calls"])
            cursor = r.json["next_cursor"]
            if cursor is None:
                return calls
        self.fail("the calls of batch %d never ended" % batch_id)

    def get_call(self, batch_id, call_id, cofid=None):
        r = self.http("GET", "/batches/%d/calls/%s" % (batch_id, urllib.parse.quote(str(call_id))),
                      cofid=cofid)
        self.assertStatus(r, 200)
        return r.json

    def assert_calls_recorded_once(self, batch_id, n):
        """Exactly once in cofi's records: the batch's n calls are all done (stage 7), and
        call_stages holds exactly seven rows for each, one per stage, each done with a JSON
        object as its result."""
        self.assertEqual(self.db("SELECT status, stage, count(*) FROM calls WHERE batch_id = %d "
                                 "GROUP BY 1, 2" % batch_id), [("done", "7", str(n))])
        bad = self.db(
            "SELECT c.id, count(cs.call_id), count(DISTINCT cs.stage), "
            "  count(cs.call_id) FILTER (WHERE cs.state = 'done' "
            "                            AND jsonb_typeof(cs.result) = 'object') "
            "FROM calls c LEFT JOIN call_stages cs ON cs.call_id = c.id "
            "WHERE c.batch_id = %d GROUP BY c.id "
            "HAVING count(cs.call_id) <> 7 OR count(DISTINCT cs.stage) <> 7 "
            "  OR count(cs.call_id) FILTER (WHERE cs.state = 'done' "
            "                               AND jsonb_typeof(cs.result) = 'object') <> 7 "
            "ORDER BY c.id LIMIT 10" % batch_id)
        self.assertEqual(bad, [], "calls without exactly one done record per stage "
                                  "(id, rows, distinct stages, done rows)")
        rows = self.db("SELECT cs.stage, count(*), count(DISTINCT cs.call_id) "
                       "FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
                       "WHERE c.batch_id = %d GROUP BY 1 ORDER BY 1" % batch_id)
        self.assertEqual(rows, [(str(s), str(n), str(n)) for s in range(7)])

    def call_ids(self, batch_id):
        """{file: call id} of the batch's calls."""
        return {c["file"]: c["id"] for c in self.list_all_calls(batch_id)}

    def call_stage(self, batch_id, call_id, stage):
        """(call object, the entry of `stage` in its stages) from GET .../calls/{call_id}."""
        call = self.get_call(batch_id, call_id)
        for s in call["stages"]:
            if s["name"] == stage:
                return call, s
        self.fail("call %s has no stage %s: %s" % (call_id, stage, _short(call)))

    def assert_done_once_except(self, batch_id, n, failed):
        """Like assert_calls_recorded_once for a batch whose calls `failed` ({call id: the
        stage it failed at}) failed: every other of the n calls is done with exactly one done
        record per stage, and each failed call is failed at its stage with one record for
        that stage and each earlier one."""
        ids = ",".join("'%s'" % i for i in failed) or "NULL"
        self.assertEqual(self.db("SELECT status, stage, count(*) FROM calls WHERE batch_id = %d "
                                 "AND id::text NOT IN (%s) GROUP BY 1, 2" % (batch_id, ids)),
                         [("done", "7", str(n - len(failed)))])
        bad = self.db(
            "SELECT c.id, count(cs.call_id), count(DISTINCT cs.stage) FROM calls c "
            "LEFT JOIN call_stages cs ON cs.call_id = c.id AND cs.state = 'done' "
            "AND jsonb_typeof(cs.result) = 'object' WHERE c.batch_id = %d "
            "AND c.id::text NOT IN (%s) GROUP BY c.id "
            "HAVING count(cs.call_id) <> 7 OR count(DISTINCT cs.stage) <> 7 LIMIT 10"
            % (batch_id, ids))
        self.assertEqual(bad, [], "done calls without exactly one done record per stage")
        self.assertEqual(self.db("SELECT cs.call_id, cs.stage, count(*) FROM call_stages cs "
                                 "JOIN calls c ON c.id = cs.call_id WHERE c.batch_id = %d "
                                 "GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 10" % batch_id), [],
                         "a stage of a call recorded twice")
        for call_id, stage in failed.items():
            call = self.get_call(batch_id, call_id)
            self.assertEqual(call["state"], "failed", "call %s" % call_id)
            states = {s["name"]: s["state"] for s in call["stages"]}
            at = STAGES.index(stage)
            self.assertEqual([states[s] for s in STAGES[:at]], ["done"] * at, "call %s" % call_id)
            self.assertEqual(states[stage], "failed", "call %s" % call_id)

    def assert_no_repeated_keys(self, sim):
        """No port of sim was asked again for work it had answered 2xx (repeated_keys)."""
        for s in sim.stats_all():
            self.assertEqual(s["repeated_keys"], 0, "%s (port %s) was asked %d times again for "
                             "work it had answered" % (s["id"], s["port"], s["repeated_keys"]))

    def calls_summary(self, batch_id):
        """(stage, status, lease_owner, count) of the batch's calls, from the database: what a
        failure message needs when a batch does not end."""
        return self.db("SELECT stage, status, coalesce(lease_owner, '-'), count(*) FROM calls "
                       "WHERE batch_id = %d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3" % batch_id)

    def wait_batch_final_or_explain(self, batch_id, timeout=60.0, cofid=None):
        """wait_batch_final, whose failure message also shows the calls in the database and
        the instances table."""
        try:
            return self.wait_batch_final(batch_id, timeout=timeout, cofid=cofid)
        except AssertionError as e:
            raise AssertionError("%s\ncalls of batch %d (stage, status, lease_owner, count): %s"
                                 "\ninstances (id, seconds since the last heartbeat): %s"
                                 % (e, batch_id, self.calls_summary(batch_id), self.db(
                                     "SELECT id, round(extract(epoch FROM now() - heartbeat_at)"
                                     "::numeric, 1) FROM instances"))) from None

    def stage_counts(self, batch):
        """{stage name: {pending, running, done, failed, skipped}} of a batch object,
        checking the order of the stages and that every stage's counts add up."""
        self.assertEqual([s["name"] for s in batch["stages"]], STAGES)
        out = {}
        for s in batch["stages"]:
            c = {k: s[k] for k in ("pending", "running", "done", "failed", "skipped")}
            self.assertEqual(sum(c.values()), batch["file_count"],
                             "stage %s counts %s do not add up to %d"
                             % (s["name"], c, batch["file_count"]))
            out[s["name"]] = c
        return out
