"""Any number of nodes, any valid id: 70 nodes whose ids are 64 characters long (the longest a
node id may be) all get their share and their work. Before fenced claims the engine negotiated
shares for the first 64 nodes only (the others never got a request) and kept resource names in
80 bytes, so ids that long collided once prefixed with "node:"."""

import unittest

import cofitest
from cofitest import CofiCase, sum_stat

NODES = 70
SLOW = getattr(cofitest, "SLOW", 1.0)


class ManyNodesTest(CofiCase):

    def test_every_node_gets_a_share_and_work(self):
        sim = self.start_sim(owner=self, nodes=NODES, node_capacity=1, nlp_capacity=50,
                             latency={"default": 1}, seed=4)
        ids = [("n%02d-" % i).ljust(64, "x") for i in range(NODES)]
        nodes = [(ids[i], sim.node_url(i), 1) for i in range(NODES)]
        self.start_cofid(owner=self, nodes=nodes, llm_url=sim.nlp_url, llm_concurrency=10)
        n = 4 * NODES
        files = cofitest.make_files(self.input_root, n, prefix="many", subdir="many")
        b = self.create_batch(files, name="many")
        self.run_batch(b["id"])
        final = self.wait_batch_final_or_explain(b["id"], timeout=90 * SLOW)
        self.assertEqual(final["state"], "completed")
        self.assert_calls_recorded_once(b["id"], n)
        shares = {r: int(s) for r, s in self.db("SELECT resource, share FROM instance_shares")}
        for i in range(NODES):
            self.assertEqual(shares.get("node:" + ids[i]), 1, "share of node %d" % i)
        stats = sim.node_stats()
        for i, s in enumerate(stats):
            self.assertGreater(s["requests"].get("upload", 0), 0, "node %d got no upload" % i)
            self.assertLessEqual(s["max_concurrent"], 1, "node %d over its capacity" % i)
        self.assertEqual(sum_stat(stats, "ok", "upload"), n)
        r = self.http("GET", "/stages/stt/status")
        self.assertStatus(r, 200)
        self.assertEqual(sorted(x["id"] for x in r.json["nodes"]), sorted(ids))


if __name__ == "__main__":
    unittest.main(verbosity=2)
