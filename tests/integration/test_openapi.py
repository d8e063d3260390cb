"""GET /openapi.json: a valid OpenAPI 3.1 document, the same as openapi/openapi.json in the
repo, describing every route of CONTRACTS §2 with every method, and the answers of a running
cofid agree with it."""

import re
import unittest

import cofitest
from cofitest import CofiCase

# CONTRACTS §2: every route with every method.
ROUTES = {
    ("POST", "/batches"),
    ("GET", "/batches"),
    ("GET", "/batches/{}"),
    ("POST", "/batches/{}/run"),
    ("POST", "/batches/{}/cancel"),
    ("PATCH", "/batches/{}"),
    ("DELETE", "/batches/{}"),
    ("POST", "/batches/{}/pause"),
    ("POST", "/batches/{}/resume"),
    ("POST", "/batches/{}/retry"),
    ("GET", "/batches/{}/calls"),
    ("GET", "/batches/{}/calls/{}"),
    ("GET", "/stages/{}/status"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
}

# The operations whose success is not JSON, and what it is instead.
NOT_JSON = {("GET", "/metrics"): "text/plain"}

# The statuses each operation must document (the brief and CONTRACTS §2).
REQUIRED_STATUSES = {
    ("POST", "/batches"): {"200", "201", "400", "401", "403", "409", "413", "415", "422", "503"},
    ("GET", "/batches"): {"200", "400", "401", "503"},
    ("GET", "/batches/{}"): {"200", "401", "404", "503"},
    ("POST", "/batches/{}/run"): {"202", "400", "401", "403", "404", "409", "413", "415", "422", "503"},
    ("POST", "/batches/{}/cancel"): {"202", "401", "403", "404", "409", "503"},
    ("PATCH", "/batches/{}"): {"200", "400", "401", "403", "404", "422", "503"},
    ("DELETE", "/batches/{}"): {"204", "401", "403", "404", "409", "503"},
    ("POST", "/batches/{}/pause"): {"202", "401", "403", "404", "409", "503"},
    ("POST", "/batches/{}/resume"): {"202", "401", "403", "404", "409", "503"},
    ("POST", "/batches/{}/retry"): {"202", "400", "401", "403", "404", "409", "422", "503"},
    ("GET", "/batches/{}/calls"): {"200", "400", "401", "404", "503"},
    ("GET", "/batches/{}/calls/{}"): {"200", "401", "404", "503"},
    ("GET", "/stages/{}/status"): {"200", "401", "404", "503"},
    ("GET", "/healthz"): {"200"},
    ("GET", "/readyz"): {"200", "503"},
    ("GET", "/openapi.json"): {"200"},
}

SCHEMAS = ["Batch", "StageCounts", "Call", "CallStage", "StageStatus", "Node", "Problem",
           "BatchList", "CallList", "CreateBatch", "RunBatch", "UpdateBatch", "RetryBatch"]

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def normalise(template):
    return re.sub(r"\{[^}]*\}", "{}", template)


class OpenApiTest(CofiCase):

    @classmethod
    def prepare(cls):
        cls.start_cofid()  # no batch runs here: its workers need not exist
        r = cls.cofid.http("GET", "/openapi.json")
        cls.served_response = r
        cls.served = r.json

    def operations(self, doc):
        out = {}
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if method in METHODS:
                    out[(method.upper(), normalise(path))] = op
        return out

    def test_served_with_json_content_type(self):
        r = self.served_response
        self.assertStatus(r, 200)
        ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/json")
        self.assertIsInstance(self.served, dict)

    def test_served_document_is_valid_openapi_3_1(self):
        try:
            import openapi_spec_validator
        except ImportError:
            self.fail("python module openapi_spec_validator is missing: it is needed to check "
                      "the API description (pip install openapi-spec-validator)")
        self.assertTrue(str(self.served.get("openapi", "")).startswith("3.1."),
                        "openapi is %r, not 3.1.x" % self.served.get("openapi"))
        openapi_spec_validator.validate(self.served)

    def test_repo_document_is_valid_openapi_3_1(self):
        import openapi_spec_validator
        openapi_spec_validator.validate(cofitest.repo_openapi())

    def test_served_equals_repo_file(self):
        self.assertEqual(self.served, cofitest.repo_openapi(),
                         "GET /openapi.json differs from openapi/openapi.json (rebuild cofid?)")

    def test_every_route_and_method_is_described(self):
        described = set(self.operations(self.served))
        self.assertEqual(described - ROUTES, set(), "operations beyond CONTRACTS §2")
        self.assertEqual(ROUTES - described, set(), "routes of CONTRACTS §2 not described")

    def test_every_operation_documents_its_statuses(self):
        ops = self.operations(self.served)
        for key, statuses in REQUIRED_STATUSES.items():
            with self.subTest(operation=key):
                documented = set(ops[key]["responses"])
                self.assertEqual(statuses - documented, set(), "undocumented statuses")
                self.assertTrue(ops[key].get("description") or ops[key].get("summary"))

    def test_error_answers_are_problem_details(self):
        spec = cofitest.Spec(self.served)
        for (method, path), op in self.operations(self.served).items():
            for status, resp in op["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                with self.subTest(operation=(method, path), status=status):
                    resp, _ = spec.resolve(resp, None)
                    self.assertEqual(list(resp.get("content", {})), ["application/problem+json"])
                    self.assertEqual(resp["content"]["application/problem+json"]["schema"],
                                     {"$ref": "#/components/schemas/Problem"})

    def test_success_answers_are_json(self):
        for (method, path), op in self.operations(self.served).items():
            for status, resp in op["responses"].items():
                if status.startswith("2") and status != "204":
                    with self.subTest(operation=(method, path), status=status):
                        self.assertIn(NOT_JSON.get((method, path), "application/json"),
                                      resp.get("content", {}))

    def test_reusable_schemas_and_common_responses(self):
        comps = self.served["components"]
        for name in SCHEMAS:
            self.assertIn(name, comps["schemas"])
        problem = comps["schemas"]["Problem"]
        self.assertEqual(set(problem["required"]), {"type", "title", "status", "detail"})
        self.assertIn("errors", problem["properties"])
        allow = comps["responses"]["MethodNotAllowed"]["headers"]["Allow"]
        self.assertTrue(allow.get("required"))
        created = self.served["paths"]["/batches"]["post"]["responses"]["201"]
        self.assertTrue(created["headers"]["Location"].get("required"))
        self.assertEqual(comps["securitySchemes"]["bearerAuth"]["scheme"], "bearer")
        create = comps["schemas"]["CreateBatch"]
        self.assertIs(create["additionalProperties"], False)
        self.assertEqual(create["properties"]["files"]["minItems"], 1)
        key = comps["parameters"]["IdempotencyKey"]
        self.assertEqual((key["in"], key["name"]), ("header", "Idempotency-Key"))

    def test_live_answers_agree_with_the_description(self):
        # Every answer below goes through the response validation of cofitest.
        for method, path, status in [
            ("GET", "/healthz", 200),
            ("GET", "/readyz", 200),
            ("GET", "/batches", 200),
            ("GET", "/batches?limit=1000", 200),
            ("GET", "/batches/1", 404),
            ("GET", "/batches/1/calls", 404),
            ("GET", "/batches/1/calls/1", 404),
            ("GET", "/stages/stt/status", 200),
            ("GET", "/stages/llm2/status", 200),
            ("GET", "/stages/nope/status", 404),
            ("GET", "/nope", 404),
            ("DELETE", "/batches", 405),
            ("PUT", "/batches/1", 405),
            ("DELETE", "/batches/1", 404),
            ("PATCH", "/batches/1", 400),
            ("POST", "/batches/1/pause", 404),
            ("POST", "/batches/1/resume", 404),
            ("POST", "/batches/1/retry", 404),
            ("POST", "/healthz", 405),
        ]:
            with self.subTest(method=method, path=path):
                r = self.http(method, path)
                self.assertStatus(r, status)
        self.assertEqual(self.http("GET", "/healthz").json, {"status": "ok"})
        self.assertEqual(self.http("GET", "/readyz").json, {"status": "ready"})


if __name__ == "__main__":
    unittest.main(verbosity=2)
