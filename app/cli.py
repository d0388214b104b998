"""The ``lathe`` command: serve (embedded default), migrate, api, worker, keys, gc.

With the client package installed (``pip install ./client``), also its job commands: models,
datasets, techniques, jobs (lathe_client.cli).

Every command resolves the data directory the same way: ``--data-dir`` if given (exported as
``LATHE_DATA_DIR`` for child processes), else ``LATHE_DATA_DIR``, else ``./lathe-data``.
"""

from __future__ import annotations

import argparse
import os
import time
import signal
import sys
from pathlib import Path

import app
from app import logs


def _settings(args: argparse.Namespace, create: bool = True):
    if getattr(args, "data_dir", None):
        os.environ["LATHE_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    from app.settings import Settings

    settings = Settings()
    if create:
        settings.ensure_dirs()
    return settings


def _existing(args: argparse.Namespace):
    """Settings of a deployment that exists: an admin command never starts a fresh embedded
    database (run from another folder, ``keys create`` once made a second one, and the key it
    printed was unknown to the running server)."""
    settings = _settings(args, create=False)
    database = settings.resolved_data_dir / "lathe.db"
    if settings.is_embedded and settings.database_url is None and not database.exists():
        raise SystemExit(
            f"no Lathe database at {database}: run this command where `lathe serve` runs, or point it at the "
            "server's data with --data-dir or LATHE_DATA_DIR (or LATHE_DATABASE_URL in production). "
            "`lathe migrate` creates a new, empty deployment there if that is what you want.")
    return settings


def _alembic_config(settings):
    from alembic.config import Config

    # A source checkout (pip install -e .) keeps alembic.ini beside app/; an image keeps it in
    # the working directory.
    for root in (Path(app.__file__).resolve().parents[1], Path.cwd()):
        if (root / "alembic.ini").exists():
            cfg = Config(str(root / "alembic.ini"))
            cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
            return cfg
    raise SystemExit("alembic.ini not found beside the app package or in the current directory")


def run_migrations(settings, revision: str = "head", downgrade: bool = False) -> None:
    from alembic import command

    cfg = _alembic_config(settings)
    (command.downgrade if downgrade else command.upgrade)(cfg, revision)


def migrate(args: argparse.Namespace) -> None:
    settings = _settings(args)
    revision = getattr(args, "revision", "head")
    run_migrations(settings, revision)
    print(f"database at {settings.sqlalchemy_url.split('@')[-1]} migrated to {revision}")


def keys_create(args: argparse.Namespace) -> None:
    from app.db import make_engine, make_sessionmaker, transaction
    from app.tenants.service import create_key

    settings = _existing(args)
    engine = make_engine(settings.sqlalchemy_url)
    with transaction(make_sessionmaker(engine)) as s:
        key = create_key(s, args.tenant)
    engine.dispose()
    print(f"API key for tenant {args.tenant!r} (shown once; store it now):")
    print(key)


def keys_revoke(args: argparse.Namespace) -> None:
    from app.db import make_engine, make_sessionmaker, transaction
    from app.tenants.service import revoke_key

    settings = _existing(args)
    engine = make_engine(settings.sqlalchemy_url)
    with transaction(make_sessionmaker(engine)) as s:
        count = revoke_key(s, args.key)
    engine.dispose()
    print(f"revoked {count} key(s); API processes stop accepting them within LATHE_AUTH_CACHE_S "
          f"({settings.auth_cache_s:g} s)")
    if count == 0:
        raise SystemExit(1)


def api(args: argparse.Namespace) -> None:
    import uvicorn

    from app.main import create_app

    settings = _settings(args)
    logs.configure(settings.log_format, settings.log_level)
    host, port = args.host or settings.host, args.port or settings.port
    log_config = logs.uvicorn_config(settings.log_level)
    if args.processes > 1:  # each process builds its own app from the environment
        from app.metrics import prepare_multiprocess

        prepare_multiprocess(settings.resolved_data_dir / "metrics")  # a scrape of any process sums them all
        uvicorn.run("app.cli:app_factory", factory=True, host=host, port=port, workers=args.processes,
                    log_level=settings.log_level, log_config=log_config)
    else:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level, log_config=log_config)


def app_factory():
    """One API process of ``lathe api --processes N``: its logging, then its app."""
    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    return create_app(settings)


def worker(args: argparse.Namespace) -> None:
    settings = _settings(args)
    logs.configure(settings.log_format, settings.log_level)  # before Celery starts: its warnings too
    from workers.celery_app import celery

    os.nice(settings.worker_nice)  # inherited by the pool's children
    queues = args.queues
    if args.ready_file:  # lathe serve's supervisor and compose's healthcheck read it
        from celery.signals import worker_ready

        ready_file = Path(args.ready_file)

        def alive(**_) -> None:  # touched now and every 10 s after: its age says the worker is up
            import threading

            def beat() -> None:
                while True:
                    ready_file.touch()
                    time.sleep(10)

            threading.Thread(target=beat, name="lathe-alive", daemon=True).start()

        worker_ready.connect(alive, weak=False)
    quiet = ["--quiet"] if settings.log_format == "json" else []  # no banner: every line is JSON
    celery.worker_main([
        *quiet, "worker", "--queues", queues, "--concurrency", str(args.concurrency or settings.worker_concurrency),
        "--loglevel", settings.log_level.upper(), "--hostname", f"lathe-{queues.replace(',', '-')}-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle",
    ])


def gc(args: argparse.Namespace) -> None:
    """One garbage-collection sweep of the artifact store (app/gc.py)."""
    from app.db import make_engine
    from app.gc import sweep
    from app.store import StoreUnavailable, open_store

    settings = _existing(args)
    grace = settings.gc_grace_s if args.grace is None else args.grace
    engine = make_engine(settings.sqlalchemy_url)
    try:
        result = sweep(engine, open_store(settings), grace, dry_run=args.dry_run)
    except StoreUnavailable as exc:
        raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
    for uri in result.files + result.rows:
        print(f"{'would remove' if args.dry_run else 'removed'} {uri}")
    print(f"{result.summary(args.dry_run)} (grace {grace:g} s)")


def openapi(args: argparse.Namespace) -> None:
    """The typed OpenAPI document on stdout (docs/openapi.json is this output)."""
    import json

    from app.main import create_app
    from app.openapi import typed_openapi
    from app.settings import Settings

    json.dump(typed_openapi(create_app(Settings(data_dir="/nonexistent-lathe-openapi"))), sys.stdout,
              indent=1, sort_keys=True)
    sys.stdout.write("\n")


def _local_key(settings) -> str:
    """The embedded default's key for tenant 'local', created once and kept in the data dir (0600)."""
    from app.db import make_engine, make_sessionmaker, transaction
    from app.tenants.service import create_key, tenant_for_key

    path = settings.resolved_data_dir / "local-api-key"
    engine = make_engine(settings.sqlalchemy_url)
    sessions = make_sessionmaker(engine)
    try:
        if path.exists():
            key = path.read_text().strip()
            with transaction(sessions) as s:
                if tenant_for_key(s, key) is not None:
                    return key
        with transaction(sessions) as s:
            key = create_key(s, "local")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
    finally:
        engine.dispose()


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.main import create_app
    from app.supervisor import WorkerSupervisor

    settings = _settings(args)
    logs.configure(settings.log_format, settings.log_level)
    migrate(args)
    key = _local_key(settings)
    host, port = args.host or settings.host, args.port or settings.port
    env = {**os.environ, "LATHE_DATA_DIR": str(settings.resolved_data_dir)}
    worker = WorkerSupervisor([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu,gpu"], env,
                              settings.resolved_data_dir / "worker.ready")
    server = uvicorn.Server(uvicorn.Config(create_app(settings, embedded_worker=worker), host=host, port=port,
                                           log_level=settings.log_level, log_config=logs.uvicorn_config(settings.log_level)))
    stopping: list[int] = []

    def on_signal(sig: int, frame) -> None:
        # uvicorn handles SIGINT and SIGTERM while it serves and hands them on here once it has
        # shut down; SIGHUP (the terminal went away) comes here directly. A second one: no grace.
        if stopping:
            worker.kill()
        stopping.append(sig)
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    worker.start()
    print(f"Lathe is serving on http://{host}:{port}  (Swagger UI: http://{host}:{port}/docs)")
    print(f"data directory: {settings.resolved_data_dir}")
    print(f"API key for tenant 'local' (also in {settings.resolved_data_dir / 'local-api-key'}):")
    print(key, flush=True)
    try:
        if not stopping:
            server.run()
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lathe", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data directory (default: $LATHE_DATA_DIR or ./lathe-data)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="embedded default: migrate, then run the API and one worker")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(fn=serve)

    p = sub.add_parser("migrate", parents=[common], help="apply database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(fn=migrate)

    p = sub.add_parser("api", parents=[common], help="run the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--processes", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.set_defaults(fn=api)

    p = sub.add_parser("worker", parents=[common], help="run a Celery worker")
    p.add_argument("--queues", default="cpu", help="comma-separated: cpu, gpu")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--ready-file", help="touched once the worker consumes jobs, then every 10 s (lathe serve and healthchecks watch it)")
    p.set_defaults(fn=worker)

    p = sub.add_parser("gc", parents=[common], help="remove stored files, blob rows and staging files nothing references")
    p.add_argument("--grace", type=float, help="keep what is younger than this many seconds (default $LATHE_GC_GRACE_S)")
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    p.set_defaults(fn=gc)

    p = sub.add_parser("openapi", help="print the OpenAPI document (docs/openapi.json)")
    p.set_defaults(fn=openapi)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", parents=[common], help="create an API key (printed as the last line)")
    p.add_argument("--tenant", required=True)
    p.set_defaults(fn=keys_create)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key (the key, or its first 10 characters)")
    p.add_argument("key")
    p.set_defaults(fn=keys_revoke)

    try:  # the client's job commands (models, datasets, techniques, jobs): pip install ./client
        from lathe_client.cli import COMMANDS as JOB_COMMANDS, add_job_commands, run as run_job_command
    except ImportError:
        JOB_COMMANDS = ()
    else:
        add_job_commands(sub)

    args = parser.parse_args(argv)
    if args.command in JOB_COMMANDS:
        raise SystemExit(run_job_command(args))
    args.fn(args)


if __name__ == "__main__":
    main()
