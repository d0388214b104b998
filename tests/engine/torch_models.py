"""Tiny torch models and datasets for the torch technique tests (exported to ONNX here)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def residual_cnn(c: int = 16):
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(c, c, 3, padding=1)
            self.b = torch.nn.Conv2d(c, c, 3, padding=1)

        def forward(self, h):
            return torch.relu(h + self.b(torch.relu(self.a(h))))

    return torch.nn.Sequential(torch.nn.Conv2d(1, c, 3, padding=1), torch.nn.ReLU(), Block(),
                               Block(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(c, 4))


def export(model, example, path: Path, name: str = "image") -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), input_names=[name],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}})
    return path


def image_dataset(path: Path, n: int = 160, name: str = "image") -> Path:
    """4 classes decided by which image quadrant is brightest: learnable in an epoch or two."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32) * 0.5
    y = rng.integers(0, 4, n)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 1.0
    np.savez(path, **{name: x, "labels": y.astype(np.int64)})
    return path
