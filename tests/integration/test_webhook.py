"""Completion webhooks (README "Webhooks"): a batch with a callback_url is POSTed as its final
batch object when it ends, signed with HMAC-SHA256 (X-Cofi-Signature over
"<X-Cofi-Timestamp>.<body>"), retried with back-off until the receiver answers 2xx, and never
lost: the delivery is queued by the statement that ends the batch, so a kill -9 while the
receiver is down still delivers after the restart. The receiver here is a Python HTTP server
that checks every signature with the secret."""

import hashlib
import hmac
import http.server
import json
import threading
import time
import unittest

import cofitest
from cofitest import CofiCase

SECRET = "whsec-test-7f3a9c"
SECRET_ENV = "COFI_TEST_WEBHOOK_SECRET"
LATENCY = {"upload": 2, "denoise": 2, "ivr": 2, "lid": 2, "stt": 2, "llm1": 2, "llm2": 2}


class Receiver:
    """An HTTP server on a fixed loopback port that records every POST and answers with the
    next status of its script (200 once the script is used up). stop() closes the port (the
    sender then gets "connection refused"); start() opens it again."""

    def __init__(self):
        self.port = cofitest.free_port()
        self.lock = threading.Lock()
        self.requests = []  # (path, headers dict, body bytes, status answered or None)
        self.script = []
        self.hang = False  # take requests and answer none until release is set
        self.release = threading.Event()
        self.server = None
        self.thread = None

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with receiver.lock:
                    hang = receiver.hang
                    status = None if hang else (receiver.script.pop(0) if receiver.script
                                                else 200)
                    receiver.requests.append((self.path, dict(self.headers.items()), body,
                                              status))
                if hang:
                    receiver.release.wait(60)
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)
            self.server = None

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def received(self, path):
        """[(headers, body, status)] of the requests to path, oldest first."""
        with self.lock:
            return [(h, b, s) for (p, h, b, s) in self.requests if p == path]


class WebhookTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.files = cofitest.make_files(cls.input_root, 3, prefix="wh", subdir="wh")
        cls.start_sim(nodes=1, node_capacity=4, nlp_capacity=10, latency=LATENCY, seed=5)
        cls.receiver = Receiver()
        cls.receiver.start()
        cls.addClassCleanup(cls.receiver.stop)
        cls.start_cofid(sim=cls.sim, **cls.cofid_args())

    @classmethod
    def cofid_args(cls):
        return {"extra": {"webhook_secret_env": SECRET_ENV}, "env": {SECRET_ENV: SECRET}}

    # --- helpers

    def batch_with_callback(self, path, run=True, headers=None):
        body = {"files": self.files, "name": "webhook" + path.replace("/", "-"),
                "callback_url": self.receiver.url(path)}
        r = self.http("POST", "/batches", body=body, headers=headers)
        self.assertStatus(r, 201, "POST /batches with a callback_url")
        b = r.json
        self.assertEqual(b["callback"]["url"], self.receiver.url(path))
        self.assertEqual(b["callback"]["state"], "waiting")
        if run:
            self.run_batch(b["id"])
        return b

    def check_signed(self, headers, body):
        """The request is signed with SECRET as documented; returns the parsed body."""
        self.assertEqual(headers.get("Content-Type"), "application/json")
        ts = headers.get("X-Cofi-Timestamp")
        self.assertRegex(ts or "", r"^[0-9]+$")
        self.assertLess(abs(int(ts) - time.time()), 300, "X-Cofi-Timestamp is now")
        want = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        self.assertEqual(headers.get("X-Cofi-Signature"), "sha256=" + want)
        self.assertRegex(headers.get("X-Cofi-Delivery") or "",
                         r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        obj = json.loads(body)
        cofitest.spec_from(self.cofid.port).validate_schema("/components/schemas/Batch", obj,
                                                            "the webhook's body")
        return obj

    def wait_accepted(self, path, timeout):
        def accepted():
            got = self.receiver.received(path)
            return got if any(s == 200 for (_, _, s) in got) else None
        return cofitest.poll(accepted, timeout, interval=0.05, what="a 200 delivery to " + path)

    def wait_delivered(self, bid):
        """The batch object once it shows its delivery as delivered."""
        def delivered():
            b = self.get_batch(bid)
            return b if b["callback"]["state"] == "delivered" else None
        return cofitest.poll(delivered, cofitest.scaled(10), interval=0.05,
                             what="batch %d's callback to be delivered" % bid)

    # --- the tests

    def test_retried_until_2xx_then_delivered_once(self):
        path = "/retried"
        with self.receiver.lock:
            self.receiver.script = [500, 500]
        b = self.batch_with_callback(path)
        final = self.wait_batch_final(b["id"], timeout=cofitest.scaled(60))
        got = self.wait_accepted(path, cofitest.scaled(30))
        self.assertEqual([s for (_, _, s) in got], [500, 500, 200])
        ids = {h["X-Cofi-Delivery"] for (h, _, _) in got}
        self.assertEqual(len(ids), 1, "every attempt carries the same X-Cofi-Delivery")
        bodies = {bytes(body) for (_, body, _) in got}
        self.assertEqual(len(bodies), 1, "every attempt sends the same bytes")
        for (h, body, _) in got:
            sent = self.check_signed(h, body)
        self.assertEqual(sent["id"], b["id"])
        self.assertEqual(sent["state"], "completed")
        self.assertIsNotNone(sent["finished_at"])
        # The final batch object: GET /batches/{id} shows the same, but for the delivery.
        now = self.wait_delivered(b["id"])
        for k in final:
            if k != "callback":
                self.assertEqual(sent[k], now[k], "member %s of the webhook's body" % k)
        cb = now["callback"]
        self.assertEqual((cb["attempts"], cb["last_status"], cb["last_error"]), (3, 200, None))
        self.assertEqual(cb["id"], ids.pop())
        self.assertIsNotNone(cb["delivered_at"])
        self.assertIsNone(cb["next_attempt_at"])
        # Nothing more will be sent: the one delivery is marked delivered and holds no lease.
        self.assertEqual(self.db("SELECT count(*), count(delivered_at), count(lease_owner) "
                                 "FROM webhook_deliveries WHERE batch_id = %d" % b["id"]),
                         [("1", "1", "0")])

    def test_cancelled_batch_triggers_its_callback(self):
        path = "/cancelled"
        b = self.batch_with_callback(path, run=False)
        r = self.http("POST", "/batches/%d/cancel" % b["id"])
        self.assertStatus(r, 202)
        self.assertEqual(r.json["state"], "cancelled")
        got = self.wait_accepted(path, cofitest.scaled(20))
        self.assertEqual(len(got), 1)
        sent = self.check_signed(got[0][0], got[0][1])
        self.assertEqual((sent["id"], sent["state"]), (b["id"], "cancelled"))
        self.assertIsNotNone(sent["finished_at"])
        self.assertEqual(self.wait_delivered(b["id"])["callback"]["attempts"], 1)

    def test_bad_callback_url_is_refused_and_nothing_created(self):
        before = self.db("SELECT count(*), coalesce(max(id), 0) FROM batches")
        bad = ["ftp://127.0.0.1/x", "relative/path", "http://", "http:///path",
               "http://user:pw@127.0.0.1/", "http://127.0.0.1/#frag", "http://a b/",
               "http://127.0.0.1:0/", "http://127.0.0.1:99999/", "http://127.0.0.1:80x/",
               "javascript:alert(1)", "http://127.0.0.1/" + "a" * 2100, ""]
        for url in bad:
            r = self.http("POST", "/batches", body={"files": self.files, "callback_url": url})
            self.assertProblem(r, 422, "callback_url %r" % url[:60])
            self.assertIn("callback_url", r.json["detail"])
        for v in (12, ["http://127.0.0.1/"], {"url": "http://127.0.0.1/"}, True):
            r = self.http("POST", "/batches", body={"files": self.files, "callback_url": v})
            self.assertProblem(r, 400, "callback_url %r" % (v,))
        self.assertEqual(self.db("SELECT count(*), coalesce(max(id), 0) FROM batches"), before)
        # Accepted forms: https, a port, a query, an IPv6 literal, and null (no callback).
        for url in ("https://hooks.example.com/cofi?team=a&x=1", "http://[::1]:8080/h",
                    "HTTP://LOCALHOST/"):
            r = self.http("POST", "/batches", body={"files": self.files, "callback_url": url})
            self.assertStatus(r, 201, url)
            self.assertEqual(r.json["callback"]["url"], url)
        r = self.http("POST", "/batches", body={"files": self.files, "callback_url": None})
        self.assertStatus(r, 201)
        self.assertIsNone(r.json["callback"])

    def test_callback_url_is_part_of_the_idempotent_request(self):
        key = {"Idempotency-Key": "webhook-idem-1"}
        body = {"files": self.files, "callback_url": self.receiver.url("/idem-a")}
        r = self.http("POST", "/batches", body=body, headers=key)
        self.assertStatus(r, 201)
        bid = r.json["id"]
        r = self.http("POST", "/batches", body=body, headers=key)
        self.assertStatus(r, 200)
        self.assertEqual(r.json["id"], bid)
        other = dict(body, callback_url=self.receiver.url("/idem-b"))
        self.assertProblem(self.http("POST", "/batches", body=other, headers=key), 409)
        without = {"files": self.files}
        self.assertProblem(self.http("POST", "/batches", body=without, headers=key), 409)

    def test_without_a_secret_callback_url_is_refused(self):
        plain = self.start_cofid(sim=self.sim, owner=self, primary=False)
        r = self.http("POST", "/batches", cofid=plain,
                      body={"files": self.files, "callback_url": self.receiver.url("/none")})
        self.assertProblem(r, 422)
        self.assertIn("webhook_secret_env", r.json["detail"])

    def test_delivery_survives_kill_9_while_the_receiver_is_down(self):
        path = "/after-restart"
        # One instance only, so the delivery that arrives is the restarted one's.
        self.cofid.stop()
        self.addCleanup(self.restart_primary)
        first = self.start_cofid(sim=self.sim, owner=self, **self.cofid_args())
        self.receiver.stop()
        try:
            r = self.http("POST", "/batches",
                          body={"files": self.files, "callback_url": self.receiver.url(path)})
            self.assertStatus(r, 201)
            bid = r.json["id"]
            self.run_batch(bid)
            self.wait_batch_final(bid, timeout=cofitest.scaled(60))

            def refused():
                rows = self.db("SELECT attempts, last_error FROM webhook_deliveries "
                               "WHERE batch_id = %d" % bid)
                return rows if rows and int(rows[0][0]) >= 1 else None
            rows = cofitest.poll(refused, cofitest.scaled(20), interval=0.05,
                                 what="a refused attempt of batch %d's delivery" % bid)
            self.assertIsNotNone(rows[0][1], "the refused attempt's error is recorded")
            first.kill9()
        finally:
            self.receiver.start()
        self.assertEqual(self.receiver.received(path), [])
        self.start_cofid(sim=self.sim, owner=self, port=first.port, **self.cofid_args())
        got = self.wait_accepted(path, cofitest.scaled(30))
        self.assertEqual([s for (_, _, s) in got], [200])
        sent = self.check_signed(got[0][0], got[0][1])
        self.assertEqual((sent["id"], sent["state"]), (bid, "completed"))
        cb = self.wait_delivered(bid)["callback"]
        self.assertGreaterEqual(cb["attempts"], 2)
        self.assertEqual(cb["id"], got[0][0]["X-Cofi-Delivery"])

    def test_kill_9_mid_attempt_then_restart_sends_it_again(self):
        """An instance killed while its attempt hangs: restarted under the same id it takes its
        lease back at once (no 60 s wait) and sends the delivery again, with the same
        X-Cofi-Delivery, so the receiver can tell it is the same one."""
        path = "/mid-attempt"
        self.cofid.stop()
        self.addCleanup(self.restart_primary)
        first = self.start_cofid(sim=self.sim, owner=self, **self.cofid_args())
        with self.receiver.lock:
            self.receiver.hang = True
        self.receiver.release.clear()
        try:
            b = self.batch_with_callback(path, run=False)
            self.assertStatus(self.http("POST", "/batches/%d/cancel" % b["id"]), 202)
            cofitest.poll(lambda: self.receiver.received(path), cofitest.scaled(20),
                          what="the attempt to reach the receiver")
            self.assertEqual(self.db("SELECT lease_owner, attempts FROM webhook_deliveries "
                                     "WHERE batch_id = %d" % b["id"]),
                             [(first.instance_id, "0")])
            first.kill9()
        finally:
            with self.receiver.lock:
                self.receiver.hang = False
            self.receiver.release.set()
        t0 = time.monotonic()
        self.start_cofid(sim=self.sim, owner=self, port=first.port, **self.cofid_args())
        got = self.wait_accepted(path, cofitest.scaled(20))
        self.assertLess(time.monotonic() - t0, 50, "sent again before the 60 s lease ran out")
        self.assertEqual([s for (_, _, s) in got], [None, 200])
        self.assertEqual(got[0][0]["X-Cofi-Delivery"], got[1][0]["X-Cofi-Delivery"])
        self.assertEqual(got[0][1], got[1][1], "the same body both times")
        sent = self.check_signed(got[1][0], got[1][1])
        self.assertEqual((sent["id"], sent["state"]), (b["id"], "cancelled"))

    def test_two_instances_send_each_delivery_once(self):
        second = self.start_cofid(sim=self.sim, owner=self, primary=False, **self.cofid_args())
        paths = ["/two-%d" % i for i in range(8)]
        for i, path in enumerate(paths):
            b = self.batch_with_callback(path, run=False)
            via = self.cofid if i % 2 == 0 else second
            self.assertStatus(self.http("POST", "/batches/%d/cancel" % b["id"], cofid=via), 202)
        for path in paths:
            self.wait_accepted(path, cofitest.scaled(20))
        ids = set(r[0] for r in self.db("SELECT batch_id FROM webhook_deliveries d JOIN batches b "
                                       "ON b.id = d.batch_id WHERE b.callback_url LIKE '%/two-%' "
                                       "AND d.delivered_at IS NOT NULL"))
        self.assertEqual(len(ids), len(paths))
        # Delivered, and with no live lease left: no instance will send any of them again.
        self.assertEqual(self.db("SELECT count(*) FROM webhook_deliveries WHERE url LIKE "
                                 "'%/two-%' AND (lease_owner IS NOT NULL OR attempts <> 1)"),
                         [("0",)])
        for path in paths:
            self.assertEqual(len(self.receiver.received(path)), 1, path)

    @classmethod
    def restart_primary(cls):
        """A primary cofid for the tests that follow (this test stopped the class's)."""
        cls.start_cofid(sim=cls.sim, **cls.cofid_args())


if __name__ == "__main__":
    unittest.main(verbosity=2)
