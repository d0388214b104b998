"""GET /metrics: job metrics from the database (any API process answers for every worker),
HTTP durations summed across `lathe api --processes 2`, no tenant, key or id in a label."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_service import upload
from tests.support.deploy import deployment as real_deployment

QUICK = {"batch_sizes": [1], "min_runs": 1, "min_seconds": 0}


def scrape(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}, r.text


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_job_and_http_metrics(deployment, api, mlp_onnx):
    before, _ = scrape(deployment.client)
    model = upload(api, mlp_onnx).json()
    ok = api.wait_job(api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark",
                                                 "params": QUICK}).json()["id"])
    for _ in range(3):
        assert api.get(f"/v1/jobs/{ok['id']}").status_code == 200
    after, text = scrape(deployment.client)
    assert value(after, "lathe_jobs_finished_total", technique="benchmark", status="succeeded") == \
        value(before, "lathe_jobs_finished_total", technique="benchmark", status="succeeded") + 1
    count = value(after, "lathe_job_duration_seconds_count", technique="benchmark")
    assert count >= 1 and value(after, "lathe_job_duration_seconds_bucket", technique="benchmark", le="+Inf") == count
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in after.items()
                     if k[0] == "lathe_job_duration_seconds_bucket" and dict(k[1])["technique"] == "benchmark")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert {dict(k[1])["state"] for k in after if k[0] == "lathe_jobs"} == {
        "queued", "running", "succeeded", "failed", "cancelled"}
    assert (("lathe_queue_depth", (("queue", "cpu"),))) in after
    gets = value(after, "lathe_http_request_duration_seconds_count", route="/v1/jobs/{job_id}", method="GET",
                 status="200") - value(before, "lathe_http_request_duration_seconds_count",
                                       route="/v1/jobs/{job_id}", method="GET", status="200")
    assert gets >= 3  # plus wait_job's polls
    assert value(after, "lathe_http_request_duration_seconds_count", route="/v1/models", method="POST",
                 status="201") >= 1
    # nothing that identifies a tenant or a resource
    assert ok["id"] not in text and model["id"] not in text and api.key not in text and "tenant" not in text


def test_counts_are_whole_across_api_processes(tmp_path, mlp_onnx):
    with real_deployment("production", tmp_path / "data", api_processes=2) as (client, _):
        model = upload(client, mlp_onnx).json()
        job = client.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "params": QUICK}).json()
        for _ in range(20):
            assert client.get("/v1/models").status_code == 200
            httpx.get(f"{str(client.base_url).rstrip('/')}/v1/models")  # unauthenticated, a fresh connection
        while client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()["status"] not in ("succeeded", "failed"):
            pass
        scrapes = [scrape(httpx.Client(base_url=str(client.base_url)))[0] for _ in range(6)]
        for samples in scrapes:  # whichever process answered, the same totals
            assert value(samples, "lathe_http_request_duration_seconds_count", route="/v1/models", method="GET",
                         status="200") == 20
            assert value(samples, "lathe_http_request_duration_seconds_count", route="/v1/models", method="GET",
                         status="401") == 20
            assert value(samples, "lathe_jobs_finished_total", technique="benchmark", status="succeeded") == 1
