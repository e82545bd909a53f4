"""Readiness parsing against a real HTTP server answering what Dynamo's frontend answers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inferx_slurm.runtime.readiness import accepted_workers, served_models

READY = {"model": "inferx/tiny-moe", "ready": True, "namespaces": {"dynamo": {"ready": True, "worker_types": {
    "decode": {"workers": 1, "needs": [["prefill"]]}, "prefill": {"workers": 2, "needs": [["decode"]]}}}}}
HALF = {"model": "inferx/tiny-moe", "ready": False, "namespaces": {"dynamo": {"ready": False, "worker_types": {
    "prefill": {"workers": 1, "needs": [["decode"]]}}, "missing_worker_types": ["decode"]}}}


@pytest.fixture
def frontend():
    answers: dict[str, tuple[int, dict]] = {}

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            code, doc = answers.get(self.path, (404, {"message": "Not Found"}))
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", answers
    srv.shutdown()


def test_counts_accepted_workers_per_role(frontend):
    url, answers = frontend
    answers["/v1/models/inferx/tiny-moe/ready"] = (200, READY)
    assert accepted_workers(url, "inferx/tiny-moe") == {"prefill": 2, "decode": 1, "agg": 0}


def test_aggregated_workers_count_as_agg(frontend):
    url, answers = frontend
    answers["/v1/models/inferx/tiny-moe/ready"] = (200, {"model": "inferx/tiny-moe", "ready": True, "namespaces": {
        "dynamo": {"ready": True, "worker_types": {"aggregated": {"workers": 2, "needs": []}}}}})
    assert accepted_workers(url, "inferx/tiny-moe") == {"prefill": 0, "decode": 0, "agg": 2}


def test_half_up_deployment_is_not_ready(frontend):
    url, answers = frontend
    answers["/v1/models/inferx/tiny-moe/ready"] = (503, HALF)
    assert accepted_workers(url, "inferx/tiny-moe") == {"prefill": 1, "decode": 0, "agg": 0}


def test_no_worker_yet_and_no_endpoint(frontend):
    url, answers = frontend
    answers["/v1/models/inferx/tiny-moe/ready"] = (404, {"message": "Model not found", "code": 404})
    assert accepted_workers(url, "inferx/tiny-moe") == {"prefill": 0, "decode": 0, "agg": 0}
    # an older frontend without the endpoint: the caller falls back to /health
    assert accepted_workers(url, "other/model") is None


def test_frontend_down():
    assert accepted_workers("http://127.0.0.1:9", "m") == {"prefill": 0, "decode": 0, "agg": 0}
    assert served_models("http://127.0.0.1:9") == []


def test_served_models(frontend):
    url, answers = frontend
    answers["/v1/models"] = (200, {"object": "list", "data": [{"id": "inferx/tiny-moe"}]})
    assert served_models(url) == ["inferx/tiny-moe"]
