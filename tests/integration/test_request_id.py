"""X-Request-Id and the logs (README "Metrics and logs"): the client's id is kept when valid
(1..128 visible ASCII characters) and replaced otherwise, a new one is made when none came;
every answer carries it, errors and cached answers included; the access log has one line per
request (method, route pattern, status, duration, bytes, token name, client, request id) and
the lines a handler logs carry the id; with log_format "json" every line is one JSON object;
the requests to the workers carry an X-Request-Id naming the call, stage and attempt."""

import http.server
import json
import re
import socketserver
import threading
import unittest

import cofitest
from cofitest import CofiCase

READ = "rid-read-secret"
WRITE = "rid-write-secret"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def log_lines(cofid):
    with open(cofid.log_path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


class RequestIdTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 2, prefix="rid")
        cls.start_cofid(auth_tokens={"COFI_TOKEN_OPS": (WRITE, "write"),
                                     "COFI_TOKEN_DASH": (READ, "read")})

    def get(self, path, rid=None, token=READ):
        headers = {"Authorization": "Bearer " + token} if token else {}
        if rid is not None:
            headers["X-Request-Id"] = rid
        return self.http("GET", path, headers=headers)

    def test_a_valid_id_is_echoed(self):
        for rid in ("client-1", "a" * 128, "!~:/.=@"):
            with self.subTest(rid=rid):
                self.assertEqual(self.get("/healthz", rid).headers.get("X-Request-Id"), rid)

    def test_an_invalid_id_is_replaced(self):
        for rid in ("a" * 129, "has space", "caf\u00e9".encode().decode("latin-1")):
            with self.subTest(rid=rid):
                got = self.get("/healthz", rid).headers.get("X-Request-Id")
                self.assertRegex(got, HEX32)

    def test_an_id_is_made_when_none_came(self):
        a = self.get("/healthz").headers.get("X-Request-Id")
        b = self.get("/healthz").headers.get("X-Request-Id")
        self.assertRegex(a, HEX32)
        self.assertRegex(b, HEX32)
        self.assertNotEqual(a, b)

    def test_errors_carry_it_too(self):
        cases = [
            ("GET", "/batches", None, 401),                  # no token
            ("GET", "/no/such/route", READ, 404),
            ("DELETE", "/healthz", READ, 405),
            ("GET", "/batches?nope=1", READ, 400),
            ("POST", "/batches/1/cancel", READ, 403),        # a read token on a write
        ]
        for method, path, token, status in cases:
            with self.subTest(method=method, path=path):
                headers = {"X-Request-Id": "err-%d" % status}
                if token:
                    headers["Authorization"] = "Bearer " + token
                r = self.http(method, path, headers=headers)
                self.assertProblem(r, status)
                self.assertEqual(r.headers.get("X-Request-Id"), "err-%d" % status)

    def test_cached_answers_carry_each_request_its_own(self):
        b = self.http("POST", "/batches", body={"files": self.files},
                      headers={"Authorization": "Bearer " + WRITE}).json
        path = "/batches/%d" % b["id"]
        first = self.get(path, "poll-1")
        second = self.get(path, "poll-2")
        third = self.get(path)
        self.assertEqual(first.headers.get("X-Request-Id"), "poll-1")
        self.assertEqual(second.headers.get("X-Request-Id"), "poll-2")
        self.assertRegex(third.headers.get("X-Request-Id"), HEX32)
        self.assertEqual(first.json, second.json)
        self.assertEqual(second.raw, third.raw)

    def test_access_log_line(self):
        r = self.get("/stages/stt/status", "access-1")
        self.assertStatus(r, 200)
        pattern = (r"INFO  cofid: access method=GET route=/stages/\{\}/status status=200 "
                   r"duration_ms=\d+\.\d{3} bytes=%d token=COFI_TOKEN_DASH client=127\.0\.0\.1 "
                   r"request_id=access-1 completed=true$" % len(r.raw))
        cofitest.poll(lambda: [l for l in log_lines(self.cofid) if re.search(pattern, l)], 10,
                      what="the access line of GET /stages/stt/status")
        self.get("/batches", token=None)
        cofitest.poll(lambda: [l for l in log_lines(self.cofid)
                               if re.search(r"access method=GET route=/batches status=401 .*"
                                            r"token=unauthenticated", l)], 10,
                      what="the access line of a 401")
        # An unknown path is logged as route "none", never as the raw path.
        self.get("/secret-looking/path/42", "access-404")
        line = cofitest.poll(lambda: [l for l in log_lines(self.cofid)
                                      if "request_id=access-404" in l], 10, what="404 line")[0]
        self.assertIn("route=none status=404", line)
        self.assertNotIn("secret-looking", line)
        text = "\n".join(log_lines(self.cofid))
        self.assertNotIn(READ, text)
        self.assertNotIn(WRITE, text)

    def test_handler_lines_carry_the_id(self):
        r = self.http("POST", "/batches", body={"files": self.files},
                      headers={"Authorization": "Bearer " + WRITE, "X-Request-Id": "create-7"})
        self.assertStatus(r, 201)
        self.assertEqual(r.headers.get("X-Request-Id"), "create-7")
        want = r"batch %d created .* request_id=create-7$" % r.json["id"]
        cofitest.poll(lambda: [l for l in log_lines(self.cofid) if re.search(want, l)], 10,
                      what="the handler's line with the request id")
        cofitest.poll(lambda: [l for l in log_lines(self.cofid)
                               if re.search(r"audit: POST /batches by COFI_TOKEN_OPS .*"
                                            r"request_id=create-7$", l)], 10,
                      what="the audit line with the request id")


class JsonLogTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 1, prefix="json")
        cls.start_cofid(extra={"log_format": "json"})

    def test_every_line_is_one_json_object(self):
        b = self.create_batch(self.files)
        r = self.http("GET", "/batches/%d" % b["id"], headers={"X-Request-Id": "json-1"})
        # A write whose path holds a quote, a backslash and a non-ASCII character: the audit
        # line names the path, escaped as JSON wants.
        weird = "/batches/%22x%5C%C3%A9/cancel"
        self.assertProblem(self.http("POST", weird, headers={"X-Request-Id": "json-2"}), 404)

        def access():
            objs = [json.loads(l) for l in log_lines(self.cofid)]
            for o in objs:
                for key in ("ts", "level", "msg"):
                    self.assertIn(key, o)
            return [o for o in objs if o.get("request_id") == "json-1" and o["msg"] == "access"]
        line = cofitest.poll(access, 10, what="the JSON access line")[0]
        self.assertEqual(line["level"], "info")
        self.assertRegex(line["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(line["method"], "GET")
        self.assertEqual(line["route"], "/batches/{}")
        self.assertEqual(line["status"], 200)
        self.assertIsInstance(line["duration_ms"], (int, float))
        self.assertEqual(line["bytes"], len(r.raw))
        self.assertEqual(line["token"], "anonymous")
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertIs(line["completed"], True)

        def audit():
            objs = [json.loads(l) for l in log_lines(self.cofid)]
            return [o for o in objs if o.get("request_id") == "json-2"
                    and o["msg"].startswith("audit:")]
        line = cofitest.poll(audit, 10, what="the JSON audit line")[0]
        self.assertIn('POST /batches/"x\\\u00e9/cancel', line["msg"])


class FakeWorker(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One mediator node and the NLP API in one: answers every stage and records the
    X-Request-Id and Idempotency-Key of every POST."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), FakeHandler)


class FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    REPLIES = {"/upload": {"file_name": "stored"}, "/lid": {"language": "en"},
               "/stt": {"transcript": "hello"}}

    def log_message(self, fmt, *args):
        pass

    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply({"status": "ok"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        with self.server.lock:
            self.server.seen.append((self.path, self.headers.get("X-Request-Id"),
                                     self.headers.get("Idempotency-Key")))
        self.reply(self.REPLIES.get(self.path, {"ok": True}))


class WorkerRequestIdTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 3, prefix="pass")
        cls.worker = FakeWorker()
        t = threading.Thread(target=cls.worker.serve_forever, daemon=True)
        t.start()
        cls.addClassCleanup(cls.worker.server_close)
        cls.addClassCleanup(cls.worker.shutdown)
        url = "http://127.0.0.1:%d" % cls.worker.server_address[1]
        cls.start_cofid(nodes=[("fake-0", url, 4)], llm_url=url)

    def test_every_worker_request_carries_its_own_id(self):
        final = self.run_batch_to_end(self.files)
        self.assertEqual(final["state"], "completed")
        with self.worker.lock:
            seen = list(self.worker.seen)
        self.assertEqual(len(seen), 3 * 7, seen)
        stage_of = {"/upload": "distribute"}
        ids = set()
        for path, rid, key in seen:
            with self.subTest(path=path, rid=rid):
                stage = stage_of.get(path, path.lstrip("/"))
                self.assertIsNotNone(rid)
                m = re.match(r"^(\d+):([a-z0-9]+):(\d+)-[0-9a-f]{9,}$", rid)
                self.assertIsNotNone(m, rid)
                self.assertEqual(key, "%s:%s" % (m.group(1), stage))
                self.assertEqual(m.group(2), stage)
                self.assertEqual(m.group(3), "1")
                self.assertLessEqual(len(rid), 128)
                ids.add(rid)
        self.assertEqual(len(ids), len(seen), "request ids repeat")


if __name__ == "__main__":
    unittest.main(verbosity=2)
