"""onnxruntime static quantization: calibration from the job's dataset, then QDQ or QOperator.

Calibration ranges are cached in the stage's scratch directory, so quantize.auto can quantize
many node subsets of one model while calibrating once. onnxruntime is imported inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.quantize.ort_tools import Staged, run_quantizer
from app.engine.errors import DatasetMismatch

# Static QDQ with per-channel weights needs opset 13 (per-axis QuantizeLinear).
STATIC_MIN_OPSET = 13
CALIBRATION_BATCH = 16


def default_static_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    return list(QDQRegistry)


def calibration_reader(feeds: Any, specs: list[dict], samples: int) -> Calibration:
    """What onnxruntime's CalibrationDataReader reads: the first ``samples`` dataset samples.
    A plain picklable description (the quantizer runs in a child process, see isolate); the
    reader itself is built there."""
    if feeds.what != "dataset":
        raise DatasetMismatch("static quantization calibrates activation ranges on real "
                              "inputs: add a dataset_id to the job")
    total = min(samples, feeds.samples(specs))
    fixed = next((s["shape"][0] for s in specs
                  if s["shape"] and isinstance(s["shape"][0], int) and s["shape"][0] > 0), None)
    return Calibration(feeds, specs, total, fixed)


@dataclass(frozen=True)
class Calibration:
    feeds: Any
    specs: list[dict]
    total: int
    fixed: int | None  # the model's fixed batch size, if it has one

    def reader(self) -> Any:
        from onnxruntime.quantization import CalibrationDataReader

        cal, step = self, self.fixed or CALIBRATION_BATCH

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.starts = iter(range(0, cal.total, step))

            def get_next(self) -> dict | None:
                start = next(self.starts, None)
                if start is None:
                    return None
                return cal.feeds(cal.specs, cal.fixed or min(step, cal.total - start), start)

        return Reader()


def static(stage: Staged, dst: Path, *, reader: Calibration, calibration: str, per_channel: bool,
           fmt: str, activation_type: str, weight_type: str, reduce_range: bool,
           op_types: list[str] | None, exclude: Sequence[str] = (),
           only: Sequence[str] | None = None) -> None:
    """Static quantization of the staged model into ``dst``; the first call calibrates (with
    ``reader``) and caches the ranges per calibration method in the stage's scratch dir."""
    cache = stage.scratch / f"calibration-{calibration}-{'-'.join(op_types or ['all'])}.json"
    run_quantizer(stage, dst, "static",
         "try calibration='minmax', per_channel=false, format='qoperator', preprocess=false, "
         "or exclude_op_types for the ops it fails on",
         _quantize_static, stage.path, dst, reader=None if cache.exists() else reader,
         cache=cache, calibration=calibration, per_channel=per_channel, fmt=fmt,
         activation_type=activation_type, weight_type=weight_type, reduce_range=reduce_range,
         op_types=op_types, exclude=list(exclude), only=list(only) if only else None)


def _quantize_static(src: Path, dst: Path, *, reader: Calibration | None, cache: Path,
                     calibration: str, per_channel: bool, fmt: str, activation_type: str,
                     weight_type: str, reduce_range: bool, op_types: list[str] | None,
                     exclude: list[str], only: list[str] | None) -> None:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration]
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    extra = {"ActivationSymmetric": activation_type == "int8", "WeightSymmetric": True}
    if calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    quantize_static(
        src, dst, calibration_data_reader=reader.reader() if reader else None,
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=op_types, per_channel=per_channel, reduce_range=reduce_range,
        activation_type=types[activation_type], weight_type=types[weight_type],
        nodes_to_exclude=exclude, nodes_to_quantize=only,
        calibrate_method=method, extra_options=extra, calibration_cache_path=cache)
