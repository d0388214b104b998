"""The catalog: found by reading sources, imported once even when many threads ask at once."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

COLD_START = """
import threading
from app.engine import catalog
barrier, errors, sizes = threading.Barrier(32), [], []
def ask():
    barrier.wait()
    try:
        sizes.append(len(catalog.all_techniques()))
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=ask) for _ in range(32)]
[t.start() for t in threads]; [t.join() for t in threads]
assert not errors, errors
assert len(set(sizes)) == 1 and sizes[0] >= 12, sizes
"""


def test_a_cold_catalog_asked_by_many_threads_at_once():
    """An API process takes its first requests on a threadpool: 32 threads asking a cold catalog
    together all get the whole catalog (a parallel-request test once got a 500 from two threads
    parsing modules at once)."""
    for _ in range(3):  # a fresh interpreter each time: the catalog is cold
        result = subprocess.run([sys.executable, "-c", COLD_START], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]


def test_every_technique_module_is_found():
    from app.engine.catalog import all_techniques, technique_modules

    modules = technique_modules()
    assert {t.__module__ for t in all_techniques().values()} == set(modules)
    assert "app.engine.quantize.dynamic" in modules and "app.engine.runtime.isolate" not in modules
