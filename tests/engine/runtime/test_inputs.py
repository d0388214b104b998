from __future__ import annotations

import numpy as np
import pytest

from app.engine.data.datasets import dataset_feed, dataset_samples, load_dataset
from app.engine.runtime.model_info import inspect_onnx
from app.engine.runtime.inputs import (
    batch_conflict,
    generate_feed,
    input_specs,
    resolve_shape,
    resolved_dims,
)
from app.engine.errors import DatasetMismatch, UnsupportedModel
from app.engine.runtime.sessions import create_session, run_session

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOKENS = [
    {"name": "input_ids", "shape": ["batch", "seq_len"], "dtype": "int64"},
    {"name": "attention_mask", "shape": ["batch", "seq_len"], "dtype": "int64"},
    {"name": "token_type_ids", "shape": ["batch", "seq_len"], "dtype": "int32"},
    {"name": "position_ids", "shape": ["batch", "seq_len"], "dtype": "int64"},
]


def test_session_specs_match_inspect(models):
    session, create_ms = create_session(models["tokens"], threads=1)
    assert create_ms > 0
    assert input_specs(session) == inspect_onnx(models["tokens"])["inputs"]


def test_generated_shapes_and_values():
    feed = generate_feed(TOKENS, 4, dims={"seq_len": 16}, int_high=50)
    assert {k: v.shape for k, v in feed.items()} == {k["name"]: (4, 16) for k in TOKENS}
    assert feed["input_ids"].dtype == np.int64 and feed["token_type_ids"].dtype == np.int32
    assert 0 <= feed["input_ids"].min() and feed["input_ids"].max() < 50
    assert (feed["attention_mask"] == 1).all() and (feed["token_type_ids"] == 0).all()
    assert (feed["position_ids"][2] == np.arange(16)).all()
    again = generate_feed(TOKENS, 4, dims={"seq_len": 16}, int_high=50)
    assert (again["input_ids"] == feed["input_ids"]).all()  # fixed seed, same inputs


def test_shape_resolution_rules():
    syms = {"batch"}
    # First dim -> batch even when unnamed; other unnamed/unknown dims -> default_dim.
    assert resolve_shape({"name": "a", "shape": [None, "h", None, 3], "dtype": "float32"},
                         8, {"h": 5}, 16, syms) == (8, 5, 16, 3)
    # A symbol that is some input's first dim is the batch wherever it appears.
    assert resolve_shape({"name": "b", "shape": [5, "batch"], "dtype": "float32"},
                         2, {"batch": 9}, 7, syms) == (5, 2)
    assert resolved_dims(TOKENS, {}, 128) == {"seq_len": 128}
    feed = generate_feed([{"name": "x", "shape": ["n", 3], "dtype": "float32"},
                          {"name": "flag", "shape": [], "dtype": "bool"}], 5)
    assert feed["x"].shape == (5, 3) and feed["x"].dtype == np.float32
    assert feed["flag"].shape == () and bool(feed["flag"]) is True


def test_fixed_batch_conflict():
    specs = [{"name": "x", "shape": [1, 3], "dtype": "float32"}]
    assert batch_conflict(specs, 1) is None
    assert "fixed first dimension of 1" in batch_conflict(specs, 8)


def test_memory_guard():
    specs = [{"name": "x", "shape": ["batch", "a", "b"], "dtype": "float32"}]
    with pytest.raises(UnsupportedModel, match="GiB limit"):
        generate_feed(specs, 4096, dims={"a": 100_000, "b": 100_000})


def test_string_input_refused():
    with pytest.raises(UnsupportedModel, match="string"):
        generate_feed([{"name": "s", "shape": ["batch"], "dtype": "string"}], 1)


def test_generated_feed_runs(models):
    session, _ = create_session(models["tokens"], threads=1)
    feed = generate_feed(input_specs(session), 3, dims={"seq_len": 9})
    (out,) = run_session(session, feed)
    assert out.shape == (3, 4)


def test_dataset_tiles_and_casts(tmp_path, models):
    specs = inspect_onnx(models["tokens"])["inputs"]
    path = tmp_path / "data.npz"
    ids = np.arange(3 * 5, dtype=np.int32).reshape(3, 5)  # int32 -> model's int64
    np.savez(path, input_ids=ids, attention_mask=np.ones((3, 5), np.int64),
             labels=np.zeros(3))
    arrays = load_dataset(path, specs)
    assert set(arrays) == {"input_ids", "attention_mask"}  # labels ignored
    assert arrays["input_ids"].dtype == np.int64 and dataset_samples(arrays) == 3
    feed = dataset_feed(arrays, 7, start=1)
    assert feed["input_ids"].shape == (7, 5)
    assert [int(r[0]) for r in feed["input_ids"]] == [5, 10, 0, 5, 10, 0, 5]  # wraps around


def test_dataset_odd_names(tmp_path, models):
    specs = inspect_onnx(models["odd_names"])["inputs"]
    path = tmp_path / "odd.npz"
    np.savez(path, **{"input/ids:0": np.ones((4, 8), np.float64)})
    feed = dataset_feed(load_dataset(path, specs), 2)
    assert feed["input/ids:0"].dtype == np.float32 and feed["input/ids:0"].shape == (2, 8)


def test_dataset_missing_input(tmp_path, models):
    specs = inspect_onnx(models["tokens"])["inputs"]
    path = tmp_path / "d.npz"
    np.savez(path, input_ids=np.zeros((2, 4), np.int64), ids=np.zeros(2))
    with pytest.raises(DatasetMismatch) as err:
        load_dataset(path, specs)
    assert "attention_mask" in err.value.detail and "'ids'" in err.value.detail


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((2, 7), np.float32)}, "expects 128"),
        ({"x": np.zeros((2, 3, 128), np.float32)}, "rank"),
        ({"x": np.zeros((0, 128), np.float32)}, "no samples"),
        ({"x": np.zeros((2, 128), np.complex64)}, "cannot be safely converted"),
    ],
)
def test_dataset_shape_and_dtype_errors(tmp_path, models, arrays, match):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetMismatch, match=match):
        load_dataset(path, inspect_onnx(models["mlp"])["inputs"])


def test_dataset_not_npz(tmp_path, models):
    path = tmp_path / "d.npz"
    path.write_text("hello")
    with pytest.raises(DatasetMismatch, match="npz"):
        load_dataset(path, inspect_onnx(models["mlp"])["inputs"])
    np.save(tmp_path / "one.npy", np.zeros((2, 128), np.float32))
    with pytest.raises(DatasetMismatch, match="single .npy"):
        load_dataset(tmp_path / "one.npy", inspect_onnx(models["mlp"])["inputs"])


def test_int_dataset_narrowing_checked(tmp_path):
    specs = [{"name": "ids", "shape": ["batch", 2], "dtype": "int32"}]
    path = tmp_path / "d.npz"
    np.savez(path, ids=np.array([[1, 2**40]], np.int64))
    with pytest.raises(DatasetMismatch, match="int32"):
        load_dataset(path, specs)
