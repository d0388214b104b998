"""Pruning: structured (channels removed, tensors shrink) and unstructured (sparsity, reported
as what it is); the methods shared by both and by distill's student."""
