"""Settings from the environment (prefix ``LATHE_``), one data directory for the embedded default.

Every ``lathe`` command resolves the data directory the same way: ``--data-dir`` (which the CLI
exports as ``LATHE_DATA_DIR``), else ``LATHE_DATA_DIR``, else ``./lathe-data``. The database,
broker and artifact store default to places inside it; production overrides them with URLs.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATHE_", extra="ignore")

    data_dir: Path = Field(Path("lathe-data"), description="Holds the embedded database, broker and artifacts.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in the data dir.")
    broker_url: str | None = Field(None, description="Celery broker; default: filesystem transport in the data dir.")
    broker_key_prefix: str = Field("", description="Prefix for every Redis key the broker writes (isolates deployments sharing one Redis).")
    artifacts_dir: Path | None = Field(None, description="Content-addressed artifact folder; default: <data dir>/artifacts.")
    artifacts_url: str | None = Field(None, description="Where artifacts live: s3://BUCKET[/PREFIX] (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION; the artifacts folder then holds staging and a local cache) or file:///PATH; default: the artifacts folder.")
    s3_multipart_threshold_bytes: int = Field(64 * MiB, ge=5 * MiB, description="S3 uploads larger than this go multipart (in parts of this size).")
    gc_interval_s: float = Field(3600.0, ge=0, description="How often each worker's main process sweeps the store for unreferenced files (0: never; `lathe gc` runs one sweep).")
    gc_grace_s: float = Field(3600.0, ge=0, description="Garbage collection leaves files, blob rows and staging files younger than this (an upload may still be writing them).")
    max_model_bytes: int = Field(1024 * MiB, description="Largest model upload accepted (413 above).")
    max_dataset_bytes: int = Field(512 * MiB, description="Largest dataset upload accepted (413 above).")
    max_dataset_uncompressed_bytes: int = Field(2048 * MiB, description="Largest total size of a dataset's arrays once unpacked.")
    job_soft_time_limit_s: int = Field(3600, description="A job is told to stop after this long.")
    job_time_limit_s: int = Field(3900, description="A job's process is killed after this long.")
    worker_concurrency: int = Field(1, description="Jobs one worker process runs at once.")
    job_memory_limit_bytes: int = Field(8 * 1024 * MiB, description="A job whose process grows past this RSS is stopped and failed.")
    max_active_jobs_per_tenant: int = Field(20, description="Queued + running jobs one tenant may have (429 above).")
    max_job_attempts: int = Field(3, description="Times a job is started before a lost worker fails it for good.")
    heartbeat_interval_s: float = Field(2.0, description="How often a running job writes its heartbeat.")
    heartbeat_timeout_s: float = Field(60.0, description="A running job whose heartbeat is older than this lost its worker.")
    reaper_interval_s: float = Field(15.0, description="How often the API re-queues lost jobs and re-sends jobs the broker lost.")
    redispatch_after_s: float = Field(10.0, description="Queued jobs that outnumber the messages waiting in the broker for this long are sent again.")
    native_step_timeout_s: float = Field(300.0, gt=0, description="A native step we don't control (shape inference, converters, exporters) is killed after this long and its job fails step_timeout.")
    max_graph_nodes: int = Field(200_000, ge=1, description="An uploaded ONNX with more nodes than this (subgraphs and functions included) is refused.")
    max_subgraph_depth: int = Field(8, ge=0, description="An uploaded ONNX whose subgraphs (If/Loop/Scan bodies) nest deeper than this is refused.")
    cancel_grace_s: float = Field(10.0, description="A cancelled job that has not stopped by itself after this long is killed.")
    events_poll_s: float = Field(0.5, gt=0, le=10, description="How often an event stream or a long-poll (`?wait=`) reads its job.")
    webhook_retry_s: list[float] = Field([10, 60, 300, 1800, 7200, 28800], min_length=0, max_length=20, description="Waits between webhook delivery attempts (a JSON list): after the last one fails, the delivery is given up.")
    webhook_timeout_s: float = Field(10.0, gt=0, le=60, description="A webhook receiver that has not answered after this long counts as failed (and is retried).")
    webhook_allow_private: bool = Field(False, description="Allow webhook URLs that resolve to loopback, private or link-local addresses (tests, internal deployments).")
    export_allow_private: bool = Field(False, description="Allow exporters' destinations (export.mlflow's tracking_uri) that resolve to loopback, private or link-local addresses: an MLflow server on the internal network. Separate from webhook_allow_private.")
    webhook_poll_s: float = Field(1.0, gt=0, le=60, description="How often each worker's dispatcher looks for webhook deliveries that are due.")
    auth_cache_s: float = Field(30.0, description="How long an API process trusts a key it has checked (a revoked key lingers this long).")
    worker_nice: int = Field(10, ge=0, le=19, description="CPU niceness of worker processes: on a shared host the API stays responsive while jobs run.")
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field("text", description="json: every log line of every process is one JSON object (with request_id, job_id, tenant, technique where they apply).")

    @field_validator("webhook_retry_s", mode="before")
    @classmethod
    def _waits(cls, value: object) -> object:
        """A JSON list or comma-separated seconds, from the environment or a string argument."""
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return [float(v) for v in text.split(",") if v.strip()]
        return value

    @field_validator("artifacts_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value and not (value.startswith("file:///") or (value.startswith("s3://") and len(value) > len("s3://"))):
            raise ValueError("must be s3://BUCKET[/PREFIX] or file:///PATH")
        return value or None

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'lathe.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def artifact_root(self) -> Path:
        """The local artifacts folder: the store itself, or the S3 store's staging and cache."""
        if self.artifacts_url and self.artifacts_url.startswith("file://"):
            return Path(unquote(urlparse(self.artifacts_url).path)).resolve()
        return (self.artifacts_dir or self.resolved_data_dir / "artifacts").expanduser().resolve()

    @property
    def is_embedded(self) -> bool:
        return self.database_url is None or self.database_url.startswith("sqlite")

    def without_server_paths(self, text: str) -> str:
        """``text`` with this server's folders blanked out. Third-party messages (the ONNX
        checker's, an OSError's, a converter's) name files by absolute path; a client must never
        learn where they live."""
        folders = {self.artifact_root, self.resolved_data_dir, self.data_dir}
        for folder in sorted((str(f) for f in folders if f.is_absolute()), key=len, reverse=True):
            text = text.replace(folder, "<server>")
        return text

    def ensure_dirs(self) -> None:
        self.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        if self.celery_broker_url.startswith("filesystem"):
            for sub in ("queue", "processed", "control"):
                (self.broker_folder / sub).mkdir(parents=True, exist_ok=True)
