"""The status cache of the polled GETs (config status_cache_ms, server/status_cache.h):
GET /batches/{id} and GET /stages/{name}/status answers are served again, without a database
statement, while they are younger than the window (and, re-rendered in the background, for up to
a second window while a new one is made); a write through the same instance's API
shows at once whatever the window; status_cache_ms 0 turns the cache off; a cached answer is
only given to a request that passed authentication.

What reaches the database is read from pg_stat_statements (scripts/pg.sh preloads it): the
calls of the statements behind the two GETs, in this module's database."""

import subprocess
import threading
import time
import unittest

import cofitest
from cofitest import CofiCase

N = 200
LATENCY = {"upload": 20, "denoise": 20, "ivr": 20, "lid": 20, "stt": 20, "llm1": 10, "llm2": 10}
WINDOW_MS = 2000  # long enough to tell a cached answer from a fresh one on a slow machine

# Unique parts of the SQL behind each GET (db/batches_db.c, db/stages_db.c), as
# pg_stat_statements shows it (constants become $n).
SQL_BATCH_GET = "FROM batches b WHERE b.id = $1::bigint"
SQL_STAGE_STATUS = "coalesce(sum((i.in_flight ->> $2::text)::bigint)"


class StatusCacheTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, N, prefix="cache")
        sim = cls.start_sim(nodes=2, node_capacity=2, nlp_capacity=20, latency=LATENCY)
        cls.uncached = cls.start_cofid(sim=sim, llm_concurrency=4, primary=False,
                                       extra={"status_cache_ms": 0})
        cls.start_cofid(sim=sim, llm_concurrency=4, extra={"status_cache_ms": WINDOW_MS})
        try:
            cls.database.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cls.database.query("SELECT count(*) FROM pg_stat_statements")
            cls.have_pgss = True
        except cofitest.HarnessError as e:
            cofitest.log("pg_stat_statements is not usable: %s" % e)
            cls.have_pgss = False

    # --- helpers

    def statements(self, fragment):
        """How many times statements containing fragment ran in this module's database."""
        if not self.have_pgss:
            self.skipTest("pg_stat_statements is not loaded in the test cluster")
        return self.database.count(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database() "
            "AND s.query LIKE '%%%s%%'" % fragment.replace("'", "''"))

    def raw_get(self, path, cofid=None):
        r = self.http("GET", path, cofid=cofid)
        self.assertStatus(r, 200, "GET %s" % path)
        return r

    def start_running_batch(self, name):
        """A batch of N calls, running, with some progress made; cancelled at the end of
        the test."""
        b = self.create_batch(self.files, name=name)
        self.run_batch(b["id"])
        self.addCleanup(self.cancel_and_wait, b["id"])

        def started():
            snap = self.get_batch(b["id"], cofid=self.uncached)
            return snap if self.stage_counts(snap)["distribute"]["done"] >= 4 else None
        cofitest.poll(started, 30, what="the first uploads of batch %d" % b["id"])
        return b

    def cancel_and_wait(self, batch_id):
        r = self.http("POST", "/batches/%d/cancel" % batch_id)
        if r.status not in (202, 409):
            self.fail("POST /batches/%d/cancel answered %d" % (batch_id, r.status))
        self.wait_batch_final(batch_id, timeout=60)

    # --- the tests

    def test_own_writes_show_at_once(self):
        # Created: cached once read.
        b = self.create_batch(self.files[:20], name="own writes")
        path = "/batches/%d" % b["id"]
        queued_path = "/stages/distribute/status?batch_id=%d" % b["id"]
        self.assertEqual(self.get_batch(b["id"])["state"], "created")
        self.assertEqual(self.get_batch(b["id"])["state"], "created")
        self.assertEqual(self.raw_get(queued_path).json["queued"], 20)

        # A batch created through this instance counts in the all-batches stage status at once.
        before = self.raw_get("/stages/distribute/status").json["queued"]
        self.raw_get("/stages/distribute/status")
        other = self.create_batch(self.files[:7], name="own writes, second")
        self.addCleanup(self.cancel_and_wait, other["id"])
        self.assertEqual(self.raw_get("/stages/distribute/status").json["queued"], before + 7)

        # Cancelled without running: every call is cancelled at once, and shown at once.
        r = self.http("POST", "/batches/%d/cancel" % other["id"])
        self.assertStatus(r, 202)
        self.assertEqual(self.get_batch(other["id"])["state"], "cancelled")
        self.assertEqual(self.raw_get("/stages/distribute/status").json["queued"], before)

        # Run, then cancel, each read right after with the previous answer just cached.
        self.run_batch(b["id"])
        self.assertEqual(self.get_batch(b["id"])["state"], "running")
        self.assertEqual(self.get_batch(b["id"])["state"], "running")
        r = self.http("POST", "/batches/%d/cancel" % b["id"])
        self.assertStatus(r, 202)
        self.assertEqual(self.get_batch(b["id"])["state"], "cancelled")
        self.assertEqual(self.raw_get(path).json["state"], "cancelled")
        self.wait_batch_final(b["id"], timeout=60)

    def test_repeated_gets_within_the_window_skip_the_database(self):
        b = self.start_running_batch("window")
        batch_path = "/batches/%d" % b["id"]
        stage_path = "/stages/llm1/status"
        for attempt in range(3):
            # A write through this instance (running a running batch changes nothing) makes
            # every cached answer stale: the next GETs render afresh.
            self.assertStatus(self.http("POST", "/batches/%d/run" % b["id"]), 202)
            t0 = time.monotonic()
            first_batch = self.raw_get(batch_path).raw
            first_stage = self.raw_get(stage_path).raw
            ran = (self.statements(SQL_BATCH_GET), self.statements(SQL_STAGE_STATUS))
            bodies = []
            for _ in range(10):
                bodies.append((self.raw_get(batch_path).raw, self.raw_get(stage_path).raw))
            elapsed = time.monotonic() - t0
            ran_after = (self.statements(SQL_BATCH_GET), self.statements(SQL_STAGE_STATUS))
            if elapsed > 0.8 * WINDOW_MS / 1000.0:
                cofitest.log("attempt %d took %.2f s of the %.2f s window: again"
                             % (attempt, elapsed, WINDOW_MS / 1000.0))
                continue
            self.assertEqual(ran_after, ran, "GETs within the window ran statements")
            for got in bodies:
                self.assertEqual(got, (first_batch, first_stage))
            break
        else:
            self.fail("the machine is too slow to do 22 GETs within %d ms" % WINDOW_MS)

        # Once the window is over (but not a second one), a GET is still answered at once with
        # the previous answer, and one rendering starts in the background: one statement, and
        # the next GETs get the newer figures.
        time.sleep(max(0.0, t0 + WINDOW_MS / 1000.0 + 0.1 - time.monotonic()))
        before = self.statements(SQL_BATCH_GET)
        self.assertEqual(self.raw_get(batch_path).raw, first_batch)
        later = cofitest.poll(lambda: self.raw_get(batch_path).raw != first_batch, 10,
                              what="the answer rendered in the background")
        self.assertTrue(later)
        self.assertEqual(self.statements(SQL_BATCH_GET), before + 1)

    def test_a_poll_never_waits_for_the_database_to_refresh_its_answer(self):
        # The table behind GET /batches/{id} is locked by another session after the answer was
        # cached: once the window is over, the GET that finds it old is answered at once with
        # it while the re-rendering waits for the lock in the background (seen waiting in
        # pg_stat_activity), and so is the next one; once the lock goes, the new answer shows.
        b = self.start_running_batch("locked")
        path = "/batches/%d" % b["id"]
        self.assertStatus(self.http("POST", "/batches/%d/run" % b["id"]), 202)  # fresh entry
        t0 = time.monotonic()
        first = self.raw_get(path).raw
        holder = subprocess.Popen(
            [self.database.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.database.host,
             "-p", str(self.database.port), "-U", self.database.user, "-d", self.database.name],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def unlock():
            if holder.poll() is None:
                try:
                    holder.stdin.write("ROLLBACK;\n")
                    holder.stdin.close()
                    holder.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    holder.kill()
                    holder.wait()
            holder.stderr.close()
        self.addCleanup(unlock)
        holder.stdin.write("BEGIN;\nLOCK TABLE batches IN ACCESS EXCLUSIVE MODE;\n")
        holder.stdin.flush()
        cofitest.poll(lambda: self.database.count(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'batches' AND l.mode = 'AccessExclusiveLock' AND l.granted") == 1,
            10, what="the lock on batches")
        if time.monotonic() - t0 > 0.8 * WINDOW_MS / 1000.0:
            self.skipTest("the machine is too slow: the lock took most of the window")
        time.sleep(max(0.0, t0 + WINDOW_MS / 1000.0 + 0.1 - time.monotonic()))

        started = time.monotonic()
        self.assertEqual(self.raw_get(path).raw, first)
        waiting = cofitest.poll(lambda: self.database.count(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%%%s%%'" % SQL_BATCH_GET) >= 1, 10,
            what="the background re-rendering waiting for the lock")
        self.assertTrue(waiting)
        self.assertEqual(self.raw_get(path).raw, first)
        self.assertLess(time.monotonic() - started, WINDOW_MS / 1000.0,
                        "polls waited for the database")
        unlock()
        cofitest.poll(lambda: self.raw_get(path).raw != first, 10,
                      what="the new answer once the lock is gone")

    def test_changes_of_others_show_after_the_window(self):
        # A change this instance did not make (here straight in the database) waits for the
        # window to end; with status_cache_ms 0 it shows at once.
        b = self.create_batch(self.files[:3], name="before")
        self.addCleanup(self.cancel_and_wait, b["id"])
        self.assertEqual(self.get_batch(b["id"])["name"], "before")
        self.db("UPDATE batches SET name = 'after' WHERE id = %d" % b["id"])
        changed = time.monotonic()
        self.assertEqual(self.get_batch(b["id"], cofid=self.uncached)["name"], "after")
        seen = cofitest.poll(lambda: self.get_batch(b["id"])["name"] == "after",
                             WINDOW_MS / 1000.0 + 10, what="the new name on the cached instance")
        self.assertTrue(seen)
        self.assertGreater(time.monotonic() - changed, 0.5 * WINDOW_MS / 1000.0,
                           "the cached instance showed a change of others at once")

    def test_cache_off_reads_every_time(self):
        b = self.start_running_batch("cache off")
        path = "/batches/%d" % b["id"]
        stage_path = "/stages/llm1/status?batch_id=%d" % b["id"]
        before = (self.statements(SQL_BATCH_GET), self.statements(SQL_STAGE_STATUS))
        seen = set()
        for _ in range(10):
            seen.add(self.raw_get(path, cofid=self.uncached).raw)
            self.raw_get(stage_path, cofid=self.uncached)
        after = (self.statements(SQL_BATCH_GET), self.statements(SQL_STAGE_STATUS))
        self.assertEqual((after[0] - before[0], after[1] - before[1]), (10, 10))
        # Progress shows from one GET to the next.
        cofitest.poll(lambda: self.raw_get(path, cofid=self.uncached).raw not in seen, 10,
                      what="a new answer of %s on the instance without cache" % path)

    def test_concurrent_polls_never_hide_a_write(self):
        # Pollers keep both GETs busy (entries refreshed, served, stale, in flight) while writes
        # go through the same instance: the GET after each write always shows it.
        stop = threading.Event()
        errors = []
        created = [self.create_batch(self.files[:5], name="poll %d" % i) for i in range(3)]
        for c in created:
            self.addCleanup(self.cancel_and_wait, c["id"])
        paths = ["/stages/distribute/status", "/stages/llm1/status"]
        paths += ["/batches/%d" % c["id"] for c in created]
        paths += ["/stages/distribute/status?batch_id=%d" % c["id"] for c in created]

        def poller(k):
            i = k
            while not stop.is_set():
                try:
                    r = cofitest.raw_http(self.cofid.port, "GET", paths[i % len(paths)])
                    if r.status != 200:
                        errors.append("%s: %d" % (paths[i % len(paths)], r.status))
                except OSError as e:
                    errors.append(repr(e))
                i += 1

        threads = [threading.Thread(target=poller, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        try:
            for c in created:
                self.assertEqual(self.get_batch(c["id"])["state"], "created")
                r = self.http("POST", "/batches/%d/cancel" % c["id"])
                self.assertStatus(r, 202)
                self.assertEqual(self.get_batch(c["id"])["state"], "cancelled")
                q = self.raw_get("/stages/distribute/status?batch_id=%d" % c["id"]).json
                self.assertEqual(q["queued"], 0, q)
                extra = self.create_batch(self.files[:2], name="poll extra")
                self.addCleanup(self.cancel_and_wait, extra["id"])
                self.assertEqual(self.get_batch(extra["id"])["state"], "created")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        self.assertEqual(errors, [])


class StatusCacheAuthTest(CofiCase):
    """A cached answer is given only to a request that passed authentication."""

    READ = "cache-read-token"

    @classmethod
    def prepare(cls):
        cls.start_cofid(auth_tokens={"COFI_TOKEN_DASH": (cls.READ, "read")},
                        extra={"status_cache_ms": WINDOW_MS})

    def test_cached_answers_need_a_token(self):
        for path in ("/stages/llm1/status", "/stages/stt/status"):
            ok = {"Authorization": "Bearer " + self.READ}
            first = self.http("GET", path, headers=ok)
            self.assertStatus(first, 200)
            self.assertEqual(self.http("GET", path, headers=ok).raw, first.raw)
            self.assertProblem(self.http("GET", path), 401)
            self.assertProblem(self.http("GET", path, headers={"Authorization": "Bearer nope"}),
                               401)


if __name__ == "__main__":
    unittest.main(verbosity=2)
