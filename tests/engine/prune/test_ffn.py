"""prune.structured on transformer encoders: FFN neurons removed in the ONNX graph (tiny random
BERTs exported with both torch exporters, built in the test)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.engine.errors import InvalidParams, UnsupportedModel
from app.engine.prune import ffn
from app.engine.prune.structured import PruneStructured, PruneStructuredParams
from tests.engine.transformer_models import export_encoder, tokens

MEASURE = {"warmup": 1, "min_runs": 3, "max_runs": 10, "min_seconds": 0.0, "max_seconds": 0.5,
           "batch_sizes": [1, 4], "dims": {"seq": 12}, "int_high": 100}


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def bert(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"bert-{request.param}")
    dynamo = request.param == "dynamo"
    # opset 17: TorchScript writes GELU as its Erf subgraph; dynamo writes the Gelu op
    return export_encoder("bert", d / "bert.onnx", dynamo=dynamo, opset=None if dynamo else 17)


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _widths(path):
    return [b.width for b in ffn.find_blocks(onnx.load(str(path)))]


def _dataset(path, n, seed):
    np.savez(path, **tokens(n, seed=seed))
    return path


def test_half_the_ffn_neurons_are_removed(bert, make_ctx):
    assert _widths(bert) == [64, 64]
    result = PruneStructured().run(make_ctx(bert, PruneStructuredParams(ratio=0.5, **MEASURE)))
    report = result.report
    pruning = report["pruning"]
    assert pruning["method"] == "onnx_ffn"
    assert [(b["neurons_before"], b["neurons_after"]) for b in pruning["ffn"]["blocks"]] == \
        [(64, 32), (64, 32)]
    assert pruning["ffn"]["attention_heads"].startswith("not pruned")
    assert _widths(result.output_path) == [32, 32]  # the tensors physically shrank
    feed = tokens(5, seed=3)
    got, want = _run(result.output_path, feed)[0], _run(bert, feed)[0]
    assert got.shape == want.shape == (5, 12, 32)
    assert not np.allclose(got, want, atol=1e-4)  # neurons really went
    # 2 blocks x (32x32 + 32x32) weights fewer (the zero biases are one tensor in the parent:
    # dynamo dedups equal initializers, TorchScript ties them with Identity nodes)
    assert report["parent"]["parameter_count"] - report["result"]["parameter_count"] == 2 * 2048
    assert report["result"]["macs"] < report["parent"]["macs"]
    assert report["verification"]["output_shapes_match_parent"]
    assert 0.0 < report["fidelity"]["outputs"]["out"]["cosine_mean"] <= 1.0
    assert {p["batch_size"] for p in report["latency"]} == {1, 4}


def test_round_to_and_keep_layers(bert, make_ctx):
    first = ffn.find_blocks(onnx.load(str(bert)))[0]
    params = PruneStructuredParams(ratio=0.6, round_to=8, keep_layers=[first.down.node.name],
                                   **MEASURE)
    result = PruneStructured().run(make_ctx(bert, params))
    blocks = result.report["pruning"]["ffn"]["blocks"]
    assert blocks[0]["protected"] and blocks[0]["neurons_after"] == 64
    assert blocks[1]["neurons_after"] == 32  # 64 - 38 = 26 kept, rounded up to 32
    assert _widths(result.output_path) == [64, 32]
    with pytest.raises(InvalidParams, match="not feed-forward projections"):
        PruneStructured().run(make_ctx(bert, PruneStructuredParams(keep_layers=["nope"])))


def test_distillation_recovers_fidelity(bert, make_ctx, tmp_path):
    train = _dataset(tmp_path / "train.npz", 192, seed=1)
    held = tokens(64, seed=7)
    parent = _run(bert, held)[0]

    def error(path):
        return float(((_run(path, held)[0] - parent) ** 2).mean() / (parent ** 2).mean())

    base = PruneStructuredParams(ratio=0.75, **MEASURE)
    plain = PruneStructured().run(make_ctx(bert, base, dataset=train))
    assert "activation" in plain.report["pruning"]["ffn"]["importance_source"]
    without = shutil.copy(plain.output_path, tmp_path / "without.onnx")
    tune = {"epochs": 8, "lr": 3e-3, "source": "teacher", "batch_size": 32}
    tuned = PruneStructured().run(make_ctx(bert, PruneStructuredParams(
        ratio=0.75, fine_tune=tune, **MEASURE), dataset=train))
    training = tuned.report["training"]
    assert training["trained_tensors"] and training["objective"].startswith("MSE")
    assert tuned.report["pruning"]["ffn"]["recovery"] == "distillation from the parent"
    assert _widths(tuned.output_path) == [16, 16]
    assert error(tuned.output_path) < 0.8 * error(without)


def test_a_graph_without_ffn_is_refused(models, make_ctx):
    with pytest.raises(UnsupportedModel, match="no transformer feed-forward block"):
        PruneStructured().run(make_ctx(models["tokens"], PruneStructuredParams(method="onnx")))


def test_gated_ffn_prunes_both_up_projections(tmp_path):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                    num_heads=2, feed_forward_proj="gated-gelu")).eval()
    ids = torch.randint(1, 100, (2, 7))
    path = tmp_path / "t5.onnx"
    torch.onnx.export(model, (ids,), str(path), input_names=["input_ids"], dynamo=False,
                      output_names=["out"], dynamic_axes={"input_ids": {0: "b", 1: "s"}},
                      opset_version=17)
    proto = onnx.load(str(path))
    blocks = ffn.find_blocks(proto)
    assert [(len(b.ups), b.activation.startswith("gated")) for b in blocks] == [(2, True)]
    graph = ffn.Graph(proto)
    ffn.prune_blocks(proto, blocks, [ffn.magnitude(graph, b, 1) for b in blocks], 0.5, None, set())
    onnx.save(proto, str(tmp_path / "pruned.onnx"))
    assert _widths(tmp_path / "pruned.onnx") == [32]
    feed = {"input_ids": ids.numpy()}
    assert _run(tmp_path / "pruned.onnx", feed)[0].shape == _run(path, feed)[0].shape


def test_pruning_succeeds_without_recovery_when_torch_cannot_take_the_graph(
        bert, make_ctx, tmp_path, monkeypatch):
    from app.engine.prune import ffn_recovery

    def refuse(*_a, **_k):
        raise UnsupportedModel("Converter is not implemented (Frobnicate)")

    monkeypatch.setattr(ffn_recovery, "onnx_to_torch", refuse)  # where recovery looks it up
    params = PruneStructuredParams(ratio=0.5, fine_tune={"epochs": 1, "lr": 1e-3}, **MEASURE)
    report = PruneStructured().run(make_ctx(bert, params, dataset=_dataset(
        tmp_path / "d.npz", 32, seed=1))).report
    assert report["training"] is None
    assert report["pruning"]["ffn"]["recovery"] == "skipped (see notes)"
    assert any("Frobnicate" in n and "without it" in n for n in report["notes"])
    assert [b["neurons_after"] for b in report["pruning"]["ffn"]["blocks"]] == [32, 32]
