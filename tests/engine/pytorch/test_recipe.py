"""lr / optimizer / batch size "auto": chosen on held-out data, not read off a curve."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return {"inputs": [(d.data / 16.0).astype(np.float32)], "labels": d.target.astype(np.int64), "teacher": None}


def test_the_lowest_rate_within_noise_of_the_best_wins(digits):
    """The rule, checked by re-running the trials: the chosen rate's held-out loss is within 2
    paired standard errors of the best trial's, no lower rate is, the grid brackets the choice
    (extended past an edge winner), and the other optimizer only wins when better beyond noise."""
    import torch

    from app.engine.pytorch.train import TrainConfig, _probe, choose_recipe, within_noise

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, lr=1e-3)
    chosen, report = choose_recipe(model, digits, None, cfg, optimizers=["adamw", "sgd"],
                                   batch_sizes=[64], auto_lr=True, steps=40)
    trials = report["trials"]
    cut = len(digits["labels"]) // 5  # no split given: a fifth is held out
    assert report["held_out"] == cut
    val = {"inputs": [digits["inputs"][0][:cut]], "labels": digits["labels"][:cut], "teacher": None}
    train = {"inputs": [digits["inputs"][0][cut:]], "labels": digits["labels"][cut:], "teacher": None}
    picks = {}
    for name in ("adamw", "sgd"):
        mine = [t for t in trials if t["optimizer"] == name]
        assert 3 <= len(mine) <= 5 and report["curves"][name]
        assert mine[0]["lr"] == report["proposals"][name]["proposed"]
        assert mine[1]["lr"] == pytest.approx(mine[0]["lr"] * 3, rel=0.01)
        assert mine[2]["lr"] == pytest.approx(mine[0]["lr"] / 3, rel=0.01)
        scored = {t["lr"]: _probe(model, train, val, TrainConfig(epochs=1, lr=t["lr"], optimizer=name),
                                  device="cpu", steps=report["probe_steps"]) for t in mine}
        for t in mine:  # the trials are reproducible, so the report shows what was compared
            assert scored[t["lr"]]["loss"] == pytest.approx(t["val_loss"], rel=1e-4)
        best = min(scored.values(), key=lambda r: r["loss"])
        tied = sorted(lr for lr, r in scored.items() if within_noise(r, best))
        picks[name] = tied[0]
        rates = sorted(scored)
        if len(mine) < 5:  # extended until the pick was inside (at most twice, lr at most 1)
            assert rates[0] < picks[name] < rates[-1] or picks[name] * 3 > 1.0
        picks[name] = (tied[0], scored[tied[0]])
    adamw, sgd = picks["adamw"][1], picks["sgd"][1]
    expected = "sgd" if sgd["loss"] < adamw["loss"] and not within_noise(adamw, sgd) else "adamw"
    assert (chosen.optimizer, chosen.lr) == (expected, picks[expected][0])
    assert report["chosen"] == {"optimizer": chosen.optimizer, "lr": chosen.lr, "batch_size": chosen.batch_size}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # trials train copies


def test_a_minimum_past_the_blow_up_is_not_proposed():
    """A range test where the loss falls, blows up (a net without BatchNorm dies) and then
    creeps below its first minimum on a saturated model: "lowest loss / 10" lands past the
    blow-up; the proposal is the steepest descent of the first valley."""
    import numpy as np

    from app.engine.pytorch.train import suggest_lr

    lrs = np.logspace(-6, 0, 80)
    x = np.log10(lrs)
    loss = np.where(x < -2.1, 6.0 - 3.0 * np.tanh(1.5 * (x + 3.6)),  # falls fastest at 10^-3.6 to ~3.07
                    4.5 - 0.8 * (x + 2.1))  # jumps to 4.5, then creeps down to 2.8 at lr 1
    curve = [{"lr": float(a), "loss": float(b)} for a, b in zip(lrs, loss)]
    got = suggest_lr(curve)
    assert got["min_over_10"] == pytest.approx(0.1, rel=0.05)  # the old rule: past the blow-up
    assert 10**-4 <= got["steepest"] <= 10**-3.2
    assert got["proposed"] == got["steepest"]


def test_a_healthy_curve_keeps_a_tenth_of_its_minimum():
    """When the loss falls steeply right up to the minimum, a tenth of the minimum is the
    lower (safer) reading and is proposed."""
    import numpy as np

    from app.engine.pytorch.train import suggest_lr

    lrs = np.logspace(-6, -1, 60)
    loss = 5.0 - 0.1 * np.log10(lrs / 1e-6) ** 2  # steepest at the end, just before blowing up
    got = suggest_lr([{"lr": float(a), "loss": float(b)} for a, b in zip(lrs, loss)])
    assert got["proposed"] == got["min_over_10"] == pytest.approx(0.01, rel=0.05)


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
