"""A 1,000-call batch, pipelined, through three nodes of unequal capacity and the NLP API:
it completes, every call is done in every stage (API and database), the simulator saw every
stage exactly once per call, no node ever had more requests in flight than its capacity, the
NLP API's concurrency limit was reached and never exceeded, and work was spread over the nodes
in proportion to their capacity."""

import unittest

import cofitest
from cofitest import CofiCase, LLM_ENDPOINTS, NODE_ENDPOINTS, STAGES, sum_stat

N = 1000
CAPACITIES = [2, 4, 6]       # cofid's capacity of node i
SIM_NODE_CAPACITY = 8        # the sim could take more: only cofid holds the limit
LLM_CONCURRENCY = 20
NLP_CAPACITY = 50
# Node stages are quick; the LLM stages are slow enough that calls queue up in front of
# them, so reaching llm.concurrency is expected, not luck.
LATENCY = {"upload": 1, "denoise": 2, "ivr": 1, "lid": 2, "stt": 3, "llm1": 50, "llm2": 50}


class PipelineTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = (cofitest.make_files(cls.input_root, N // 2, subdir="2026-11-25/agent-1")
                     + cofitest.make_files(cls.input_root, N - N // 2, prefix="top"))
        sim = cls.start_sim(nodes=3, node_capacity=SIM_NODE_CAPACITY, nlp_capacity=NLP_CAPACITY,
                            latency=LATENCY, jitter_pct=20, seed=11)
        cls.start_cofid(sim=sim, node_capacities=CAPACITIES, llm_concurrency=LLM_CONCURRENCY)
        cls.snapshots = []
        cls.llm_in_flight_seen = []
        helper = cls("test_batch_completed")  # a TestCase instance to run the helpers

        def watch(batch):
            cls.snapshots.append(batch)
            for st in ("llm1", "llm2"):
                r = helper.http("GET", "/stages/%s/status" % st)
                if r.status == 200:
                    cls.llm_in_flight_seen.append((st, r.json["in_flight"],
                                                   r.json["concurrency_limit"]))

        cls.batch = helper.run_batch_to_end(cls.files, timeout=150, on_poll=watch)
        cls.bid = cls.batch["id"]
        cls.node_stats = sim.node_stats()
        cls.nlp_stats = sim.nlp_stats()

    def test_batch_completed(self):
        b = self.batch
        self.assertEqual(b["state"], "completed")
        self.assertEqual(b["mode"], "pipelined")
        self.assertEqual(b["file_count"], N)
        self.assertIsNotNone(b["started_at"])
        self.assertLessEqual(b["created_at"], b["started_at"])
        self.assertLessEqual(b["started_at"], b["finished_at"])
        for ts in (b["created_at"], b["started_at"], b["finished_at"]):
            self.assertTrue(ts.endswith("Z") or ts.endswith("+00:00"), "%s is not UTC" % ts)
        counts = self.stage_counts(b)
        for name in STAGES:
            self.assertEqual(counts[name], {"pending": 0, "running": 0, "done": N, "failed": 0,
                                            "skipped": 0}, name)
        # Same answer once more (GET, not the last poll).
        self.assertEqual(self.get_batch(self.bid)["stages"], b["stages"])

    def test_progress_snapshots_add_up(self):
        self.assertGreater(len(self.snapshots), 0)
        for snap in self.snapshots:
            self.stage_counts(snap)  # asserts the order and that every stage adds up to N
            self.assertIn(snap["state"], ("running", "completed"))

    def test_every_call_done_in_db(self):
        rows = self.db("SELECT status, stage, count(*) FROM calls WHERE batch_id = %d "
                       "GROUP BY 1, 2" % self.bid)
        self.assertEqual(rows, [("done", "7", str(N))])
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM calls WHERE batch_id = %d AND node IS NOT NULL "
            "AND file_name IS NOT NULL" % self.bid), N)
        self.assertEqual(self.database.count(
            "SELECT count(DISTINCT seq) FROM calls WHERE batch_id = %d" % self.bid), N)

    def test_call_stages_rows_in_db(self):
        q = ("SELECT cs.stage, cs.state, count(*), count(cs.result), min(cs.attempts), "
             "max(cs.attempts), count(*) FILTER (WHERE jsonb_typeof(cs.result) = 'object'), "
             "count(*) FILTER (WHERE cs.started_at > cs.finished_at) "
             "FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
             "WHERE c.batch_id = %d GROUP BY 1, 2 ORDER BY 1, 2" % self.bid)
        rows = self.db(q)
        self.assertEqual([(r[0], r[1]) for r in rows], [(str(s), "done") for s in range(7)])
        for r in rows:
            stage = STAGES[int(r[0])]
            self.assertEqual(int(r[2]), N, stage)
            self.assertEqual(int(r[3]), N, "%s: null results" % stage)
            self.assertEqual(int(r[6]), N, "%s: results that are not objects" % stage)
            self.assertEqual((r[4], r[5]), ("1", "1"), "%s attempts (no failure was injected)" % stage)
            self.assertEqual(r[7], "0", "%s: started after it finished" % stage)
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d" % self.bid), 7 * N)
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d AND cs.stage = 4 "
            "AND jsonb_typeof(cs.result -> 'transcript') = 'string'" % self.bid), N)
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM call_stages cs JOIN calls c ON c.id = cs.call_id "
            "WHERE c.batch_id = %d AND cs.stage = 3 "
            "AND jsonb_typeof(cs.result -> 'language') = 'string'" % self.bid), N)

    def test_calls_api_show_every_stage_and_result(self):
        calls = self.list_all_calls(self.bid, limit=1000)
        self.assertEqual(len(calls), N)
        self.assertEqual(sorted(c["file"] for c in calls), sorted(self.files))
        self.assertEqual(len({c["id"] for c in calls}), N)
        node_ids = {"gpu-%d" % i for i in range(3)}
        for c in calls:
            self.assertEqual(c["state"], "done")
            self.assertIn(c["node"], node_ids)
            self.assertEqual([s["name"] for s in c["stages"]], STAGES)
            self.assertTrue(all(s["state"] == "done" for s in c["stages"]), c)
        db_nodes = dict(self.db("SELECT seq::text, node FROM calls WHERE batch_id = %d" % self.bid))
        for c in calls:
            self.assertEqual(db_nodes[str(c["seq"])], c["node"])
        for c in calls[:3] + calls[-2:]:
            with self.subTest(call=c["id"]):
                one = self.get_call(self.bid, c["id"])
                self.assertEqual((one["id"], one["batch_id"], one["file"], one["node"]),
                                 (c["id"], self.bid, c["file"], c["node"]))
                self.assertEqual(one["state"], "done")
                for s in one["stages"]:
                    self.assertEqual(s["state"], "done", s["name"])
                    self.assertGreaterEqual(s["attempts"], 1, s["name"])
                    self.assertIsNone(s["last_error"], s["name"])
                    self.assertIsInstance(s["result"], dict, s["name"])
                    self.assertIsNotNone(s["finished_at"], s["name"])
                    if s["started_at"] is not None:
                        self.assertLessEqual(s["started_at"], s["finished_at"])
                stt = one["stages"][4]["result"]
                self.assertIsInstance(stt.get("transcript"), str)
                self.assertTrue(stt["transcript"])
                self.assertIsInstance(one["stages"][3]["result"].get("language"), str)

    def test_sim_saw_every_stage_exactly_once_per_call(self):
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(self.node_stats, "ok", ep), N, "ok %s over the nodes" % ep)
        for ep in LLM_ENDPOINTS:
            self.assertEqual(sum_stat([self.nlp_stats], "ok", ep), N, "ok %s" % ep)
        for s in self.node_stats + [self.nlp_stats]:
            with self.subTest(port=s.get("port")):
                self.assertEqual(s["repeated_keys"], 0, "stage results asked for twice")
                # Every request carried its own Idempotency-Key {call_id}:{stage} (the sim
                # answers 400 to a missing or malformed one).
                self.assertEqual(s["unique_keys"], sum(s["requests"].values()))
                errors = {k: v for k, v in s.get("responses", {}).items() if int(k) >= 400 and v}
                self.assertEqual(errors, {}, "error answers although no failure was injected")

    def test_later_stages_ran_on_the_node_holding_the_file(self):
        db_per_node = dict(self.db("SELECT node, count(*)::text FROM calls WHERE batch_id = %d "
                                   "GROUP BY node" % self.bid))
        for i, s in enumerate(self.node_stats):
            up = s["ok"].get("upload", 0)
            self.assertEqual(int(db_per_node.get("gpu-%d" % i, 0)), up, "node %d" % i)
            for ep in NODE_ENDPOINTS[1:]:
                self.assertEqual(s["ok"].get(ep, 0), up, "node %d %s" % (i, ep))

    def test_node_capacity_never_exceeded(self):
        for i, s in enumerate(self.node_stats):
            with self.subTest(node=i, capacity=CAPACITIES[i]):
                self.assertLessEqual(s["max_in_flight"], CAPACITIES[i])
                if "max_concurrent" in s:
                    self.assertLessEqual(s["max_concurrent"], CAPACITIES[i])
                self.assertGreater(s["max_in_flight"], 0)

    def test_llm_concurrency_reached_and_never_exceeded(self):
        s = self.nlp_stats
        self.assertEqual(s["max_in_flight"], LLM_CONCURRENCY,
                         "the NLP API saw at most %d requests at once, the limit is %d"
                         % (s["max_in_flight"], LLM_CONCURRENCY))
        if "max_concurrent" in s:
            self.assertLessEqual(s["max_concurrent"], LLM_CONCURRENCY)
        self.assertEqual(s.get("responses", {}).get("429", 0), 0)
        # What GET /stages/{llm}/status said while the batch ran.
        self.assertGreater(len(self.llm_in_flight_seen), 0)
        for stage, in_flight, limit in self.llm_in_flight_seen:
            self.assertEqual(limit, LLM_CONCURRENCY)
            self.assertLessEqual(in_flight, LLM_CONCURRENCY,
                                 "GET /stages/%s/status said in_flight %d, above llm.concurrency "
                                 "%d, while the NLP API never had more than %d requests at once"
                                 % (stage, in_flight, LLM_CONCURRENCY, s["max_in_flight"]))

    def test_spread_proportional_to_capacity(self):
        total = sum(CAPACITIES)
        for i, s in enumerate(self.node_stats):
            with self.subTest(node=i):
                want = N * CAPACITIES[i] / total
                got = s["ok"].get("upload", 0)
                self.assertTrue(0.7 * want <= got <= 1.3 * want,
                                "node %d (capacity %d) got %d uploads, expected %.0f +-30%%"
                                % (i, CAPACITIES[i], got, want))

    def test_stage_status(self):
        for name in STAGES:
            with self.subTest(stage=name):
                r = self.http("GET", "/stages/%s/status?batch_id=%d" % (name, self.bid))
                self.assertStatus(r, 200)
                st = r.json
                self.assertEqual(st["name"], name)
                self.assertEqual(st["done"], N)
                self.assertEqual((st["failed"], st["queued"], st["in_flight"]), (0, 0, 0))
                if name in ("llm1", "llm2"):
                    self.assertEqual(st["kind"], "llm")
                    self.assertEqual(st["concurrency_limit"], LLM_CONCURRENCY)
                else:
                    self.assertEqual(st["kind"], "mediator")
                    self.assertEqual(st["concurrency_limit"], sum(CAPACITIES))
                    nodes = {n["id"]: n for n in st["nodes"]}
                    self.assertEqual(set(nodes), {"gpu-0", "gpu-1", "gpu-2"})
                    for i in range(3):
                        self.assertEqual(nodes["gpu-%d" % i]["url"], self.sim.node_url(i))
                        self.assertTrue(nodes["gpu-%d" % i]["healthy"])
                        self.assertEqual(nodes["gpu-%d" % i]["in_flight"], 0)
                lat = st["latency_ms"]
                self.assertLessEqual(lat["p50"], lat["p95"])
                self.assertLessEqual(lat["p95"], lat["p99"])
        r = self.http("GET", "/stages/llm1/status")
        self.assertStatus(r, 200)
        self.assertGreaterEqual(r.json["done"], N)


if __name__ == "__main__":
    unittest.main(verbosity=2)
