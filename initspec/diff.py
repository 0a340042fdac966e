"""Compare two initializations tensor by tensor: ``initspec.diff(a, b) -> DiffReport``.

    report = initspec.diff(model, "seed.safetensors")
    print(report.explain())          # the table, agreeing tensors collapsed by name template
    assert report.ok                 # every tensor identical, the same constant or the same distribution

Each side is an ``nn.Module`` (every parameter and buffer under its canonical
name; names of one tensor object are tied) or a safetensors file (its tensors,
plus the aliases a seed checkpoint records in its metadata as ties). How a
verdict is reached, with its test, sample size and thresholds, is in
:mod:`initspec.compare`.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch
from torch import nn

from .compare import DIFFERS, SAMPLE, Comparison, Measured, SampleKey, judge, measure, summarize
from .diff_report import ONLY_IN_A, ONLY_IN_B, DiffReport, TensorDiff
from .errors import InitSpecError, StepArgError
from .execute import default_threads
from .export import ALIASES_KEY, read_metadata
from .sharding import is_dtensor, is_meta
from .sources import header
from .tree import walk


@dataclass(frozen=True)
class Side:
    """One side of a diff: every name, the first name of its tie group, and how to read a group's values."""

    label: str
    heads: dict[str, str]               # name -> first name of the names sharing its tensor (itself if untied)
    read: Callable[[str], torch.Tensor]

    @functools.cached_property
    def tied(self) -> dict[str, list[str]]:
        """First name -> every name of its tensor."""
        out: dict[str, list[str]] = {}
        for name, head in self.heads.items():
            out.setdefault(head, []).append(name)
        return out


def diff(a: Any, b: Any, *, labels: tuple[str, str] = ("a", "b"), sample: int = SAMPLE) -> DiffReport:
    """Compare initialization ``a`` with ``b``, tensor by tensor.

    ``a`` and ``b`` are each an ``nn.Module`` or a path to a safetensors file. Every tensor gets
    a verdict: ``identical`` (same shape, dtype and bits), ``same constant``, ``same distribution``
    (a two-sample Kolmogorov-Smirnov test on up to ``sample`` values per side, p >= 1e-6, plus std,
    mean and zero fraction within 5 standard errors and no tail beyond the other side's range),
    or ``differs`` with the reason ("std 0.0300 vs 0.0200 ...", "bounded at ±0.0400 vs unbounded",
    "constant 1 vs 0"). Names on one side only are rows ``only in a`` / ``only in b``; a tie one
    side has and the other lacks makes its rows differ. Sample positions are seeded per side (and
    computed once per tensor size), so the same inputs give the same report. ``labels`` name the
    sides in the table.
    """
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 2:
        raise InitSpecError("sample", f"sample must be an integer >= 2, got {sample!r}",
                            f"use the default ({SAMPLE}) or another count of values per side")
    with contextlib.ExitStack() as files:
        side_a = open_side(a, "a", labels[0], files)
        side_b = open_side(b, "b", labels[1], files)
        positions: dict[SampleKey, torch.Tensor] = {}
        groups = _groups(side_a, side_b)
        found = [_measure(side_a, side_b, names, sample, positions) for names in groups]
    # judging sorts and tests the samples: small single-threaded torch ops that release the GIL, so
    # it runs on as many threads as torch uses for one op (once the big passes are done with the cores)
    with ThreadPoolExecutor(max_workers=default_threads()) as judges:
        judged = [judges.submit(judge, m) if isinstance(m, Measured) else m for m in found]
        rows = [m if isinstance(m, TensorDiff) else _row(side_a, side_b, names, m.result())
                for names, m in zip(groups, judged)]
    return DiffReport((labels[0], labels[1]), tuple(rows), sample)


def open_side(obj: Any, arg: str, label: str, files: contextlib.ExitStack) -> Side:
    """Side ``arg`` ("a" or "b") of a diff; errors name it (and its label when that differs)."""
    where = arg if label == arg else f"{arg} ({label})"
    if isinstance(obj, nn.Module):
        side = _model_side(obj, where, label)
        empty = "the model has no parameters or buffers"
    elif isinstance(obj, (str, os.PathLike)):
        side = _file_side(Path(obj), where, label, files)
        empty = f"{str(obj)!r} holds no tensors"
    else:
        raise InitSpecError(where, f"expected a torch.nn.Module or a safetensors path, got {type(obj).__name__}",
                            "pass a model, or the path of a file that initspec apply --out wrote")
    if not side.heads:
        raise InitSpecError(where, f"{empty}: there is nothing to compare",
                            "pass the model itself (built, with its layers) or a safetensors file holding tensors")
    return side


def _model_side(model: nn.Module, where: str, label: str) -> Side:
    heads: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    first: dict[torch.Tensor, str] = {}      # keyed by the tensor object: its names are tied
    for slot in walk(model).tensors:
        head = first.setdefault(slot.tensor, slot.name)
        heads.setdefault(slot.name, head)
        tensors.setdefault(head, slot.tensor)
    on_meta = [name for name, t in tensors.items() if is_meta(t)]
    if on_meta:
        raise InitSpecError(where, f"{len(on_meta)} tensor(s) are on the meta device ({on_meta[0]!r} ...): "
                            "there are no values to compare",
                            "initialize the model first (initspec.build, or initspec.apply with device=)")

    def read(name: str) -> torch.Tensor:
        tensor = tensors[name]
        return (tensor.full_tensor() if is_dtensor(tensor) else tensor).detach()

    return Side(label, heads, read)


def _file_side(path: Path, where: str, label: str, files: contextlib.ExitStack) -> Side:
    from safetensors import safe_open
    if not path.is_file():
        raise InitSpecError(where, f"{str(path)!r} is not a file" if path.exists() else f"{str(path)!r} does not exist",
                            "check the path (a safetensors file, e.g. from initspec apply --out seed.safetensors)")
    try:
        keys = list(header(str(path), "safetensors"))
        aliases = read_metadata(path).get(ALIASES_KEY, {})
    except StepArgError as exc:
        raise InitSpecError(where, f"{str(path)!r} is not a readable safetensors file ({exc.what})",
                            "give a safetensors file (initspec apply --out FILE.safetensors writes one) "
                            "or a model") from None
    except ValueError as exc:   # metadata that is not JSON
        raise InitSpecError(where, f"{str(path)!r} has unreadable initspec metadata: {exc}",
                            "re-save it with initspec apply --out or initspec.save_checkpoint") from None
    heads = {key: key for key in keys}
    for name, others in (aliases.items() if isinstance(aliases, dict) else ()):
        if name in heads:
            for alias in others:
                heads.setdefault(alias, name)
    handle = files.enter_context(safe_open(str(path), framework="pt"))
    return Side(label, heads, handle.get_tensor)


def _groups(a: Side, b: Side) -> list[list[str]]:
    """Names that share a tensor on both sides (the same first name on each side, or absent from
    it), in the order of side a and then of side b; each group is compared once."""
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    for name in [*a.heads, *(n for n in b.heads if n not in a.heads)]:
        groups.setdefault((a.heads.get(name), b.heads.get(name)), []).append(name)
    return list(groups.values())


def _measure(a: Side, b: Side, names: list[str], sample: int,
             positions: dict[SampleKey, torch.Tensor]) -> TensorDiff | Measured:
    """The passes over whole tensors for one group of names: its row when one side lacks it, else
    what :func:`initspec.compare.measure` found (sample positions cached in ``positions``)."""
    name, aliases = names[0], tuple(names[1:])
    head_a, head_b = a.heads.get(name), b.heads.get(name)
    if head_b is None:
        return TensorDiff(name, ONLY_IN_A, f"not in {b.label}", summarize(a.read(head_a)), None, aliases)
    if head_a is None:
        return TensorDiff(name, ONLY_IN_B, f"not in {a.label}", None, summarize(b.read(head_b)), aliases)
    return measure(a.read(head_a), b.read(head_b), sample=sample, positions=positions)


def _row(a: Side, b: Side, names: list[str], result: Comparison) -> TensorDiff:
    name, aliases = names[0], tuple(names[1:])
    tie = _tie_difference(a, b, names)
    verdict, reason = result.verdict, result.reason
    if tie:
        verdict, reason = DIFFERS, tie + (f"; values: {reason or verdict}" if verdict != DIFFERS else f"; {reason}")
    return TensorDiff(name, verdict, reason, result.a, result.b, aliases, tie, result.ks, result.samples)


def _tie_difference(a: Side, b: Side, names: list[str]) -> str:
    """'tied to X in a, not in b' for the names both sides hold that share this group's tensor on one
    side only."""
    group = set(names)
    tied_a = [n for n in a.tied[a.heads[names[0]]] if n in b.heads and n not in group]
    tied_b = [n for n in b.tied[b.heads[names[0]]] if n in a.heads and n not in group]
    parts = []
    if tied_a:
        parts.append(f"tied to {', '.join(tied_a)} in {a.label}, not in {b.label}")
    if tied_b:
        parts.append(f"tied to {', '.join(tied_b)} in {b.label}, not in {a.label}")
    return "; ".join(parts)
