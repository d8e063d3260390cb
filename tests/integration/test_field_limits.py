"""Limits per field and per list page (openapi/openapi.json, CreateBatch, BatchList,
CallList): a name of more than 256 characters and more than 1,000,000 files are 422, metadata
over limits.metadata_max_bytes (64 KiB by default) as JSON is 413, and nothing is stored; a
list page stops early once its items would pass limits.list_max_bytes, and its next_cursor
goes on from there, so walking the pages still gives every item exactly once."""

import json
import unittest
import urllib.parse

import cofitest
from cofitest import CofiCase

LIST_MAX = 4096


class FieldLimitsTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 30, prefix="lim")
        cls.start_cofid(max_body_bytes=8 << 20, extra={"limits": {"list_max_bytes": LIST_MAX}})

    def rejected(self, body, status):
        before = self.database.snapshot()
        r = self.http("POST", "/batches", body=body)
        self.assertProblem(r, status)
        self.assertEqual(self.database.snapshot(), before)
        return r

    def test_name_length(self):
        self.rejected({"files": self.files[:1], "name": "n" * 257}, 422)
        self.create_batch(self.files[:1], name="n" * 256)
        # Characters, not bytes: 256 two-byte characters are fine.
        self.create_batch(self.files[:1], name="\u00e9" * 256)
        self.rejected({"files": self.files[:1], "name": "\u00e9" * 257}, 422)

    def test_metadata_size(self):
        self.rejected({"files": self.files[:1], "metadata": {"k": "v" * 70000}}, 413)
        b = self.create_batch(self.files[:1], metadata={"k": "v" * 60000})
        self.assertEqual(len(self.get_batch(b["id"])["metadata"]["k"]), 60000)

    def test_file_count(self):
        body = ('{"files": [%s]}' % ",".join(['"x"'] * 1000001)).encode()
        before = self.database.snapshot()
        r = self.http("POST", "/batches", raw=body, headers={"Content-Type": "application/json"})
        self.assertProblem(r, 422)
        self.assertIn("1000000", r.json["detail"])
        self.assertEqual(self.database.snapshot(), before)

    def walk(self, path, key):
        items, cursor, sizes = [], None, []
        for _ in range(1000):
            q = {"limit": "1000"}
            if cursor is not None:
                q["cursor"] = cursor
            r = self.http("GET", "%s?%s" % (path, urllib.parse.urlencode(q)))
            self.assertStatus(r, 200)
            page = r.json[key]
            self.assertTrue(page, "an empty page before the end")
            sizes.append(len(page))
            # Bounded in bytes (the first item of a page always stays).
            text = sum(len(json.dumps(i, separators=(",", ":"))) + 1 for i in page)
            self.assertTrue(len(page) == 1 or text <= LIST_MAX + 200, (len(page), text))
            items.extend(page)
            cursor = r.json["next_cursor"]
            if cursor is None:
                return items, sizes
        self.fail("%s never ended" % path)

    def test_batch_list_bounded_in_bytes(self):
        made = [self.create_batch(self.files[:1], name="big-%d" % i,
                                  metadata={"pad": "p" * 1500})["id"] for i in range(6)]
        items, sizes = self.walk("/batches", "batches")
        ids = [b["id"] for b in items]
        self.assertEqual(len(ids), len(set(ids)), "a batch served twice")
        self.assertTrue(set(made) <= set(ids))
        self.assertEqual(ids, sorted(ids, reverse=True))
        self.assertGreater(len(sizes), 1, "one page held everything: %s" % sizes)

    def test_call_list_bounded_in_bytes(self):
        b = self.create_batch(self.files)
        items, sizes = self.walk("/batches/%d/calls" % b["id"], "calls")
        self.assertEqual(sorted(c["file"] for c in items), sorted(self.files))
        self.assertEqual([c["seq"] for c in items], sorted(c["seq"] for c in items))
        self.assertGreater(len(sizes), 1, "one page held all 30 calls: %s" % sizes)


if __name__ == "__main__":
    unittest.main(verbosity=2)
