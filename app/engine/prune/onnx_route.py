"""``prune.structured`` on transformers: FFN neurons removed in the ONNX graph (``prune.ffn``),
optional recovery by distillation from the parent (``prune.ffn_recovery``), then the same
verification and same-run comparison with the parent as the torch route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from app.engine.base import Context
from app.engine.errors import InvalidParams
from app.engine.prune import ffn
from app.engine.pytorch import data as td, report as tr
from app.engine.pytorch.export import io_specs, sample_feed, verify_against
from app.engine.runtime.inputs import generate_feed
from app.engine.runtime.model_info import inspect_onnx

HEADS_NOT_PRUNED = (
    "not pruned: the Q/K/V Reshape nodes that split heads take a shape computed at run time "
    "(Shape -> Concat with the head count as one constant element; only dynamo exports of "
    "fixed-length inputs such as Whisper's use a constant), and dynamo exports share that "
    "shape tensor between layers, so removing heads means rewriting those shape computations "
    "per layer; only FFN neurons are removed")


def uses_onnx_route(path: Path, method: str) -> bool:
    """``auto``: transformers (attention and FFN blocks whose weights outweigh any
    convolution: Whisper's and ViT's conv stems included) take the ONNX route; CNNs and MLPs
    the torch route."""
    if method != "auto":
        return method == "onnx"

    model = onnx.load(str(path), load_external_data=False)
    if not ffn.has_attention(model):
        return False
    blocks = ffn.find_blocks(model)
    return bool(blocks) and ffn.block_parameters(model, blocks) > ffn.conv_parameters(model)


def _feeds(ctx: Context, data: dict[str, Any] | None, batch: int = 16,
           samples: int = 256) -> list[dict[str, Any]]:
    if data is None:
        return [sample_feed(ctx.model_path, batch=8)]
    n = min(samples, len(data["inputs"][0]))
    return [{name: a[i:i + batch] for name, a in zip(data["names"], data["inputs"])}
            for i in range(0, n, batch)]


def run(ctx: Context, p: Any, name: str) -> tuple[dict[str, Any], Path]:
    """The report (before ``checked``) and the output path."""
    ctx.progress(0.0, "finding FFN blocks")
    model = onnx.load(str(ctx.model_path), load_external_data=False)
    blocks = ffn.require_blocks(model)
    protected = ffn.check_keep(blocks, p.keep_layers)
    if len(protected) == len(blocks):
        raise InvalidParams("keep_layers protects every feed-forward block: nothing to prune")
    notes: list[str] = []
    data = None
    if ctx.dataset_path is not None:
        data = td.load_arrays(ctx.dataset_path, ctx.model_path, need_labels=False, why=name)
    by_activation = data is not None or p.importance == "taylor"
    graph = ffn.Graph(model)
    norm = 2 if p.importance == "l2" else 1
    if by_activation:
        ctx.progress(0.03, "measuring activations")
        means = ffn.activation_means(ctx.model_path, blocks, _feeds(ctx, data), ctx.workdir)
        scores = [m * ffn.neuron_norms(graph, b.down, norm) for m, b in zip(means, blocks)]
        source = ("mean |activation| x down-projection row L%d norm, on %s" %
                  (norm, "the dataset" if data is not None else "generated inputs"))
        if p.importance == "taylor":
            notes.append("importance 'taylor' on the ONNX route ranks neurons by activations "
                         "(mean |activation| x weight norm): there is no torch graph to "
                         "differentiate")
    else:
        scores = [ffn.magnitude(graph, b, norm) for b in blocks]
        source = f"weights: up-projection column L{norm} norm x down-projection row L{norm} norm"
    ctx.progress(0.06, "pruning")
    details, targets = ffn.prune_blocks(model, blocks, scores, p.ratio, p.round_to, protected)
    output = ctx.workdir / "model.onnx"
    onnx.save(model, str(output))
    training = None
    recovery = "none (no fine_tune)"
    if p.fine_tune is not None:
        from app.engine.prune.ffn_recovery import recover

        assert data is not None  # structured.run refuses fine_tune without a dataset
        ctx.progress(0.08, "recovery")
        training = recover(ctx, model, output, targets, data, p.fine_tune, notes)
        recovery = ("distillation from the parent" if training is not None
                    else "skipped (see notes)")
    ctx.progress(0.6, "verifying")
    verification = verify_against(ctx.model_path, output)
    evaluation = ctx.dataset_path
    if training is not None and training.get("val_samples"):
        from app.engine.pytorch.data import split

        _train, val = split({**data, "labels": data.get("labels")},
                            p.fine_tune.val_fraction, p.fine_tune.seed)
        evaluation = td.save_heldout(val, ctx.workdir / "heldout.npz")
    elif training is not None:
        notes.append("val_fraction is 0: fidelity is measured on the training data")
    measured = tr.compare(ctx, p, output, evaluation, span=(0.62, 0.97))
    one = _one_sample(ctx.model_path, p)
    parent = {"parameter_count": inspect_onnx(ctx.model_path)["parameter_count"],
              "macs": ffn.onnx_macs(ctx.model_path, one, ctx.workdir),
              "size_bytes": ctx.model_path.stat().st_size}
    result = {"parameter_count": inspect_onnx(output)["parameter_count"],
              "macs": ffn.onnx_macs(output, one, ctx.workdir),
              "size_bytes": output.stat().st_size}
    pruned = [d["name"] for d in details if not d["protected"]]
    report = {
        "parent": parent, "result": result,
        "pruning": {"ratio": p.ratio, "importance": p.importance, "round_to": p.round_to,
                    "method": "onnx_ffn", "protected_layers": sorted(protected),
                    "pruned_layers": pruned, "layer_shapes": _shapes(details),
                    "ffn": {"blocks": details, "importance_source": source,
                            "attention_heads": HEADS_NOT_PRUNED, "recovery": recovery}},
        "training": training, "verification": verification, "device": ctx.device,
        **measured, "verdict": tr.verdict(parent, result, measured),
        "environment": tr.environment(), "notes": notes,
    }
    return report, output


def _one_sample(path: Path, p: Any) -> dict[str, Any]:
    """One generated sample shaped as the latency grid's inputs (the job's dims)."""
    return generate_feed(io_specs(path)[0], 1, dims=p.dims, default_dim=p.default_dim,
                         int_high=p.int_high)


def _shapes(details: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Intermediate width per block, before and after (the torch route's layer_shapes)."""
    return {d["name"]: {"before": [d["neurons_before"]], "after": [d["neurons_after"]]}
            for d in details}
