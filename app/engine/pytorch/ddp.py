"""Data-parallel training: N rank processes, each holding a replica wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA) and a DistributedSampler shard of the data.

Ranks are plain subprocesses (``python -m app.engine.pytorch.ddp``), not multiprocessing
children: a Celery prefork worker is a daemonic process, which multiprocessing forbids to have
children. Everything is exchanged through the job's workdir: the model (pickled by this
process, never user data), the arrays (.npz, loaded without pickle), rank 0's per-epoch
metrics (JSON lines) which the parent forwards to the job's progress callback — where a cancel
arrives; any exception there terminates the ranks and goes on up unchanged — and every rank's
final weights, which the parent checks are identical before using them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.errors import TechniqueError
from app.engine.pytorch.train import EpochFn, TrainConfig, fit
from app.engine.pytorch.loading import hand_to_child, taken_from_parent

ROOT = Path(__file__).resolve().parents[3]  # the directory holding the ``app`` package


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_arrays(data: dict | None, path: Path) -> None:
    if data is None:
        return
    arrays = {f"input_{i}": a for i, a in enumerate(data["inputs"])}
    arrays.update({k: data[k] for k in ("labels", "teacher") if data.get(k) is not None})
    np.savez(path, **arrays)


def _load_arrays(path: Path) -> dict | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        inputs = [z[f"input_{i}"] for i in range(sum(k.startswith("input_") for k in z.files))]
        return {"inputs": inputs, **{k: (z[k] if k in z.files else None)
                                     for k in ("labels", "teacher")}}


def _rank_main(workdir: Path, rank: int, world: int, port: int, cuda: bool) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # ranks share the cores
    model = taken_from_parent(workdir / "model.pkl")
    cfg = TrainConfig(**json.loads((workdir / "config.json").read_text()))
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        model = model.to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None)

        def report(epoch: int, record: dict) -> None:
            with open(workdir / "epochs.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

        history = fit(model, _load_arrays(workdir / "train.npz"), _load_arrays(workdir / "val.npz"),
                      cfg, device=device, on_epoch=report if rank == 0 else None, rank=rank,
                      world=world, wrapped=wrapped)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, str(workdir / f"rank{rank}.pt"))
        if rank == 0:
            (workdir / "history.json").write_text(json.dumps(history))
    except TechniqueError as exc:
        (workdir / f"error{rank}.json").write_text(json.dumps([exc.type, exc.detail]))
        raise
    finally:
        dist.destroy_process_group()


def train_parallel(model: Any, train: dict, val: dict | None, cfg: TrainConfig, *,
                   processes: int, cuda: bool, workdir: Path,
                   on_epoch: EpochFn | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Train ``model`` on ``processes`` ranks; load the result into ``model``. Returns the
    history and every rank's final state dict."""
    import torch

    workdir.mkdir(parents=True, exist_ok=True)
    hand_to_child(model.cpu(), workdir / "model.pkl")
    (workdir / "config.json").write_text(json.dumps(asdict(cfg)))
    _save_arrays(train, workdir / "train.npz")
    _save_arrays(val, workdir / "val.npz")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = []
    seen = 0
    try:
        for rank in range(processes):
            log = open(workdir / f"rank{rank}.log", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "app.engine.pytorch.ddp", str(workdir), str(rank),
                 str(processes), str(port), "1" if cuda else "0"],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        while True:
            done = all(p.poll() is not None for p in procs)
            lines = (workdir / "epochs.jsonl").read_text().splitlines() \
                if (workdir / "epochs.jsonl").exists() else []
            for line in lines[seen:]:
                record = json.loads(line)
                if on_epoch is not None:
                    on_epoch(record["epoch"], record)  # may raise to cancel: ranks end below
            seen = len(lines)
            if done or any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    _raise_failures(procs, workdir)
    states = [torch.load(str(workdir / f"rank{r}.pt"), weights_only=True)
              for r in range(processes)]
    for rank, state in enumerate(states[1:], start=1):
        differ = [k for k in state if not torch.equal(state[k], states[0][k])]
        if differ:  # DDP's all-reduce keeps replicas equal; anything else is a bug, not a result
            raise RuntimeError(f"rank {rank} ended with different weights ({differ[:3]})")
    model.load_state_dict(states[0])
    return json.loads((workdir / "history.json").read_text()), states


def _raise_failures(procs: list, workdir: Path) -> None:
    for rank, proc in enumerate(procs):
        error = workdir / f"error{rank}.json"
        if error.exists():  # a user-facing error (bad labels...): pass it on as is
            kind, detail = json.loads(error.read_text())
            raise TechniqueError.of(kind, detail)
    for rank, proc in enumerate(procs):
        if proc.returncode != 0:
            tail = (workdir / f"rank{rank}.log").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"data-parallel rank {rank} exited with {proc.returncode}: "
                               f"{(tail or ['no output'])[-1][:300]}")


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
               sys.argv[5] == "1")
    # The rank's result is on disk and its process group destroyed: skip interpreter teardown,
    # where a still-joinable C++ thread once aborted a finished rank in CI ("terminate called
    # without an active exception", exit -6) and failed a distill job that had trained.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
