"""cofi, the command-line client, run as a process against cofid and cofi-sim the way an
operator would: submit a folder with --run and watch it to its end (exit code by final
state), ls/show, pause/resume/cancel/retry, --json that parses, the token taken from
COFI_TOKEN, problems as one line on stderr, a bad command line as usage error 64."""

import json
import os
import shlex
import shutil
import subprocess
import unittest

import cofitest
from cofitest import CofiCase, scaled

WRITE = "cli-ops-secret"
READ = "cli-dash-secret"
LATENCY = {"upload": 5, "denoise": 5, "ivr": 5, "lid": 5, "stt": 5, "llm1": 5, "llm2": 5}
COMMANDS = ["submit", "watch", "ls", "show", "run", "cancel", "pause", "resume", "retry",
            "results"]


class CliTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.cli_path = cofitest.require_env("COFI_CLI")
        cls.sim = cls.start_sim(nodes=2, node_capacity=2, nlp_capacity=20, latency=LATENCY)
        cls.start_cofid(sim=cls.sim, llm_concurrency=4,
                        auth_tokens={"COFI_TOKEN_OPS": (WRITE, "write"),
                                     "COFI_TOKEN_DASH": (READ, "read")})

    # --- helpers

    def cli(self, *args, token=WRITE, url=True, timeout=60.0):
        """Runs cofi with args; COFI_URL points at our cofid, COFI_TOKEN is token (None: unset).
        Returns the CompletedProcess (text)."""
        env = {k: v for k, v in os.environ.items() if k not in ("COFI_URL", "COFI_TOKEN")}
        if url:
            env["COFI_URL"] = self.cofid.base_url
        if token is not None:
            env["COFI_TOKEN"] = token
        return subprocess.run([self.cli_path] + [str(a) for a in args], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=scaled(timeout))

    def watch(self, batch_id, *extra, timeout=90.0):
        """cofi watch ID; on a timeout, fails with what the API and the database say."""
        try:
            return self.cli("watch", batch_id, "--interval", "100", *extra, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            self.fail("cofi watch %d did not end: last output %r; batch %s; calls not final %s"
                      % (batch_id, (e.stdout or b"")[-400:], self.api("GET", "/batches/%d"
                                                                       % batch_id).json,
                         self.db("SELECT id, stage, status, lease_owner FROM calls WHERE "
                                 "batch_id = %d AND status IN ('pending', 'running')"
                                 % batch_id)))

    def ok(self, *args, **kw):
        p = self.cli(*args, **kw)
        self.assertEqual(p.returncode, 0, "cofi %s: %s%s" % (args, p.stdout, p.stderr))
        return p

    def ok_json(self, *args, **kw):
        p = self.ok(*(list(args) + ["--json"]), **kw)
        return json.loads(p.stdout)

    def api(self, method, path, body=None):
        return self.http(method, path, body=body,
                         headers={"Authorization": "Bearer " + WRITE})

    def assert_one_line_problem(self, p, status):
        self.assertEqual(p.returncode, 1, p)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn("HTTP %d" % status, lines[0])

    def folder(self, n, tag):
        return cofitest.make_files(self.input_root, n, prefix=tag, subdir=tag)

    # --- the command line itself

    def test_help_everywhere(self):
        p = self.ok("--help", token=None, url=False)
        for c in COMMANDS:
            self.assertIn(c, p.stdout)
        for c in COMMANDS:
            with self.subTest(command=c):
                p = self.ok(c, "--help", token=None, url=False)
                self.assertTrue(p.stdout.startswith("Usage: cofi %s" % c), p.stdout)

    def test_bad_command_lines_are_usage_errors(self):
        for args in (["frobnicate"], [], ["ls", "--bogus"], ["show"], ["show", "abc"],
                     ["ls", "--limit", "0"], ["submit"], ["submit", "x", "--mode", "staged"],
                     ["retry", "1", "2"], ["ls", "--run"], ["watch", "1", "--interval", "x"]):
            with self.subTest(args=args):
                p = self.cli(*args)
                self.assertEqual(p.returncode, 64, p)
                self.assertIn("cofi:", p.stderr)
                self.assertIn("--help", p.stderr)
                self.assertEqual(p.stdout, "")
        d = os.path.join(self.workdir, "outside")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "a.wav"), "wb") as f:
            f.write(b"RIFF")
        p = self.cli("submit", "--root", self.input_root, d)
        self.assertEqual(p.returncode, 64, p)
        self.assertIn("not under --root", p.stderr)
        p = self.cli("submit", "--metadata", "[1]", os.path.join(d, "a.wav"))
        self.assertEqual(p.returncode, 64, p)
        self.assertIn("--metadata", p.stderr)

    def test_unreachable_server_is_an_error(self):
        p = self.cli("ls", "--url", "http://127.0.0.1:%d" % cofitest.free_port())
        self.assertEqual(p.returncode, 1, p)
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)

    # --- auth

    def test_token_from_the_environment(self):
        self.assert_one_line_problem(self.cli("ls", token=None), 401)
        self.assert_one_line_problem(self.cli("ls", token="wrong"), 401)
        page = self.ok_json("ls", token=READ)
        self.assertIn("batches", page)
        self.folder(2, "ro")
        p = self.cli("submit", "--root", self.input_root, os.path.join(self.input_root, "ro"),
                     token=READ)
        self.assert_one_line_problem(p, 403)

    # --- submit and watch

    def test_submit_folder_run_and_watch_to_completed(self):
        files = self.folder(8, "fold")
        b = self.ok_json("submit", "--root", self.input_root, "--name", "cli-folder", "--run",
                         "--mode", "pipelined", os.path.join(self.input_root, "fold"))
        self.assertEqual(b["file_count"], 8)
        self.assertEqual(b["name"], "cli-folder")
        self.assertIn(b["state"], ("running", "completed"))
        submitted = sorted(c["file"] for c in self.list_all_calls_auth(b["id"]))
        self.assertEqual(submitted, sorted(files))

        p = self.watch(b["id"])
        self.assertEqual(p.returncode, 0, p)
        self.assertNotIn("\x1b[", p.stdout)  # not a terminal: plain lines, no bars
        lines = p.stdout.strip().splitlines()
        self.assertEqual(lines[-1], "batch %d ended completed" % b["id"])
        self.assertIn("llm2 8/8", lines[-2])
        self.assertIn("eta", lines[-2])

        p = self.ok("show", b["id"])
        self.assertIn("state completed", p.stdout)
        self.assertIn("llm2", p.stdout)
        shown = self.ok_json("show", b["id"])
        self.assertEqual(shown["state"], "completed")
        final = self.ok_json("watch", b["id"])  # already ended: one snapshot, exit 0
        self.assertEqual(final["id"], b["id"])

        call = self.list_all_calls_auth(b["id"])[0]
        detail = self.ok_json("show", b["id"], call["id"])
        stt = [s for s in detail["stages"] if s["name"] == "stt"][0]
        self.assertIsInstance(stt["result"]["transcript"], str)
        p = self.ok("show", b["id"], call["id"])
        self.assertIn("transcript", p.stdout)

    def test_submit_paths_as_given_with_options(self):
        files = self.folder(3, "given")
        body = self.ok_json("submit", "--idempotency-key", "cli-key-1", "--priority", "4",
                            "--metadata", '{"team": "ops", "n": 2}', *files)
        self.assertEqual(body["priority"], 4)
        self.assertEqual(body["metadata"], {"team": "ops", "n": 2})
        self.assertEqual(body["state"], "created")
        again = self.ok_json("submit", "--idempotency-key", "cli-key-1", "--priority", "4",
                             "--metadata", '{"team": "ops", "n": 2}', *files)
        self.assertEqual(again["id"], body["id"])
        p = self.cli("submit", "--idempotency-key", "cli-key-1", files[0])
        self.assert_one_line_problem(p, 409)
        p = self.ok("submit", files[0])
        self.assertRegex(p.stdout, r"^batch \d+ created: 1 files\n$")
        p = self.cli("submit", "given/no-such-file.wav")
        self.assert_one_line_problem(p, 422)

    def test_watch_draws_bars_on_a_terminal(self):
        if shutil.which("script") is None:
            self.skipTest("script(1) from util-linux is needed to give cofi a terminal")
        files = self.folder(4, "tty")
        b = self.ok_json("submit", "--run", *files)
        env = dict(os.environ, COFI_URL=self.cofid.base_url, COFI_TOKEN=WRITE)
        cmd = "%s watch %d --interval 100" % (shlex.quote(self.cli_path), b["id"])
        p = subprocess.run(["script", "-qfec", cmd, "/dev/null"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=scaled(90))
        self.assertEqual(p.returncode, 0, p)
        self.assertIn("\x1b[2K", p.stdout)  # lines redrawn in place
        self.assertIn("[%s] 100%%" % ("#" * 30), p.stdout)
        self.assertIn("batch %d ended completed" % b["id"], p.stdout)

    # --- ls and show

    def test_ls_and_show(self):
        files = self.folder(2, "lsb")
        b = self.ok_json("submit", "--name", "listed", *files)
        page = self.ok_json("ls", "--state", "created", "--limit", "1000")
        self.assertIn(b["id"], [x["id"] for x in page["batches"]])
        self.assertTrue(all(x["state"] == "created" for x in page["batches"]))
        one = self.ok_json("ls", "--limit", "1")
        self.assertEqual(len(one["batches"]), 1)
        p = self.ok("ls", "--state", "created")
        self.assertTrue(p.stdout.startswith("ID "), p.stdout)
        self.assertIn("listed", p.stdout)
        self.assert_one_line_problem(self.cli("show", "999999"), 404)
        self.assert_one_line_problem(self.cli("show", b["id"], "999999999"), 404)

    # --- operations

    def test_pause_resume_cancel_and_watch_says_cancelled(self):
        self.folder(60, "ops")
        b = self.ok_json("submit", "--root", self.input_root, "--run",
                         os.path.join(self.input_root, "ops"))
        bid = b["id"]
        paused = self.ok_json("pause", bid)
        self.assertEqual(paused["state"], "paused")
        self.assert_one_line_problem(self.cli("pause", bid), 409)
        p = self.ok("resume", bid)
        self.assertEqual(p.stdout, "batch %d: running\n" % bid)
        cancelled = self.ok_json("cancel", bid)
        self.assertEqual(cancelled["state"], "cancelled")
        p = self.watch(bid)
        self.assertEqual(p.returncode, 3, p)
        self.assertTrue(p.stdout.strip().endswith("ended cancelled"), p.stdout)
        self.assert_one_line_problem(self.cli("run", bid), 409)

    def test_retry_after_completed_with_errors(self):
        files = self.folder(6, "retry")
        b = self.ok_json("submit", *files)
        calls = sorted(self.list_all_calls_auth(b["id"]), key=lambda c: c["seq"])
        failing = [calls[1]["id"], calls[3]["id"]]
        self.sim.rules_all_nodes([{"endpoint": "ivr", "call_ids": failing, "status": 400}])
        try:
            self.ok("run", b["id"])
            p = self.watch(b["id"])
            self.assertEqual(p.returncode, 2, p)
            self.assertIn("ended completed_with_errors", p.stdout)
        finally:
            for i in range(self.sim.nodes):
                self.sim.clear_rules(self.sim.node_port(i))
        self.assert_one_line_problem(self.cli("retry", b["id"], "--stages", "llm1"), 422)
        r = self.ok_json("retry", b["id"], "--stages", "ivr", "--calls", failing[0])
        self.assertEqual(r["state"], "running")
        p = self.watch(b["id"])
        self.assertEqual(p.returncode, 2, p)
        p = self.ok("retry", b["id"])
        self.assertEqual(p.stdout, "batch %d: running\n" % b["id"])
        p = self.watch(b["id"])
        self.assertEqual(p.returncode, 0, p)

    # --- results

    def test_results_passthrough(self):
        files = self.folder(3, "res")
        b = self.ok_json("submit", "--run", *files)
        self.assertEqual(self.watch(b["id"])
                         .returncode, 0)
        probe = self.api("GET", "/batches/%d/results" % b["id"])
        if probe.status == 404:
            self.skipTest("GET /batches/{id}/results is not served by this cofid yet")
        p = self.ok("results", b["id"])
        rows = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
        self.assertEqual(len(rows), 3)
        p = self.ok("results", "--csv", b["id"])
        self.assertGreaterEqual(len(p.stdout.strip().splitlines()), 4)  # a header and 3 rows
        self.assert_one_line_problem(self.cli("results", "999999"), 404)

    # --- helpers that need the token

    def list_all_calls_auth(self, batch_id):
        calls, cursor = [], None
        while True:
            q = "?limit=1000" + ("&cursor=" + cursor if cursor else "")
            r = self.api("GET", "/batches/%d/calls%s" % (batch_id, q))
            self.assertStatus(r, 200)
            calls += r.json["calls"]
            cursor = r.json["next_cursor"]
            if not cursor:
                return calls


if __name__ == "__main__":
    unittest.main(verbosity=2)
