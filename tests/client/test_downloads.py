"""Downloads against a small real HTTP server that misbehaves on purpose: a connection cut
mid-file is resumed with Range, and bytes that do not hash to the recorded sha256 are refused."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lathe_client import ChecksumMismatchError, Lathe


class Files(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    content = b""
    recorded_sha = ""
    cut_first_at: int | None = None
    ranges: list[str | None] = []

    def do_GET(self) -> None:
        if self.path == "/v1/models/m1":
            body = json.dumps({"id": "m1", "name": "mlp.onnx", "sha256": self.recorded_sha}).encode()
            return self._head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body)
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        if rng and self.headers.get("If-Range") == f'"{self.recorded_sha}"':
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            part = self.content[start:]
            return self._head(206, {"Content-Length": str(len(part)),
                                    "Content-Range": f"bytes {start}-{len(self.content) - 1}/{len(self.content)}"}, part)
        body = self.content
        if len(self.ranges) == 1 and self.cut_first_at is not None:  # promise the whole file, send a part, hang up
            self._head(200, {"Content-Length": str(len(body))}, body[:self.cut_first_at])
            self.close_connection = True
            return
        self._head(200, {"Content-Length": str(len(body))}, body)

    def _head(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in {"ETag": f'"{self.recorded_sha}"', **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def files_server(mlp_onnx) -> Iterator[str]:
    Files.content = mlp_onnx.read_bytes()  # a real model's bytes
    Files.recorded_sha, Files.cut_first_at, Files.ranges = hashlib.sha256(Files.content).hexdigest(), None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cut_download_resumes_with_range(files_server, tmp_path):
    Files.cut_first_at = len(Files.content) // 3
    with Lathe(files_server, api_key="k") as lathe:
        path = lathe.models.download("m1", tmp_path)
    assert path == tmp_path / "mlp.onnx" and path.read_bytes() == Files.content
    assert Files.ranges == [None, f"bytes={Files.cut_first_at}-"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


def test_bytes_that_do_not_match_the_recorded_sha256_are_refused(files_server, tmp_path):
    Files.recorded_sha = hashlib.sha256(b"another file").hexdigest()
    with Lathe(files_server, api_key="k") as lathe, pytest.raises(ChecksumMismatchError) as refused:
        lathe.models.download("m1", tmp_path / "mlp.onnx")
    assert Files.recorded_sha in refused.value.detail
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one
