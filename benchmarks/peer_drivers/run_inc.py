"""Intel Neural Compressor (onnx-neural-compressor): ``autotune`` over its own static or dynamic
config set, with the same tolerance as everyone: an eval_fn scoring the tuning set (mean cosine
vs FP32 for MiniLM, top-1 % for the CNN) and ``tolerable_loss`` the equivalent relative loss.
autotune stops at the first config within tolerance (and exits 0 without a model when none is)."""

from pathlib import Path

import onnx
from onnx_neural_compressor.data_reader import CalibrationDataReader
from onnx_neural_compressor.quantization import config, tuning
from peer_common import Reader, done, job, ort_outputs, score
from peer_common import tuning as tuning_set

j = job()
feeds, labels = tuning_set(j)
reference = ort_outputs(j["onnx"], feeds)


def eval_fn(model_path: str) -> float:
    return score(ort_outputs(model_path, feeds), reference, labels)


if labels is None:
    tolerable = 1.0 - j["min_cosine"]                        # baseline cosine is 1.0
else:
    tolerable = j["max_drop_pt"] / score(reference, reference, labels)  # points -> relative loss


class Calibration(Reader, CalibrationDataReader):
    pass


kind = config.StaticQuantConfig if j["recipe"] == "autotune-static" else config.DynamicQuantConfig
tune = tuning.TuningConfig(config_set=kind.get_config_set_for_tuning(), tolerable_loss=tolerable)
best = tuning.autotune(j["onnx"], tune, eval_fn=eval_fn, calibration_data_reader=Calibration(feeds))
if best is not None:
    out = Path(j["out"], "model.onnx")
    onnx.save(best, str(out))
    done(j, out)
