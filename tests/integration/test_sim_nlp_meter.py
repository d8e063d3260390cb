"""cofi-sim's NLP API misbehaving like a real one (CONTRACTS §7): a capacity that changes while
it runs (POST /admin/capacity, --nlp-capacity-schedule) with 429 Retry-After: 1 beyond it, a
token budget per minute (429 with the Retry-After of the refill), the per-second series of
GET /stats, and the OpenAI chat-completions form (--nlp-protocol openai) with `usage`."""

import json
import shutil
import tempfile
import threading
import unittest

import cofitest
from cofitest import Sim, raw_http


def headers(call_id, stage):
    return {"Idempotency-Key": "%s:%s" % (call_id, stage), "X-Request-Id": "t-%s" % call_id}


def transcript_of(sim, call_id):
    """Uploads a file for call_id to node 0 and asks its stt: the transcript the NLP API
    expects for the call, and its language."""
    port = sim.node_port(0)
    boundary = "xxBOUNDARYxx"
    form = ("--%s\r\nContent-Disposition: form-data; name=\"call_id\"\r\n\r\n%s\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\nRIFF\r\n--%s--\r\n"
            % (boundary, call_id, boundary, boundary)).encode()
    h = headers(call_id, "distribute")
    h["Content-Type"] = "multipart/form-data; boundary=%s" % boundary
    r = raw_http(port, "POST", "/upload", raw=form, headers=h)
    assert r.status // 100 == 2, r.raw
    body = {"call_id": call_id, "batch_id": 1, "file_name": r.json["file_name"], "stage": "stt",
            "previous": {"denoise": {}, "ivr": {}, "lid": {}}}
    r = raw_http(port, "POST", "/stt", body=body, headers=headers(call_id, "stt"))
    assert r.status == 200, r.raw
    return r.json["transcript"], r.json["language"]


class SimNlpMeterTest(unittest.TestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="cofi-it-sim-meter-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def start(self, **kw):
        sim = Sim(self.workdir, nodes=1, node_capacity=4, **kw)
        self.addCleanup(sim.stop)
        return sim.start()

    def llm1(self, sim, call_id, text, lang):
        body = {"call_id": call_id, "batch_id": 1, "language": lang, "transcript": text}
        return raw_http(sim.nlp_port, "POST", "/llm1", body=body, headers=headers(call_id, "llm1"))

    def burst(self, sim, n, text, lang):
        out = [None] * n

        def one(i):
            out[i] = self.llm1(sim, "7", text, lang)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def test_capacity_changes_while_it_runs(self):
        sim = self.start(nlp_capacity=2, latency={"llm1": 1500})
        text, lang = transcript_of(sim, "7")
        got = self.burst(sim, 4, text, lang)
        statuses = sorted(r.status for r in got)
        self.assertEqual(statuses, [200, 200, 429, 429])
        self.assertTrue(all(r.headers.get("Retry-After") == "1" for r in got if r.status == 429))

        r = raw_http(sim.nlp_port, "POST", "/admin/capacity", body={"capacity": 4})
        self.assertEqual(r.status, 204)
        self.assertEqual(sorted(r.status for r in self.burst(sim, 4, text, lang)), [200] * 4)
        for bad in ({"capacity": 0}, {"capacity": "3"}, {}):
            self.assertEqual(raw_http(sim.nlp_port, "POST", "/admin/capacity", body=bad).status,
                             400)
        self.assertEqual(raw_http(sim.node_port(0), "POST", "/admin/capacity",
                                  body={"capacity": 3}).status, 404)

        s = sim.nlp_stats()
        self.assertEqual(s["capacity"], 4)
        self.assertEqual(s["rejected_capacity"], 2)
        self.assertEqual(s["responses"]["429"], 2)
        series = s["series"]
        self.assertTrue(series, s)
        self.assertEqual(sum(b["arrivals"] for b in series), 8)
        self.assertEqual(sum(b["admitted"] for b in series), 6)
        self.assertEqual(sum(b["rejected"] for b in series), 2)
        self.assertEqual(max(b["max_in_flight"] for b in series), 4)
        self.assertEqual([b["t"] for b in series], list(range(series[0]["t"],
                                                               series[-1]["t"] + 1)))

    def test_capacity_schedule(self):
        sim = self.start(nlp_capacity=10, extra_args=["--nlp-capacity-schedule", "1=3,2=6"])
        cofitest.poll(lambda: sim.nlp_stats()["capacity"] == 6 or None, cofitest.scaled(10),
                      what="the schedule to reach 6")
        series = sim.nlp_stats()["series"]
        caps = [b["capacity"] for b in series]
        self.assertEqual(caps[0], 10)
        self.assertIn(3, caps)
        self.assertEqual(caps[-1], 6)

    def test_tokens_per_minute(self):
        # 120 tokens a minute (2 a second); each request costs len/4 + 20.
        sim = self.start(nlp_capacity=10, extra_args=["--nlp-tokens-per-minute", "120"])
        text, lang = transcript_of(sim, "7")
        cost = len(text) // 4 + 20
        n_ok = 120 // cost
        got = [self.llm1(sim, "7", text, lang) for _ in range(n_ok + 1)]
        self.assertEqual([r.status for r in got], [200] * n_ok + [429])
        wait = int(got[-1].headers["Retry-After"])
        self.assertGreaterEqual(wait, 1)
        self.assertLessEqual(wait, (cost + 1) // 2 + 1)
        s = sim.nlp_stats()
        self.assertEqual(s["rejected_tokens"], 1)
        self.assertEqual(s["tokens"], n_ok * cost)
        self.assertEqual(s["tokens_per_minute"], 120)

    def test_openai_protocol(self):
        sim = self.start(nlp_capacity=4, extra_args=["--nlp-protocol", "openai"])
        text, lang = transcript_of(sim, "9")
        prompt = "Summarise this call (%s) as JSON: %s" % (lang, text)
        body = {"model": "m-1", "messages": [{"role": "system", "content": "You answer JSON."},
                                             {"role": "user", "content": prompt}]}
        r = raw_http(sim.nlp_port, "POST", "/v1/chat/completions", body=body,
                     headers=headers("9", "llm2"))
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["object"], "chat.completion")
        self.assertEqual(r.json["model"], "m-1")
        content = json.loads(r.json["choices"][0]["message"]["content"])
        self.assertIn("category", content)
        usage = r.json["usage"]
        self.assertEqual(usage["prompt_tokens"], (len("You answer JSON.") + len(prompt)) // 4)
        self.assertEqual(usage["completion_tokens"], 20)
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + 20)
        s = sim.nlp_stats()
        self.assertEqual(s["protocol"], "openai")
        self.assertEqual(s["ok"]["llm2"], 1)

        body["messages"][1]["content"] = "no transcript here"
        r = raw_http(sim.nlp_port, "POST", "/v1/chat/completions", body=body,
                     headers=headers("9", "llm1"))
        self.assertEqual(r.status, 422)
        r = raw_http(sim.nlp_port, "POST", "/v1/chat/completions", body=body,
                     headers=headers("9", "stt"))
        self.assertEqual(r.status, 400)
        self.assertEqual(raw_http(sim.nlp_port, "POST", "/llm1", body={},
                                  headers=headers("9", "llm1")).status, 404)


if __name__ == "__main__":
    unittest.main(verbosity=2)
