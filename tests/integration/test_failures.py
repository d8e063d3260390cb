"""Failure semantics (CONTRACTS §5): retryable answers are retried (honouring Retry-After) and
the work is still recorded exactly once; a permanent 4xx fails the call at that stage without a
retry while the rest of the batch goes on; max_attempts ends a call that keeps failing.
Each scenario gets its own cofi-sim (fresh counters and rules) and cofid."""

import unittest
from datetime import datetime

import cofitest
from cofitest import CofiCase, LLM_ENDPOINTS, NODE_ENDPOINTS, STAGES, sum_stat

LATENCY = {"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 2, "llm1": 2, "llm2": 2}


def parse_ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class FailuresTest(CofiCase):

    def scenario(self, n, tag, sim_kw=None, mediator=None, llm=None, rules=None):
        """Starts a sim and a cofid for this test, submits n files, lets rules(sim, calls)
        install failure rules (calls: the batch's call objects, by seq), runs the batch to its
        end and returns (final batch, calls before the run, sim)."""
        sim = self.start_sim(owner=self, nodes=2, node_capacity=4, nlp_capacity=50,
                             latency=LATENCY, seed=3, **(sim_kw or {}))
        self.start_cofid(sim=sim, owner=self, llm_concurrency=10, mediator=mediator, llm=llm)
        files = cofitest.make_files(self.input_root, n, prefix=tag, subdir=tag)
        b = self.create_batch(files, name=tag)
        calls = sorted(self.list_all_calls(b["id"]), key=lambda c: c["seq"])
        self.assertEqual(len(calls), n)
        self.assertTrue(all(c["state"] == "pending" for c in calls))
        if rules:
            rules(sim, calls)
        self.run_batch(b["id"])
        final = self.wait_batch_final(b["id"], timeout=90)
        cofitest.log("%s: batch %d ended %s" % (tag, b["id"], final["state"]))
        return final, calls, sim

    def call_stage_rows(self, batch_id, stage):
        """{seq: (state, attempts, last_error, started_at, finished_at)} of call_stages."""
        rows = self.db("SELECT c.seq, cs.state, cs.attempts, cs.last_error, cs.started_at, "
                       "cs.finished_at FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
                       "WHERE c.batch_id = %d AND cs.stage = %d" % (batch_id, stage))
        return {int(r[0]): (r[1], int(r[2]), r[3], r[4], r[5]) for r in rows}

    def attempts_sum(self, batch_id, stage):
        return self.database.count(
            "SELECT coalesce(sum(cs.attempts), 0) FROM call_stages cs JOIN calls c "
            "ON c.id = cs.call_id WHERE c.batch_id = %d AND cs.stage = %d" % (batch_id, stage))

    def assert_all_done(self, batch, n):
        self.assertEqual(batch["state"], "completed")
        counts = self.stage_counts(batch)
        for name in STAGES:
            self.assertEqual(counts[name]["done"], n, name)
        self.assertEqual(self.db("SELECT status, stage, count(*) FROM calls WHERE batch_id = %d "
                                 "GROUP BY 1, 2" % batch["id"]), [("done", "7", str(n))])

    # ---------------------------------------------------------------------------------------

    def test_a_random_503s_are_retried_and_recorded_once(self):
        n = 100
        batch, _, sim = self.scenario(
            n, "randfail", sim_kw={"fail_rate": 0.2},
            mediator={"max_attempts": 12, "backoff_base_ms": 5, "backoff_max_ms": 50},
            llm={"max_attempts": 12, "backoff_base_ms": 5, "backoff_max_ms": 50})
        self.assert_all_done(batch, n)
        nodes, nlp = sim.node_stats(), sim.nlp_stats()
        ports = nodes + [nlp]
        self.assertGreater(sum(s["repeated_keys_any"] for s in ports), 0,
                           "no request was retried although 20%% of them failed")
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(nodes, "ok", ep), n, "ok %s" % ep)
        for ep in LLM_ENDPOINTS:
            self.assertEqual(sum_stat([nlp], "ok", ep), n, "ok %s" % ep)
        for s in ports:
            self.assertEqual(s["repeated_keys"], 0, "a stage that had succeeded was asked again")
        # cofi's count of attempts per stage is the number of requests the workers saw.
        for stage, ep in enumerate(NODE_ENDPOINTS):
            self.assertEqual(self.attempts_sum(batch["id"], stage), sum_stat(nodes, "requests", ep),
                             "attempts recorded at %s vs requests seen" % STAGES[stage])
        for stage, ep in ((5, "llm1"), (6, "llm2")):
            self.assertEqual(self.attempts_sum(batch["id"], stage), sum_stat([nlp], "requests", ep),
                             "attempts recorded at %s vs requests seen" % ep)
        self.assertGreater(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d AND cs.attempts > 1" % batch["id"]), 0)

    def test_b_503_with_retry_after_on_lid_is_honoured(self):
        n = 20
        chosen = {}

        def rules(sim, calls):
            ids = [c["id"] for c in calls[3:8]]
            chosen["seqs"] = {c["seq"] for c in calls[3:8]}
            chosen["ids"] = ids
            sim.rules_all_nodes([{"endpoint": "lid", "call_ids": ids, "status": 503,
                                  "retry_after": "1", "per_key": 1}])

        batch, calls, sim = self.scenario(n, "lid503", rules=rules)
        self.assert_all_done(batch, n)
        nodes = sim.node_stats()
        self.assertEqual(sum_stat(nodes, "requests", "lid"), n + 5)
        self.assertEqual(sum_stat(nodes, "ok", "lid"), n)
        self.assertEqual(sum(int(s["responses"].get("503", 0)) for s in nodes), 5)
        self.assertEqual(sum(s["repeated_keys"] for s in nodes), 0)
        for c in calls:
            one = self.get_call(batch["id"], c["id"])
            lid = one["stages"][3]
            self.assertEqual(lid["state"], "done")
            want = 2 if c["id"] in chosen["ids"] else 1
            self.assertEqual(lid["attempts"], want, "call %s attempts at lid" % c["id"])
            self.assertEqual(one["stages"][2]["attempts"], 1)
        lid_rows = self.call_stage_rows(batch["id"], 3)
        ivr_rows = self.call_stage_rows(batch["id"], 2)
        for seq in chosen["seqs"]:
            waited = (parse_ts(lid_rows[seq][4]) - parse_ts(ivr_rows[seq][4])).total_seconds()
            self.assertGreaterEqual(waited, 0.95, "call seq %d went from ivr to lid in %.3f s "
                                    "although lid answered Retry-After: 1" % (seq, waited))

    def test_b_429_on_llm1_is_retried(self):
        n = 20
        chosen = {}

        def rules(sim, calls):
            ids = [c["id"] for c in calls[:5]]
            chosen["ids"] = ids
            sim.rules(sim.nlp_port, [{"endpoint": "llm1", "call_ids": ids, "status": 429,
                                      "per_key": 1}])

        batch, calls, sim = self.scenario(n, "llm429", rules=rules)
        self.assert_all_done(batch, n)
        nlp = sim.nlp_stats()
        self.assertEqual(nlp["requests"]["llm1"], n + 5)
        self.assertEqual(nlp["ok"]["llm1"], n)
        self.assertEqual(nlp["ok"]["llm2"], n)
        self.assertEqual(int(nlp["responses"].get("429", 0)), 5)
        self.assertEqual(nlp["repeated_keys"], 0)
        for c in calls:
            one = self.get_call(batch["id"], c["id"])
            want = 2 if c["id"] in chosen["ids"] else 1
            self.assertEqual(one["stages"][5]["attempts"], want, "call %s attempts at llm1" % c["id"])
            self.assertEqual(one["stages"][5]["state"], "done")

    def test_c_permanent_400_on_ivr_fails_only_those_calls(self):
        n = 20
        chosen = {}

        def rules(sim, calls):
            picked = [calls[i] for i in (0, 4, 9, 13, 19)]
            chosen["ids"] = {c["id"] for c in picked}
            chosen["seqs"] = {c["seq"] for c in picked}
            sim.rules_all_nodes([{"endpoint": "ivr", "call_ids": sorted(chosen["ids"]),
                                  "status": 400}])

        batch, calls, sim = self.scenario(n, "ivr400", mediator={"max_attempts": 3}, rules=rules)
        self.assertEqual(batch["state"], "completed_with_errors")
        counts = self.stage_counts(batch)
        for name in ("distribute", "denoise"):
            self.assertEqual(counts[name], {"pending": 0, "running": 0, "done": n, "failed": 0,
                                            "skipped": 0}, name)
        self.assertEqual(counts["ivr"], {"pending": 0, "running": 0, "done": n - 5, "failed": 5,
                                         "skipped": 0})
        for name in ("lid", "stt", "llm1", "llm2"):
            self.assertEqual(counts[name], {"pending": 0, "running": 0, "done": n - 5, "failed": 0,
                                            "skipped": 5}, name)

        failed = self.list_all_calls(batch["id"], state="failed")
        self.assertEqual({c["id"] for c in failed}, chosen["ids"])
        done = self.list_all_calls(batch["id"], state="done")
        self.assertEqual(len(done), n - 5)
        for cid in chosen["ids"]:
            one = self.get_call(batch["id"], cid)
            self.assertEqual((one["state"], one["stage"]), ("failed", "ivr"))
            st = one["stages"]
            self.assertEqual([s["state"] for s in st],
                             ["done", "done", "failed", "skipped", "skipped", "skipped", "skipped"])
            self.assertEqual(st[2]["attempts"], 1, "a permanent 400 was retried")
            self.assertTrue(st[2]["last_error"], "no last_error recorded")
            self.assertIn("400", st[2]["last_error"])
            self.assertIsNotNone(st[2]["finished_at"])
            for s in st[3:]:
                self.assertEqual(s["attempts"], 0)
                self.assertIsNone(s["result"])

        nodes = sim.node_stats()
        self.assertEqual(sum_stat(nodes, "requests", "ivr"), n, "ivr requests: one per call")
        self.assertEqual(sum_stat(nodes, "ok", "ivr"), n - 5)
        self.assertEqual(sum(int(s["responses"].get("400", 0)) for s in nodes), 5)
        for ep in ("lid", "stt"):
            self.assertEqual(sum_stat(nodes, "requests", ep), n - 5, ep)
        nlp = sim.nlp_stats()
        self.assertEqual(nlp["requests"].get("llm1", 0), n - 5)
        self.assertEqual(nlp["requests"].get("llm2", 0), n - 5)

        self.assertEqual(self.db("SELECT status, stage, count(*) FROM calls WHERE batch_id = %d "
                                 "GROUP BY 1, 2 ORDER BY 1" % batch["id"]),
                         [("done", "7", str(n - 5)), ("failed", "2", "5")])
        ivr_rows = self.call_stage_rows(batch["id"], 2)
        for seq in chosen["seqs"]:
            state, attempts, last_error = ivr_rows[seq][:3]
            self.assertEqual((state, attempts), ("failed", 1))
            self.assertTrue(last_error)
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d AND c.status = 'failed' AND cs.stage > 2" % batch["id"]), 0)

    def test_d_max_attempts_ends_a_call_that_keeps_failing(self):
        n = 3
        chosen = {}

        def rules(sim, calls):
            chosen["id"] = calls[1]["id"]
            sim.rules_all_nodes([{"endpoint": "denoise", "call_ids": [chosen["id"]],
                                  "status": 503}])

        batch, calls, sim = self.scenario(
            n, "maxatt", mediator={"max_attempts": 3, "backoff_base_ms": 10, "backoff_max_ms": 50},
            rules=rules)
        self.assertEqual(batch["state"], "completed_with_errors")
        counts = self.stage_counts(batch)
        self.assertEqual(counts["denoise"]["failed"], 1)
        self.assertEqual(counts["denoise"]["done"], n - 1)
        self.assertEqual(counts["llm2"], {"pending": 0, "running": 0, "done": n - 1, "failed": 0,
                                          "skipped": 1})
        one = self.get_call(batch["id"], chosen["id"])
        self.assertEqual((one["state"], one["stage"]), ("failed", "denoise"))
        den = one["stages"][1]
        self.assertEqual((den["state"], den["attempts"]), ("failed", 3))
        self.assertTrue(den["last_error"])
        self.assertIn("503", den["last_error"])
        self.assertEqual([s["state"] for s in one["stages"][2:]], ["skipped"] * 5)
        nodes = sim.node_stats()
        self.assertEqual(sum_stat(nodes, "requests", "denoise"), (n - 1) + 3)
        self.assertEqual(sum(int(s["responses"].get("503", 0)) for s in nodes), 3)
        self.assertEqual(self.call_stage_rows(batch["id"], 1)[calls[1]["seq"]][:2], ("failed", 3))


if __name__ == "__main__":
    unittest.main(verbosity=2)
