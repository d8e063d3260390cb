"""Strict HTTP (README "Security"): ambiguous framing and malformed requests are refused at once
(400, 501 for a Transfer-Encoding other than chunked) and their connection closed, so nothing
behind a proxy can be smuggled; an encoded '/' or NUL never reaches the router or a value;
unknown and too many query parameters are 400 naming them; oversized headers get 431; an
Idempotency-Key is checked (no surrounding spaces) and belongs to the token that used it.
A refused request changes nothing in the database."""

import socket
import unittest

import cofitest
from cofitest import CofiCase


def raw_exchange(port, data, timeout=5.0):
    """Sends raw bytes, reads until the server closes (or timeout); returns (status, headers,
    body bytes, closed) of the first answer; status None when nothing came."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    closed = False
    try:
        try:
            s.sendall(data)
        except OSError:
            pass
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
    finally:
        s.close()
    if not got:
        return None, {}, b"", closed
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body, closed


class HttpStrictTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 3, prefix="strict")
        cls.start_cofid(auth_tokens={"COFI_TOKEN_A": ("token-a", "write"),
                                     "COFI_TOKEN_B": ("token-b", "write")})
        cls.auth = "Authorization: Bearer token-a\r\n"

    def post_batches(self, extra_headers, body=None):
        body = body if body is not None else (b'{"files": ["%s"]}' % self.files[0].encode())
        return (b"POST /batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + self.auth.encode() + extra_headers + b"\r\n" + body)

    def refused(self, data, status, problem=True, closed=True):
        before = self.database.snapshot()
        st, headers, body, was_closed = raw_exchange(self.cofid.port, data)
        self.assertEqual(st, status, "answer to %r: %s %s" % (data[:120], st, body[:300]))
        if problem:
            self.assertEqual(headers.get("content-type"), "application/problem+json")
        if closed:
            self.assertTrue(was_closed, "the connection stayed open after %r" % data[:80])
        self.assertEqual(self.database.snapshot(), before, "%r changed the database" % data[:80])
        return body

    def test_conflicting_content_length(self):
        body = b'{"files": ["%s"]}' % self.files[0].encode()
        self.refused(self.post_batches(b"Content-Length: %d\r\nContent-Length: 3\r\n" % len(body),
                                       body), 400)
        self.refused(self.post_batches(b"Content-Length: %d\r\nContent-Length: %d\r\n"
                                       % (len(body), len(body)), body), 400)
        # Refused by the HTTP library itself (its own HTML body).
        self.refused(self.post_batches(b"Content-Length: +%d\r\n" % len(body), body), 400,
                     problem=False)

    def test_transfer_encodings(self):
        body = b'{"files": ["%s"]}' % self.files[0].encode()
        self.refused(self.post_batches(b"Transfer-Encoding: gzip\r\n", body), 501)
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        self.refused(self.post_batches(b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n"
                                       % len(chunked), chunked), 400)
        # chunked alone is fine.
        st, _, _, _ = raw_exchange(self.cofid.port, self.post_batches(
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n", chunked))
        self.assertEqual(st, 201)

    def test_malformed_header_lines(self):
        base = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        self.refused(base + b"Bad Name: v\r\n\r\n", 400)
        self.refused(base + b"X-A: a\rb\r\n\r\n", 400)
        self.refused(base + b"X-A: a\x01b\r\n\r\n", 400)
        # Refused by the HTTP library itself (its own HTML body): no Host, obs-fold, too big.
        self.refused(b"GET /healthz HTTP/1.1\r\n\r\n", 400, problem=False)
        self.refused(base + b" X-Folded: v\r\n\r\n", 400, problem=False)
        self.refused(base + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, problem=False)
        self.assertEqual(raw_exchange(self.cofid.port, base + b"Connection: close\r\n\r\n")[0], 200)

    def test_encoded_slash_and_nul(self):
        b = self.create_batch(self.files[:1], headers={"Authorization": "Bearer token-a"})
        auth = self.auth.encode()
        for target in (b"/batches%%2F%d" % b["id"], b"/batches%%2f%d" % b["id"],
                       b"/batches/%d%%00" % b["id"], b"/batches?limit=1%00",
                       b"/batches?state=created%00x"):
            self.refused(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n", 400)

    def test_query_parameters(self):
        h = {"Authorization": "Bearer token-a"}
        b = self.create_batch(self.files[:1], headers=h)
        r = self.http("GET", "/batches/%d/calls?status=failed" % b["id"], headers=h)
        self.assertProblem(r, 400)
        self.assertIn('"status"', r.json["detail"])
        r = self.http("GET", "/batches?limit=5&sort=name", headers=h)
        self.assertProblem(r, 400)
        self.assertIn('"sort"', r.json["detail"])
        self.assertProblem(self.http("GET", "/batches/%d?x=1" % b["id"], headers=h), 400)
        self.assertStatus(self.http("GET", "/batches?limit=5&state=created", headers=h), 200)
        self.assertStatus(self.http("GET", "/stages/stt/status?batch_id=%d" % b["id"], headers=h),
                          200)
        # Hundreds of arguments: answered (400), not dropped.
        many = "&".join("a%d=1" % i for i in range(400))
        body = self.refused(b"GET /batches?" + many.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                            + self.auth.encode() + b"\r\n", 400)
        self.assertIn(b"query arguments", body)

    def test_idempotency_key_checked_and_scoped_to_its_token(self):
        a = {"Authorization": "Bearer token-a"}
        b = {"Authorization": "Bearer token-b"}
        body = {"files": self.files[:2]}
        r1 = self.http("POST", "/batches", body=body, headers=dict(a, **{"Idempotency-Key": "k1"}))
        self.assertStatus(r1, 201)
        # A trailing space would name another key ("k1" and "k1   " made two batches): 400.
        for bad in ("k1   ", "k1\t", "x" * 256):
            self.assertProblem(self.http("POST", "/batches", body=body,
                                         headers=dict(a, **{"Idempotency-Key": bad})), 400,
                               repr(bad))
        # The same key with another token is another caller's key: a batch of its own.
        r2 = self.http("POST", "/batches", body=body, headers=dict(b, **{"Idempotency-Key": "k1"}))
        self.assertStatus(r2, 201)
        self.assertNotEqual(r2.json["id"], r1.json["id"])
        r3 = self.http("POST", "/batches", body=body, headers=dict(a, **{"Idempotency-Key": "k1"}))
        self.assertStatus(r3, 200)
        self.assertEqual(r3.json["id"], r1.json["id"])
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM batches WHERE id IN (%d, %d)" % (r1.json["id"], r2.json["id"])),
            2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
