"""Tiny random-weight transformer encoders (transformers configs), exported to ONNX with both
torch exporters, and a token dataset whose padding makes the attention masks' -inf appear."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

VOCAB = 100


def encoder(kind: str):
    import torch
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    if kind in ("bert", "bert-eager"):  # bert: transformers' default (sdpa) attention
        config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
        if kind == "bert-eager":
            config._attn_implementation = "eager"
        model = BertModel(config)
    else:
        model = DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2,
                                                 hidden_dim=64, max_position_embeddings=64))

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Hidden().eval()


def tokens(n: int = 16, seq: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids with right padding of varied lengths (masked positions in every batch)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, seq)).astype(np.int64)
    lengths = rng.integers(3, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def export_encoder(kind: str, path: Path, *, dynamo: bool, opset: int | None = None) -> Path:
    import torch

    data = tokens(2)
    args = (torch.from_numpy(data["input_ids"]), torch.from_numpy(data["attention_mask"]))
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            torch.onnx.export(encoder(kind), args, str(path), input_names=names,
                              output_names=["out"], dynamo=True, verbose=False, external_data=False,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names})
        else:
            axes = {n: {0: "batch", 1: "seq"} for n in [*names, "out"]}
            torch.onnx.export(encoder(kind), args, str(path), input_names=names,
                              output_names=["out"], dynamic_axes=axes, opset_version=opset,
                              dynamo=False)
    return path
