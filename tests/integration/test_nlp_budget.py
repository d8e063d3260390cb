"""The cluster's NLP token budget (llm.tokens_per_minute, CONTRACTS §4, §6) with two cofid
instances on one database, against a cofi-sim that meters the same budget (429 beyond it):
over 75 s of a batch that would need far more, the tokens the API received in any 60 s never
pass the budget, the API never had to refuse for tokens, and the budget is used (not left
idle); llm.requests_per_minute likewise caps the requests."""

import unittest

import cofitest
from cofitest import CofiCase

LATENCY = {"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 1, "llm1": 50, "llm2": 50}
BUDGET = 3000          # tokens a minute, for the whole cluster
COMPLETION = 20        # cofi-sim's completions are 20 tokens: the estimate is exact
RUN_S = 75


class NlpBudgetTest(CofiCase):

    def first_second(self, sim):
        """The second (of cofi-sim's series) of the first NLP request."""
        def first():
            ts = [x["t"] for x in sim.nlp_stats()["series"] if x["admitted"] > 0]
            return ts[:1] or None  # [0] is an answer too
        return cofitest.poll(first, cofitest.scaled(60), interval=0.2,
                             what="the first NLP request")[0]

    def test_token_budget_holds_over_any_minute(self):
        sim = self.start_sim(owner=self, nodes=2, node_capacity=8, nlp_capacity=100,
                             latency=LATENCY, seed=3,
                             extra_args=["--nlp-tokens-per-minute", str(BUDGET)])
        llm = {"tokens_per_minute": BUDGET, "completion_tokens": COMPLETION}
        pair = [self.start_cofid(sim=sim, owner=self, llm_concurrency=20, llm=llm,
                                 primary=(i == 0)) for i in range(2)]
        files = cofitest.make_files(self.input_root, 600, prefix="budget", subdir="budget")
        b = self.create_batch(files, name="budget")
        self.run_batch(b["id"])
        self.addCleanup(lambda: self.http("POST", "/batches/%d/cancel" % b["id"]))

        first = self.first_second(sim)
        cofitest.poll(lambda: sim.nlp_stats()["seconds"] >= first + RUN_S or None,
                      RUN_S + cofitest.scaled(30), interval=0.5,
                      what="%d s of NLP requests under the budget" % RUN_S)
        s = sim.nlp_stats()
        series = {x["t"]: x for x in s["series"]}
        tokens = [series[t]["tokens"] if t in series else 0
                  for t in range(first, first + RUN_S)]
        windows = [sum(tokens[i:i + 60]) for i in range(0, len(tokens) - 59)]
        cofitest.log("tokens per second: %s" % tokens)
        cofitest.log("tokens over each 60 s window: min %d, max %d (budget %d)"
                     % (min(windows), max(windows), BUDGET))
        self.assertLessEqual(max(windows), BUDGET, "the budget was passed over a minute")
        self.assertEqual(s["rejected_tokens"], 0, "the API refused requests for tokens")
        self.assertGreaterEqual(max(windows), BUDGET // 2, "the budget was left unused")
        self.assertLessEqual(s["max_concurrent"], 20)
        # Nothing failed for want of budget: the calls wait.
        batch = self.get_batch(b["id"])
        for st in batch["stages"]:
            self.assertEqual(st["failed"], 0, st)

    def test_requests_per_minute(self):
        sim = self.start_sim(owner=self, nodes=2, node_capacity=8, nlp_capacity=100,
                             latency=LATENCY, seed=4)
        self.start_cofid(sim=sim, owner=self, llm_concurrency=20,
                         llm={"requests_per_minute": 40})
        files = cofitest.make_files(self.input_root, 100, prefix="rpm", subdir="rpm")
        b = self.create_batch(files, name="rpm")
        self.run_batch(b["id"])
        self.addCleanup(lambda: self.http("POST", "/batches/%d/cancel" % b["id"]))
        first = self.first_second(sim)
        cofitest.poll(lambda: sim.nlp_stats()["seconds"] >= first + 20 or None,
                      cofitest.scaled(60), interval=0.5, what="20 s of NLP requests")
        s = sim.nlp_stats()
        sent = sum(x["arrivals"] for x in s["series"])
        cofitest.log("NLP requests in the first 20 s: %d (budget 40 a minute)" % sent)
        self.assertLessEqual(sent, 40)
        self.assertGreaterEqual(sent, 20, "the request budget was left unused")


if __name__ == "__main__":
    unittest.main(verbosity=2)
