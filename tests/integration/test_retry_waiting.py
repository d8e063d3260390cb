"""A call waiting to try again says so (openapi/openapi.json, Call.waiting_for): "retry", when
(`at`, in the future) and why (`why`, the failure), while the engine holds it between two
attempts; once the rule that refused it is gone it goes on and the batch completes."""

import unittest
from datetime import datetime, timezone

import cofitest
from cofitest import CofiCase, scaled

LATENCY = {"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 1, "llm1": 1, "llm2": 1}


def parse_ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class RetryWaitingTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.sim = cls.start_sim(nodes=1, node_capacity=4, nlp_capacity=20, latency=LATENCY)
        cls.start_cofid(sim=cls.sim, llm_concurrency=4, llm={"max_attempts": 20})

    def test_waiting_for_says_retry_at_and_why(self):
        files = cofitest.make_files(self.input_root, 3, prefix="rw", subdir="rw")
        b = self.create_batch(files)
        bid = b["id"]
        # Every llm1 request is refused with 503 and Retry-After: 4 until the rule goes.
        self.sim.rules(self.sim.nlp_port, [{"endpoint": "llm1", "status": 503,
                                            "retry_after": "4"}])
        self.run_batch(bid)

        def retrying():
            for c in self.list_all_calls(bid):
                wf = self.get_call(bid, c["id"]).get("waiting_for")
                if wf is not None and wf["reason"] == "retry":
                    return c["id"], wf, datetime.now(timezone.utc)
            return None
        call_id, wf, seen_at = cofitest.poll(retrying, scaled(30), interval=0.05,
                                             what="a call waiting to retry at llm1")
        self.assertIn("503", wf["why"])
        at = parse_ts(wf["at"])
        # Shown only while it is ahead; the Retry-After was 4 s.
        self.assertGreater(at, seen_at.replace(microsecond=0))
        self.assertLess((at - seen_at).total_seconds(), 4.5)
        call = self.get_call(bid, call_id)
        self.assertEqual(call["state"], "running")
        self.assertEqual(call["stages"][5]["state"], "running")

        self.sim.clear_rules(self.sim.nlp_port)
        final = self.wait_batch_final(bid, timeout=scaled(60))
        self.assertEqual(final["state"], "completed")
        self.assertNotIn("waiting_for", self.get_call(bid, call_id))
        # Done: nothing says it waits any more.
        self.assertEqual(self.db("SELECT count(*) FROM calls WHERE batch_id = %d "
                                 "AND not_before IS NOT NULL" % bid), [("0",)])


if __name__ == "__main__":
    unittest.main()
