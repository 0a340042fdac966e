"""What planning produces: the :class:`Plan` a user reads, and the :class:`Layout` the executor uses."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from .parts import TensorPart
from .primitives import Op
from .render import render_plan
from .spec import Spec
from .ties import TieGroup
from .tree import TensorSlot, Tree


class PartFill(NamedTuple):
    """A part of a tensor filled by a rule with ``part:``, on top of what fills the rest."""

    part: TensorPart
    rule: str
    ops: tuple[Op, ...]
    expected_std: float | None = None
    staged: bool = False

    @property
    def steps(self) -> str:
        return " -> ".join(str(o) for o in self.ops)


class Entry(NamedTuple):
    """One unique tensor and what happens to it."""

    name: str                  # canonical name; also the stream key
    aliases: tuple[str, ...]   # other names of the same tensor after tying
    kind: str                  # "parameter" | "buffer"
    shape: tuple[int, ...]
    dtype: str
    action: str                # "fill" | "keep" | "reset"
    rule: str | None = None
    ops: tuple[Op, ...] = ()
    tie: str | None = None
    shadowed: tuple[str, ...] = ()
    expected_std: float | None = None
    staged: bool = False       # computed into a temporary and checked before it is copied in
    parts: tuple[PartFill, ...] = ()   # then these parts, in order (a later one wins where they overlap)

    @property
    def steps(self) -> str:
        return " -> ".join(str(o) for o in self.ops)


@dataclass(frozen=True)
class RuleSummary:
    name: str
    patterns: tuple[str, ...]
    matched: int               # tensors it selects
    won: int                   # tensors it fills

    @property
    def fully_shadowed(self) -> bool:
        return self.matched > 0 and self.won == 0


@dataclass(frozen=True)
class Plan:
    """What :func:`initspec.apply` will do; printable, never tied to the model's values."""

    seed: int
    streams: str
    entries: tuple[Entry, ...]
    ties: tuple[TieGroup, ...]
    resets: tuple[str, ...]          # modules whose reset_parameters() runs first
    rules: tuple[RuleSummary, ...]
    warnings: tuple[str, ...] = ()
    spec: Spec | None = field(default=None, compare=False, repr=False)

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name or name in e.aliases:
                return e
        raise KeyError(name)

    @property
    def tie_groups(self) -> dict[str, list[str]]:
        """Group name -> [source, *targets]: put each in one ``fully_shard`` group."""
        return {g.name: [g.source, *g.targets] for g in self.ties}

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "streams": self.streams,
            "entries": [
                {"name": e.name, "aliases": list(e.aliases), "kind": e.kind, "shape": list(e.shape),
                 "dtype": e.dtype, "action": e.action, "rule": e.rule, "steps": [str(o) for o in e.ops],
                 "tie": e.tie, "shadowed": list(e.shadowed), "expected_std": e.expected_std,
                 **({"parts": [{"dim": f.part.dim, "start": f.part.start, "stop": f.part.stop, "rule": f.rule,
                                "steps": [str(o) for o in f.ops], "expected_std": f.expected_std}
                               for f in e.parts]} if e.parts else {})}
                for e in self.entries],
            "ties": [{"name": g.name, "kind": g.kind, "source": g.source, "targets": list(g.targets)}
                     for g in self.ties],
            "resets": list(self.resets),
            "rules": [{"name": r.name, "patterns": list(r.patterns), "matched": r.matched, "won": r.won,
                       "fully_shadowed": r.fully_shadowed} for r in self.rules],
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def explain(self, width: int | None = None) -> str:
        return render_plan(self, width=width)

    def __str__(self) -> str:
        return self.explain()


@dataclass(frozen=True, eq=False)
class Layout:
    """The plan's entries bound to the live model (for the executor)."""

    tree: Tree
    tensors: Mapping[str, torch.Tensor]       # entry name -> tensor (as it is before apply)
    rows: Mapping[str, tuple[int, ...]]       # entry name -> rows of tree.tensors holding it after tying
    reset_modules: tuple[nn.Module, ...]
    reset_names: tuple[str, ...]

    def slots(self, name: str) -> list[TensorSlot]:
        """Every slot that holds an entry's tensor once the ties are made."""
        return [self.tree.tensors[row] for row in self.rows[name]]

    def head(self, name: str) -> TensorSlot:
        """The slot an entry's tensor is read from and written to (the one named like the entry)."""
        slots = self.slots(name)
        return next((s for s in slots if s.name == name), slots[0])
