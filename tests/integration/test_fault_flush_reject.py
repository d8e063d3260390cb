"""One odd byte in a worker's error reply must fail that call only (openapi: a call's
`last_error` is text; CONTRACTS §5: "any other 4xx: permanent failure of the call at that
stage, no retry ... the rest of the batch goes on").

The NLP API answers llm1 of two calls with 400 and an error body that cofid keeps an excerpt
of in last_error:
- a body of Cyrillic letters (two bytes each) laid out so that the excerpt's end cuts one in
  half;
- a body with raw 0xff bytes, which are not UTF-8 at all.
PostgreSQL refuses text that is not UTF-8: if cofid stores the excerpt as it is, the whole
write of those results is refused, and the calls in it must not go back to the queue to be
asked again for ever. The batch ends completed_with_errors, the two calls failed at llm1 once
with a readable last_error, and every other call is done with each stage asked and recorded
exactly once.
"""

import time
import unittest

import cofitest
from cofitest import CofiCase, NODE_ENDPOINTS, scaled, sum_stat

NODES = 2
CAPACITY = 4
LATENCY = {"upload": 2, "denoise": 2, "ivr": 2, "lid": 2, "stt": 2, "llm1": 3, "llm2": 3}
LLM_CONCURRENCY = 20
N = 40
EXCERPT = 159  # bytes of a worker's reply cofid keeps in last_error (pipeline/worker_http.c)


def cut_body():
    """{"error":"шш…"}: its first EXCERPT bytes end in the middle of a letter."""
    body = '{"error":"' + "ш" * 200 + '"}'
    head = body.encode()[:EXCERPT]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return body
    return '{"error": "' + "ш" * 200 + '"}'  # one more byte before the letters


class FlushRejectTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.start_sim(nodes=NODES, node_capacity=CAPACITY, nlp_capacity=100, latency=LATENCY,
                      seed=3)
        cls.start_cofid(sim=cls.sim, llm_concurrency=LLM_CONCURRENCY)

    def test_error_replies_that_are_not_utf8_fail_only_their_calls(self):
        sim = self.sim
        body = cut_body()
        with self.assertRaises(UnicodeDecodeError):
            body.encode()[:EXCERPT].decode("utf-8")
        raw = b'{"error": "' + b"\xff\xfe" * 100 + b'"}'

        files = cofitest.make_files(self.input_root, N, prefix="utf8", subdir="utf8")
        bid = self.create_batch(files, name="utf8")["id"]
        ids = self.call_ids(bid)
        cut_id, raw_id = ids[files[5]], ids[files[17]]
        sim.rules(sim.nlp_port, [
            {"endpoint": "llm1", "call_ids": [cut_id], "status": 400, "body": body},
            {"endpoint": "llm1", "call_ids": [raw_id], "status": 400, "body_hex": raw.hex()},
        ])
        self.run_batch(bid)
        t0 = time.monotonic()
        final = self.wait_batch_final_or_explain(bid, timeout=30)
        cofitest.log("batch %d ended %s after %.1f s" % (bid, final["state"],
                                                         time.monotonic() - t0))
        self.assertEqual(final["state"], "completed_with_errors")
        counts = self.stage_counts(final)
        self.assertEqual(counts["llm1"], {"pending": 0, "running": 0, "done": N - 2,
                                          "failed": 2, "skipped": 0})
        self.assertEqual(counts["llm2"], {"pending": 0, "running": 0, "done": N - 2,
                                          "failed": 0, "skipped": 2})

        # The two calls failed at llm1, with the worker's words in readable text.
        for call_id in (cut_id, raw_id):
            r = self.http("GET", "/batches/%d/calls/%s" % (bid, call_id))
            self.assertStatus(r, 200)
            r.raw.decode("utf-8")  # the answer is UTF-8 through and through
            call = r.json
            self.assertEqual(call["state"], "failed", call_id)
            llm1 = next(s for s in call["stages"] if s["name"] == "llm1")
            self.assertEqual(llm1["state"], "failed", call_id)
            self.assertIsInstance(llm1["last_error"], str, call_id)
            self.assertIn("400", llm1["last_error"], call_id)
            self.assertEqual(llm1["attempts"], 1, call_id)
            cofitest.log("call %s: last_error %r" % (call_id, llm1["last_error"]))
        self.assert_done_once_except(bid, N, {cut_id: "llm1", raw_id: "llm1"})

        # Every stage of every call was asked for exactly once: llm1 of the two calls too.
        nodes, nlp = sim.node_stats(), sim.nlp_stats()
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(nodes, "requests", ep), N, ep)
        self.assertEqual(nlp["requests"].get("llm1", 0), N, "llm1 requests")
        self.assertEqual(nlp["requests"].get("llm2", 0), N - 2, "llm2 requests")
        self.assertEqual(nlp["responses"].get("400", 0), 2)
        for s in nodes + [nlp]:
            self.assertEqual(s["repeated_keys_any"], 0, "%s saw a key again" % s["id"])
        self.assert_no_repeated_keys(sim)


if __name__ == "__main__":
    unittest.main(verbosity=2)
