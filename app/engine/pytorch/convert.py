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
        from app.engine.pytorch.keras_export import convert_keras
        from app.engine.pytorch.loading import is_pt2
        from app.engine.runtime.keras_archive import sniff

        p = self.params_of(ctx)
        if sniff(ctx.model_path) is not None:
            return self._confined(ctx, "model.upload", "Keras model conversion", "checking, loading, exporting and "
                                  "verifying the Keras model in a confined process", convert_keras, p.opset,
                                  p.atol, ctx.native_step_timeout_s)
        if not is_pt2(ctx.model_path):
            raise UnsupportedModel("this model is already ONNX; convert.onnx converts "
                                   "torch.export (.pt2) programs and Keras models")
        return self._confined(ctx, "model.pt2", "torch.export program conversion", "loading, exporting and "
                              "verifying the program in a confined process", _convert, p.opset, p.atol, ctx.device)

    def _confined(self, ctx: Context, upload: str, step: str, stage: str, fn, *args) -> Result:
        """The uploaded model runs only in a child: ``fn(upload, "model.onnx", *args)`` in a folder
        of its own, killed at the native-step deadline, with no network and (under root) no
        capabilities, writing only in that folder; it returns the report without its header."""
        import shutil

        from app.engine.runtime.isolate import run_bounded

        box = ctx.workdir / "convert"
        box.mkdir()
        shutil.copyfile(ctx.model_path, box / upload)
        ctx.progress(0.0, stage)
        report = run_bounded(fn, upload, "model.onnx", *args, deadline_s=ctx.native_step_timeout_s,
                             step=step, cwd=box, confine=True)
        output = ctx.workdir / "model.onnx"
        (box / "model.onnx").rename(output)
        shutil.rmtree(box, ignore_errors=True)
        report = {"schema_version": SCHEMA_VERSION, "technique": self.name, **report}
        report["parent"]["size_bytes"] = ctx.model_path.stat().st_size
        return Result(report=checked(report), output_path=output)


def _convert(source: str, target: str, opset: int, atol: float, device: str, confinement: dict) -> dict:
    """Load the checked archive, export it, verify the ONNX against the program (run in the
    confined child, cwd = its folder); the report without its header, as JSON-able data."""
    import warnings
    from pathlib import Path

    import torch

    from app.engine.pytorch.export import compare_export
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
    checked_export = compare_export(output, {n: a.numpy() for n, a in zip(names, args)},
                                    [e.numpy() for e in expected], atol, "the program", opset, device)
    notes = [] if checked_export["symbolic_batch"] else [
        "the program was exported with a fixed batch size, so the ONNX model has one too; "
        "export with dynamic_shapes={0: torch.export.Dim('batch')} for a symbolic batch"]
    return {"parent": {"format": "pt2"}, **checked_export, "torch": torch.__version__, "notes": notes,
            "sandbox": confinement}
