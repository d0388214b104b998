from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from app.deps import TenantDep
from app.engine.catalog import all_techniques

router = APIRouter(prefix="/v1/techniques", tags=["techniques"])


class TechniqueOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "quantize.dynamic", "description": "ONNX Runtime dynamic INT8 quantization...",
        "params_schema": {"type": "object", "properties": {"per_channel": {"type": "boolean", "default": False}}},
        "devices": ["cpu", "gpu"], "needs_dataset": False, "produces_model": True,
    }]})

    name: str
    description: str
    params_schema: dict[str, Any]
    devices: list[str]
    needs_dataset: bool
    produces_model: bool


class TechniqueList(BaseModel):
    items: list[TechniqueOut]
    next_cursor: str | None = None


@router.get("", response_model=TechniqueList, responses={401: {"description": "Missing or invalid API key."}})
def list_techniques(tenant: TenantDep) -> TechniqueList:
    """Every registered technique with the JSON Schema its `params` are validated against."""
    return TechniqueList(items=[
        TechniqueOut(name=name, description=t.description, params_schema=t.Params.model_json_schema(),
                     devices=list(t.devices), needs_dataset=t.needs_dataset, produces_model=t.produces_model)
        for name, t in sorted(all_techniques().items())
    ])
