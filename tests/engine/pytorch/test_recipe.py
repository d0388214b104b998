"""lr / optimizer / batch size "auto": chosen on held-out data, not read off a curve."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return {"inputs": [(d.data / 16.0).astype(np.float32)], "labels": d.target.astype(np.int64), "teacher": None}


def test_the_lowest_held_out_loss_wins(digits):
    import torch

    from app.engine.pytorch.train import TrainConfig, choose_recipe

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, lr=1e-3)
    chosen, report = choose_recipe(model, digits, None, cfg, optimizers=["adamw", "sgd"],
                                   batch_sizes=[32, 64], auto_lr=True, steps=40)
    trials = report["trials"]
    assert [t["optimizer"] for t in trials[:6]] == ["adamw"] * 3 + ["sgd"] * 3
    for name in ("adamw", "sgd"):  # the range test's rate and its neighbours x3 and /3
        rates = [t["lr"] for t in trials if t["optimizer"] == name][:3]
        assert rates[1] == pytest.approx(rates[0] * 3, rel=0.01) and rates[2] == pytest.approx(rates[0] / 3, rel=0.01)
        assert report["curves"][name]
    best = min(trials, key=lambda t: t["val_loss"])
    assert (chosen.optimizer, chosen.lr, chosen.batch_size) == (best["optimizer"], best["lr"], best["batch_size"])
    assert report["chosen"] == {"optimizer": chosen.optimizer, "lr": chosen.lr, "batch_size": chosen.batch_size}
    assert report["held_out"] == len(digits["labels"]) // 5  # no split given: a fifth is held out
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # trials train copies


def test_prune_recovery_with_everything_auto(tmp_path, digits):
    """prune.structured's fine_tune takes "auto" for all three; the report shows the choice."""
    import torch

    from app.engine.base import Context
    from app.engine.prune.structured import PruneStructured, PruneStructuredParams

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(net, (torch.randn(2, 64),), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}})
    np.savez(tmp_path / "d.npz", x=digits["inputs"][0][:600], labels=digits["labels"][:600])
    (tmp_path / "w").mkdir()
    params = PruneStructuredParams(ratio=0.5, batch_sizes=[1], min_runs=3, min_seconds=0.01, max_seconds=1,
                                   fine_tune={"epochs": 2, "lr": "auto", "optimizer": "auto", "batch_size": "auto"})
    report = PruneStructured().run(Context(model_path=path, params=params, workdir=tmp_path / "w",
                                           dataset_path=tmp_path / "d.npz", parent_path=None, models={})).report
    training = report["training"]
    choice = training["lr_range_test"]["chosen"]
    assert (training["optimizer"], training["lr"], training["batch_size"]) == (
        choice["optimizer"], choice["lr"], choice["batch_size"])
    assert {t["optimizer"] for t in training["lr_range_test"]["trials"]} == {"adamw", "sgd"}
    assert {t["batch_size"] for t in training["lr_range_test"]["trials"]} >= {32, 64}
