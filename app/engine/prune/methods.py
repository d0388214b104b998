"""Structured (channel / neuron) pruning with Torch-Pruning's dependency graph: coupled layers
(both sides of a residual add, a conv and the linear layer after a flatten) lose the same
channels, so the tensors physically shrink and the graph stays consistent.

Layers whose outputs are the model's outputs are never pruned (that would change the output
shape); the user can protect more with ``keep``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.engine.errors import InvalidParams, TechniqueError, UnsupportedModel


def prunable_layers(module: Any) -> dict[str, Any]:
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    return {name: m for name, m in module.named_modules() if isinstance(m, kinds)}


def output_layers(module: Any) -> set[str]:
    """Conv/linear layers whose output reaches a graph output through parameter-free nodes
    only (activations, reshapes, adds...): the layers that set the output shape."""
    import torch.fx

    layers = prunable_layers(module)
    if not isinstance(module, torch.fx.GraphModule):  # not traced: assume the last layer
        return {list(layers)[-1]} if layers else set()
    out = next(n for n in module.graph.nodes if n.op == "output")
    found, seen, todo = set(), set(), list(out.all_input_nodes)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and node.target in layers:
            found.add(str(node.target))
            continue
        todo.extend(node.all_input_nodes)
    return found


def _importance(kind: str) -> Any:
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=1 if kind == "l1" else 2)


def structured_prune(module: Any, sample: Sequence[Any], *, ratio: float, importance: str,
                     keep: Sequence[str] = (), round_to: int | None = None,
                     labels: Any = None) -> dict[str, Any]:
    """Prune ``module`` in place; returns what was kept and why. ``sample`` is a batch of real
    (or generated) inputs: it traces the graph and, for ``taylor``, provides the gradients."""
    import torch
    import torch_pruning as tp

    layers = prunable_layers(module)
    if not layers:
        raise UnsupportedModel("the model has no convolution or linear layer to prune")
    unknown = sorted(set(keep) - set(layers))
    if unknown:
        raise InvalidParams(f"keep_layers {unknown} are not prunable layers of this model; its "
                            f"layers are {sorted(layers)[:40]}")
    protected = sorted(output_layers(module) | set(keep))
    inputs = tuple(sample)
    try:
        pruner = tp.pruner.MetaPruner(
            module, inputs, importance=_importance(importance), pruning_ratio=ratio,
            ignored_layers=[layers[n] for n in protected], round_to=round_to)
        if importance == "taylor":
            # Taylor importance = |weight x gradient|: one backward pass of the task loss, on
            # the labels when there are some, else on the model's own decisions.
            module.zero_grad()
            out = module(*inputs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            target = labels if labels is not None else out.detach().argmax(1)
            torch.nn.functional.cross_entropy(out, target).backward()
        pruner.step()
        module.zero_grad(set_to_none=True)
        with torch.no_grad():
            module.eval()(*inputs)
    except TechniqueError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise UnsupportedModel(
            f"Torch-Pruning cannot prune this graph: {reason}. Pruning needs a graph whose "
            "channel dependencies it can trace (convolutions, linear layers, element-wise ops, "
            "pooling, flatten); fixed-shape Reshape nodes and custom ops block it") from None
    return {"protected_layers": protected, "pruned_layers": sorted(set(layers) - set(protected))}
