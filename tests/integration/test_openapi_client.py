"""openapi/openapi.json as a client author meets it: `redocly lint` (recommended rules) finds
no error, openapi-typescript generates types from it, and tests/client/client.ts, written
against those types only, compiles (scripts/client-check.sh, tools pinned in
tests/client/package-lock.json). The compiled client then really submits a batch to cofid,
polls it and reads every call's transcript from its stt stage result. HEAD, described for
every GET, is answered with GET's status and headers and no body."""

import json
import os
import shutil
import subprocess
import unittest

import cofitest
from cofitest import CofiCase, raw_http, scaled

TOKEN = "client-check-secret"
LATENCY = {"upload": 5, "denoise": 5, "ivr": 5, "lid": 5, "stt": 5, "llm1": 5, "llm2": 5}


class OpenApiClientTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.sim = cls.start_sim(nodes=2, node_capacity=2, nlp_capacity=20, latency=LATENCY)
        cls.start_cofid(sim=cls.sim, auth_tokens={"COFI_TOKEN_OPS": (TOKEN, "write")})

    def test_generated_client_compiles_and_reads_transcripts(self):
        if shutil.which("node") is None:
            self.fail("node is missing: scripts/deps.sh installs it")
        out = os.path.join(self.workdir, "client-js")
        script = os.path.join(cofitest.SOURCE_DIR, "scripts", "client-check.sh")
        p = subprocess.run(["bash", script, "--emit", out], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=scaled(500))
        self.assertEqual(p.returncode, 0, "client-check.sh failed:\n%s%s" % (p.stdout, p.stderr))
        self.assertIn("Your API description is valid", p.stdout + p.stderr)

        files = cofitest.make_files(self.input_root, 3, prefix="ts", subdir="ts")
        p = subprocess.run(["node", os.path.join(out, "client.js"), self.cofid.base_url, TOKEN]
                           + files, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=scaled(120))
        self.assertEqual(p.returncode, 0, "client.js:\n%s%s" % (p.stdout, p.stderr))
        rows = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
        self.assertEqual(sorted(r["file"] for r in rows), sorted(files))
        auth = {"Authorization": "Bearer " + TOKEN}
        bid = self.cofid.http("GET", "/batches?limit=1", headers=auth).json["batches"][0]["id"]
        for r in rows:
            call = self.cofid.http("GET", "/batches/%d/calls/%s" % (bid, r["call"]),
                                   headers=auth).json
            stt = [s for s in call["stages"] if s["name"] == "stt"][0]
            self.assertEqual(r["transcript"], stt["result"]["transcript"])
            self.assertTrue(r["transcript"])

    def test_head_is_get_without_the_body(self):
        auth = {"Authorization": "Bearer " + TOKEN}
        b = self.cofid.http("POST", "/batches", body={"files": cofitest.make_files(
            self.input_root, 1, prefix="head", subdir="head")}, headers=auth).json
        for path, status in (("/batches/%d" % b["id"], 200), ("/batches", 200),
                             ("/healthz", 200), ("/readyz", 200), ("/openapi.json", 200),
                             ("/batches/999999", 404)):
            with self.subTest(path=path):
                get = raw_http(self.cofid.port, "GET", path, headers=auth)
                head = raw_http(self.cofid.port, "HEAD", path, headers=auth)
                self.assertEqual((head.status, get.status), (status, status))
                self.assertEqual(head.raw, b"")
                self.assertEqual(head.headers.get("Content-Type"), get.headers.get("Content-Type"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
