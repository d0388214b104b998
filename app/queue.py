"""The Celery configuration shared by the API (which only sends) and the workers.

The API enqueues by task *name* with the job id only; it never imports worker code.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app.settings import Settings

RUN_JOB = "lathe.run_job"
QUEUES = ("cpu", "gpu")


def make_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    transport_options: dict = {}
    url = settings.celery_broker_url
    if url.startswith("filesystem"):
        folder = str(settings.broker_folder / "queue")
        transport_options = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": str(settings.broker_folder / "processed"),
            # Exchange bindings; kombu's default is ./control in the current directory.
            "control_folder": str(settings.broker_folder / "control"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    elif url.startswith("redis") and settings.broker_key_prefix:
        transport_options = {"global_keyprefix": settings.broker_key_prefix}
    app = Celery("lathe", broker=url)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,  # the database holds every outcome
        task_acks_late=True,  # a job whose worker dies is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # jobs are long: don't hoard them
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],
        task_default_queue="cpu",
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_time_limit_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def enqueue_job(celery: Celery, job_id: str, device: str) -> None:
    celery.send_task(RUN_JOB, args=[job_id], queue=device, routing_key=device)
