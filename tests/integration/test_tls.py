"""Optional TLS (README "Security"): with tls.cert_file and tls.key_file cofid serves HTTPS
only; a client that trusts the certificate (self-signed, made here with the openssl CLI) gets
its answers, plain HTTP gets none, and tokens travel encrypted. A key file that can't be read
stops cofid at start with the key named."""

import json
import os
import shutil
import ssl
import subprocess
import http.client
import unittest

import cofitest
from cofitest import CofiCase


class TlsCofid(cofitest.Cofid):
    """A cofid whose readiness is checked over HTTPS."""

    def __init__(self, *args, ca=None, **kw):
        super().__init__(*args, **kw)
        self.ca = ca

    def https(self, method, path, headers=None, body=None):
        ctx = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def _ready(self):
        if not self.alive():
            return "dead"
        try:
            status, _, _ = self.https("GET", "/readyz")
        except (OSError, http.client.HTTPException):
            return None
        return "ready" if status == 200 else None

    def start(self, timeout=20.0):
        self.port = cofitest.free_port()
        self.config_path = os.path.join(self.workdir, "cofid-tls-%d.json" % self.port)
        with open(self.config_path, "w") as f:
            json.dump(self.config(), f)
        self._spawn([cofitest.binary("COFID"), "--config", self.config_path], env=self._env(),
                    tag="-tls-%d" % self.port)
        state = cofitest.poll(self._ready, timeout, interval=0.1, what="cofid HTTPS /readyz")
        if state != "ready":
            raise cofitest.HarnessError("cofid (TLS) did not start:\n%s" % self.log_tail())
        return self


class TlsTest(CofiCase):

    @classmethod
    def prepare(cls):
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("no openssl CLI")
        cls.cert = os.path.join(cls.workdir, "cert.pem")
        cls.key = os.path.join(cls.workdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", cls.key, "-out", cls.cert, "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.files = cofitest.make_files(cls.input_root, 1, prefix="tls")

    def new(self, tls):
        dead = cofitest.free_port()
        c = TlsCofid(self.workdir, self.database, self.input_root,
                     [("gpu-0", "http://127.0.0.1:%d" % dead, 1)], "http://127.0.0.1:%d" % dead,
                     auth_tokens={"COFI_TOKEN_OPS": ("tls-secret", "write")},
                     extra={"tls": tls}, ca=self.cert)
        self.processes.append(c)
        self.addCleanup(c.stop)
        return c

    def test_https_only(self):
        c = self.new({"cert_file": self.cert, "key_file": self.key}).start()
        status, _, body = c.https("GET", "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {"status": "ok"})
        status, headers, body = c.https(
            "POST", "/batches", body=json.dumps({"files": self.files}),
            headers={"Authorization": "Bearer tls-secret", "Content-Type": "application/json"})
        self.assertEqual(status, 201, body)
        status, _, _ = c.https("GET", "/batches", headers={"Authorization": "Bearer nope"})
        self.assertEqual(status, 401)
        # Plain HTTP on the same port gets no HTTP answer.
        with self.assertRaises((OSError, http.client.HTTPException)):
            r = cofitest.raw_http(c.port, "GET", "/healthz", timeout=5)
            if r.status == 200:
                self.fail("plain HTTP was answered 200 on the HTTPS port")
            raise http.client.HTTPException("answered %d" % r.status)
        with open(c.log_path, encoding="utf-8", errors="replace") as f:
            self.assertIn("(HTTPS)", f.read())

    def test_unreadable_key_stops_start(self):
        c = self.new({"cert_file": self.cert, "key_file": os.path.join(self.workdir, "nope.pem")})
        c.port = cofitest.free_port()
        c.config_path = os.path.join(self.workdir, "bad-tls.json")
        with open(c.config_path, "w") as f:
            json.dump(c.config(), f)
        p = subprocess.run([cofitest.binary("COFID"), "--config", c.config_path], env=c._env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"tls.key_file", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
