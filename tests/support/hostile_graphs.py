"""Small ONNX files that are cheap to store and expensive to analyse (issue 9, section 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def nested_if(depth: int) -> onnx.ModelProto:
    """``depth`` nested ``If`` nodes (each then-branch holds the next), a few KB at depth 30.
    onnxruntime's symbolic shape inference takes ~2 s at depth 10, ~20 s at 14, and does not
    finish at 30; the model itself is valid and runs (X -> Relu -> Y, float32 weights)."""

    def info(name: str):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4])

    def leaf(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Relu", ["X"], [f"{name}_y"])], name, [],
                                 [info(f"{name}_y")])

    def body(level: int, name: str) -> onnx.GraphProto:
        if level == 0:
            return leaf(name)
        cond = helper.make_node("Constant", [], [f"{name}_c"],
                                value=helper.make_tensor(f"{name}_cv", TensorProto.BOOL, [], [True]))
        branch = helper.make_node("If", [f"{name}_c"], [f"{name}_y"],
                                  then_branch=body(level - 1, f"{name}t"), else_branch=leaf(f"{name}e"))
        return helper.make_graph([cond, branch], name, [], [info(f"{name}_y")])

    top = body(depth, "g")
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    out = helper.make_node("MatMul", ["g_y", "W"], ["Y"])
    graph = helper.make_graph([*top.node, out], "nested_if", [info("X")], [info("Y")], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def save_nested_if(depth: int, path: Path) -> Path:
    onnx.save(nested_if(depth), str(path))
    return path
