"""What an apply did: the plan, plus measured statistics of every filled tensor."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .render import render_report
from .results import Plan
from .sharding import local_tensor
from .tree import walk


@dataclass(frozen=True)
class Stats:
    """Measured over the values this process holds (a shard, for DTensors)."""

    numel: int
    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    local: bool = False


def measure(tensor: torch.Tensor) -> Stats | None:
    t = local_tensor(tensor).detach()
    if t.is_meta or t.numel() == 0 or not t.is_floating_point():
        return None
    x = t.double() if t.dtype != torch.float64 else t
    std = float(x.std()) if x.numel() > 1 else 0.0
    return Stats(t.numel(), float(x.mean()), std, float(x.min()), float(x.max()),
                 float((x == 0).sum()) / x.numel(), local=t is not tensor)


@dataclass(eq=False)
class Report:
    """Returned by :func:`initspec.apply`."""

    plan: Plan
    model: nn.Module = field(repr=False)
    seconds: float = 0.0
    _stats: dict[str, Stats | None] | None = field(default=None, repr=False)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.plan.warnings

    @property
    def stats(self) -> dict[str, Stats | None]:
        """Per entry name, measured now (lazily, once)."""
        if self._stats is None:
            tensors = {s.name: s.tensor for s in walk(self.model).tensors}
            self._stats = {e.name: measure(tensors[e.name]) if e.name in tensors else None
                           for e in self.plan.entries}
        return self._stats

    def rule_stats(self) -> dict[str, dict[str, Any]]:
        """Per rule: pooled measured mean/std over its tensors, next to the expected std."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.plan.entries:
            s = self.stats.get(e.name)
            if e.rule is None or s is None:
                continue
            acc = out.setdefault(e.rule, {"tensors": 0, "numel": 0, "sum": 0.0, "sumsq": 0.0,
                                          "expected_std": set(), "min": math.inf, "max": -math.inf})
            acc["tensors"] += 1
            acc["numel"] += s.numel
            acc["sum"] += s.mean * s.numel
            acc["sumsq"] += (s.std ** 2 + s.mean ** 2) * s.numel
            acc["min"], acc["max"] = min(acc["min"], s.min), max(acc["max"], s.max)
            if e.expected_std is not None:
                acc["expected_std"].add(round(e.expected_std, 8))
        for acc in out.values():
            n = acc.pop("numel")
            mean = acc.pop("sum") / n
            acc["mean"] = mean
            acc["std"] = math.sqrt(max(acc.pop("sumsq") / n - mean * mean, 0.0))
            acc["numel"] = n
            acc["expected_std"] = sorted(acc["expected_std"])
        return out

    def to_dict(self) -> dict[str, Any]:
        data = self.plan.to_dict()
        for entry in data["entries"]:
            s = self.stats.get(entry["name"])
            entry["stats"] = None if s is None else s.__dict__
        data["seconds"] = self.seconds
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def explain(self, width: int | None = None) -> str:
        return render_report(self, width=width)

    def __str__(self) -> str:
        return self.explain()
