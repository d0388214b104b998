"""Errors a technique raises for its job to fail with advice, not a traceback.

Each class fixes a stable ``type`` (stored in ``job.error.type``, snake_case like every error
type Lathe returns); the message is ``job.error.detail``. These classes are the engine's whole
vocabulary: a raise site picks a class, never a type string. The API's ``JobErrorType``
(app.jobs.errors) lists every type, these and the service's own; a test holds them in step.
"""

from __future__ import annotations

from typing import ClassVar


class TechniqueError(Exception):
    """A failure the user can act on (bad model for this technique, dataset mismatch...).

    The message must read as advice, not as a traceback."""

    type: ClassVar[str] = "technique_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @staticmethod
    def of(type: str, detail: str) -> TechniqueError:
        """The error of this ``type``, rebuilt where it crossed a process boundary as (type,
        detail): a native step's child, a data-parallel rank. The detail is kept as written
        (a subclass's own ``__init__``, which composes one, is not called)."""
        classes = [TechniqueError]
        while classes:
            cls = classes.pop()
            if cls.type == type:
                error = cls.__new__(cls)
                TechniqueError.__init__(error, detail)
                return error
            classes += cls.__subclasses__()
        raise ValueError(f"no error class has type {type!r}")


class UnsupportedModel(TechniqueError):
    type = "unsupported_model"


class NotApplicable(UnsupportedModel):
    """The technique has nothing to work on in this model (4-bit MatMul quantization of a model
    with no MatMul, say): a correct refusal, not a gap. The detail says what it looks for and
    what would help instead."""

    type = "not_applicable"


class DatasetMismatch(TechniqueError):
    type = "dataset_mismatch"


class InvalidParams(TechniqueError):
    """Params that don't validate, or validate on their own but not against this model (a layer
    or node it lacks). ``errors`` lists each problem as pydantic does (``loc``, ``msg``,
    ``type``) where known; the API answers them as a 422."""

    type = "invalid_params"

    def __init__(self, detail: str, extra: dict | None = None) -> None:
        super().__init__(detail)
        self.errors = (extra or {}).get("errors", [])


class InferenceFailed(TechniqueError):
    """onnxruntime failed to run the model (while timing or comparing outputs)."""

    type = "inference_failed"


class ProviderUnavailable(TechniqueError):
    """None of the requested execution providers exists on this worker."""

    type = "provider_unavailable"


class ToleranceNotMet(TechniqueError):
    """No candidate kept the accuracy or fidelity the params asked for."""

    type = "tolerance_not_met"


class StepTimeout(TechniqueError):
    """A native step ran past its deadline and was killed (app.engine.runtime.isolate)."""

    type = "step_timeout"

    def __init__(self, step: str, deadline_s: float, advice: str = "") -> None:
        super().__init__(
            f"{step} did not finish within its limit of {deadline_s:g} s and was stopped; the "
            "model's graph is probably too deep or too large for it (nested subgraphs, huge "
            f"node counts){'; ' + advice if advice else ''}")
        self.step, self.deadline_s = step, deadline_s


class ExportFailed(TechniqueError):
    """Sending the model to an external service (an MLflow tracking server) failed. The detail
    names the service's answer or the network error; never a credential."""

    type = "export_failed"


class ExportUnreachable(ExportFailed):
    """The service could not be reached: name not resolved, connection refused, timeout, or a
    5xx answer."""

    type = "export_unreachable"


class ExportRejected(ExportFailed):
    """The service answered with a 4xx (credentials missing or refused, permission, bad
    request) or with something that is not the API Lathe speaks. ``error_code``: the
    service's own code for it, where it gave one (MLflow's RESOURCE_ALREADY_EXISTS...)."""

    type = "export_rejected"

    def __init__(self, detail: str, *, error_code: str | None = None) -> None:
        super().__init__(detail)
        self.error_code = error_code


class AddressRefused(ExportFailed):
    """A user-given URL is not one the workers may reach (loopback, private, link-local or
    reserved addresses, unless the operator allows them)."""

    type = "address_refused"
