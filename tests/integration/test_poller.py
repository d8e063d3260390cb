"""cofi-poll (bench/poller.c), the paced poller of the `polled` benchmark, against a real
cofi-sim: a short paced run is answered without an error and its --json figures hang
together; SIGINT stops it cleanly with its figures written; a server that goes away mid-run
is counted as errors, not a crash; chunked answers and answers ended by a close are read
right (those three against a small Python server that counts its answers, so a test waits
for answers, not for a time); a bad command line exits 2, an unreachable server 1. No database: only cofi-sim, a
small Python server and the binary named by COFI_POLL (set by ctest)."""

import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import unittest

import cofitest

QUANTILES = ("p50", "p90", "p99", "p999", "max")


class Answers(http.server.BaseHTTPRequestHandler):
    """Answers the ways HTTP/1.1 allows that cofi-sim does not use. Each server gets its own
    subclass (PollerTest.serve_answers): `answered` counts the answers given, and once `gone`
    is set every request is dropped unanswered, its connection closed."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the chunked answer comes in two writes
    answered = 0
    lock = None
    gone = None

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        if self.gone.is_set():
            self.close_connection = True
            return
        self.answer()
        with self.lock:
            type(self).answered += 1

    def answer(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5;name=value\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n")
            self.wfile.flush()
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length: the close ends me")
            self.close_connection = True
        elif self.path == "/ok":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        elif self.path == "/empty":
            self.send_response(204)
            self.end_headers()
        else:
            body = b"not here"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


class PollerTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.poller = cofitest.binary("COFI_POLL")
        cofitest.binary("COFI_SIM")
        cls.workdir = tempfile.mkdtemp(prefix="cofi-it-poller-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.sim = cofitest.Sim(cls.workdir, nodes=1)
        cls.addClassCleanup(cls.sim.stop)
        cls.sim.start()
        cls.url = "http://127.0.0.1:%d" % cls.sim.node_port(0)

    def run_poller(self, *args, timeout=20):
        return subprocess.run([self.poller] + list(args), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)

    def start_poller(self, *args):
        """cofi-poll running in the background (killed at cleanup if still running)."""
        p = subprocess.Popen([self.poller] + list(args), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def reap():
            if p.poll() is None:
                p.kill()
            p.communicate()
        self.addCleanup(reap)
        return p

    def assert_exits_0(self, p):
        out, err = p.communicate(timeout=10)
        self.assertEqual(p.returncode, 0, out + err)

    def serve_answers(self):
        """A threaded HTTP server of Answers on a free loopback port, stopped at cleanup.
        Returns (its URL, its handler class: .answered, .gone, see Answers)."""
        handler = type("Answers", (Answers,),
                       {"answered": 0, "lock": threading.Lock(), "gone": threading.Event()})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return "http://127.0.0.1:%d" % server.server_address[1], handler, server

    def wait_answered(self, handler, n):
        cofitest.poll(lambda: handler.answered >= n, 10, what="%d answers to cofi-poll" % n)

    def read_json(self, path):
        with open(path) as f:
            return json.load(f)

    def assert_latencies_ordered(self, doc):
        for suffix in ("_ms", "_due_ms", "_sent_ms", "_late_ms"):
            values = [doc[q + suffix] for q in QUANTILES]
            self.assertEqual(values, sorted(values), "quantiles%s out of order: %s" % (suffix, doc))
        self.assertLessEqual(doc["p99_ms"], doc["max_ms"])
        self.assertLessEqual(doc["p99_sent_ms"], doc["max_sent_ms"])
        # A request never leaves before it is due: from the due time is never shorter, and
        # leaving the poller's own lateness out never makes it longer.
        for q in QUANTILES:
            self.assertGreaterEqual(doc[q + "_ms"], doc[q + "_sent_ms"], doc)
            self.assertGreaterEqual(doc[q + "_due_ms"], doc[q + "_ms"], doc)

    def test_paced_run_is_answered_without_errors(self):
        path = os.path.join(self.workdir, "paced.json")
        r = self.run_poller("--connections", "20", "--interval-ms", "10", "--duration-s", "1",
                            "--json", path, self.url, "/health", "/stats")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("responses", r.stdout)
        doc = self.read_json(path)
        self.assertEqual(doc["paths"], ["/health", "/stats"])
        self.assertEqual(doc["offered_per_s"], 2000.0)
        self.assertGreater(doc["requests"], 0)
        self.assertEqual(doc["non_2xx"], 0, doc)
        self.assertEqual(doc["errors"], 0, doc["errors_by_kind"])
        self.assertEqual(doc["sent"], doc["requests"] + doc["unfinished"], doc)
        # 20 connections x 100 requests/s over 1 s offer 2,000; a loaded machine may lag.
        self.assertGreater(doc["requests"], 1000, doc)
        self.assert_latencies_ordered(doc)
        self.assertGreater(doc["cpu_s"], 0)

    def test_sigint_stops_cleanly_with_figures(self):
        url, handler, _ = self.serve_answers()
        path = os.path.join(self.workdir, "sigint.json")
        p = self.start_poller("--connections", "10", "--interval-ms", "0", "--json", path, url,
                              "/ok")
        self.wait_answered(handler, 10)
        p.send_signal(signal.SIGINT)
        self.assert_exits_0(p)
        doc = self.read_json(path)
        self.assertIsNone(doc["offered_per_s"])  # a closed loop
        self.assertGreaterEqual(doc["requests"], 10)
        self.assertEqual(doc["errors"], 0, doc["errors_by_kind"])
        self.assert_latencies_ordered(doc)

    def test_server_gone_mid_run_counts_errors(self):
        url, handler, server = self.serve_answers()
        path = os.path.join(self.workdir, "gone.json")
        p = self.start_poller("--connections", "10", "--interval-ms", "10", "--duration-s", "2",
                              "--json", path, url, "/ok")
        self.wait_answered(handler, 20)
        # Gone: requests in flight are dropped with their connections, and the port refuses.
        handler.gone.set()
        server.shutdown()
        server.server_close()
        self.assert_exits_0(p)
        doc = self.read_json(path)
        self.assertGreaterEqual(doc["requests"], 20)
        self.assertGreater(doc["errors_by_kind"]["connect"], 0, doc)
        self.assertEqual(doc["errors"], sum(doc["errors_by_kind"].values()))
        self.assertGreater(doc["skipped"], 0, doc)

    def test_chunked_close_delimited_and_empty_answers(self):
        url, _, _ = self.serve_answers()
        path = os.path.join(self.workdir, "answers.json")
        r = self.run_poller("--connections", "4", "--interval-ms", "20", "--duration-s", "0.5",
                            "--json", path, url, "/chunked", "/until-close", "/empty", "/missing")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        doc = self.read_json(path)
        self.assertEqual(doc["errors"], 0, doc["errors_by_kind"])
        self.assertGreater(doc["requests"], 40, doc)
        # One answer in four is the 404; every /until-close answer closes its connection.
        self.assertGreater(doc["non_2xx"], 0, doc)
        self.assertLess(doc["non_2xx"], doc["requests"] / 2, doc)
        self.assertGreater(doc["reconnects"], 0, doc)

    def test_bad_command_line_exits_2(self):
        for argv in ([], [self.url], ["--connections", "0", self.url, "/health"],
                     ["--interval-ms", "-1", self.url, "/health"], ["--nope", "1", self.url, "/"],
                     ["https://127.0.0.1:1", "/health"], [self.url, "health"],
                     ["http://127.0.0.1:99999", "/health"]):
            with self.subTest(argv=argv):
                r = self.run_poller(*argv)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertIn("cofi-poll: ", r.stderr)

    def test_unreachable_server_exits_1(self):
        r = self.run_poller("--duration-s", "1", "http://127.0.0.1:%d" % cofitest.free_port(),
                            "/health")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("cannot connect", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
