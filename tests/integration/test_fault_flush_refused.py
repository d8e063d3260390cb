"""A flush the database refuses loses nothing and stalls nothing: the flusher splits the
statement down to the one call whose record is at fault, fails that call alone with a clear
last_error, and writes every other call's record once. A refusal that may pass (a serialization
failure) is tried again and fails no call.

The database is made to refuse one call's llm1 result with a trigger on call_stages (the result
cofi-sim gives that call is {"error": "injected"}, answered 200 by a rule): before fenced claims,
the whole flush was handed back to the queue, the call was asked for again and again, the other
calls' finished stages were asked for again, and the batch never ended."""

import unittest

import cofitest
from cofitest import CofiCase, LLM_ENDPOINTS, NODE_ENDPOINTS, STAGES, sum_stat

LATENCY = {"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 2, "llm1": 3, "llm2": 3}
N = 60
SLOW = getattr(cofitest, "SLOW", 1.0)  # deadlines scale on a loaded machine


class FlushRefusedTest(CofiCase):

    def scenario(self, tag, trigger_sql, rule=True):
        sim = self.start_sim(owner=self, nodes=2, node_capacity=4, nlp_capacity=50,
                             latency=LATENCY, seed=11)
        self.start_cofid(sim=sim, owner=self, llm_concurrency=10)
        files = cofitest.make_files(self.input_root, N, prefix=tag, subdir=tag)
        b = self.create_batch(files, name=tag)
        calls = sorted(self.list_all_calls(b["id"]), key=lambda c: c["seq"])
        victim = calls[N // 2]["id"]
        if rule:
            # llm1 of the victim answers 200 {"error": "injected"}: a JSON object, a success.
            sim.rules(sim.nlp_port, [{"endpoint": "llm1", "call_ids": [str(victim)],
                                      "status": 200}])
        self.db(trigger_sql.replace("VICTIM", str(int(victim))))
        self.addCleanup(self.db, "DROP TRIGGER IF EXISTS poison ON call_stages")
        self.run_batch(b["id"])
        final = self.wait_batch_final_or_explain(b["id"], timeout=60 * SLOW)
        return final, b["id"], victim, sim

    def assert_nothing_asked_twice(self, sim):
        nodes, nlp = sim.node_stats(), sim.nlp_stats()
        for s in nodes + [nlp]:
            self.assertEqual(s["repeated_keys_any"], 0,
                             "port %s was asked for a key twice" % s["port"])
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(nodes, "requests", ep), N, ep)

    def test_a_refused_record_fails_its_call_alone(self):
        final, bid, victim, sim = self.scenario("refused", """
            CREATE OR REPLACE FUNCTION cofi_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'poisoned result of call %', NEW.call_id;
            END $$;
            CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON call_stages FOR EACH ROW
                WHEN (NEW.result ? 'error') EXECUTE FUNCTION cofi_test_poison();""")
        self.assertEqual(final["state"], "completed_with_errors")
        counts = self.stage_counts(final)
        self.assertEqual(counts["llm1"]["failed"], 1)
        self.assertEqual(counts["llm2"]["done"], N - 1)
        self.assertEqual(counts["llm2"]["skipped"], 1)
        call = self.get_call(bid, victim)
        self.assertEqual(call["state"], "failed")
        llm1 = call["stages"][STAGES.index("llm1")]
        self.assertEqual(llm1["state"], "failed")
        self.assertIn("could not record", llm1["last_error"])
        self.assertIn("poisoned result", llm1["last_error"])
        self.assertIsNone(llm1["result"])
        # Every other call is done, each stage recorded once; nothing was asked twice.
        self.assertEqual(self.db("SELECT status, count(*) FROM calls WHERE batch_id = %d "
                                 "GROUP BY 1 ORDER BY 1" % bid),
                         [("done", str(N - 1)), ("failed", "1")])
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d AND c.status = 'done'" % bid), 7 * (N - 1))
        self.assert_nothing_asked_twice(sim)
        self.assertEqual(sum_stat([sim.nlp_stats()], "requests", "llm1"), N)
        self.assertEqual(sum_stat([sim.nlp_stats()], "requests", "llm2"), N - 1)

    def test_b_a_refusal_that_passes_fails_no_call(self):
        final, bid, victim, sim = self.scenario("transient", """
            CREATE SEQUENCE IF NOT EXISTS cofi_test_refusals;
            CREATE OR REPLACE FUNCTION cofi_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                -- a sequence counts outside the transaction that is about to fail
                IF nextval('cofi_test_refusals') <= 2 THEN
                    RAISE EXCEPTION 'could not serialize' USING ERRCODE = '40001';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON call_stages FOR EACH ROW
                WHEN (NEW.call_id = VICTIM AND NEW.stage = 6)
                EXECUTE FUNCTION cofi_test_poison();""", rule=False)
        self.assertEqual(final["state"], "completed")
        self.assertEqual(self.database.count("SELECT last_value FROM cofi_test_refusals"), 3)
        self.assert_calls_recorded_once(bid, N)
        self.assert_nothing_asked_twice(sim)


if __name__ == "__main__":
    unittest.main(verbosity=2)
