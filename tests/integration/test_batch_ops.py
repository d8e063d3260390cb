"""Operations on a batch once it exists (openapi/openapi.json): priority at POST /batches and
PATCH /batches/{id}; POST /batches/{id}/pause and /resume; POST /batches/{id}/retry of failed
calls; DELETE /batches/{id} of a batch that has ended. Each does what it says and refuses, with a
problem and without changing anything, what it must."""

import time
import unittest

import cofitest
from cofitest import CofiCase, LLM_ENDPOINTS, NODE_ENDPOINTS, STAGES, scaled, sum_stat

ENDPOINTS = NODE_ENDPOINTS + LLM_ENDPOINTS
LATENCY = {"upload": 20, "denoise": 20, "ivr": 20, "lid": 20, "stt": 20, "llm1": 20, "llm2": 20}


class BatchOpsTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.sim = cls.start_sim(nodes=2, node_capacity=2, nlp_capacity=20, latency=LATENCY)
        cls.start_cofid(sim=cls.sim, llm_concurrency=4)

    def files(self, n, tag):
        return cofitest.make_files(self.input_root, n, prefix=tag, subdir=tag)

    def assert_counts_consistent(self, batch):
        for s in batch["stages"]:
            total = sum(s[k] for k in ("pending", "running", "done", "failed", "skipped"))
            self.assertEqual(total, batch["file_count"], s)

    def assert_progress_matches_calls(self, batch_id):
        """batch_progress (kept by triggers) equals a count over calls, in one snapshot."""
        rows = self.db(
            "SELECT k.stage, k.status, k.n, r.stage, r.status, r.n FROM "
            "(SELECT stage, status, n FROM batch_progress WHERE batch_id = %d AND n <> 0) k "
            "FULL JOIN (SELECT stage, status, count(*) AS n FROM calls WHERE batch_id = %d "
            "GROUP BY 1, 2) r ON r.stage = k.stage AND r.status = k.status "
            "WHERE k.n IS DISTINCT FROM r.n" % (batch_id, batch_id))
        self.assertEqual(rows, [])

    # ---- priority and PATCH ----------------------------------------------------------------

    def test_priority_at_create_and_patch(self):
        files = self.files(2, "prio")
        b = self.create_batch(files)
        self.assertEqual(b["priority"], 1)
        r = self.http("POST", "/batches", body={"files": files, "priority": 3})
        self.assertStatus(r, 201)
        self.assertEqual(r.json["priority"], 3)
        for bad, status in (("2", 400), (1.5, 400), (True, 400), (None, 400), (0, 422),
                            (-4, 422), (2 ** 31, 422)):
            with self.subTest(priority=bad):
                self.assertProblem(self.http("POST", "/batches",
                                             body={"files": files, "priority": bad}), status)

        path = "/batches/%d" % b["id"]
        r = self.http("PATCH", path, body={"priority": 7, "name": "urgent"})
        self.assertStatus(r, 200)
        self.assertEqual((r.json["priority"], r.json["name"]), (7, "urgent"))
        r = self.http("PATCH", path, body={"name": None})
        self.assertStatus(r, 200)
        self.assertEqual((r.json["priority"], r.json["name"]), (7, None))
        for body, status in (({"priority": "x"}, 400), ({"priority": 0}, 422),
                             ({"name": 3}, 400), ({"state": "running"}, 400), ([1], 400)):
            with self.subTest(body=body):
                self.assertProblem(self.http("PATCH", path, body=body), status)
        self.assertProblem(self.http("PATCH", path), 400)
        self.assertProblem(self.http("PATCH", path, raw=b"{", headers={
            "Content-Type": "application/json"}), 400)
        self.assertProblem(self.http("PATCH", "/batches/999999", body={"priority": 2}), 404)
        self.assertEqual(self.get_batch(b["id"])["priority"], 7)
        self.assertEqual(self.http("GET", "/batches?state=paused").status, 200)

    # ---- pause and resume --------------------------------------------------------------------

    def test_pause_and_resume(self):
        n = 120
        b = self.create_batch(self.files(n, "pause"))
        path = "/batches/%d" % b["id"]
        self.assertProblem(self.http("POST", path + "/pause"), 409)  # created
        self.assertProblem(self.http("POST", path + "/resume"), 409)
        last = self.list_all_calls(b["id"])[-1]["id"]
        self.assertEqual(self.get_call(b["id"], last)["waiting_for"], {"reason": "not_started"})
        self.run_batch(b["id"])
        # The last call waits at distribute behind (nearly) all the others.
        wf = self.get_call(b["id"], last).get("waiting_for")
        if wf is not None and wf["reason"] == "queued":
            self.assertGreater(wf["ahead"], 0, wf)
            self.assertLessEqual(wf["ahead"], n - 1, wf)

        def some_done():
            snap = self.get_batch(b["id"])
            return snap if self.stage_counts(snap)["distribute"]["done"] >= 10 else None
        cofitest.poll(some_done, scaled(30), what="10 uploads")
        r = self.http("POST", path + "/pause")
        self.assertStatus(r, 202)
        self.assertEqual(r.json["state"], "paused")
        self.assertProblem(self.http("POST", path + "/pause"), 409)
        self.assertProblem(self.http("POST", path + "/run"), 409)
        self.assertProblem(self.http("POST", path + "/pause", body={"x": 1}), 400)

        # In-flight requests finish; then the workers see nothing more of the batch.
        def work_requests():
            stats = self.sim.stats_all()
            return [sum_stat(stats, "requests", ep) for ep in ENDPOINTS], stats

        def quiet():
            before, _ = work_requests()
            time.sleep(0.5)  # a sampling interval, not a wait for an outcome
            after, stats = work_requests()
            return after if before == after and all(s["in_flight"] == 0 for s in stats) else None
        cofitest.poll(quiet, scaled(30), interval=0.1, what="no requests for the paused batch")
        snap = self.get_batch(b["id"])
        self.assertEqual(snap["state"], "paused")
        self.assert_counts_consistent(snap)
        self.assertLess(self.stage_counts(snap)["llm2"]["done"], n, "the pause stopped nothing")
        waiting = [c for c in self.list_all_calls(b["id"]) if c["state"] == "pending"]
        self.assertTrue(waiting)
        for c in waiting:
            self.assertEqual(c["waiting_for"], {"reason": "paused"}, c["id"])

        r = self.http("POST", path + "/resume")
        self.assertStatus(r, 202)
        self.assertEqual(r.json["state"], "running")
        final = self.wait_batch_final(b["id"], timeout=90)
        self.assertEqual(final["state"], "completed")
        for name in STAGES:
            self.assertEqual(self.stage_counts(final)[name]["done"], n, name)
        self.assertProblem(self.http("POST", path + "/pause"), 409)
        self.assertProblem(self.http("POST", path + "/resume"), 409)
        self.assertProblem(self.http("POST", "/batches/999999/pause"), 404)
        self.assertNotIn("waiting_for", self.get_call(b["id"], last))

    def test_waiting_for_while_running(self):
        n = 120
        b = self.create_batch(self.files(n, "wait"))
        self.run_batch(b["id"])
        seen = set()

        def look():
            # The last calls of the batch wait longest: look at them first, so that a loaded
            # machine, where each call read may see the call before it already ended, still
            # finds one that waits.
            for c in reversed(self.list_all_calls(b["id"])):
                if c["state"] not in ("pending", "running"):
                    self.assertNotIn("waiting_for", c)
                    continue
                wf = self.get_call(b["id"], c["id"]).get("waiting_for")
                if wf is None:
                    continue  # it ended between the two reads
                seen.add(wf["reason"])
                if wf["reason"] == "node":
                    self.assertIsInstance(wf["node"], str)
                if wf["reason"] in ("queued", "node", "nlp_limit"):
                    self.assertGreaterEqual(wf["ahead"], 0)
                break
            return self.get_batch(b["id"])["finished_at"] is not None
        cofitest.poll(look, scaled(60), interval=0.02, what="batch to end")
        self.assertTrue(seen & {"in_flight", "queued", "node", "nlp_limit"}, seen)

    def test_cancel_a_paused_batch(self):
        b = self.create_batch(self.files(40, "pcancel"))
        self.run_batch(b["id"])
        path = "/batches/%d" % b["id"]
        self.assertStatus(self.http("POST", path + "/pause"), 202)
        r = self.http("POST", path + "/cancel")
        self.assertStatus(r, 202)
        self.assertEqual(r.json["state"], "cancelled")
        final = self.wait_batch_final(b["id"], timeout=30)
        self.assertEqual(final["state"], "cancelled")
        self.assert_counts_consistent(final)
        self.assertProblem(self.http("POST", path + "/resume"), 409)

    # ---- retry -------------------------------------------------------------------------------

    def run_with_failures(self, n, tag, failing):
        """Runs a batch of n whose calls at seqs `failing` get a permanent 400 at ivr; returns
        (final batch, calls by seq)."""
        b = self.create_batch(self.files(n, tag))
        calls = sorted(self.list_all_calls(b["id"]), key=lambda c: c["seq"])
        ids = [calls[i]["id"] for i in failing]
        self.sim.rules_all_nodes([{"endpoint": "ivr", "call_ids": ids, "status": 400}])
        self.run_batch(b["id"])
        final = self.wait_batch_final(b["id"], timeout=60)
        self.assertEqual(final["state"], "completed_with_errors")
        self.assertEqual(self.stage_counts(final)["ivr"]["failed"], len(failing))
        return final, calls

    def test_retry_failed_calls(self):
        n = 12
        final, calls = self.run_with_failures(n, "retry", [1, 4, 7])
        bid = final["id"]
        path = "/batches/%d/retry" % bid
        one = calls[4]["id"]
        before = self.get_call(bid, one)
        self.assertEqual(before["state"], "failed")
        for body, status in (({"stages": ["llm1"]}, 422), ({"stages": ["nope"]}, 422),
                             ({"stages": "ivr"}, 400), ({"calls": [4]}, 400),
                             ({"calls": ["x"]}, 422), ({"calls": [calls[0]["id"]]}, 422),
                             ({"other": 1}, 400)):
            with self.subTest(body=body):
                self.assertProblem(self.http("POST", path, body=body), status)
        self.assertEqual(self.get_batch(bid)["state"], "completed_with_errors")

        for i in range(self.sim.nodes):
            self.sim.clear_rules(self.sim.node_port(i))
        r = self.http("POST", path, body={"stages": ["ivr"], "calls": [one]})
        self.assertStatus(r, 202)
        self.assertEqual(r.json["state"], "running")
        self.assertIsNone(r.json["finished_at"])
        self.assert_counts_consistent(r.json)
        self.assert_progress_matches_calls(bid)
        final = self.wait_batch_final(bid, timeout=60)
        self.assertEqual(final["state"], "completed_with_errors")
        self.assertEqual(self.stage_counts(final)["ivr"]["failed"], 2)
        after = self.get_call(bid, one)
        self.assertEqual(after["state"], "done")
        for s in (0, 1):  # results of the stages before ivr are kept as they were
            self.assertEqual(after["stages"][s], before["stages"][s])
        self.assertEqual(after["stages"][2]["state"], "done")
        self.assertEqual(after["stages"][2]["attempts"], 1)

        r = self.http("POST", path)
        self.assertStatus(r, 202)
        final = self.wait_batch_final(bid, timeout=60)
        self.assertEqual(final["state"], "completed")
        for name in STAGES:
            self.assertEqual(self.stage_counts(final)[name]["done"], n, name)
        self.assert_progress_matches_calls(bid)
        self.assertProblem(self.http("POST", path), 422)  # nothing failed any more

    def test_retry_refused_in_other_states(self):
        b = self.create_batch(self.files(3, "retryst"))
        path = "/batches/%d/retry" % b["id"]
        self.assertProblem(self.http("POST", path), 409)  # created
        self.assertStatus(self.http("POST", "/batches/%d/cancel" % b["id"]), 202)
        self.assertProblem(self.http("POST", path), 409)  # cancelled
        self.assertProblem(self.http("POST", "/batches/999999/retry"), 404)

    # ---- delete ------------------------------------------------------------------------------

    def test_delete_an_ended_batch(self):
        files = self.files(5, "del")
        r = self.http("POST", "/batches", body={"files": files}, headers={"Idempotency-Key": "del-1"})
        self.assertStatus(r, 201)
        bid = r.json["id"]
        path = "/batches/%d" % bid
        self.assertProblem(self.http("DELETE", path), 409)  # created
        self.run_batch(bid)
        final = self.wait_batch_final(bid, timeout=60)
        self.assertEqual(final["state"], "completed")
        call_ids = self.db("SELECT id FROM calls WHERE batch_id = %d" % bid)
        r = self.http("DELETE", path)
        self.assertStatus(r, 204)
        self.assertEqual(r.raw, b"")
        self.assertProblem(self.http("GET", path), 404)
        self.assertProblem(self.http("GET", path + "/calls"), 404)
        self.assertProblem(self.http("DELETE", path), 404)
        ids = ",".join(row[0] for row in call_ids)
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages WHERE call_id IN (%s)" % ids), 0)
        for table in ("calls", "batch_progress"):
            self.assertEqual(self.database.count(
                "SELECT count(*) FROM %s WHERE batch_id = %d" % (table, bid)), 0, table)
        # The idempotency key went with the batch.
        r = self.http("POST", "/batches", body={"files": files}, headers={"Idempotency-Key": "del-1"})
        self.assertStatus(r, 201)
        self.assertNotEqual(r.json["id"], bid)

    def test_delete_refuses_a_running_batch(self):
        b = self.create_batch(self.files(60, "delrun"))
        self.run_batch(b["id"])
        self.assertProblem(self.http("DELETE", "/batches/%d" % b["id"]), 409)
        self.assertStatus(self.http("POST", "/batches/%d/cancel" % b["id"]), 202)
        self.wait_batch_final(b["id"], timeout=30)
        self.assertStatus(self.http("DELETE", "/batches/%d" % b["id"]), 204)


if __name__ == "__main__":
    unittest.main(verbosity=2)
