"""onnx2torch on transformer exports: the converters added in app.engine.pytorch.onnx_ops
(newer opsets of unchanged ops, Reshape allowzero, Gelu, Flatten on a 2-D mask) give a module
whose outputs match onnxruntime's on padded token batches."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.engine.pytorch.loading import onnx_to_torch
from tests.engine.transformer_models import export_encoder, tokens

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("kind,dynamo,opset", [
    ("bert", False, 17),  # GreaterOrEqual-16
    ("distilbert", False, 14),  # Flatten(axis=2) of the 2-D mask
    ("bert", True, None),  # opset 20: Shape-19, Reshape allowzero=1, Gelu-20
])
def test_encoder_converts_and_matches_onnxruntime(kind, dynamo, opset, tmp_path):
    path = export_encoder(kind, tmp_path / "m.onnx", dynamo=dynamo, opset=opset)
    module = onnx_to_torch(path, tmp_path)
    feed = tokens(4, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, feed)[0]
    with torch.no_grad():
        got = module(*(torch.from_numpy(feed[i.name]) for i in session.get_inputs()))
    got = got[0] if isinstance(got, (tuple, list)) else got
    assert got.shape == expected.shape
    assert np.abs(got.numpy() - expected).max() < 1e-4
