"""Plain ONNX Runtime recipes: quantize_dynamic per-tensor / per-channel, static QDQ QUInt8."""

from pathlib import Path

from peer_common import Reader, done, job, tuning
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

j = job()
note = ""
out = Path(j["out"], "model.onnx")
recipe = j["recipe"]
if recipe.startswith("dynamic"):
    quantize_dynamic(j["onnx"], out, weight_type=QuantType.QInt8, per_channel=recipe.endswith("per-channel"))
else:  # static-qdq-u8[-per-channel]: the documented recipe, pre-processing first
    pre = Path(j["out"], "pre.onnx")
    try:
        quant_pre_process(j["onnx"], str(pre))
    except Exception as exc:  # noqa: BLE001 - e.g. "Incomplete symbolic shape inference" on MiniLM
        note = f"pre-processing without symbolic shape inference ({exc})"
        quant_pre_process(j["onnx"], str(pre), skip_symbolic_shape=True)
    feeds, _ = tuning(j)

    class Calibration(Reader, CalibrationDataReader):
        pass

    quantize_static(str(pre), str(out), Calibration(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=recipe.endswith("per-channel"))
    pre.unlink()
done(j, out, note=note)
