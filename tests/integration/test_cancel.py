"""Cancelling a running batch (CONTRACTS §2): POST /batches/{id}/cancel stops dispatching new
work, pending calls become cancelled, in-flight requests finish, finished_at is set once
nothing of the batch is in flight, and the batch cannot be run again."""

import unittest

import cofitest
from cofitest import CofiCase, STAGES, sum_stat

N = 200
LATENCY = {"upload": 10, "denoise": 10, "ivr": 10, "lid": 10, "stt": 10, "llm1": 10, "llm2": 10}


class CancelTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, N, prefix="cancel")
        sim = cls.start_sim(nodes=2, node_capacity=2, nlp_capacity=20, latency=LATENCY)
        cls.start_cofid(sim=sim, llm_concurrency=4)

    def test_cancel_a_running_batch(self):
        b = self.create_batch(self.files)
        self.run_batch(b["id"])

        def started():
            snap = self.get_batch(b["id"])
            return snap if self.stage_counts(snap)["distribute"]["done"] >= 10 else None
        cofitest.poll(started, 30, what="10 uploads")
        # Running already: run again is a no-op, in another mode a conflict.
        again = self.http("POST", "/batches/%d/run" % b["id"])
        self.assertStatus(again, 202)
        self.assertEqual((again.json["state"], again.json["mode"]), ("running", "pipelined"))
        self.assertProblem(self.http("POST", "/batches/%d/run" % b["id"], body={"mode": "staged"}), 409)
        self.assertEqual(self.get_batch(b["id"])["mode"], "pipelined")
        r = self.http("POST", "/batches/%d/cancel" % b["id"])
        self.assertStatus(r, 202)
        self.assertEqual(r.json["state"], "cancelled")

        final = self.wait_batch_final(b["id"], timeout=30)
        self.assertEqual(final["state"], "cancelled")
        self.assertIsNotNone(final["finished_at"])
        counts = self.stage_counts(final)
        for name in STAGES:
            c = counts[name]
            self.assertEqual((c["pending"], c["running"], c["failed"]), (0, 0, 0), name)
            self.assertEqual(c["done"] + c["skipped"], N, name)
        self.assertLess(counts["distribute"]["done"], N, "the cancel stopped nothing")
        self.assertGreater(counts["distribute"]["skipped"], 0)

        rows = dict(self.db("SELECT status, count(*) FROM calls WHERE batch_id = %d GROUP BY 1"
                            % b["id"]))
        self.assertEqual(set(rows) - {"cancelled", "done"}, set(), rows)
        self.assertGreater(int(rows["cancelled"]), 0)
        calls = self.list_all_calls(b["id"])
        for c in calls:
            self.assertIn(c["state"], ("cancelled", "done"))
            if c["state"] == "cancelled":
                self.assertIn("skipped", [s["state"] for s in c["stages"]])
                self.assertNotIn("pending", [s["state"] for s in c["stages"]])
                self.assertNotIn("running", [s["state"] for s in c["stages"]])

        # Nothing of the batch is in flight at the workers once finished_at is set, and every
        # stage result cofi recorded was really produced once by a worker.
        nodes, nlp = self.sim.node_stats(), self.sim.nlp_stats()
        for s in nodes + [nlp]:
            self.assertEqual(s["in_flight"], 0)
            self.assertEqual(s["repeated_keys"], 0)
        for stage, ep in enumerate(cofitest.NODE_ENDPOINTS):
            recorded = self.database.count(
                "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
                "WHERE c.batch_id = %d AND cs.stage = %d AND cs.state = 'done'" % (b["id"], stage))
            self.assertLessEqual(recorded, sum_stat(nodes, "ok", ep), ep)

        self.assertProblem(self.http("POST", "/batches/%d/run" % b["id"]), 409)
        self.assertEqual(self.get_batch(b["id"])["state"], "cancelled")


if __name__ == "__main__":
    unittest.main(verbosity=2)
