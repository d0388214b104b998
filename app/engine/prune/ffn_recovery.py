"""Recovery after FFN pruning: distil the pruned model from its parent, then write the trained
weights back into the pruned ONNX graph.

The pruned ONNX goes through onnx2torch (``pytorch.loading.onnx_to_torch``), where every
initializer is a buffer; the pruned FFN tensors become trainable parameters, everything else
stays frozen, and the student learns the parent's outputs as onnxruntime computes them (MSE
relative to the output's energy for embeddings; the KD loss for classification logits). The
trained tensors are then copied into the pruned ONNX file by initializer name: the result keeps
the graph the pruner wrote (its dynamic axes, names and opset) instead of a re-export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from app.engine.base import Context
from app.engine.errors import UnsupportedModel
from app.engine.pytorch import data as td
from app.engine.pytorch.loading import import_onnx2torch, onnx_to_torch
from app.engine.pytorch.runner import torch_device, train


def recover(ctx: Context, model: Any, output: Path, targets: list[str], data: dict[str, Any],
            fine_tune: Any, notes: list[str]) -> dict[str, Any] | None:
    """Train ``targets`` (initializer names of ``model``, already saved at ``output``) against
    the job's model on ``data``; rewrites ``output`` and returns the report's ``training``
    section, or None (with the reason in ``notes``) when the graph cannot be trained in torch."""
    import torch

    try:
        module = onnx_to_torch(output, ctx.workdir, ctx.native_step_timeout_s)
        params = trainable(module, model, targets)
    except UnsupportedModel as exc:
        notes.append(f"recovery skipped, the pruned model is returned without it: {exc.detail}")
        return None
    data = dict(data)
    data["teacher"] = td.teacher_outputs(ctx.model_path, data, ctx.device)
    classes = data["teacher"].ndim == 2 and data["teacher"].shape[1] > 1
    use_labels = classes and fine_tune.source == "labels" and data.get("labels") is not None
    if not use_labels:
        data["labels"] = None
    train_data, val_data = td.split(data, fine_tune.val_fraction, fine_tune.seed)
    device = torch_device(ctx, notes)
    torch.manual_seed(fine_tune.seed)
    training = train(ctx, module, train_data, val_data, fine_tune,
                     temperature=fine_tune.temperature,
                     alpha=fine_tune.alpha if use_labels else 1.0, device=device,
                     span=(0.1, 0.55), objective="kd" if classes else "mse")
    for name, (param, transposed) in params.items():
        tensor = next(t for t in model.graph.initializer if t.name == name)
        value = param.detach().cpu().numpy()
        value = (value.T if transposed else value).astype(numpy_helper.to_array(tensor).dtype)
        tensor.CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, str(output))
    training["trained_tensors"] = sorted(params)
    training["objective"] = ("distillation from the parent's logits" if classes else
                             "MSE to the parent's outputs, relative to their mean square")
    return training


def trainable(module: Any, model: Any, targets: list[str]) -> dict[str, tuple[Any, bool]]:
    """Make the torch tensors holding ``targets`` trainable parameters (everything else
    frozen); returns initializer name -> (parameter, stored transposed). A target is an
    onnx2torch buffer (named by order, not by initializer: found through the node that reads
    it), or the weight of the module our converters made of the node reading it: the
    ``nn.Linear`` of a MatMul by a constant (its weight is the matrix transposed), or an
    ``OnnxConstantOperand``. Each is checked by value against the ONNX tensor."""
    import torch

    import_onnx2torch()
    from onnx2torch.onnx_graph import OnnxGraph

    from app.engine.pytorch.onnx_ops import OnnxConstantOperand

    wanted = set(targets)
    reads: dict[tuple[str, int], str] = {}
    for unique, node in OnnxGraph(model.graph).nodes.items():
        for index, name in enumerate(node.input_values):
            if name in wanted:
                reads[(unique, index)] = name
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted}
    for p in module.parameters():
        p.requires_grad_(False)
    found: dict[str, tuple[Any, bool]] = {}

    def take(name: str, param: Any, transposed: bool, what: str) -> None:
        value = param.detach().numpy()
        if transposed:
            value = value.T
        if value.shape != values[name].shape or not np.allclose(value, values[name]):
            raise UnsupportedModel(f"the torch copy of {name!r} does not match the ONNX tensor")
        if name in found and found[name][0] is not param:
            raise UnsupportedModel(f"{name!r} is read by several torch {what}")
        param.requires_grad_(True)
        found[name] = (param, transposed)

    for (unique, index), name in reads.items():
        try:
            sub = module.get_submodule(unique)
        except AttributeError:
            continue
        if isinstance(sub, torch.nn.Linear) and index == 1:
            param, transposed = sub.weight, True
        elif isinstance(sub, OnnxConstantOperand):
            param, transposed = sub.weight, False
        else:
            continue
        take(name, param, transposed, "modules")
    container = getattr(module, "initializers", None)  # absent when every constant became a module's
    for node in module.graph.nodes if container is not None else []:
        if node.op != "get_attr" or not str(node.target).startswith("initializers."):
            continue
        for user in node.users:
            if user.op != "call_module" or node not in user.args:
                continue
            name = reads.get((str(user.target), user.args.index(node)))
            if name is None:
                continue
            attr = str(node.target).split(".", 1)[1]
            tensor = getattr(container, attr)
            if not isinstance(tensor, torch.nn.Parameter):
                delattr(container, attr)
                tensor = torch.nn.Parameter(tensor.detach().clone())
                container.register_parameter(attr, tensor)
            take(name, tensor, False, "buffers")
    missing = sorted(wanted - set(found))
    if missing:
        raise UnsupportedModel(f"the pruned tensors {missing[:5]} have no trainable torch "
                               "counterpart after onnx2torch")
    return found
