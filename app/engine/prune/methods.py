"""Structured (channel / neuron) pruning with Torch-Pruning's dependency graph: coupled layers
(both sides of a residual add, a conv and the linear layer after a flatten) lose the same
channels, so the tensors physically shrink and the graph stays consistent.

Layers whose outputs are the model's outputs are never pruned (that would change the output
shape); the user can protect more with ``keep``.

When the whole graph cannot be pruned (channels that reach attention-head reshapes, a class
token, a concat of fixed sizes), only the groups of channels that flow through layers, norms
and element-wise ops are (a transformer's MLP width, a conv -> norm -> activation -> conv
chain), and the report's ``partial`` says which operators held the others.
"""

from __future__ import annotations

import copy
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
    (or generated) inputs: it traces the graph and, for ``taylor``, provides the gradients.
    A graph Torch-Pruning cannot prune whole is restored and pruned group by group."""
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
    ignored = [layers[n] for n in protected]
    widths = {name: tuple(m.weight.shape) for name, m in layers.items()}
    backup = copy.deepcopy(module)
    try:
        pruner = tp.pruner.MetaPruner(
            module, inputs, importance=_importance(importance), pruning_ratio=ratio,
            ignored_layers=ignored, round_to=round_to)
        if importance == "taylor":
            _taylor_gradients(module, inputs, labels)
        pruner.step()
        _check_runs(module, inputs)
        partial = None
    except TechniqueError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        _restore(module, backup)
        layers = prunable_layers(module)
        partial = _prune_plain_groups(module, inputs, ratio=ratio, importance=importance,
                                      ignored=[layers[n] for n in protected], round_to=round_to,
                                      labels=labels, why=reason)
    changed = {name for name, m in layers.items() if tuple(m.weight.shape) != widths[name]}
    out = {"protected_layers": protected, "pruned_layers": sorted(set(layers) - set(protected))}
    if partial is not None:
        out.update(pruned_layers=sorted(changed), partial=partial)
    return out


# What a pruned channel may pass through in the fallback: layers, norms, element-wise ops.
_PLAIN = ("CONV", "DEPTHWISE_CONV", "LINEAR", "BN", "LN", "GN", "IN", "PRELU", "ELEMENTWISE")


def _prune_plain_groups(module: Any, inputs: tuple, *, ratio: float, importance: str,
                        ignored: list, round_to: int | None, labels: Any, why: str) -> str:
    """Prune only the groups whose channels reach no reshape, concat, split, slice, expand or
    free parameter (the inner width of an MLP block, conv -> norm -> activation -> conv), the
    ones a graph with shape constants (attention heads, channel shuffles, class tokens) cannot
    break. Returns what the report says about it; raises UnsupportedModel when none is left."""
    try:
        done, blocked = _prune_groups(module, inputs, ratio, importance, ignored, round_to, labels)
        if done:
            _check_runs(module, inputs)
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning's own failures, as above
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UnsupportedModel(
            f"Torch-Pruning cannot prune this graph: {why}; pruning only the plain groups "
            f"also fails ({reason}). prune.unstructured or the quantize techniques work on "
            "this model") from None
    module.zero_grad(set_to_none=True)
    blockers = ", ".join(f"{k.lower()} ({n})" for k, n in sorted(blocked.items(), key=lambda kv: -kv[1]))
    if not done:
        raise UnsupportedModel(
            f"Torch-Pruning cannot prune this graph: {why}. No layer's channels are free of "
            f"operators that fix a shape (blocking: {blockers or 'none found'}); structured "
            "pruning needs channels that flow through convolutions, linear layers, norms and "
            "element-wise ops. prune.unstructured or the quantize techniques work on this model")
    return (f"{done} groups of channels pruned; the others reach operators that fix a shape "
            f"({blockers}), so their widths are kept")


def _prune_groups(module: Any, inputs: tuple, ratio: float, importance: str, ignored: list,
                  round_to: int | None, labels: Any) -> tuple[int, dict[str, int]]:
    """Prune the plain groups; returns how many, and the operators that blocked the others."""
    import torch
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(module, example_inputs=inputs)
    if importance == "taylor":
        _taylor_gradients(module, inputs, labels)
    scorer = _importance(importance)
    blocked: dict[str, int] = {}
    done = 0
    for group in graph.get_all_groups(ignored_layers=ignored,
                                      root_module_types=(torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
        kinds = {_kind(node) for item in group.items for node in (item.dep.source, item.dep.target)}
        if not kinds <= set(_PLAIN):
            for kind in kinds - set(_PLAIN):
                blocked[kind] = blocked.get(kind, 0) + 1
            continue
        total = len(group[0].idxs)
        keep = max(1, round((1 - ratio) * total))
        if round_to:
            keep = min(total, max(round_to, round(keep / round_to) * round_to))
        scores = scorer(group)
        if scores is None or keep >= total:
            continue
        group.prune(torch.argsort(scores)[:total - keep].tolist())
        done += 1
    return done, blocked


def _kind(node: Any) -> str:
    """The node's operator type; counted as element-wise: a free parameter with one channel
    axis (a bias or a norm's scale kept outside its layer), and the view a linear layer applied
    to a 3-D input makes before its matrix product (it keeps the last axis)."""
    kind = node.type.name
    if kind == "PARAMETER" and sum(n > 1 for n in node.module.shape) == 1:
        return "ELEMENTWISE"
    if kind == "RESHAPE" and node.outputs and all(
            o.grad_fn is not None and o.grad_fn.name().startswith(("MmBackward", "AddmmBackward"))
            for o in node.outputs):
        return "ELEMENTWISE"
    return kind


def _taylor_gradients(module: Any, inputs: tuple, labels: Any) -> None:
    """Taylor importance = |weight x gradient|: one backward pass of the task loss, on the
    labels when there are some, else on the model's own decisions."""
    import torch

    module.zero_grad()
    out = module(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    target = labels if labels is not None else out.detach().argmax(1)
    torch.nn.functional.cross_entropy(out, target).backward()


def _check_runs(module: Any, inputs: tuple) -> None:
    import torch

    module.zero_grad(set_to_none=True)
    with torch.no_grad():
        module.eval()(*inputs)


def _restore(module: Any, backup: Any) -> None:
    """Put ``backup``'s submodules, parameters and buffers back into ``module`` (a failed
    pruning leaves some layers shrunk; the caller holds ``module`` itself)."""
    for key in ("_modules", "_parameters", "_buffers"):
        module.__dict__[key] = backup.__dict__[key]
