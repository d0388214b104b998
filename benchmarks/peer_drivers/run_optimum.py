"""Optimum (optimum-onnx): ORTQuantizer with its avx2 / avx512_vnni per-channel configs, and
ORTOptimizer (O2 fusions) followed by the avx2 quantizer. Dynamic for MiniLM; static (minmax
calibration on the tuning set) for the CNN, where dynamic ConvInteger is the slow path."""

import shutil
from pathlib import Path

from peer_common import done, job, tuning
from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer, ORTQuantizer
from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig


def typed(path: Path) -> None:
    """The fused graph's MatMul outputs declared float: ORT's quantizer cannot infer types past
    the com.microsoft fused ops and asks for extra_options DefaultTensorType=FLOAT, which
    ORTQuantizer does not pass through. Without this, optimize + quantize fails on MiniLM."""
    import onnx

    model = onnx.load(str(path))
    known = {v.name for v in [*model.graph.value_info, *model.graph.output]}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.output[0] not in known:
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))


j = job()
out = Path(j["out"])
source = Path(j["model_dir"])
arch = j["recipe"].split("-")[0]
static = j["model"] == "cnn"
if arch.startswith("O2+"):
    arch = arch[3:]
    optimizer = ORTOptimizer.from_pretrained(source, file_names=["model.onnx"])
    optimizer.optimize(AutoOptimizationConfig.O2(), out / "optimized")
    source = out / "optimized"
    shutil.copyfile(Path(j["model_dir"]) / "config.json", source / "config.json")
    file_name = "model_optimized.onnx"
    typed(source / file_name)
else:
    file_name = "model.onnx"
quantizer = ORTQuantizer.from_pretrained(source, file_name=file_name)
qconfig = getattr(AutoQuantizationConfig, arch)(is_static=static, per_channel=True)
ranges = None
if static:
    from datasets import Dataset

    feeds, _ = tuning(j)
    dataset = Dataset.from_dict({k: list(v) for k, v in feeds.items()}).with_format("numpy")
    ranges = quantizer.fit(dataset, AutoCalibrationConfig.minmax(dataset), onnx_augmented_model_name=out / "augmented.onnx",
                           operators_to_quantize=qconfig.operators_to_quantize)
path = quantizer.quantize(qconfig, out / "quantized", calibration_tensors_range=ranges)
path = Path(path)
done(j, path if path.suffix == ".onnx" else next(path.glob("*.onnx")))
