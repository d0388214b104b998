"""The training loop shared by distill and prune.structured recovery: knowledge-distillation
loss, early stopping on a held-out split, and a learning-rate range test.

Data are plain numpy arrays in a dict: ``inputs`` (one array per model input, ONNX input
order), optional ``labels`` (class ids) and optional ``teacher`` (teacher logits, computed once
up front so training never runs the teacher and data-parallel ranks never need it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

EpochFn = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    optimizer: str = "adamw"  # adamw | sgd
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.0  # weight of the soft (teacher) term; 1 - alpha weighs the labels
    patience: int = 3
    weight_decay: float = 1e-4
    seed: int = 0
    objective: str = "kd"  # kd | mse: match the teacher's outputs (embeddings, no classes)


def kd_loss(student: Any, teacher: Any | None, labels: Any | None, cfg: TrainConfig) -> Any:
    """alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels). T² keeps
    the soft term's gradients on the same scale as the hard term's whatever the temperature."""
    import torch.nn.functional as F

    if cfg.objective == "mse":  # relative to the teacher's energy: 1.0 = outputs of zeros
        return F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp_min(1e-12)
    alpha = cfg.alpha if labels is not None else 1.0
    alpha = alpha if teacher is not None else 0.0
    loss = 0.0
    if alpha > 0:
        t = cfg.temperature
        soft = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                        reduction="batchmean")
        loss = loss + alpha * soft * t * t
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student, labels)
    return loss


def _correct(out: Any, labels: Any, teacher: Any, cfg: TrainConfig) -> int:
    """Top-1 hits against the labels, else the teacher's top-1; 0 for the mse objective."""
    if cfg.objective == "mse":
        return 0
    target = labels if labels is not None else teacher.argmax(1)
    return int((out.argmax(1) == target).sum())


def first_output(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _tensors(data: dict[str, Any]) -> tuple[list[Any], int]:
    import torch

    ts = [torch.from_numpy(a) for a in data["inputs"]]
    for key in ("labels", "teacher"):
        if data.get(key) is not None:
            ts.append(torch.from_numpy(data[key]))
    return ts, len(data["inputs"])


def _split(batch: list[Any], n: int, data: dict[str, Any], device: Any) -> tuple[Any, Any, Any]:
    batch = [t.to(device) for t in batch]
    rest = batch[n:]
    labels = rest.pop(0).long() if data.get("labels") is not None else None
    teacher = rest.pop(0).float() if data.get("teacher") is not None else None
    return batch[:n], labels, teacher


def make_optimizer(params: Any, cfg: TrainConfig) -> Any:
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                               nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def evaluate(model: Any, data: dict[str, Any], cfg: TrainConfig, device: Any) -> dict[str, Any]:
    """Loss (the training objective) and accuracy on ``data``: against labels when there are
    labels, else agreement with the teacher's top-1."""
    import torch

    tensors, n = _tensors(data)
    model.eval()
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(tensors[0]), 256):
            inputs, labels, teacher = _split([t[start:start + 256] for t in tensors], n, data,
                                             device)
            out = first_output(model(*inputs)).float()
            total += float(kd_loss(out, teacher, labels, cfg)) * len(out)
            correct += _correct(out, labels, teacher, cfg)
            count += len(out)
    accuracy = None if cfg.objective == "mse" else correct / max(count, 1)
    return {"loss": total / max(count, 1), "accuracy": accuracy}


def fit(model: Any, train: dict[str, Any], val: dict[str, Any] | None, cfg: TrainConfig, *,
        device: Any = "cpu", on_epoch: EpochFn | None = None, rank: int = 0, world: int = 1,
        wrapped: Any = None, tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place (``wrapped`` = its DistributedDataParallel wrapper, if any),
    keeping the weights of the epoch with the lowest held-out loss. ``tick`` is called every
    few dozen steps so that a cancel does not wait for the end of a long epoch."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    torch.manual_seed(cfg.seed)
    tensors, n = _tensors(train)
    dataset = TensorDataset(*tensors)
    sampler = (DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                  seed=cfg.seed) if world > 1 else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                        shuffle=sampler is None, generator=gen if sampler is None else None)
    net = wrapped if wrapped is not None else model
    opt = make_optimizer(model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    history: list[dict[str, Any]] = []
    best_loss, best_state, best_epoch, stopped, bad = math.inf, None, 0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)  # a different shuffle per epoch, the same on every rank
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        for step, batch in enumerate(loader, start=1):
            if tick is not None and step % 25 == 0:
                tick()
            inputs, labels, teacher = _split(batch, n, train, device)
            out = first_output(net(*inputs)).float()
            loss = kd_loss(out, teacher, labels, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.tensor([float(loss.detach()) * len(out),
                                  _correct(out, labels, teacher, cfg), len(out)], dtype=torch.float64)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        if world > 1:  # the report shows the loss over the whole epoch, every shard included
            torch.distributed.all_reduce(sums)
        record = {"epoch": epoch, "lr": float(f"{lr:.4g}"),
                  "train_loss": round(float(sums[0] / sums[2]), 6),
                  "train_accuracy": None if cfg.objective == "mse" else round(float(sums[1] / sums[2]), 6)}
        if val is not None:
            # Every rank scores the full held-out split: identical weights give identical
            # decisions, so early stopping needs no extra communication.
            scored = evaluate(model, val, cfg, device)
            record.update(val_loss=round(scored["loss"], 6), val_accuracy=None
                          if scored["accuracy"] is None else round(scored["accuracy"], 6))
            if scored["loss"] < best_loss - 1e-7:
                best_loss, best_epoch, bad = scored["loss"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if val is not None and bad >= cfg.patience:
            stopped = epoch
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"epochs": history, "best_epoch": best_epoch or len(history),
            "stopped_early_at_epoch": stopped, "restored_best_weights": best_state is not None}


def lr_range_test(model: Any, train: dict[str, Any], cfg: TrainConfig, *, device: Any = "cpu",
                  steps: int = 80, start: float = 1e-6, end: float = 1.0) -> tuple[float, list]:
    """Leslie Smith's range test on a copy of ``model``: raise the LR exponentially each step,
    record the smoothed loss, stop when it diverges. The chosen LR is a tenth of the LR at the
    lowest smoothed loss: the minimum itself is already at the edge of instability."""
    import copy

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(cfg.seed)
    probe = copy.deepcopy(model).to(device).train()
    tensors, n = _tensors(train)
    loader = DataLoader(TensorDataset(*tensors), batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    opt = make_optimizer(probe.parameters(), replace(cfg, lr=start))
    factor = (end / start) ** (1 / max(steps - 1, 1))
    curve: list[dict[str, float]] = []
    avg, best, best_lr, lr, step = 0.0, math.inf, start, start, 0
    while step < steps:
        for batch in loader:
            inputs, labels, teacher = _split(batch, n, train, device)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = kd_loss(first_output(probe(*inputs)).float(), teacher, labels, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            avg = 0.9 * avg + 0.1 * value
            smooth = avg / (1 - 0.9**step)  # bias-corrected moving average
            if not math.isfinite(value) or (step > 5 and smooth > 4 * best):
                step = steps
                break
            curve.append({"lr": float(f"{lr:.4g}"), "loss": round(smooth, 6)})
            if smooth < best:
                best, best_lr = smooth, lr
            lr *= factor
            if step >= steps:
                break
    chosen = min(max(best_lr / 10, start), end)
    return float(f"{chosen:.3g}"), curve


def _probe(model: Any, train: dict[str, Any], val: dict[str, Any], cfg: TrainConfig, *,
           device: Any, steps: int) -> dict[str, Any]:
    """A copy of ``model`` trained ``steps`` steps with ``cfg`` (constant LR), scored on ``val``."""
    import copy

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(cfg.seed)
    probe = copy.deepcopy(model).to(device).train()
    tensors, n = _tensors(train)
    loader = DataLoader(TensorDataset(*tensors), batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    opt = make_optimizer(probe.parameters(), cfg)
    done = 0
    while done < steps:
        for batch in loader:
            inputs, labels, teacher = _split(batch, n, train, device)
            loss = kd_loss(first_output(probe(*inputs)).float(), teacher, labels, cfg)
            if not math.isfinite(float(loss.detach())):
                return {"loss": math.inf, "accuracy": None}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    return evaluate(probe, val, cfg, device)


def choose_recipe(model: Any, train: dict[str, Any], val: dict[str, Any] | None, cfg: TrainConfig, *,
                  optimizers: list[str], batch_sizes: list[int], auto_lr: bool, device: Any = "cpu",
                  steps: int = 150, tick: Callable[[], None] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Learning rate, optimizer and batch size, each validated on held-out data rather than read
    off a curve: for every optimizer, a range test proposes a rate (a tenth of the rate at the
    lowest loss) and its neighbours x3 and /3; each (optimizer, rate) trains a copy for
    ``steps`` steps and is scored on ``val`` (a fifth of ``train`` when there is no held-out
    split); the lowest held-out loss wins. Then the other batch sizes, at the winner's rate
    scaled by the square root of the batch ratio. Returns the config and the report section."""
    if val is None or not len(val["inputs"][0]):
        cut = max(1, len(train["inputs"][0]) // 5)
        val = {k: (None if v is None else [a[:cut] for a in v] if k == "inputs" else v[:cut])
               for k, v in train.items()}
        train = {k: (None if v is None else [a[cut:] for a in v] if k == "inputs" else v[cut:])
                 for k, v in train.items()}
    trials: list[dict[str, Any]] = []
    curves: dict[str, list] = {}

    def trial(c: TrainConfig, why: str) -> dict[str, Any]:
        scored = _probe(model, train, val, c, device=device, steps=steps)
        trials.append({"optimizer": c.optimizer, "lr": c.lr, "batch_size": c.batch_size, "why": why,
                       "val_loss": round(scored["loss"], 6) if math.isfinite(scored["loss"]) else None,
                       "val_accuracy": None if scored["accuracy"] is None else round(scored["accuracy"], 6)})
        if tick is not None:
            tick()
        return {"cfg": c, "loss": scored["loss"]}

    best = None
    for name in optimizers:
        base = replace(cfg, optimizer=name)
        if auto_lr:
            lr, curves[name] = lr_range_test(model, train, base, device=device)
            rates = [(lr, "range test: lr at the lowest loss / 10"), (lr * 3, "x3"), (lr / 3, "/3")]
        else:
            rates = [(cfg.lr, "given")]
        for rate, why in rates:
            result = trial(replace(base, lr=float(f"{rate:.3g}")), why)
            if best is None or result["loss"] < best["loss"]:
                best = result
    assert best is not None
    chosen = best["cfg"]
    for size in batch_sizes:
        if size != chosen.batch_size:
            scaled = float(f"{chosen.lr * math.sqrt(size / chosen.batch_size):.3g}")
            result = trial(replace(chosen, batch_size=size, lr=scaled), "batch size, lr x sqrt(ratio)")
            if result["loss"] < best["loss"]:
                best = result
    chosen = best["cfg"]
    report = {"rule": f"each candidate trains {steps} steps from the same weights; lowest held-out loss wins",
              "chosen_lr": chosen.lr, "curve": curves.get(chosen.optimizer, []),
              "held_out": len(val["inputs"][0]), "trials": trials, "curves": curves,
              "chosen": {"optimizer": chosen.optimizer, "lr": chosen.lr, "batch_size": chosen.batch_size}}
    return chosen, report
