"""Signals (README "Operating notes"): during a SIGTERM drain GET /readyz answers 503 (a load
balancer takes the instance out) and every write answers 503 with Retry-After as a problem,
changing nothing, while the status reads go on; SIGHUP does not end cofid, it reads the
configuration's tokens again and reopens its log_file (a rotation), and says so in its log."""

import json
import signal
import subprocess
import time
import unittest

import cofitest
from cofitest import CofiCase

N = 8
LATENCY = {"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 4000, "llm1": 1, "llm2": 1}
GRACE_MS = 15000


class DrainSignalsTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, N, prefix="drain")
        cls.start_sim(nodes=1, node_capacity=N, nlp_capacity=20, latency=LATENCY, seed=5)

    def assert_busy(self, r, what):
        self.assertProblem(r, 503, what)
        self.assertTrue(r.headers.get("Retry-After"), "%s: no Retry-After" % what)

    def test_drain_refuses_writes_and_readiness(self):
        c = self.start_cofid(sim=self.sim, owner=self, extra={"shutdown_grace_ms": GRACE_MS})
        b = self.create_batch(self.files, name="drain")
        other = self.create_batch(self.files[:1], name="other")
        self.run_batch(b["id"])
        cofitest.poll(lambda: self.stage_counts(self.get_batch(b["id"]))["stt"]["running"] > 0,
                      30, interval=0.05, what="stt requests in flight")
        batches_before = self.database.count("SELECT count(*) FROM batches")

        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        # The stt requests take 4 s: the drain lasts that long, the API answers meanwhile.
        r = cofitest.poll(lambda: (lambda r: r if r.status == 503 else None)(
            self.http("GET", "/readyz")), 3, interval=0.02, what="GET /readyz 503 in the drain")
        self.assert_busy(r, "GET /readyz while draining")
        self.assertLess(time.monotonic() - t0, 3.5)
        self.assert_busy(self.http("POST", "/batches", body={"files": self.files[:1]}),
                         "POST /batches while draining")
        self.assert_busy(self.http("POST", "/batches", body={"files": self.files[:1]},
                                   headers={"Idempotency-Key": "drain-1"}),
                         "POST /batches with a key while draining")
        self.assert_busy(self.http("POST", "/batches/%d/run" % other["id"]),
                         "POST /batches/{id}/run while draining")
        self.assert_busy(self.http("POST", "/batches/%d/cancel" % b["id"]),
                         "POST /batches/{id}/cancel while draining")
        # Reads go on.
        self.assertStatus(self.http("GET", "/batches/%d" % b["id"]), 200)
        self.assertStatus(self.http("GET", "/healthz"), 200)
        self.assertEqual(self.database.count("SELECT count(*) FROM batches"), batches_before)
        self.assertEqual(self.db("SELECT state FROM batches WHERE id = %d" % other["id"]),
                         [("created",)])
        try:
            rc = c.proc.wait(timeout=GRACE_MS / 1000.0 + 10)
        except subprocess.TimeoutExpired:
            self.fail("cofid did not exit after SIGTERM:\n%s" % c.log_tail())
        self.assertEqual(rc, 0, c.log_tail())
        c.stop()
        log = open(c.log_path, encoding="utf-8", errors="replace").read()
        self.assertIn("writes and GET /readyz now answer 503", log)

    def test_sighup_reloads_tokens_and_keeps_running(self):
        c = self.start_cofid(sim=self.sim, owner=self,
                             auth_tokens={"COFI_TOKEN_OPS": ("ops-secret-1", "write")},
                             env={"COFI_TOKEN_LATER": "later-secret-2"})
        later = {"Authorization": "Bearer later-secret-2"}
        ops = {"Authorization": "Bearer ops-secret-1"}
        self.assertProblem(self.http("GET", "/batches", headers=later), 401)
        self.assertStatus(self.http("GET", "/batches", headers=ops), 200)

        # The file now names a second token (read) and drops the first one.
        with open(c.config_path) as f:
            cfg = json.load(f)
        cfg["auth"] = {"tokens": [{"token_env": "COFI_TOKEN_LATER", "scope": "read"}]}
        with open(c.config_path, "w") as f:
            json.dump(cfg, f)
        c.proc.send_signal(signal.SIGHUP)

        def reloaded():
            self.assertTrue(c.alive(), "cofid ended on SIGHUP:\n%s" % c.log_tail())
            return self.http("GET", "/batches", headers=later).status == 200
        cofitest.poll(reloaded, 10, interval=0.05, what="the new token to be accepted")
        self.assertProblem(self.http("GET", "/batches", headers=ops), 401)
        self.assertProblem(self.http("POST", "/batches", body={"files": self.files[:1]},
                                     headers=later), 403)
        log = open(c.log_path, encoding="utf-8", errors="replace").read()
        self.assertIn("SIGHUP: tokens reloaded", log)
        self.assertNotIn("later-secret-2", log)

        # A file that became invalid changes nothing: the tokens in use stay.
        with open(c.config_path, "w") as f:
            f.write("{not json")
        c.proc.send_signal(signal.SIGHUP)
        cofitest.poll(lambda: "not reloaded" in open(c.log_path, encoding="utf-8",
                                                     errors="replace").read(),
                      10, interval=0.05, what="the refused reload in the log")
        self.assertTrue(c.alive())
        self.assertStatus(self.http("GET", "/batches", headers=later), 200)


    def test_sighup_reopens_the_log_file(self):
        import os
        path = os.path.join(self.workdir, "cofid-own.log")
        c = self.start_cofid(sim=self.sim, owner=self, extra={"log_file": path})

        def text(p):
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    return f.read()
            except FileNotFoundError:
                return ""
        # GET /readyz answers once the server listens, a moment before the line that says
        # so is written: wait for the line, not for the status.
        cofitest.poll(lambda: "ready: instance" in text(path), 10, interval=0.05,
                      what="the start-up lines in the log file")
        os.rename(path, path + ".1")  # what logrotate does
        c.proc.send_signal(signal.SIGHUP)
        cofitest.poll(lambda: "SIGHUP: log reopened at %s" % path in text(path), 10,
                      interval=0.05, what="the reopened log file")
        self.assertTrue(c.alive())
        self.assertNotIn("SIGHUP: log reopened", text(path + ".1"))
        self.assertStatus(self.http("POST", "/batches", body={"files": self.files[:1]}), 201)
        cofitest.poll(lambda: "audit: POST /batches" in text(path), 10, interval=0.05,
                      what="later lines in the new file")


if __name__ == "__main__":
    unittest.main(verbosity=2)
