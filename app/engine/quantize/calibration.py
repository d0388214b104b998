"""onnxruntime static quantization: calibration from the job's dataset, then QDQ or QOperator.

Calibration ranges are cached in the stage's scratch directory, so quantize.auto can quantize
many node subsets of one model while calibrating once. onnxruntime is imported inside.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.calibrate import (HistogramCalibrater, HistogramCollector, TensorData,
                                                create_calibrator, save_tensors_data)
from onnxruntime.quantization.registry import QDQRegistry

from app.engine.quantize.ort_tools import Staged, run_quantizer
from app.engine.errors import DatasetMismatch
from app.engine.quantize.smooth import integer_w8a8, static_w8a8

# Static QDQ with per-channel weights needs opset 13 (per-axis QuantizeLinear).
STATIC_MIN_OPSET = 13
CALIBRATION_BATCH = 16


def default_static_op_types() -> list[str]:
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
           only: Sequence[str] | None = None) -> list[str]:
    """Static quantization of the staged model into ``dst``; the first call calibrates (with
    ``reader``) and caches the ranges per calibration method in the stage's scratch dir.
    Returns the nodes left in float because they carry attention-mask values (see ``masked``)."""
    cache = stage.scratch / f"calibration-{calibration}-{'-'.join(op_types or ['all'])}.json"
    return run_quantizer(stage, dst, "static",
         "try calibration='minmax', per_channel=false, format='qoperator', preprocess=false, "
         "or exclude_op_types for the ops it fails on",
         _quantize_static, stage.path, dst, reader=None if cache.exists() else reader,
         cache=cache, calibration=calibration, per_channel=per_channel, fmt=fmt,
         activation_type=activation_type, weight_type=weight_type, reduce_range=reduce_range,
         op_types=op_types, exclude=list(exclude), only=list(only) if only else None)


def smooth_static(stage: Staged, dst: Path, *, reader: Calibration, alpha: float | None,
                  mask_padding: bool, per_channel: bool, fmt: str, op_types: list[str],
                  exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The transformer recipe (SmoothQuant with ``alpha``, padding left out of the ranges with
    ``mask_padding``) on the staged model, in the killable child: ``smooth.integer_w8a8`` for
    ``fmt`` "integer", else ``smooth.static_w8a8`` (onnxruntime's quantizer)."""
    return run_quantizer(stage, dst, "static",
         "try without smooth_alpha and mask_padding, or exclude_op_types for the ops it fails on",
         _smooth_static, stage.path, dst, reader=reader, alpha=alpha, mask_padding=mask_padding,
         per_channel=per_channel, fmt=fmt, op_types=list(op_types), exclude=list(exclude))


def _smooth_static(src: Path, dst: Path, *, reader: Calibration, alpha: float | None,
                   mask_padding: bool, per_channel: bool, fmt: str, op_types: list[str],
                   exclude: list[str]) -> dict[str, Any]:
    feeds = list(iter(reader.reader().get_next, None))
    if fmt == "integer":
        return integer_w8a8(src, dst, feeds, alpha=alpha, mask_padding=mask_padding, exclude=exclude)
    return static_w8a8(src, dst, feeds, alpha=alpha, mask_padding=mask_padding,
                       per_channel=per_channel, fmt=fmt, op_types=op_types, exclude=exclude)


# |x| at or above this is no activation but an attention mask's "minus infinity" (-inf, or
# torch.finfo(float32).min that transformers add to masked scores): such values would stretch a
# tensor's range over 1e38 (minmax: a useless scale; entropy/percentile: numpy refuses to bin it).
MASK_MAGNITUDE = 1e30


def _quantize_static(src: Path, dst: Path, *, reader: Calibration | None, cache: Path,
                     calibration: str, per_channel: bool, fmt: str, activation_type: str,
                     weight_type: str, reduce_range: bool, op_types: list[str] | None,
                     exclude: list[str], only: list[str] | None) -> list[str]:
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration]
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    extra = {"ActivationSymmetric": activation_type == "int8", "WeightSymmetric": True}
    calib_extra = {}
    if calibration == "percentile":
        extra["CalibPercentile"] = calib_extra["percentile"] = 99.999
    masked_file = cache.with_suffix(".masked.json")
    if reader is not None:
        masked = _calibrate(src, reader, method, op_types, calib_extra, cache)
        masked_file.write_text(json.dumps(masked))
    masked = json.loads(masked_file.read_text()) if masked_file.exists() else []
    floating = _touching(src, set(masked))
    quantize_static(
        src, dst, calibration_data_reader=None,
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=op_types, per_channel=per_channel, reduce_range=reduce_range,
        activation_type=types[activation_type], weight_type=types[weight_type],
        nodes_to_exclude=sorted(set(exclude) | set(floating)), nodes_to_quantize=only,
        calibrate_method=method, extra_options=extra, calibration_cache_path=cache)
    return floating


def _calibrate(src: Path, reader: Calibration, method: Any, op_types: list[str] | None,
               extra: dict, cache: Path) -> list[str]:
    """onnxruntime's calibration, written to ``cache``, minus attention-mask values: returns the
    tensors that held values beyond MASK_MAGNITUDE. Histogram methods see only their finite
    values; every such tensor's range is clipped (its nodes stay float, see ``_touching``)."""
    masked: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="calibration-", dir=".") as tmp:
        calibrator = create_calibrator(src, op_types, calibrate_method=method,
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       extra_options=extra)
        if isinstance(calibrator, HistogramCalibrater):
            collector = HistogramCollector(
                method=calibrator.method, symmetric=calibrator.symmetric,
                num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                percentile=calibrator.percentile, scenario=calibrator.scenario)
            collect = collector.collect

            def finite_only(name_to_arr: dict) -> Any:
                clean = {}
                for name, arrays in name_to_arr.items():
                    flat = np.concatenate([np.asarray(a).ravel() for a in arrays])
                    keep = np.isfinite(flat) & (np.abs(flat) < MASK_MAGNITUDE)
                    if not keep.all():
                        masked.add(name)
                        flat = flat[keep] if keep.any() else np.zeros(1, flat.dtype)
                    clean[name] = [flat]
                return collect(clean)

            collector.collect = finite_only
            calibrator.collector = collector
        calibrator.collect_data(reader.reader())
        ranges = calibrator.compute_data()
        del calibrator
    for name in ranges:
        low, high = (np.asarray(v) for v in ranges[name].range_value)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))
                and np.all(np.abs(low) < MASK_MAGNITUDE) and np.all(np.abs(high) < MASK_MAGNITUDE)):
            masked.add(name)
            ranges.data[name] = TensorData(
                lowest=np.clip(np.nan_to_num(low), -MASK_MAGNITUDE, 0).astype(low.dtype),
                highest=np.clip(np.nan_to_num(high), 0, MASK_MAGNITUDE).astype(high.dtype))
    save_tensors_data(ranges, cache)
    return sorted(masked)


def _touching(src: Path, tensors: set[str]) -> list[str]:
    """Nodes producing or reading any of ``tensors``: quantizing them would clip the mask (a
    masked position would get attention weight), so they stay float."""
    if not tensors:
        return []
    graph = onnx.load(str(src), load_external_data=False).graph
    return sorted(n.name for n in graph.node
                  if n.name and tensors & (set(n.input) | set(n.output)))
