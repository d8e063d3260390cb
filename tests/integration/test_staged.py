"""A batch run in `staged` mode: it completes like a pipelined one, and no call starts stage s
before every call of the batch has finished stage s-1 (seen in the database's timings and in
every progress snapshot of the API)."""

import unittest

import cofitest
from cofitest import CofiCase, LLM_ENDPOINTS, NODE_ENDPOINTS, STAGES, sum_stat

N = 300
CAPACITIES = [3, 3, 3]
LATENCY = {"upload": 1, "denoise": 2, "ivr": 1, "lid": 2, "stt": 3, "llm1": 3, "llm2": 3}


class StagedTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, N, subdir="staged")
        sim = cls.start_sim(nodes=3, node_capacity=4, nlp_capacity=50, latency=LATENCY,
                            jitter_pct=30, seed=5)
        cls.start_cofid(sim=sim, node_capacities=CAPACITIES, llm_concurrency=10)
        helper = cls("test_batch_completed")
        cls.created = helper.create_batch(cls.files, name="staged run")
        cls.run_reply = helper.run_batch(cls.created["id"], mode="staged")
        cls.snapshots = []
        cls.batch = helper.wait_batch_final(cls.created["id"], timeout=120,
                                            on_poll=cls.snapshots.append)
        cls.bid = cls.batch["id"]
        cls.node_stats = sim.node_stats()
        cls.nlp_stats = sim.nlp_stats()

    def test_batch_completed(self):
        self.assertEqual(self.created["mode"], "pipelined")
        self.assertEqual(self.run_reply["mode"], "staged")
        self.assertIn(self.run_reply["state"], ("running", "completed"))
        b = self.batch
        self.assertEqual((b["state"], b["mode"], b["file_count"], b["name"]),
                         ("completed", "staged", N, "staged run"))
        counts = self.stage_counts(b)
        for name in STAGES:
            self.assertEqual(counts[name]["done"], N, name)
        rows = self.db("SELECT status, stage, count(*) FROM calls WHERE batch_id = %d GROUP BY 1, 2"
                       % self.bid)
        self.assertEqual(rows, [("done", "7", str(N))])
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d AND cs.state = 'done' AND cs.result IS NOT NULL" % self.bid), 7 * N)

    def test_no_stage_starts_before_the_previous_one_ended_db(self):
        rows = self.db(
            "SELECT cs.stage, min(coalesce(cs.started_at, cs.finished_at)), max(cs.finished_at), "
            "count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d GROUP BY cs.stage ORDER BY cs.stage" % self.bid)
        self.assertEqual([int(r[0]) for r in rows], list(range(7)))
        # Compared in SQL, as timestamptz.
        for s in range(1, 7):
            with self.subTest(stage=STAGES[s]):
                ok = self.database.scalar(
                    "SELECT (SELECT min(coalesce(cs.started_at, cs.finished_at)) FROM call_stages cs "
                    "        JOIN calls c ON c.id = cs.call_id WHERE c.batch_id = %d AND cs.stage = %d)"
                    " >= (SELECT max(cs.finished_at) FROM call_stages cs "
                    "        JOIN calls c ON c.id = cs.call_id WHERE c.batch_id = %d AND cs.stage = %d)"
                    % (self.bid, s, self.bid, s - 1))
                self.assertEqual(ok, "t", "stage %s started before %s had ended: %s"
                                 % (STAGES[s], STAGES[s - 1], rows))
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d AND cs.started_at IS NULL" % self.bid), 0,
            "stage records without started_at")

    def test_no_stage_starts_before_the_previous_one_ended_api(self):
        self.assertGreater(len(self.snapshots), 0)
        for snap in self.snapshots:
            counts = self.stage_counts(snap)
            for s, name in enumerate(STAGES):
                c = counts[name]
                if c["running"] or c["done"]:
                    for earlier in STAGES[:s]:
                        e = counts[earlier]
                        self.assertEqual(e["pending"] + e["running"], 0,
                                         "%s ran while %s was not over: %s"
                                         % (name, earlier, snap["stages"]))

    def test_sim_saw_every_stage_exactly_once_per_call(self):
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(self.node_stats, "ok", ep), N, ep)
        for ep in LLM_ENDPOINTS:
            self.assertEqual(sum_stat([self.nlp_stats], "ok", ep), N, ep)
        for i, s in enumerate(self.node_stats):
            self.assertEqual(s["repeated_keys"], 0)
            self.assertLessEqual(s["max_in_flight"], CAPACITIES[i])
            # max_in_flight is capped by the node's own queue; max_concurrent counts every
            # request cofi had open at once, so it is what shows cofi kept the capacity.
            self.assertLessEqual(s["max_concurrent"], CAPACITIES[i])
        self.assertEqual(self.nlp_stats["repeated_keys"], 0)
        self.assertLessEqual(self.nlp_stats["max_in_flight"], 10)
        self.assertLessEqual(self.nlp_stats["max_concurrent"], 10)


if __name__ == "__main__":
    unittest.main(verbosity=2)
