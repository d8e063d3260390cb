"""One hostile client cannot cut the API off (README "Security"): thousands of idle sockets
from one address are held to the per-client connection limit, and slowloris connections (a
byte every few hundred milliseconds, in the headers or in the body) are closed once their
request's deadline passes although every byte would reset an idle timeout. GET /healthz from
another address is measured while each attack runs and must keep answering within 100 ms.

Every attacking socket binds its own loopback address (127.0.0.2 ...), the test's own requests
come from 127.0.0.1, so the per-client limit applies to the attacker alone."""

import errno
import resource
import socket
import statistics
import time
import unittest

import cofitest
from cofitest import CofiCase

IDLE_SOCKETS = 4200       # more than the old fixed connection limit (4096)
SLOW_CONNECTIONS = 24     # below the per-client limit: only the deadline can end them
REQUEST_TIMEOUT_MS = 2000
HEALTHZ_FAST_S = 0.100    # the median /healthz under attack
HEALTHZ_MAX_S = 1.0       # every single /healthz under attack (a loaded 2-core machine, ASan)


def raise_fd_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def attacker_socket(source, port):
    """A non-blocking socket from `source` that started connecting to 127.0.0.1:port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((source, 0))
    rc = s.connect_ex(("127.0.0.1", port))
    if rc not in (0, errno.EINPROGRESS, errno.EAGAIN):
        s.close()
        return None
    return s


def closed_by_peer(s):
    """True when the server closed s (EOF or reset); False while it is open and silent."""
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b""


class HttpLimitsTest(CofiCase):

    @classmethod
    def prepare(cls):
        # Enough descriptors for the attack here, and for cofid (it inherits the limit).
        cls.fd_limit = raise_fd_limit(IDLE_SOCKETS + 2048)

    def healthz_latencies(self, port, n=10):
        out = []
        for _ in range(n):
            t0 = time.monotonic()
            r = cofitest.raw_http(port, "GET", "/healthz", timeout=5)
            out.append(time.monotonic() - t0)
            self.assertEqual(r.status, 200)
        return out

    def assert_fast(self, lat, what):
        cofitest.log("%s: /healthz median %.1f ms, max %.1f ms"
                     % (what, statistics.median(lat) * 1000, max(lat) * 1000))
        self.assertLess(statistics.median(lat), HEALTHZ_FAST_S, "%s: %s" % (what, lat))
        self.assertLess(max(lat), HEALTHZ_MAX_S, "%s: %s" % (what, lat))

    def test_idle_sockets_from_one_client_leave_healthz_answering(self):
        if self.fd_limit < IDLE_SOCKETS + 200:
            self.skipTest("RLIMIT_NOFILE %d is too low for %d sockets"
                          % (self.fd_limit, IDLE_SOCKETS))
        c = self.start_cofid(owner=self)  # the documented defaults
        socks = []
        try:
            for _ in range(IDLE_SOCKETS):
                s = attacker_socket("127.0.0.2", c.port)
                if s is not None:
                    socks.append(s)
            self.assertGreater(len(socks), IDLE_SOCKETS // 2)

            # While they are held: /healthz from another address answers at once.
            lat = []
            for _ in range(3):
                lat.extend(self.healthz_latencies(c.port, 5))
            self.assert_fast(lat, "%d idle sockets" % len(socks))

            # The server holds at most the per-client limit of them (64 by default).
            def settled():
                return sum(1 for s in socks if not closed_by_peer(s)) <= 64
            cofitest.poll(settled, 30, interval=0.2,
                          what="the server to close the attacker's sockets beyond 64")
        finally:
            for s in socks:
                s.close()
        self.assertEqual(cofitest.raw_http(c.port, "GET", "/healthz").status, 200)

    def test_per_client_limit_is_configured(self):
        c = self.start_cofid(owner=self, extra={"http": {"max_connections_per_client": 5}})
        socks = [attacker_socket("127.0.0.3", c.port) for _ in range(20)]
        try:
            def at_limit():
                return sum(1 for s in socks if s is not None and not closed_by_peer(s)) <= 5
            cofitest.poll(at_limit, 30, interval=0.1, what="at most 5 connections kept")
            self.assert_fast(self.healthz_latencies(c.port), "20 sockets, limit 5")
        finally:
            for s in socks:
                if s is not None:
                    s.close()

    def test_slowloris_is_closed_at_the_request_deadline(self):
        c = self.start_cofid(owner=self, extra={"http": {"request_timeout_ms": REQUEST_TIMEOUT_MS}})
        socks = []
        for i in range(SLOW_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", c.port), timeout=5,
                                         source_address=("127.0.0.4", 0))
            if i % 2 == 0:  # drips its headers
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            else:           # sends its headers, then drips its body
                s.sendall(b"POST /batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          b"\r\nContent-Length: 100000\r\n\r\n{\"files\": [")
            s.setblocking(False)
            socks.append(s)
        t0 = time.monotonic()
        open_ = set(range(SLOW_CONNECTIONS))
        lat = []
        try:
            # A byte every 200 ms on every connection still open, for up to 30 s.
            while open_ and time.monotonic() - t0 < 30:
                for i in list(open_):
                    if closed_by_peer(socks[i]):
                        open_.discard(i)
                        continue
                    try:
                        socks[i].send(b"X-Slow: a\r\n" if i % 2 == 0 else b"\"a\",")
                    except OSError:
                        open_.discard(i)
                lat.extend(self.healthz_latencies(c.port, 2))
                time.sleep(0.2)
            elapsed = time.monotonic() - t0
        finally:
            for s in socks:
                s.close()
        self.assertEqual(open_, set(), "slow connections still open after %.1f s" % elapsed)
        cofitest.log("%d slow connections closed after %.1f s (deadline %d ms)"
                     % (SLOW_CONNECTIONS, elapsed, REQUEST_TIMEOUT_MS))
        # Ended by the deadline, not by an idle timeout (30 s): well before that.
        self.assertLess(elapsed, REQUEST_TIMEOUT_MS / 1000.0 + 15)
        self.assert_fast(lat, "%d slowloris connections" % SLOW_CONNECTIONS)
        # A normal request on a fresh connection still works.
        self.assertEqual(cofitest.raw_http(c.port, "GET", "/healthz").status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
