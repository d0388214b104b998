"""Quantization: onnxruntime recipes and calibration, low-bit, node exclusions, analysis,
reports, sensitivity and search; the dynamic, static, fp16, int4 and auto techniques."""
