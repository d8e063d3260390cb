"""GET /metrics (README "Metrics and logs"), as Prometheus uses it: a real `prometheus` scrapes
cofid (auth on: the scrape sends a read token), a small batch runs through cofi-sim, and the
figures Prometheus's HTTP API answers agree with what cofi-sim saw; `promtool check metrics`
finds nothing to say about the text; without a token the answer is 401."""

import json
import os
import shutil
import subprocess
import time
import unittest
import urllib.parse

import cofitest
from cofitest import CofiCase

READ = "metrics-read-secret"
WRITE = "metrics-write-secret"
N_FILES = 6


class Prometheus(cofitest._Process):
    """A prometheus server of the test's own: its config, storage and port."""

    name = "prometheus"

    def __init__(self, workdir, target_port, token):
        super().__init__(workdir)
        self.port = cofitest.free_port()
        self.dir = os.path.join(workdir, "prometheus-%d" % self.port)
        os.makedirs(self.dir)
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        # YAML is a superset of JSON: the config is written as JSON.
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "cofid",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": token},
                "static_configs": [{"targets": ["127.0.0.1:%d" % target_port]}],
            }],
        }
        with open(self.config_path, "w") as f:
            json.dump(cfg, f)

    def start(self):
        self._spawn([shutil.which("prometheus"), "--config.file=" + self.config_path,
                     "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                     "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"])
        cofitest.poll(self._ready, cofitest.scaled(30), interval=0.2, what="prometheus ready")
        return self

    def _ready(self):
        if not self.alive():
            raise AssertionError("prometheus exited:\n%s" % self.log_tail(30))
        try:
            return cofitest.raw_http(self.port, "GET", "/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def query(self, expr):
        """The value of an instant query that yields one sample, or None."""
        r = cofitest.raw_http(self.port, "GET",
                              "/api/v1/query?query=" + urllib.parse.quote(expr), timeout=5)
        if r.status != 200 or r.json.get("status") != "success":
            raise AssertionError("query %r: %d %s" % (expr, r.status, r.raw[:300]))
        result = r.json["data"]["result"]
        if len(result) != 1:
            return None
        return float(result[0]["value"][1])

    def wait_value(self, expr, want, timeout=30):
        """Polls until expr's value is want; returns it."""
        got = []

        def check():
            v = self.query(expr)
            got[:] = [v]
            return v == want
        try:
            cofitest.poll(check, cofitest.scaled(timeout), interval=0.25,
                          what="%s == %s" % (expr, want))
        except Exception:
            raise AssertionError("%s: last value %s, wanted %s" % (expr, got, want))
        return got[0]

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reap()


@unittest.skipUnless(shutil.which("prometheus") and shutil.which("promtool"),
                     "prometheus is not installed (scripts/deps.sh installs it)")
class MetricsPrometheusTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, N_FILES, prefix="prom")
        cls.start_sim(nodes=2, node_capacity=4, nlp_capacity=20,
                      latency={s: 5 for s in cofitest.NODE_ENDPOINTS + cofitest.LLM_ENDPOINTS})
        cls.start_cofid(sim=cls.sim, auth_tokens={"COFI_TOKEN_OPS": (WRITE, "write"),
                                                  "COFI_TOKEN_DASH": (READ, "read")})

    def api(self, method, path, status, body=None, token=WRITE):
        r = self.http(method, path, body=body, headers={"Authorization": "Bearer " + token})
        self.assertStatus(r, status, "%s %s" % (method, path))
        return r

    def metrics_text(self):
        r = self.api("GET", "/metrics", 200, token=READ)
        self.assertEqual(r.headers.get("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        return r.raw.decode()

    def run_small_batch(self):
        b = self.api("POST", "/batches", 201, body={"files": self.files}).json
        self.api("POST", "/batches/%d/run" % b["id"], 202)

        def ended():
            s = self.api("GET", "/batches/%d" % b["id"], 200, token=READ).json
            return s if s["state"] in cofitest.FINAL_BATCH_STATES else None
        final = cofitest.poll(ended, cofitest.scaled(60), interval=0.1, what="the batch ends")
        self.assertEqual(final["state"], "completed")
        return final

    def test_a_token_is_needed(self):
        r = self.http("GET", "/metrics")
        self.assertProblem(r, 401)
        self.assertEqual(r.headers.get("X-Request-Id") is not None, True)
        head = cofitest.raw_http(self.cofid.port, "HEAD", "/metrics",
                                 headers={"Authorization": "Bearer " + READ})
        self.assertEqual(head.status, 200)
        self.assertEqual(head.raw, b"")

    def test_prometheus_scrapes_what_the_run_did(self):
        prom = Prometheus(self.workdir, self.cofid.port, READ)
        self.processes.append(prom)
        self.addCleanup(prom.stop)
        prom.start()
        self.run_small_batch()
        stt_calls = cofitest.sum_stat(self.sim.node_stats(), "requests", "stt")
        llm2_calls = cofitest.sum_stat([self.sim.nlp_stats()], "requests", "llm2")
        self.assertEqual(stt_calls, N_FILES)

        prom.wait_value('up{job="cofid"}', 1)
        prom.wait_value('cofi_stage_outcomes_total{stage="stt",outcome="succeeded"}', N_FILES)
        prom.wait_value('cofi_stage_requests_total{stage="stt"}', stt_calls)
        prom.wait_value('cofi_stage_requests_total{stage="llm2"}', llm2_calls)
        prom.wait_value('cofi_stage_request_duration_seconds_count{stage="llm2"}', llm2_calls)
        prom.wait_value('cofi_stage_outcomes_total{stage="llm2",outcome="failed"}', 0)
        prom.wait_value('cofi_batches{state="completed"}', 1)
        prom.wait_value('cofi_stage_queue_depth{stage="stt"}', 0)
        prom.wait_value('cofi_http_requests_total{method="POST",route="/batches",code="201"}', 1)
        prom.wait_value('cofi_resource_capacity{resource="node:gpu-0"}', 4)
        prom.wait_value('cofi_resource_capacity{resource="nlp"}', 20)
        prom.wait_value('cofi_node_healthy{node="gpu-1"}', 1)
        prom.wait_value('cofi_build_info{version="0.1.0"}', 1)
        self.assertGreater(prom.query("sum(cofi_flush_duration_seconds_count)"), 0)
        self.assertGreater(prom.query("sum(cofi_claim_duration_seconds_count)"), 0)
        start = prom.query("process_start_time_seconds")
        self.assertLess(abs(start - time.time()), 3600)
        # The raw path never becomes a label.
        self.assertIsNone(prom.query('cofi_http_requests_total{route=~".*[0-9].*"}'))

    def test_promtool_finds_nothing_to_say(self):
        self.run_small_batch()
        text = self.metrics_text()
        p = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        self.assertEqual(p.stdout.decode().strip(), "")
        for family in ("cofi_stage_request_duration_seconds", "cofi_flush_duration_seconds",
                       "cofi_claim_duration_seconds"):
            self.assertIn("# TYPE %s histogram" % family, text)
            self.assertIn('%s_bucket{le="+Inf"}' % family if "stage" not in family
                          else '%s_bucket{stage="stt",le="+Inf"}' % family, text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
