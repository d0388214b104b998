"""The ``lathe`` job commands: models, datasets, techniques, jobs.

    lathe models upload FILE [--name N]          lathe jobs submit MODEL_ID TECHNIQUE [--params JSON|@file]
    lathe datasets upload FILE [--name N]            [--dataset ID] [--steps JSON|@file] [--wait] [--download PATH]
    lathe techniques                             lathe jobs wait ID [--download PATH]
    lathe jobs cancel ID                         lathe jobs report ID [--html PATH]

Every command takes ``--url`` / ``--key`` (default LATHE_URL / LATHE_API_KEY) and ``--json``
(machine-readable output on stdout). Exit codes: 0 done, 1 a waited job failed or was
cancelled, 2 bad usage, 3 the service refused the request or could not be reached, 4 a wait
timed out.

The server package's ``lathe`` adds these to its admin commands (``add_job_commands``); with the
server installed, this package's ``lathe`` runs the server's, so either script has every command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lathe_client._sync import Job, Lathe
from lathe_client.errors import LatheError, WaitTimeoutError
from lathe_client.types import Dataset, Model

COMMANDS = ("models", "datasets", "techniques", "jobs")
JOB_FAILED, SERVICE_ERROR, WAIT_TIMEOUT = 1, 3, 4


def add_job_commands(sub: Any) -> None:
    """Add models / datasets / techniques / jobs to an argparse subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the service (default: $LATHE_URL or http://127.0.0.1:8000)")
    common.add_argument("--key", help="API key (default: $LATHE_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    models = sub.add_parser("models", help="upload and download models").add_subparsers(dest="models_command",
                                                                                        required=True)
    p = models.add_parser("upload", parents=[common], help="upload a model file (ONNX, .pt2, Keras)")
    p.add_argument("file", type=Path)
    p.add_argument("--name")
    p.set_defaults(fn=_models_upload)
    p = models.add_parser("download", parents=[common], help="download a model (sha256 verified)")
    p.add_argument("model_id")
    p.add_argument("path", type=Path)
    p.set_defaults(fn=_models_download)

    datasets = sub.add_parser("datasets", help="upload datasets (.npz)").add_subparsers(dest="datasets_command",
                                                                                        required=True)
    p = datasets.add_parser("upload", parents=[common], help="upload an .npz named after the model's inputs")
    p.add_argument("file", type=Path)
    p.add_argument("--name")
    p.set_defaults(fn=_datasets_upload)

    p = sub.add_parser("techniques", parents=[common], help="list the techniques and their params")
    p.set_defaults(fn=_techniques)

    jobs = sub.add_parser("jobs", help="submit, wait for, report on and cancel jobs").add_subparsers(
        dest="jobs_command", required=True)
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=float, help="seconds to wait at most (default: no limit)")
    waiting.add_argument("--download", type=Path, metavar="PATH", help="then download the output model here")
    p = jobs.add_parser("submit", parents=[common, waiting], help="queue a technique (or --steps) on a model")
    p.add_argument("model_id")
    p.add_argument("technique", nargs="?", help="a name from `lathe techniques` (or give --steps)")
    p.add_argument("--params", type=_json_arg, default=None, metavar="JSON|@FILE")
    p.add_argument("--steps", type=_json_arg, default=None, metavar="JSON|@FILE",
                   help='a pipeline: [{"technique": ..., "params": {...}}, ...]')
    p.add_argument("--dataset", metavar="ID")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.set_defaults(fn=_jobs_submit)
    p = jobs.add_parser("wait", parents=[common, waiting], help="follow a job until it ends")
    p.add_argument("job_id")
    p.set_defaults(fn=_jobs_wait)
    p = jobs.add_parser("report", parents=[common], help="print a job's report (or save its HTML page)")
    p.add_argument("job_id")
    p.add_argument("--html", type=Path, metavar="PATH", help="save the report page here")
    p.set_defaults(fn=_jobs_report)
    p = jobs.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(fn=_jobs_cancel)


def run(args: argparse.Namespace) -> int:
    """Run a parsed job command; returns the exit code."""
    try:
        with Lathe(args.url, args.key) as lathe:
            return int(args.fn(lathe, args) or 0)
    except WaitTimeoutError as exc:
        _fail(args, exc)
        return WAIT_TIMEOUT
    except LatheError as exc:
        _fail(args, exc)
        return SERVICE_ERROR


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    server = _server_cli()
    if server is not None:  # the server's lathe has these commands and its admin ones
        server(argv)
        return
    parser = argparse.ArgumentParser(prog="lathe", description=__doc__.splitlines()[0])
    add_job_commands(parser.add_subparsers(dest="command", required=True))
    sys.exit(run(parser.parse_args(argv)))


def _server_cli() -> Callable[[list[str]], None] | None:
    """The Lathe server's ``lathe`` (app.cli:main), when that package is installed too."""
    from importlib import metadata

    try:
        scripts = metadata.distribution("lathe").entry_points.select(group="console_scripts", name="lathe")
        if not any(ep.value == "app.cli:main" for ep in scripts):
            return None
        from app.cli import main as server_main  # type: ignore[import-not-found,unused-ignore]
    except (metadata.PackageNotFoundError, ImportError):
        return None
    found: Callable[[list[str]], None] = server_main
    return found


# --- the commands --------------------------------------------------------------------------------

def _models_upload(lathe: Lathe, args: argparse.Namespace) -> None:
    _print_model(args, lathe.models.upload(args.file, name=args.name))


def _models_download(lathe: Lathe, args: argparse.Namespace) -> None:
    path = lathe.models.download(args.model_id, args.path)
    _out(args, {"model_id": args.model_id, "path": str(path)}, f"downloaded {path} (sha256 verified)")


def _datasets_upload(lathe: Lathe, args: argparse.Namespace) -> None:
    ds: Dataset = lathe.datasets.upload(args.file, name=args.name)
    arrays = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in ds.arrays.items())
    _out(args, ds.raw, f"dataset {ds.id}  {ds.name}  {ds.num_samples} samples  {_size(ds.size_bytes)}\n"
                       f"  arrays: {arrays}")


def _techniques(lathe: Lathe, args: argparse.Namespace) -> None:
    techniques = lathe.techniques.list()
    width = max((len(t.name) for t in techniques), default=0)
    lines = [f"{t.name:<{width}}  {'/'.join(t.devices):<7}  {'dataset' if t.needs_dataset else '       '}  "
             f"{t.description.splitlines()[0] if t.description else ''}" for t in techniques]
    _out(args, [t.raw for t in techniques], "\n".join(lines))


def _jobs_submit(lathe: Lathe, args: argparse.Namespace) -> int:
    if (args.technique is None) == (args.steps is None):
        raise SystemExit("lathe jobs submit: give a TECHNIQUE or --steps (a pipeline), not both")
    job = lathe.jobs.submit(args.model_id, args.technique, args.params, dataset_id=args.dataset,
                            steps=args.steps, device=args.device)
    if not (args.wait or args.download):
        _out(args, job.raw, f"job {job.id} {job.status}: {_what(job)} on model {job.model_id}")
        return 0
    if not args.json:
        print(f"job {job.id} {job.status}: {_what(job)} on model {job.model_id}", file=sys.stderr)
    return _wait_and_download(job, args)


def _jobs_wait(lathe: Lathe, args: argparse.Namespace) -> int:
    return _wait_and_download(lathe.jobs.get(args.job_id), args)


def _wait_and_download(job: Job, args: argparse.Namespace) -> int:
    job = job.wait(args.timeout, progress=None if not args.json else False)
    result: dict[str, Any] = dict(job.raw)
    lines = [_ended(job)]
    if args.download and job.status == "succeeded":
        if job.output_model_id:
            result["downloaded"] = str(job.download(args.download))
            lines.append(f"downloaded {result['downloaded']} (sha256 verified)")
        else:
            lines.append(f"{job.technique} produces no model: nothing to download")
    _out(args, result, "\n".join(lines))
    return 0 if job.status == "succeeded" else JOB_FAILED


def _jobs_report(lathe: Lathe, args: argparse.Namespace) -> None:
    if args.html:
        args.html.write_text(lathe.jobs.report_html(args.job_id), encoding="utf-8")
        _out(args, {"job_id": args.job_id, "html": str(args.html)}, f"wrote {args.html}")
        return
    report = lathe.jobs.report(args.job_id)
    verdict = report.get("verdict")
    head = f"{report.get('technique', '')} report of job {args.job_id}"
    if isinstance(verdict, dict):
        verdict = verdict.get("summary") or verdict.get("text") or json.dumps(verdict)
    _out(args, report, f"{head}\nverdict: {verdict}\n{json.dumps(report, indent=2)}" if verdict else
         f"{head}\n{json.dumps(report, indent=2)}")


def _jobs_cancel(lathe: Lathe, args: argparse.Namespace) -> None:
    job = lathe.jobs.cancel(args.job_id)
    _out(args, job.raw, f"job {job.id} {job.status}")


# --- output --------------------------------------------------------------------------------------

def _out(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data) if args.json else human)


def _fail(args: argparse.Namespace, exc: LatheError) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"error": {"type": exc.type, "status": exc.status, "title": exc.title,
                                    "detail": exc.detail, **({"errors": exc.body["errors"]} if "errors" in exc.body
                                                             else {})}}), file=sys.stderr)
    else:
        print(f"lathe: {exc}", file=sys.stderr)
        for e in exc.body.get("errors") or []:
            if isinstance(e, dict):
                print(f"  {'.'.join(map(str, e.get('loc', [])))}: {e.get('msg', '')}", file=sys.stderr)


def _print_model(args: argparse.Namespace, m: Model) -> None:
    spec = "; ".join(f"{t.name} {t.dtype}{t.shape}" for t in m.inputs)
    _out(args, m.raw, f"model {m.id}  {m.name}  {m.format}  {_size(m.size_bytes)}  {m.parameter_count:,} params\n"
                      f"  inputs: {spec}\n  sha256: {m.sha256}")


def _what(job: Job) -> str:
    return " → ".join(s.technique for s in job.steps)


def _ended(job: Job) -> str:
    if job.status == "succeeded":
        out = f"  output model {job.output_model_id}" if job.output_model_id else ""
        return f"job {job.id} succeeded{out}"
    if job.error is not None:
        return f"job {job.id} {job.status}: {job.error.type}: {job.error.detail}"
    return f"job {job.id} {job.status}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _json_arg(value: str) -> Any:
    """A JSON value, or ``@path`` to read one from a file."""
    try:
        text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON (or @file of JSON): {exc}") from None


if __name__ == "__main__":
    main()
