"""optimize.graph on tiny real models: a BERT-like block written with torch.nn (fused operators
found, outputs close to the parent, a paired speedup measured) and an MLP with no transformer
pattern (generic optimizations only, said so)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from app.engine import pipeline
from app.engine.base import Context
from app.engine.optimize.graph import OptimizeGraph
from app.engine.reports import parse

FAST = {"warmup": 1, "min_runs": 3, "max_runs": 30, "min_seconds": 0.0, "max_seconds": 1.0,
        "batch_sizes": [1, 4], "threads": [1], "fidelity_samples": 16}
HIDDEN, HEADS, SEQ = 32, 4, 8


def bert_block():
    """One encoder layer as BERT writes it: Q/K/V projections, scaled softmax attention over
    heads, output projection + residual + LayerNorm, erf-GELU feed-forward + residual +
    LayerNorm."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
            self.o = nn.Linear(HIDDEN, HIDDEN)
            self.ln1, self.ln2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
            self.up, self.down = nn.Linear(HIDDEN, 4 * HIDDEN), nn.Linear(4 * HIDDEN, HIDDEN)

        def heads(self, t):
            b, s, _ = t.shape
            return t.view(b, s, HEADS, HIDDEN // HEADS).transpose(1, 2)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (HIDDEN // HEADS) ** 0.5
            ctx = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, s, HIDDEN)
            h = self.ln1(x + self.o(ctx))
            return self.ln2(h + self.down(nn.functional.gelu(self.up(h))))

    torch.manual_seed(0)
    return Block().eval()


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("block")
    path = d / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bert_block(), (torch.randn(2, SEQ, HIDDEN),), str(path), input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    data = d / "x.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((32, SEQ, HIDDEN)).astype(np.float32))
    return path, data


def run(model, params, workdir, data=None):
    workdir.mkdir(parents=True, exist_ok=True)
    return OptimizeGraph().run(Context(model_path=model, params=params, workdir=workdir,
                                       dataset_path=data))


def test_a_transformer_block_is_fused(block, tmp_path):
    path, data = block
    result = run(path, {**FAST, "min_cosine": 0.999}, tmp_path / "w", data)
    report = result.report
    graph = report["graph"]
    assert graph["model_type"] == "bert" and graph["transformer_fusions"] == "applied"
    # read from the graph (the head size scales the scores), not left to the optimizer
    assert (graph["num_heads"], graph["hidden_size"]) == (HEADS, HIDDEN)
    assert graph["attention_shape"] == "detected from the graph"
    assert sum(graph["fused_operators"].values()) > 0, graph
    assert graph["fused_operators"].get("SkipLayerNormalization", 0) >= 1
    # the fused graph computes what the parent did, measured on the dataset
    assert report["tolerance"]["within"] and report["fidelity"]["samples"] == 16
    assert report["fidelity"]["outputs"]["y"]["cosine_min"] > 0.999
    # and was timed against it in interleaved rounds, like every quantizer's result
    assert [p["batch_size"] for p in report["comparison"]] == [1, 4]
    assert all(p["speedup_ci"]["rounds"] >= 1 for p in report["comparison"])
    assert parse(report).technique == "optimize.graph"
    import onnx

    fused = {n.op_type for n in onnx.load(str(result.output_path)).graph.node}
    assert "SkipLayerNormalization" in fused


def test_a_graph_without_transformer_pattern_gets_generic_optimizations(models, tmp_path):
    report = run(models["mlp"], FAST, tmp_path / "w").report
    assert report["graph"]["transformer_fusions"] == "not_applicable"
    assert report["graph"]["model_type"] == "generic" and report["graph"]["fused_operators"] == {}
    assert any("not applicable" in n for n in report["notes"])
    assert report["tolerance"]["within"]


def test_it_runs_as_a_pipeline_step(block, tmp_path):
    path, data = block
    steps = pipeline.from_request(None, None, [
        {"technique": "optimize.graph", "params": {**FAST, "model_type": "bert",
                                                   "num_heads": HEADS, "hidden_size": HIDDEN}},
        {"technique": "quantize.dynamic", "params": FAST}])
    ctx = Context(model_path=path, params=steps[0].params, workdir=tmp_path, dataset_path=data)
    fused, quantized = pipeline.run(steps, ctx, tmp_path, lambda f, s: None)
    assert fused.report["graph"]["num_heads"] == HEADS
    assert fused.report["graph"]["attention_shape"] == "given"
    assert quantized.report["nodes"]["quantized_ops"]
