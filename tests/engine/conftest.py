"""Tiny real ONNX models for the engine tests, exported once per session.

torch is used here only (never in app/engine); the TorchScript exporter (dynamo=False) is
fast and gives symbolic dims named as we ask.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from tests.support import ROOT
if str(ROOT) not in sys.path:  # `pytest tests/engine` from the repo root, no install step
    sys.path.insert(0, str(ROOT))

from app.engine.base import Context# noqa: E402

# Small budgets: the suite must stay fast on 2 cores; numbers only need to be sane.
FAST = {"warmup": 2, "min_runs": 5, "max_runs": 50, "min_seconds": 0.0, "max_seconds": 2.0}


def _export(model, args, path: Path, names: list[str], dynamic: dict) -> Path:
    import torch

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, str(path), input_names=names,
                          output_names=["out"], dynamic_axes=dynamic, dynamo=False)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    import onnx
    import torch
    from onnx import TensorProto, helper

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models")
    mlp = torch.nn.Sequential(
        torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    )
    # Normal (kaiming) weights, like a trained net. torch's default init is uniform: many
    # weights sit near the int8 limits after quantization, which saturates the u8 x s8 kernels
    # of x86 CPUs without VNNI (see "mlp_uniform" and quant_analysis.saturation_note).
    for layer in mlp:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight)
    out = {"mlp": _export(mlp, (torch.randn(2, 128),), d / "mlp.onnx", ["x"],
                          {"x": {0: "batch"}, "out": {0: "batch"}})}

    uniform = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                  torch.nn.Linear(128, 10))
    out["mlp_uniform"] = _export(uniform, (torch.randn(2, 64),), d / "mlp_uniform.onnx", ["x"],
                                 {"x": {0: "batch"}, "out": {0: "batch"}})

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(1000, 32)
            self.fc = torch.nn.Linear(32, 4)

        def forward(self, input_ids, attention_mask):
            h = self.emb(input_ids) * attention_mask.unsqueeze(-1).float()
            return self.fc(h.sum(1) / attention_mask.sum(1, keepdim=True).float())

    ids = torch.randint(0, 1000, (2, 7))
    out["tokens"] = _export(Tokens(), (ids, torch.ones_like(ids)), d / "tokens.onnx",
                            ["input_ids", "attention_mask"],
                            {"input_ids": {0: "batch", 1: "seq_len"},
                             "attention_mask": {0: "batch", 1: "seq_len"},
                             "out": {0: "batch"}})

    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5),
    )
    out["cnn"] = _export(cnn, (torch.randn(1, 3, 16, 16),), d / "cnn.onnx", ["img"],
                         {"img": {0: "batch"}, "out": {0: "batch"}})

    class Scale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(x * 2.0)

    out["odd_names"] = _export(Scale(), (torch.randn(2, 8),), d / "odd.onnx", ["input/ids:0"],
                               {"input/ids:0": {0: "batch"}, "out": {0: "batch"}})

    # Add + Relu only: nothing a dynamic quantizer can touch. Built by hand (no torch needed).
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [16], [0.5] * 16)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "addrelu", [x], [y], [bias],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              d / "addrelu.onnx")
    out["addrelu"] = d / "addrelu.onnx"
    return out


@pytest.fixture
def make_ctx(tmp_path):
    """Context factory with a fresh workdir and a recorded progress log."""

    def make(model: Path, params, dataset: Path | None = None, device: str = "cpu"):
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        stages: list[tuple[float, str]] = []
        ctx = Context(model_path=model, params=params, workdir=workdir, device=device,
                      dataset_path=dataset, progress=lambda f, s: stages.append((f, s)))
        ctx.stages = stages  # type: ignore[attr-defined]
        return ctx

    return make


@pytest.fixture
def fast():
    """Small measurement budget, as params kwargs."""
    return dict(FAST)
