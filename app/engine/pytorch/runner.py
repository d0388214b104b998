"""One training run for a technique: pick the device, run the LR range test when asked, train
in this process or on N data-parallel ranks, and report every epoch through the job's progress
(which may raise to cancel the job: it is never caught here).
"""

from __future__ import annotations

import time
from typing import Any

from app.engine.base import Context
from app.engine.pytorch.params import TrainingParams
from app.engine.pytorch.train import TrainConfig, choose_recipe, fit


def torch_device(ctx: Context, notes: list[str]) -> str:
    """CUDA on the gpu queue when this torch build and machine have it, else CPU (said so)."""
    import torch

    if ctx.device == "gpu":
        if torch.cuda.is_available():
            return "cuda"
        notes.append("device 'gpu' was requested but torch has no CUDA here; trained on CPU")
    return "cpu"


def train(ctx: Context, module: Any, train_data: dict, val_data: dict | None,
          params: TrainingParams, *, temperature: float, alpha: float, device: str,
          span: tuple[float, float], objective: str = "kd") -> dict[str, Any]:
    """Train ``module`` in place; returns the report's ``training`` section."""
    samples = len(train_data["inputs"][0])
    cfg = TrainConfig(epochs=params.epochs, lr=params.lr_value() or 1e-3,
                      optimizer="adamw" if params.optimizer == "auto" else params.optimizer,
                      batch_size=64 if params.batch_size == "auto" else params.batch_size,
                      temperature=temperature, alpha=alpha, patience=params.patience,
                      seed=params.seed, objective=objective)
    out: dict[str, Any] = {"epochs_max": params.epochs, "processes": params.processes,
                           "device": device, "train_samples": samples,
                           "val_samples": len(val_data["inputs"][0]) if val_data else 0,
                           "lr_range_test": None}
    module.to(device)
    if "auto" in (params.lr, params.optimizer, params.batch_size):
        ctx.progress(span[0], "choosing lr / optimizer / batch size on held-out data")
        cfg, chosen = choose_recipe(
            module, train_data, val_data, cfg, device=device, auto_lr=params.lr == "auto",
            optimizers=["adamw", "sgd"] if params.optimizer == "auto" else [cfg.optimizer],
            batch_sizes=[b for b in (32, 64, 128) if b <= max(32, samples // 4)]
            if params.batch_size == "auto" else [cfg.batch_size],
            tick=lambda: ctx.progress(span[0], "choosing lr / optimizer / batch size on held-out data"))
        out["lr_range_test"] = chosen
    out.update(optimizer=cfg.optimizer, batch_size=cfg.batch_size, lr=cfg.lr)
    width = span[1] - span[0]
    stage = {"fraction": span[0], "text": f"epoch 1/{cfg.epochs}"}

    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        loss = record.get("val_loss", record["train_loss"])
        stage.update(fraction=span[0] + width * epoch / cfg.epochs,
                     text=f"epoch {epoch}/{cfg.epochs} loss {loss:.4f}")
        ctx.progress(stage["fraction"], stage["text"])

    began = time.perf_counter()
    if params.processes > 1:
        from app.engine.pytorch.ddp import train_parallel

        history, _states = train_parallel(module, train_data, val_data, cfg,
                                          processes=params.processes, cuda=device == "cuda",
                                          workdir=ctx.workdir / "ddp", on_epoch=on_epoch)
        out["ranks_identical"] = True  # train_parallel raises otherwise
    else:
        history = fit(module, train_data, val_data, cfg, device=device, on_epoch=on_epoch,
                      tick=lambda: ctx.progress(stage["fraction"], stage["text"]))
    module.cpu().eval()
    out.update(history, seconds=round(time.perf_counter() - began, 2))
    return out
