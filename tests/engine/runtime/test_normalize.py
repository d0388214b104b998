"""Old-ecosystem ONNX files (IR 3 with initializers as graph inputs, weights from constant
subgraphs, ``gpu_0/data_0`` and ``:0`` names): the normalisation step, and every technique
through the pipeline on them, each artifact run in onnxruntime with the parent's shapes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.engine import pipeline
from app.engine.base import Context
from app.engine.data.datasets import load_dataset
from app.engine.measure.benchmark import Benchmark, BenchmarkParams
from app.engine.prune.structured import PruneStructured, PruneStructuredParams
from app.engine.quantize.dynamic import QuantizeDynamic, QuantizeDynamicParams
from app.engine.quantize.fp16 import QuantizeFp16, QuantizeFp16Params
from app.engine.quantize.int4 import QuantizeInt4, QuantizeInt4Params
from app.engine.quantize.static import QuantizeStatic, QuantizeStaticParams
from app.engine.runtime.model_info import inspect_onnx
from app.engine.runtime.normalize import normalize_onnx, normalized
from tests.support.legacy import CLASSES, IMAGE, VARIANTS, legacy_feed, legacy_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MEASURE = dict(batch_sizes=[1, 2], warmup=1, min_runs=3, max_runs=10, min_seconds=0.0,
               max_seconds=0.5)
TECHNIQUES = {
    "benchmark": (Benchmark, BenchmarkParams),
    "quantize.dynamic": (QuantizeDynamic, QuantizeDynamicParams),
    "quantize.static": (QuantizeStatic, QuantizeStaticParams),
    "quantize.fp16": (QuantizeFp16, QuantizeFp16Params),
    "quantize.int4": (QuantizeInt4, QuantizeInt4Params),
    "prune.structured": (PruneStructured, PruneStructuredParams),
}


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    d = tmp_path_factory.mktemp("legacy")
    out = {}
    for variant, (name, _, fixed) in VARIANTS.items():
        data = np.random.default_rng(0).standard_normal((16, *IMAGE)).astype(np.float32)
        np.savez(d / f"{variant}.npz", **{name: data})
        out[variant] = legacy_model(variant, d), d / f"{variant}.npz"
    return out


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_normalised_copy_keeps_names_and_outputs(legacy, tmp_path, variant):
    src, _ = legacy[variant]
    name = VARIANTS[variant][0]
    info = normalize_onnx(str(src), str(tmp_path / "n.onnx"))
    assert info["changed"] and info["ir_version"] == {"original": 3, "used": 4}
    model = onnx.load(str(tmp_path / "n.onnx"))
    assert [i.name for i in model.graph.input] == [name]
    weights = {t.name for t in model.graph.initializer}
    assert {"conv1_w_0", "conv2_w_0", "conv3_w_0"} <= weights  # consumers' names, kept
    assert {n.op_type for n in model.graph.node} == {"Conv", "Relu", "GlobalAveragePool",
                                                     "Flatten", "Gemm", "Softmax"}
    if variant == "constant_weights":
        assert info["folded"] == ["conv1_w_0"] and info["constants_to_initializers"] == 5
        assert not any(w.endswith(("__SHAPE", "__DELTA")) for w in weights)
    feed = legacy_feed(variant)
    np.testing.assert_array_equal(_run(tmp_path / "n.onnx", feed)[0], _run(src, feed)[0])
    assert not normalize_onnx(str(tmp_path / "n.onnx"), str(tmp_path / "again.onnx"))["changed"]


def test_modern_exports_are_left_as_they_are(models, tmp_path):
    for key in ("cnn", "tokens", "odd_names"):
        path, info = normalized(models[key], tmp_path, 60)
        assert (path, info) == (models[key], None)
    assert not (tmp_path / "input-normalized.onnx").exists()


def test_shape_constants_stay_and_huge_folds_are_refused(tmp_path):
    """A Constant feeding a Reshape is fine as it is; a ConstantOfShape that would allocate
    2**40 elements stays a subgraph (and the fold returns at once)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    huge = numpy_helper.from_array(np.array([1 << 20, 1 << 20], dtype=np.int64), "huge_shape")
    graph = helper.make_graph([
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array([-1, 2, 2], dtype=np.int64))),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("ConstantOfShape", ["huge_shape"], ["big"]),
        helper.make_node("Add", ["big", "x"], ["z"]),
    ], "g", [x], [y, z], [huge])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "m.onnx")
    info = normalize_onnx(str(tmp_path / "m.onnx"), str(tmp_path / "n.onnx"))
    assert info["changed"] is False and not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inputs_and_datasets_name_only_real_inputs(legacy, variant):
    src, dataset = legacy[variant]
    name = VARIANTS[variant][0]
    specs = inspect_onnx(src)["inputs"]
    assert [s["name"] for s in specs] == [name]  # the upload's record: no weights to feed
    assert list(load_dataset(dataset, specs)) == [name]  # '/' and ':' survive .npz names


@pytest.mark.parametrize("variant", ["constant_weights", "tf_names"])
@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_every_technique_runs_on_legacy_models(legacy, tmp_path, variant, technique):
    src, dataset = legacy[variant]
    cls, params_cls = TECHNIQUES[technique]
    params = params_cls(**MEASURE)
    ctx = Context(model_path=src, params=params, workdir=tmp_path,
                  dataset_path=dataset if cls.needs_dataset else None)
    [result] = pipeline.run([pipeline.Step(cls, params)], ctx, tmp_path, lambda f, s: None)
    normalization = result.report["normalization"]
    assert "IR version 3 -> 4" in normalization["changes"]
    if not cls.produces_model:
        return
    feed = legacy_feed(variant, batch=2)
    want = _run(src, feed)
    got = _run(result.output_path, feed)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert want[0].shape[-1] == CLASSES
    if technique.startswith("quantize."):
        [fidelity] = result.report["fidelity"]["outputs"].values()
        assert fidelity["cosine_mean"] > 0.9
    else:
        assert result.report["verification"]["output_shapes_match_parent"]
