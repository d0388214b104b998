"""Built-in techniques. Importing this package registers each one (``@register``).

Keep these imports light: the API imports this package to list techniques and validate
params, so technique modules import only pydantic/stdlib-level code at module top.
"""

from app.engine.techniques import (  # noqa: F401
    benchmark,
    compare,
    evaluate,
    quantize_auto,
    quantize_dynamic,
    quantize_fp16,
    quantize_int4,
    quantize_static,
)

# Torch techniques (torch, onnx2torch and torch_pruning are imported inside their run()).
from app.engine.techniques import (  # noqa: F401,E402
    convert_onnx,
    distill,
    prune_structured,
    prune_unstructured,
)
