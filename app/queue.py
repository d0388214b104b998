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
        # Time limits are enforced by the job's guard (workers/guard.py): the soft one stops the
        # job at its next progress check, the hard one records "timeout" and ends the process.
        # Celery's own hard limit is only a backstop behind it.
        task_time_limit=settings.job_time_limit_s + 60,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def enqueue_job(celery: Celery, job_id: str, device: str) -> None:
    # The message names the job it was sent for (task id = job id, for logs), but it is a slot on
    # the device's queue: the worker that receives it runs the fairest queued job there.
    celery.send_task(RUN_JOB, args=[job_id], queue=device, routing_key=device, task_id=job_id)


def broker_waiting(settings: Settings) -> dict[str, int]:
    """How many messages wait in each queue, not yet delivered to a worker.

    The database is the source of truth; the reaper compares this with the queued jobs to find
    the messages the broker lost (Redis restarted empty, a send that failed after commit).
    Delivered messages are not counted: each is running a job or about to claim one.
    """
    url = settings.celery_broker_url
    if url.startswith("filesystem"):
        folder = settings.broker_folder / "queue"
        return {queue: sum(1 for _ in folder.glob(f"*.{queue}.msg")) for queue in QUEUES}
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            return {queue: client.llen(f"{settings.broker_key_prefix}{queue}") for queue in QUEUES}
        finally:
            client.close()
    raise NotImplementedError(f"cannot count messages on broker {url.split(':')[0]}")
