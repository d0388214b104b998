"""Times and scores every artifact of one model in ONE process (run in the ``timer`` venv).

ONNX files run in onnxruntime; ``openvino`` artifacts in OpenVINO's runtime against OpenVINO
FP32 (the parent converted here). 1 intra-op thread everywhere. Interleaved rounds: every
round runs each artifact once per batch size, in an order rotated each round, and records for
each the median per-call time of a few calls; the ratio of the parent's time to the
artifact's, round by round, is written out (benchmarks/peers.py takes the median).

Job: {"parent", "artifacts": [{"key", "path", "runtime"}], "eval" (.npz, ``labels`` for a
classifier), "batch_sizes", "rounds", "slot_s", "out"}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from peer_common import cosines, score

job = json.loads(sys.argv[1])
with np.load(job["eval"]) as npz:
    feeds = {k: npz[k] for k in npz.files}
labels = feeds.pop("labels", None)


class OrtModel:
    def __init__(self, path: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, feed):
        return self.session.run(None, {k: feed[k] for k in self.names})[0]


class OvModel:
    def __init__(self, path: str) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path) if not path.endswith(".onnx") else ov.convert_model(path)
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.names = [i.get_any_name() for i in self.compiled.inputs]

    def __call__(self, feed):
        result = self.request.infer({k: feed[k] for k in self.names})
        return np.array(result[self.compiled.outputs[0]])


def outputs(model, size=32):
    n = len(next(iter(feeds.values())))
    return np.concatenate([model({k: v[i:i + size] for k, v in feeds.items()}) for i in range(0, n, size)])


def fidelity(out, ref):
    if labels is not None:
        return {"top1": score(out, ref, labels)}
    cos = cosines(out, ref)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def size_bytes(path: str) -> int:
    p = Path(path)
    return p.stat().st_size + (p.with_suffix(".bin").stat().st_size if p.suffix == ".xml" else 0)


models = {"fp32": OrtModel(job["parent"])}
parents = {"fp32": "fp32"}
report = {"fp32": {"size_bytes": size_bytes(job["parent"])}}
errors = {}
for a in job["artifacts"]:
    try:
        models[a["key"]] = (OvModel if a["runtime"] == "openvino" else OrtModel)(a["path"])
    except Exception as exc:  # noqa: BLE001 - an artifact our runtime cannot load is a result
        errors[a["key"]] = f"cannot load: {type(exc).__name__}: {str(exc)[:200]}"
        continue
    if a["runtime"] == "openvino" and "ov-fp32" not in models:
        models["ov-fp32"] = OvModel(job["parent"])
        parents["ov-fp32"] = "fp32"
        report["ov-fp32"] = {"size_bytes": size_bytes(job["parent"])}
    parents[a["key"]] = "ov-fp32" if a["runtime"] == "openvino" else "fp32"
    report[a["key"]] = {"size_bytes": size_bytes(a["path"])}

reference = outputs(models["fp32"])
for key, model in list(models.items()):
    try:
        report[key].update(fidelity(outputs(model), reference))
    except Exception as exc:  # noqa: BLE001
        errors[key] = f"cannot run: {type(exc).__name__}: {str(exc)[:200]}"
for key in errors:
    models.pop(key, None)
    report.pop(key, None)

batch = {b: {k: v[:b] for k, v in feeds.items()} for b in job["batch_sizes"]}
reps = {}
for b, feed in batch.items():  # warm up; calls per slot so that the parent's slot lasts ~slot_s
    for model in models.values():
        for _ in range(3):
            model(feed)
    started = time.perf_counter()
    models["fp32"](feed)
    reps[b] = max(5, min(200, int(job["slot_s"] / max(time.perf_counter() - started, 1e-6))))

times = {k: {b: [] for b in batch} for k in models}
keys = list(models)
for r in range(job["rounds"]):
    order = keys[r % len(keys):] + keys[:r % len(keys)]
    if r % 2:
        order.reverse()
    for key in order:
        for b, feed in batch.items():
            calls = []
            for _ in range(reps[b]):
                started = time.perf_counter()
                models[key](feed)
                calls.append(time.perf_counter() - started)
            times[key][b].append(float(np.median(calls)))
for key in models:
    report[key]["parent"] = parents[key]
    report[key]["ms"] = {b: float(np.median(times[key][b]) * 1e3) for b in batch}
    report[key]["ratios"] = {b: [p / t for p, t in zip(times[parents[key]][b], times[key][b])] for b in batch}
report["_reps"] = reps
Path(job["out"]).write_text(json.dumps({"artifacts": report, "errors": errors}))
