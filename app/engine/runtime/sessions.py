"""onnxruntime session creation and guarded inference, shared by every technique.

onnxruntime is imported inside the functions: this module is imported by technique modules,
which the API process loads without onnxruntime.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.engine.base import Device
from app.engine.errors import InferenceFailed, ProviderUnavailable, UnsupportedModel

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(\w+)\s*:\s*")
_LOAD_PREFIX = re.compile(r"^Load model from .*? failed:\s*")
_SOURCE_LOC = re.compile(
    r"\S+\.(?:h|cc|cpp|cu):\d+\s+|onnxruntime::[\w:<>~]+\([^()]*\)(?:\s*const)?\s*"
)


def short_reason(exc: BaseException, model_path: Path | None = None, limit: int = 240) -> str:
    """One line from an onnxruntime/onnx error: code + first sentence, no paths, no traceback."""
    text = str(exc).strip() or type(exc).__name__
    code = ""
    match = _ORT_PREFIX.match(text)
    if match:
        code, text = match.group(1), text[match.end():]
    if model_path is not None:
        text = text.replace(str(model_path), "the model")
    text = _LOAD_PREFIX.sub("", text)  # "Load model from <path> failed:" adds nothing
    text = _SOURCE_LOC.sub("", text)  # onnxruntime source paths and C++ signatures
    text = " ".join(text.split())  # ORT messages span lines; the job error is one line
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{code}: {text}" if code else text


def providers_for(device: Device) -> tuple[list[str], str | None]:
    """Providers to request for ``device`` and a note when the request cannot be honoured."""
    import onnxruntime as ort

    if device == "gpu":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"], None
        return ["CPUExecutionProvider"], (
            "device 'gpu' was requested but this onnxruntime build has no "
            "CUDAExecutionProvider; everything was measured on CPU"
        )
    return ["CPUExecutionProvider"], None


PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}


def sweep_providers(device: Device, wanted: list[str] | None) -> tuple[list[str], list[str]]:
    """Which providers a benchmark sweeps: the requested ones (short names) this build has, or by
    default every one it has for the device. Returns (provider names, notes for those missing)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if wanted is None:
        wanted = ["cpu"] if device == "cpu" else ["tensorrt", "cuda", "cpu"]
        keep = [PROVIDER_NAMES[w] for w in wanted if PROVIDER_NAMES[w] in available]
        return (keep if device == "cpu" or len(keep) == 1 else [k for k in keep if k != "CPUExecutionProvider"]), []
    keep = [PROVIDER_NAMES[w] for w in wanted if PROVIDER_NAMES[w] in available]
    notes = [f"provider {w!r} is not available on this worker (it has {sorted(available)}); skipped"
             for w in wanted if PROVIDER_NAMES[w] not in available]
    if not keep:
        raise ProviderUnavailable(f"none of the requested providers {wanted} is available on this "
                                  f"worker (it has {sorted(available)})")
    return keep, notes


def create_session(path: Path, threads: int, device: Device = "cpu",
                   provider: str | None = None) -> tuple[Any, float]:
    """Return (InferenceSession, creation time in ms).

    Sequential execution with one inter-op thread so ``threads`` alone decides parallelism and
    timings are comparable across runs; ORT_ENABLE_ALL because that is what serving uses.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: warnings would flood the worker log per session
    if provider is None:
        providers, _ = providers_for(device)
    else:  # CPU stays last: ORT places the nodes a GPU provider can't run there
        providers = list(dict.fromkeys([provider, *(["CUDAExecutionProvider"] if provider.startswith("Tensorrt") else []),
                                        "CPUExecutionProvider"]))
    start = time.perf_counter_ns()
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        raise UnsupportedModel(
            f"onnxruntime {ort.__version__} cannot load this model ({short_reason(exc, path)}); "
            "check that every operator is supported by onnxruntime or re-export with another "
            "opset"
        ) from None
    return session, (time.perf_counter_ns() - start) / 1e6


def probe_session(path: str) -> float:
    """Create (and drop) a CPU session for ``path``; run it through ``isolate.run_bounded`` before
    the first session of a job: graph optimisation is native code a hostile graph can keep busy,
    and this way it runs where a deadline can kill it. Returns the creation time in ms."""
    return create_session(Path(path), 1)[1]


def used_provider(session: Any) -> str:
    """The provider that actually runs the model (ORT silently falls back when CUDA fails)."""
    return str(session.get_providers()[0])


def run_session(session: Any, feed: Mapping[str, Any], what: str = "generated",
                output_names: list[str] | None = None) -> list[Any]:
    """session.run with onnxruntime failures turned into advice for the user."""
    try:
        return session.run(output_names, feed)
    except Exception as exc:
        hint = (
            "check that the dataset arrays match the model's inputs"
            if what == "dataset"
            else "set `dims` for symbolic dimensions, `int_high` for token ids, or provide "
            "a dataset with real inputs"
        )
        raise InferenceFailed(
            f"onnxruntime failed to run the model on {what} inputs ({short_reason(exc)}); "
            f"{hint}",
        ) from None
