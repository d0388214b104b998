from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from app import idempotency
from app.deps import CeleryDep, SessionDep, SettingsDep, StoreDep, TenantDep
from app.jobs.service import queue_conversion
from app.artifacts import upload_fingerprint
from app.downloads import RANGE_ERROR, file_response
from app.idempotency import IdempotencyKey
from app.models import service
from app.models.lineage import lineage
from app.models.schemas import LineageOut, ModelOut
from app.pagination import Cursor, Limit, Page, paginate
from app.records import ModelRecord
from app.repository import get_owned, owned

router = APIRouter(prefix="/v1/models", tags=["models"])
ROUTE_CREATE = "POST /v1/models"

ERRORS = {
    401: {"description": "Missing or invalid API key (problem+json)."},
    404: {"description": "No such model for this tenant (problem+json)."},
}


@router.post("", status_code=201, response_model=ModelOut, responses={
    413: {"description": "Larger than `LATHE_MAX_MODEL_BYTES`."},
    415: {"description": "Not a format Lathe accepts (pickles are always refused)."},
    422: {"description": "Looks like ONNX but fails `onnx.checker`, or uses external data; a Keras model naming "
                        "a class outside the allow-list; a weights-only .h5 or a SavedModel."},
    **ERRORS,
})
def upload_model(
    tenant: TenantDep, session: SessionDep, store: StoreDep, settings: SettingsDep, celery: CeleryDep,
    file: Annotated[UploadFile, File(description="The model file, format detected by content: ONNX, or a torch.export "
                                                 "program (.pt2) or a Keras model (.keras, full-model .h5), which get an ONNX child from an "
                                                 "automatic convert.onnx job.")],
    name: Annotated[str | None, Form(max_length=255, examples=["resnet-digits"])] = None,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Upload a model. It is streamed to disk while hashed, checked, and stored by content."""
    if cached := idempotency.replay(session, tenant.id, idempotency_key, ROUTE_CREATE,
                                    lambda: upload_fingerprint(file, name), ModelRecord):
        return cached
    record = service.upload(session, store, settings, tenant, file, name)
    if record.format in ("pt2", "keras"):
        record.meta = {**record.meta, **queue_conversion(session, celery, settings, tenant, record.id)}
    idempotency.remember(session, tenant.id, idempotency_key, ROUTE_CREATE, upload_fingerprint(file, name, record.sha256),
                         201, ModelOut.model_validate(record))
    return record


@router.get("", response_model=Page[ModelOut], responses=ERRORS)
def list_models(tenant: TenantDep, session: SessionDep, cursor: Cursor = None, limit: Limit = 50) -> Page[ModelOut]:
    """Models of this tenant, newest first."""
    return paginate(session, owned(ModelRecord, tenant.id), ModelRecord.id, cursor, limit, ModelOut.model_validate)


@router.get("/{model_id}", response_model=ModelOut, responses=ERRORS)
def get_model(model_id: str, tenant: TenantDep, session: SessionDep) -> ModelRecord:
    return get_owned(session, ModelRecord, tenant.id, model_id, "model")


@router.get("/{model_id}/file", responses={
    200: {"description": "The model file, streamed; `ETag` is its sha256; `Range` is honoured.",
          "content": {"application/octet-stream": {}}},
    206: {"description": "Partial content for a `Range` request."},
    304: {"description": "`If-None-Match` matched the ETag."},
    **RANGE_ERROR, **ERRORS,
})
def download_model(model_id: str, request: Request, tenant: TenantDep, session: SessionDep, store: StoreDep) -> Response:
    record = get_owned(session, ModelRecord, tenant.id, model_id, "model")
    suffix = {"onnx": ".onnx", "pt2": ".pt2", "keras": f".{record.meta.get('keras_file', 'keras')}"}.get(record.format, "")
    filename = record.name if record.name.endswith(suffix) else f"{record.name}{suffix}"
    return file_response(request, store, record.uri, record.sha256, filename, "application/octet-stream")


@router.get("/{model_id}/lineage", response_model=LineageOut, responses=ERRORS)
def get_lineage(model_id: str, tenant: TenantDep, session: SessionDep) -> dict:
    """Ancestors (parent first, up to the upload) and the tree of descendants, each with the job that produced it."""
    return lineage(session, tenant.id, model_id)


@router.delete("/{model_id}", status_code=204, responses={409: {"description": "Jobs still use this model."}, **ERRORS})
def delete_model(model_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> Response:
    service.delete(session, store, tenant, model_id)
    return Response(status_code=204)
