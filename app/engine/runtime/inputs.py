"""Model inputs: specs, shape resolution, generated feeds and feeds from an .npz dataset.

A spec is ``{"name", "shape": [int | str | None], "dtype": "float32"...}``: the format of
``inspect_onnx()["inputs"]`` and of ``input_specs(session)``. numpy is imported inside functions
because technique modules import this one and the API must not load numpy through them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from app.engine.errors import UnsupportedModel

Spec = Mapping[str, Any]

# A model's declared shapes must not make the worker allocate without bound (a shape like
# [batch, 100000, 100000] is legal ONNX). 2 GiB per feed leaves room for the model itself.
MAX_FEED_BYTES = 2 * 1024**3

_ORT_TYPE = re.compile(r"tensor\((\w+)\)")
_ORT_NAMES = {"float": "float32", "double": "float64"}


def input_specs(session: Any) -> list[dict[str, Any]]:
    """Specs of what an onnxruntime session expects to be fed."""
    specs = []
    for arg in session.get_inputs():
        match = _ORT_TYPE.fullmatch(arg.type)
        dtype = _ORT_NAMES.get(match.group(1), match.group(1)) if match else arg.type
        specs.append({"name": arg.name, "shape": list(arg.shape), "dtype": dtype})
    return specs


def batch_symbols(specs: Sequence[Spec]) -> set[str]:
    """Symbols used as a first dimension: they are the batch, wherever else they appear."""
    return {s["shape"][0] for s in specs if s["shape"] and isinstance(s["shape"][0], str)}


def batch_conflict(specs: Sequence[Spec], batch: int) -> str | None:
    """Why ``batch`` cannot be fed to this model (fixed first dimension), or None."""
    for s in specs:
        first = s["shape"][0] if s["shape"] else None
        if isinstance(first, int) and first > 0 and first != batch:
            return (
                f"input {s['name']!r} has a fixed first dimension of {first}; re-export the "
                "model with a dynamic batch axis to measure other batch sizes"
            )
    return None


def resolve_shape(
    spec: Spec, batch: int, dims: Mapping[str, int], default_dim: int, batch_syms: set[str]
) -> tuple[int, ...]:
    """Concrete shape: first dim -> batch, named dims -> dims, other symbols -> default_dim."""
    if spec["shape"] is None:
        raise UnsupportedModel(
            f"input {spec['name']!r} has no declared rank; re-export the model with input "
            "shapes or provide a dataset"
        )
    out = []
    for i, d in enumerate(spec["shape"]):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0 or d in batch_syms:
            out.append(batch)
        elif isinstance(d, str) and d in dims:
            out.append(int(dims[d]))
        else:
            out.append(default_dim)  # None, 0/-1 (unknown) or an unnamed symbol
    return tuple(out)


def resolved_dims(
    specs: Sequence[Spec], dims: Mapping[str, int], default_dim: int
) -> dict[str, int]:
    """The value each non-batch symbol got, for the report."""
    syms = batch_symbols(specs)
    found = {d for s in specs for d in (s["shape"] or []) if isinstance(d, str)} - syms
    return {d: int(dims.get(d, default_dim)) for d in sorted(found)}


def numpy_dtype(spec: Spec) -> Any:
    import numpy as np

    try:
        dtype = np.dtype(spec["dtype"])
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise UnsupportedModel(
            f"input {spec['name']!r} has type {spec['dtype']}; only numeric and bool tensor "
            "inputs can be generated or read from a dataset"
        )
    return dtype


def check_feed_bytes(shapes: Mapping[str, tuple[int, ...]], itemsizes: Mapping[str, int],
                     batch: int, limit: int = MAX_FEED_BYTES) -> None:
    total = sum(math.prod(shape) * itemsizes[name] for name, shape in shapes.items())
    if total > limit:
        detail = ", ".join(f"{n}={list(s)}" for n, s in shapes.items())
        raise UnsupportedModel(
            f"inputs for batch size {batch} would take {total / 2**30:.1f} GiB ({detail}), "
            f"more than the {limit / 2**30:.0f} GiB limit; lower batch_sizes or set smaller "
            "`dims` / `default_dim` for the symbolic dimensions"
        )


def generate_feed(
    specs: Sequence[Spec],
    batch: int,
    *,
    dims: Mapping[str, int] | None = None,
    default_dim: int = 128,
    int_high: int = 1000,
    seed: int = 0,
    max_bytes: int = MAX_FEED_BYTES,
) -> dict[str, Any]:
    """Synthetic inputs: floats ~ N(0, 1); ints by name (mask -> 1, token_type -> 0,
    position -> arange, else uniform [0, int_high)); bools -> True. Deterministic per seed."""
    import numpy as np

    syms = batch_symbols(specs)
    shapes = {s["name"]: resolve_shape(s, batch, dims or {}, default_dim, syms) for s in specs}
    dtypes = {s["name"]: numpy_dtype(s) for s in specs}
    check_feed_bytes(shapes, {n: d.itemsize for n, d in dtypes.items()}, batch, max_bytes)

    rng = np.random.default_rng(seed)
    feed: dict[str, Any] = {}
    for name, shape in shapes.items():
        dtype, lname = dtypes[name], name.lower()
        if dtype.kind == "f":
            feed[name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            feed[name] = np.ones(shape, dtype=bool)
        elif "mask" in lname:
            feed[name] = np.ones(shape, dtype=dtype)
        elif "token_type" in lname:
            feed[name] = np.zeros(shape, dtype=dtype)
        elif "position" in lname and shape:
            # Random position ids would index past the position table.
            feed[name] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
        else:
            high = min(int_high, int(np.iinfo(dtype).max))
            feed[name] = rng.integers(0, high, size=shape, dtype=dtype, endpoint=False)
    return feed
