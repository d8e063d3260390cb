"""The NLP API answers 429 Too Many Requests with Retry-After: 1 (CONTRACTS §5: retryable,
Retry-After honoured, max_attempts ends a call that keeps failing).

- For a while every llm1 request is refused with 429: the calls wait and retry, none fails,
  the batch ends completed, each call's attempts are the requests the API saw, and a call that
  was refused waited the Retry-After second before each new attempt.
- With llm.max_attempts 2 and one call refused for ever: exactly that call fails at llm1 after
  two requests, with a last_error naming the 429; the rest of the batch completes.
"""

import unittest
from datetime import datetime

import cofitest
from cofitest import CofiCase, NODE_ENDPOINTS, STAGES, sum_stat

LATENCY = {"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 2, "llm1": 5, "llm2": 5}
LLM_CONCURRENCY = 20


def parse_ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class Nlp429Test(CofiCase):

    def setup_pair(self, llm):
        sim = self.start_sim(owner=self, nodes=2, node_capacity=4, nlp_capacity=50,
                             latency=LATENCY, seed=29)
        self.start_cofid(sim=sim, owner=self, llm_concurrency=LLM_CONCURRENCY, llm=llm)
        return sim

    def llm1_rows(self, bid):
        """{call id: (state, attempts, last_error, started_at, finished_at)} of llm1 records."""
        rows = self.db("SELECT c.id, cs.state, cs.attempts, cs.last_error, cs.started_at, "
                       "cs.finished_at FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
                       "WHERE c.batch_id = %d AND cs.stage = 5" % bid)
        return {r[0]: (r[1], int(r[2]), r[3], r[4], r[5]) for r in rows}

    def test_a_429s_on_every_llm1_request_for_a_while(self):
        n = 300
        REFUSALS = n + n // 2
        # A fixed limit (llm.adaptive false): every request meets the rule and honours its
        # own Retry-After. (With the adaptive limit a Retry-After pauses the whole cluster:
        # tests/integration/test_nlp_adaptive.py.)
        sim = self.setup_pair({"max_attempts": 10, "adaptive": False})
        files = cofitest.make_files(self.input_root, n, prefix="burst", subdir="burst")
        b = self.create_batch(files, name="burst")
        bid = b["id"]
        sim.rules(sim.nlp_port, [{"endpoint": "llm1", "status": 429, "retry_after": "1"}])
        self.run_batch(bid)

        # Every llm1 request is refused until many calls have been refused twice: the rule
        # stays for more than the Retry-After second (about two seconds in all).
        def refused():
            s = sim.nlp_stats()
            return s if int(s["responses"].get("429", 0)) >= REFUSALS else None
        at = cofitest.poll(refused, 30, interval=0.02, what="the NLP API to refuse %d llm1 "
                                                            "requests" % REFUSALS)
        self.assertEqual(at["ok"].get("llm1", 0), 0, "an llm1 request got through the rule")
        during = self.stage_counts(self.get_batch(bid))
        sim.clear_rules(sim.nlp_port)
        cofitest.log("rule removed after %s 429s; llm1 then %s"
                     % (at["responses"]["429"], during["llm1"]))
        self.assertEqual(during["llm1"]["done"], 0)
        self.assertEqual(during["llm1"]["failed"], 0)

        final = self.wait_batch_final_or_explain(bid, timeout=40)
        self.assertEqual(final["state"], "completed")
        for name, c in self.stage_counts(final).items():
            self.assertEqual(c, {"pending": 0, "running": 0, "done": n, "failed": 0,
                                 "skipped": 0}, name)
        self.assert_calls_recorded_once(bid, n)

        nlp = sim.nlp_stats()
        refusals = int(nlp["responses"].get("429", 0))
        self.assertGreaterEqual(refusals, REFUSALS)
        self.assertEqual(nlp["ok"]["llm1"], n)
        self.assertEqual(nlp["ok"]["llm2"], n)
        self.assertEqual(nlp["repeated_keys"], 0, "a result was asked for again after a 2xx")
        # cofi's attempts are the requests the API saw.
        rows = self.llm1_rows(bid)
        self.assertEqual(sum(r[1] for r in rows.values()), nlp["requests"]["llm1"])
        self.assertEqual(nlp["requests"]["llm1"], n + refusals)
        # Retry-After: 1 honoured: a call refused k times spent at least ~k seconds at llm1.
        retried = {cid: r for cid, r in rows.items() if r[1] > 1}
        self.assertGreater(len(retried), n // 2)
        self.assertGreater(len([r for r in rows.values() if r[1] > 2]), 0,
                           "no call was refused twice")
        short = []
        for cid, (state, attempts, last_error, started, finished) in retried.items():
            waited = (parse_ts(finished) - parse_ts(started)).total_seconds()
            if waited < 0.95 * (attempts - 1):
                short.append((cid, attempts, waited))
        self.assertEqual(short, [], "calls retried before Retry-After had passed "
                                    "(id, attempts, seconds at llm1)")
        # The node stages were not disturbed.
        nodes = sim.node_stats()
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(nodes, "ok", ep), n, ep)

    def test_b_429s_beyond_the_retry_budget_fail_that_call_only(self):
        n = 100
        sim = self.setup_pair({"max_attempts": 2})
        files = cofitest.make_files(self.input_root, n, prefix="budget", subdir="budget")
        b = self.create_batch(files, name="budget")
        bid = b["id"]
        calls = sorted(self.list_all_calls(bid), key=lambda c: c["seq"])
        victim = calls[n // 2]["id"]
        sim.rules(sim.nlp_port, [{"endpoint": "llm1", "call_ids": [victim], "status": 429,
                                  "retry_after": "1"}])
        self.run_batch(bid)
        final = self.wait_batch_final_or_explain(bid, timeout=40)

        self.assertEqual(final["state"], "completed_with_errors")
        counts = self.stage_counts(final)
        for name in STAGES[:5]:
            self.assertEqual(counts[name]["done"], n, name)
        self.assertEqual(counts["llm1"], {"pending": 0, "running": 0, "done": n - 1,
                                          "failed": 1, "skipped": 0})
        self.assertEqual(counts["llm2"], {"pending": 0, "running": 0, "done": n - 1,
                                          "failed": 0, "skipped": 1})

        call = self.get_call(bid, victim)
        self.assertEqual(call["state"], "failed")
        llm1, llm2 = call["stages"][5], call["stages"][6]
        self.assertEqual((llm1["name"], llm1["state"], llm1["attempts"]), ("llm1", "failed", 2))
        self.assertIn("429", llm1["last_error"] or "")
        self.assertIsNone(llm1["result"])
        self.assertEqual((llm2["name"], llm2["state"]), ("llm2", "skipped"))
        # Retry-After honoured before the second (last) attempt.
        waited = (parse_ts(llm1["finished_at"]) - parse_ts(llm1["started_at"])).total_seconds()
        self.assertGreaterEqual(waited, 0.95, "the second attempt did not wait Retry-After")

        failed = self.db("SELECT c.id::text, c.status, c.stage, cs.state, cs.attempts, "
                         "cs.last_error LIKE '%%429%%' FROM calls c JOIN call_stages cs "
                         "ON cs.call_id = c.id WHERE c.batch_id = %d AND cs.state <> 'done'" % bid)
        self.assertEqual(failed, [(str(victim), "failed", "5", "failed", "2", "t")])
        self.assertEqual(self.db("SELECT status, stage, count(*) FROM calls WHERE batch_id = %d "
                                 "GROUP BY 1, 2 ORDER BY 1" % bid),
                         [("done", "7", str(n - 1)), ("failed", "5", "1")])

        nlp = sim.nlp_stats()
        self.assertEqual(int(nlp["responses"].get("429", 0)), 2, "two requests, both refused")
        self.assertEqual(nlp["requests"]["llm1"], n + 1)
        self.assertEqual((nlp["ok"]["llm1"], nlp["ok"]["llm2"]), (n - 1, n - 1))
        self.assertEqual(nlp["requests"]["llm2"], n - 1, "llm2 asked for the failed call")


if __name__ == "__main__":
    unittest.main(verbosity=2)
