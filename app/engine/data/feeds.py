"""One place that decides where a technique's inputs come from: the dataset when the job has
one, generated inputs otherwise. Techniques call it; they never build feeds themselves, so a
parent and its derived model always see identical inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.engine.data.datasets import dataset_feed, dataset_samples, load_dataset
from app.engine.runtime.inputs import Spec, generate_feed, resolved_dims
from app.engine.params import MeasureParams
from app.engine.errors import InvalidParams


class FeedSource:
    """Callable ``(specs, batch, start=0) -> feed``. ``start`` selects dataset samples
    start..start+batch, or, for generated inputs, a different seed per batch."""

    def __init__(self, params: MeasureParams, dataset_path: Path | None) -> None:
        self.params = params
        self.dataset_path = dataset_path
        self.what = "dataset" if dataset_path is not None else "generated"
        self._arrays: Mapping[str, Any] | None = None
        self._dims_checked = False

    def __getstate__(self) -> dict[str, Any]:
        # Sent to a native step's child process (isolate.run_bounded): it reloads the arrays
        # from the file rather than receiving a copy of them through a pipe.
        return {**self.__dict__, "_arrays": None}

    def _check_dims(self, specs: Sequence[Spec]) -> None:
        # A typo in a dim name would otherwise silently measure default_dim instead.
        known = resolved_dims(specs, {}, 0)
        unknown = sorted(set(self.params.dims) - set(known))
        if unknown:
            raise InvalidParams(
                f"dims {unknown} do not name a symbolic input dimension of this model; its "
                f"symbolic dimensions are {sorted(known) or 'none'} (the batch dimension is "
                "set by batch_sizes)",
            )
        self._dims_checked = True

    def arrays(self, specs: Sequence[Spec]) -> Mapping[str, Any]:
        # Loaded once, on first use, because validation needs the session's input specs.
        if self._arrays is None:
            assert self.dataset_path is not None
            self._arrays = load_dataset(self.dataset_path, specs)
        return self._arrays

    def __call__(self, specs: Sequence[Spec], batch: int, start: int = 0) -> dict[str, Any]:
        if self.dataset_path is not None:
            return dataset_feed(self.arrays(specs), batch, start)
        p = self.params
        if not self._dims_checked:
            self._check_dims(specs)
        return generate_feed(specs, batch, dims=p.dims, default_dim=p.default_dim,
                             int_high=p.int_high, seed=p.seed + start)

    def samples(self, specs: Sequence[Spec]) -> int | None:
        """Dataset size, or None for generated inputs (unbounded)."""
        return dataset_samples(self.arrays(specs)) if self.dataset_path is not None else None

    def describe(self, specs: Sequence[Spec]) -> dict[str, Any]:
        """The report's ``inputs`` section: where inputs came from and how shapes resolved."""
        info: dict[str, Any] = {"source": self.what, "specs": [dict(s) for s in specs]}
        if self.dataset_path is not None:
            info["dataset_samples"] = self.samples(specs)
        else:
            info["dims"] = resolved_dims(specs, self.params.dims, self.params.default_dim)
        return info
