"""ONNX files as the old ecosystem wrote them, made here from a tiny torch CNN.

Model-zoo files from the Caffe2/TF era differ from a modern export in ways that break tools
which only ever saw modern exports: IR version 3 (every initializer also listed as a graph
input), weights computed by small constant subgraphs (``Constant`` nodes, ``ConstantOfShape`` +
``Add``) instead of stored as initializers, and names like ``gpu_0/data_0`` or ``data_0:0``.
``legacy_model(variant)`` writes one such file; ``VARIANTS`` lists them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# variant -> (input name, output name, fixed batch?)
VARIANTS = {
    # IR 3, opset 9, initializers repeated in graph.input (Caffe2 model zoo).
    "ir3_initializer_inputs": ("gpu_0/data_0", "gpu_0/softmax_1", False),
    # Weights as Constant nodes and ConstantOfShape(<w>__SHAPE) + Add subgraphs, IR 3.
    "constant_weights": ("gpu_0/data_0", "gpu_0/softmax_1", False),
    # TensorFlow names with ":0", batch fixed at 1 as tf2onnx wrote it, IR 3.
    "tf_names": ("data_0:0", "prob:0", True),
}
IMAGE = (3, 8, 8)
CLASSES = 5


def _cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, CLASSES),
        torch.nn.Softmax(dim=1))


def _export_opset9(path: Path, inp: str, out: str, fixed: bool) -> None:
    import torch

    dynamic = {} if fixed else {inp: {0: "N"}, out: {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_cnn().eval(), (torch.randn(1, *IMAGE),), str(path), input_names=[inp],
                          output_names=[out], dynamic_axes=dynamic, opset_version=9,
                          dynamo=False, do_constant_folding=True)


def _weights_from_subgraphs(graph) -> None:
    """Turn the initializers into what old converters wrote: the first conv's weight as
    ConstantOfShape(<w>__SHAPE) + Add(<w>__DELTA) (its shape tensor an initializer), every
    other weight as a Constant node output. Consumers keep the weight's name."""
    from onnx import TensorProto, helper, numpy_helper

    inits = list(graph.initializer)
    del graph.initializer[:]
    nodes = []
    for i, tensor in enumerate(inits):
        name, value = tensor.name, numpy_helper.to_array(tensor)
        if i == 0:
            shape = numpy_helper.from_array(np.array(value.shape, dtype=np.int64), f"{name}__SHAPE")
            delta = numpy_helper.from_array(value, f"{name}__DELTA")
            graph.initializer.extend([shape, delta])
            zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
            nodes += [helper.make_node("ConstantOfShape", [shape.name], [f"{name}__ZEROS"],
                                       name=f"{name}__fill", value=zero),
                      helper.make_node("Add", [f"{name}__ZEROS", delta.name], [name],
                                       name=f"{name}__add")]
        else:
            nodes.append(helper.make_node("Constant", [], [name], name=f"{name}__const",
                                          value=numpy_helper.from_array(value, name)))
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)


def _as_ir3(model) -> None:
    """IR 3: every initializer is also a graph input (with its type and shape)."""
    from onnx import helper

    graph = model.graph
    listed = {v.name for v in graph.input}
    for tensor in graph.initializer:
        if tensor.name not in listed:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                             list(tensor.dims)))
    model.ir_version = 3


def _caffe2_names(graph) -> None:
    """Caffe2's weight names: conv1_w_0, conv1_b_0, ... instead of torch's "0.weight"."""
    renames, layer = {}, 0
    for tensor in graph.initializer:
        if tensor.name.endswith(".weight"):
            layer += 1
        renames[tensor.name] = f"conv{layer}_{'w' if tensor.name.endswith('.weight') else 'b'}_0"
        tensor.name = renames[tensor.name]
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]


def legacy_model(variant: str, directory: Path) -> Path:
    """Write the ``variant`` legacy model under ``directory`` and return its path."""
    import onnx

    inp, out, fixed = VARIANTS[variant]
    path = directory / f"legacy-{variant}.onnx"
    _export_opset9(path, inp, out, fixed)
    model = onnx.load(str(path))
    _caffe2_names(model.graph)
    if variant == "constant_weights":
        _weights_from_subgraphs(model.graph)
    _as_ir3(model)
    model.producer_name, model.producer_version = "caffe2", "0.4"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def legacy_feed(variant: str, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A feed for the variant's one real input."""
    inp, _, fixed = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    return {inp: rng.standard_normal((1 if fixed else batch, *IMAGE)).astype(np.float32)}
