"""SmoothQuant-style activation smoothing and padding-aware activation statistics, for static INT8.

Static INT8 gives every activation tensor ONE scale, so a few outlier channels (transformers'
LayerNorm outputs have them) stretch the range and crush every other channel to a handful of
levels. SmoothQuant (Xiao et al., 2023) moves that difficulty into the weights, which are
quantized per channel anyway: for a MatMul ``X @ W`` with constant ``W`` [K, N], a per-input-
channel factor ``s_k = max|X_k|^alpha / max_n|W_kn|^(1-alpha)`` gives ``(X / s) @ (s W)``, the
same product. ``1/s`` is folded into the producing LayerNormalization's gamma/beta when that
LayerNorm's output feeds only the smoothed MatMuls; otherwise (e.g. a post-LN transformer whose
LayerNorm output also feeds the residual) a ``Mul`` by ``1/s`` is inserted in front of them.

Activation statistics skip padding: in a [batch, sequence, channels] tensor, rows at positions
where the attention mask is 0 are not real tokens, and their values (which the model later
ignores) would otherwise set the quantization ranges.

numpy and onnx at module top only through the functions (the API imports technique modules).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

SMOOTH_OPS = ("MatMul",)
MIN_FACTOR, MAX_FACTOR = 1e-4, 1e4


def smoothable(model: Any) -> dict[str, list[Any]]:
    """Activation tensor -> the MatMul nodes reading it as input A with a constant 2-D B."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type in SMOOTH_OPS and len(node.input) == 2 and node.input[1] in inits \
                and len(inits[node.input[1]].dims) == 2 and node.input[0] not in inits:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def mask_input(model: Any) -> str | None:
    """The graph input that is an attention mask ([batch, sequence] of 0/1), by name."""
    for i in model.graph.input:
        if "mask" in i.name.lower() and len(i.type.tensor_type.shape.dim) == 2:
            return i.name
    return None


def tensor_stats(path: Path | str, tensors: Sequence[str], feeds: Iterable[Mapping[str, Any]],
                 mask: str | None, per_channel: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Over every feed: each of ``tensors``' min and max (scalars) and, for ``per_channel``, the
    max |x| per last-axis channel. Rows of [batch, sequence, ...] tensors at positions where
    the feed's ``mask`` input is 0 (padding) are left out."""
    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    given = {i.name for i in model.graph.input}
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in tensors:
        if name not in known and name not in given:
            model.graph.output.append(typed.get(name) or onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    names = [n for n in tensors if n not in given]
    wanted = set(per_channel)
    stats: dict[str, dict[str, Any]] = {}
    for feed in feeds:
        values = session.run(names, {k: v for k, v in feed.items() if k in inputs})
        keep = np.asarray(feed[mask]) > 0 if mask and mask in feed else None
        fed = [(n, feed[n]) for n in tensors if n in given and n in feed]
        for name, value in [*zip(names, values), *fed]:
            value = np.asarray(value, dtype=np.float32)
            if keep is not None and value.ndim >= 3 and value.shape[:2] == keep.shape:
                value = value[keep]
            if value.size == 0:
                continue
            finite = value[np.isfinite(value)]
            s = stats.setdefault(name, {"min": np.inf, "max": -np.inf, "nonfinite": False})
            s["nonfinite"] = s["nonfinite"] or finite.size < value.size
            if finite.size:
                s["min"], s["max"] = min(s["min"], float(finite.min())), max(s["max"], float(finite.max()))
            if name in wanted and value.ndim >= 1:
                rows = value.reshape(-1, value.shape[-1])
                for key, fn, pick in (("cmin", np.min, np.minimum), ("cmax", np.max, np.maximum)):
                    s[key] = fn(rows, 0) if key not in s else pick(s[key], fn(rows, 0))
                s["absmax"] = np.maximum(np.abs(s["cmin"]), np.abs(s["cmax"]))
    return stats


def factors(absmax: Any, weights: Sequence[Any], alpha: float) -> Any:
    """SmoothQuant's per-input-channel s = max|x|^alpha / max|w|^(1-alpha), the weight max
    taken over every [K, N] weight reading the activation; 1 where either is 0."""
    x = np.asarray(absmax, np.float64)
    w = np.max([np.abs(w).max(1) for w in weights], axis=0).astype(np.float64)
    s = np.where((x > 0) & (w > 0), np.power(np.maximum(x, 1e-12), alpha) /
                 np.power(np.maximum(w, 1e-12), 1 - alpha), 1.0)
    return np.clip(s, MIN_FACTOR, MAX_FACTOR)


def smooth(model: Any, absmax: Mapping[str, Any], alpha: float) -> list[str]:
    """Smooth ``model`` in place: for every activation in ``absmax`` (name -> per-channel max
    |x|, see ``tensor_stats``) read by MatMuls with constant weights, scale the weights' rows
    by s and the activation by 1/s (folded into a LayerNorm, or a new Mul). Returns the
    smoothed activation names. The float model computes the same function, up to rounding."""
    groups = smoothable(model)
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producer = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    done = []
    for act, readers in groups.items():
        if act not in absmax:
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in readers]
        x = np.asarray(absmax[act], dtype=np.float64)
        if any(w.shape[0] != x.shape[0] for w in weights):
            continue
        s = factors(x, weights, alpha).astype(np.float32)
        for node, weight in zip(readers, weights):
            scaled = (weight * s[:, None]).astype(weight.dtype)
            name = node.input[1]
            if uses.get(name, 0) > 1:  # shared weight: give this reader its own copy
                name = f"{name}_smooth_{node.name or len(model.graph.initializer)}"
                model.graph.initializer.append(numpy_helper.from_array(scaled, name))
                uses[node.input[1]] -= 1
                node.input[1] = name
            else:
                inits[name].CopyFrom(numpy_helper.from_array(scaled, name))
        ln = producer.get(act)
        if ln is not None and ln.op_type == "LayerNormalization" and uses.get(act, 0) == len(readers) \
                and act not in graph_outputs and ln.output[0] == act \
                and all(uses.get(p, 0) == 1 and p in inits for p in ln.input[1:3]):
            for p in ln.input[1:3]:
                inits[p].CopyFrom(numpy_helper.from_array(
                    (numpy_helper.to_array(inits[p]) / s).astype(np.float32), p))
        else:
            factor, out = f"{act}_smooth_inv", f"{act}_smoothed"
            model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), factor))
            mul = onnx.helper.make_node("Mul", [act, factor], [out], name=f"{act}_Smooth")
            position = list(model.graph.node).index(readers[0])
            model.graph.node.insert(position, mul)
            # the quantizer skips tensors whose type it cannot infer (contrib ops stop inference)
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
            for node in readers:
                node.input[0] = out
        done.append(act)
    return done


def float_tensors(model: Any) -> list[str]:
    """Every float activation (graph inputs and node outputs) of ``model``, by shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    return [n for n in dict.fromkeys(names)
            if n and n not in inits and typed.get(n) == onnx.TensorProto.FLOAT]


def write_ranges(stats: Mapping[str, Mapping[str, Any]], cache: Path, max_magnitude: float = 1e30) -> list[str]:
    """onnxruntime's MinMax calibration cache from ``tensor_stats``; returns the tensors whose
    values reached ``max_magnitude`` (attention-mask "minus infinity"), their range clipped."""
    data, masked = {}, []
    for name, s in stats.items():
        low, high = min(s["min"], 0.0), max(s["max"], 0.0)
        if s.get("nonfinite") or not (abs(low) < max_magnitude and abs(high) < max_magnitude):
            masked.append(name)
            low, high = max(low, -max_magnitude), min(high, max_magnitude)
        data[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    return sorted(masked)


def static_w8a8(src: Path | str, dst: Path | str, feeds: Sequence[Mapping[str, Any]], *,
                alpha: float | None = None, mask_padding: bool = True, per_channel: bool = True,
                fmt: str = "qdq", op_types: Sequence[str] = ("MatMul",),
                exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Static INT8 of ``src`` into ``dst``: weights int8 (per channel), activations uint8, only
    MatMul/Gemm with constant weights by default (their inputs quantized once, statically, in
    place of a DynamicQuantizeLinear each). With ``alpha``, SmoothQuant first (see ``smooth``);
    with ``mask_padding``, padding positions (attention mask 0) do not set activation ranges.
    ``feeds`` are the calibration batches. Nodes touching attention-mask "minus infinity"
    values stay float. Returns what was done (smoothed tensors, float nodes)."""
    model = onnx.load(str(src))
    mask = mask_input(model) if mask_padding else None
    feeds = list(feeds)
    smoothed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="smooth-") as tmp:
        work = Path(tmp)
        if alpha is not None:
            acts = list(smoothable(model))
            stats = tensor_stats(src, acts, feeds, mask, per_channel=acts)
            smoothed = smooth(model, {k: v["absmax"] for k, v in stats.items() if "absmax" in v}, alpha)
        staged = work / "smoothed.onnx"
        onnx.save(model, str(staged))
        cache = work / "ranges.json"
        masked = write_ranges(tensor_stats(staged, float_tensors(model), feeds, mask), cache)
        inits = {i.name for i in model.graph.initializer}
        floating = sorted(n.name for n in model.graph.node
                          if n.name and set(masked) & (set(n.input) | set(n.output)))
        # MatMuls of two activations (attention scores, context) stay float: their second
        # operand would need a runtime quantization, and Softmax's output is coarse in uint8.
        variable = sorted(n.name for n in model.graph.node if n.name and n.op_type in op_types
                          and not (len(n.input) > 1 and n.input[1] in inits))
        quantize_static(
            str(staged), str(dst), calibration_data_reader=None, calibration_cache_path=cache,
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=list(op_types), per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(set(exclude) | set(floating) | set(variable)),
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True,
                           "ActivationSymmetric": False,
                           # float outputs: onnxruntime fuses DQ -> MatMul into
                           # MatMulIntegerToFloat instead of requantizing every product
                           "OpTypesToExcludeOutputQuantization": list(op_types)})
    return {"smoothed": smoothed, "float_nodes": floating, "mask_input": mask}


def integer_w8a8(src: Path | str, dst: Path | str, feeds: Sequence[Mapping[str, Any]], *,
                 alpha: float | None = None, mask_padding: bool = True,
                 exclude: Sequence[str] = (), smooth_after: Sequence[str] | None = None) -> dict[str, Any]:
    """Static W8A8 written directly as the kernels onnxruntime runs, without its quantizer:
    every MatMul with a constant [K, N] weight becomes ``MatMulIntegerToFloat`` (com.microsoft)
    reading a uint8 activation quantized once by a ``QuantizeLinear`` shared by the MatMuls of
    the same input, int8 per-output-channel symmetric weights, and the following bias ``Add``
    folded in as its bias input. With ``alpha``, SmoothQuant: a ``Mul`` by ``1/s`` before the
    ``QuantizeLinear``, the weight rows multiplied by ``s``; only on the outputs of
    ``smooth_after`` op types when given (e.g. ["LayerNormalization"], where transformers'
    outlier channels are: each smoothed activation costs one Mul).
    Ranges are min/max over ``feeds`` (padding rows left out with ``mask_padding``). The graph
    keeps no shape annotations (``value_info``): with them onnxruntime fuses Add+LayerNorm
    into SkipLayerNormalization, measured slower on this x86 host (see
    benchmarks/minilm_levers.py). Returns what was done."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    mask = mask_input(model) if mask_padding else None
    groups = smoothable(model)
    skip = set(exclude)
    groups = {a: [n for n in r if n.name not in skip] for a, r in groups.items()}
    groups = {a: r for a, r in groups.items() if r}
    stats = tensor_stats(src, list(groups), list(feeds), mask, per_channel=list(groups))
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    drop: set[str] = set()  # outputs of the bias Adds folded into MatMulIntegerToFloat
    new_inits = []
    done, smoothed = [], []
    for act, readers in groups.items():
        st = stats.get(act)
        if st is None or "cmin" not in st or st.get("nonfinite"):
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n in readers]
        k = weights[0].shape[0]
        if any(w.shape[0] != k for w in weights) or st["cmin"].shape[0] != k:
            continue
        s = np.ones(k)
        if alpha is not None and (smooth_after is None or producer.get(act) in smooth_after):
            s = factors(st["absmax"], weights, alpha)
            smoothed.append(act)
        low = min(float((np.asarray(st["cmin"]) / s).min()), 0.0)
        high = max(float((np.asarray(st["cmax"]) / s).max()), 0.0)
        scale = max(high - low, 1e-8) / 255.0
        zero = int(np.clip(round(-low / scale), 0, 255))
        base = act.replace("/", "_").strip("_")
        new_inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"{base}_ascale"))
        new_inits.append(numpy_helper.from_array(np.array(zero, np.uint8), f"{base}_azp"))
        xq = f"{base}_quantized"
        position = min(list(model.graph.node).index(n) for n in readers)
        source = act
        if act in smoothed:  # (a per-channel QuantizeLinear scale would do it, but
            # onnxruntime's per-axis QuantizeLinear kernel measured ~5x slower than the model)
            source = f"{base}_smoothed"
            new_inits.append(numpy_helper.from_array((1.0 / s).astype(np.float32), f"{base}_inv_s"))
            model.graph.node.insert(position, helper.make_node(
                "Mul", [act, f"{base}_inv_s"], [source], name=f"{base}_Smooth"))
            position += 1
        model.graph.node.insert(position, helper.make_node(
            "QuantizeLinear", [source, f"{base}_ascale", f"{base}_azp"], [xq],
            name=f"{base}_QuantizeLinear"))
        for node, weight in zip(readers, weights):
            ws = weight * s[:, None]
            w_scale = np.maximum(np.abs(ws).max(0), 1e-12) / 127.0
            wq = np.clip(np.round(ws / w_scale), -127, 127).astype(np.int8)
            wname = f"{node.input[1]}_int8_{len(new_inits)}"
            new_inits += [numpy_helper.from_array(wq, wname),
                          numpy_helper.from_array(w_scale.astype(np.float32), f"{wname}_scale"),
                          numpy_helper.from_array(np.zeros(len(w_scale), np.int8), f"{wname}_zp")]
            inputs = [xq, wname, f"{base}_ascale", f"{wname}_scale", f"{base}_azp", f"{wname}_zp"]
            out = node.output[0]
            after = consumers.get(out, [])
            if len(after) == 1 and after[0].op_type == "Add" and out not in outputs:
                add = after[0]
                other = add.input[1] if add.input[0] == out else add.input[0]
                bias = inits.get(other)
                if bias is not None and list(bias.dims) == [weight.shape[1]]:
                    inputs.append(other)
                    out = add.output[0]
                    drop.add(add.output[0])
            fused = helper.make_node("MatMulIntegerToFloat", inputs, [out], name=f"{node.name}_quant",
                                     domain="com.microsoft")
            node.CopyFrom(fused)
        done.append(act)
    kept = [n for n in model.graph.node if not (n.op_type == "Add" and n.output[0] in drop)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input}
    keep_inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep_inits)
    del model.graph.value_info[:]
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return {"quantized": done, "smoothed": smoothed, "mask_input": mask, "float_nodes": []}
