"""A request body of several MiB (server/http.c): POST /batches with 2.5 MiB of metadata is
accepted and stored whole, and once it is answered cofid gives the heap pages its text and
parsed tree took back to the system (glibc's malloc_trim after any body of 1 MiB or more), so
its resident set falls back below the peak the body set: what `bench/run.py large` relies on to
tell the submission's peak from the run's."""

import unittest

import cofitest
from cofitest import CofiCase

MAX_BODY = 16 << 20
KEYS = 40000  # 40,000 members of 60 bytes: 2.5 MiB of JSON, ~8 MiB parsed by jansson




class LargeBodyTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 2, prefix="big")
        sim = cls.start_sim(nodes=1, node_capacity=2, nlp_capacity=4)
        cls.start_cofid(sim=sim, max_body_bytes=MAX_BODY, llm_concurrency=2,
                        extra={"limits": {"metadata_max_bytes": MAX_BODY}})

    def test_large_body_accepted_stored_and_memory_returned(self):
        metadata = {"k%06d" % i: "v" * 48 for i in range(KEYS)}
        b = self.create_batch(self.files, name="large-body", metadata=metadata)
        got = self.get_batch(b["id"])
        self.assertEqual(got["metadata"], metadata)
        rows = self.db("SELECT count(*) FROM jsonb_object_keys("
                       "(SELECT metadata FROM batches WHERE id = %d))" % b["id"])
        self.assertEqual(int(rows[0][0]), KEYS)

        pid = self.cofid.pid
        if cofitest.sanitized(pid):
            self.skipTest("the sanitizer's allocator keeps its own pages: nothing to measure")
        # The trim runs once the answer is out (libmicrohttpd's completion callback): poll.
        # Without it the resident set stays within a few hundred KiB of the peak.
        cofitest.poll(lambda: cofitest.status_kib(pid, "VmHWM")
                      - cofitest.status_kib(pid, "VmRSS") >= 3 * 1024,
                      10, what="cofid's resident set 3 MiB below its peak after the body "
                      "(VmHWM %d KiB)" % cofitest.status_kib(pid, "VmHWM"))


if __name__ == "__main__":
    unittest.main()
