"""export.mlflow: log a model a job produced, with that job's params, headline metrics and
report, to an MLflow tracking server, and register it as a model version.

Only pydantic and the standard library at module top (the API lists techniques from here);
httpx and the REST calls load in ``run``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from pydantic import ConfigDict, Field, field_validator

from app.engine.base import Context, Params, Result, Technique, register

Tag = Annotated[str, Field(min_length=1, max_length=250)]


class ExportMlflowParams(Params):
    """Where to log: the tracking server, the experiment, and optionally the registered model."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"tracking_uri": "https://mlflow.example.com", "registered_model_name": "resnet50-int8"},
        {"tracking_uri": "http://mlflow.internal:5000", "experiment": "vision", "run_name": "int8 per-channel",
         "tags": {"team": "vision"}},
    ]})

    tracking_uri: str = Field(
        max_length=2048, description="Root URL of the MLflow tracking server (http or https). The worker "
        "connects to it, so it must resolve to a public address unless the operator set "
        "LATHE_EXPORT_ALLOW_PRIVATE=true. Credentials come from the worker's environment "
        "(MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD), never from params.",
        examples=["https://mlflow.example.com"])
    experiment: str = Field("lathe", min_length=1, max_length=500,
                            description="Experiment name; created when it does not exist.")
    registered_model_name: str | None = Field(
        None, min_length=1, max_length=256, description="Register the model as a new version of this "
        "registered model (created when absent). Without it only the run is logged.", examples=["resnet50-int8"])
    run_name: str | None = Field(None, min_length=1, max_length=250, description="The run's name (MLflow picks one "
                                 "when absent).")
    tags: dict[Tag, Annotated[str, Field(max_length=5000)]] = Field(
        default={}, max_length=50, description="Extra run tags (Lathe adds its own under lathe.*).",
        examples=[{"team": "vision"}])

    @field_validator("tracking_uri")
    @classmethod
    def _http(cls, value: str) -> str:
        from app.engine.export.addresses import RefusedAddress, check_scheme

        try:
            check_scheme(value, "set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD in the worker's "
                         "environment")
        except RefusedAddress as exc:
            raise ValueError(str(exc)) from None
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError("the url must have no query or fragment: give the tracking server's root URL")
        return value.rstrip("/")


@register
class ExportMlflow(Technique):
    name = "export.mlflow"
    description = (
        "Log a model a job produced to an MLflow tracking server: a run with that job's params "
        "(flattened), headline metrics (p50 latency and items/s per batch size, size and size "
        "ratio, fidelity, accuracy) and its report (report.json, report.html), the ONNX file as an "
        "MLflow model, registered as a new version of registered_model_name when given. Use it on "
        "a job's output model, or as the last step of a pipeline."
    )
    Params = ExportMlflowParams
    devices = ("cpu", "gpu")
    opens_model = False
    needs_source = True

    def run(self, ctx: Context) -> Result:
        from app.engine.errors import ExportRejected, UnsupportedModel
        from app.engine.export.mlflow_rest import Mlflow, check_destination
        from app.engine.runtime.keras_archive import sniff as keras_kind

        params = self.params_of(ctx)
        # .pt2 archives are zip files, as are .keras ones; ONNX (protobuf) never starts like one.
        if zipfile.is_zipfile(ctx.model_path) or keras_kind(ctx.model_path) is not None:
            raise UnsupportedModel("export.mlflow registers ONNX models; convert this one first (convert.onnx, or "
                                   "a pipeline whose earlier steps produce ONNX).")
        ctx.progress(0.0, "connecting")
        check_destination(params.tracking_uri, ctx.allow_private_urls)
        source = ctx.source
        digest, size = _sha256(ctx.model_path), ctx.model_path.stat().st_size
        files = self._files(ctx, source)
        client = Mlflow(params.tracking_uri, ctx.allow_private_urls)
        try:
            return self._export(ctx, params, client, source, files, digest, size)
        except (KeyError, TypeError, IndexError) as exc:  # an answer without the fields MLflow's API has
            raise ExportRejected(f"MLflow at {params.tracking_uri} answered without the fields its REST API has "
                                 f"({type(exc).__name__}: {str(exc)[:200]}); is tracking_uri an MLflow tracking "
                                 "server of version 2 or later?") from None
        finally:
            client.close()

    def _export(self, ctx: Context, params: ExportMlflowParams, client, source, files: list[tuple[str, Path]],
                digest: str, size: int) -> Result:
        from app.engine.export import record
        from app.engine.reports import checked

        experiment_id = client.experiment_id(params.experiment)
        tags = {**params.tags, "lathe.model_sha256": digest, "mlflow.source.name": "lathe"}
        if ctx.model_id:
            tags["lathe.model_id"] = ctx.model_id
        if source is not None:
            tags["lathe.technique"] = source.technique
            if source.job_id:
                tags["lathe.job_id"] = source.job_id
        body: dict[str, Any] = {"experiment_id": experiment_id, "start_time": _now_ms(),
                                "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        if params.run_name:
            body["run_name"] = params.run_name
        info = client.call("POST", "/api/2.0/mlflow/runs/create", json=body)["run"]["info"]
        run_id = info["run_id"]
        try:
            ctx.progress(0.2, "logging params and metrics")
            flat = record.flat_params(dict(source.params)) if source is not None else {}
            metrics = record.metrics(source.report if source is not None else None)
            _log_batch(client, run_id, flat, metrics)
            ctx.progress(0.4, "uploading artifacts")
            for i, (relative, path) in enumerate(files):
                client.upload(info["artifact_uri"], relative, path)
                ctx.progress(0.4 + 0.4 * (i + 1) / len(files), "uploading artifacts")
            version = None
            if params.registered_model_name:
                ctx.progress(0.85, "registering the model version")
                version = client.model_version(params.registered_model_name, f"{info['artifact_uri']}/model",
                                               run_id, [{"key": "lathe.model_sha256", "value": digest}])
            client.call("POST", "/api/2.0/mlflow/runs/update",
                        json={"run_id": run_id, "status": "FINISHED", "end_time": _now_ms()})
        except Exception:
            try:  # the run stays, marked failed, rather than RUNNING for ever
                client.call("POST", "/api/2.0/mlflow/runs/update",
                            json={"run_id": run_id, "status": "FAILED", "end_time": _now_ms()})
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        ctx.progress(1.0, "done")
        notes = [] if source is not None else [
            "the model was not produced by a Lathe job (an upload): no params, metrics or report were logged"]
        report = {
            "technique": self.name, "tracking_uri": params.tracking_uri, "experiment": params.experiment,
            "experiment_id": experiment_id, "run_id": run_id,
            "run_url": f"{params.tracking_uri}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}",
            "registered_model_name": params.registered_model_name,
            "model_version": str(version["version"]) if version else None,
            "model_version_status": version.get("status") if version else None,
            "model_sha256": digest, "model_size_bytes": size,
            "source": {"technique": source.technique, "job_id": source.job_id} if source is not None else None,
            "params_logged": len(flat), "metrics_logged": len(metrics),
            "artifacts": [relative for relative, _ in files], "notes": notes,
        }
        return Result(report=checked(report))

    def _files(self, ctx: Context, source) -> list[tuple[str, Path]]:
        """(path in the run, local file): the report's JSON and HTML, the model with its MLmodel."""
        files: list[tuple[str, Path]] = []
        if source is not None and source.report is not None:
            path = ctx.workdir / "report.json"
            path.write_text(json.dumps(source.report, indent=2, sort_keys=True))
            files.append(("report.json", path))
            html = source.report_html
            if html is None and ctx.render_report is not None:
                html = ctx.render_report(source)
            if html is not None:
                path = ctx.workdir / "report.html"
                path.write_text(html, encoding="utf-8")
                files.append(("report.html", path))
        mlmodel = ctx.workdir / "MLmodel"
        mlmodel.write_text(_mlmodel())
        files += [("model/MLmodel", mlmodel), ("model/model.onnx", ctx.model_path)]
        return files


def _log_batch(client, run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    """MLflow takes at most 100 params and 1000 metrics per request."""
    now = _now_ms()
    items = list(params.items())
    for start in range(0, len(items), 100):
        client.call("POST", "/api/2.0/mlflow/runs/log-batch", json={
            "run_id": run_id, "params": [{"key": k, "value": v} for k, v in items[start:start + 100]]})
    points = list(metrics.items())
    for start in range(0, len(points), 1000):
        client.call("POST", "/api/2.0/mlflow/runs/log-batch", json={
            "run_id": run_id, "metrics": [{"key": k, "value": v, "timestamp": now, "step": 0}
                                          for k, v in points[start:start + 1000]]})


def _mlmodel() -> str:
    """The MLmodel file mlflow.onnx writes: the version loads with mlflow.onnx.load_model and
    mlflow.pyfunc.load_model (onnxruntime) as well as by path."""
    import onnx

    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return "\n".join([
        "artifact_path: model",
        "flavors:",
        "  onnx:",
        "    code: null",
        "    data: model.onnx",
        f"    onnx_version: {onnx.__version__}",
        "    providers:",
        "    - CPUExecutionProvider",
        "  python_function:",
        "    data: model.onnx",
        "    loader_module: mlflow.onnx",
        f"    python_version: {platform.python_version()}",
        f"model_uuid: {uuid.uuid4().hex}",
        f"utc_time_created: '{created}'",
        ""])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)
