"""The worker's Celery app: the shared configuration plus the task module."""

import multiprocessing.process as mp_process

from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutdown

from app import logs

from app.queue import make_celery
from app.settings import Settings

# The standard library's main-process class (it deletes the name); captured before billiard forks.
_MainProcess = type(mp_process.current_process())
celery = make_celery(Settings())
celery.conf.include = ["workers.tasks"]


@setup_logging.connect
def _logging(**_) -> None:
    """Celery configures no logging of its own: its lines and ours share LATHE_LOG_FORMAT."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    if settings.log_format == "json":  # what Celery prints from its signal handlers, as JSON lines too
        import celery.apps.worker

        celery.apps.worker.safe_say = lambda msg, f=None: logs.signal_safe_line("celery.worker", msg, f)


@worker_process_init.connect
def _own_multiprocessing_identity(**_) -> None:
    """billiard (Celery's pool) installs its own process object as the standard library's
    current process in each pool child: daemonic ("daemonic processes are not allowed to have
    children") and with billiard's authkey, which the standard library refuses to pickle. Jobs
    run native steps in children of their own (app.engine.runtime.isolate, a forkserver), killed at
    their deadline, when the job is stopped, and by the guard before it ends the process; give
    the standard library back a main-process identity so that it can start them."""
    mp_process._current_process = _MainProcess()


_dispatcher = None
_collector = None


@worker_ready.connect
def _start_webhook_dispatcher(**_) -> None:
    """Webhook deliveries go out from the worker's main process, in a thread of their own: the
    pool's children run jobs, so a delivery never waits behind one (app.webhooks.dispatcher)."""
    global _dispatcher
    from app.db import make_engine, make_sessionmaker
    from app.webhooks.dispatcher import Dispatcher

    settings = Settings()
    _dispatcher = Dispatcher(settings, make_sessionmaker(make_engine(settings.sqlalchemy_url)))
    _dispatcher.start()


@worker_ready.connect
def _start_garbage_collector(**_) -> None:
    """The store's periodic sweep (app/gc.py), also from the main process: every host that runs
    workers has a staging folder (and, on S3, a cache) of its own to sweep, `lathe serve` included;
    the API stays free of it. Sweeps of several workers are safe together (row locks), and each
    starts at a random point of its interval."""
    global _collector
    from app.db import make_engine
    from app.gc import Collector
    from app.store import open_store

    settings = Settings()
    if settings.gc_interval_s > 0:
        _collector = Collector(make_engine(settings.sqlalchemy_url), open_store(settings), settings.gc_interval_s,
                               settings.gc_grace_s)
        _collector.start()


@worker_shutdown.connect
def _stop_webhook_dispatcher(**_) -> None:
    if _dispatcher is not None:
        _dispatcher.stop()
    if _collector is not None:
        _collector.stop()
