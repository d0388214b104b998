"""torch → ONNX, and the check every torch technique runs before handing a model back: the
result loads in onnxruntime and its outputs have the parent's shapes on the same inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.base import DEFAULT_NATIVE_STEP_TIMEOUT_S
from app.engine.errors import UnsupportedModel
from app.engine.pytorch.loading import hand_to_child, taken_from_parent
from app.engine.runtime.inputs import generate_feed
from app.engine.runtime.isolate import StepFailed, run_bounded
from app.engine.runtime.model_info import inspect_onnx
from app.engine.runtime.sessions import create_session, short_reason

OPSET = 17


def io_specs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of an ONNX file as ``inspect_onnx`` describes them."""
    info = inspect_onnx(path)
    return info["inputs"], info["outputs"]


def sample_feed(path: Path, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """A small generated feed for ``path`` (symbolic dims other than batch resolve to 8)."""
    inputs, _ = io_specs(path)
    return generate_feed(inputs, batch, dims={}, default_dim=8, int_high=10, seed=seed)


def export_module(module: Any, sample: Sequence[Any], path: Path, parent: Path,
                  deadline_s: float = DEFAULT_NATIVE_STEP_TIMEOUT_S) -> Path:
    """Export ``module`` with the parent's input/output names; dim 0 stays symbolic wherever it
    is symbolic in the parent. The TorchScript exporter is used because onnx2torch modules
    carry export hooks for it, and it is fast and deterministic. The export runs in a child
    killed at ``deadline_s``; the module and sample reach it through ``hand_to_child``."""
    inputs, outputs = io_specs(parent)
    dynamic = {s["name"]: {0: s["shape"][0]} for s in inputs + outputs
               if s["shape"] and isinstance(s["shape"][0], str)}
    saved = path.with_suffix(".export-input.pt")
    hand_to_child({"module": module.cpu().eval(), "sample": tuple(t.cpu() for t in sample)}, saved)
    try:
        run_bounded(_export, str(saved), str(path), [s["name"] for s in inputs],
                    [s["name"] for s in outputs], dynamic, deadline_s=deadline_s,
                    step="torch.onnx export", cwd=path.parent)
    except StepFailed as exc:
        reason = " ".join(str(exc).split())[:240] or exc.name
        raise UnsupportedModel(f"the optimised torch model could not be exported back to ONNX "
                               f"({reason})") from None
    finally:
        saved.unlink(missing_ok=True)
    return path


def _export(saved: str, path: str, input_names: list[str], output_names: list[str], dynamic: dict) -> None:
    import torch

    state = taken_from_parent(Path(saved))
    module, sample = state["module"], state["sample"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, sample, path, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


def verify_against(parent: Path, result: Path, batches: Sequence[int] = (2, 3)) -> dict[str, Any]:
    """Load ``result`` in onnxruntime, run it and the parent on the same generated inputs, and
    require the same output names and shapes. Raises UnsupportedModel: never return a model
    that does not run or does not fit where the parent fitted."""
    parent_session = create_session(parent, 1)[0]
    try:
        session = create_session(result, 1)[0]
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"the result failed verification: {exc.detail}") from None
    want = [o.name for o in parent_session.get_outputs()]
    got = [o.name for o in session.get_outputs()]
    if want != got:
        raise UnsupportedModel(f"the result failed verification: outputs {got} instead of {want}")
    checked = []
    for batch in batches:
        feed = sample_feed(parent, batch, seed=batch)
        try:
            ref = parent_session.run(None, feed)
        except Exception:  # a fixed-batch parent: only its own batch size can be checked
            continue
        try:
            out = session.run(None, feed)
        except Exception as exc:
            raise UnsupportedModel("the result failed verification: onnxruntime could not run "
                                   f"it at batch {batch} ({short_reason(exc)})") from None
        shapes = [list(o.shape) for o in out]
        if shapes != [list(r.shape) for r in ref]:
            raise UnsupportedModel(
                f"the result failed verification: output shapes {shapes} at batch {batch}, the "
                f"parent gives {[list(r.shape) for r in ref]}")
        checked.append({"batch_size": batch, "output_shapes": shapes})
    if not checked:
        raise UnsupportedModel("the result failed verification: the parent model cannot be run "
                               "on generated inputs to compare output shapes")
    return {"onnxruntime_loaded": True, "output_shapes_match_parent": True, "checked": checked}


def compare_export(output: Path, feed: Mapping[str, Any], expected: Sequence[Any], atol: float, of: str,
                   opset: int, device: str = "cpu") -> dict[str, Any]:
    """Run a freshly exported ONNX on ``feed`` and compare it with ``expected``, the original's
    outputs on the same inputs (numpy arrays). Raises UnsupportedModel when it doesn't run, or
    when the shapes differ or an error passes ``atol`` (a NaN error counts as passing it);
    returns the report's ``result``, ``verification`` and ``symbolic_batch``. ``of`` names the
    original in messages ("the program", "the Keras model")."""
    session = create_session(output, 1, device)[0]
    try:
        got = session.run(None, dict(feed))
    except Exception as exc:
        raise UnsupportedModel(f"the exported ONNX does not run in onnxruntime ({short_reason(exc)})") from None
    shapes, want = [list(g.shape) for g in got], [list(e.shape) for e in expected]
    worst = max((float(np.abs(g - e).max()) if g.size else 0.0 for g, e in zip(got, expected)), default=0.0)
    if shapes != want or not worst <= atol:
        raise UnsupportedModel(f"the exported ONNX disagrees with {of}: shapes {shapes} vs {want}, "
                               f"max abs error {worst:.3g}")
    inputs, outputs = io_specs(output)
    return {
        "result": {"format": "onnx", "size_bytes": output.stat().st_size, "opset": opset,
                   "inputs": inputs, "outputs": outputs},
        "verification": {"onnxruntime_loaded": True, "output_shapes": shapes, "output_shapes_match_program": True,
                         "max_abs_error": worst, "generated_input_shapes": [list(a.shape) for a in feed.values()]},
        "symbolic_batch": all(isinstance(s["shape"][0], str) for s in inputs if s["shape"]),
    }


def torch_inputs(feed: Mapping[str, Any], names: Sequence[str], device: Any = "cpu") -> list[Any]:
    import torch

    return [torch.from_numpy(feed[n]).to(device) for n in names]
