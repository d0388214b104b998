"""Training options shared by ``distill`` and ``prune.structured``'s recovery fine-tuning.

pydantic only (the API builds JSON Schemas from these without loading torch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from app.engine.base import Params


class TrainingParams(Params):
    """How to train: optimizer, learning rate (or a range test), batches, epochs, stopping."""

    optimizer: Literal["adamw", "sgd", "auto"] = Field(
        default="adamw", description="AdamW, SGD with Nesterov momentum 0.9, or \"auto\": both "
        "tried, the one with the lower held-out loss after a short run kept.",
        json_schema_extra={"examples": ["adamw", "auto"]})
    lr: float | Literal["auto"] = Field(
        default="auto",
        description="Learning rate, or \"auto\": a range test (LR raised exponentially until "
        "the loss diverges) proposes the lower of its steepest descent and a tenth of the LR at "
        "its lowest loss; that rate, x3 and /3 each train a copy of the model for a sixth of "
        "the run (cosine-decayed), and the lowest rate whose held-out loss is within noise (2 "
        "paired standard errors) of the best is used, the grid extended x3 or /3 (at most "
        "twice) while an edge rate wins. The curve and every trial are in the report.",
        json_schema_extra={"examples": ["auto", 0.001]})
    batch_size: int | Literal["auto"] = Field(
        default=64, description="Samples per step (per process when processes > 1), or \"auto\": "
        "32, 64 and 128 tried like the learning rate.", json_schema_extra={"examples": [64, "auto"]})

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 4096:
            raise ValueError("batch_size must be from 1 to 4096, or \"auto\"")
        return value
    epochs: int = Field(default=10, ge=1, le=1000, description="Most epochs to train.",
                        json_schema_extra={"examples": [10]})
    patience: int = Field(
        default=3, ge=1, le=100,
        description="Early stopping: stop after this many epochs without a lower held-out "
        "loss; the weights of the best epoch are kept.", json_schema_extra={"examples": [3]})
    val_fraction: float = Field(
        default=0.2, ge=0.0, le=0.5,
        description="Share of the dataset held out for early stopping and the accuracy in the "
        "report (0: no early stopping, accuracy then measured on training data).",
        json_schema_extra={"examples": [0.2]})
    processes: int = Field(
        default=1, ge=1, le=16,
        description="Data-parallel training on this many processes (DistributedDataParallel: "
        "gloo on CPU, NCCL on GPU), each on its shard of the data.",
        json_schema_extra={"examples": [1, 2]})
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for the split, "
                      "shuffling and initialisation.", json_schema_extra={"examples": [0]})

    def lr_value(self) -> float | None:
        return None if self.lr == "auto" else float(self.lr)


class KDParams(Params):
    """The distillation loss: alpha x T² x KL(teacher_T || student_T) + (1 - alpha) x CE."""

    temperature: float = Field(
        default=4.0, gt=0.0, le=100.0,
        description="Softmax temperature for the soft targets (higher: softer).",
        json_schema_extra={"examples": [4.0]})
    alpha: float = Field(
        default=0.7, ge=0.0, le=1.0,
        description="Weight of the teacher (soft) term; 1 - alpha weighs the labels. 0 trains "
        "on labels only, 1 on the teacher only (no labels needed).",
        json_schema_extra={"examples": [0.7]})
