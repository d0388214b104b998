"""quantize.static on transformer encoders: attention masks add -inf / float32's lowest to the
scores, which broke histogram calibration ("supplied range of [-inf, inf] is not finite",
"Too many bins for data range"); those nodes now stay float and the job reports fidelity."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.base import Context
from app.engine.quantize.static import QuantizeStatic, QuantizeStaticParams
from tests.engine.transformer_models import export_encoder, tokens

pytestmark = pytest.mark.filterwarnings("ignore")
FAST = dict(batch_sizes=[1], warmup=1, min_runs=3, min_seconds=0.01, max_seconds=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.npz"
    np.savez(path, **tokens(16))
    return path


@pytest.mark.parametrize("calibration,dynamo", [
    ("entropy", False), ("entropy", True), ("percentile", False), ("minmax", False)])
def test_static_survives_attention_masks(calibration, dynamo, data, tmp_path):
    model = export_encoder("bert", tmp_path / "bert.onnx", dynamo=dynamo, opset=14)
    workdir = tmp_path / "w"
    workdir.mkdir()
    params = QuantizeStaticParams(samples=16, calibration=calibration, **FAST)
    report = QuantizeStatic().run(Context(model_path=model, params=params, workdir=workdir,
                                          dataset_path=data)).report
    q = report["quantization"]
    assert any("Softmax" in n for n in q["mask_nodes"]), q["mask_nodes"]
    assert report["nodes"]["qdq_compute"] > 0
    assert report["fidelity"]["outputs"]["out"]["cosine_mean"] > 0.9
