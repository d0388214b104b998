from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from app.datasets import service
from app.datasets.schemas import DatasetOut
from app import idempotency
from app.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from app.artifacts import upload_fingerprint
from app.downloads import RANGE_ERROR, file_response
from app.idempotency import IdempotencyKey
from app.pagination import Cursor, Limit, Page, paginate
from app.records import DatasetRecord
from app.repository import get_owned, owned

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
ROUTE_CREATE = "POST /v1/datasets"

ERRORS = {
    401: {"description": "Missing or invalid API key (problem+json)."},
    404: {"description": "No such dataset for this tenant (problem+json)."},
}


@router.post("", status_code=201, response_model=DatasetOut, responses={
    413: {"description": "Larger than `LATHE_MAX_DATASET_BYTES`."},
    415: {"description": "Not an .npz file."},
    422: {"description": "Non-numeric arrays, pickled objects, mismatched first dimensions, or too large unpacked."},
    **ERRORS,
})
def upload_dataset(
    tenant: TenantDep, session: SessionDep, store: StoreDep, settings: SettingsDep,
    file: Annotated[UploadFile, File(description="An .npz whose arrays are named after the model's inputs, plus an optional `labels` array.")],
    name: Annotated[str | None, Form(max_length=255, examples=["digits-val"])] = None,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Upload a dataset for calibration, evaluation or benchmarking. Only array headers are read to validate it."""
    if cached := idempotency.replay(session, tenant.id, idempotency_key, ROUTE_CREATE,
                                    lambda: upload_fingerprint(file, name), DatasetRecord):
        return cached
    record = service.upload(session, store, settings, tenant, file, name)
    idempotency.remember(session, tenant.id, idempotency_key, ROUTE_CREATE, upload_fingerprint(file, name, record.sha256),
                         201, DatasetOut.model_validate(record))
    return record


@router.get("", response_model=Page[DatasetOut], responses=ERRORS)
def list_datasets(tenant: TenantDep, session: SessionDep, cursor: Cursor = None, limit: Limit = 50) -> Page[DatasetOut]:
    """Datasets of this tenant, newest first."""
    return paginate(session, owned(DatasetRecord, tenant.id), DatasetRecord.id, cursor, limit, DatasetOut.model_validate)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=ERRORS)
def get_dataset(dataset_id: str, tenant: TenantDep, session: SessionDep) -> DatasetRecord:
    return get_owned(session, DatasetRecord, tenant.id, dataset_id, "dataset")


@router.get("/{dataset_id}/file", responses={
    200: {"description": "The .npz file, streamed; `ETag` is its sha256.", "content": {"application/octet-stream": {}}},
    **RANGE_ERROR, **ERRORS,
})
def download_dataset(dataset_id: str, request: Request, tenant: TenantDep, session: SessionDep, store: StoreDep) -> Response:
    record = get_owned(session, DatasetRecord, tenant.id, dataset_id, "dataset")
    filename = record.name if record.name.endswith(".npz") else f"{record.name}.npz"
    return file_response(request, store, record.uri, record.sha256, filename, "application/octet-stream")


@router.delete("/{dataset_id}", status_code=204, responses={409: {"description": "Jobs still use this dataset."}, **ERRORS})
def delete_dataset(dataset_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> Response:
    service.delete(session, store, tenant, dataset_id)
    return Response(status_code=204)
