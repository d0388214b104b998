"""When quantize.auto's staging skips graph optimisation, and that skipping it changes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from app.engine.quantize import ort_tools
from app.engine.quantize.ort_tools import needs_graph_optimisation


def _export(net: torch.nn.Module, x: torch.Tensor, path, **kw):
    torch.onnx.export(net.eval(), (x,), str(path), input_names=["x"], dynamo=False, **kw)
    return path


def test_weights_as_initializers_need_nothing(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    assert needs_graph_optimisation(_export(net, torch.randn(2, 8), tmp_path / "mlp.onnx")) is None


def test_batchnorm_to_fold_needs_it(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    path = _export(net, torch.randn(1, 3, 8, 8), tmp_path / "cnn.onnx", do_constant_folding=False,
                   training=torch.onnx.TrainingMode.PRESERVE)
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    assert needs_graph_optimisation(path) == "BatchNormalization to fold"


def test_a_weight_computed_by_a_node_needs_it(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], name="tied"),
         helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    path = tmp_path / "tied.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert needs_graph_optimisation(path) == "a weight computed by Transpose 'tied'"


def test_staging_skips_it_only_where_it_changes_nothing(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    src = _export(net, torch.randn(2, 8), tmp_path / "mlp.onnx", dynamic_axes={"x": {0: "b"}})
    x = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    outs = {}
    for shapes in (False, True):  # the search's light staging, and full pre-processing
        work = tmp_path / f"w{shapes}"
        work.mkdir()
        with ort_tools.staged(src, work, preprocess=True, min_opset=11, shapes=shapes) as stage:
            assert stage.preprocess.startswith("skipped") is (not shapes)
            dst = work / "q.onnx"
            ort_tools.dynamic(stage, dst, op_types=None, per_channel=True, reduce_range=False, weight_type="int8")
            outs[shapes] = ort.InferenceSession(str(dst)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(outs[False], outs[True])
