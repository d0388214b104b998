"""Technique ``distill``: train a smaller student from the job's model (the teacher) with a
temperature-softened KL term plus hard-label cross-entropy, then export, verify and compare.

The student is the teacher structurally pruned (``{"pruned_ratio": r}``) or an uploaded ONNX
model (``{"model_id": ...}``; the API checks the tenant owns it through ``student_model_id``).
Module top imports pydantic-level code only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from app.engine.params import MeasureParams
from app.engine.base import Context, Params, Result, Technique, register
from app.engine.reports import SCHEMA_VERSION, checked
from app.engine.errors import DatasetMismatch, UnsupportedModel
from app.engine.pytorch.params import KDParams, TrainingParams


class Student(Params):
    """Exactly one of pruned_ratio or model_id."""

    pruned_ratio: float | None = Field(
        default=None, gt=0.0, le=0.95,
        description="Student = the teacher with this share of channels/neurons removed "
        "(L1 importance), initialised from the teacher's remaining weights.",
        json_schema_extra={"examples": [0.5]})
    model_id: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Student = this uploaded ONNX model (same inputs and output shape as the "
        "teacher), trained from its current weights.", json_schema_extra={"examples": [None]})

    @model_validator(mode="after")
    def _one(self) -> Student:
        if (self.pruned_ratio is None) == (self.model_id is None):
            raise ValueError("give exactly one of pruned_ratio or model_id")
        return self


class DistillParams(MeasureParams, TrainingParams, KDParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"student": {"pruned_ratio": 0.5}, "epochs": 10, "lr": "auto"},
        {"student": {"model_id": "0123456789abcdef0123456789abcdef"}, "temperature": 4,
         "alpha": 0.9, "optimizer": "sgd", "lr": 0.05, "processes": 2},
    ]})

    student: Student = Field(
        default=Student(pruned_ratio=0.5),
        description="The student: {\"pruned_ratio\": r} or {\"model_id\": id}.",
        json_schema_extra={"examples": [{"pruned_ratio": 0.5}]})
    importance: Literal["l1", "l2"] = Field(
        default="l1", description="Channel ranking when the student is the pruned teacher.",
        json_schema_extra={"examples": ["l1"]})

    @property
    def student_model_id(self) -> str | None:
        """Read by the API (Technique.model_params) to check the tenant owns the student."""
        return self.student.model_id


@register
class Distill(Technique):
    name = "distill"
    description = (
        "Knowledge distillation: train a student (the teacher pruned, or an uploaded model) "
        "on the teacher's softened outputs plus the labels; LR range test, early stopping, "
        "data-parallel training; reports per-epoch losses, size, MACs, latency, accuracy.")
    Params = DistillParams
    needs_dataset = True
    produces_model = True
    model_params = ("student_model_id",)

    @classmethod
    def trains_on_dataset(cls, params: DistillParams) -> bool:
        return True

    def run(self, ctx: Context) -> Result:
        import torch

        from app.engine.pytorch import data as td, report as tr
        from app.engine.pytorch.export import export_module, io_specs, verify_against
        from app.engine.pytorch.loading import onnx_to_torch, require_onnx
        from app.engine.pytorch.runner import torch_device, train

        p = self.params_of(ctx)
        require_onnx(ctx.model_path, self.name)
        if ctx.dataset_path is None:
            raise DatasetMismatch("distill needs the job's dataset (dataset_id): an .npz with "
                                  "the model's inputs and 'labels'")
        ctx.progress(0.0, "loading")
        torch.manual_seed(p.seed)
        notes: list[str] = []
        data = td.load_arrays(ctx.dataset_path, ctx.model_path, need_labels=p.alpha < 1,
                              why="distill with alpha < 1 (set alpha=1 to learn from the "
                              "teacher alone)")
        data["teacher"] = td.teacher_logits(ctx.model_path, data, ctx.device)
        td.check_labels(data, data["teacher"].shape[1])
        train_data, val_data = td.split(data, p.val_fraction, p.seed)
        sample = [torch.from_numpy(a[:64]) for a in train_data["inputs"]]
        teacher = onnx_to_torch(ctx.model_path, ctx.workdir, ctx.native_step_timeout_s)
        student_path = ctx.model_path
        if p.student.model_id is not None:
            student_path = ctx.models[p.student.model_id]
            require_onnx(student_path, "the student")
            want, got = io_specs(ctx.model_path)[0], io_specs(student_path)[0]
            if [s["name"] for s in want] != [s["name"] for s in got]:
                raise UnsupportedModel(
                    f"the student's inputs {[s['name'] for s in got]} differ from the "
                    f"teacher's {[s['name'] for s in want]}; export it with the same names")
            student = onnx_to_torch(student_path, ctx.workdir, ctx.native_step_timeout_s)
            pruning = None
        else:
            from app.engine.prune.methods import structured_prune

            student = onnx_to_torch(ctx.model_path, ctx.workdir, ctx.native_step_timeout_s)
            ctx.progress(0.03, "pruning the student")
            pruning = structured_prune(student, sample, ratio=p.student.pruned_ratio,
                                       importance=p.importance)
        from app.engine.pytorch.train import first_output

        with torch.no_grad():
            shape = list(first_output(student.eval()(*sample)).shape)
        if shape[1:] != list(data["teacher"].shape[1:]):
            raise UnsupportedModel(f"the student outputs {shape[1:]} per sample, the teacher "
                                   f"{list(data['teacher'].shape[1:])}; they must match")
        initial = _accuracy(student, val_data or train_data)
        device = torch_device(ctx, notes)
        training = train(ctx, student, train_data, val_data, p, temperature=p.temperature,
                         alpha=p.alpha if data["labels"] is not None else 1.0, device=device,
                         span=(0.05, 0.75))
        training["student_accuracy_before_training"] = initial
        ctx.progress(0.75, "exporting")
        output = export_module(student, sample, ctx.workdir / "model.onnx", ctx.model_path,
                               ctx.native_step_timeout_s)
        verification = verify_against(ctx.model_path, output)
        evaluation = (td.save_heldout(val_data, ctx.workdir / "heldout.npz")
                      if val_data is not None else ctx.dataset_path)
        if val_data is None:
            notes.append("val_fraction is 0: accuracy is measured on the training data")
        measured = tr.compare(ctx, p, output, evaluation, span=(0.77, 0.98))
        parent = tr.stats(ctx.model_path, teacher, sample)
        result = tr.stats(output, student, sample)
        report = {
            "schema_version": SCHEMA_VERSION, "technique": self.name,
            "parent": parent, "result": result,
            "student": {"kind": "pruned_teacher" if pruning else "uploaded",
                        **p.student.model_dump(), "pruning": pruning,
                        "source_size_bytes": student_path.stat().st_size},
            "loss": {"temperature": p.temperature, "alpha": p.alpha,
                     "formula": "alpha*T^2*KL(teacher_T||student_T) + (1-alpha)*CE(labels)"},
            "training": training, "verification": verification, "device": ctx.device,
            **measured, "verdict": tr.verdict(parent, result, measured),
            "environment": tr.environment(), "notes": notes,
        }
        return Result(report=checked(report), output_path=output)


def _accuracy(module, data) -> float | None:
    """Top-1 of ``module`` on ``data`` (labels, else agreement with the teacher)."""
    import torch

    from app.engine.pytorch.train import first_output

    module.eval()
    with torch.no_grad():
        out = torch.cat([first_output(module(*[torch.from_numpy(a[i:i + 256])
                                                for a in data["inputs"]]))
                         for i in range(0, len(data["inputs"][0]), 256)])
    target = data["labels"] if data.get("labels") is not None else data["teacher"].argmax(1)
    return round(float((out.argmax(1).numpy() == target).mean()), 6)
