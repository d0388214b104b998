"""Native steps we don't control (shape inference, converters, exporters) run in a child
process that a deadline can kill.

A hostile model can make onnxruntime's symbolic shape inference recurse for hours (30 nested
``If`` subgraphs in 3.8 KB); inside a C call the job's thread never returns to Python, so
neither cancellation nor the soft time limit can reach it. ``run_bounded`` runs the step in a
child, waits at most ``deadline_s``, then kills the child's whole process group and raises
``StepTimeout`` (``error.type`` ``step_timeout``).

Start method: forkserver. The caller is a Celery pool child that has imported torch and
onnxruntime and used their thread pools: a plain ``fork`` of it hung (3 of 3 tries) as soon as
the child ran a torch matmul (GNU OpenMP's pool does not survive fork), and it also copies the
guard thread's locks and database sockets. ``spawn`` is clean but paid 1-1.6 s per step here
just to import onnxruntime (several more with torch), and quantize.auto runs one quantizer per
candidate. The fork server is started once per worker process from a fresh interpreter with
onnx and onnxruntime preloaded; each step is then forked from that single-threaded process in
about 20-40 ms. Steps that need torch import it in their child.

Results travel as JSON over a pipe (never pickles from the child, which has parsed hostile
bytes); models travel as files the child writes into the job's workdir. Arguments travel the
other way pickled, so ``fn`` must be a module-level function. Pure engine: no service imports.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.engine.base import DEFAULT_NATIVE_STEP_TIMEOUT_S
from app.engine.errors import StepTimeout, TechniqueError

DEFAULT_DEADLINE_S = DEFAULT_NATIVE_STEP_TIMEOUT_S
# Imported once in the fork server, so each step's child starts with them loaded.
PRELOAD = ["app.engine.runtime.isolate", "numpy", "onnx", "onnxruntime", "onnxruntime.quantization"]
WAIT_SLICE_S = 0.2


class StepFailed(Exception):
    """The step raised something other than a TechniqueError, or its process died.
    ``name`` is the original exception's class name, for messages."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def error_name(exc: BaseException) -> str:
    """The class name to show for ``exc``: the child's original one for StepFailed."""
    return exc.name if isinstance(exc, StepFailed) else type(exc).__name__


def run_bounded(fn: Callable[..., Any], *args: Any, deadline_s: float, step: str,
                cwd: Path | None = None, confine: bool = False, **kw: Any) -> Any:
    """``fn(*args, **kw)`` in a child process, its JSON-able result returned here.

    TechniqueErrors raised in the child are raised again here with their type and detail;
    other exceptions come back as StepFailed; a child that dies (segfault, OOM kill) too.
    ``cwd``: the child's working directory (onnxruntime's tools litter it). ``confine``: the
    child also drops to no network and, under root, the ``nobody`` user, writing only in
    ``cwd`` (``app.engine.runtime.sandbox``) before it runs ``fn``: for steps that execute an uploaded
    program."""
    if confine and cwd is None:
        raise ValueError("a confined step needs the one folder it may write (cwd)")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(writer, fn, args, kw, cwd, confine), name=f"lathe-step {step}")
    deadline = time.monotonic() + deadline_s
    try:
        proc.start()
        writer.close()  # the child holds the only write end: EOF here when it dies
        # Short waits, not one long one: between them Python can deliver an exception raised
        # into this thread (the worker's guard stopping the job), and the finally kills the step.
        while not reader.poll(min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise StepTimeout(step, deadline_s)
        try:
            payload = json.loads(reader.recv_bytes())
        except EOFError:
            proc.join(5)
            raise StepFailed("ProcessDied", f"the {step} process died (exit code {proc.exitcode})") from None
    finally:  # also when the job is stopped (an exception raised into this thread while waiting)
        _kill(proc)
        reader.close()
        writer.close()
    if "error" in payload:
        err = payload["error"]
        if "type" in err:
            raise TechniqueError.of(err["type"], err["detail"])
        raise StepFailed(err["name"], err["message"])
    return payload["result"]


def _kill(proc: Any) -> None:
    """The child and everything it started (its own process group)."""
    if proc.pid is None:
        return  # never started
    if proc.exitcode is None:
        for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
    proc.join(10)
    if proc.exitcode is not None:
        proc.close()


def _child(writer: Any, fn: Callable[..., Any], args: tuple, kw: dict, cwd: Path | None,
           confine: bool) -> None:
    os.setsid()  # a process group of its own: the deadline kills its descendants too
    try:
        if cwd is not None:
            os.chdir(cwd)
        if confine:
            from app.engine.runtime.sandbox import confine as confine_to

            kw = {**kw, "confinement": confine_to(cwd)}
        payload: dict[str, Any] = {"result": fn(*args, **kw)}
    except TechniqueError as exc:
        payload = {"error": {"type": exc.type, "detail": exc.detail}}
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
        payload = {"error": {"name": type(exc).__name__, "message": str(exc)[:4000]}}
    writer.send_bytes(json.dumps(payload, default=str).encode())
    writer.close()
