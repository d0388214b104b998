"""Graph-level optimizations that keep the model's precision (operator fusion)."""
