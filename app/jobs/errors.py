"""Every ``job.error.type`` Lathe writes: the engine's (app.engine.errors) and the service's own.

One enum, shown in the OpenAPI schema of ``JobError``, so a client can switch on the type. Its
values are snake_case, like the problem+json types (``urn:lathe:problem:not_found``): one casing
for every error identifier the API returns, the one its validation errors (pydantic's
``missing``, ``extra_forbidden``) already use. A value, once written to a job row, is never
renamed or removed: rows outlive releases.
"""

from __future__ import annotations

from enum import StrEnum

from app.engine.errors import TechniqueError


class JobErrorType(StrEnum):
    # raised by techniques (app.engine.errors)
    TECHNIQUE_ERROR = "technique_error"
    UNSUPPORTED_MODEL = "unsupported_model"
    NOT_APPLICABLE = "not_applicable"
    DATASET_MISMATCH = "dataset_mismatch"
    INVALID_PARAMS = "invalid_params"
    INFERENCE_FAILED = "inference_failed"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    TOLERANCE_NOT_MET = "tolerance_not_met"
    STEP_TIMEOUT = "step_timeout"
    EXPORT_FAILED = "export_failed"
    EXPORT_UNREACHABLE = "export_unreachable"
    EXPORT_REJECTED = "export_rejected"
    ADDRESS_REFUSED = "address_refused"
    # the service's own: limits, lost workers, jobs that can no longer be loaded, bugs
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    WORKER_LOST = "worker_lost"
    MODEL_DELETED = "model_deleted"
    ARTIFACT_MISSING = "artifact_missing"
    INVALID_STORED_PARAMS = "invalid_stored_params"
    INTERNAL_ERROR = "internal_error"


# Raised by the worker while loading a job: the job fails for good, like on a TechniqueError.

class ModelDeleted(TechniqueError):
    type = JobErrorType.MODEL_DELETED


class ArtifactMissing(TechniqueError):
    type = JobErrorType.ARTIFACT_MISSING


class InvalidStoredParams(TechniqueError):
    type = JobErrorType.INVALID_STORED_PARAMS
