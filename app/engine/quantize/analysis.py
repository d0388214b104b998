"""What a quantization did to a graph, and an honest verdict on whether it paid off.

Pure Python over onnx protobufs and report dicts; imports onnx only inside functions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from app.engine.measure.speedup import overall_verdict, point_estimate

# Nodes a quantizer emits. DequantizeLinear alone marks weight-only quantization (Gather).
QUANT_OPS = frozenset({
    "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QAttention", "QEmbedLayerNormalization",
    "QGemm", "QuantizeLinear", "DequantizeLinear", "MatMulNBits", "GatherBlockQuantized",
})
# Integer compute nodes: one per float MatMul/Conv/Gemm/... that was replaced.
INTEGER_COMPUTE_OPS = frozenset({
    "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat", "QAttention", "QGemm", "MatMulNBits", "QLinearConv",
    "QLinearMatMul",
})
FLOAT_COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "Attention", "LSTM"})


def op_counts(path: Path) -> Counter[str]:
    """Node op types of the model file, subgraphs (If/Loop/Scan bodies) included."""
    counts: Counter[str] = Counter()
    stack = [onnx.load(str(path), load_external_data=False).graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return counts


def is_quant_op(op: str) -> bool:
    return op in QUANT_OPS or op.startswith("QLinear")


def candidate_ops(looked_for: list[str]) -> set[str]:
    """Op types the quantizer may touch; it rewrites Gemm to MatMul, so MatMul covers Gemm."""
    return set(looked_for) | ({"Gemm"} if "MatMul" in looked_for else set())


def qdq_compute(path: Path) -> int:
    """Float compute nodes (Conv, MatMul...) fed by a DequantizeLinear weight: in QDQ format
    they are quantized, and onnxruntime fuses them into integer kernels at load time."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in graph.node
               if n.op_type in FLOAT_COMPUTE_OPS and len(n.input) > 1 and n.input[1] in dq)


def runtime_op_counts(path: Path, scratch: Path) -> Counter[str] | None:
    """Op types of the graph onnxruntime actually runs (after its load-time fusions), or
    None if it cannot be saved. It is what tells fused from unfused Q/DQ pairs."""
    out = scratch / "runtime-graph.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return op_counts(out)
    except Exception:  # noqa: BLE001 - diagnostics only
        return None
    finally:
        out.unlink(missing_ok=True)


def node_summary(parent: Counter[str], result: Counter[str], looked_for: list[str],
                 qdq: int = 0) -> dict:
    """Node counts for the report: what could be quantized, what was, what stayed float.
    ``qdq``: float compute nodes of the result that are quantized in QDQ form."""
    candidates = candidate_ops(looked_for)
    compute_before = sum(n for op, n in parent.items() if op in FLOAT_COMPUTE_OPS)
    compute_left = sum(n for op, n in result.items() if op in FLOAT_COMPUTE_OPS) - qdq
    return {
        "parent_total": sum(parent.values()),
        "result_total": sum(result.values()),
        # Nodes of the looked-for types; only those with constant weights can be quantized.
        "candidates_in_parent": {op: n for op, n in sorted(parent.items()) if op in candidates},
        "quantized_ops": {op: n for op, n in sorted(result.items()) if is_quant_op(op)},
        "float_compute_left": {
            op: n for op, n in sorted(result.items()) if op in FLOAT_COMPUTE_OPS
        } if not qdq else {"total": compute_left},
        "qdq_compute": qdq,
        # Compared with the parent so an already-quantized (QDQ) parent does not count.
        "quantized_nodes_added": sum(n for op, n in result.items() if is_quant_op(op))
        - sum(n for op, n in parent.items() if is_quant_op(op)),
        # MatMul/Gemm/Conv/... nodes of the parent now running as integer kernels.
        "compute_quantized": max(0, compute_before - compute_left),
        "compute_total": compute_before,
    }


def slow_reasons(slow: list[dict], nodes: dict, provider: str,
                 runtime: Counter[str] | None = None, mode: str = "int8") -> list[str]:
    """Likely, detectable causes for points where the result was not faster. ``runtime``: op
    counts of the graph onnxruntime runs after its own fusions."""
    reasons = []
    quantized = nodes["quantized_ops"]
    runtime = runtime or Counter()
    if mode == "float16":
        casts = runtime.get("Cast", 0)
        reasons.append(
            f"{provider} has no float16 kernels for most ops: onnxruntime runs them in float32 "
            f"behind Cast nodes ({casts} Cast nodes in the graph it runs), so float16 saves "
            "size, not time, on CPU; it targets GPUs" if provider == "CPUExecutionProvider"
            else f"{provider} ran the float16 graph with {casts} Cast nodes")
    elif provider != "CPUExecutionProvider":
        reasons.append(
            f"{provider} has no fast kernels for MatMulInteger/DynamicQuantizeLinear; dynamic "
            "quantization targets the CPU provider"
        )
    elif "ConvInteger" in quantized:
        reasons.append(
            "ConvInteger has no fast kernel in onnxruntime's CPU provider and is often slower "
            "than float Conv; for convolutional models use static (QDQ) quantization, or "
            "op_types=[\"MatMul\"]"
        )
    unfused = runtime.get("QuantizeLinear", 0) + runtime.get("DequantizeLinear", 0)
    if mode == "int8" and unfused:
        reasons.append(
            f"{unfused} QuantizeLinear/DequantizeLinear nodes are left unfused in the graph "
            "onnxruntime runs: tensors are converted between int8 and float around float "
            "kernels (ops without an integer kernel, or int8 activations on x86, which "
            "onnxruntime does not fuse there; use activation_type=uint8)")
    if mode == "int4" and "MatMulNBits" in quantized:
        reasons.append(
            "MatMulNBits unpacks 4-bit weights block by block at run time; it saves size and "
            "memory bandwidth, and only beats float MatMul when weight loading dominates "
            "(large models, small batches) or with accuracy_level=4 (int8 compute)")
    done, total = nodes["compute_quantized"], nodes["compute_total"]
    if mode != "float16" and total and done / total < 0.5:
        reasons.append(
            f"only {done} of {total} MatMul/Gemm/Conv nodes were quantized; the rest run in "
            "float and the added quantize/dequantize nodes cost time"
        )
    tiny = [p for p in slow if p["parent_p50_ms"] < 0.2]
    if tiny:
        reasons.append(
            f"the model is very fast already (parent p50 {tiny[0]['parent_p50_ms']} ms at batch "
            f"{tiny[0]['batch_size']}); converting activations costs about as much as the "
            "cheaper kernels save at this size"
        )
    return reasons or ["no specific cause detected"]


def verdict(comparison: list[dict], size_ratio: float, nodes: dict, provider: str,
            worst_cos: float | None, *, tolerance: dict | None = None,
            runtime: Counter[str] | None = None, mode: str = "int8",
            host_load: dict | None = None) -> dict[str, Any]:
    """faster only if every measured point's interleaved speedup interval is above 1 (by more
    than the noise threshold); NOT faster only where a point's interval is below 1; otherwise
    the speed is "inconclusive", with the reason (``app.engine.measure.speedup``).
    ``tolerance``: {"within": bool | None, "text": str} from quant_report.tolerance_check."""
    ests = [point_estimate(p) for p in comparison]
    overall = overall_verdict(ests)
    slow = [p for p, e in zip(comparison, ests) if e["verdict"] == "slower"]
    unsure = [(p, e) for p, e in zip(comparison, ests) if e["verdict"] == "inconclusive"]
    smaller = size_ratio < 1.0
    speedups = [p["speedup"] for p in comparison]
    size_txt = (f"{1 / size_ratio:.1f}x smaller" if smaller
                else f"not smaller (size ratio {size_ratio:.2f})")
    reasons: list[str] = []
    unsure_txt = "; ".join(f"bs={p['batch_size']}/threads={p['threads']}: {e['reason']}" for p, e in unsure)
    if overall["verdict"] == "faster":
        span = (f"{min(speedups):.2f}x" if min(speedups) == max(speedups)
                else f"{min(speedups):.2f}x to {max(speedups):.2f}x")
        speed_txt = f"faster at every measured point (speedup {span})"
    elif slow:
        reasons = slow_reasons(slow, nodes, provider, runtime, mode)
        where = ", ".join(f"bs={p['batch_size']}/threads={p['threads']}: {p['speedup']:.2f}x"
                          for p in slow)
        speed_txt = f"NOT faster: slower at {where}; likely because {reasons[0]}"
        if unsure:
            speed_txt += f"; inconclusive at {unsure_txt}"
    else:
        speed_txt = f"speed inconclusive at {unsure_txt}"
    tails = [t for p in comparison for t in p.get("tail_outliers") or []]
    if tails:
        speed_txt += f". Tail outliers flagged: {tails[0]}"
    if host_load and host_load.get("busy") and overall["verdict"] != "inconclusive":
        speed_txt += f". Measured on a busy host ({host_load['summary']}); the interleaved ratios hold"
    fid_txt = ("" if worst_cos is None
               else f" Lowest per-sample cosine similarity to the parent: {worst_cos:.4f}.")
    tol = tolerance or {"within": None, "text": ""}
    return {
        "faster": overall["faster"],
        "speed": overall["verdict"],
        "smaller": smaller,
        "within_tolerance": tol["within"],
        "min_speedup": min(speedups),
        "max_speedup": max(speedups),
        "reasons": reasons,
        "summary": f"Result is {size_txt}; {speed_txt}.{fid_txt}"
        + (f" {tol['text']}" if tol["text"] else ""),
    }


def saturation_note(per_channel: bool, reduce_range: bool, environment: dict,
                    worst_cos: float | None) -> str | None:
    """On x86 without VNNI, onnxruntime's int8 matmul uses a u8 x s8 kernel whose int16
    intermediate saturates when adjacent weights are near the int8 limits. Measured on an
    AVX2-only EPYC: a default-initialised torch MLP (uniform weights, per-tensor) fell to
    per-sample cosine 0.954 and came back to 0.9997 with reduce_range; with normal-ish weights
    (as trained models have) the effect was small and reduce_range cost accuracy instead, so
    this is advice driven by the measured fidelity, not a default."""
    features = set(environment.get("cpu_features") or [])
    vnni = features & {"avx512_vnni", "avx_vnni", "amx_int8"}
    if reduce_range or "avx2" not in features or vnni:
        return None
    if per_channel or (worst_cos is not None and worst_cos < 0.99):
        return ("this x86 CPU has no VNNI, so onnxruntime's int8 kernels can saturate with "
                "full-range int8 weights (lowest cosine "
                f"{'n/a' if worst_cos is None else f'{worst_cos:.4f}'}); if fidelity matters, "
                "retry with reduce_range=true")
    return None
