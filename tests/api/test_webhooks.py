"""Webhooks, for real: a local HTTP receiver gets each job event from the worker's dispatcher,
verified with the `standardwebhooks` library; retried after a 500 and after a timeout (same
webhook-id each time); nothing for another tenant's jobs; addresses a tenant may not reach are
refused. Both deployments, a real worker process."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from tests.api.test_service import upload

PROBLEM = "application/problem+json"
QUICK = {"batch_sizes": [1], "min_runs": 1, "min_seconds": 0}


class Receiver:
    """POST /<path>: records every request. /ok answers 200; /flaky 500 to its first request;
    /slow sleeps past the service's 2 s timeout on its first request; then 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                path = self.path.split("?")[0]
                with outer.lock:
                    first = not any(r["path"] == self.path for r in outer.requests)
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body.decode()})
                if path == "/slow" and first:
                    time.sleep(3)
                code = 500 if path == "/flaky" and first else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def subscribe(api, url, events=None):
    r = api.post("/v1/webhooks", json={"url": url, **({"events": events} if events else {})})
    assert r.status_code == 201, r.text
    return r.json()


def run_job(api, mlp_onnx, params=QUICK):
    model = upload(api, mlp_onnx).json()
    job = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "params": params}).json()
    return api.wait_job(job["id"])


def settled(api, hook_id, n=1, timeout=30):
    """The webhook's deliveries once n of them are no longer pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = api.get(f"/v1/webhooks/{hook_id}/deliveries").json()["items"]
        if len([d for d in items if d["status"] != "pending"]) >= n:
            return items
        time.sleep(0.2)
    raise AssertionError(f"deliveries still pending after {timeout} s: {items}")


def test_a_job_event_arrives_signed(api, mlp_onnx, receiver, deployment):
    path = f"/ok-{deployment.name}"
    hook = subscribe(api, receiver.url + path)
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["job.cancelled", "job.failed", "job.succeeded"]
    shown = api.get(f"/v1/webhooks/{hook['id']}").json()
    assert "secret" not in shown and shown["url"] == receiver.url + path
    job = run_job(api, mlp_onnx)
    (delivery,) = settled(api, hook["id"])
    (got,) = receiver.at(path)
    payload = Webhook(hook["secret"]).verify(got["body"], got["headers"])  # raises on a bad signature
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job["id"]
    assert payload["data"] == job
    assert got["headers"]["webhook-id"] == delivery["id"]
    assert delivery["status"] == "delivered" and [a["status_code"] for a in delivery["attempts"]] == [200]
    with pytest.raises(Exception):  # and a signature under another secret does not verify
        Webhook(subscribe(api, receiver.url + "/other")["secret"]).verify(got["body"], got["headers"])


@pytest.mark.parametrize("path,first", [("/flaky", 500), ("/slow", None)])
def test_failed_attempts_are_retried_with_the_same_id(api, mlp_onnx, receiver, deployment, path, first):
    path = f"{path}?{deployment.name}"
    hook = subscribe(api, receiver.url + path, ["job.succeeded"])
    run_job(api, mlp_onnx)
    (delivery,) = settled(api, hook["id"])
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [first, 200]
    if first is None:
        assert "no answer within 2 s" in delivery["attempts"][0]["error"]
    got = receiver.at(path)
    assert len(got) == 2 and len({r["headers"]["webhook-id"] for r in got}) == 1
    for r in got:
        Webhook(hook["secret"]).verify(r["body"], r["headers"])


def test_tenants_get_only_their_own_events(deployment, mlp_onnx, receiver):
    a, b = deployment.new_client(), deployment.new_client()
    path = f"/tenant-a-{deployment.name}"
    hook = subscribe(a, receiver.url + path)
    job_b = run_job(b, mlp_onnx)
    assert b.get(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert b.get(f"/v1/webhooks/{hook['id']}/deliveries").status_code == 404
    assert b.delete(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert b.get("/v1/webhooks").json()["items"] == []
    job_a = run_job(a, mlp_onnx)
    (delivery,) = settled(a, hook["id"])
    assert delivery["job_id"] == job_a["id"]
    assert [json.loads(r["body"])["data"]["id"] for r in receiver.at(path)] == [job_a["id"]]
    assert job_b["id"] not in str(receiver.requests)


def test_only_subscribed_events_and_a_dead_receiver_never_holds_a_job(api, mlp_onnx, receiver, deployment):
    cancelled = subscribe(api, receiver.url + f"/cancelled-{deployment.name}", ["job.cancelled"])
    dead = subscribe(api, "http://127.0.0.1:9/nobody-listens", ["job.succeeded", "job.cancelled"])
    model = upload(api, mlp_onnx).json()
    long = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "params": {
        "batch_sizes": [256], "min_seconds": 30, "max_seconds": 30, "min_runs": 5}}).json()
    api.wait_job(long["id"], until=("running",), timeout=60)
    assert api.post(f"/v1/jobs/{long['id']}/cancel").status_code == 200  # the API ends this one
    quick = run_job(api, mlp_onnx)
    assert quick["status"] == "succeeded"
    (delivery,) = settled(api, cancelled["id"])
    assert delivery["event"] == "job.cancelled" and delivery["job_id"] == long["id"]
    assert json.loads(receiver.at(f"/cancelled-{deployment.name}")[0]["body"])["data"]["status"] == "cancelled"
    deliveries = settled(api, dead["id"], n=2, timeout=40)  # 4 attempts each (3 retries), then failed
    assert {d["status"] for d in deliveries} == {"failed"} and {d["event"] for d in deliveries} == {
        "job.cancelled", "job.succeeded"}
    assert all(len(d["attempts"]) == 4 and d["attempts"][0]["status_code"] is None for d in deliveries)
    assert api.delete(f"/v1/webhooks/{dead['id']}").status_code == 204
    assert api.get(f"/v1/webhooks/{dead['id']}/deliveries").status_code == 404


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://localhost/x", "http://10.1.2.3/x",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://0.0.0.0/x",
                                 "ftp://example.com/x", "http://user:pw@example.com/x", "/relative"])
def test_addresses_a_tenant_may_not_reach_are_refused(tmp_path, url):
    """With the default settings: loopback, private, link-local (cloud metadata) and reserved
    addresses, other schemes and credentials in the URL are a 422, and nothing is stored."""
    from app.cli import run_migrations
    from app.db import make_engine, make_sessionmaker, transaction
    from app.main import create_app
    from app.records import WebhookRecord
    from app.settings import Settings
    from app.tenants.service import create_key

    settings = Settings(data_dir=tmp_path / "d", reaper_interval_s=0)
    settings.ensure_dirs()
    run_migrations(settings)
    engine = make_engine(settings.sqlalchemy_url)
    with transaction(make_sessionmaker(engine)) as s:
        key = create_key(s, "ssrf")
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/webhooks", json={"url": url}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert "refused" in r.json()["detail"]
    with transaction(make_sessionmaker(engine)) as s:
        assert s.query(WebhookRecord).count() == 0
    engine.dispose()
