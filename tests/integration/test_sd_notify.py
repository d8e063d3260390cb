"""cofid speaks systemd's notify protocol (packaging/cofid.service has Type=notify): with
NOTIFY_SOCKET set it sends READY=1 once its migrations are applied and it listens, and
STOPPING=1 when SIGTERM starts the drain. Here a test plays systemd: a unix datagram socket
(an abstract '@' name, as systemd uses, and a path) and cofid started with it."""

import os
import socket
import time
import unittest

from cofitest import CofiCase, raw_http, scaled


class SdNotifyTest(CofiCase):

    def listen(self, name):
        """A datagram socket bound to name ('@x': abstract); closed at the end of the test."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.bind("\0" + name[1:] if name.startswith("@") else name)
        return s

    def receive(self, s, what, timeout=20.0):
        """The datagrams received until one holds the line `what`, with a deadline."""
        seen = []
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                msg = s.recv(4096).decode()
            except socket.timeout:
                break
            seen.append(msg)
            if what in msg.split("\n"):
                return seen
        self.fail("no %s within %.0f s; got %r" % (what, scaled(timeout), seen))

    def run_cofid_with(self, notify_socket, s):
        c = self.start_cofid(owner=self, env={"NOTIFY_SOCKET": notify_socket})
        seen = self.receive(s, "READY=1")
        # READY=1 comes once migrated and listening: the service answers at once.
        self.assertEqual(raw_http(c.port, "GET", "/readyz").status, 200)
        ready = seen[-1].split("\n")
        self.assertIn("MAINPID=%d" % c.pid, ready)
        self.assertTrue(any(line.startswith("STATUS=ready") for line in ready), ready)
        c.stop()
        self.receive(s, "STOPPING=1")

    def test_ready_and_stopping_on_an_abstract_socket(self):
        name = "@cofi-test-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
        self.run_cofid_with(name, self.listen(name))

    def test_ready_and_stopping_on_a_path(self):
        path = os.path.join(self.workdir, "notify.sock")
        self.run_cofid_with(path, self.listen(path))


if __name__ == "__main__":
    unittest.main(verbosity=2)
