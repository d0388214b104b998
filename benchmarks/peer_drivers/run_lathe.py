"""Lathe through the engine, the worker's path: ``app.engine.pipeline.run`` on one step.

Runs in the project's venv with PYTHONPATH = the checkout; the job carries ``technique`` and
``params``, or pipeline ``steps`` (chosen by benchmarks/peers.py's ``lathe_jobs``); a pipeline's
last step's report and model are kept. The engine starts spawned children,
hence the ``__main__`` guard."""

import json
import shutil
import tempfile
from pathlib import Path

from peer_common import done, job


def main() -> None:
    from app.engine import pipeline
    from app.engine.base import Context

    j = job()
    plan = pipeline.from_request(j.get("technique"), j.get("params", {}), j.get("steps"))
    with tempfile.TemporaryDirectory(prefix="lathe-peers-") as tmp:
        workdir = Path(tmp)
        ctx = Context(model_path=Path(j["onnx"]), params=plan[0].params, workdir=workdir,
                      dataset_path=Path(j["tuning"]), native_step_timeout_s=1800)
        result = pipeline.run(plan, ctx, workdir, lambda fraction, stage: None)[-1]
        out = Path(j["out"], "model.onnx")
        shutil.copyfile(result.output_path, out)
    report = result.report
    Path(j["out"], "report.json").write_text(json.dumps(report, default=str))
    q = report.get("quantization") or {}
    note = (f"chose {q.get('mode')} per_channel={q.get('per_channel')}, "
            f"{len(q.get('float_layers') or [])} layer(s) in float") if q else ""
    done(j, out, note=note)


if __name__ == "__main__":
    main()
