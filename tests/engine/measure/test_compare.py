"""compare: interleaved timing on the same inputs, ratios to the job's model, accuracy."""

from __future__ import annotations

import numpy as np

from app.engine.measure.compare import Compare, CompareParams


def test_compare_ratios_and_accuracy(models, make_ctx, tmp_path):
    import onnx

    # The same model twice (a copy with another doc string): ratios must be near 1.
    twin = tmp_path / "twin.onnx"
    m = onnx.load(models["mlp"])
    m.doc_string = "twin"
    onnx.save(m, twin)
    x = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.zeros(64, np.int64))
    ctx = make_ctx(models["mlp"], CompareParams(model_ids=["twin"], batch_sizes=[1, 16], warmup=2, min_runs=30,
                                                min_seconds=0.05, max_seconds=2, ci_target=0.05),
                   dataset=tmp_path / "d.npz")
    ctx.models = {"twin": twin}
    report = Compare().run(ctx).report
    assert [m["id"] for m in report["models"]] == ["job-model", "twin"]
    assert [p["batch_size"] for p in report["points"]] == [1, 16]
    for point in report["points"]:
        assert point["ratios"]["job-model"] == 1.0
        assert 0.7 < point["ratios"]["twin"] < 1.4, point  # same model: within noise
        assert point["results"]["twin"]["runs"] == point["results"]["job-model"]["runs"] >= 30
        est = point["results"]["twin"]["vs_reference"]  # per-round ratios, interleaved
        assert est["reference"] == "job-model" and "vs_reference" not in point["results"]["job-model"]
        assert est["ci_low"] <= est["speedup"] <= est["ci_high"] and est["rounds"] >= 10
        assert point["host_load"]["cores"] >= 1
    assert report["host_load"]["points"] == 2
    assert report["summary"].startswith("twin: speedup ") and "over the job model (" in report["summary"]
    acc = report["accuracy"]
    assert acc["twin"]["fidelity"]["outputs"]  # fidelity to the job model
    cos = next(iter(acc["twin"]["fidelity"]["outputs"].values()))
    assert cos["cosine_min"] > 0.9999
    assert acc["job-model"]["accuracy"]["model"] == acc["twin"]["accuracy"]["model"]
