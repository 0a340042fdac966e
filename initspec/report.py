"""What an apply did: the plan, plus measured statistics of every filled tensor."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .render import render_report
from .parts import TensorPart, part_region
from .results import Entry, Plan
from .sharding import Region, local_tensor, region_of
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
    """Statistics of the values this process holds of ``tensor``."""
    t = local_tensor(tensor).detach()
    if t.is_meta or t.numel() == 0 or not t.is_floating_point():
        return None
    x = t.double() if t.dtype != torch.float64 else t
    std = float(x.std()) if x.numel() > 1 else 0.0
    return Stats(t.numel(), float(x.mean()), std, float(x.min()), float(x.max()),
                 float((x == 0).sum()) / x.numel(), local=t is not tensor)


def measure_entry(tensor: torch.Tensor, entry: Entry) -> dict[str, Stats | None]:
    """Per region: the entry's name for what lies outside its parts (the whole tensor without
    parts), and ``name[start:stop]`` for each part."""
    if not entry.parts:
        return {entry.name: measure(tensor)}
    region = region_of(tensor)
    if region.local.is_meta:
        return {entry.name: None, **{f.part.key(entry.name): None for f in entry.parts}}
    outside = torch.ones(region.local.shape, dtype=torch.bool, device=region.local.device)
    out: dict[str, Stats | None] = {}
    for f in entry.parts:
        piece = part_region(region, f.part)
        out[f.part.key(entry.name)] = None if piece is None else measure(piece.local)
        mask = part_region(Region(outside, region.offset, region.global_shape), f.part)
        if mask is not None:
            mask.local.fill_(False)
    out[entry.name] = measure(region.local.detach()[outside]) if bool(outside.any()) else None
    return out


@dataclass(eq=False)
class Report:
    """Returned by :func:`initspec.apply`."""

    plan: Plan
    model: nn.Module = field(repr=False)
    seconds: float = 0.0
    data_results: tuple[dict[str, Any], ...] = ()   # what data-dependent steps measured (lsuv: per layer)
    _stats: dict[str, Stats | None] | None = field(default=None, repr=False)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.plan.warnings

    @property
    def stats(self) -> dict[str, Stats | None]:
        """Per entry name, measured now (lazily, once)."""
        if self._stats is None:
            tensors = {s.name: s.tensor for s in walk(self.model).tensors}
            self._stats = {}
            for e in self.plan.entries:
                if e.name in tensors:
                    self._stats.update(measure_entry(tensors[e.name], e))
        return self._stats

    def rule_stats(self) -> dict[str, dict[str, Any]]:
        """Per rule: pooled measured mean/std over its tensors, next to the expected std."""
        out: dict[str, dict[str, Any]] = {}
        filled = [(e.rule, self.stats.get(e.name), e.expected_std) for e in self.plan.entries]
        filled += [(f.rule, self.stats.get(f.part.key(e.name)), f.expected_std)
                   for e in self.plan.entries for f in e.parts]
        for rule, s, expected in filled:
            if rule is None or s is None:
                continue
            acc = out.setdefault(rule, {"tensors": 0, "numel": 0, "sum": 0.0, "sumsq": 0.0,
                                          "expected_std": set(), "min": math.inf, "max": -math.inf})
            acc["tensors"] += 1
            acc["numel"] += s.numel
            acc["sum"] += s.mean * s.numel
            acc["sumsq"] += (s.std ** 2 + s.mean ** 2) * s.numel
            acc["min"], acc["max"] = min(acc["min"], s.min), max(acc["max"], s.max)
            if expected is not None:
                acc["expected_std"].add(round(expected, 8))
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
            for part in entry.get("parts", ()):
                key = TensorPart(part["dim"], part["start"], part["stop"]).key(entry["name"])
                s = self.stats.get(key)
                part["stats"] = None if s is None else s.__dict__
        data["seconds"] = self.seconds
        if self.data_results:
            data["data_results"] = list(self.data_results)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def explain(self, width: int | None = None) -> str:
        return render_report(self, width=width)

    def __str__(self) -> str:
        return self.explain()
