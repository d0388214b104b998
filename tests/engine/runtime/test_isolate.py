"""run_bounded: native steps in a child process that a deadline kills (issue 9, section 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.engine.runtime.isolate import StepFailed, StepTimeout, run_bounded
from app.engine.quantize.ort_tools import staged
from app.engine.errors import UnsupportedModel
from tests.support.hostile_graphs import save_nested_if


def _add(a: int, b: int, *, times: int = 1) -> dict:
    return {"sum": (a + b) * times, "pid": os.getpid()}


def _refuse(detail: str) -> None:
    raise UnsupportedModel(detail)


def _explode() -> None:
    raise ValueError("bad attribute")


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang_with_grandchild(pidfile: str) -> None:
    """A native step stuck forever, with a helper process of its own."""
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(pidfile).write_text(str(helper.pid))
    time.sleep(600)


def test_result_comes_back_from_another_process():
    out = run_bounded(_add, 2, 3, times=2, deadline_s=60, step="adding")
    assert out["sum"] == 10 and out["pid"] != os.getpid()


def test_technique_errors_keep_their_class_and_others_their_name():
    with pytest.raises(UnsupportedModel, match="no converter for Foo"):
        run_bounded(_refuse, "no converter for Foo", deadline_s=60, step="converting")
    with pytest.raises(StepFailed, match="bad attribute") as info:
        run_bounded(_explode, deadline_s=60, step="converting")
    assert info.value.name == "ValueError"
    with pytest.raises(StepFailed, match="died"):
        run_bounded(_crash, deadline_s=60, step="crashing")


def test_deadline_kills_the_step_and_its_descendants(tmp_path):
    pidfile = tmp_path / "helper.pid"
    started = time.monotonic()
    with pytest.raises(StepTimeout) as info:
        run_bounded(_hang_with_grandchild, str(pidfile), deadline_s=3, step="a stuck step")
    assert time.monotonic() - started < 30
    assert info.value.type == "step_timeout"
    assert "a stuck step" in info.value.detail and "3 s" in info.value.detail
    helper = int(pidfile.read_text())
    for _ in range(50):  # reaped by init once killed: gone, or a zombie at worst
        try:
            with open(f"/proc/{helper}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's helper process {helper} outlived the deadline")


def test_symbolic_shape_inference_on_nested_ifs_is_stopped(tmp_path):
    """Unbounded, onnxruntime's pre-processing of this 9 KB model does not finish."""
    model = save_nested_if(30, tmp_path / "nested.onnx")
    started = time.monotonic()
    with pytest.raises(StepTimeout, match="shape inference"):
        with staged(model, tmp_path, preprocess=True, min_opset=1, deadline_s=3):
            pass
    assert time.monotonic() - started < 30
    assert not list(tmp_path.glob("quant-*")), "the scratch directory is left behind"
