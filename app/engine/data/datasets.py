"""Feeds from a user dataset: an .npz with one array per model input, samples on axis 0.

Arrays are named exactly like the model inputs; other arrays (e.g. ``labels``) are ignored.
numpy is imported inside functions (technique modules import this module; the API must not
load numpy through them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.engine.runtime.inputs import MAX_FEED_BYTES, Spec, numpy_dtype, check_feed_bytes
from app.engine.errors import DatasetMismatch

# Arrays are checked from their .npy headers before being read, so a small compressed .npz
# cannot expand into unbounded memory on the worker.
MAX_DATASET_BYTES = 4 * 1024**3


def load_dataset(path: str | Path, specs: Sequence[Spec]) -> dict[str, Any]:
    """Read and validate the arrays for ``specs``; cast them to the model's dtypes when safe."""
    import numpy as np

    try:
        npz = np.load(str(path), allow_pickle=False)
    except Exception:
        raise DatasetMismatch(
            "the dataset is not a readable .npz file; save it with "
            "numpy.savez(path, **{input_name: array, ...})"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetMismatch(
            "the dataset is a single .npy array; save an .npz with one array per model input "
            "(numpy.savez(path, **{input_name: array, ...}))"
        )
    with npz:
        present = list(npz.files)
        missing = [s["name"] for s in specs if s["name"] not in present]
        if missing:
            raise DatasetMismatch(
                f"the dataset has no array for model input(s) {missing}; it contains "
                f"{present}. Name each array exactly like the model input it feeds"
            )
        total = sum(_declared_bytes(npz, s["name"]) for s in specs)
        if total > MAX_DATASET_BYTES:
            raise DatasetMismatch(
                f"the dataset's input arrays take {total / 2**30:.1f} GiB uncompressed, more "
                f"than the {MAX_DATASET_BYTES / 2**30:.0f} GiB limit; upload fewer samples"
            )
        try:
            arrays = {s["name"]: npz[s["name"]] for s in specs}
        except ValueError:  # object arrays need pickle, which is refused
            raise DatasetMismatch(
                "the dataset contains object (pickled) arrays; store plain numeric arrays"
            ) from None
    _check_shapes(arrays, specs)
    return {s["name"]: _cast(arrays[s["name"]], numpy_dtype(s), s["name"]) for s in specs}


def dataset_samples(arrays: Mapping[str, Any]) -> int:
    """Number of samples (length of axis 0; 1 for a model with only scalar inputs)."""
    lengths = {a.shape[0] for a in arrays.values() if a.ndim > 0}
    return lengths.pop() if lengths else 1


def dataset_feed(
    arrays: Mapping[str, Any], batch: int, start: int = 0, max_bytes: int = MAX_FEED_BYTES
) -> dict[str, Any]:
    """Samples start..start+batch, wrapping around (tiling) when the dataset is smaller."""
    import numpy as np

    n = dataset_samples(arrays)
    shapes = {k: (batch, *a.shape[1:]) if a.ndim else () for k, a in arrays.items()}
    check_feed_bytes(shapes, {k: a.itemsize for k, a in arrays.items()}, batch, max_bytes)
    index = (start + np.arange(batch)) % n
    return {
        k: np.ascontiguousarray(np.take(a, index, axis=0)) if a.ndim else a
        for k, a in arrays.items()
    }


def _declared_bytes(npz: Any, name: str) -> int:
    import numpy as np

    fmt = np.lib.format
    member = name + ".npy" if name + ".npy" in npz.zip.namelist() else name
    with npz.zip.open(member) as fp:
        major, _ = fmt.read_magic(fp)
        reader = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, _, dtype = reader(fp)
    count = 1
    for d in shape:
        count *= int(d)
    return count * dtype.itemsize


def _check_shapes(arrays: Mapping[str, Any], specs: Sequence[Spec]) -> None:
    bound: dict[str, tuple[int, str]] = {}  # symbol -> (value, input that fixed it)
    lengths: dict[str, int] = {}
    for s in specs:
        name, arr, shape = s["name"], arrays[s["name"]], s["shape"]
        if shape is not None and arr.ndim != len(shape):
            raise DatasetMismatch(
                f"array {name!r} has shape {list(arr.shape)} but the model input has rank "
                f"{len(shape)} ({shape}); axis 0 must be the sample axis"
            )
        if arr.ndim:
            if arr.shape[0] == 0:
                raise DatasetMismatch(f"array {name!r} has no samples (axis 0 is empty)")
            lengths[name] = arr.shape[0]
        for axis, want in list(enumerate(shape or []))[1:]:
            got = arr.shape[axis]
            if isinstance(want, int) and want > 0 and got != want:
                raise DatasetMismatch(
                    f"array {name!r} has {got} on axis {axis} but the model input expects "
                    f"{want} (input shape {shape})"
                )
            if isinstance(want, str):
                value, owner = bound.setdefault(want, (got, name))
                if value != got:
                    raise DatasetMismatch(
                        f"dimension {want!r} is {value} in array {owner!r} but {got} in "
                        f"array {name!r}; arrays sharing a dimension name must agree"
                    )
    if len(set(lengths.values())) > 1:
        raise DatasetMismatch(f"arrays have different sample counts on axis 0: {lengths}")


def _cast(arr: Any, dtype: Any, name: str) -> Any:
    import numpy as np

    if arr.dtype == dtype:
        return arr
    src = arr.dtype.kind
    ok = (dtype.kind == "f" and src in "fiub") or (dtype.kind in "iu" and src in "iub")
    if dtype.kind in "iu" and ok and arr.size:
        info = np.iinfo(dtype)
        ok = info.min <= arr.min() and arr.max() <= info.max  # narrowing must not wrap
    if dtype.kind == "b":
        ok = src in "iu" and bool(np.isin(arr, (0, 1)).all())
    if not ok:
        raise DatasetMismatch(
            f"array {name!r} has dtype {arr.dtype} which cannot be safely converted to the "
            f"model input's {dtype}; store it as {dtype}"
        )
    return arr.astype(dtype)


def load_labels(path: str | Path, samples: int) -> Any | None:
    """The dataset's optional ``labels`` array (one label or target row per sample), or None."""
    import numpy as np

    with np.load(str(path), allow_pickle=False) as npz:
        if "labels" not in npz.files:
            return None
        try:
            labels = npz["labels"]
        except ValueError:
            raise DatasetMismatch("the dataset's 'labels' array is an object (pickled) array; "
                                  "store plain integer classes or float targets") from None
    if labels.ndim == 0 or labels.shape[0] != samples:
        raise DatasetMismatch(
            f"the dataset's 'labels' array has shape {list(labels.shape)} but the inputs have "
            f"{samples} samples; store one label (or target row) per sample on axis 0"
        )
    if labels.dtype.kind not in "iubf":
        raise DatasetMismatch(f"the dataset's 'labels' have dtype {labels.dtype}; store "
                              "integer classes or float regression targets")
    return labels
