"""The audit trail (README "Security"): every write, answered or refused, leaves one log line
with who made it (the environment variable of the token used, never the token itself), what
it was (the request line, its status and the resource it made) and from which address;
reads leave none."""

import re
import unittest

import cofitest
from cofitest import CofiCase, scaled


class AuditLogTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 2, prefix="audit")
        cls.start_cofid(auth_tokens={"COFI_TOKEN_OPS": ("ops-audit-secret", "write"),
                                     "COFI_TOKEN_DASH": ("dash-audit-secret", "read")})

    def audit_lines(self):
        with open(self.cofid.log_path, encoding="utf-8", errors="replace") as f:
            return [line for line in f if " audit: " in line]

    def wait_audit(self, pattern):
        return cofitest.poll(lambda: [l for l in self.audit_lines() if re.search(pattern, l)],
                             scaled(10), what="an audit line matching %r" % pattern)

    def test_writes_are_audited(self):
        ops = {"Authorization": "Bearer ops-audit-secret"}
        dash = {"Authorization": "Bearer dash-audit-secret"}
        b = self.create_batch(self.files, headers=ops)
        bid = b["id"]
        self.wait_audit(r"audit: POST /batches by COFI_TOKEN_OPS from 127\.0\.0\.1: 201 "
                        r"/batches/%d\b" % bid)
        self.assertStatus(self.http("POST", "/batches/%d/cancel" % bid, headers=ops), 202)
        self.wait_audit(r"audit: POST /batches/%d/cancel by COFI_TOKEN_OPS from 127\.0\.0\.1: "
                        r"202" % bid)
        # Refused writes too: a read token (403) and no token (401).
        self.assertProblem(self.http("POST", "/batches/%d/run" % bid, headers=dash), 403)
        self.wait_audit(r"audit: POST /batches/%d/run by COFI_TOKEN_DASH from 127\.0\.0\.1: 403"
                        % bid)
        self.assertProblem(self.http("POST", "/batches", body={"files": self.files}), 401)
        self.wait_audit(r"audit: POST /batches by unauthenticated from 127\.0\.0\.1: 401")
        # Reads are not audited; no token ever reaches the log.
        n = len(self.audit_lines())
        self.assertStatus(self.http("GET", "/batches/%d" % bid, headers=dash), 200)
        self.assertStatus(self.http("POST", "/batches/%d/cancel" % bid, headers=ops), 202)
        # The second cancel's own line: the first cancel's line matches the pattern too.
        cofitest.poll(lambda: len(self.audit_lines()) > n, scaled(10),
                      what="the second cancel's audit line")
        lines = self.audit_lines()
        self.assertEqual(len(lines), n + 1, lines[n:])
        self.assertRegex(lines[n], r"audit: POST /batches/%d/cancel .*202" % bid)
        with open(self.cofid.log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        self.assertNotIn("ops-audit-secret", log)
        self.assertNotIn("dash-audit-secret", log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
