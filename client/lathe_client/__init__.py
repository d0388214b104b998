"""Python client for the Lathe model optimization service.

    from lathe_client import Lathe
    lathe = Lathe("http://127.0.0.1:8000", api_key=KEY)      # or LATHE_URL / LATHE_API_KEY
    model = lathe.models.upload("mlp.onnx", name="mlp")
    job = lathe.jobs.submit(model.id, "quantize.dynamic", {"per_channel": True}).wait(timeout=900)
    lathe.models.download(job.output_model_id, "mlp.int8.onnx")

``AsyncLathe`` is the same with ``await``. Errors are ``LatheError`` subclasses, one per
problem+json type (``lathe_client.errors``).
"""

from lathe_client._async import AsyncJob, AsyncLathe, AsyncPager
from lathe_client._sync import Job, Lathe, Pager
from lathe_client.errors import (ChecksumMismatchError, ConflictError, ConnectionFailedError,
                                 DatabaseUnavailableError, GoneError, IdempotencyKeyReusedError, InternalServerError,
                                 InvalidDatasetError, InvalidInputError, InvalidModelError, LatheError,
                                 MethodNotAllowedError, NotFoundError, NotReadyError, PayloadTooLargeError,
                                 RangeNotSatisfiableError, TooManyRequestsError, UnauthorizedError,
                                 UnavailableError, UnexpectedResponseError, UnsupportedFormatError, ValidationError,
                                 WaitTimeoutError)
from lathe_client.types import ArraySpec, Dataset, JobError, JobState, Model, Page, Step, TensorSpec, Technique

__version__ = "0.1.0"
__all__ = [
    "Lathe", "AsyncLathe", "Job", "AsyncJob", "Pager", "AsyncPager", "Model", "Dataset", "Technique", "TensorSpec",
    "ArraySpec", "JobError", "JobState", "Step", "Page",
    "LatheError", "NotFoundError", "UnauthorizedError", "InvalidInputError", "ValidationError",
    "IdempotencyKeyReusedError", "UnsupportedFormatError", "InvalidModelError", "InvalidDatasetError",
    "PayloadTooLargeError", "ConflictError", "GoneError", "UnavailableError", "DatabaseUnavailableError",
    "NotReadyError", "TooManyRequestsError", "RangeNotSatisfiableError", "MethodNotAllowedError",
    "InternalServerError", "ConnectionFailedError", "ChecksumMismatchError", "WaitTimeoutError",
    "UnexpectedResponseError",
]
