"""The optimization engine: a pure library (no FastAPI, SQLAlchemy or Celery).

Top level, what every technique shares: ``errors`` (the error vocabulary), ``base`` (Params,
Context, Result, Technique, ``@register``), ``params`` (measurement params), ``catalog`` (finds
the techniques). Each capability is a subpackage:

    runtime/   onnxruntime sessions, model inspection, generated inputs, environment,
               .pt2 archive checks, bounded and confined child processes
    data/      datasets (.npz) and feeds
    measure/   latency, fidelity, accuracy; techniques benchmark, compare, evaluate
    quantize/  ort recipes, calibration, low-bit, exclusions, analysis, report, sensitivity,
               search; techniques quantize.dynamic/static/fp16/int4/auto
    pytorch/   loading, export, MACs, training loop, DDP; techniques distill, convert.onnx
    prune/     pruning methods; techniques prune.structured/unstructured

Imports run one way: catalog → techniques → capability helpers → data → runtime → params →
base → errors (``.importlinter``, checked by tests/test_architecture.py).
"""
