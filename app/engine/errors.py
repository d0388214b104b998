"""Errors a technique raises for its job to fail with advice, not a traceback.

Every error has a stable ``type`` (snake_case, stored in ``job.error.type``; the API's JobError
schema lists them): the engine's whole vocabulary is the subclasses below.
"""

from __future__ import annotations


class TechniqueError(Exception):
    """A failure the user can act on (bad model for this technique, dataset mismatch...).

    ``type`` is a short slug stored in ``job.error.type``; the message is ``job.error.detail``
    and must read as advice, not as a traceback.
    """

    def __init__(self, detail: str, type: str = "technique_error") -> None:
        super().__init__(detail)
        self.type = type
        self.detail = detail


class UnsupportedModel(TechniqueError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail, type="unsupported_model")


class DatasetMismatch(TechniqueError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail, type="dataset_mismatch")


class InvalidParams(TechniqueError):
    """Params (or a stored job's params) that don't validate. ``errors`` lists each problem as
    pydantic does (``loc``, ``msg``, ``type``); the API answers them as a 422."""

    def __init__(self, detail: str, extra: dict | None = None) -> None:
        super().__init__(detail, type="invalid_params")
        self.errors = (extra or {}).get("errors", [])
