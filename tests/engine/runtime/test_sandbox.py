"""The confined child that runs uploaded programs: no network, nothing writable but its folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from app.engine.runtime.isolate import run_bounded


def _probe(outside: str, confinement: dict) -> dict:
    """What a payload in the child could do."""
    results = dict(confinement)
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
        results["network"] = "connected"
    except OSError as exc:
        results["network"] = exc.strerror or type(exc).__name__
    for name, path in (("outside", outside), ("inside", "inside.txt")):
        try:
            Path(path).write_text("payload")
            results[name] = "written"
        except OSError as exc:
            results[name] = exc.strerror or type(exc).__name__
    return results


@pytest.mark.skipif(os.geteuid() != 0, reason="confinement is complete only for a root worker (CI runs as root)")
def test_confined_child_has_no_network_and_writes_only_its_folder(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    outside = tmp_path / "outside.txt"
    # PostgreSQL listens on 127.0.0.1:5432 for the whole suite: reachable from an unconfined child.
    assert run_bounded(_probe, str(tmp_path / "free.txt"), {}, deadline_s=60, step="probe", cwd=box)["network"] == "connected"
    got = run_bounded(_probe, str(outside), deadline_s=60, step="probe", cwd=box, confine=True)
    assert got["network_isolated"] and got["read_only_filesystem"] and got["capabilities_dropped"], got
    assert got["network"] != "connected" and got["outside"] != "written" and got["inside"] == "written", got
    assert not outside.exists() and (box / "inside.txt").read_text() == "payload"
    # The parent (the worker) is untouched by its child's confinement.
    with socket.create_connection(("127.0.0.1", 5432), timeout=2):
        pass
