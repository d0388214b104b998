"""The worker's Celery app: the shared configuration plus the task module."""

from app.queue import make_celery
from app.settings import Settings

celery = make_celery(Settings())
celery.conf.include = ["workers.tasks"]
