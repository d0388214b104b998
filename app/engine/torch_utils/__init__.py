"""Torch helpers shared by the torch techniques (convert.onnx, prune.*, distill).

Every module here imports torch, onnx2torch and torch_pruning inside functions only: technique
modules import these helpers at top level and the API imports technique modules to list them.
"""
