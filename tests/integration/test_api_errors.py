"""Every error status of CONTRACTS §2, each provoked by a request and checked for its status,
its problem+json body, and that nothing changed in the database; pagination of both lists;
authentication (401/403) with a second cofid that has tokens."""

import os
import unittest
import urllib.parse

import cofitest
from cofitest import CofiCase, STAGES

MAX_BODY = 4096


class ApiErrorsTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 30, prefix="ok")
        cls.outside = os.path.join(cls.workdir, "outside.wav")  # a real file beside input_root
        with open(cls.outside, "wb") as f:
            f.write(b"RIFF....WAVE outside")
        os.symlink(cls.outside, os.path.join(cls.input_root, "link-out.wav"))
        os.symlink(os.path.join(cls.input_root, cls.files[0]),
                   os.path.join(cls.input_root, "link-in.wav"))
        os.makedirs(os.path.join(cls.input_root, "adir"))
        cls.unreadable = os.path.join(cls.input_root, "secret.wav")
        with open(cls.unreadable, "wb") as f:
            f.write(b"RIFF....WAVE secret")
        os.chmod(cls.unreadable, 0)
        sim = cls.start_sim(nodes=2, node_capacity=4, nlp_capacity=20,
                            latency={"upload": 1, "denoise": 1, "ivr": 1, "lid": 1, "stt": 1,
                                     "llm1": 1, "llm2": 1})
        cls.start_cofid(sim=sim, max_body_bytes=MAX_BODY, llm_concurrency=5)

    # --- helpers

    def rejected(self, method, path, status, body=None, raw=None, headers=None, cofid=None):
        """Sends the request, asserts a problem with `status`, and that batches and calls are
        unchanged. Returns the response."""
        before = self.database.snapshot()
        r = self.http(method, path, body=body, raw=raw, headers=headers, cofid=cofid)
        self.assertProblem(r, status, "%s %s" % (method, path))
        self.assertEqual(self.database.snapshot(), before,
                         "%s %s answered %d but changed the database" % (method, path, status))
        return r

    def created_batch(self, n=1):
        return self.create_batch(self.files[:n], name="fixture")

    def walk(self, path, key, limit, state=None):
        """Walks a list with limit/cursor; returns the items in the order served."""
        items, cursor, pages = [], None, 0
        while True:
            q = {"limit": str(limit)}
            if cursor is not None:
                q["cursor"] = cursor
            if state is not None:
                q["state"] = state
            r = self.http("GET", "%s?%s" % (path, urllib.parse.urlencode(q)))
            self.assertStatus(r, 200)
            self.assertLessEqual(len(r.json[key]), limit)
            items.extend(r.json[key])
            cursor = r.json["next_cursor"]
            pages += 1
            if cursor is None:
                return items
            self.assertLess(pages, 1000, "pagination does not end")

    # --- 400

    def test_400_malformed_json(self):
        for raw in (b'{"files": [', b"{files: []}", b'{"files": ["a"]} trailing', b"\xff\xfe"):
            with self.subTest(raw=raw):
                self.rejected("POST", "/batches", 400, raw=raw,
                              headers={"Content-Type": "application/json"})

    def test_400_wrong_types(self):
        f = self.files[:1]
        for body in ({"files": "ok-00000.wav"},
                     {"files": [f[0], 3]},
                     {"files": [None]},
                     {"files": f, "name": 5},
                     {"files": f, "name": ["x"]},
                     {"files": f, "metadata": [1, 2]},
                     {"files": f, "metadata": "x"},
                     {"files": f, "metadata": 7},
                     {"files": f, "mode": 1}):
            with self.subTest(body=body):
                self.rejected("POST", "/batches", 400, body=body)

    def test_400_unknown_key(self):
        self.rejected("POST", "/batches", 400, body={"files": self.files[:1], "colour": "red"})

    def test_400_body_not_an_object(self):
        for raw in (b'["ok-00000.wav"]', b'"x"', b"null", b"42"):
            with self.subTest(raw=raw):
                self.rejected("POST", "/batches", 400, raw=raw,
                              headers={"Content-Type": "application/json"})

    def test_400_bad_run_body(self):
        b = self.created_batch()
        path = "/batches/%d/run" % b["id"]
        self.rejected("POST", path, 400, raw=b'{"mode": ', headers={"Content-Type": "application/json"})
        self.rejected("POST", path, 400, body={"mode": 5})
        self.rejected("POST", path, 400, body={"speed": "fast"})
        self.rejected("POST", path, 400, body=["staged"])
        # cancel takes no body, but checks one that is sent like run does
        self.rejected("POST", "/batches/%d/cancel" % b["id"], 400, raw=b'{"mode": ',
                      headers={"Content-Type": "application/json"})
        self.rejected("POST", "/batches/%d/cancel" % b["id"], 400, body={"speed": "fast"})
        self.assertEqual(self.get_batch(b["id"])["state"], "created")

    def test_400_idempotency_key_too_long(self):
        self.rejected("POST", "/batches", 400, body={"files": self.files[:1]},
                      headers={"Idempotency-Key": "k" * 256})

    def test_400_bad_list_parameters(self):
        b = self.created_batch()
        for path in ("/batches", "/batches/%d/calls" % b["id"]):
            for q in ("limit=0", "limit=1001", "limit=x", "limit=-1", "limit=2.5", "state=bogus",
                      "cursor=zzz"):
                with self.subTest(path=path, query=q):
                    self.rejected("GET", "%s?%s" % (path, q), 400)
        for q in ("limit=1", "limit=1000"):
            self.assertStatus(self.http("GET", "/batches?" + q), 200)

    # --- 404

    def test_404_unknown_batch(self):
        for method, path in (("GET", "/batches/987654321"), ("GET", "/batches/987654321/calls"),
                             ("POST", "/batches/987654321/run"),
                             ("POST", "/batches/987654321/cancel"),
                             ("GET", "/batches/987654321/calls/1")):
            with self.subTest(method=method, path=path):
                self.rejected(method, path, 404)

    def test_404_unknown_call(self):
        a = self.created_batch()
        b = self.created_batch()
        call_a = self.list_all_calls(a["id"])[0]
        self.assertStatus(self.http("GET", "/batches/%d/calls/%s" % (a["id"], call_a["id"])), 200)
        self.rejected("GET", "/batches/%d/calls/987654321" % a["id"], 404)
        self.rejected("GET", "/batches/%d/calls/abc" % a["id"], 404)
        self.rejected("GET", "/batches/%d/calls/%s" % (b["id"], call_a["id"]), 404,)

    def test_404_unknown_stage(self):
        for name in ("nope", "DENOISE", "upload", "llm3"):
            with self.subTest(stage=name):
                self.rejected("GET", "/stages/%s/status" % name, 404)
        for name in STAGES:
            self.assertStatus(self.http("GET", "/stages/%s/status" % name), 200)

    def test_404_unknown_route(self):
        for method, path in (("GET", "/nope"), ("GET", "/batches/1/nope"), ("GET", "/stages"),
                             ("GET", "/stages/ivr"), ("POST", "/nope"), ("GET", "/batches/1/calls/1/x")):
            with self.subTest(method=method, path=path):
                self.rejected(method, path, 404)

    def test_404_non_numeric_batch_id(self):
        for method, path in (("GET", "/batches/abc"), ("GET", "/batches/0"), ("GET", "/batches/-1"),
                             ("GET", "/batches/1.5"), ("GET", "/batches/abc/calls"),
                             ("POST", "/batches/abc/run"), ("POST", "/batches/abc/cancel"),
                             ("GET", "/batches/99999999999999999999999")):
            with self.subTest(method=method, path=path):
                self.rejected(method, path, 404)

    # --- 405

    def test_405_with_allow(self):
        b = self.created_batch()
        for method, path, allowed in (("DELETE", "/batches", {"GET", "POST"}),
                                      ("PUT", "/batches/%d/run" % b["id"], {"POST"}),
                                      ("GET", "/batches/%d/run" % b["id"], {"POST"}),
                                      ("GET", "/batches/%d/cancel" % b["id"], {"POST"}),
                                      ("PUT", "/batches/%d" % b["id"], {"GET", "PATCH", "DELETE"}),
                                      ("GET", "/batches/%d/retry" % b["id"], {"POST"}),
                                      ("DELETE", "/batches/%d/calls" % b["id"], {"GET"}),
                                      ("POST", "/stages/ivr/status", {"GET"}),
                                      ("POST", "/healthz", {"GET"}),
                                      ("PUT", "/openapi.json", {"GET"})):
            with self.subTest(method=method, path=path):
                r = self.rejected(method, path, 405)
                allow = {m.strip().upper() for m in (r.headers.get("Allow") or "").split(",")
                         if m.strip()}
                self.assertTrue(allowed <= allow, "Allow: %s" % r.headers.get("Allow"))
                self.assertTrue(allow <= allowed | {"HEAD", "OPTIONS"},
                                "Allow: %s" % r.headers.get("Allow"))
        self.assertEqual(self.get_batch(b["id"])["state"], "created")

    # --- 409

    def test_409_run_a_cancelled_batch(self):
        b = self.created_batch(3)
        r = self.http("POST", "/batches/%d/cancel" % b["id"])
        self.assertStatus(r, 202)
        self.assertEqual(r.json["state"], "cancelled")
        final = self.wait_batch_final(b["id"], timeout=10)
        self.assertEqual(final["state"], "cancelled")
        for name, c in self.stage_counts(final).items():
            self.assertEqual(c["skipped"], 3, name)
        self.assertEqual({c["state"] for c in self.list_all_calls(b["id"])}, {"cancelled"})
        self.rejected("POST", "/batches/%d/run" % b["id"], 409)
        self.rejected("POST", "/batches/%d/run" % b["id"], 409, body={"mode": "staged"})
        again = self.http("POST", "/batches/%d/cancel" % b["id"])  # cancelling twice is fine
        self.assertStatus(again, 202)
        self.assertEqual((again.json["state"], again.json["finished_at"]),
                         ("cancelled", final["finished_at"]))
        self.assertEqual(self.get_batch(b["id"])["state"], "cancelled")

    def test_409_cancel_a_completed_batch(self):
        final = self.run_batch_to_end(self.files[:2], timeout=30)
        self.assertEqual(final["state"], "completed")
        self.rejected("POST", "/batches/%d/cancel" % final["id"], 409)
        after = self.get_batch(final["id"])
        self.assertEqual((after["state"], after["finished_at"]), ("completed", final["finished_at"]))

    # --- 413

    def test_413_body_over_max_body_bytes(self):
        big = {"files": ["ok-%05d.wav" % (i % 30) + " " * 40 for i in range(100)]}
        self.assertGreater(len(cofitest.json.dumps(big)), MAX_BODY)
        self.rejected("POST", "/batches", 413, body=big)
        self.rejected("POST", "/batches", 413, body={"files": self.files[:1],
                                                     "metadata": {"pad": "x" * (2 * MAX_BODY)}})
        b = self.created_batch()
        self.rejected("POST", "/batches/%d/run" % b["id"], 413, body={"mode": "staged" + " " * MAX_BODY})
        # Just under the limit is fine.
        ok = self.http("POST", "/batches", body={"files": self.files[:1],
                                                  "metadata": {"pad": "x" * (MAX_BODY - 200)}})
        self.assertStatus(ok, 201)

    # --- 415

    def test_415_non_json_body(self):
        body = cofitest.json.dumps({"files": self.files[:1]}).encode()
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            with self.subTest(content_type=ctype):
                self.rejected("POST", "/batches", 415, raw=body, headers={"Content-Type": ctype})
        b = self.created_batch()
        self.rejected("POST", "/batches/%d/run" % b["id"], 415, raw=b'{"mode": "staged"}',
                      headers={"Content-Type": "text/plain"})
        self.rejected("POST", "/batches/%d/cancel" % b["id"], 415, raw=b'{}',
                      headers={"Content-Type": "text/plain"})
        ok = self.http("POST", "/batches", raw=body,
                       headers={"Content-Type": "application/json; charset=utf-8"})
        self.assertStatus(ok, 201)

    # --- 422

    def assert_422_names(self, r, bad):
        errors = r.json.get("errors")
        if errors is not None:
            self.assertIn(bad, [e["file"] for e in errors], "errors does not name %r" % bad)

    def test_422_empty_files(self):
        self.rejected("POST", "/batches", 422, body={"files": []})

    def test_422_paths_outside_input_root_or_missing(self):
        good = self.files[0]
        rel_outside = os.path.relpath(self.outside, self.input_root)  # ../outside.wav
        for bad, why in ((self.outside, "absolute path"),
                         ("/etc/hostname", "absolute path"),
                         (rel_outside, "../ escape"),
                         ("adir/../../outside.wav", "../ escape through a folder"),
                         ("link-out.wav", "symlink pointing outside input_root"),
                         ("missing.wav", "no such file"),
                         ("adir", "a directory"),
                         ("adir/", "a directory"),
                         ("", "empty path")):
            with self.subTest(why=why, path=bad):
                r = self.rejected("POST", "/batches", 422, body={"files": [good, bad]})
                if bad:
                    self.assert_422_names(r, bad)
        # A symlink that stays inside input_root is fine.
        self.assertStatus(self.http("POST", "/batches", body={"files": ["link-in.wav"]}), 201)

    def test_422_unreadable_file(self):
        if os.geteuid() == 0:
            print("skipping the unreadable-file case: running as root, for whom a chmod 000 "
                  "file is still readable")
            self.skipTest("root can read a chmod 000 file")
        r = self.rejected("POST", "/batches", 422, body={"files": [self.files[0], "secret.wav"]})
        self.assert_422_names(r, "secret.wav")

    def test_422_unknown_mode_on_run(self):
        b = self.created_batch()
        self.rejected("POST", "/batches/%d/run" % b["id"], 422, body={"mode": "fast"})
        self.rejected("POST", "/batches/%d/cancel" % b["id"], 422, body={"mode": "fast"})
        self.assertEqual(self.get_batch(b["id"])["state"], "created")

    # --- pagination

    def test_pagination_of_batches(self):
        for i in range(7):
            self.create_batch(self.files[i:i + 1], name="page-%d" % i)
        want = [int(r[0]) for r in self.db("SELECT id FROM batches ORDER BY created_at DESC, id DESC")]
        got = [b["id"] for b in self.walk("/batches", "batches", 3)]
        self.assertEqual(got, want, "walking /batches?limit=3 must give every batch once, newest first")
        want_created = [int(r[0]) for r in self.db(
            "SELECT id FROM batches WHERE state = 'created' ORDER BY created_at DESC, id DESC")]
        got_created = self.walk("/batches", "batches", 2, state="created")
        self.assertEqual([b["id"] for b in got_created], want_created)
        self.assertTrue(all(b["state"] == "created" for b in got_created))
        self.assertEqual(self.walk("/batches", "batches", 1000, state="completed_with_errors"), [])
        r = self.http("GET", "/batches")
        self.assertEqual(len(r.json["batches"]), min(50, len(want)))
        self.assertEqual(r.json["next_cursor"] is None, len(want) <= 50)

    def test_pagination_of_calls(self):
        files = cofitest.make_files(self.input_root, 60, prefix="page", subdir="pages")
        b = self.create_batch(files)
        want = [int(r[0]) for r in self.db("SELECT seq FROM calls WHERE batch_id = %d ORDER BY seq"
                                           % b["id"])]
        self.assertEqual(len(want), 60)
        calls = self.walk("/batches/%d/calls" % b["id"], "calls", 7)
        self.assertEqual([c["seq"] for c in calls], want)
        self.assertEqual(len({c["id"] for c in calls}), 60)
        self.assertEqual([c["file"] for c in calls], files)
        pending = self.walk("/batches/%d/calls" % b["id"], "calls", 25, state="pending")
        self.assertEqual(len(pending), 60)
        self.assertEqual(self.walk("/batches/%d/calls" % b["id"], "calls", 5, state="done"), [])
        r = self.http("GET", "/batches/%d/calls" % b["id"])
        self.assertStatus(r, 200)
        self.assertEqual(len(r.json["calls"]), 50, "default limit")
        self.assertIsNotNone(r.json["next_cursor"])
        for c in r.json["calls"]:
            self.assertTrue(all("result" not in s for s in c["stages"]),
                            "the list must leave out stage results")

    # --- 401 / 403

    def test_401_403_with_tokens(self):
        w, rd = "w-" + cofitest.secrets.token_hex(16), "r-" + cofitest.secrets.token_hex(16)
        auth = self.start_cofid(sim=self.sim, owner=self, primary=False, max_body_bytes=MAX_BODY,
                                auth_tokens={"COFI_TOKEN_OPS": (w, "write"),
                                             "COFI_TOKEN_DASH": (rd, "read")})
        body = {"files": self.files[:1]}
        for hdr in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic " + w},
                    {"Authorization": "Bearer"}, {"Authorization": w}):
            with self.subTest(headers=hdr):
                r = self.rejected("GET", "/batches", 401, headers=hdr, cofid=auth)
                self.rejected("POST", "/batches", 401, body=body, headers=hdr, cofid=auth)
                self.rejected("GET", "/stages/ivr/status", 401, headers=hdr, cofid=auth)
        self.assertNotIn(w, r.raw.decode(errors="replace"))
        read = {"Authorization": "Bearer " + rd}
        write = {"Authorization": "Bearer " + w}
        self.rejected("POST", "/batches", 403, body=body, headers=read, cofid=auth)
        r = self.http("GET", "/batches", headers=read, cofid=auth)
        self.assertStatus(r, 200)
        r = self.http("POST", "/batches", body=body, headers=write, cofid=auth)
        self.assertStatus(r, 201)
        bid = r.json["id"]
        self.rejected("POST", "/batches/%d/run" % bid, 403, headers=read, cofid=auth)
        self.rejected("POST", "/batches/%d/cancel" % bid, 403, headers=read, cofid=auth)
        self.rejected("POST", "/batches/%d/cancel" % bid, 401, cofid=auth)
        for method, path, body in (("PATCH", "/batches/%d" % bid, {"priority": 2}),
                                   ("DELETE", "/batches/%d" % bid, None),
                                   ("POST", "/batches/%d/pause" % bid, None),
                                   ("POST", "/batches/%d/resume" % bid, None),
                                   ("POST", "/batches/%d/retry" % bid, None)):
            self.rejected(method, path, 403, body=body, headers=read, cofid=auth)
        r = self.http("PATCH", "/batches/%d" % bid, body={"priority": 2}, headers=write, cofid=auth)
        self.assertStatus(r, 200)
        for path in ("/batches/%d" % bid, "/batches/%d/calls" % bid, "/stages/stt/status"):
            self.assertStatus(self.http("GET", path, headers=read, cofid=auth), 200, path)
            self.assertStatus(self.http("GET", path, headers=write, cofid=auth), 200, path)
        for path in ("/healthz", "/readyz", "/openapi.json"):
            self.assertStatus(self.http("GET", path, cofid=auth), 200, path + " without a token")
        # Authentication comes first: an unknown path is 401 without a token, 404 with one.
        self.rejected("GET", "/nope", 401, cofid=auth)
        self.rejected("GET", "/nope", 404, headers=read, cofid=auth)
        self.rejected("DELETE", "/batches", 405, headers=read, cofid=auth)
        r = self.http("POST", "/batches/%d/cancel" % bid, headers=write, cofid=auth)
        self.assertStatus(r, 202)


if __name__ == "__main__":
    unittest.main(verbosity=2)
