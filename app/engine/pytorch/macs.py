"""Parameter and multiply-accumulate counts of a torch module, per sample.

MACs are counted with forward hooks on the layers that dominate compute (convolutions and
linear layers; onnx2torch turns Conv/Gemm into exactly these), at batch 1. Element-wise ops,
pooling and activations are left out, as is usual for MAC figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def count_parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module: Any, sample: Sequence[Any]) -> int:
    """MACs for one sample: ``sample`` is a batch, only its first item is run."""
    import torch

    conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    total = 0

    def on_conv(layer: Any, _inputs: Any, output: Any) -> None:
        nonlocal total
        kernel = 1
        for k in layer.kernel_size:
            kernel *= int(k)
        total += output[0].numel() * (layer.in_channels // layer.groups) * kernel

    def on_linear(layer: Any, _inputs: Any, output: Any) -> None:
        nonlocal total
        total += (output.numel() // output.shape[0] if output.dim() > 1 else output.numel()) \
            * layer.in_features

    hooks = []
    for layer in module.modules():
        if isinstance(layer, conv):
            hooks.append(layer.register_forward_hook(on_conv))
        elif isinstance(layer, torch.nn.Linear):
            hooks.append(layer.register_forward_hook(on_linear))
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(*[t[:1] for t in sample])
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    return int(total)


def layer_shapes(module: Any) -> dict[str, list[int]]:
    """Weight shape of every conv/linear layer, by module name (what pruning changed)."""
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    return {name: list(layer.weight.shape) for name, layer in module.named_modules()
            if isinstance(layer, kinds)}
