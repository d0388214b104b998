"""``job.wait()`` on the event stream (``GET /v1/jobs/{id}/events``), served by a small real HTTP
server that speaks the protocol: keep-alive comments, a dropped connection resumed with
Last-Event-ID, chunks cut anywhere, CRLF line ends, the final ``end`` event."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from lathe_client import AsyncLathe, Lathe, UnauthorizedError
from lathe_client._sse import SSEDecoder

JOB = {"id": "j1", "model_id": "m1", "dataset_id": None, "technique": "quantize.dynamic", "params": {},
       "device": "cpu", "status": "queued", "progress": 0.0, "stage": None, "error": None, "output_model_id": None,
       "attempts": 0, "created_at": "2026-11-28T08:00:00Z", "started_at": None, "finished_at": None}


def event(n: int, kind: str, crlf: bool = False, **change) -> bytes:
    text = f"id: {n}\nevent: {kind}\ndata: {json.dumps({**JOB, **change})}\n\n"
    return (text.replace("\n", "\r\n") if crlf else text).encode()


RUNNING = {"status": "running", "progress": 0.3, "stage": "quantize"}
LATER = {"status": "running", "progress": 0.6, "stage": "benchmark bs=4"}
DONE = {"status": "succeeded", "progress": 1.0, "stage": None, "output_model_id": "m2",
        "finished_at": "2026-11-28T08:01:00Z"}


class Events(BaseHTTPRequestHandler):
    """First connection: a ping, one event, then the connection drops. Second: resumes after the
    id it was given, in 7-byte pieces with CRLF line ends, and ends the stream."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection closes
    seen: list[str | None] = []
    polls: list[tuple[list[str] | None, str | None]] = []

    def do_GET(self) -> None:
        key = self.headers.get("Authorization")
        if self.path.startswith("/v1/jobs/j2") and key == "Bearer lk_test":
            return self._old_service()
        if self.path == "/v1/jobs/j1" and key in ("Bearer lk_test", "Bearer lk_jobs_only"):
            return self._send(200, "application/json", json.dumps(JOB).encode())
        if key != "Bearer lk_test":
            return self._send(401, "application/problem+json", json.dumps(
                {"type": "urn:lathe:problem:unauthorized", "title": "Missing or invalid API key", "status": 401,
                 "detail": "no key"}).encode())
        if self.path != "/v1/jobs/j1/events":
            return self._send(404, "application/problem+json", b'{"type": "urn:lathe:problem:not_found"}')
        last = self.headers.get("Last-Event-ID")
        self.seen.append(last)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if last is None:
            self._write(b": ping\n\n" + event(1, "job", **RUNNING))
            return  # dropped without the end event
        body = b": ping\r\n\r\n" + event(2, "job", crlf=True, **LATER) + event(3, "end", crlf=True, **DONE)
        for i in range(0, len(body), 7):
            self._write(body[i:i + 7])

    def _old_service(self) -> None:
        """A service without the event stream (404): the job is polled; it is running for three polls
        (the third answered 304, as ``?wait=`` does for an unchanged ETag), then ends."""
        url = urlsplit(self.path)
        if url.path != "/v1/jobs/j2":
            return self._send(404, "application/problem+json", b'{"type": "urn:lathe:problem:not_found"}')
        self.polls.append((parse_qs(url.query).get("wait"), self.headers.get("If-None-Match")))
        n = [0, 0, 0, 1, 2][min(len(self.polls), 5) - 1]
        if self.headers.get("If-None-Match") == f'"{n}"':
            self.send_response(304)
            self.send_header("ETag", f'"{n}"')
            return self.end_headers()
        self._send(200, "application/json", json.dumps({**JOB, "id": "j2", **[RUNNING, LATER, DONE][n]}).encode(),
                   {"ETag": f'"{n}"'})

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        time.sleep(0.001)

    def _send(self, status: int, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def events_server() -> Iterator[str]:
    Events.seen, Events.polls = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Events)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_follows_events_and_resumes_with_last_event_id(events_server):
    updates = []
    with Lathe(events_server, api_key="lk_test") as lathe:
        job = lathe.jobs.get("j1")
        ended = job.wait(timeout=30, progress=False, on_update=lambda j: updates.append((j.status, j.progress)))
    assert ended.status == "succeeded" and ended.output_model_id == "m2" and ended.finished_at is not None
    assert updates == [("running", 0.3), ("running", 0.6), ("succeeded", 1.0)]
    assert Events.seen == [None, "1"]


def test_async_wait_follows_events(events_server):
    async def wait():
        async with AsyncLathe(events_server, api_key="lk_test") as lathe:
            return await lathe.jobs.wait("j1", timeout=30, progress=False)

    assert asyncio.run(wait()).status == "succeeded"
    assert Events.seen == [None, "1"]


def test_wait_polls_a_service_without_events(events_server):
    updates = []
    with Lathe(events_server, api_key="lk_test") as lathe:
        job = lathe.jobs.get("j2")  # poll 1: running
        ended = job.wait(progress=False, on_update=lambda j: updates.append(j.progress))
    assert ended.status == "succeeded" and updates == [0.6, 1.0]
    # The long-poll rides along with the ETag held: a service that knows ?wait= answers when the
    # job changes, 304 when it did not; one that does not ignores both.
    assert Events.polls == [(None, None), (["30"], None), (["30"], '"0"'), (["30"], '"0"'), (["30"], '"1"')]


def test_wait_draws_progress_when_asked(events_server, capsys):
    with Lathe(events_server, api_key="lk_test") as lathe:
        lathe.jobs.wait("j1", timeout=30, progress=True)
    line = capsys.readouterr().err
    assert "60%" in line and "benchmark bs=4" in line and "succeeded" in line and line.endswith("\n")


def test_refusals_on_the_stream_are_raised(events_server):
    """Only a 404 means "no event stream here, poll instead"; any other refusal is the caller's."""
    with Lathe(events_server, api_key="lk_jobs_only") as lathe:
        job = lathe.jobs.get("j1")
        with pytest.raises(UnauthorizedError) as refused:
            job.wait(timeout=30, progress=False)
    assert refused.value.status == 401 and refused.value.detail == "no key"
    assert Events.seen == []


def test_decoder_handles_any_cut():
    stream = b": ping\r\n\r\nid: 7\r\nevent: job\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nretry: 1500\n\ndata: x\n\n"
    for size in (1, 2, 3, 5, len(stream)):
        decoder, got = SSEDecoder(), []
        for i in range(0, len(stream), size):
            got += decoder.feed(stream[i:i + size])
        assert [(e.event, e.data, e.id) for e in got] == [("job", '{"a":\n1}', "7"), ("message", "x", "7")]
        assert decoder.last_id == "7" and decoder.retry_ms == 1500
