"""Tiny trained models for the quantization tests (torch only here, never in app/engine)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def export(model, example, path: Path, name: str = "x", opset: int = 17) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), input_names=[name],
                          output_names=["logits"], opset_version=opset, dynamo=False,
                          dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}})
    return path


def outlier_mlp(path: Path) -> tuple[Path, str]:
    """A digits MLP (64-96-96-10) trained for a second, then one hidden unit of the first
    layer is given a +400 bias and the second layer's bias compensates: the function is
    unchanged, but the second layer's input now spans 0..~400 in one channel, so per-tensor
    int8 activations crush every other channel there. Returns (path, that layer's name)."""
    import torch

    torch.manual_seed(0)
    x, y = digits()
    net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 96),
                              torch.nn.ReLU(), torch.nn.Linear(96, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(120):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        net[0].bias[7] += 400.0
        net[2].bias -= 400.0 * net[2].weight[:, 7]
    export(net, xt[:2], path)
    return path, "/2/Gemm"
