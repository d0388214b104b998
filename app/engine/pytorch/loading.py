"""Getting a trainable ``torch.nn.Module`` from an uploaded model.

ONNX → torch goes through onnx2torch. A ``.pt2`` (torch.export) archive is never given to
``torch.export.load`` (pickles, ``sympify``, attribute-walked targets, guard code): it is
checked again here with ``app.engine.runtime.pt2_archive`` (the API checked it at upload) and built from
its checked parts.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from app.engine.base import DEFAULT_NATIVE_STEP_TIMEOUT_S
from app.engine.errors import UnsupportedModel

PT2_MAGIC = b"PK\x03\x04"


def is_pt2(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == PT2_MAGIC


def require_onnx(path: Path, technique: str) -> None:
    """The torch techniques start from ONNX; a .pt2 gets its ONNX child from convert.onnx."""
    if is_pt2(path):
        raise UnsupportedModel(
            f"{technique} works on ONNX models and this is a torch.export (.pt2) archive; "
            "convert it to ONNX first (technique convert.onnx) and run this job on its output "
            "model")


def import_onnx2torch() -> Any:
    """onnx2torch imports torchvision at module top for two converters (NonMaxSuppression,
    RoiAlign). torchvision cannot be installed beside this torch build, so when it is absent a
    placeholder stands in during the import only; those two ops then fail clearly on use."""
    import importlib.util

    if "onnx2torch" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import onnx2torch

        return _with_transformer_ops(onnx2torch)
    missing = "this operator needs torchvision, which this worker does not have"

    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise UnsupportedModel(missing)

    stub = types.ModuleType("torchvision")
    stub.ops = types.ModuleType("torchvision.ops")  # type: ignore[attr-defined]
    stub.ops.roi_align = stub.ops.nms = stub.ops.box_convert = unavailable  # type: ignore
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.ops")}
    sys.modules.update({"torchvision": stub, "torchvision.ops": stub.ops})
    try:
        import onnx2torch
    finally:  # nothing else in the process may mistake the stub for torchvision
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return _with_transformer_ops(onnx2torch)


def _with_transformer_ops(onnx2torch: Any) -> Any:
    from app.engine.pytorch import onnx_ops

    onnx_ops.register()
    return onnx2torch


def _prepare_for_onnx2torch(source: str, target_dir: str) -> list[str]:
    """The native half of onnx2torch (shape inference, opset conversion), run in a bounded child:
    writes the shape-inferred model, and a copy converted to opset 17 when it is newer (onnx2torch
    knows operator versions up to about 17); returns their paths, most faithful first."""
    import onnx
    from onnx import shape_inference, version_converter

    model = onnx.load(source, load_external_data=False)
    out = []
    first = Path(target_dir) / "inferred.onnx"
    onnx.save(shape_inference.infer_shapes(model), str(first))
    out.append(str(first))
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) > 17:
        try:
            down = version_converter.convert_version(model, 17)
        except Exception:  # noqa: BLE001 - the first model is still worth trying
            return out
        second = Path(target_dir) / "inferred-opset17.onnx"
        onnx.save(shape_inference.infer_shapes(down), str(second))
        out.append(str(second))
    return out


def hand_to_child(obj: Any, path: Path) -> None:
    """Save a torch module (or a structure holding modules and tensors) for a child process of
    this job to load with ``taken_from_parent``. The only pickles Lathe ever loads are these:
    written by the job's own process from objects it built, never an uploaded byte."""
    import pickle

    path.write_bytes(pickle.dumps(obj))


def taken_from_parent(path: Path) -> Any:
    """What ``hand_to_child`` saved (in the child; onnx2torch module classes need its import shim)."""
    import pickle

    import_onnx2torch()
    return pickle.loads(path.read_bytes())


def onnx_to_torch(path: Path, workdir: Path, deadline_s: float = DEFAULT_NATIVE_STEP_TIMEOUT_S) -> Any:
    """A trainable fx.GraphModule equivalent to the ONNX model (weights as parameters).

    onnx2torch's native steps (ONNX shape inference, version conversion) run first in a child
    killed at ``deadline_s``; the conversion itself is Python (a stopped job interrupts it) and
    is told not to infer shapes again."""
    import shutil
    import tempfile

    import onnx

    from app.engine.runtime.isolate import run_bounded

    onnx2torch = import_onnx2torch()
    converter = sys.modules["onnx2torch.converter"]
    scratch = Path(tempfile.mkdtemp(prefix="onnx2torch-", dir=workdir))
    reason = ""
    try:
        prepared = run_bounded(_prepare_for_onnx2torch, str(path), str(scratch), deadline_s=deadline_s,
                               step="ONNX shape inference for the torch conversion", cwd=scratch)
        for candidate in prepared:
            model = onnx.load(candidate, load_external_data=False)
            infer, converter.safe_shape_inference = converter.safe_shape_inference, lambda m, **_: m
            try:  # shapes are already inferred, in the bounded child
                return onnx2torch.convert(model).train(False)
            except UnsupportedModel:
                raise
            except Exception as exc:  # an operator or attribute onnx2torch has no converter for
                reason = " ".join(str(exc).split())[:240] or type(exc).__name__
            finally:
                converter.safe_shape_inference = infer
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    raise UnsupportedModel(
        f"this ONNX model cannot be turned into a trainable torch module ({reason}); "
        "the torch techniques support the common CNN/MLP operators")


def _tensors(z: Any, payloads: list[Any], params: bool) -> dict[str, Any]:
    """Tensors from raw member bytes with the checked dtype, sizes, strides and offset. Entries
    sharing a member share one storage (tied weights stay tied)."""
    import torch

    flat: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for p in payloads:
        dtype = getattr(torch, p.dtype)
        if p.member not in flat:
            data = bytearray(z.read(p.member))
            flat[p.member] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        if p.numel == 0:
            tensor = torch.empty(p.sizes, dtype=dtype)
        else:
            tensor = torch.as_strided(flat[p.member], p.sizes, p.strides, p.storage_offset)
        out[p.fqn] = torch.nn.Parameter(tensor, requires_grad=p.requires_grad) if params and p.is_param else tensor
    return out


def _check_resolved_targets(program: Any) -> None:
    """After deserialization, every call in every graph must be a torch operator or one of the
    Python arithmetic functions torch.export emits; a target left as a string, or resolved to
    anything else, is refused before the program can run."""
    import math
    import operator

    import torch

    python_ok = {getattr(operator, n) for n in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "pow", "eq", "ne",
        "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "abs", "invert", "lshift", "rshift")}
    python_ok |= {math.ceil, math.floor, math.trunc, math.sqrt}
    python_ok |= {getattr(torch, n) for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not",
                                              "sym_ite", "sym_sqrt", "sym_sum") if hasattr(torch, n)}
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
                continue
            if not isinstance(target, str) and target in python_ok:
                continue
            raise UnsupportedModel(f"refused to load the archive: the program calls {str(target)[:120]!r}, "
                                   "which is not a torch operator")


def load_pt2(path: Path) -> Any:
    """The ExportedProgram in a .pt2, built from checked parts: never ``torch.export.load``.

    ``app.engine.runtime.pt2_archive.read_manifest`` checks every member and the program JSON; weights
    and constants are read from raw bytes; the program is deserialized from its JSON by torch's
    schema deserializer with no example inputs (the archive's pickled sample inputs are never
    read: ``example_inputs`` generates inputs from the signature)."""
    import zipfile

    import torch
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    from app.engine.runtime.pt2_archive import UnsafeArchive, read_manifest

    try:
        manifest = read_manifest(path)
    except UnsafeArchive as exc:
        raise UnsupportedModel(f"refused to load the archive: {exc}") from None
    try:
        with zipfile.ZipFile(path) as z:
            state_dict = _tensors(z, manifest.weights, params=True)
            constants = _tensors(z, manifest.constants, params=False)
        serialized = _dict_to_dataclass(schema.ExportedProgram, manifest.program)
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise UnsupportedModel(
            f"torch {torch.__version__} cannot load this torch.export archive ({reason}); "
            "save it with torch.export.save from a compatible torch version") from None
    _check_resolved_targets(program)
    return program


def example_inputs(program: Any, seed: int = 0) -> tuple[Any, ...]:
    """Inputs for the program's user inputs, made from their recorded shapes and dtypes: a
    symbolic dimension takes its recorded hint, else the smallest size its range allows (at
    least 2, so a batch dimension stays visibly a batch)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    user = set(program.graph_signature.user_inputs)
    args = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UnsupportedModel(f"the program's input {node.name!r} is not a tensor; only tensor "
                                   "inputs are supported")
        shape = [_concrete(d, program) for d in val.shape]
        if val.dtype.is_floating_point or val.dtype.is_complex:
            args.append(torch.randn(shape, generator=generator).to(val.dtype))
        elif val.dtype == torch.bool:
            args.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:
            args.append(torch.randint(0, 2, shape, generator=generator).to(val.dtype))
    return tuple(args)


def _concrete(dim: Any, program: Any) -> int:
    import torch

    if isinstance(dim, int):
        return dim
    node = dim.node if isinstance(dim, torch.SymInt) else None
    hint = getattr(node, "hint", None)
    if isinstance(hint, int):
        return hint
    bounds = program.range_constraints.get(node.expr) if node is not None else None
    low = int(bounds.lower) if bounds is not None and bounds.lower.is_finite else 2
    high = int(bounds.upper) if bounds is not None and bounds.upper.is_finite else max(low, 2)
    return min(max(low, 2), high)
