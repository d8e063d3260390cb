"""A huge batch is routine (issue #12, "A million calls is routine"): POST /batches of 200,000
paths (~8 MB of JSON) is answered 201 within a deadline, every call stored in order, and cofid's
resident set stays bounded: the body is scanned in place and the calls streamed to PostgreSQL
(COPY), never held as a tree of strings nor copied whole. A bad file at the very end refuses
the batch (422, the file named) and leaves nothing behind. bench/run.py million measures the
same at a million."""

import json
import os
import time
import unittest

import cofitest
from cofitest import CofiCase, scaled

N = 200000
# cofid's peak resident set (VmHWM) may not pass this. At 200,000 paths it was 20 MiB, the
# body's 8 MB included; holding the files as a jansson tree plus the copies made for the
# database took about 70 MiB.
RSS_BOUND_MIB = 48




def path_of(i):
    return "2026-12-03/queue-%03d/call-%08d.wav" % (i // 1000, i)


class HugeBatchTest(CofiCase):

    @classmethod
    def prepare(cls):
        # Each folder's 1,000 files are hard links of its first (a file has at most 65,000
        # links): seconds, and 200 inodes.
        blob = cofitest.make_files(cls.input_root, 1, prefix="huge")[0]
        with open(os.path.join(cls.input_root, blob), "rb") as f:
            data = f.read()
        for i in range(N):
            p = os.path.join(cls.input_root, path_of(i))
            if i % 1000 == 0:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                src = p
                with open(p, "wb") as f:
                    f.write(data)
                continue
            os.link(src, p)
        cls.sim = cls.start_sim(nodes=1, node_capacity=2, nlp_capacity=4)
        cls.start_cofid(sim=cls.sim, max_body_bytes=64 << 20, llm_concurrency=2)

    def post(self, files):
        raw = json.dumps({"name": "huge", "files": files}).encode()
        t = time.monotonic()
        r = self.cofid.http("POST", "/batches", raw=raw,
                            headers={"Content-Type": "application/json"}, timeout=scaled(120))
        return r, time.monotonic() - t, len(raw)

    def assert_rss_bounded(self, what):
        pid = self.cofid.pid
        if cofitest.sanitized(pid):
            return
        hwm = cofitest.status_kib(pid, "VmHWM") / 1024.0
        cofitest.log("%s: cofid VmHWM %.1f MiB" % (what, hwm))
        self.assertLess(hwm, RSS_BOUND_MIB, "cofid's peak resident set after %s" % what)

    def test_a_200k_batch_bounded_then_a_bad_last_file_refused(self):
        files = [path_of(i) for i in range(N)]
        r, took, size = self.post(files)
        self.assertStatus(r, 201)
        cofitest.log("POST /batches of %d files (%.1f MB) answered in %.2f s"
                     % (N, size / 1e6, took))
        self.assertLess(took, scaled(30))
        self.assertEqual(r.json["file_count"], N)
        bid = r.json["id"]
        rows = self.db("SELECT count(*), min(seq), max(seq), "
                       "count(*) FILTER (WHERE file <> '2026-12-03/queue-' || "
                       "lpad((seq / 1000)::text, 3, '0') || '/call-' || lpad(seq::text, 8, '0') "
                       "|| '.wav') FROM calls WHERE batch_id = %d" % bid)
        self.assertEqual(rows, [(str(N), "0", str(N - 1), "0")])
        self.assertEqual(self.stage_counts(self.get_batch(bid))["distribute"]["pending"], N)
        self.assert_rss_bounded("a batch of %d files" % N)

        # The last file is missing: checked while the calls stream in, so the whole batch is
        # rolled back and the problem names the file.
        before = self.database.snapshot()
        files[-1] = "2026-12-03/queue-199/missing.wav"
        r, _, _ = self.post(files)
        self.assertProblem(r, 422)
        self.assertEqual(r.json["errors"], [{"file": files[-1], "reason": "does not exist"}])
        self.assertEqual(self.database.snapshot(), before)
        self.assert_rss_bounded("a refused batch of %d files" % N)


if __name__ == "__main__":
    unittest.main()
