"""Instances joining and leaving while nodes have one slot each (README: "several cofid instances
can share one database"; each node's capacity and the NLP API's limit are split between the
live instances through instance_shares, the remainder going to the lowest instance id).

Two nodes of capacity 1, llm.concurrency 2. With two instances the lower id ("a") gets both
nodes' one slot and the other ("b") none; each gets one NLP slot.

A. "b" runs a batch alone; mid-batch "a" starts. b's share of every node drops to 0, so the
   calls b holds for the nodes must go back to the queue (or to a): the batch completes within
   a deadline, no call stays running, no node ever has more than one request at once, every
   call is recorded exactly once, and the shares never add up to more than the limits.
B. "a" and "b" run a batch together; mid-batch "a" stops (SIGTERM, clean exit). "b" takes the
   shares back and finishes the batch, with the same checks.
"""

import time
import unittest

import cofitest
from cofitest import CofiCase, scaled

NODES = 2
LLM_CONCURRENCY = 2
LATENCY = {"upload": 50, "denoise": 50, "ivr": 50, "lid": 50, "stt": 50, "llm1": 5, "llm2": 5}
LEASE_MS = 2500
N = 100
LIMITS = {"nlp": LLM_CONCURRENCY, "node:gpu-0": 1, "node:gpu-1": 1}


class SharesTest(CofiCase):

    def new_sim(self, seed):
        return self.start_sim(owner=self, nodes=NODES, node_capacity=1, nlp_capacity=50,
                              latency=LATENCY, jitter_pct=10, seed=seed)

    def new_cofid(self, sim, instance_id):
        return self.start_cofid(sim=sim, owner=self, llm_concurrency=LLM_CONCURRENCY,
                                extra={"lease_ms": LEASE_MS}, primary=False,
                                env={"COFI_INSTANCE_ID": instance_id})

    def share_sums(self):
        """{resource: sum of the instances' shares}."""
        return {r: int(s) for r, s in self.db(
            "SELECT resource, sum(share) FROM instance_shares GROUP BY 1")}

    def shares(self):
        return {(i, r): int(s) for i, r, s in self.db(
            "SELECT instance, resource, share FROM instance_shares")}

    def distributed(self, bid, cofid):
        return self.stage_counts(self.get_batch(bid, cofid=cofid))["distribute"]["done"]

    def finish_watching_shares(self, bid, cofid):
        """Polls the batch (through cofid) until it ends, sampling the sums of the shares at
        every poll; asserts they never exceeded the limits. Returns the final batch."""
        worst = {}

        def ended():
            for r, v in self.share_sums().items():
                worst[r] = max(worst.get(r, 0), v)
                self.assertLessEqual(v, LIMITS[r], "shares of %s add up to %d: %s"
                                     % (r, v, self.shares()))
            b = self.get_batch(bid, cofid=cofid)
            return b if b["state"] != "running" and b["finished_at"] is not None else None

        t0 = time.monotonic()
        try:
            final = cofitest.poll(ended, scaled(45), interval=0.1, what="batch %d to end" % bid)
        except AssertionError as e:
            raise AssertionError("%s\ncalls (stage, status, lease_owner, count): %s\nshares: %s"
                                 % (e, self.calls_summary(bid), self.shares())) from None
        cofitest.log("batch %d ended %s %.1f s later; largest sums of shares %s"
                     % (bid, final["state"], time.monotonic() - t0, worst))
        return final

    def assert_batch_done(self, bid, final, sim):
        self.assertEqual(final["state"], "completed")
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM calls WHERE batch_id = %d AND status = 'running'" % bid), 0)
        self.assert_calls_recorded_once(bid, N)
        for s in sim.node_stats():
            self.assertLessEqual(s["max_concurrent"], 1, "node %s" % s["id"])
        self.assertLessEqual(sim.nlp_stats()["max_concurrent"], LLM_CONCURRENCY)

    # ---------------------------------------------------------------------------------------

    def test_a_lower_id_joins_mid_batch(self):
        sim = self.new_sim(31)
        b = self.new_cofid(sim, "b")
        files = cofitest.make_files(self.input_root, N, prefix="join", subdir="join")
        bid = self.create_batch(files, name="join", cofid=b)["id"]
        self.run_batch(bid, cofid=b)
        cofitest.poll(lambda: self.distributed(bid, b) >= N // 5, scaled(30), interval=0.02,
                      what="b well into the batch")
        self.assertLess(self.distributed(bid, b), N)
        a = self.new_cofid(sim, "a")
        # a takes both nodes' slot, b none; one NLP slot each.
        want = {("a", "nlp"): 1, ("b", "nlp"): 1, ("a", "node:gpu-0"): 1,
                ("a", "node:gpu-1"): 1}
        cofitest.poll(lambda: {k: v for k, v in self.shares().items() if v} == want,
                      scaled(15), interval=0.05, what="the shares to settle at %s" % want)
        cofitest.log("a joined at distribute done %d" % self.distributed(bid, b))
        final = self.finish_watching_shares(bid, b)
        self.assert_batch_done(bid, final, sim)
        self.assertEqual(a.alive() and b.alive(), True)

    def test_b_lower_id_leaves_mid_batch(self):
        sim = self.new_sim(32)
        a = self.new_cofid(sim, "a")
        b = self.new_cofid(sim, "b")
        want = {("a", "nlp"): 1, ("b", "nlp"): 1, ("a", "node:gpu-0"): 1,
                ("a", "node:gpu-1"): 1}
        cofitest.poll(lambda: {k: v for k, v in self.shares().items() if v} == want,
                      scaled(15), interval=0.05, what="the shares to settle at %s" % want)
        files = cofitest.make_files(self.input_root, N, prefix="leave", subdir="leave")
        bid = self.create_batch(files, name="leave", cofid=b)["id"]
        self.run_batch(bid, cofid=b)
        cofitest.poll(lambda: self.distributed(bid, b) >= N // 5, scaled(30), interval=0.02,
                      what="the batch well under way")
        self.assertLess(self.distributed(bid, b), N)
        a.stop()  # SIGTERM; asserts a clean exit
        cofitest.log("a stopped at distribute done %d" % self.distributed(bid, b))
        final = self.finish_watching_shares(bid, b)
        self.assert_batch_done(bid, final, sim)
        # b holds every limit whole.
        want = {("b", r): v for r, v in LIMITS.items()}
        cofitest.poll(lambda: self.shares() == want, scaled(10), interval=0.1,
                      what="b to hold every limit %s" % want)


if __name__ == "__main__":
    unittest.main(verbosity=2)
