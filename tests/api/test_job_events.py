"""Following a job live: `GET /v1/jobs/{id}/events` (Server-Sent Events) and the long-poll
`GET /v1/jobs/{id}?wait=`, on both deployments with a real worker; then through two real
uvicorn processes, where the stream must arrive while the job runs, not at its end."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.api.test_service import upload
from tests.support.deploy import deployment as real_deployment

PROBLEM = "application/problem+json"
# A job that runs a few seconds and reports progress at every point.
SLOW = {"batch_sizes": [1, 2, 4, 8], "min_runs": 5, "min_seconds": 0.4, "max_seconds": 1}


def parse_sse(text: str) -> list[dict]:
    """Events as dicts (id, event, data parsed as JSON); comments counted as pings."""
    events = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                fields["ping"] = True
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        if fields:
            events.append(fields)
    return events


def submit(api, model_id, params=SLOW):
    r = api.post("/v1/jobs", json={"model_id": model_id, "technique": "benchmark", "params": params})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_event_stream_follows_a_job_to_its_end(api, mlp_onnx):
    model = upload(api, mlp_onnx).json()
    job_id = submit(api, model["id"])
    r = api.get(f"/v1/jobs/{job_id}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in parse_sse(r.text) if "data" in e]
    assert [e["event"] for e in events][-1] == "end" and {e["event"] for e in events[:-1]} <= {"job"}
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) >= 2  # every event is a new state
    assert all(a["data"] != b["data"] for a, b in zip(events, events[1:]))
    end = events[-1]["data"]
    assert end["status"] == "succeeded" and end == api.get(f"/v1/jobs/{job_id}").json()
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(progress) and len(set(progress)) >= 3, progress  # progress seen, in order
    # The last event's id is the job's ETag: a client resuming from it is sent only the end again.
    assert api.get(f"/v1/jobs/{job_id}").headers["etag"] == f'"{events[-1]["id"]}"'
    again = parse_sse(api.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": ids[-1]}).text)
    assert [e.get("event") for e in again if "data" in e] == ["end"]


def test_resume_never_resends_the_state_the_client_has(api, mlp_onnx):
    """Resuming with an earlier Last-Event-ID skips that state (a newer one comes first)."""
    model = upload(api, mlp_onnx).json()
    job_id = submit(api, model["id"])
    first = api.get(f"/v1/jobs/{job_id}", params={"wait": 0}).headers["etag"].strip('"')
    resumed = [e for e in parse_sse(api.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": first}).text)
               if "data" in e]
    assert resumed and first not in [e["id"] for e in resumed]
    assert resumed[-1]["event"] == "end"


def test_long_poll_answers_on_change_and_honours_the_etag(api, mlp_onnx):
    model = upload(api, mlp_onnx).json()
    job_id = submit(api, model["id"])
    held = api.get(f"/v1/jobs/{job_id}")
    tag, seen = held.headers["etag"], held.json()
    started = time.monotonic()
    changed = api.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag and changed.json() != seen
    assert time.monotonic() - started < 30  # answered on the change, not at the timeout
    ended = api.wait_job(job_id)
    final = api.get(f"/v1/jobs/{job_id}")
    assert final.json() == ended
    # Nothing will change any more: with its ETag, the wait ends in a 304 (after 1 s here).
    same = api.get(f"/v1/jobs/{job_id}", params={"wait": 1}, headers={"If-None-Match": final.headers["etag"]})
    assert same.status_code == 304 and same.headers["etag"] == final.headers["etag"] and not same.content
    assert api.get(f"/v1/jobs/{job_id}", params={"wait": 61}).status_code == 422  # bounded


def test_another_tenants_job_is_a_404_not_a_stream(deployment, mlp_onnx):
    owner, other = deployment.new_client(), deployment.new_client()
    job_id = submit(owner, upload(owner, mlp_onnx).json()["id"], {"batch_sizes": [1], "min_runs": 1})
    for url in (f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}?wait=1"):
        r = other.get(url)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, r.text
        assert "no job" in r.json()["detail"].lower()
    owner.wait_job(job_id)


@pytest.mark.parametrize("kind", ["production"])
def test_stream_arrives_live_through_two_api_processes(tmp_path, mlp_onnx, kind):
    """Real uvicorn, two API processes, a worker: events reach the client while the job runs
    (the first before the end), whichever process serves the stream."""
    with real_deployment(kind, tmp_path / "data", api_processes=2) as (client, _):
        model = upload(client, mlp_onnx).json()
        job_id = submit(client, model["id"], {**SLOW, "batch_sizes": [1, 2, 4, 8, 16, 32]})
        arrivals: list[tuple[float, dict]] = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(120)) as r:
            assert r.status_code == 200
            buffer = ""
            for chunk in r.iter_text():
                buffer += chunk
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    arrivals += [(time.monotonic(), e) for e in parse_sse(block) if "data" in e]
        assert arrivals[-1][1]["event"] == "end" and arrivals[-1][1]["data"]["status"] == "succeeded"
        running = [t for t, e in arrivals if e["data"]["status"] == "running"]
        assert running and running[0] < arrivals[-1][0] - 0.5, "events were not streamed while the job ran"
