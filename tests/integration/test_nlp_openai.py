"""llm.protocol "openai" (CONTRACTS §4): both NLP stages as POST {url}/v1/chat/completions with
the configured model and prompt templates, against cofi-sim --nlp-protocol openai. A whole batch
completes; each stage's result is the JSON object the model returned (what cofi-sim's results
say for the call), every request carried the call's transcript in its prompt (cofi-sim answers
422 otherwise), and `usage` settles the token budget's reservations. A model answer that is not
a JSON object fails that call only, at that stage."""

import unittest

import cofitest
from cofitest import CofiCase

LATENCY = {"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 1, "llm1": 5, "llm2": 5}
N = 60


class NlpOpenAiTest(CofiCase):

    def start_pair(self, seed, llm):
        sim = self.start_sim(owner=self, nodes=2, node_capacity=4, nlp_capacity=50,
                             latency=LATENCY, seed=seed, extra_args=["--nlp-protocol", "openai"])
        conf = {"protocol": "openai", "model": "sim-1"}
        conf.update(llm)
        self.start_cofid(sim=sim, owner=self, llm_concurrency=10, llm=conf)
        return sim

    def test_a_whole_batch(self):
        sim = self.start_pair(7, {
            "prompts": {"llm1": "Summarise as JSON ({language}): {transcript}",
                        "llm2": "Classify as JSON. Call: {transcript}. Summary: {llm1}"},
            "tokens_per_minute": 1000000, "completion_tokens": 500})
        files = cofitest.make_files(self.input_root, N, prefix="oai", subdir="oai")
        final = self.run_batch_to_end(files, timeout=cofitest.scaled(60), name="openai")
        self.assertEqual(final["state"], "completed", final)
        self.assert_calls_recorded_once(final["id"], N)
        nlp = sim.nlp_stats()
        self.assertEqual(nlp["protocol"], "openai")
        self.assertEqual((nlp["ok"]["llm1"], nlp["ok"]["llm2"]), (N, N))
        self.assertEqual(nlp["responses"].get("422", 0), 0)
        self.assertEqual(nlp["repeated_keys"], 0)
        call = self.list_all_calls(final["id"])[0]
        full = self.get_call(final["id"], call["id"])
        llm1 = full["stages"][5]["result"]
        llm2 = full["stages"][6]["result"]
        self.assertIn("summary", llm1)
        self.assertIn("category", llm2)

    def test_b_an_answer_that_is_not_json_fails_that_call(self):
        sim = self.start_pair(8, {"max_attempts": 2})
        files = cofitest.make_files(self.input_root, 20, prefix="bad", subdir="bad")
        b = self.create_batch(files, name="bad")
        calls = sorted(self.list_all_calls(b["id"]), key=lambda c: c["seq"])
        victim = calls[5]["id"]
        body = ('{"object": "chat.completion", "choices": [{"index": 0, "message": '
                '{"role": "assistant", "content": "Sure! Here is a summary."}}]}')
        sim.rules(sim.nlp_port, [{"endpoint": "llm1", "call_ids": [victim], "status": 200,
                                  "body": body}])
        self.run_batch(b["id"])
        final = self.wait_batch_final_or_explain(b["id"], timeout=cofitest.scaled(60))
        self.assertEqual(final["state"], "completed_with_errors")
        call = self.get_call(b["id"], victim)
        llm1 = call["stages"][5]
        self.assertEqual((llm1["state"], llm1["attempts"]), ("failed", 1))
        self.assertIn("not a JSON object", llm1["last_error"])
        counts = self.stage_counts(final)
        self.assertEqual(counts["llm2"]["done"], 19)


if __name__ == "__main__":
    unittest.main(verbosity=2)
