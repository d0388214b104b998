"""Where a measurement ran: CPU, cores, limits and library versions.

Latency numbers mean little without this, so every report that contains timings embeds it.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import numpy
import onnx
import onnxruntime


def describe_environment() -> dict[str, Any]:
    """JSON-ready description of this machine and the inference stack."""
    return {
        **_static(),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": numpy.__version__,
        "available_providers": list(onnxruntime.get_available_providers()),
    }


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    # Cached: none of this changes during the worker's life. Returned as a fresh dict above.
    return {
        "cpu_model": _cpu_model(),
        "cpu_features": _cpu_features(),
        "logical_cores": os.cpu_count(),
        # Containers often pin or throttle the process below what cpu_count() shows; a
        # thread count above these numbers measures contention, not the model.
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cgroup_cpu_limit": _cgroup_cpu_limit(),
        "total_memory_bytes": _total_memory(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            # x86 says "model name"; some ARM kernels only give "Hardware" or "CPU part".
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# Flags that decide which int8/fp16 kernels onnxruntime can use (e.g. without VNNI, x86 int8
# matmuls go through a u8s8 path that can saturate with full-range int8 weights).
_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "amx_int8", "asimd", "asimddp", "i8mm", "bf16")


def _cpu_features() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
            break
    return [f for f in _FEATURES if f in flags]


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 quota (e.g. docker --cpus), None when unlimited/unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return round(int(quota) / int(period), 2)


def _total_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or restricted /proc: the field is informative only
        return None
