"""The live dashboard at / (and /ui), loaded in headless Chromium against a cofid with auth on
and a running batch: the page is served without a token and holds no data; given a token in the
URL fragment it shows the batch (name, per-stage counts, its buttons, enabled only for a write
token), each node's in-flight count against its capacity, the NLP API's limit, and one call's
stage results; without a token it says it needs one. Chromium runs with --dump-dom (the DOM once
the page's polls ran for a few seconds of virtual time) and, for the buttons, is driven over the
DevTools protocol (tests/integration/cdp.py).

With COFI_DASHBOARD_SCREENSHOT=path the test also saves a screenshot of the page there (how
docs/dashboard.png was made)."""

import base64
import html.parser
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import cdp
import cofitest
from cofitest import CofiCase, scaled

# Slow enough that the batch runs for half a minute: 2 nodes of capacity 2, 300 ms a stage.
LATENCY = {"upload": 300, "denoise": 300, "ivr": 300, "lid": 300, "stt": 300, "llm1": 300,
           "llm2": 300}
FILES = 80
NLP_LIMIT = 5
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium is not installed (scripts/deps.sh installs it)")


def chromium_argv():
    """The flags of every headless Chromium these tests start: no sandbox (root in CI), no GPU,
    nothing fetched from the network but the page (each also gets a throw-away profile)."""
    return [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync"]


def chromium(url, budget_ms=4000, screenshot=None):
    """Loads url, lets the page run for budget_ms of virtual time and returns the DOM as HTML
    (or saves a screenshot)."""
    profile = tempfile.mkdtemp(prefix="cofi-chromium-")
    try:
        argv = chromium_argv() + ["--user-data-dir=" + profile,
                                  "--virtual-time-budget=%d" % budget_ms]
        if screenshot:
            argv += ["--hide-scrollbars", "--window-size=1400,1050",
                     "--screenshot=" + screenshot]
        else:
            argv += ["--dump-dom"]
        p = subprocess.run(argv + [url], capture_output=True, timeout=scaled(90))
        if p.returncode != 0:
            raise AssertionError("chromium exited with %d: %s"
                                 % (p.returncode, p.stderr.decode(errors="replace")[-2000:]))
        return p.stdout.decode("utf-8")
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Node:
    """An element of a parsed page: tag, attrs (dict), children (Nodes and strings)."""

    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag=None, **attrs):
        """Every descendant with that tag (any when None) and those attribute values (True:
        present with any value); attribute names with '_' for '-'."""
        out = []
        for c in self.children:
            if isinstance(c, str):
                continue
            ok = tag is None or c.tag == tag
            for k, v in attrs.items():
                have = c.attrs.get(k.replace("_", "-"))
                ok = ok and (have is not None if v is True else have == v)
            if ok:
                out.append(c)
            out.extend(c.all(tag, **attrs))
        return out

    def one(self, tag=None, **attrs):
        found = self.all(tag, **attrs)
        if len(found) != 1:
            raise AssertionError("expected one <%s %s>, found %d" % (tag, attrs, len(found)))
        return found[0]


class _Builder(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(page):
    b = _Builder()
    b.feed(page)
    return b.root


class DashboardTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.write_token = "w-" + cofitest.secrets.token_hex(16)
        cls.read_token = "r-" + cofitest.secrets.token_hex(16)
        cls.sim = cls.start_sim(nodes=2, node_capacity=2, nlp_capacity=4, latency=LATENCY,
                                seed=3)
        cls.start_cofid(sim=cls.sim, llm_concurrency=NLP_LIMIT,
                        auth_tokens={"COFI_TOKEN_OPS": (cls.write_token, "write"),
                                     "COFI_TOKEN_DASH": (cls.read_token, "read")})
        cls.name = "dash <b>&amp;</b> " + cofitest.secrets.token_hex(4)
        files = cofitest.make_files(cls.input_root, FILES, prefix="dash", subdir="dash")
        w = cls.auth(cls.write_token)
        r = cls.cofid.http("POST", "/batches", body={"files": files, "name": cls.name}, headers=w)
        assert r.status == 201, r
        cls.batch_id = r.json["id"]
        # The batch's first call fails at llm1 (a permanent 400 from the NLP API).
        r = cls.cofid.http("GET", "/batches/%d/calls?limit=1" % cls.batch_id, headers=w)
        cls.failing_call = r.json["calls"][0]["id"]
        cls.sim.rules(cls.sim.nlp_port, [{"endpoint": "llm1", "call_ids": [cls.failing_call],
                                          "status": 400}])
        r = cls.cofid.http("POST", "/batches/%d/run" % cls.batch_id, headers=w)
        assert r.status == 202, r

    @staticmethod
    def auth(token):
        return {"Authorization": "Bearer " + token}

    def url(self, fragment=""):
        return "http://127.0.0.1:%d/%s" % (self.cofid.port, "#" + fragment if fragment else "")

    def batch(self):
        return self.http("GET", "/batches/%d" % self.batch_id,
                         headers=self.auth(self.read_token)).json

    def load(self, fragment, ready, what):
        """Loads the page until ready(dom) is true (each load a fresh Chromium, the page
        polling for a few seconds); returns that dom."""
        last = [None]

        def attempt():
            dom = parse(chromium(self.url(fragment)))
            last[0] = dom
            return dom if ready(dom) else None
        try:
            return cofitest.poll(attempt, scaled(90), interval=0.2, what=what)
        except AssertionError:
            if last[0] is not None:
                cofitest.log("last page: %s" % last[0].text()[:3000])
            raise

    def batch_row(self, dom):
        rows = dom.all("tr", data_batch=str(self.batch_id))
        return rows[0] if rows else None

    def test_page_is_served_without_a_token_and_holds_no_data(self):
        r = cofitest.raw_http(self.cofid.port, "GET", "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("Content-Type"), "text/html; charset=utf-8")
        csp = r.headers.get("Content-Security-Policy") or ""
        self.assertIn("default-src 'none'", csp)
        self.assertIn("connect-src 'self'", csp)
        self.assertEqual(r.headers.get("X-Content-Type-Options"), "nosniff")
        page = r.raw.decode("utf-8")
        self.assertNotIn(self.name, page)
        self.assertNotIn(self.read_token, page)
        # Nothing from elsewhere: no external script, style, image or font.
        for needle in ("http://", "https://", "<link", " src="):
            self.assertNotIn(needle, page.replace("http://www.w3.org/2000/svg", ""))
        self.assertEqual(cofitest.raw_http(self.cofid.port, "GET", "/ui").raw, r.raw)
        self.assertEqual(cofitest.raw_http(self.cofid.port, "HEAD", "/").status, 200)
        # The API behind it still needs the token.
        self.assertEqual(cofitest.raw_http(self.cofid.port, "GET", "/batches").status, 401)

    def test_without_a_token_it_asks_for_one(self):
        dom = self.load("", lambda d: "needs a token" in d.one(id="error").text(),
                        "the page to ask for a token")
        self.assertIsNone(self.batch_row(dom))
        self.assertIn("hidden", dom.one(id="batch-detail").attrs)
        self.assertEqual(dom.one(id="scope").text(), "no token")

    def test_read_token_shows_the_batch_nodes_and_nlp_limit(self):
        before = self.batch()
        dom = self.load("token=" + self.read_token,
                        lambda d: self.batch_row(d) is not None and d.all(data_node="gpu-1")
                        and d.one(id="scope").attrs.get("data-write") == "no",
                        "the page to show batch %d" % self.batch_id)
        after = self.batch()
        row = self.batch_row(dom)
        # The name is shown as text, markup and all: never interpreted as HTML.
        self.assertEqual(row.one("td", **{"class": "batch-name"}).text(), self.name)
        self.assertEqual(row.all("b"), [])
        shown = {}
        for cell in row.all("div", data_stage=True):
            name = cell.attrs["data-stage"]
            shown[name] = int(cell.one("span", data_count="done").text())
            self.assertIn("/%d" % FILES, cell.text())
        self.assertEqual(list(shown), [s["name"] for s in before["stages"]])
        for b, s, a in zip(before["stages"], shown.items(), after["stages"]):
            # Counts only grow: what the page showed lies between the two API reads.
            self.assertTrue(b["done"] <= s[1] <= a["done"], (b, s, a))
        state = row.all("td")[2].text()
        self.assertIn(state, ("running", "completed with errors"))
        for button in row.all("button", data_action=True):
            self.assertIn("disabled", button.attrs, "a read token may not act")
        if state == "running":
            self.assertTrue(row.all("button", data_action="pause"))
        for node in ("gpu-0", "gpu-1"):
            box = dom.one("div", data_node=node)
            self.assertIn("node " + node, box.text())
            self.assertEqual(box.one("span", data_limit=True).text(), "2")
            self.assertLessEqual(int(box.one("span", data_in_flight=True).text()), 2)
        nlp = dom.one("div", data_nlp=True)
        # The NLP API's limit now: llm.concurrency, or below it the adaptive limit, and then
        # the page says so (with the reason of its last change).
        shown = int(nlp.one("span", data_limit=True).text())
        self.assertTrue(1 <= shown <= NLP_LIMIT, shown)
        if shown < NLP_LIMIT:
            self.assertIn("adaptive limit %d of %d" % (shown, NLP_LIMIT), nlp.text())
        self.assertLessEqual(int(nlp.one("span", data_in_flight=True).text()), NLP_LIMIT)
        # The charts drew one line per stage.
        self.assertEqual(len(dom.one(id="chart-throughput").all("polyline")), 7)

    def test_write_token_enables_the_buttons(self):
        dom = self.load("token=" + self.write_token,
                        lambda d: self.batch_row(d) is not None
                        and d.one(id="scope").attrs.get("data-write") == "yes",
                        "the page to know the token may write")
        buttons = self.batch_row(dom).all("button", data_action=True)
        for button in buttons:
            self.assertNotIn("disabled", button.attrs)

    def test_a_call_with_its_stage_results(self):
        r = cofitest.poll(lambda: self.http(
            "GET", "/batches/%d/calls?state=done&limit=1" % self.batch_id,
            headers=self.auth(self.read_token)).json["calls"] or None, scaled(120),
            interval=0.2, what="a call of batch %d to be done" % self.batch_id)
        call_id = r[0]["id"]
        call = self.http("GET", "/batches/%d/calls/%s" % (self.batch_id, call_id),
                         headers=self.auth(self.read_token)).json
        dom = self.load("token=%s&batch=%d&call=%s" % (self.read_token, self.batch_id, call_id),
                        lambda d: "hidden" not in d.one(id="call-detail").attrs,
                        "the page to show call %s" % call_id)
        self.assertTrue(dom.all("tr", data_call=call_id), "the call is in the batch's list")
        self.assertIn(call["file"], dom.one(id="call-title").text())
        for s in call["stages"]:
            row = dom.one(id="call-stages").one("tr", data_stage=s["name"])
            self.assertEqual(row.all("td")[1].text(), s["state"])
        stt = dom.one("details", data_result="stt")
        self.assertEqual(json.loads(stt.one("pre").text()), call["stages"][4]["result"])
        self.assertIn(call["stages"][4]["result"]["transcript"], stt.text())

    def test_a_failed_call_shows_where_and_why(self):
        cofitest.poll(lambda: self.http("GET", "/batches/%d/calls/%s" % (
            self.batch_id, self.failing_call), headers=self.auth(self.read_token)).json[
            "state"] == "failed" or None, scaled(120), interval=0.2,
            what="call %s to fail" % self.failing_call)
        dom = self.load("token=%s&batch=%d" % (self.read_token, self.batch_id),
                        lambda d: d.all("tr", data_call=self.failing_call),
                        "the page to list call %s" % self.failing_call)
        row = dom.one("tr", data_call=self.failing_call)
        self.assertEqual(row.all("td")[3].text(), "failed")
        self.assertTrue(row.all("td")[6].text().startswith("llm1: "), row.text())
        self.assertIn("400", row.all("td")[6].text())
        failed = self.batch_row(dom).all("td")[6].text()
        self.assertEqual(failed, "1")

    def test_buttons_run_pause_resume_cancel_and_show_a_refusal(self):
        """Clicks the buttons of a new batch in a real page (over the DevTools protocol) and
        sees each take effect in the API; a refused action shows the problem's detail."""
        files = cofitest.make_files(self.input_root, 30, prefix="click", subdir="click")
        r = self.http("POST", "/batches", body={"files": files, "name": "clicked"},
                      headers=self.auth(self.write_token))
        self.assertStatus(r, 201)
        bid = r.json["id"]
        row = 'document.querySelector(\'tr[data-batch="%d"]\')' % bid

        def button(page, action):
            js = ("(() => { const r = %s; const b = r && r.querySelector("
                  "'button[data-action=\"%s\"]'); return b !== null && !b.disabled; })()"
                  % (row, action))
            cofitest.poll(lambda: page.evaluate(js) or None, scaled(30), interval=0.1,
                          what="an enabled %s button for batch %d" % (action, bid))
            page.evaluate("%s.querySelector('button[data-action=\"%s\"]').click()"
                          % (row, action))

        def state_is(state):
            cofitest.poll(lambda: self.http("GET", "/batches/%d" % bid, headers=self.auth(
                self.read_token)).json["state"] == state or None, scaled(30), interval=0.1,
                what="batch %d to be %s" % (bid, state))

        with cdp.Browser(chromium_argv(), self.url("token=" + self.write_token),
                         timeout=scaled(60)) as page:
            for action, state in (("run", "running"), ("pause", "paused"),
                                  ("resume", "running"), ("cancel", "cancelled")):
                button(page, action)
                state_is(state)
            # What a button does on a refusal: the problem's detail is shown to the user.
            page.evaluate("act(%d, 'pause')" % bid)
            text = page.evaluate("document.getElementById('error').hidden ? '' : "
                                 "document.getElementById('error').textContent")
            self.assertIn("409", text)
            self.assertIn("cancelled", text)

    @unittest.skipUnless(os.environ.get("COFI_DASHBOARD_SCREENSHOT"), "no screenshot asked for")
    def test_screenshot(self):
        """Saves a screenshot of the page with a running batch open, once its charts hold twenty
        polls and a third of the batch is done (COFI_DASHBOARD_SCREENSHOT=path; how
        docs/dashboard.png was made)."""
        path = os.environ["COFI_DASHBOARD_SCREENSHOT"]
        files = cofitest.make_files(self.input_root, 120, prefix="support", subdir="shot")
        w = self.auth(self.write_token)
        r = self.http("POST", "/batches", body={"files": files, "name": "support calls, 3 Dec"},
                      headers=w)
        self.assertStatus(r, 201)
        bid = r.json["id"]
        self.assertStatus(self.http("POST", "/batches/%d/run" % bid, headers=w), 202)
        self.assertStatus(self.http("PATCH", "/batches/%d" % self.batch_id,
                                    body={"name": "billing calls, 2 Dec"}, headers=w), 200)
        url = self.url("token=%s&batch=%d" % (self.read_token, bid))
        with cdp.Browser(chromium_argv() + ["--hide-scrollbars", "--window-size=1400,1150"], url,
                         timeout=scaled(60)) as page:
            cofitest.poll(lambda: page.evaluate("typeof view === 'object' && "
                                                "view.history.length >= 20") or None,
                          scaled(60), interval=0.5, what="twenty polls of the page")
            cofitest.poll(lambda: self.http("GET", "/batches/%d" % bid, headers=w).json[
                "stages"][6]["done"] >= 40 or None, scaled(120), interval=0.5,
                what="40 calls of batch %d to be done" % bid)
            shot = page.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        self.assertGreater(os.path.getsize(path), 10000)

if __name__ == "__main__":
    unittest.main(verbosity=2)
