"""PostgreSQL stops in the middle of a batch and comes back (README: "/readyz answers 200 only
when the database is reachable"; cofid reconnects with backoff). On a PostgreSQL cluster of the
test's own (scripts/pg.sh --fast, never the shared test cluster): while the server is down for
longer than lease_ms, GET /readyz answers 503 and GET /healthz 200 (the same cofid process,
alive); once it is back, /readyz answers 200 again and the batch ends completed with every call
recorded exactly once, and no stage asked for twice (cofid never died, so nothing was lost)."""

import time
import unittest

import cofitest
from cofitest import CofiCase, LLM_ENDPOINTS, NODE_ENDPOINTS, STAGES, sum_stat

N = 600
LATENCY = {"upload": 3, "denoise": 4, "ivr": 3, "lid": 3, "stt": 5, "llm1": 15, "llm2": 15}
LEASE_MS = 2000
LLM_CONCURRENCY = 10


class PostgresRestartTest(CofiCase):

    @classmethod
    def prepare(cls):
        # Registered before cofid is started, so it runs after cofid's stop (cleanups run in
        # reverse order): cofid records and releases its claims before the server goes.
        cls.pg = cofitest.PrivatePostgres(cls.workdir)
        cls.addClassCleanup(cls.pg.destroy)
        cls.pg.start()
        cls.database = cls.pg.database()  # self.db() and cofid use the private cluster
        cls.files = cofitest.make_files(cls.input_root, N, prefix="pg", subdir="pg")
        sim = cls.start_sim(nodes=2, node_capacity=4, nlp_capacity=50, latency=LATENCY,
                            jitter_pct=20, seed=17)
        cls.start_cofid(sim=sim, llm_concurrency=LLM_CONCURRENCY, extra={"lease_ms": LEASE_MS})

    def status(self, path):
        return self.http("GET", path).status

    def test_postgres_down_then_up_mid_batch(self):
        cofid = self.cofid
        pid = cofid.pid
        b = self.create_batch(self.files, name="pg-restart")
        bid = b["id"]
        self.run_batch(bid)

        def mid():
            llm2 = self.stage_counts(self.get_batch(bid))["llm2"]
            return llm2 if llm2["done"] >= N // 10 else None
        at = cofitest.poll(mid, 30, interval=0.02, what="batch %d to be mid-run" % bid)
        t_stop = time.monotonic()
        self.pg.stop()
        cofitest.log("PostgreSQL stopped (in %.1f s) with llm2 at %s"
                     % (time.monotonic() - t_stop, at))
        self.assertLess(at["done"], N, "the batch ended before PostgreSQL stopped")

        # Not ready (and saying so as a problem), while alive.
        cofitest.poll(lambda: self.status("/readyz") == 503, 10, interval=0.05,
                      what="GET /readyz to answer 503 with PostgreSQL down")
        r = self.http("GET", "/readyz")
        self.assertProblem(r, 503, "GET /readyz with PostgreSQL down")
        self.assertStatus(self.http("GET", "/healthz"), 200, "GET /healthz with PostgreSQL down")
        cofitest.poll(lambda: self.status("/batches/%d" % bid) == 503, 10, interval=0.05,
                      what="GET /batches/%d to answer 503 with PostgreSQL down" % bid)
        self.assertProblem(self.http("GET", "/batches/%d" % bid), 503)

        # Down for longer than a lease: cofid must not lose its own claims to itself.
        checks = 0
        while time.monotonic() - t_stop < LEASE_MS / 1000.0 + 1.0:
            self.assertEqual(self.status("/readyz"), 503)
            self.assertEqual(self.status("/healthz"), 200)
            checks += 1
            time.sleep(0.2)
        self.assertTrue(cofid.alive(), "cofid exited while PostgreSQL was down:\n%s"
                        % cofid.log_tail())
        self.assertEqual(cofid.pid, pid)
        cofitest.log("PostgreSQL down for %.1f s (%d checks of /readyz 503, /healthz 200)"
                     % (time.monotonic() - t_stop, checks))

        t_start = time.monotonic()
        self.pg.start()
        cofitest.poll(lambda: self.status("/readyz") == 200, 30, interval=0.05,
                      what="GET /readyz to answer 200 again")
        cofitest.log("ready again %.1f s after PostgreSQL was started"
                     % (time.monotonic() - t_start))
        final = self.wait_batch_final_or_explain(bid, timeout=25)
        self.assertTrue(cofid.alive())
        self.assertEqual(cofid.pid, pid, "cofid was restarted")

        self.assertEqual(final["state"], "completed")
        for name, c in self.stage_counts(final).items():
            self.assertEqual(c, {"pending": 0, "running": 0, "done": N, "failed": 0,
                                 "skipped": 0}, name)
        self.assert_calls_recorded_once(bid, N)
        self.assertEqual(self.db("SELECT id FROM instances"), [(cofid.instance_id,)])
        self.assertEqual(self.database.count(
            "SELECT count(*) FROM calls WHERE batch_id = %d AND lease_owner IS NOT NULL" % bid), 0)

        # cofid kept every answer in memory until it could write it: nothing was asked twice,
        # unless the outage outlasted the lease (on a loaded machine): then the lanes cut their
        # requests short (no instance may work on without a lease, docs/ARCHITECTURE.md) and
        # those were asked again, at least once towards the workers.
        with open(cofid.log_path, errors="replace") as f:
            fenced = "lease was not renewed in time" in f.read()
        nodes, nlp = self.sim.node_stats(), self.sim.nlp_stats()
        check = self.assertGreaterEqual if fenced else self.assertEqual
        for ep in NODE_ENDPOINTS:
            check(sum_stat(nodes, "ok", ep), N, ep)
        for ep in LLM_ENDPOINTS:
            check(sum_stat([nlp], "ok", ep), N, ep)
        if not fenced:
            for s in nodes + [nlp]:
                self.assertEqual(s["repeated_keys"], 0, "port %s" % s["port"])
        self.assertEqual([s["name"] for s in final["stages"]], STAGES)


if __name__ == "__main__":
    unittest.main(verbosity=2)
