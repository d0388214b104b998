"""Lathe's attention fusion (app/engine/runtime/attention.py) on tiny BERT and DistilBERT
encoders exported here with both torch exporters: every attention block becomes one
com.microsoft.MultiHeadAttention, the outputs stay the parent's at other batch sizes and
sequence lengths than the check used, and a rewrite the check rejects writes nothing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.engine.runtime.attention import fuse_attention, fuse_attention_file
from tests.engine.transformer_models import export_encoder, tokens

pytestmark = pytest.mark.filterwarnings("ignore")


def run(path, feed):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("kind,dynamo", [("bert", False), ("bert-eager", False), ("distilbert", False)])
def test_every_attention_block_becomes_one_operator(kind, dynamo, tmp_path):
    parent = export_encoder(kind, tmp_path / "parent.onnx", dynamo=dynamo, opset=None if dynamo else 17)
    fused = tmp_path / "fused.onnx"
    check = [tokens(4, seq=12, seed=1), tokens(1, seq=12, seed=2)]
    outcome = fuse_attention_file(parent, fused, check)

    assert outcome["fused"] == 2, outcome  # two layers
    assert outcome["max_abs_diff"] <= 1e-4
    ops = Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
    assert ops["MultiHeadAttention"] == 2 and ops["Softmax"] == 0, ops
    before = Counter(n.op_type for n in onnx.load(str(parent)).graph.node)
    assert sum(ops.values()) < sum(before.values()) - 20  # the per-head plumbing is gone
    # other shapes than the check's: batch 3, a longer and a shorter sequence, with padding
    for n, seq in ((3, 20), (2, 5)):
        feed = tokens(n, seq=seq, seed=seq)
        np.testing.assert_allclose(run(fused, feed), run(parent, feed), atol=1e-4, rtol=0)


def test_an_unmatched_export_is_left_alone(tmp_path):
    """The dynamo exporter writes K^T as Reshape/Transpose/Reshape over flattened heads: not
    matched (yet), so nothing is written and the caller keeps the parent."""
    parent = export_encoder("bert", tmp_path / "parent.onnx", dynamo=True)
    outcome = fuse_attention_file(parent, tmp_path / "fused.onnx", [tokens(2, seq=8)])
    assert outcome == {"fused": 0, "reason": "no attention block matched"}
    assert not (tmp_path / "fused.onnx").exists()


def test_a_graph_without_attention_is_left_alone(tmp_path):
    import torch

    path = tmp_path / "mlp.onnx"
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Softmax(-1), torch.nn.Linear(16, 4))
    torch.onnx.export(net.eval(), (torch.zeros(1, 8),), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "b"}})
    model = onnx.load(str(path))
    assert fuse_attention(model) == 0
    outcome = fuse_attention_file(path, tmp_path / "out.onnx", [{"x": np.ones((2, 8), np.float32)}])
    assert outcome == {"fused": 0, "reason": "no attention block matched"}
    assert not (tmp_path / "out.onnx").exists()


def test_a_fused_graph_that_disagrees_is_not_written(tmp_path):
    parent = export_encoder("bert", tmp_path / "parent.onnx", dynamo=False, opset=17)
    fused = tmp_path / "fused.onnx"
    outcome = fuse_attention_file(parent, fused, [tokens(2, seq=8)], atol=-1.0)  # nothing passes
    assert outcome["fused"] == 0 and "differs from the parent" in outcome["reason"], outcome
    assert not fused.exists()
