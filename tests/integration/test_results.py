"""GET /batches/{id}/results: every call of a batch with every stage's result, streamed as NDJSON
(or CSV for Accept: text/csv), read with a read token, a page at a time: the answer is chunked,
each call is there once, the CSV parses with Python's csv module, and cofid's resident memory
does not grow with the size of what it streams."""

import csv
import http.client
import io
import json
import os
import threading
import time
import unittest

import cofitest
from cofitest import CofiCase, STAGES, scaled

LATENCY = {"upload": 2, "denoise": 2, "ivr": 2, "lid": 2, "stt": 2, "llm1": 2, "llm2": 2}
N = 420
BIG_CALLS, BIG_BYTES = 2000, 40000
# A sanitizer build of cofid holds freed memory back (ASan's quarantine), so its RSS grows anyway.
SANITIZED = any(b in os.environ.get("COFID", "") for b in ("build-asan", "build-tsan"))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


class ResultsTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.write_token = "w-" + cofitest.secrets.token_hex(16)
        cls.read_token = "r-" + cofitest.secrets.token_hex(16)
        cls.sim = cls.start_sim(nodes=2, node_capacity=8, nlp_capacity=50, latency=LATENCY,
                                fail_rate=0.03, seed=5)
        cls.start_cofid(sim=cls.sim, llm_concurrency=20, mediator={"max_attempts": 1},
                        llm={"max_attempts": 1},
                        auth_tokens={"COFI_TOKEN_OPS": (cls.write_token, "write"),
                                     "COFI_TOKEN_DASH": (cls.read_token, "read")})
        cls.files = cofitest.make_files(cls.input_root, N, prefix="res,\"q\"", subdir="res")
        w = {"Authorization": "Bearer " + cls.write_token}
        r = cls.cofid.http("POST", "/batches", body={"files": cls.files, "name": "results"},
                           headers=w)
        assert r.status == 201, r
        cls.batch_id = r.json["id"]
        r = cls.cofid.http("POST", "/batches/%d/run" % cls.batch_id, headers=w)
        assert r.status == 202, r

        def ended():
            b = cls.cofid.http("GET", "/batches/%d" % cls.batch_id, headers=w).json
            return b if b["finished_at"] is not None else None
        cls.final = cofitest.poll(ended, scaled(120), interval=0.2, what="the batch to end")

    big_batch_id = None

    def big_batch(self):
        """A batch of BIG_CALLS calls whose results weigh about 80 MB, written straight into
        the database (every call done, a BIG_BYTES transcript each); made once."""
        cls = type(self)
        if cls.big_batch_id is not None:
            return cls.big_batch_id
        files = cofitest.make_files(self.input_root, BIG_CALLS, prefix="big", subdir="big")
        w = {"Authorization": "Bearer " + self.write_token}
        r = self.http("POST", "/batches", body={"files": files, "name": "big"}, headers=w)
        self.assertStatus(r, 201)
        bid = r.json["id"]
        self.db("UPDATE calls SET stage = 7, status = 'done', node = 'gpu-0' "
                "WHERE batch_id = %d" % bid)
        self.db("INSERT INTO call_stages (call_id, stage, state, attempts, finished_at, result) "
                "SELECT c.id, s, 'done', 1, now(), CASE WHEN s = 4 THEN jsonb_build_object("
                "'transcript', repeat(md5(c.id::text), %d)) ELSE '{}'::jsonb END "
                "FROM calls c, generate_series(0, 6) s WHERE c.batch_id = %d"
                % (BIG_BYTES // 32, bid))
        cls.big_batch_id = bid
        return bid

    def read_headers(self, accept=None):
        h = {"Authorization": "Bearer " + self.read_token}
        if accept is not None:
            h["Accept"] = accept
        return h

    def results(self, accept=None, batch_id=None):
        return self.http("GET", "/batches/%d/results" % (batch_id or self.batch_id),
                         headers=self.read_headers(accept))

    def test_ndjson_has_every_call_once_with_its_results(self):
        self.assertIn(self.final["state"], ("completed", "completed_with_errors"))
        r = self.results()
        self.assertStatus(r, 200)
        self.assertEqual(r.headers.get("Content-Type"), "application/x-ndjson")
        self.assertEqual(r.headers.get("Transfer-Encoding"), "chunked")
        self.assertTrue(r.raw.endswith(b"\n"))
        lines = r.raw.decode("utf-8").split("\n")[:-1]
        self.assertEqual(len(lines), self.final["file_count"])
        calls = [json.loads(line) for line in lines]
        self.assertEqual([c["seq"] for c in calls], list(range(N)))
        self.assertEqual([c["file"] for c in calls], self.files)
        ids = {str(row[0]) for row in self.db("SELECT id FROM calls WHERE batch_id = %d"
                                              % self.batch_id)}
        self.assertEqual({c["id"] for c in calls}, ids)
        states = {}
        for c in calls:
            states[c["state"]] = states.get(c["state"], 0) + 1
            self.assertEqual([s["name"] for s in c["stages"]], STAGES)
            if c["state"] == "done":
                self.assertIsInstance(c["node"], str)
                self.assertTrue(all(s["state"] == "done" for s in c["stages"]), c)
                self.assertIsInstance(c["stages"][4]["result"]["transcript"], str)
                self.assertTrue(c["stages"][4]["result"]["transcript"])
                self.assertIsInstance(c["stages"][6]["result"], dict)
            elif c["state"] == "failed":
                failed = [s for s in c["stages"] if s["state"] == "failed"]
                self.assertEqual(len(failed), 1, c)
                self.assertTrue(failed[0]["last_error"], c)
        done = sum(s["done"] for s in self.final["stages"] if s["name"] == "llm2")
        self.assertEqual(states.get("done", 0), done)
        self.assertGreater(done, N // 2)
        # A line says what GET of that one call says.
        for c in (calls[0], calls[-1]):
            one = self.http("GET", "/batches/%d/calls/%s" % (self.batch_id, c["id"]),
                            headers=self.read_headers()).json
            self.assertEqual(one["state"], c["state"])
            for a, b in zip(one["stages"], c["stages"]):
                self.assertEqual((a["state"], a["attempts"], a["last_error"], a["result"]),
                                 (b["state"], b["attempts"], b["last_error"], b["result"]))

    def test_csv_parses_and_says_what_the_ndjson_says(self):
        r = self.results("text/csv")
        self.assertStatus(r, 200)
        self.assertEqual(r.headers.get("Content-Type"), "text/csv; charset=utf-8; header=present")
        rows = list(csv.reader(io.StringIO(r.raw.decode("utf-8"), newline="")))
        header = ["id", "file", "state", "node"]
        for s in STAGES:
            header += [s + "_state", s + "_error", s + "_result"]
        self.assertEqual(rows[0], header)
        self.assertEqual(len(rows) - 1, N)
        by_id = {c["id"]: c for c in
                 (json.loads(x) for x in self.results().raw.decode().splitlines())}
        for row in rows[1:]:
            self.assertEqual(len(row), len(header))
            c = by_id[row[0]]
            self.assertEqual((row[1], row[2], row[3] or None), (c["file"], c["state"], c["node"]))
            for i, s in enumerate(c["stages"]):
                state, error, result = row[4 + 3 * i: 7 + 3 * i]
                self.assertEqual(state, s["state"])
                self.assertEqual(error or None, s["last_error"])
                self.assertEqual(json.loads(result) if result else None, s["result"])
                if result:
                    self.assertEqual(result, json.dumps(s["result"], separators=(",", ":"),
                                                        ensure_ascii=False))

    def test_accept_picks_the_format_or_406(self):
        for accept, ctype in (("*/*", "application/x-ndjson"),
                              ("application/x-ndjson", "application/x-ndjson"),
                              ("text/*", "text/csv"),
                              ("text/csv;q=0.9, application/x-ndjson;q=0.5", "text/csv"),
                              ("application/*;q=0.2, text/csv;q=0.1", "application/x-ndjson"),
                              ("text/html, */*;q=0.8", "application/x-ndjson")):
            with self.subTest(accept=accept):
                r = self.results(accept)
                self.assertStatus(r, 200)
                self.assertEqual(r.headers.get("Content-Type").split(";")[0], ctype)
        for accept in ("application/json", "image/png", "text/csv;q=0", "text/html"):
            with self.subTest(accept=accept):
                self.assertProblem(self.results(accept), 406)

    def test_unknown_batch_auth_and_methods(self):
        self.assertProblem(self.results(batch_id=987654), 404)
        self.assertProblem(self.http("GET", "/batches/x/results", headers=self.read_headers()),
                           404)
        self.assertProblem(self.http("GET", "/batches/%d/results" % self.batch_id), 401)
        self.assertProblem(self.http("POST", "/batches/%d/results" % self.batch_id,
                                     headers={"Authorization": "Bearer " + self.write_token}),
                           405)
        r = self.http("GET", "/batches/%d/results?limit=5" % self.batch_id,
                      headers=self.read_headers())
        self.assertProblem(r, 400)
        r = cofitest.raw_http(self.cofid.port, "HEAD", "/batches/%d/results" % self.batch_id,
                              headers=self.read_headers())
        self.assertEqual((r.status, r.raw), (200, b""))

    def test_a_slow_reader_holds_no_io_thread(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.cofid.port, timeout=30)
        conn.request("GET", "/batches/%d/results" % self.batch_id, headers=self.read_headers())
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        first = resp.read(100)
        self.assertTrue(first.startswith(b"{"))
        try:
            for _ in range(20):
                self.assertStatus(self.http("GET", "/healthz"), 200)
                self.assertStatus(self.http("GET", "/batches/%d" % self.batch_id,
                                            headers=self.read_headers()), 200)
            rest = resp.read()
            self.assertEqual((first + rest).count(b"\n"), N)
        finally:
            conn.close()

    def test_memory_does_not_follow_the_size_of_the_answer(self):
        """A batch whose results weigh about 80 MB (written straight into the database: the
        calls done, a 40 kB transcript each) is streamed while cofid's resident set is
        sampled: it grows by far less than the answer."""
        n, size = BIG_CALLS, BIG_BYTES
        bid = self.big_batch()
        pid = self.cofid.pid
        before = rss_kib(pid)
        peak = [before]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.01)
        t = threading.Thread(target=sample)
        t.start()
        total = 0
        lines = 0
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.cofid.port, timeout=60)
            conn.request("GET", "/batches/%d/results" % bid, headers=self.read_headers())
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                lines += chunk.count(b"\n")
            conn.close()
        finally:
            stop.set()
            t.join()
        grew_mb = (peak[0] - before) / 1024.0
        cofitest.log("results of %d calls: %.1f MB streamed; cofid RSS %.1f MB before, "
                     "grew by %.1f MB at most" % (n, total / 1e6, before / 1024.0, grew_mb))
        self.assertEqual(lines, n)
        self.assertGreater(total, n * size)
        if SANITIZED:
            self.skipTest("AddressSanitizer keeps freed memory in quarantine: RSS says nothing")
        self.assertLess(grew_mb, total / 1e6 / 3, "cofid's memory followed the answer's size")

    def test_sigterm_while_streaming_ends_cleanly(self):
        """cofid stops (exit 0) while a client reads the big batch's results slowly: the
        stream's pieces are made on handler threads that stop, then on the I/O thread, until
        the connection is closed."""
        bid = self.big_batch()
        other = self.start_cofid(sim=self.sim, owner=self, primary=False,
                                 extra={"shutdown_grace_ms": 1500},
                                 auth_tokens={"COFI_TOKEN_DASH": (self.read_token, "read")})
        conn = http.client.HTTPConnection("127.0.0.1", other.port, timeout=60)
        conn.request("GET", "/batches/%d/results" % bid, headers=self.read_headers())
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        got = [len(resp.read(1 << 16))]
        ended = threading.Event()

        def slow_reader():
            try:
                while not ended.is_set():
                    chunk = resp.read(1 << 14)
                    if not chunk:
                        break
                    got[0] += len(chunk)
                    time.sleep(0.005)
            except (OSError, http.client.HTTPException):
                pass  # the connection closed under the reader: what a stop may do
        t = threading.Thread(target=slow_reader)
        t.start()
        try:
            cofitest.poll(lambda: got[0] > (1 << 20) or None, scaled(30), interval=0.05,
                          what="the first MiB of the stream")
            other.stop(timeout=scaled(30))  # asserts exit status 0
        finally:
            ended.set()
            t.join(timeout=scaled(30))
            conn.close()
        self.assertLess(got[0], BIG_CALLS * BIG_BYTES, "the stream was not cut by the stop")


if __name__ == "__main__":
    unittest.main(verbosity=2)
