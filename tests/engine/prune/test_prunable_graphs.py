"""prune.structured on the graph shapes real CNN exports have (issue 13's compatibility corpus):
a classifier head reshaped to a constant ``[-1, C]``, SAME_UPPER padding, a ceil-mode pool over
the last feature map, a ConvNeXt block exported by dynamo at opset 23, attention-like shape
constants that leave only some layers prunable. Each model is tiny and built here."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from app.engine.errors import UnsupportedModel
from app.engine.prune.canonical import canonicalize
from app.engine.prune.structured import PruneStructured, PruneStructuredParams

torch.set_num_threads(1)
MEASURE = {"warmup": 1, "min_runs": 2, "max_runs": 5, "min_seconds": 0.0, "max_seconds": 0.5,
           "batch_sizes": [2]}


def _export(model, path, shape=(2, 3, 16, 16), dynamo=False, opset=None):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        kw = {"dynamic_shapes": ({0: torch.export.Dim("batch")},), "external_data": False} if dynamo else \
            {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}}
        torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), input_names=["x"],
                          output_names=["y"], dynamo=dynamo, opset_version=opset, **kw)
    return path


def _prune(path, make_ctx, ratio=0.5, method="torch"):
    """The torch route (onnx2torch + Torch-Pruning) these graphs exercise; "auto" would send
    the transformer-shaped ones to the ONNX FFN route (tests/engine/prune/test_ffn.py)."""
    return PruneStructured().run(make_ctx(path, PruneStructuredParams(ratio=ratio, method=method, **MEASURE)))


def _runs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _cbr(i, o, k=3, s=1, g=1):
    return torch.nn.Sequential(torch.nn.Conv2d(i, o, k, s, k // 2, groups=g), torch.nn.BatchNorm2d(o),
                               torch.nn.ReLU())


class ViewHead(torch.nn.Module):
    """HF-style head: pooled features viewed as (-1, C) - a constant C in the ONNX graph."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(_cbr(3, 16), _cbr(16, 32, s=2), torch.nn.AdaptiveAvgPool2d(1))
        self.fc = torch.nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.body(x).view(-1, 32))


def test_a_head_reshaped_to_a_constant_channel_count_is_pruned(tmp_path, make_ctx):
    path = _export(ViewHead(), tmp_path / "view.onnx")
    assert [0 for n in onnx.load(str(path)).graph.node if n.op_type == "Reshape"]
    result = _prune(path, make_ctx)
    shapes = result.report["pruning"]["layer_shapes"]
    assert [s["after"][0] for s in shapes.values() if len(s["after"]) == 4] == [8, 16]
    assert result.report["verification"]["output_shapes_match_parent"]
    assert _runs(result.output_path, np.zeros((3, 3, 16, 16), np.float32)).shape == (3, 5)


class ConvNeXtBlock(torch.nn.Module):
    """Depthwise conv, channels-last LayerNorm, a Linear MLP on a 4-D tensor (MatMul + Add in
    ONNX) and a layer scale (Mul by a constant), as in ConvNeXt."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 2, 2)
        self.dw = torch.nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = torch.nn.LayerNorm(c)
        self.up, self.down = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)
        self.scale = torch.nn.Parameter(torch.full((c,), 0.5))
        self.head = torch.nn.Linear(c, 5)

    def forward(self, x):
        h = self.stem(x)
        y = self.norm(self.dw(h).permute(0, 2, 3, 1))
        y = self.scale * self.down(torch.nn.functional.gelu(self.up(y)))
        h = h + y.permute(0, 3, 1, 2)
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("dynamo,opset", [(True, 23), (False, 13)])
def test_a_convnext_block_prunes_its_mlp_and_stem(tmp_path, make_ctx, dynamo, opset):
    """Opset 23 needs onnx2torch's Conv-22; the MLP must become nn.Linear and the layer scale a
    parameter, or the channels Torch-Pruning removes break the matrix product."""
    torch.manual_seed(0)
    path = _export(ConvNeXtBlock(), tmp_path / "convnext.onnx", dynamo=dynamo, opset=opset)
    result = _prune(path, make_ctx)
    report = result.report
    assert report["verification"]["output_shapes_match_parent"]
    assert report["result"]["parameter_count"] < 0.5 * report["parent"]["parameter_count"]
    mlp = [s for s in report["pruning"]["layer_shapes"].values() if s["before"] == [64, 16]]
    assert mlp and mlp[0]["after"] == [32, 8]
    assert _runs(result.output_path, np.zeros((3, 3, 16, 16), np.float32)).shape == (3, 5)


def _same_padded(mode: str, opset: int = 13):
    """Conv(3x3, stride 2, SAME) -> Conv(4x4, SAME) -> GlobalAveragePool -> Flatten -> Gemm,
    built with onnx.helper as Keras/TF converters write it, on an 8x8 input: both pads uneven."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], auto_pad=mode, strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], auto_pad=mode, kernel_shape=[4, 4]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 8, 8, 4, 4), w("w3", 4, 8), w("b3", 4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _same_outputs(model, rewritten, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    after = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
    return np.abs(before - after).max() < 1e-5


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_same_auto_pad_becomes_explicit_pads_with_the_same_outputs(mode):
    model = _same_padded(mode)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    changes = canonicalize(rewritten)
    assert len([c for c in changes if "auto_pad" in c]) == 2
    pads = [list(a.ints) for n in rewritten.graph.node for a in n.attribute if a.name == "pads"]
    assert pads == ([[0, 0, 1, 1], [1, 1, 2, 2]] if mode == "SAME_UPPER" else [[1, 1, 0, 0], [2, 2, 1, 1]])
    assert _same_outputs(model, rewritten, (2, 3, 8, 8))


def test_same_upper_model_is_pruned(tmp_path, make_ctx):
    path = tmp_path / "same.onnx"
    onnx.save(_same_padded("SAME_UPPER"), str(path))
    result = _prune(path, make_ctx)
    shapes = result.report["pruning"]["layer_shapes"]  # uneven pads: Sequential(pad, conv)
    assert (shapes["Conv.1"]["after"], shapes["Conv_1.1"]["after"]) == ([4, 3, 3, 3], [4, 4, 4, 4])
    assert result.report["verification"]["output_shapes_match_parent"]


def test_a_ceil_mode_pool_over_the_last_feature_map_becomes_global():
    """What the opset-9 exporter writes for EfficientNet's AvgPool2d(hidden_dim, ceil_mode=True)
    on a 4x4 map: kernel 8, pads (0, 0, 4, 4), which onnx2torch refuses as uneven padding."""
    model = _same_padded("SAME_UPPER", opset=9)
    graph = model.graph
    pool = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
    pool.op_type = "AveragePool"
    pool.attribute.extend([helper.make_attribute("kernel_shape", [8, 8]),
                           helper.make_attribute("strides", [8, 8]),
                           helper.make_attribute("pads", [0, 0, 4, 4])])
    onnx.checker.check_model(model)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    canonicalize(rewritten)
    assert [n.op_type for n in rewritten.graph.node].count("GlobalAveragePool") == 1
    assert _same_outputs(model, rewritten, (2, 3, 8, 8))


class HeadsReshape(torch.nn.Module):
    """conv1 -> conv2, then conv2's channels split into a fixed (4, 36) by a reshape (as
    attention heads are): conv1's width can shrink, conv2's cannot."""

    def __init__(self, plain: bool) -> None:
        super().__init__()
        self.plain = plain
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3)
        self.fc = torch.nn.Linear(36, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x)) if self.plain else x.repeat(1, 8, 1, 1)
        return self.fc(torch.relu(self.conv2(h)).reshape(x.shape[0], 4, 36))


def test_shape_constants_leave_the_plain_layers_prunable(tmp_path, make_ctx):
    path = _export(HeadsReshape(plain=True), tmp_path / "heads.onnx", shape=(2, 1, 8, 8))
    result = _prune(path, make_ctx)
    pruning = result.report["pruning"]
    assert pruning["layer_shapes"]["conv1/Conv"]["after"] == [4, 1, 3, 3]
    assert pruning["layer_shapes"]["conv2/Conv"]["after"] == [4, 4, 3, 3]  # its outputs kept
    assert "reshape" in pruning["partial"]
    assert _runs(result.output_path, np.zeros((3, 1, 8, 8), np.float32)).shape == (3, 4, 3)


def test_a_graph_whose_every_width_is_fixed_fails_naming_the_operator(tmp_path, make_ctx):
    path = _export(HeadsReshape(plain=False), tmp_path / "fixed.onnx", shape=(2, 1, 8, 8))
    with pytest.raises(UnsupportedModel, match=r"Torch-Pruning cannot prune this graph.*reshape"):
        _prune(path, make_ctx)


class Shuffle(torch.nn.Module):
    """ShuffleNet's unit: grouped 1x1 conv, channel shuffle (view/transpose/reshape, constant
    shapes once dynamo folds them), depthwise conv, grouped 1x1 conv, residual."""

    def __init__(self, c: int = 24, groups: int = 3) -> None:
        super().__init__()
        self.groups = groups
        self.stem = _cbr(3, c, s=2)
        self.g1 = _cbr(c, c, k=1, g=groups)
        self.dw = torch.nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.g2 = torch.nn.Conv2d(c, c, 1, groups=groups)
        self.head = torch.nn.Linear(c, 5)

    def forward(self, x):
        h = self.stem(x)
        y = self.g1(h)
        b, c, hh, ww = y.shape
        y = y.view(b, self.groups, c // self.groups, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)
        h = torch.relu(h + self.g2(self.dw(y)))
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


def test_a_channel_shuffle_exported_by_dynamo_is_pruned(tmp_path, make_ctx):
    torch.manual_seed(0)
    path = _export(Shuffle(), tmp_path / "shuffle.onnx", dynamo=True, opset=18)
    model = onnx.load(str(path))
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert len([c for c in canonicalize(rewritten) if "channel groups" in c]) == 2
    assert _same_outputs(model, rewritten, (2, 3, 16, 16))
    result = _prune(path, make_ctx)
    assert result.report["verification"]["output_shapes_match_parent"]
    assert result.report["result"]["parameter_count"] < 0.6 * result.report["parent"]["parameter_count"]
    assert _runs(result.output_path, np.zeros((3, 3, 16, 16), np.float32)).shape == (3, 5)


class TinyViT(torch.nn.Module):
    """Patch embedding, a class token expanded to the batch, one attention block whose heads
    are split by view(b, n, heads, -1), an MLP, and the class token's features sliced out."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.patch = torch.nn.Conv2d(3, d, 4, 4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, d))
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)
        self.head = torch.nn.Linear(d, 5)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1)
        b, n, d = h.shape
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(self.norm1(h)).chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, d))
        h = h + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(h))))
        return self.head(h[:, :1].flatten(1))


@pytest.mark.parametrize("opset", [9, 13])
def test_a_torchscript_vit_prunes_its_mlp_and_keeps_a_dynamic_batch(tmp_path, make_ctx, opset):
    """Its reshapes' targets are computed from Shape: they become constants (else the re-export
    bakes the traced batch in); the heads and the residual width stay, the MLP shrinks."""
    torch.manual_seed(0)
    path = _export(TinyViT(), tmp_path / "vit.onnx", opset=opset)
    result = _prune(path, make_ctx)
    pruning = result.report["pruning"]
    fc1 = next(s for s in pruning["layer_shapes"].values() if s["before"] == [32, 16])
    assert fc1["after"] == [16, 16]
    assert "reshape" in pruning["partial"]
    assert _runs(result.output_path, np.zeros((3, 3, 16, 16), np.float32)).shape == (3, 5)
