"""The µP coordinate check: does every layer's activation size stay put as the model gets wider?

    check = coord_check(build, widths=[64, 128, 256, 512], loss=loss, steps=3, lr=1e-2, optimizer="adam")
    print(check.verdict())

For each width ``build(width)`` returns a freshly initialized model and its
batch; the model is probed at initialization and after each of ``steps``
optimizer steps on that batch at the fixed learning rate ``lr``, recording
every module's output RMS (Yang et al. 2022, Tensor Programs V, "coordinate
check"). Per step and module the slope of

    log RMS = slope · log width + c        (least squares over the widths)

says how the layer scales: 0 is width-stable, 0.5 grows like √width, 1 like
width. The check passes (``stable``) when every slope, at every step, is within
``tolerance`` of 0 (default 0.2: over a 16x range of widths RMS then moves by at
most 16^0.2 ≈ 1.7x, where a layer growing like √width moves 4x). A module that
outputs exactly 0 at every width has slope 0; zero at some widths only, slope
``None`` (not stable). The model itself is left out: what it returns is its last
layer's output, which has a row of its own.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import InitSpecError
from .probe import Loss, checked_loss, probe, run_model, seeded_rng

TOLERANCE = 0.2
OPTIMIZERS = ("sgd", "adam")
ParamGroups = Callable[[nn.Module, float], list[dict[str, Any]]]


@dataclass(frozen=True)
class RmsRow:
    step: int
    module: str
    type: str
    width: float
    rms: float


@dataclass(frozen=True)
class SlopeRow:
    step: int
    module: str
    type: str
    slope: float | None   # d log RMS / d log width


@dataclass(frozen=True)
class CoordCheck:
    key: str                        # what was swept (a config key such as model.width)
    widths: tuple[float, ...]
    steps: tuple[int, ...]          # 0 (at init), 1, ..., K
    rms: tuple[RmsRow, ...]
    slopes: tuple[SlopeRow, ...]
    tolerance: float

    @property
    def stable(self) -> bool:
        return all(s.slope is not None and abs(s.slope) <= self.tolerance for s in self.slopes)

    def slope(self, module: str, step: int) -> float | None:
        return next(s.slope for s in self.slopes if s.module == module and s.step == step)

    def by_type(self) -> dict[str, dict[int, float | None]]:
        """Per layer type (:func:`layer_type`) and step, the slope farthest from 0 among its layers
        (None if any is None)."""
        out: dict[str, dict[int, float | None]] = {}
        for s in self.slopes:
            at = out.setdefault(layer_type(s.module, s.type), {})
            old = at.get(s.step, 0.0)
            at[s.step] = None if s.slope is None or old is None else max(old, s.slope, key=abs)
        return out

    def layer_types(self) -> dict[str, str]:
        """Every layer's :func:`layer_type`, in forward order."""
        return {s.module: layer_type(s.module, s.type) for s in self.slopes}

    def worst(self) -> SlopeRow:
        return max(self.slopes, key=lambda s: math.inf if s.slope is None else abs(s.slope))

    def verdict(self) -> str:
        worst = self.worst()
        where = (f"{worst.module or '(model)'} ({worst.type}) "
                 f"{'undefined' if worst.slope is None else f'{worst.slope:+.2f}'} at step {worst.step}")
        if self.stable:
            return (f"verdict: width-stable: every layer's |slope| of log RMS vs log {self.key} is <= "
                    f"{self.tolerance:g} at steps {self.steps[0]}..{self.steps[-1]} (largest: {where})")
        bad = sorted({s.module for s in self.slopes if s.slope is None or abs(s.slope) > self.tolerance})
        return (f"verdict: NOT width-stable: {len(bad)} of {len({s.module for s in self.slopes})} layers have "
                f"|slope| > {self.tolerance:g} (largest: {where})")

    def to_data(self) -> dict[str, Any]:
        return {"key": self.key, "widths": list(self.widths), "steps": list(self.steps),
                "tolerance": self.tolerance, "stable": self.stable, "verdict": self.verdict(),
                "slopes": [asdict(s) for s in self.slopes], "slopes_by_type": {
                    t: {str(k): v for k, v in steps.items()} for t, steps in self.by_type().items()},
                "rms": [asdict(r) for r in self.rms]}

    def to_json(self) -> str:
        return json.dumps(self.to_data(), indent=2, allow_nan=False)

    def table(self, width: int | None = None) -> str:
        from .probe_render import coord_table
        return coord_table(self, width)

    def plot(self, path: str, subtitle: str | None = None) -> None:
        """Per-layer activation RMS against width (log-log), one panel per step, to a PNG at ``path``."""
        from .probe_render import plot_coord_check
        plot_coord_check(self, path, subtitle)


def coord_check(build: Callable[[float], tuple[nn.Module, Any]], widths: Sequence[float], loss: Loss, *,
                steps: int = 3, lr: float = 1e-2, optimizer: str = "adam", param_groups: ParamGroups | None = None,
                tolerance: float = TOLERANCE, seed: int = 0, key: str = "width") -> CoordCheck:
    """Probe ``build(w)``'s model at init and after each of ``steps`` optimizer steps, for every width ``w``.

    ``param_groups(model, lr)`` gives the optimizer's parameter groups (µP's per-layer learning rates:
    :func:`initspec.models.mup.mup_param_groups`); by default every parameter gets ``lr``.
    """
    check_settings(widths, steps, lr, optimizer)
    loss = checked_loss(loss)
    rows: list[RmsRow] = []
    for width in widths:
        model, batch = build(width)
        groups = param_groups(model, lr) if param_groups else [{"params": list(model.parameters())}]
        opt = torch.optim.SGD(groups, lr=lr) if optimizer == "sgd" else torch.optim.Adam(groups, lr=lr)
        for step in range(steps + 1):
            if step:
                with seeded_rng(model, seed + step):
                    opt.zero_grad(set_to_none=True)
                    loss(run_model(model, batch), batch).backward()
                    opt.step()
            rows += [RmsRow(step, m.name, m.type, float(width), m.rms)
                     for m in probe(model, batch, seed=seed).modules if m.name]   # the model's output is its last layer's
        del model, opt
    return CoordCheck(key, tuple(float(w) for w in widths), tuple(range(steps + 1)), tuple(rows),
                      slopes_of(rows, widths), tolerance)


def layer_type(module: str, kind: str) -> str:
    """A layer's name with its numeric indices as ``*``, and its class: ``hidden.* (Linear)`` for
    ``hidden.0`` and ``hidden.1``, ``transformer.h.*.mlp.c_fc (Linear)`` for every block's."""
    return f"{'.'.join('*' if part.isdigit() else part for part in module.split('.'))} ({kind})"


def slopes_of(rows: Sequence[RmsRow], widths: Sequence[float]) -> tuple[SlopeRow, ...]:
    """Least-squares slope of log RMS against log width, per (step, module), over the widths it was seen at."""
    series: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault((r.step, r.module, r.type), []).append((r.width, r.rms))
    out = []
    for (step, module, kind), points in series.items():
        out.append(SlopeRow(step, module, kind, log_log_slope(points) if len(points) == len(widths) else None))
    return tuple(out)


def log_log_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Slope of the least-squares line through (log x, log y); 0 when every y is 0, None when only some are
    (or any is not finite)."""
    ys = [y for _, y in points]
    if all(y == 0 for y in ys):
        return 0.0
    if not all(math.isfinite(y) and y > 0 for y in ys):
        return None
    lx = [math.log(x) for x, _ in points]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def check_settings(widths: Sequence[float], steps: int, lr: float, optimizer: str) -> None:
    if len(set(widths)) < 2 or not all(isinstance(w, (int, float)) and w > 0 for w in widths):
        raise InitSpecError("--sweep", f"a coordinate check needs at least two different positive widths "
                            f"(got {list(widths)})", "e.g. --sweep model.width=64,128,256,512")
    if steps < 0:
        raise InitSpecError("--steps", f"steps must be >= 0 (got {steps})", "e.g. --steps 3")
    if not (lr > 0 and math.isfinite(lr)):
        raise InitSpecError("--lr", f"the learning rate must be a positive number (got {lr})", "e.g. --lr 0.01")
    if optimizer not in OPTIMIZERS:
        raise InitSpecError("--optimizer", f"unknown optimizer {optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
