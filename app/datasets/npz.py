"""Validate an ``.npz`` dataset by reading array headers only, never the data, never pickles.

Each member's header gives its dtype and shape, so a dataset's total unpacked size is known
before anything is decompressed (a zip bomb is refused up front).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import InvalidDataset, UnsupportedFormat

NUMERIC_KINDS = "biuf"  # bool, signed int, unsigned int, float


def inspect_npz(path: Path, max_unpacked: int) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):
        raise UnsupportedFormat("A dataset must be an .npz file (numpy.savez or savez_compressed).")
    arrays: dict[str, dict[str, Any]] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise InvalidDataset(f"Member {info.filename!r} is not a .npy array.")
                name = info.filename[:-4]
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _fortran, dtype = read(f, max_header_size=10000)
                if dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
                    raise InvalidDataset(f"Array {name!r} has dtype {dtype}; only numeric arrays (bool, int, uint, float) are accepted.")
                if len(shape) == 0:
                    raise InvalidDataset(f"Array {name!r} is a scalar; every array needs a first (sample) dimension.")
                if any(d < 0 for d in shape):
                    raise InvalidDataset(f"Array {name!r} declares a negative dimension in its shape {_short(shape)}.")
                # Python ints: exact at any size (numpy's int64 product wraps, e.g. 2**33 x 2**31 to 0).
                total += math.prod(shape) * dtype.itemsize
                if total > max_unpacked:
                    raise InvalidDataset(f"Array {name!r} (shape {_short(shape)}) takes the arrays past the limit "
                                         f"of {max_unpacked} bytes unpacked.")
                arrays[name] = {"shape": [int(d) for d in shape], "dtype": str(dtype)}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise InvalidDataset(f"The .npz file could not be read: {exc}.") from None
    if not arrays:
        raise InvalidDataset("The .npz file holds no arrays.")
    counts = {name: a["shape"][0] for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise InvalidDataset(f"Every array must have the same first dimension (samples); got {counts}.")
    num_samples = next(iter(counts.values()))
    if num_samples == 0:
        raise InvalidDataset("The dataset has no samples.")
    return {"arrays": arrays, "num_samples": num_samples}


def _short(shape: tuple[int, ...]) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 200 else text[:200] + "...)"
