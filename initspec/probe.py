"""Probe a model on one batch: what every module outputs, and the gradient of every parameter.

    result = initspec.probe(model, batch, loss=NextTokenLoss())
    print(result.table())

For each module the forward pass calls, in the order its calls finish
(children before their parent, as :func:`forward_order` sees them), the probe
pools everything the module outputs over all its calls (a ReLU module used
twice counts both calls) and reports

    mean, std = sqrt(mean((x - mean)²)), RMS = sqrt(mean(x²)) = sqrt(std² + mean²),
    zeros = fraction of values exactly 0 (dead ReLUs).

With ``loss``, a callable ``loss(output, batch) -> scalar tensor`` (``output``
is what ``model(batch)`` returned), it also runs the backward pass and reports,
for every parameter, the std of its gradient and ``‖grad‖ / ‖weight‖``
(Frobenius norms; ``None`` when the parameter gets no gradient or its norm is 0).

The model is left as it was: every hook is removed (also when the forward pass
raises), buffers (BatchNorm's running statistics) are put back, ``.grad`` is
not touched (the gradients come from :func:`torch.autograd.grad`), the
``training`` flag is not changed (the pass runs in the mode the model is in),
and the global RNG is forked: dropout draws from ``seed``. Without a loss the
pass runs under :func:`torch.no_grad`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import InitSpecError
from .primitives import RNG_LOCK

Loss = Callable[[Any, Any], torch.Tensor]


# ------------------------------------------------------------------ running a model on a batch

def run_model(model: nn.Module, batch: Any) -> Any:
    """``model(batch)``; a tuple or list is passed as positional arguments, a dict as keywords."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module returned (the first one of a tuple, a list or a dict)."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return next((t for t in (first_tensor(i) for i in items) if t is not None), None)


def forward_order(model: nn.Module, batch: Any, modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` in the order a forward pass first calls them (never-called ones left out)."""
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m) if m not in seen else None) for m in modules]
    try:
        run_model(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


# ------------------------------------------------------------------ results

@dataclass(frozen=True)
class ModuleStats:
    """What one module output on the batch, pooled over all its calls."""

    index: int            # position in forward order (when its first call finished)
    name: str             # "" for the model itself
    type: str             # class name
    calls: int
    numel: int            # values pooled
    mean: float
    std: float
    rms: float
    zero_fraction: float


@dataclass(frozen=True)
class ParamStats:
    """The gradient of one parameter (``None``: no gradient reached it)."""

    name: str
    module: str
    grad_std: float | None
    grad_to_weight: float | None   # ‖grad‖ / ‖weight‖; None also when ‖weight‖ = 0


@dataclass(frozen=True)
class ProbeResult:
    modules: tuple[ModuleStats, ...]
    params: tuple[ParamStats, ...]   # empty without a loss
    loss: float | None

    def module(self, name: str) -> ModuleStats:
        found = next((m for m in self.modules if m.name == name), None)
        if found is None:
            raise KeyError(f"no module {name!r} was called with a floating-point output")
        return found

    def param(self, name: str) -> ParamStats:
        found = next((p for p in self.params if p.name == name), None)
        if found is None:
            raise KeyError(f"no parameter {name!r} in the probe")
        return found

    def to_data(self) -> dict[str, Any]:
        return {"loss": self.loss, "modules": [asdict(m) for m in self.modules],
                "parameters": [asdict(p) for p in self.params]}

    def to_json(self) -> str:
        return json.dumps(self.to_data(), indent=2, allow_nan=False, default=str)

    def table(self, width: int | None = None) -> str:
        """A rich table: one row per module, then one row per parameter of it with its gradient."""
        from .probe_render import probe_table
        return probe_table(self, width)

    def plot(self, path: str) -> None:
        """Activation std and gradient std against depth, one line per module type, to a PNG at ``path``."""
        from .probe_render import plot_probe
        plot_probe(self, path)


# ------------------------------------------------------------------ the probe

def probe(model: nn.Module, batch: Any, *, loss: Loss | None = None, seed: int = 0) -> ProbeResult:
    """Activation statistics of every module on ``batch`` and, with ``loss``, gradient statistics of every
    parameter. ``batch`` goes to the model as in :func:`run_model`; ``loss(output, batch)`` returns a scalar."""
    names = {module: name for name, module in model.named_modules()}
    recorder = OutputRecorder()
    saved = saved_buffers(model)
    hooks = []
    try:
        for module in names:
            hooks.append(module.register_forward_hook(recorder.record))
        with seeded_rng(model, seed), torch.no_grad() if loss is None else torch.enable_grad():
            output = run_model(model, batch)
            for hook in hooks:            # backward may re-run a forward (checkpointing): not counted
                hook.remove()
            value = None if loss is None else checked_loss(loss)(output, batch)
            params = gradient_stats(model, value) if value is not None else ()
    finally:
        for hook in hooks:
            hook.remove()
        restore_buffers(saved)
    modules = recorder.stats(names)
    return ProbeResult(modules, params, None if value is None else float(value.detach()))


class OutputRecorder:
    """A forward hook that keeps, per call, a few reductions of the output (no host sync while the model runs).

    Per output x of n values: mean = sum(x) / n, var = (x - mean)·(x - mean) / n (two passes: exact
    even when |mean| >> std), and the count of non-zeros; ``torch.var_mean`` would do the same ~3x
    slower on the CPU.
    """

    def __init__(self) -> None:
        self.calls: dict[nn.Module, list[tuple[int, torch.Tensor]]] = {}   # in forward order

    def record(self, module: nn.Module, inputs: Any, output: Any) -> None:
        x = first_tensor(output)
        if x is None or not x.is_floating_point() or x.numel() == 0:
            return
        self.calls.setdefault(module, []).append((x.numel(), output_reductions(x.detach())))

    def stats(self, names: dict[nn.Module, str]) -> tuple[ModuleStats, ...]:
        """Each module's calls pooled: n = Σ nᵢ, mean = Σ nᵢ meanᵢ / n,
        var = Σ nᵢ (varᵢ + (meanᵢ - mean)²) / n (one transfer to the host for all)."""
        if not self.calls:
            return ()
        values = torch.stack([t for calls in self.calls.values() for _, t in calls]).cpu().tolist()
        rows, at = [], 0
        for index, (module, calls) in enumerate(self.calls.items()):
            parts = [(n, *values[at + i]) for i, (n, _) in enumerate(calls)]
            at += len(calls)
            n = sum(p[0] for p in parts)
            mean = sum(p[0] * p[1] for p in parts) / n
            var = sum(p[0] * (p[2] + (p[1] - mean) ** 2) for p in parts) / n
            zeros = 1 - sum(p[3] for p in parts) / n
            rows.append(ModuleStats(index, names[module], type(module).__name__, len(calls), n, mean,
                                    math.sqrt(var), math.sqrt(var + mean * mean), zeros))
        return tuple(rows)


def output_reductions(x: torch.Tensor) -> torch.Tensor:
    """[mean, var, non-zeros] of ``x`` as float64 on its device."""
    x = as_float(x)
    mean = x.mean()
    centered = (x - mean).reshape(-1)
    var = torch.dot(centered, centered) / x.numel()
    return torch.stack([mean.double(), var.double(), torch.count_nonzero(x).double()])


def gradient_stats(model: nn.Module, value: torch.Tensor) -> tuple[ParamStats, ...]:
    """std(grad) and ‖grad‖/‖w‖ of every parameter, from sum(g), g·g and w·w (one pass each):
    var = g·g / n - mean². Where that cancels (var < 1e-4 mean², then it loses more than 2 digits)
    the variance is computed again in two passes."""
    named = list(model.named_parameters())
    wanted = [(name, p) for name, p in named if p.requires_grad]
    if not value.requires_grad:
        raise InitSpecError("loss", "the loss does not depend on any parameter that requires grad",
                            "return a loss computed from the model's output")
    grads = dict(zip((name for name, _ in wanted),
                     torch.autograd.grad(value, [p for _, p in wanted], allow_unused=True)))
    flat = {name: as_float(g).reshape(-1) for name, g in grads.items() if g is not None}
    params = dict(named)
    sums = [torch.stack([g.sum().double(), torch.dot(g, g).double(), squared_norm(params[name])])
            for name, g in flat.items()]
    values = dict(zip(flat, torch.stack(sums).cpu().tolist() if sums else []))
    out = []
    for name, p in named:
        std = ratio = None
        if name in values:
            total, squares, weight_squares = values[name]
            n = p.numel()
            mean = total / n
            var = max(squares / n - mean * mean, 0.0)
            if var < 1e-4 * mean * mean:
                centered = flat[name] - flat[name].mean()
                var = float(torch.dot(centered, centered)) / n
            std = math.sqrt(var)
            ratio = math.sqrt(squares / weight_squares) if weight_squares > 0 else None
        out.append(ParamStats(name, name.rpartition(".")[0], std, ratio))
    return tuple(out)


def as_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in float32 unless it is float32 or float64 already."""
    t = t.detach()
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def squared_norm(p: torch.Tensor) -> torch.Tensor:
    w = as_float(p).reshape(-1)
    return torch.dot(w, w).double()


def checked_loss(loss: Loss, where: str = "loss") -> Loss:
    """``loss`` that raises an InitSpecError naming ``where`` unless it returns one floating-point number."""
    def run(output: Any, batch: Any) -> torch.Tensor:
        value = loss(output, batch)
        if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
            got = f"a tensor of shape {list(value.shape)} and dtype {value.dtype}" if isinstance(
                value, torch.Tensor) else f"a {type(value).__name__}"
            raise InitSpecError(where, f"the loss returned {got}, not one floating-point number",
                                "return a scalar tensor, e.g. torch.nn.functional.cross_entropy(output, targets)")
        return value.reshape(())
    return run


# ------------------------------------------------------------------ leaving the model as it was

def saved_buffers(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]]:
    """(module, name, the buffer object, a copy of its values) for every buffer (running stats, counters)."""
    return [(module, name, buffer, buffer.detach().clone())
            for module in model.modules() for name, buffer in module.named_buffers(recurse=False)
            if buffer is not None and not buffer.is_meta]


def restore_buffers(saved: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]]) -> None:
    """Each buffer object back in its module with its saved values."""
    with torch.no_grad():
        for module, name, buffer, values in saved:
            if getattr(module, name) is not buffer:
                setattr(module, name, buffer)
            buffer.copy_(values)


@contextmanager
def seeded_rng(model: nn.Module, seed: int) -> Iterator[None]:
    """Randomness in the pass (dropout) from ``seed``; the global RNG (CPU and the model's CUDA devices)
    is forked and comes back as it was."""
    cuda = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    with RNG_LOCK, torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
