"""The Celery configuration shared by the API (which only sends) and the workers.

The API enqueues by task *name* with the job id only; it never imports worker code.
"""

from __future__ import annotations

import json

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
    # task_id = job id: the broker's copy of a job can be recognised (see broker_job_ids).
    celery.send_task(RUN_JOB, args=[job_id], queue=device, routing_key=device, task_id=job_id)


def broker_job_ids(settings: Settings) -> set[str]:
    """Ids of the jobs the broker holds: waiting in a queue, or delivered and not yet acked.

    The database is the source of truth; this is how the reaper finds queued jobs whose message
    the broker lost (Redis restarted empty, a send that failed after commit).
    """
    url = settings.celery_broker_url
    messages: list[str] = []
    if url.startswith("filesystem"):
        folder = settings.broker_folder / "queue"
        for path in folder.glob("*.msg"):
            try:
                messages.append(path.read_text())
            except OSError:  # consumed between listing and reading
                continue
    elif url.startswith("redis"):
        import redis

        prefix = settings.broker_key_prefix
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            for queue in QUEUES:
                messages += [m.decode() for m in client.lrange(f"{prefix}{queue}", 0, -1)]
            messages += [v.decode() for v in client.hvals(f"{prefix}unacked")]
        finally:
            client.close()
    else:
        raise NotImplementedError(f"cannot list messages on broker {url.split(':')[0]}")
    ids = set()
    for raw in messages:
        try:
            message = json.loads(raw)
            if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
                message = message[0]
            ids.add(message["headers"]["id"])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return ids
