"""onnxruntime static quantization: calibration from the job's dataset, then QDQ or QOperator.

Calibration ranges are cached in the stage's scratch directory, so quantize.auto can quantize
many node subsets of one model while calibrating once. onnxruntime is imported inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.engine.ort_quant import Staged, run_quantizer
from app.engine.registry import DatasetMismatch

# Static QDQ with per-channel weights needs opset 13 (per-axis QuantizeLinear).
STATIC_MIN_OPSET = 13
CALIBRATION_BATCH = 16


def default_static_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    return list(QDQRegistry)


def calibration_reader(feeds: Any, specs: list[dict], samples: int) -> Any:
    """An onnxruntime CalibrationDataReader over the first ``samples`` dataset samples."""
    from onnxruntime.quantization import CalibrationDataReader

    if feeds.what != "dataset":
        raise DatasetMismatch("static quantization calibrates activation ranges on real "
                              "inputs: add a dataset_id to the job")
    total = min(samples, feeds.samples(specs))
    fixed = next((s["shape"][0] for s in specs
                  if s["shape"] and isinstance(s["shape"][0], int) and s["shape"][0] > 0), None)
    step = fixed or CALIBRATION_BATCH

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, total, step))

        def get_next(self) -> dict | None:
            start = next(self.starts, None)
            if start is None:
                return None
            return feeds(specs, fixed or min(step, total - start), start)

    return Reader()


def static(stage: Staged, dst: Path, *, reader: Any, calibration: str, per_channel: bool,
           fmt: str, activation_type: str, weight_type: str, reduce_range: bool,
           op_types: list[str] | None, exclude: Sequence[str] = (),
           only: Sequence[str] | None = None) -> None:
    """Static quantization of the staged model into ``dst``; the first call calibrates (with
    ``reader``) and caches the ranges per calibration method in the stage's scratch dir."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration]
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    cache = stage.scratch / f"calibration-{calibration}-{'-'.join(op_types or ['all'])}.json"
    extra = {"ActivationSymmetric": activation_type == "int8", "WeightSymmetric": True}
    if calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    run_quantizer(stage, dst, "static",
         "try calibration='minmax', per_channel=false, format='qoperator', preprocess=false, "
         "or exclude_op_types for the ops it fails on",
         lambda: quantize_static(
             stage.path, dst, calibration_data_reader=None if cache.exists() else reader,
             quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
             op_types_to_quantize=op_types, per_channel=per_channel, reduce_range=reduce_range,
             activation_type=types[activation_type], weight_type=types[weight_type],
             nodes_to_exclude=list(exclude), nodes_to_quantize=list(only) if only else None,
             calibrate_method=method, extra_options=extra, calibration_cache_path=cache))
