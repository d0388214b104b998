"""The training loop shared by distill and prune.structured recovery: knowledge-distillation
loss, early stopping on a held-out split, and a learning-rate range test.

Data are plain numpy arrays in a dict: ``inputs`` (one array per model input, ONNX input
order), optional ``labels`` (class ids) and optional ``teacher`` (teacher logits, computed once
up front so training never runs the teacher and data-parallel ranks never need it).
"""

from __future__ import annotations

import math
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

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


def kd_loss(student: Any, teacher: Any | None, labels: Any | None, cfg: TrainConfig, *,
            per_sample: bool = False) -> Any:
    """alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels). T² keeps
    the soft term's gradients on the same scale as the hard term's whatever the temperature.
    ``per_sample``: one loss per sample (their mean is the batch loss) instead of the mean."""
    import torch.nn.functional as F

    if cfg.objective == "mse":  # relative to the teacher's energy: 1.0 = outputs of zeros
        energy = teacher.pow(2).mean().clamp_min(1e-12)
        if per_sample:
            return (student - teacher).pow(2).flatten(1).mean(1) / energy
        return F.mse_loss(student, teacher) / energy
    alpha = cfg.alpha if labels is not None else 1.0
    alpha = alpha if teacher is not None else 0.0
    loss = 0.0
    if alpha > 0:
        t = cfg.temperature
        soft = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                        reduction="none").sum(1)
        loss = loss + alpha * (soft if per_sample else soft.mean()) * t * t
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student, labels,
                                                    reduction="none" if per_sample else "mean")
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


def evaluate(model: Any, data: dict[str, Any], cfg: TrainConfig, device: Any, *,
             per_sample: bool = False) -> dict[str, Any]:
    """Loss (the training objective) and accuracy on ``data``: against labels when there are
    labels, else agreement with the teacher's top-1. ``per_sample``: also ``losses``, the
    loss of every sample (numpy), for telling a real difference between models from noise."""
    import torch

    tensors, n = _tensors(data)
    model.eval()
    losses, correct, count = [], 0, 0
    with torch.no_grad():
        for start in range(0, len(tensors[0]), 256):
            inputs, labels, teacher = _split([t[start:start + 256] for t in tensors], n, data,
                                             device)
            out = first_output(model(*inputs)).float()
            losses.append(kd_loss(out, teacher, labels, cfg, per_sample=True).double().cpu().numpy())
            correct += _correct(out, labels, teacher, cfg)
            count += len(out)
    every = np.concatenate(losses) if losses else np.zeros(0)
    accuracy = None if cfg.objective == "mse" else correct / max(count, 1)
    scored = {"loss": float(every.mean()) if len(every) else 0.0, "accuracy": accuracy}
    if per_sample:
        scored["losses"] = every
    return scored


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
    record the smoothed loss, stop when it diverges. Returns ``suggest_lr(curve)["proposed"]``
    and the curve."""
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
    avg, best, lr, step = 0.0, math.inf, start, 0
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
            best = min(best, smooth)
            lr *= factor
            if step >= steps:
                break
    return suggest_lr(curve, start, end)["proposed"], curve


def suggest_lr(curve: list[dict[str, float]], start: float = 1e-6, end: float = 1.0) -> dict[str, float]:
    """Two readings of a range-test curve: a tenth of the LR at the lowest loss (fastai's old
    rule) and the LR where the loss falls fastest per decade (the steepest descent before that
    minimum, on the curve averaged over 5 points). ``proposed`` is the lower of the two: after
    a blow-up that kills the network (no BatchNorm to absorb it) the loss of a saturated model
    can creep down again and put the "minimum" past the point of divergence, while the
    steepest descent stays where training really works."""
    if not curve:
        return {"min_over_10": start, "steepest": start, "proposed": start}
    lrs = np.log10([p["lr"] for p in curve])
    loss = np.array([p["loss"] for p in curve], dtype=float)
    low = int(np.argmin(loss))
    min_over_10 = float(10 ** lrs[low]) / 10
    steepest = min_over_10
    if low >= 5:
        ahead = np.convolve(loss[:low + 1], np.ones(5) / 5, mode="valid")  # centred at i + 2
        slope = np.gradient(ahead, lrs[2:low - 1])
        steepest = float(10 ** lrs[2 + int(np.argmin(slope))])

    def clip(x: float) -> float:
        return float(f"{min(max(x, start), end):.3g}")

    return {"min_over_10": clip(min_over_10), "steepest": clip(steepest),
            "proposed": clip(min(min_over_10, steepest))}


def _probe(model: Any, train: dict[str, Any], val: dict[str, Any], cfg: TrainConfig, *,
           device: Any, steps: int) -> dict[str, Any]:
    """A copy of ``model`` trained ``steps`` steps with ``cfg``, its LR decayed from ``cfg.lr``
    to 0 on a cosine like a full run's, scored on ``val`` sample by sample."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(cfg.seed)
    probe = copy.deepcopy(model).to(device).train()
    tensors, n = _tensors(train)
    loader = DataLoader(TensorDataset(*tensors), batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    opt = make_optimizer(probe.parameters(), cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    done = 0
    while done < steps:
        for batch in loader:
            inputs, labels, teacher = _split(batch, n, train, device)
            loss = kd_loss(first_output(probe(*inputs)).float(), teacher, labels, cfg)
            if not math.isfinite(float(loss.detach())):
                return {"loss": math.inf, "accuracy": None, "losses": None}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done >= steps:
                break
    scored = evaluate(probe, val, cfg, device, per_sample=True)
    if not math.isfinite(scored["loss"]):
        scored.update(loss=math.inf, losses=None)
    return scored


def within_noise(a: dict[str, Any], b: dict[str, Any], z: float = 2.0) -> bool:
    """Is probe ``a`` no worse than probe ``b`` beyond the noise of the held-out sample? Both
    were scored on the same samples, so the test is paired: mean loss difference <= ``z``
    standard errors of the per-sample differences."""
    if a["losses"] is None:
        return b["losses"] is None
    if b["losses"] is None:
        return True
    diff = a["losses"] - b["losses"]
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()) <= z * se


def probe_steps(cfg: TrainConfig, samples: int, cap: int) -> int:
    """Steps per trial: a sixth of the full run's steps, at least 30, at most ``cap``."""
    total = cfg.epochs * max(1, math.ceil(samples / cfg.batch_size))
    return max(min(30, cap), min(cap, total // 6))


def choose_recipe(model: Any, train: dict[str, Any], val: dict[str, Any] | None, cfg: TrainConfig, *,
                  optimizers: list[str], batch_sizes: list[int], auto_lr: bool, device: Any = "cpu",
                  steps: int = 150, tick: Callable[[], None] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Learning rate, optimizer and batch size, each validated on held-out data rather than read
    off a curve. For every optimizer a range test proposes a rate (``suggest_lr``: the lower of
    the steepest descent and a tenth of the loss minimum); that rate, x3 and /3 each train a
    copy for a sixth of the full run's steps (at most ``steps``; the LR decayed on a cosine as
    in ``fit``) and are scored on ``val`` (a fifth of ``train`` when there is no held-out
    split). The lowest rate whose held-out loss is within noise (2 paired standard errors) of
    the best wins; when that is the top or bottom of the grid, the grid is extended that way
    (x3 or /3, at most twice) so that the choice is bracketed. A different optimizer or batch
    size (at the rate scaled by the square root of the batch ratio) replaces the choice only
    when it is better beyond noise. Returns the config and the report section."""
    began = time.perf_counter()
    if val is None or not len(val["inputs"][0]):
        cut = max(1, len(train["inputs"][0]) // 5)
        val = {k: (None if v is None else [a[:cut] for a in v] if k == "inputs" else v[:cut])
               for k, v in train.items()}
        train = {k: (None if v is None else [a[cut:] for a in v] if k == "inputs" else v[cut:])
                 for k, v in train.items()}
    horizon = probe_steps(cfg, len(train["inputs"][0]), steps)
    trials: list[dict[str, Any]] = []
    curves: dict[str, list] = {}
    proposals: dict[str, dict[str, float]] = {}

    def trial(c: TrainConfig, why: str) -> dict[str, Any]:
        scored = _probe(model, train, val, c, device=device, steps=horizon)
        trials.append({"optimizer": c.optimizer, "lr": c.lr, "batch_size": c.batch_size, "why": why,
                       "steps": horizon,
                       "val_loss": round(scored["loss"], 6) if math.isfinite(scored["loss"]) else None,
                       "val_accuracy": None if scored["accuracy"] is None else round(scored["accuracy"], 6)})
        if tick is not None:
            tick()
        return {"cfg": c, "loss": scored["loss"], "losses": scored["losses"]}

    def lowest_within_noise(results: list[dict[str, Any]]) -> dict[str, Any]:
        best = min(results, key=lambda r: r["loss"])
        return min((r for r in results if within_noise(r, best)), key=lambda r: r["cfg"].lr)

    best = None
    for name in optimizers:
        base = replace(cfg, optimizer=name)
        if not auto_lr:
            result = trial(replace(base, lr=cfg.lr), "given")
        else:
            lr, curves[name] = lr_range_test(model, train, base, device=device)
            proposals[name] = suggest_lr(curves[name])
            grid = [trial(replace(base, lr=float(f"{rate:.3g}")), why) for rate, why in
                    ((lr, "range test: lower of steepest descent and lowest loss / 10"),
                     (lr * 3, "x3"), (lr / 3, "/3"))]
            for _ in range(2):  # bracket the choice: extend the grid past an edge winner
                result = lowest_within_noise(grid)
                rates = sorted(r["cfg"].lr for r in grid)
                if result["cfg"].lr == rates[-1] and rates[-1] * 3 <= 1.0:
                    grid.append(trial(replace(base, lr=float(f"{rates[-1] * 3:.3g}")), "x3: the highest won"))
                elif result["cfg"].lr == rates[0] and rates[0] / 3 >= 1e-7:
                    grid.append(trial(replace(base, lr=float(f"{rates[0] / 3:.3g}")), "/3: the lowest won"))
                else:
                    break
            result = lowest_within_noise(grid)
        if best is None or (result["loss"] < best["loss"] and not within_noise(best, result)):
            best = result
    assert best is not None
    chosen = best["cfg"]
    for size in batch_sizes:
        if size != chosen.batch_size:
            scaled = float(f"{chosen.lr * math.sqrt(size / chosen.batch_size):.3g}")
            result = trial(replace(chosen, batch_size=size, lr=scaled), "batch size, lr x sqrt(ratio)")
            if result["loss"] < best["loss"] and not within_noise(best, result):
                best = result
    chosen = best["cfg"]
    start = evaluate(model, val, chosen, device)
    report = {"rule": f"each candidate trains {horizon} steps (a sixth of the run, cosine-decayed) "
                      "from the same weights; the lowest rate within 2 paired standard errors of "
                      "the lowest held-out loss wins, extended past an edge; another optimizer "
                      "or batch size must be better beyond that noise",
              "chosen_lr": chosen.lr, "curve": curves.get(chosen.optimizer, []),
              "held_out": len(val["inputs"][0]), "trials": trials, "curves": curves,
              "proposals": proposals, "probe_steps": horizon,
              "val_loss_before": round(start["loss"], 6) if math.isfinite(start["loss"]) else None,
              "seconds": round(time.perf_counter() - began, 2),
              "chosen": {"optimizer": chosen.optimizer, "lr": chosen.lr, "batch_size": chosen.batch_size}}
    return chosen, report
