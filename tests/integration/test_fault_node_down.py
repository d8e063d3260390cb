"""A GPU node goes down mid-batch (CONTRACTS §5: "a node that fails its health checks gets no
new work; calls that were on it and have not finished stt are distributed again to a healthy
node"). Three nodes; node 1 is taken down by the simulator:

- refusing connections: GET /stages/*/status shows it unhealthy, the calls it held are
  uploaded again to another node, and the batch ends completed with every call recorded once;
- back up: it is healthy again and gets work in the next batch;
- answering 503 to everything (health checks included): once unhealthy it gets no request at
  all any more (its request counters stop), and again the batch completes.

Work is at least once towards workers: the upload counts are bounds, not exact (a request in
flight when the node went down may have been answered there and still be repeated elsewhere).
Deadlines are scaled (cofitest.scaled) for loaded machines and sanitizer builds.
"""

import time
import unittest

import cofitest
from cofitest import CofiCase, NODE_ENDPOINTS, STAGES, scaled, sum_stat

NODES = 3
CAPACITY = 3
LATENCY = {"upload": 10, "denoise": 10, "ivr": 10, "lid": 10, "stt": 10, "llm1": 5, "llm2": 5}
HEALTH_MS = 200
# Retries of a node's 503s must outlast its detection (2 failed checks, ~2 x 200 ms): with
# equal jitter the 9 waits of 10 attempts add up to at least 1.4 s.
MEDIATOR = {"health_interval_ms": HEALTH_MS, "max_attempts": 10, "backoff_base_ms": 50,
            "backoff_max_ms": 400}


class NodeDownTest(CofiCase):

    @classmethod
    def prepare(cls):
        sim = cls.start_sim(nodes=NODES, node_capacity=CAPACITY, nlp_capacity=50,
                            latency=LATENCY, jitter_pct=20, seed=13)
        cls.start_cofid(sim=sim, llm_concurrency=20, mediator=MEDIATOR,
                        extra={"lease_ms": 3000})

    # --- helpers

    def node_health(self):
        """{node id: healthy} as every mediator stage's status reports it, or None while they
        disagree (a check ended between two of the requests)."""
        seen = []
        for stage in STAGES[:5]:
            r = self.http("GET", "/stages/%s/status" % stage)
            self.assertStatus(r, 200)
            seen.append({n["id"]: n["healthy"] for n in r.json["nodes"]})
        return seen[0] if all(h == seen[0] for h in seen) else None

    def wait_health(self, node, healthy, timeout=10.0):
        """Waits (timeout scaled) until node is reported (un)healthy and every other healthy;
        returns how long it took."""
        timeout = scaled(timeout)
        t0 = time.monotonic()
        want = {"gpu-%d" % i: (healthy if i == node else True) for i in range(NODES)}
        cofitest.poll(lambda: self.node_health() == want, timeout, interval=0.05,
                      what="node gpu-%d to be %s" % (node, "healthy" if healthy else "unhealthy"))
        return time.monotonic() - t0

    def start_batch(self, n, tag):
        files = cofitest.make_files(self.input_root, n, prefix=tag, subdir=tag)
        b = self.create_batch(files, name=tag)
        self.run_batch(b["id"])
        return b["id"]

    def wait_node_busy(self, bid, node, n):
        """Waits until the batch is well under way and node holds calls it has not finished."""
        def busy():
            counts = self.stage_counts(self.get_batch(bid))
            if counts["distribute"]["done"] < n // 5 or counts["stt"]["done"] > n - n // 3:
                return None
            on_node = self.database.count(
                "SELECT count(*) FROM calls WHERE batch_id = %d AND node = 'gpu-%d' AND stage "
                "BETWEEN 1 AND 3 AND status IN ('pending', 'running')" % (bid, node))
            return (counts, on_node) if on_node >= 3 else None
        return cofitest.poll(busy, scaled(30), interval=0.02,
                             what="node gpu-%d busy mid-batch" % node)

    def db_now(self):
        return self.database.scalar("SELECT now()")

    def node_requests(self, node):
        """The node's worker request counters, read through the NLP port (works while down)."""
        return dict(self.sim.stats_all()[node]["requests"])

    def assert_batch_done_once(self, bid, n):
        final = self.wait_batch_final_or_explain(bid, timeout=60)
        self.assertEqual(final["state"], "completed")
        for name, c in self.stage_counts(final).items():
            self.assertEqual(c, {"pending": 0, "running": 0, "done": n, "failed": 0,
                                 "skipped": 0}, name)
        self.assert_calls_recorded_once(bid, n)
        # Every call's later stages ran on the node its (last) upload went to.
        self.assertEqual(self.db(
            "SELECT c.id, c.node, cs.result ->> 'node' FROM calls c JOIN call_stages cs "
            "ON cs.call_id = c.id AND cs.stage = 0 WHERE c.batch_id = %d "
            "AND c.node IS DISTINCT FROM cs.result ->> 'node' LIMIT 5" % bid), [])
        return final

    def assert_moved_off(self, bid, node, t_down, stt_column):
        """The calls node had not finished when it went down at t_down (database time) were
        distributed again: the only calls of the batch left on node are those whose stt
        (stt_column: finished_at, or started_at when answers in progress could still come)
        was before t_down, and node had received more uploads than it ended with."""
        late = self.db(
            "SELECT c.id, cs.started_at, cs.finished_at FROM calls c JOIN call_stages cs "
            "ON cs.call_id = c.id AND cs.stage = 4 WHERE c.batch_id = %d AND c.node = 'gpu-%d' "
            "AND cs.%s > '%s'::timestamptz LIMIT 5" % (bid, node, stt_column, t_down))
        self.assertEqual(late, [], "calls finished stt on gpu-%d after it went down at %s"
                         % (node, t_down))
        uploaded = self.sim.stats_all()[node]["ok"]["upload"]
        kept = self.database.count("SELECT count(*) FROM calls WHERE batch_id = %d "
                                   "AND node = 'gpu-%d'" % (bid, node))
        total_uploads = sum_stat(self.sim.stats_all(), "ok", "upload")
        cofitest.log("gpu-%d: %d calls uploaded to it (all batches), %d of this batch kept; "
                     "%d uploads in all" % (node, uploaded, kept, total_uploads))
        return kept

    # --- the scenarios, in order (one cofid and one sim for all of them)

    def test_a_refused_node_then_back(self):
        sim = self.sim
        # 1. Node 1 refuses connections in the middle of a batch.
        n = 600
        uploads_before = sum_stat(sim.stats_all(), "ok", "upload")  # before the batch starts
        bid = self.start_batch(n, "refuse")
        counts, caught = self.wait_node_busy(bid, 1, n)
        sim.down(1, "refuse")
        t_down = self.db_now()
        t0 = time.monotonic()
        cofitest.log("node 1 down (refuse) at distribute %s, stt %s; it held at least %d "
                     "calls at denoise..lid" % (counts["distribute"], counts["stt"], caught))
        self.wait_health(1, healthy=False)
        cofitest.log("node gpu-1 reported unhealthy %.2f s after it went down"
                     % (time.monotonic() - t0))
        reqs_down = self.node_requests(1)
        uploads_gpu1 = sim.stats_all()[1]["ok"]["upload"]
        self.assert_batch_done_once(bid, n)
        # Refused, its requests in progress were cut off: whatever it still had to finish
        # moved to the other nodes, uploaded there once more.
        kept = self.assert_moved_off(bid, 1, t_down, "finished_at")
        moved = uploads_gpu1 - kept
        self.assertGreater(moved, 0, "no call was distributed again")
        # Every call was uploaded to the node it ended on, and each call that left gpu-1 had
        # been uploaded there too: at least n + moved uploads (more when answers in flight
        # were lost with the node).
        self.assertGreaterEqual(sum_stat(sim.stats_all(), "ok", "upload") - uploads_before,
                                n + moved)
        health = cofitest.poll(self.node_health, scaled(5), what="a consistent node health")
        self.assertFalse(health["gpu-1"], "healthy again while still down")
        self.assertEqual(self.node_requests(1), reqs_down)

        # 2. Back up: healthy again, and it gets work in the next batch.
        sim.up(1)
        t_up = time.monotonic()
        self.wait_health(1, healthy=True)
        cofitest.log("node gpu-1 healthy again %.2f s after it came back"
                     % (time.monotonic() - t_up))
        ok_before = sim.stats(sim.node_port(1))["ok"]
        n2 = 150
        bid2 = self.start_batch(n2, "back")
        self.assert_batch_done_once(bid2, n2)
        ok_after = sim.stats(sim.node_port(1))["ok"]
        grown = {ep: ok_after[ep] - ok_before[ep] for ep in NODE_ENDPOINTS}
        cofitest.log("node gpu-1 answered %s in the batch after it came back" % grown)
        for ep in NODE_ENDPOINTS:
            self.assertGreaterEqual(grown[ep], n2 // 10, "node gpu-1 got little or no %s work "
                                                        "after it came back" % ep)
        # Uploads are at least once: a call can have been uploaded there and moved on.
        kept2 = self.database.count(
            "SELECT count(*) FROM calls WHERE batch_id = %d AND node = 'gpu-1'" % bid2)
        self.assertGreater(kept2, 0)
        self.assertLessEqual(kept2, grown["upload"])

    def test_b_erroring_node_gets_no_new_work(self):
        sim = self.sim
        self.wait_health(1, healthy=True)
        n = 400
        uploads_before = sim.stats_all()[1]["ok"]["upload"]  # before the batch starts
        bid = self.start_batch(n, "error")
        counts, caught = self.wait_node_busy(bid, 1, n)
        sim.down(1, "error")
        t_down = self.db_now()
        t0 = time.monotonic()
        self.wait_health(1, healthy=False)
        cofitest.log("node gpu-1 (503 to everything) reported unhealthy %.2f s after it went "
                     "down at distribute %s; it held at least %d calls at denoise..lid"
                     % (time.monotonic() - t0, counts["distribute"], caught))

        # Requests cofid had sent before it saw the node unhealthy may still arrive (and
        # retries already due): the counters settle over a gap longer than the longest
        # backoff (backoff_max_ms), and from then on they must not move.
        last = [None]

        def settled():
            now = self.node_requests(1)
            same = now == last[0]
            last[0] = now
            return now if same else None
        gap = max(0.3, MEDIATOR["backoff_max_ms"] / 1000.0 + 0.2) * min(cofitest.SLOW, 2)
        base = cofitest.poll(settled, scaled(10), interval=gap,
                             what="node gpu-1's counters to settle")
        self.assert_batch_done_once(bid, n)
        self.assertEqual(self.node_requests(1), base,
                         "node gpu-1 got requests after it was reported unhealthy")
        # Requests in progress at the node when it started failing were answered: a call can
        # have finished stt there only if stt had started before.
        kept = self.assert_moved_off(bid, 1, t_down, "started_at")
        uploaded = sim.stats_all()[1]["ok"]["upload"] - uploads_before
        self.assertGreater(uploaded - kept, 0, "no call was distributed again")
        cofitest.log("node gpu-1 answered %d requests with 503 before cofid stopped sending"
                     % sim.stats_all()[1]["responses"].get("503", 0))
        sim.up(1)
        self.wait_health(1, healthy=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
