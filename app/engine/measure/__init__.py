"""Measurement: latency and memory, fidelity, accuracy; the benchmark, compare and evaluate
techniques."""
