"""Built-in techniques. Importing this package registers each one (``@register``).

Keep these imports light: the API imports this package to list techniques and validate
params, so technique modules import only pydantic/stdlib-level code at module top.
"""

from app.engine.techniques import (  # noqa: F401
    benchmark,
    evaluate,
    quantize_auto,
    quantize_dynamic,
    quantize_fp16,
    quantize_int4,
    quantize_static,
)
