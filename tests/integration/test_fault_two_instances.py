"""Two cofid instances on one database (README: "several cofid instances can share one
database; each claims its own calls"). They share one batch: both claim and work calls, the
NLP API never sees more than llm.concurrency requests at once across both, nor a node more than
its capacity (the limits are split through instance_shares), no stage is asked for twice, and
both report the same progress.
Then one of two instances is killed with SIGKILL mid-batch: once its heartbeat is older than
lease_ms the other takes its claims and its shares, and finishes the batch alone."""

import json
import time
import unittest

import cofitest
from cofitest import CofiCase, LLM_ENDPOINTS, NODE_ENDPOINTS, STAGES, sum_stat

NODES = 3
CAPACITY = 4
LLM_CONCURRENCY = 20
NLP_CAPACITY = 60      # the sim would take more: only cofid holds the limit
# Node stages are quick and the LLM stages slow, so calls queue in front of the NLP API and
# both instances use their whole share: the limit is reached.
LATENCY = {"upload": 2, "denoise": 2, "ivr": 2, "lid": 2, "stt": 3, "llm1": 40, "llm2": 40}
LEASE_MS = 2500


class TwoInstancesTest(CofiCase):

    def start_pair(self, tag, n):
        sim = self.start_sim(owner=self, nodes=NODES, node_capacity=CAPACITY,
                             nlp_capacity=NLP_CAPACITY, latency=LATENCY, jitter_pct=20, seed=5)
        files = cofitest.make_files(self.input_root, n, prefix=tag, subdir=tag)
        a = self.new_cofid(sim)
        b = self.new_cofid(sim)
        self.assertNotEqual(a.instance_id, b.instance_id)
        # Both registered; the NLP API's concurrency and every node's capacity split between
        # them (10 + 10, 2 + 2).
        want = {}
        for c in (a, b):
            want[(c.instance_id, "nlp")] = LLM_CONCURRENCY // 2
            for i in range(NODES):
                want[(c.instance_id, "node:gpu-%d" % i)] = CAPACITY // 2
        cofitest.poll(lambda: self.shares() == want, 15, interval=0.1,
                      what="both instances to hold half of every limit %s" % want)
        return sim, files, a, b

    def new_cofid(self, sim):
        return self.start_cofid(sim=sim, owner=self, llm_concurrency=LLM_CONCURRENCY,
                                extra={"lease_ms": LEASE_MS}, primary=False)

    def shares(self):
        """{(instance, resource): share} of instance_shares."""
        return {(i, r): int(s) for i, r, s in self.db(
            "SELECT instance, resource, share FROM instance_shares")}

    def share_sums(self):
        """{resource: sum of the instances' shares}."""
        return {r: int(s) for r, s in self.db(
            "SELECT resource, sum(share) FROM instance_shares GROUP BY 1")}

    def assert_limits_held(self, sim):
        """No node ever had more requests from cofi at once than its capacity, the NLP API
        never more than llm.concurrency, across both instances."""
        for s in sim.node_stats():
            self.assertLessEqual(s["max_concurrent"], CAPACITY, "node %s" % s["id"])
        nlp = sim.nlp_stats()
        self.assertLessEqual(nlp["max_in_flight"], LLM_CONCURRENCY)
        self.assertLessEqual(nlp["max_concurrent"], LLM_CONCURRENCY)
        self.assertEqual(nlp["responses"].get("429", 0), 0)
        return nlp

    def running_per_owner(self, bid):
        return {o: int(n) for o, n in self.db(
            "SELECT coalesce(lease_owner, '-'), count(*) FROM calls "
            "WHERE batch_id = %d AND status = 'running' GROUP BY 1" % bid)}

    def assert_no_repeat(self, sim, n):
        """The workers saw every stage of every call exactly once."""
        nodes, nlp = sim.node_stats(), sim.nlp_stats()
        for ep in NODE_ENDPOINTS:
            self.assertEqual(sum_stat(nodes, "ok", ep), n, ep)
        for ep in LLM_ENDPOINTS:
            self.assertEqual(sum_stat([nlp], "ok", ep), n, ep)
        for s in nodes + [nlp]:
            self.assertEqual(s["repeated_keys_any"], 0, "port %s saw a key twice" % s["port"])

    # ---------------------------------------------------------------------------------------

    def test_a_two_instances_share_one_batch(self):
        n = 1500
        sim, files, a, b = self.start_pair("share", n)
        ids = (a.instance_id, b.instance_id)
        batch = self.create_batch(files, name="share", cofid=a)
        bid = batch["id"]
        self.run_batch(bid, cofid=b)

        seen_running = {i: 0 for i in ids}   # most calls each instance held at once
        both_at_once = 0                      # samples where both held claims
        llm_in_flight = {i: 0 for i in ids}  # most NLP requests each published at once
        share_sums = []                       # {resource: sum of shares} at every sample
        t0 = time.monotonic()

        def watch():
            nonlocal both_at_once
            per_owner = self.running_per_owner(bid)
            self.assertLessEqual(set(per_owner), set(ids), "calls claimed by an unknown owner")
            for i in ids:
                seen_running[i] = max(seen_running[i], per_owner.get(i, 0))
            if all(per_owner.get(i, 0) > 0 for i in ids):
                both_at_once += 1
            for i, fl in self.db("SELECT id, in_flight::text FROM instances"):
                inflight = json.loads(fl)
                llm_in_flight[i] = max(llm_in_flight[i],
                                       inflight.get("llm1", 0) + inflight.get("llm2", 0))
            share_sums.append(self.share_sums())
            cur = self.get_batch(bid, cofid=a if len(share_sums) % 2 else b)
            snap["b"] = cur
            return cur if cur["state"] != "running" else None

        snap = {}
        cofitest.poll(watch, cofitest.scaled(45), interval=0.05, what="batch %d to end" % bid,
                      progress=lambda: cofitest.batch_progress(snap.get("b")))
        worst = {}
        for sums in share_sums:
            for r, v in sums.items():
                worst[r] = max(worst.get(r, 0), v)
        cofitest.log("batch ended after %.1f s; most claims at once %s (both at once in %d "
                     "samples); most NLP requests published %s; largest sums of shares %s"
                     % (time.monotonic() - t0, seen_running, both_at_once, llm_in_flight, worst))

        # Both did work, at the same time.
        for i in ids:
            self.assertGreater(seen_running[i], 0, "%s never held a call" % i)
            self.assertGreater(llm_in_flight[i], 0, "%s never had an NLP request in flight" % i)
        self.assertGreater(both_at_once, 0, "the two instances never held calls at once")
        # The limits hold across instances: the shares never add up to more, nor do the
        # requests the workers saw.
        self.assertLessEqual(worst.get("nlp", 0), LLM_CONCURRENCY)
        for i in range(NODES):
            self.assertLessEqual(worst.get("node:gpu-%d" % i, 0), CAPACITY)
        nlp = self.assert_limits_held(sim)
        cofitest.log("NLP API: max_in_flight %d, max_concurrent %d; nodes' max_concurrent %s"
                     % (nlp["max_in_flight"], nlp["max_concurrent"],
                        [s["max_concurrent"] for s in sim.node_stats()]))
        self.assertGreater(nlp["max_in_flight"], LLM_CONCURRENCY // 2,
                           "the NLP API never had more requests at once than one instance's "
                           "share: the two instances did not use it together")

        # Same answers from both instances.
        final_a = self.wait_batch_final(bid, timeout=10, cofid=a)
        final_b = self.wait_batch_final(bid, timeout=10, cofid=b)
        self.assertEqual(final_a["state"], "completed")
        self.assertEqual(final_a["stages"], final_b["stages"])
        self.assertEqual((final_a["state"], final_a["finished_at"]),
                         (final_b["state"], final_b["finished_at"]))
        for name, c in self.stage_counts(final_a).items():
            self.assertEqual(c, {"pending": 0, "running": 0, "done": n, "failed": 0,
                                 "skipped": 0}, name)
        for stage in STAGES:
            sa = self.http("GET", "/stages/%s/status?batch_id=%d" % (stage, bid), cofid=a)
            sb = self.http("GET", "/stages/%s/status?batch_id=%d" % (stage, bid), cofid=b)
            self.assertStatus(sa, 200)
            self.assertStatus(sb, 200)
            pick = lambda s: {k: s.json[k] for k in ("done", "failed", "queued")}
            self.assertEqual(pick(sa), pick(sb), stage)
            self.assertEqual(pick(sa), {"done": n, "failed": 0, "queued": 0}, stage)
        # The same across all batches (this is the database's first batch).
        sa = self.http("GET", "/stages/llm2/status", cofid=a)
        sb = self.http("GET", "/stages/llm2/status", cofid=b)
        self.assertEqual([sa.status, sb.status], [200, 200])
        self.assertEqual({k: sa.json[k] for k in ("done", "failed", "queued")},
                         {k: sb.json[k] for k in ("done", "failed", "queued")})
        self.assertEqual(sa.json["done"], n)
        self.assert_calls_recorded_once(bid, n)
        # Two instances never worked the same call at the same stage.
        self.assert_no_repeat(sim, n)

    def test_b_kill_9_of_one_instance_the_other_finishes(self):
        n = 1000
        sim, files, a, b = self.start_pair("kill", n)
        survivor, victim = a, b
        batch = self.create_batch(files, name="kill", cofid=survivor)
        bid = batch["id"]
        self.run_batch(bid, cofid=survivor)

        def mid():
            per_owner = self.running_per_owner(bid)
            llm2 = self.stage_counts(self.get_batch(bid, cofid=survivor))["llm2"]
            if llm2["done"] >= n // 10 and all(per_owner.get(c.instance_id, 0) > 0
                                               for c in (a, b)):
                return llm2
            return None
        at = cofitest.poll(mid, 30, interval=0.02, what="both instances mid-batch")
        victim.kill9()
        t_kill = time.monotonic()
        held = self.database.count(
            "SELECT count(*) FROM calls WHERE batch_id = %d AND status = 'running' "
            "AND lease_owner = '%s'" % (bid, victim.instance_id))
        done_at_kill = self.database.count(
            "SELECT count(*) FROM calls WHERE batch_id = %d AND status = 'done'" % bid)
        cofitest.log("SIGKILL of %s with llm2 %s; it held %d calls"
                     % (victim.instance_id, at, held, ))
        self.assertGreater(held, 0, "the killed instance held no call")
        self.assertLess(done_at_kill, n)

        final = self.wait_batch_final_or_explain(bid, timeout=40, cofid=survivor)
        cofitest.log("batch ended %s %.1f s after the kill" % (final["state"],
                                                                time.monotonic() - t_kill))
        self.assertEqual(final["state"], "completed")
        for name, c in self.stage_counts(final).items():
            self.assertEqual(c, {"pending": 0, "running": 0, "done": n, "failed": 0,
                                 "skipped": 0}, name)
        self.assert_calls_recorded_once(bid, n)
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM calls WHERE batch_id = %d AND lease_owner IS NOT NULL" % bid), 0)
        # The dead instance's row and shares are gone; the survivor took over every limit.
        self.assertEqual(self.db("SELECT id FROM instances"), [(survivor.instance_id,)])
        want = {(survivor.instance_id, "nlp"): LLM_CONCURRENCY}
        for i in range(NODES):
            want[(survivor.instance_id, "node:gpu-%d" % i)] = CAPACITY
        cofitest.poll(lambda: self.shares() == want, 10, interval=0.1,
                      what="the survivor to hold every limit whole %s" % want)

        self.assert_limits_held(sim)
        nodes, nlp = sim.node_stats(), sim.nlp_stats()
        for ep in NODE_ENDPOINTS:
            self.assertGreaterEqual(sum_stat(nodes, "ok", ep), n, ep)
        for ep in LLM_ENDPOINTS:
            self.assertGreaterEqual(sum_stat([nlp], "ok", ep), n, ep)
        # Only what the dead instance held can have been asked for again, each at most once.
        repeated = sum(s["repeated_keys"] for s in nodes + [nlp])
        cofitest.log("repeated_keys %d (the dead instance held %d calls)" % (repeated, held))
        self.assertLessEqual(repeated, held)


if __name__ == "__main__":
    unittest.main(verbosity=2)
