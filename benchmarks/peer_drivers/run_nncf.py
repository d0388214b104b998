"""NNCF + OpenVINO: the ONNX file converted to OpenVINO, then ``quantize_with_accuracy_control``
(calibration and validation on the tuning set, the same tolerance as an absolute drop of the
validation metric: mean cosine vs FP32 for MiniLM, top-1 for the CNN). Saved as OpenVINO IR."""

from pathlib import Path

import nncf
import numpy as np
import openvino as ov
from peer_common import done, job, samples, score, tuning

j = job()
feeds, labels = tuning(j)
model = ov.convert_model(j["onnx"])
items = samples(feeds)
compiled = ov.Core().compile_model(model, "CPU")
reference = np.concatenate([np.array(compiled(item)[0]) for item in items])
minilm = labels is None


def validate(compiled_model, data) -> float:
    outputs = np.concatenate([np.array(compiled_model(item)[0]) for item in data])
    value = score(outputs, reference, labels)
    return value if minilm else value / 100.0


quantized = nncf.quantize_with_accuracy_control(
    model, nncf.Dataset(items), nncf.Dataset(items), validate,
    max_drop=(1.0 - j["min_cosine"]) if minilm else j["max_drop_pt"] / 100.0, drop_type=nncf.DropType.ABSOLUTE,
    subset_size=len(items), model_type=nncf.ModelType.TRANSFORMER if minilm else None)
out = Path(j["out"], "model.xml")
ov.save_model(quantized, str(out), compress_to_fp16=False)
done(j, out, runtime="openvino")
