"""distill, convert.onnx, the training helpers and data-parallel training (engine level)."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.engine.errors import DatasetMismatch, UnsupportedModel
from app.engine.pytorch.convert import ConvertOnnx, ConvertOnnxParams
from app.engine.pytorch.distill import Distill, DistillParams
from app.engine.pytorch.ddp import train_parallel
from app.engine.pytorch.loading import onnx_to_torch
from app.engine.pytorch.train import TrainConfig, kd_loss, lr_range_test
from tests.engine.torch_models import export, image_dataset, residual_cnn

torch.set_num_threads(1)
MEASURE = {"warmup": 1, "min_runs": 3, "max_runs": 20, "min_seconds": 0.0, "max_seconds": 1.0,
           "batch_sizes": [4]}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("resnet")
    return export(residual_cnn(), torch.randn(2, 1, 8, 8), d / "resnet.onnx"), image_dataset(d / "ds.npz")


def test_kd_loss_terms():
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, t, y, TrainConfig(epochs=1, lr=1, alpha=0.0)), ce)
    soft = kd_loss(s, t, y, TrainConfig(epochs=1, lr=1, alpha=1.0, temperature=2.0))
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 2, 1), torch.softmax(t / 2, 1),
                                    reduction="batchmean")
    assert torch.allclose(soft, kl * 4)
    assert float(kd_loss(t, t, None, TrainConfig(epochs=1, lr=1, alpha=0.5))) < 1e-6


def test_distill_pruned_student_with_lr_finder(resnet, make_ctx):
    model, data = resnet
    ctx = make_ctx(model, DistillParams(student={"pruned_ratio": 0.5}, epochs=3, lr="auto",
                                        patience=1, **MEASURE), dataset=data)
    result = Distill().run(ctx)
    report = result.report
    training = report["training"]
    assert training["lr_range_test"]["curve"] and training["lr"] == training["lr_range_test"]["chosen_lr"]
    assert 1 <= len(training["epochs"]) <= 3 and training["best_epoch"] >= 1
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(training["epochs"][0])
    assert report["result"]["parameter_count"] < report["parent"]["parameter_count"]
    assert report["verification"]["output_shapes_match_parent"]
    assert any(stage.startswith("epoch 1/3 loss") for _, stage in ctx.stages)
    out = ort.InferenceSession(str(result.output_path)).run(None, {"image": np.zeros((3, 1, 8, 8), np.float32)})
    assert out[0].shape == (3, 4)


def test_distill_uploaded_student_and_label_checks(resnet, make_ctx, tmp_path):
    model, data = resnet
    student = export(residual_cnn(c=4), torch.randn(2, 1, 8, 8), tmp_path / "small.onnx")
    params = DistillParams(student={"model_id": "s1"}, epochs=1, lr=1e-3, **MEASURE)
    assert params.student_model_id == "s1" and Distill.model_params == ("student_model_id",)
    ctx = make_ctx(model, params, dataset=data)
    ctx.models = {"s1": student}
    report = Distill().run(ctx).report
    assert report["student"]["kind"] == "uploaded" and report["verdict"]["smaller"]
    unlabelled = tmp_path / "nolabels.npz"
    np.savez(unlabelled, image=np.zeros((10, 1, 8, 8), np.float32))
    with pytest.raises(DatasetMismatch, match="labels"):
        Distill().run(make_ctx(model, DistillParams(epochs=1, lr=1e-3), dataset=unlabelled))


def test_lr_range_test_curve_rises_at_the_end(resnet, tmp_path):
    module = onnx_to_torch(resnet[0], tmp_path)
    data = dict(np.load(resnet[1]))
    lr, curve = lr_range_test(module, {"inputs": [data["image"]], "labels": data["labels"]},
                              TrainConfig(epochs=1, lr=1e-3, batch_size=32), steps=40)
    assert 1e-6 <= lr <= 1.0 and len(curve) >= 10
    assert curve[0]["lr"] < curve[-1]["lr"]


def test_ddp_two_gloo_ranks_end_with_identical_weights(resnet, tmp_path):
    module = onnx_to_torch(resnet[0], tmp_path)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    data = dict(np.load(resnet[1]))
    train = {"inputs": [data["image"][:128]], "labels": data["labels"][:128]}
    val = {"inputs": [data["image"][128:]], "labels": data["labels"][128:]}
    epochs = []
    history, states = train_parallel(module, train, val, TrainConfig(epochs=2, lr=1e-2, batch_size=16),
                                     processes=2, cuda=False, workdir=tmp_path,
                                     on_epoch=lambda e, r: epochs.append(e))
    assert len(states) == 2 and epochs == [1, 2] and len(history["epochs"]) == 2
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], before[k]) for k in before)  # it did train


@pytest.fixture(scope="module")
def pt2(cnn_pt2):
    return cnn_pt2


def test_convert_pt2_to_onnx_with_symbolic_batch(pt2, make_ctx):
    path, model = pt2
    result = ConvertOnnx().run(make_ctx(path, ConvertOnnxParams()))
    assert result.report["symbolic_batch"] and result.report["verification"]["max_abs_error"] < 1e-4
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(result.output_path))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_convert_refuses_a_payload_before_torch_loads_it(pt2, make_ctx, tmp_path):
    evil, marker = tmp_path / "evil.pt2", tmp_path / "ran"
    with zipfile.ZipFile(pt2[0]) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("cnn/data/sample_inputs/evil.pkl", pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UnsupportedModel, match="refused to load the archive.*evil.pkl is not a member"):
        ConvertOnnx().run(make_ctx(evil, ConvertOnnxParams()))
    assert not marker.exists()


def test_torch_techniques_refuse_pt2_with_advice(pt2, make_ctx):
    with pytest.raises(UnsupportedModel, match=r"convert it to ONNX first \(technique convert.onnx\)"):
        Distill().run(make_ctx(pt2[0], DistillParams(epochs=1)))
