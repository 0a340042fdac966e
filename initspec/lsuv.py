"""LSUV, layer-sequential unit-variance initialization (Mishkin & Matas 2016, "All you need is a good init").

    init: [orthogonal, {name: lsuv, target_std: 1.0, tol: 0.02, max_iter: 10}]

A data-dependent step: once every tensor is filled, the model runs on the
caller's batch (``initspec.apply(model, spec, data=batch)``). Going layer by
layer in forward order, each selected weight's module gets its bias zeroed,
then its weight is scaled by ``target_std / std(output)`` until the module's
output std is within ``tol`` of ``target_std`` (at most ``max_iter`` times).

Under FSDP2 every rank runs its own batch and the output statistics (sum,
sum of squares, count) are all-reduced, so every rank applies the same scale
factors; with the same batch on every rank the result equals one process's up
to the rounding of that float64 sum (bitwise on 2 ranks, tested; measured bitwise in the weights
on 1 to 4 ranks, while on 3 ranks a reported std differed in its last digit).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import InitSpecError, StepArgError
from .primitives import RNG_LOCK, Block, DataPass, DataTarget, Op, Primitive
from .probe import first_tensor, forward_order, restore_buffers, run_model, saved_buffers
from .sharding import is_dtensor, local_tensor, reshard_after_forward
from .steps import Arg, builtin_step, number
from .streams import stream_seed
from .tensor_info import TensorInfo


def _leave_values(out: torch.Tensor, op: Op, block: Block) -> None:
    """Nothing while filling: LSUV scales in its data pass."""


def output_std(model: nn.Module, batch: Any, module: nn.Module, sharded: bool) -> float:
    """The std of everything ``module`` outputs when ``model`` runs on ``batch`` (all ranks pooled when sharded)."""
    sums = torch.zeros(3, dtype=torch.float64)

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        values = first_tensor(output)
        if values is not None:
            x = local_tensor(values).detach().double()
            sums.add_(torch.stack([x.sum(), (x * x).sum(), torch.tensor(float(x.numel()), dtype=torch.float64)]))

    hook = module.register_forward_hook(record)
    try:
        run_model(model, batch)
    finally:
        hook.remove()
    if sharded:
        import torch.distributed as dist
        dist.all_reduce(sums)
        reshard_after_forward(model)
    total, squares, count = sums.tolist()
    if count == 0:
        return math.nan
    mean = total / count
    return math.sqrt(max(squares / count - mean * mean, 0.0))


@contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Dropout and other randomness in the forward passes, from a fixed seed; the global RNG untouched."""
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "lsuv", 0, 0) % (2 ** 63))
        yield


def lsuv_pass(run: DataPass) -> list[dict[str, Any]]:
    """Scale each target layer, in forward order, to the output std its op asks for. Buffers the forward
    passes update (BatchNorm's running statistics in training mode) are put back afterwards, also on error."""
    by_module = {t.module: t for t in run.targets}
    sharded = any(is_dtensor(t.module._parameters[t.attr]) for t in run.targets)
    results = []
    saved = saved_buffers(run.model)
    try:
        with torch.no_grad(), _seeded_rng(run.seed):
            order = forward_order(run.model, run.batch, list(by_module))
            missing = [t for t in run.targets if t.module not in order]
            if missing:
                raise InitSpecError(missing[0].op.origin, f"lsuv: layer {missing[0].module_name!r} (owner of "
                                    f"{missing[0].name!r}) is never called when the model runs on the batch",
                                    "select only layers the forward pass uses")
            if sharded:
                reshard_after_forward(run.model)
            for module in order:
                results.append(_scale_layer(run, by_module[module], sharded))
    finally:
        restore_buffers(saved)
    return results


def _scale_layer(run: DataPass, target: DataTarget, sharded: bool) -> dict[str, Any]:
    want, tol, max_iter = target.op["target_std"], target.op["tol"], target.op["max_iter"]
    bias = target.module._parameters.get("bias")
    if bias is not None:
        bias.zero_()                      # the paper's first step: biases zero
    weight = target.module._parameters[target.attr]
    std = before = output_std(run.model, run.batch, target.module, sharded)
    iterations = 0
    while True:
        if not math.isfinite(std) or std == 0:
            raise InitSpecError(target.op.origin, f"lsuv: layer {target.module_name!r} outputs std {std} on the batch, "
                                "so no scale can bring it to the target",
                                "check the batch and the layers before it (dead units, NaN inputs), or exclude this "
                                "layer from the rule")
        if abs(std - want) <= tol or iterations == max_iter:
            break
        weight.mul_(want / std)
        std = output_std(run.model, run.batch, target.module, sharded)
        iterations += 1
    return {"layer": target.module_name, "tensor": target.name, "std_before": before, "std_after": std,
            "iterations": iterations, "converged": abs(std - want) <= tol}


LSUV = Primitive("lsuv", _leave_values, input="values", data_pass=lsuv_pass)


@builtin_step("lsuv", target_std=number(1.0, "positive"), tol=number(0.02, "positive"), max_iter=Arg("int", 10))
def lsuv(t: TensorInfo, target_std: float, tol: float, max_iter: int) -> Op:
    """Scale w until the layer's output std on a batch is target_std ± tol (LSUV, Mishkin & Matas 2016)."""
    if max_iter < 1:
        raise StepArgError("max_iter", f"max_iter must be >= 1 (got {max_iter})", "give max_iter: 10")
    if t.ndim < 2:
        raise StepArgError("", f"lsuv scales weight matrices; {t.name!r} has shape {list(t.shape)}",
                           "restrict the rule to weights with ndim: [2, 3, 4, 5]")
    return LSUV.op(label=f"lsuv(target_std={target_std:g}, tol={tol:g})", target_std=target_std, tol=tol,
                   max_iter=max_iter)
