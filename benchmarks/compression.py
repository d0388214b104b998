"""Pruning, distillation and the prune → distill → static INT8 pipeline, through the service.

  (a) A residual CNN (64 channels, two residual blocks) trained here on scikit-learn digits
      (1400 train / 397 held-out test). Rows: the original; 50 % structured pruning + recovery
      (distillation from the unpruned model + labels); the pipeline prune → distill (student =
      the pruned model pruned again by 50 %) → quantize.static. One `compare` job times all
      three in the same worker process, interleaved, at batch 32 with 1 thread, and scores
      their top-1 on the test set.
  (b) Does distillation help? A task where it should: 10-class synthetic data
      (make_classification: 40 features, 3 clusters per class, 5 % label noise), a wide
      teacher trained on 10 000 samples, and a small student (40→32→10) given only 1 000
      labelled samples. The same `distill` job is run with alpha=0 (labels only) and
      alpha=0.9 (mostly the teacher's soft targets); top-1 on 4 000 held-out samples.

    .venv/bin/python benchmarks/compression.py [--only cnn|kd]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.deploy import deployment, wait_job  # noqa: E402
from benchmarks.quantization import train_cnn  # noqa: E402 (the same residual CNN recipe)

MEASURE = {"batch_sizes": [32], "threads": [1], "min_runs": 30, "min_seconds": 1.0, "max_seconds": 20.0}
# lr "auto" (issue 15 item 4): on this BatchNorm-free pruned net the range test's loss creeps
# down again after the blow-up, so "a tenth of the lowest loss" proposed 0.059 and every
# candidate (x3, /3) was too high (86.4 % top-1); suggest_lr now starts from the steepest
# descent and the trial grid is bracketed, which is what this row checks.
RECOVER = {"epochs": 25, "lr": "auto", "source": "teacher", "alpha": 0.5, "patience": 5}


def upload(client, path: Path, kind: str = "models") -> str:
    r = client.post(f"/v1/{kind}", files={"file": (path.name, path.read_bytes())})
    r.raise_for_status()
    return r.json()["id"]


def job(client, body: dict) -> dict:
    r = client.post("/v1/jobs", json=body)
    if r.status_code != 202:
        raise SystemExit(f"job refused: {r.status_code} {r.text[:300]}")
    done = wait_job(client, r.json()["id"])
    if done["status"] != "succeeded":
        raise SystemExit(f"{body.get('technique', 'pipeline')} failed: {done['error']}")
    return {**done, "report": client.get(f"/v1/jobs/{done['id']}/report").json()}


def pipeline(client, model: str, data: str, steps: list[dict]) -> tuple[str, str]:
    """The service's pipeline job when it exists, else the same steps chained by hand."""
    r = client.post("/v1/jobs", json={"model_id": model, "steps": steps, "dataset_id": data})
    if r.status_code == 202:
        done = wait_job(client, r.json()["id"])
        if done["status"] != "succeeded":
            raise SystemExit(f"pipeline failed: {done['error']}")
        return done["output_model_id"], "one pipeline job"
    for step in steps:
        model = job(client, {"model_id": model, "dataset_id": data, **step})["output_model_id"]
    return model, f"chained jobs (pipeline request answered {r.status_code})"


def run_cnn(client, tmp: Path) -> None:
    model_path, test_path = train_cnn(tmp)  # test_path: the 397 held-out digits
    train_path = _digits_train(tmp)
    model, train, test = upload(client, model_path), upload(client, train_path, "datasets"), \
        upload(client, test_path, "datasets")
    prune = {"technique": "prune.structured",
             "params": {"ratio": 0.5, "importance": "l2", "fine_tune": RECOVER, **MEASURE}}
    pruned = job(client, {"model_id": model, "dataset_id": train, **prune})
    steps = [prune,
             {"technique": "distill", "params": {"student": {"pruned_ratio": 0.5}, "epochs": 25,
                                                 "lr": 3e-3, "alpha": 0.7, "patience": 5, **MEASURE}},
             {"technique": "quantize.static", "params": {"calibration": "minmax", "samples": 256,
                                                         "per_channel": True, **MEASURE}}]
    final, how = pipeline(client, model, train, steps)
    cmp = job(client, {"model_id": model, "technique": "compare", "dataset_id": test,
                       "params": {"model_ids": [pruned["output_model_id"], final], **MEASURE}})
    rows = [("original", model), ("50% structured + recovery", pruned["output_model_id"]),
            ("prune -> distill -> static INT8", final)]
    stats = {model: pruned["report"]["parent"], pruned["output_model_id"]: pruned["report"]["result"]}
    _print_cnn(client, cmp["report"], rows, stats, how, 64)
    _print_recovery(pruned["report"]["training"])


def _print_recovery(training: dict) -> None:
    """How lr "auto" chose the recovery's rate: every trial, the choice and the time taken."""
    choice = training.get("lr_range_test") or {}
    print(f"\nrecovery lr: {training['lr']} ({training['optimizer']}, batch {training['batch_size']}); "
          f"range-test readings {choice.get('proposals')}; held-out loss before training "
          f"{choice.get('val_loss_before')}")
    for t in choice.get("trials", []):
        print(f"  trial lr {t['lr']:<9g} {t.get('steps')} steps  held-out loss {t['val_loss']}  "
              f"acc {t['val_accuracy']}  ({t['why']})")
    print(f"  choosing took {choice.get('seconds')} s, training {training.get('seconds')} s "
          f"({len(training['epochs'])} epochs, best {training['best_epoch']})")


def _digits_train(tmp: Path) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target
    order = np.random.default_rng(0).permutation(len(x))  # the split train_cnn uses
    path = tmp / "digits_train.npz"
    np.savez(path, image=x[order[:1400]], labels=y[order[:1400]])
    return path


def _print_cnn(client, report: dict, rows, stats: dict, how: str, channels: int) -> None:
    point = next(p for p in report["points"] if p["batch_size"] == 32)
    ids = [i for _, i in rows]  # compare names every model by its id, the job's own included
    base = point["results"][ids[0]]["p50_ms"]
    print(f"\n(a) residual CNN ({channels} ch) on digits; p50 at batch 32, 1 thread, one compare job; "
          f"pipeline ran as {how}")
    head = f"{'model':34} {'params':>8} {'MACs':>10} {'size KB':>8} {'p50 ms':>8} {'speedup':>8} {'top-1':>7}"
    print(head + "\n" + "-" * len(head))
    for (label, model_id), key in zip(rows, ids):
        info = client.get(f"/v1/models/{model_id}").json()
        s = stats.get(model_id, {})
        acc = report["accuracy"][key]["accuracy"]["model"]["top1"] * 100
        p50 = point["results"][key]["p50_ms"]
        macs = f"{s['macs']:,}" if "macs" in s else "n/a"
        print(f"{label:34} {info['parameter_count']:>8,} {macs:>10} {info['size_bytes'] / 1024:8.1f} "
              f"{p50:8.3f} {base / p50:7.2f}x {acc:6.2f}%")


def run_kd(client, tmp: Path) -> None:
    import torch
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=15_000, n_features=40, n_informative=20, n_redundant=10,
                               n_classes=10, n_clusters_per_class=3, class_sep=1.0, flip_y=0.05,
                               random_state=0)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    teach, few, test = slice(0, 10_000), slice(10_000, 11_000), slice(11_000, 15_000)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(40, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                  torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x[teach]), torch.from_numpy(y[teach])
    for epoch in range(30):
        for b in torch.randperm(len(xt)).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(teacher(xt[b]), yt[b]).backward()
            opt.step()
    student = torch.nn.Sequential(torch.nn.Linear(40, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    paths = {}
    for name, net in (("teacher", teacher), ("student", student)):
        paths[name] = tmp / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.eval(), (xt[:2],), str(paths[name]), input_names=["x"],
                              output_names=["logits"], dynamo=False,
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    np.savez(tmp / "few.npz", x=x[few], labels=y[few])
    np.savez(tmp / "test.npz", x=x[test], labels=y[test])
    t_id, s_id = upload(client, paths["teacher"]), upload(client, paths["student"])
    few_id, test_id = upload(client, tmp / "few.npz", "datasets"), upload(client, tmp / "test.npz", "datasets")
    base = {"student": {"model_id": s_id}, "epochs": 60, "lr": 3e-3, "patience": 10, "temperature": 4.0,
            "batch_size": 64, "val_fraction": 0.2, "batch_sizes": [32], "min_seconds": 0.2}
    results = {}
    for alpha in (0.0, 0.9):
        out = job(client, {"model_id": t_id, "technique": "distill", "dataset_id": few_id,
                           "params": {**base, "alpha": alpha}})
        ev = job(client, {"model_id": out["output_model_id"], "technique": "evaluate",
                          "dataset_id": test_id, "params": {}})
        results[alpha] = (ev["report"], out["report"]["training"])
    teacher_top1 = job(client, {"model_id": t_id, "technique": "evaluate", "dataset_id": test_id,
                                "params": {}})["report"]
    print("\n(b) distillation on synthetic 10-class data (make_classification, 3 clusters/class, "
          "5% label noise); student 40-32-10 trained on 1 000 labelled samples; test = 4 000")
    print(f"teacher (40-512-512-10, 10 000 samples): top-1 {_top1(teacher_top1):.2f}%")
    for alpha, (ev, tr) in results.items():
        label = "labels only (alpha=0)" if alpha == 0 else "distilled (alpha=0.9, T=4)"
        print(f"student, {label:28}: top-1 {_top1(ev):.2f}%  (best epoch {tr['best_epoch']}, "
              f"{len(tr['epochs'])} epochs run)")


def _top1(report: dict) -> float:
    acc = report["accuracy"]
    return 100 * (acc["model"] if "model" in acc else acc)["top1"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["cnn", "kd"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with deployment("embedded", tmp_path / "data") as (client, _env):
            if args.only in (None, "cnn"):
                run_cnn(client, tmp_path)
            if args.only in (None, "kd"):
                run_kd(client, tmp_path)


if __name__ == "__main__":
    main()
