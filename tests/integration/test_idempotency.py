"""Idempotent submission (CONTRACTS §2): POST /batches with an Idempotency-Key returns the same
batch for the same key and body (201, then 200), 409 for the same key with another body, and
never makes a second batch, even when the same request arrives ten times at once."""

import threading
import unittest

import cofitest
from cofitest import CofiCase


class IdempotencyTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 10, prefix="idem")
        cls.start_cofid()  # nothing runs here: no workers needed

    def batches_with_key(self, key):
        return self.database.count("SELECT count(*) FROM batches WHERE idempotency_key = '%s'"
                                   % key.replace("'", "''"))

    def test_same_key_same_body_returns_the_same_batch(self):
        key = "upstream-" + cofitest.secrets.token_hex(8)
        body = {"name": "idem", "files": self.files[:3], "metadata": {"source": "crm", "n": 1}}
        n_batches = self.database.count("SELECT count(*) FROM batches")
        first = self.http("POST", "/batches", body=body, headers={"Idempotency-Key": key})
        self.assertStatus(first, 201)
        self.assertTrue((first.headers.get("Location") or "").endswith("/batches/%d" % first.json["id"]),
                        "Location: %s" % first.headers.get("Location"))
        second = self.http("POST", "/batches", body=body, headers={"Idempotency-Key": key})
        self.assertStatus(second, 200)
        for k in ("id", "name", "file_count", "metadata", "created_at", "mode", "state"):
            self.assertEqual(second.json[k], first.json[k], k)
        self.assertEqual(self.batches_with_key(key), 1)
        self.assertEqual(self.database.count("SELECT count(*) FROM batches"), n_batches + 1)
        self.assertEqual(self.database.count("SELECT count(*) FROM calls WHERE batch_id = %d"
                                             % first.json["id"]), 3)
        # A third time, byte for byte the same request: still the same batch.
        third = self.http("POST", "/batches", body=body, headers={"Idempotency-Key": key})
        self.assertStatus(third, 200)
        self.assertEqual(third.json["id"], first.json["id"])

    def test_same_key_other_body_is_a_conflict(self):
        key = "upstream-" + cofitest.secrets.token_hex(8)
        first = self.http("POST", "/batches", body={"files": self.files[:2]},
                          headers={"Idempotency-Key": key})
        self.assertStatus(first, 201)
        before = self.database.snapshot()
        for other in ({"files": self.files[:3]}, {"files": self.files[:2], "name": "x"},
                      {"files": list(reversed(self.files[:2]))}):
            with self.subTest(body=other):
                r = self.http("POST", "/batches", body=other, headers={"Idempotency-Key": key})
                self.assertProblem(r, 409)
                self.assertEqual(self.database.snapshot(), before, "a 409 changed the database")
        again = self.http("POST", "/batches", body={"files": self.files[:2]},
                          headers={"Idempotency-Key": key})
        self.assertStatus(again, 200)
        self.assertEqual(again.json["id"], first.json["id"])

    def test_other_keys_or_no_key_make_new_batches(self):
        body = {"files": self.files[:1]}
        ids = set()
        for key in ("k1-" + cofitest.secrets.token_hex(4), "k2-" + cofitest.secrets.token_hex(4)):
            r = self.http("POST", "/batches", body=body, headers={"Idempotency-Key": key})
            self.assertStatus(r, 201)
            ids.add(r.json["id"])
        for _ in range(2):
            r = self.http("POST", "/batches", body=body)
            self.assertStatus(r, 201)
            ids.add(r.json["id"])
        self.assertEqual(len(ids), 4)

    def test_repeat_after_the_batch_changed(self):
        key = "upstream-" + cofitest.secrets.token_hex(8)
        body = {"files": self.files[:2]}
        first = self.http("POST", "/batches", body=body, headers={"Idempotency-Key": key})
        self.assertStatus(first, 201)
        self.assertStatus(self.http("POST", "/batches/%d/cancel" % first.json["id"]), 202)
        again = self.http("POST", "/batches", body=body, headers={"Idempotency-Key": key})
        self.assertStatus(again, 200)
        self.assertEqual(again.json["id"], first.json["id"])
        self.assertEqual(again.json["state"], "cancelled")
        self.assertEqual(self.batches_with_key(key), 1)

    def test_ten_concurrent_identical_posts_make_one_batch(self):
        key = "burst-" + cofitest.secrets.token_hex(8)
        body = {"name": "burst", "files": self.files}
        n_batches = self.database.count("SELECT count(*) FROM batches")
        barrier = threading.Barrier(10)
        results = [None] * 10

        def post(i):
            try:
                barrier.wait(timeout=10)
                results[i] = self.http("POST", "/batches", body=body,
                                       headers={"Idempotency-Key": key})
            except Exception as e:  # reported below, in the test's thread
                results[i] = e

        threads = [threading.Thread(target=post, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for r in results:
            self.assertIsInstance(r, cofitest.Response, "a request failed: %r" % (r,))
        statuses = sorted(r.status for r in results)
        self.assertEqual(statuses, [200] * 9 + [201], "exactly one 201, the others 200")
        self.assertEqual(len({r.json["id"] for r in results}), 1)
        self.assertEqual(self.batches_with_key(key), 1)
        self.assertEqual(self.database.count("SELECT count(*) FROM batches"), n_batches + 1)
        self.assertEqual(self.database.count("SELECT count(*) FROM calls WHERE batch_id = %d"
                                             % results[0].json["id"]), len(self.files))


if __name__ == "__main__":
    unittest.main(verbosity=2)
