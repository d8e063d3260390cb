"""A worker's 2xx reply larger than cofid keeps (16 MiB, pipeline/worker_http.h) is a permanent
failure of that call at that stage, not a network error (CONTRACTS §5: "a 2xx that is not a
JSON object: permanent failure of the call at that stage, no retry"; a reply cofid cannot keep
is one it cannot read as one). The node that sent it is healthy: it answered.

Two calls' stt is answered 200 with a JSON object over the cap: ~17 MiB, and exactly
16 MiB + 1 byte. Each call fails at stt with a last_error that says the reply is too large;
its stt was asked once and its file uploaded once (not uploaded again to another node); every
node stays healthy throughout; the other calls are done exactly once; the batch ends
completed_with_errors.
"""

import re
import time
import unittest

import cofitest
from cofitest import CofiCase, NODE_ENDPOINTS, scaled, sum_stat

NODES = 2
CAPACITY = 4
LATENCY = {"upload": 3, "denoise": 3, "ivr": 3, "lid": 3, "stt": 3, "llm1": 3, "llm2": 3}
N = 30
CAP = 16 << 20  # WORKER_REPLY_LIMIT
SIZES = (17 << 20, CAP + 1)


class OversizedReplyTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.start_sim(nodes=NODES, node_capacity=CAPACITY, nlp_capacity=100, latency=LATENCY,
                      seed=4)
        cls.start_cofid(sim=cls.sim, llm_concurrency=20,
                        mediator={"health_interval_ms": 1000, "timeout_ms": 30000})
        # (Health checks wait up to one interval: 200 ms was too short on a loaded machine
        # while a node streams 17 MiB, and a check that times out is a health failure.)

    def nodes_health(self):
        r = self.http("GET", "/stages/stt/status")
        self.assertStatus(r, 200)
        return {n["id"]: n["healthy"] for n in r.json["nodes"]}

    def test_a_2xx_reply_over_the_cap_fails_the_call_once(self):
        sim = self.sim
        files = cofitest.make_files(self.input_root, N, prefix="big", subdir="big")
        bid = self.create_batch(files, name="big")["id"]
        ids = self.call_ids(bid)
        big = {ids[files[3]]: SIZES[0], ids[files[11]]: SIZES[1]}
        sim.rules_all_nodes([{"endpoint": "stt", "call_ids": [c], "status": 200,
                              "body_bytes": size} for c, size in big.items()])
        self.assertEqual(set(self.nodes_health().values()), {True})

        def watch(_batch):
            h = self.nodes_health()
            if not all(h.values()):
                self.fail("%.2f s into the batch a node was reported unhealthy: %s; stt: %s"
                          % (time.monotonic() - t0, h, self.calls_summary(bid)))

        self.run_batch(bid)
        t0 = time.monotonic()
        final = self.wait_batch_final(bid, timeout=40, on_poll=watch)
        cofitest.log("batch %d ended %s after %.1f s" % (bid, final["state"],
                                                         time.monotonic() - t0))
        watch(final)

        self.assertEqual(final["state"], "completed_with_errors")
        counts = self.stage_counts(final)
        self.assertEqual(counts["stt"], {"pending": 0, "running": 0, "done": N - 2,
                                         "failed": 2, "skipped": 0})
        for call_id, size in big.items():
            call, stt = self.call_stage(bid, call_id, "stt")
            cofitest.log("call %s (reply of %d bytes): last_error %r"
                         % (call_id, size, stt["last_error"]))
            self.assertEqual(call["state"], "failed", call_id)
            self.assertEqual(stt["state"], "failed", call_id)
            self.assertEqual(stt["attempts"], 1, call_id)
            self.assertRegex(stt["last_error"] or "",
                             re.compile(r"too (large|big|long)|larger than|exceeds|over the",
                                        re.IGNORECASE))
        self.assert_done_once_except(bid, N, {c: "stt" for c in big})

        # Every call uploaded once and asked each node stage once: the two big ones too.
        nodes = sim.node_stats()
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(nodes, "requests", ep), N, ep)
        for s in nodes:
            self.assertEqual(s["repeated_keys_any"], 0, "%s saw a key again" % s["id"])
        nlp = sim.nlp_stats()
        self.assertEqual(nlp["requests"].get("llm1", 0), N - 2)
        self.assert_no_repeated_keys(sim)
        self.assertEqual(set(self.nodes_health().values()), {True})


if __name__ == "__main__":
    unittest.main(verbosity=2)
