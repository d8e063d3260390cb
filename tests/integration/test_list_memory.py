"""A page of GET /batches is bounded in bytes before it is read (db/batches_db.c): with 200
batches of 60 KiB of metadata each and limits.list_max_bytes at 64 KiB, four lists of
?limit=1000 read a few rows each, not 12 MiB of metadata each, so cofid's peak resident set
barely moves; and walking the pages still gives every batch exactly once."""

import unittest
import urllib.parse

import cofitest
from cofitest import CofiCase

LIST_MAX = 64 << 10
BATCHES = 200
PAD = 60000




class ListMemoryTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.start_cofid(extra={"limits": {"list_max_bytes": LIST_MAX}})

    def test_pages_read_bounded_and_complete(self):
        # Made in SQL: 200 POSTs of 60 KiB would measure the submissions, not the lists.
        self.db("INSERT INTO batches (name, file_count, metadata) "
                "SELECT 'pad-' || i, 1, jsonb_build_object('pad', repeat('p', %d)) "
                "FROM generate_series(1, %d) i" % (PAD, BATCHES))
        pid = self.cofid.pid
        before = cofitest.status_kib(pid, "VmHWM")
        for _ in range(4):
            r = self.http("GET", "/batches?limit=1000")
            self.assertStatus(r, 200)
            self.assertLessEqual(len(r.json["batches"]), 2)
            self.assertIsNotNone(r.json["next_cursor"])
        grown = cofitest.status_kib(pid, "VmHWM") - before
        if not cofitest.sanitized(pid):
            # Reading every row of the page would hold 12 MiB of metadata as text and again
            # as parsed JSON: the peak would grow by 20 MiB or more.
            self.assertLess(grown, 6 * 1024, "peak resident set grew by %d KiB" % grown)

        seen, cursor = [], None
        for _ in range(BATCHES + 5):
            q = {"limit": "1000"}
            if cursor is not None:
                q["cursor"] = cursor
            r = self.http("GET", "/batches?" + urllib.parse.urlencode(q))
            self.assertStatus(r, 200)
            self.assertTrue(r.json["batches"], "an empty page before the end")
            seen.extend(b["id"] for b in r.json["batches"])
            cursor = r.json["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(len(seen), BATCHES)
        self.assertEqual(len(set(seen)), BATCHES)
        self.assertEqual(seen, sorted(seen, reverse=True))


if __name__ == "__main__":
    unittest.main()
