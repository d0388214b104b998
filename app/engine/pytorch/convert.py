"""Technique ``convert.onnx``: a torch.export (.pt2) program or a Keras model (.keras / .h5)
→ an ONNX child, so that every ONNX technique applies to it. Keras models go through
``app.engine.pytorch.keras_export`` in the same confined, bounded child.

The archive is checked again here (the API checked it at upload) and the program built from its
checked parts, never with ``torch.export.load`` (see ``app.engine.runtime.pt2_archive``). It is
re-exported with the dynamo exporter and a symbolic batch dimension where the program allows
it, then the ONNX is run in onnxruntime on inputs generated from the program's signature (the
archive's pickled sample inputs are never read) and compared with the program's outputs.
Module top imports pydantic-level code only.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from app.engine.base import Context, Params, Result, Technique, register
from app.engine.reports import SCHEMA_VERSION, checked
from app.engine.errors import UnsupportedModel


class ConvertOnnxParams(Params):
    model_config = ConfigDict(json_schema_extra={"examples": [{}, {"opset": 18}]})

    opset: int = Field(default=18, ge=17, le=23, description="ONNX opset of the result.",
                       json_schema_extra={"examples": [18]})
    atol: float = Field(
        default=1e-3, gt=0.0, le=1.0,
        description="Largest absolute difference allowed between the program's and the ONNX "
        "model's outputs on inputs generated from the program's signature.", json_schema_extra={"examples": [1e-3]})


@register
class ConvertOnnx(Technique):
    name = "convert.onnx"
    description = (
        "Convert a torch.export (.pt2) program or a Keras model (.keras, .h5) to ONNX (symbolic "
        "batch dimension where the model allows it), verified in onnxruntime against the "
        "original's own outputs.")
    Params = ConvertOnnxParams
    produces_model = True

    def run(self, ctx: Context) -> Result:
        import shutil

        from app.engine.runtime.isolate import run_bounded
        from app.engine.runtime.keras_archive import sniff
        from app.engine.pytorch.loading import is_pt2

        p = self.params_of(ctx)
        if sniff(ctx.model_path) is not None:
            return self._run_keras(ctx, p)
        if not is_pt2(ctx.model_path):
            raise UnsupportedModel("this model is already ONNX; convert.onnx converts "
                                   "torch.export (.pt2) programs and Keras models")
        # The uploaded program runs only in a child: killed at the native-step deadline, with no
        # network and (under root) as nobody, writing only in its own folder.
        box = ctx.workdir / "convert"
        box.mkdir()
        shutil.copyfile(ctx.model_path, box / "model.pt2")
        ctx.progress(0.0, "loading, exporting and verifying the program in a confined process")
        report = run_bounded(_convert, "model.pt2", "model.onnx", p.opset, p.atol, ctx.device, deadline_s=ctx.native_step_timeout_s,
                             step="torch.export program conversion", cwd=box, confine=True)
        output = ctx.workdir / "model.onnx"
        (box / "model.onnx").rename(output)
        shutil.rmtree(box, ignore_errors=True)
        report["parent"]["size_bytes"] = ctx.model_path.stat().st_size
        return Result(report=checked(report), output_path=output)

    def _run_keras(self, ctx: Context, p: ConvertOnnxParams) -> Result:
        import shutil

        from app.engine.runtime.isolate import run_bounded
        from app.engine.pytorch.keras_export import convert_keras

        box = ctx.workdir / "convert"
        box.mkdir()
        shutil.copyfile(ctx.model_path, box / "model.upload")
        ctx.progress(0.0, "checking, loading, exporting and verifying the Keras model in a confined process")
        report = run_bounded(convert_keras, "model.upload", "model.onnx", p.opset, p.atol,
                             ctx.native_step_timeout_s, deadline_s=ctx.native_step_timeout_s,
                             step="Keras model conversion", cwd=box, confine=True)
        output = ctx.workdir / "model.onnx"
        (box / "model.onnx").rename(output)
        shutil.rmtree(box, ignore_errors=True)
        report = {"schema_version": SCHEMA_VERSION, "technique": self.name, **report}
        report["parent"]["size_bytes"] = ctx.model_path.stat().st_size
        return Result(report=checked(report), output_path=output)


def _convert(source: str, target: str, opset: int, atol: float, device: str, confinement: dict) -> dict:
    """Load the checked archive, export it, verify the ONNX against the program (run in the
    confined child, cwd = its folder); the report, as JSON-able data."""
    import warnings
    from pathlib import Path

    import numpy as np
    import torch

    from app.engine.runtime.sessions import create_session, short_reason
    from app.engine.pytorch.export import io_specs
    from app.engine.pytorch.loading import example_inputs, load_pt2

    source_path, output = Path(source).resolve(), Path(target).resolve()
    program = load_pt2(source_path)
    args = example_inputs(program)
    names = [s.arg.name for s in program.graph_signature.input_specs
             if s.kind.name == "USER_INPUT"]
    outs = [s for s in program.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
    out_names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    module = program.module()
    dynamic = tuple({0: torch.export.Dim("batch")} if a.dim() else None for a in args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(output), input_names=names,
                              output_names=out_names, dynamic_shapes=dynamic,
                              opset_version=opset, dynamo=True, verbose=False,
                              external_data=False, artifacts_dir=str(output.parent))
    except Exception as exc:
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise UnsupportedModel(f"torch.onnx could not export this program ({reason})") from None
    with torch.no_grad():
        expected = module(*args)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = create_session(output, 1, device)[0]
    try:
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    except Exception as exc:
        raise UnsupportedModel(f"the exported ONNX does not run in onnxruntime "
                               f"({short_reason(exc)})") from None
    shapes = [list(g.shape) for g in got]
    want = [list(e.shape) for e in expected]
    errors = [float(np.abs(g - e.numpy()).max()) if g.size else 0.0 for g, e in zip(got, expected)]
    if shapes != want or max(errors, default=0.0) > atol:
        raise UnsupportedModel(f"the exported ONNX disagrees with the program: shapes {shapes} "
                               f"vs {want}, max abs error {max(errors, default=0.0):.3g}")
    inputs, outputs = io_specs(output)
    symbolic = all(isinstance(s["shape"][0], str) for s in inputs if s["shape"])
    notes = [] if symbolic else [
        "the program was exported with a fixed batch size, so the ONNX model has one too; "
        "export with dynamic_shapes={0: torch.export.Dim('batch')} for a symbolic batch"]
    report = {
        "schema_version": SCHEMA_VERSION, "technique": ConvertOnnx.name,
        "parent": {"format": "pt2"},
        "result": {"format": "onnx", "size_bytes": output.stat().st_size, "opset": opset,
                   "inputs": inputs, "outputs": outputs},
        "verification": {"onnxruntime_loaded": True, "output_shapes": shapes,
                         "output_shapes_match_program": True,
                         "max_abs_error": max(errors, default=0.0),
                         "generated_input_shapes": [list(a.shape) for a in args]},
        "symbolic_batch": symbolic, "torch": torch.__version__, "notes": notes,
        "sandbox": confinement,
    }
    return report
