"""One slow request does not hold the others (README "Security"): handlers run on their own
threads, not on the HTTP I/O threads, so eight parallel POST /batches of several MiB each
(400,000 files that do not exist: refused from the first files checked, before anything is
inserted) leave GET /healthz answering within 100 ms; and when every handler thread is busy
and the queue is full, a request is answered 503 with Retry-After at once."""

import json
import statistics
import threading
import time
import unittest

import cofitest
from cofitest import CofiCase

POSTS = 8
FILES = 400000


class HandlerIsolationTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.body = json.dumps({"files": ["missing/m%07d.wav" % i for i in range(FILES)]}).encode()
        cofitest.log("POST body of %.1f MiB" % (len(cls.body) / 1048576.0))

    def start(self, **http):
        extra = {"http_threads": 2}
        if http:
            extra["http"] = http
        return self.start_cofid(owner=self, max_body_bytes=16 << 20, extra=extra)

    def parallel_posts(self, c):
        answers = []
        barrier = threading.Barrier(POSTS)

        def post():
            barrier.wait()
            r = cofitest.raw_http(c.port, "POST", "/batches", raw=self.body,
                                  headers={"Content-Type": "application/json"}, timeout=120)
            answers.append(r)
        threads = [threading.Thread(target=post) for _ in range(POSTS)]
        for t in threads:
            t.start()
        return threads, answers

    def test_large_posts_leave_healthz_answering(self):
        c = self.start()
        before = self.database.snapshot()
        threads, answers = self.parallel_posts(c)
        lat = []
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            r = cofitest.raw_http(c.port, "GET", "/healthz", timeout=30)
            lat.append(time.monotonic() - t0)
            self.assertEqual(r.status, 200)
            time.sleep(0.02)
        for t in threads:
            t.join()
        cofitest.log("%d /healthz during the posts: median %.1f ms, max %.1f ms"
                     % (len(lat), statistics.median(lat) * 1000, max(lat) * 1000))
        self.assertLess(statistics.median(lat), 0.100, lat)
        self.assertLess(max(lat), 1.0, lat)
        for r in answers:
            self.assertIn(r.status, (422, 503), r)
            if r.status == 422:
                self.assertEqual(len(r.json["errors"]), 20)
        self.assertEqual(self.database.snapshot(), before)

    def test_full_queue_answers_busy(self):
        c = self.start(handler_threads=1, handler_queue=1)
        threads, answers = self.parallel_posts(c)
        for t in threads:
            t.join()
        statuses = sorted(r.status for r in answers)
        cofitest.log("answers with 1 handler thread and a queue of 1: %s" % statuses)
        self.assertTrue(set(statuses) <= {422, 503}, statuses)
        busy = [r for r in answers if r.status == 503]
        self.assertTrue(busy, "no 503 with 1 handler thread, a queue of 1 and %d posts" % POSTS)
        for r in busy:
            self.assertEqual(r.headers.get("Content-Type"), "application/problem+json")
            self.assertTrue(r.headers.get("Retry-After"))
        self.assertEqual(cofitest.raw_http(c.port, "GET", "/healthz").status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
