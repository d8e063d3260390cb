"""A file swapped after submission (README "Security"): POST /batches checks every file, but
the upload reads it later. A file replaced meanwhile by a symbolic link to a file outside
input_root, or by a FIFO, fails its call at `distribute` with a clear last_error (nothing is
read outside the root, nothing blocks on the FIFO); the rest of the batch completes and cofid
still stops promptly on SIGTERM."""

import os
import signal
import subprocess
import time
import unittest

import cofitest
from cofitest import CofiCase

N = 10


class InputSwapTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, N, prefix="swap", subdir="day")
        cls.outside = os.path.join(cls.workdir, "outside-secret.wav")
        with open(cls.outside, "wb") as f:
            f.write(b"RIFF....WAVE not for upload")
        cls.start_sim(nodes=2, node_capacity=4, nlp_capacity=20,
                      latency={"upload": 5, "denoise": 5, "ivr": 5, "lid": 5, "stt": 5,
                               "llm1": 5, "llm2": 5})

    def test_swapped_files_fail_alone(self):
        c = self.start_cofid(sim=self.sim, owner=self,
                             mediator={"max_attempts": 2}, extra={"shutdown_grace_ms": 5000})
        b = self.create_batch(self.files, name="swap")
        link_file, fifo_file = self.files[0], self.files[1]
        # Swapped after the check: a symbolic link out of input_root, and a FIFO.
        os.unlink(os.path.join(self.input_root, link_file))
        os.symlink(self.outside, os.path.join(self.input_root, link_file))
        os.unlink(os.path.join(self.input_root, fifo_file))
        os.mkfifo(os.path.join(self.input_root, fifo_file))
        self.run_batch(b["id"])

        final = self.wait_batch_final_or_explain(b["id"], timeout=60)
        self.assertEqual(final["state"], "completed_with_errors")
        counts = self.stage_counts(final)
        self.assertEqual(counts["distribute"]["failed"], 2)
        self.assertEqual(counts["llm2"]["done"], N - 2)

        by_file = {c_["file"]: c_ for c_ in self.list_all_calls(b["id"])}
        for f, words in ((link_file, "symbolic link"), (fifo_file, "not a regular file")):
            call = self.get_call(b["id"], by_file[f]["id"])
            self.assertEqual(call["state"], "failed", f)
            dist = call["stages"][0]
            self.assertEqual(dist["name"], "distribute")
            self.assertEqual(dist["state"], "failed", f)
            self.assertIn(words, dist["last_error"] or "", "%s: %s" % (f, dist))
            self.assertIn(f, dist["last_error"])
            # A permanent failure: tried once, not retried.
            self.assertEqual(dist["attempts"], 1, dist)
        # Nothing outside the root was uploaded: one upload per good file only.
        uploads = cofitest.sum_stat(self.sim.stats_all(), "ok", "upload")
        self.assertEqual(uploads, N - 2)

        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        try:
            rc = c.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.fail("cofid did not stop within 15 s of SIGTERM:\n%s" % c.log_tail())
        cofitest.log("cofid stopped %.2f s after SIGTERM" % (time.monotonic() - t0))
        self.assertEqual(rc, 0, c.log_tail())
        c.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
