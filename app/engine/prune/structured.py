"""Technique ``prune.structured``: remove whole channels / neurons (Torch-Pruning's dependency
graph), optionally recover accuracy by fine-tuning (labels or the unpruned model as teacher),
export back to ONNX, verify it in onnxruntime, and compare with the parent in the same run.

Module top imports pydantic-level code only; torch and friends are imported inside ``run()``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from app.engine.params import MeasureParams, Name
from app.engine.base import Context, Result, Technique, register
from app.engine.reports import SCHEMA_VERSION, checked
from app.engine.errors import DatasetMismatch
from app.engine.pytorch.params import KDParams, TrainingParams


class FineTune(TrainingParams, KDParams):
    """Recovery training after pruning."""

    source: Literal["labels", "teacher"] = Field(
        default="labels",
        description="labels: cross-entropy on the dataset's labels. teacher: distillation from "
        "the unpruned model (temperature/alpha as in distill; labels optional).",
        json_schema_extra={"examples": ["labels", "teacher"]})


class PruneStructuredParams(MeasureParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ratio": 0.5, "importance": "l1"},
        {"ratio": 0.5, "importance": "l2", "fine_tune": {"epochs": 5, "lr": "auto"}},
        {"ratio": 0.3, "keep_layers": ["0/Conv"], "fine_tune": {"source": "teacher"}},
    ]})

    ratio: float = Field(
        default=0.5, gt=0.0, le=0.95,
        description="Share of channels (conv) / neurons (linear) removed from every prunable "
        "layer; coupled layers (residual adds) are pruned together.",
        json_schema_extra={"examples": [0.5]})
    importance: Literal["l1", "l2", "taylor"] = Field(
        default="l1",
        description="How channels are ranked: L1 or L2 norm of their weights, or Taylor "
        "(|weight x gradient| on a batch of the dataset, or of generated inputs). On the "
        "transformer (onnx) route, FFN neurons are ranked by |up column| x |down row| norms, "
        "or, with a dataset (or 'taylor'), by mean |activation| x |down row| norm.",
        json_schema_extra={"examples": ["l1"]})
    method: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="torch: onnx2torch + Torch-Pruning (CNNs, MLPs). onnx: remove transformer "
        "feed-forward neurons in the ONNX graph itself. auto: onnx for transformers (attention "
        "and feed-forward blocks), torch otherwise.",
        json_schema_extra={"examples": ["auto"]})
    keep_layers: list[Name] = Field(
        default_factory=list, max_length=256,
        description="Layers (ONNX node names, e.g. \"/layer1/conv/Conv\") whose output "
        "channels are kept. Layers producing the model's outputs are always kept.",
        json_schema_extra={"examples": [[]]})
    round_to: int | None = Field(
        default=None, ge=1, le=256,
        description="Keep channel counts a multiple of this (hardware-friendly shapes).",
        json_schema_extra={"examples": [None, 8]})
    fine_tune: FineTune | None = Field(
        default=None, description="Recovery training; needs the job's dataset.",
        json_schema_extra={"examples": [None, {"epochs": 5, "lr": "auto"}]})


@register
class PruneStructured(Technique):
    name = "prune.structured"
    description = (
        "Structured pruning: physically removes channels/neurons (Torch-Pruning dependency "
        "graph, residual-safe; transformer FFN neurons in the ONNX graph), optional recovery "
        "fine-tuning or distillation from the unpruned model; reports parameters, MACs, size, "
        "latency and accuracy before/after.")
    Params = PruneStructuredParams
    needs_dataset = False  # only fine_tune needs one; run() says so with advice
    produces_model = True

    @classmethod
    def trains_on_dataset(cls, params: PruneStructuredParams) -> bool:
        return params.fine_tune is not None

    def run(self, ctx: Context) -> Result:
        import copy

        import torch

        from app.engine.pytorch import data as td, report as tr
        from app.engine.pytorch.export import export_module, sample_feed, verify_against
        from app.engine.pytorch.loading import onnx_to_torch, require_onnx
        from app.engine.prune.methods import structured_prune
        from app.engine.pytorch.runner import torch_device, train

        p = self.params_of(ctx)
        require_onnx(ctx.model_path, self.name)
        ft = p.fine_tune
        if ft is not None and ctx.dataset_path is None:
            raise DatasetMismatch("fine_tune needs the job's dataset: add dataset_id (an .npz "
                                  "with the model's inputs and, for source 'labels', 'labels')")
        from app.engine.prune import onnx_route

        if onnx_route.uses_onnx_route(ctx.model_path, p.method):
            report, output = onnx_route.run(ctx, p, self.name)
            return Result(report=checked({"schema_version": SCHEMA_VERSION,
                                          "technique": self.name, **report}), output_path=output)
        ctx.progress(0.0, "loading")
        torch.manual_seed(p.seed)
        notes: list[str] = []
        from app.engine.prune.canonical import prunable_copy

        prunable = prunable_copy(ctx.model_path, ctx.workdir, ctx.native_step_timeout_s)
        module = onnx_to_torch(prunable, ctx.workdir, ctx.native_step_timeout_s)
        data = train_data = val_data = None
        if ctx.dataset_path is not None:
            data = td.load_arrays(ctx.dataset_path, ctx.model_path, why=self.name,
                                  need_labels=ft is not None and ft.source == "labels")
            train_data, val_data = td.split(data, ft.val_fraction if ft else 0.0,
                                            ft.seed if ft else 0)
            sample = [torch.from_numpy(a[:64]) for a in train_data["inputs"]]
            labels = None if data["labels"] is None else \
                torch.from_numpy(train_data["labels"][:64])
        else:
            feed = sample_feed(ctx.model_path, batch=8)
            sample, labels = [torch.from_numpy(v) for v in feed.values()], None
        before = copy.deepcopy(module)
        ctx.progress(0.05, "pruning")
        pruned = structured_prune(module, sample, ratio=p.ratio, importance=p.importance,
                                  keep=p.keep_layers, round_to=p.round_to, labels=labels)
        training = None
        if ft is not None:
            assert data is not None and train_data is not None
            teacher_alpha = ft.alpha if ft.source == "teacher" else 0.0
            if ft.source == "teacher":
                for part in (train_data, val_data):
                    if part is not None:
                        part["teacher"] = td.teacher_logits(ctx.model_path, part, ctx.device)
            from app.engine.pytorch.train import first_output

            with torch.no_grad():
                td.check_labels(train_data, int(first_output(before(*sample)).shape[1]))
            device = torch_device(ctx, notes)
            training = train(ctx, module, train_data, val_data, ft, temperature=ft.temperature,
                             alpha=teacher_alpha, device=device, span=(0.1, 0.6))
        ctx.progress(0.6, "exporting")
        output = export_module(module, sample, ctx.workdir / "model.onnx", ctx.model_path,
                               ctx.native_step_timeout_s)
        verification = verify_against(ctx.model_path, output)
        evaluation = ctx.dataset_path
        if val_data is not None:  # trained on the rest: score on the held-out part only
            evaluation = td.save_heldout(val_data, ctx.workdir / "heldout.npz")
        elif training is not None:
            notes.append("val_fraction is 0: accuracy is measured on the training data")
        measured = tr.compare(ctx, p, output, evaluation, span=(0.62, 0.98))
        parent, result = (tr.stats(ctx.model_path, before, sample),
                          tr.stats(output, module, sample))
        report = {
            "schema_version": SCHEMA_VERSION, "technique": self.name,
            "parent": parent, "result": result,
            "pruning": {"ratio": p.ratio, "importance": p.importance, "round_to": p.round_to,
                        "method": "torch", **pruned, "layer_shapes": _shapes(before, module)},
            "training": training, "verification": verification,
            "device": ctx.device, **measured,
            "verdict": tr.verdict(parent, result, measured),
            "environment": tr.environment(), "notes": notes,
        }
        return Result(report=checked(report), output_path=output)


def _shapes(before, after) -> dict[str, dict[str, list[int]]]:
    from app.engine.pytorch.macs import layer_shapes

    old, new = layer_shapes(before), layer_shapes(after)
    return {name: {"before": old[name], "after": new.get(name)} for name in old}
