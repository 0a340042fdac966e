"""Planning: which rule fills which tensor with which ops, before touching any value.

``make_plan`` matches rules against canonical names, expands tie groups,
evaluates every expression with the tensor's global shape and resolves every
step into primitive ops. Any mistake is reported here, all at once, as one
:class:`~initspec.errors.InitSpecError`.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import gc
import json
import math
import operator
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import torch
from torch import nn

from .catalog import STEPS, StepArgError, check_value
from .custom import resolve_fn
from .errors import Problem, raise_all
from .expr import ExprError, evaluate
from .match import PatternError, PatternSet, compile_pattern, glob_captures, nearest
from .ops import Op, expected_std, op, reads_existing, value_bounds
from .spec import ROOT, Rule, Spec, step_path
from .streams import generation_dtype
from .tensor_info import ExprNames, TensorInfo, layer_of
from .ties import TieGroup, expand_ties
from .tree import Tree, TensorSlot, is_meta, walk

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
                 "tie": e.tie, "shadowed": list(e.shadowed), "expected_std": e.expected_std}
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
        from .render import render_plan
        return render_plan(self, width=width)

    def __str__(self) -> str:
        return self.explain()


@dataclass(frozen=True, eq=False)
class Layout:
    """Internal: the plan's entries bound to the live model (for the executor)."""

    tree: Tree
    tensors: Mapping[str, torch.Tensor]       # entry name -> tensor (as it is before apply)
    slots: Mapping[str, list[TensorSlot]]     # entry name -> every slot holding it after tying
    reset_modules: tuple[nn.Module, ...]
    reset_names: tuple[str, ...]


@dataclass
class _Context:
    variables: dict
    allow_fn: tuple[str, ...]
    rules: list[tuple[str, Rule]]
    cache: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)   # rule index -> (depends on name, depends on layer)


def _units(slots, groups: list[TieGroup], tree: Tree):
    """(slot indices, tensor) per unique tensor after tying, in registration order."""
    replaced = {}
    for group in groups:
        for target, source in group.tensor_map(tree).items():
            replaced[target] = tree.by_tensor_name[source].tensor
    index: dict[int, int] = {}
    units: list[list[int]] = []
    tensors: list[torch.Tensor] = []
    for i, slot in enumerate(slots):
        tensor = replaced.get(slot.name, slot.tensor) if replaced else slot.tensor
        u = index.get(id(tensor))
        if u is None:
            index[id(tensor)] = len(units)
            units.append([i])
            tensors.append(tensor)
        else:
            units[u].append(i)
    return zip(units, tensors)


def _tie_membership(groups: list[TieGroup], tree: Tree) -> dict[str, str]:
    """Tensor name -> tie group, for the sources of every group."""
    out = {}
    for group in groups:
        for target, source in group.tensor_map(tree).items():
            out[source] = group.name
            out[target] = group.name
    return out


def make_plan(model: nn.Module, spec: Spec, allow_fn: tuple[str, ...] = ()) -> tuple[Plan, Layout]:
    """Plan ``spec`` against ``model``; raises InitSpecError listing every problem.

    ``allow_fn`` lists extra dotted prefixes ``fn:`` steps may resolve under
    (``torch.nn.init`` is always allowed); it comes from the caller, never the spec.
    """
    with _gc_paused():  # planning allocates ~10 small objects per tensor: no cyclic garbage
        return _make_plan(model, spec, allow_fn)


@contextlib.contextmanager
def _gc_paused():
    """No cyclic collection while planning; afterwards the plan's objects (all long-lived) go
    straight to the oldest generation: re-enabling alone would make the next allocation scan
    every one of them as young (0.1-0.2 s per 100k tensors)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:  # (a caller that froze objects keeps them frozen)
                gc.freeze()     # every tracked object to the permanent generation, young count reset
                gc.unfreeze()   # ... and back into the oldest one: no scan either way
            gc.enable()


def _make_plan(model: nn.Module, spec: Spec, allow_fn: tuple[str, ...]) -> tuple[Plan, Layout]:
    tree = walk(model)
    problems: list[Problem] = []
    groups, tie_problems = expand_ties(spec, tree)
    problems += tie_problems
    raise_all(problems)

    rules = list(spec.rules.items())
    columns = _columns(tree)
    slot_names = columns.names
    selection = _select(rules, tree, slot_names, problems, columns)
    raise_all(problems)

    resets: dict[str, nn.Module] = {}
    ctx = _Context(dict(spec.vars), tuple(allow_fn), rules)
    planned = (_plan_columns(tree, groups, selection, ctx, columns)
               or _plan_loop(tree, groups, selection.selected, ctx))
    entries, tensors, slots_of, uncovered = planned.entries, planned.tensors, planned.slots_of, planned.uncovered
    matched_count, won_count, failing = planned.matched, planned.won, planned.failing
    problems += planned.problems
    problems += [_for_tensors(p, names) for p, names in failing.items()]
    for r, (rule_name, rule) in enumerate(rules):
        if matched_count[r] == 0 and spec.strict and not rule.optional:
            names = slot_names
            hints = sorted({h for p in rule.match for h in nearest(p, names)})[:3]
            rooted = [p for p in rule.match if p.startswith("*.") and p[2:] in names]
            note = (f" ('{rooted[0]}' needs a dot before '{rooted[0][2:]}': a top-level name is matched by "
                    f"'{rooted[0][2:]}' or '*{rooted[0][2:]}')" if rooted else "")
            problems.append(Problem(f"{ROOT}.rules.{rule_name}.match",
                                    f"rule {rule_name!r} ({', '.join(rule.match)}) matches no "
                                    f"{'parameter or buffer' if rule.buffers else 'parameter'}"
                                    + (f"; nearest names: {', '.join(hints)}" if hints else "") + note,
                                    "fix the pattern, set optional: true on the rule, or strict: false"))

    entries, reset_names = _defaults(spec, entries, uncovered, resets, problems)
    raise_all(problems)

    plan = Plan(
        seed=spec.seed, streams=spec.streams, entries=tuple(entries), ties=tuple(groups),
        resets=tuple(reset_names),
        rules=tuple(RuleSummary(n, tuple(r.match), matched_count[i], won_count[i])
                    for i, (n, r) in enumerate(rules)),
        warnings=tuple(_warnings(tree)), spec=spec)
    layout = Layout(tree, tensors, slots_of, tuple(resets.values()), tuple(reset_names))
    return plan, layout


def _for_tensors(problem: Problem, names: list[str]) -> Problem:
    """Name the tensors a step problem occurs for (once per problem, not per tensor)."""
    if all(n in problem.what for n in names):
        return problem
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return Problem(problem.path, f"{problem.what} (for {shown})", problem.fix)


class _Planned(NamedTuple):
    """What planning found per unique tensor (both planners below give exactly the same)."""

    entries: list[Entry]
    tensors: Mapping[str, torch.Tensor]
    slots_of: Mapping[str, list[TensorSlot]]
    uncovered: list[tuple[str, TensorSlot]]   # no rule selects them
    matched: list[int]                        # per rule: tensors it selects
    won: list[int]                            # per rule: tensors it fills
    failing: dict[Problem, list[str]]         # a step problem -> the tensors it occurs for
    problems: list[Problem]                   # pipelines that read values a meta tensor does not have


def _plan_loop(tree: Tree, groups: list[TieGroup], selected: list[list[int]], ctx: _Context) -> _Planned:
    """The reference planner: one unique tensor at a time (what :func:`_plan_columns` must equal)."""
    rules, slots = ctx.rules, tree.tensors
    rule_names = [name for name, _ in rules]
    rank = [(rule.priority, r) for r, (_, rule) in enumerate(rules)]
    matched_count = [0] * len(rules)
    won_count = [0] * len(rules)
    entries: list[Entry] = []
    tensors: dict[str, torch.Tensor] = {}
    slots_of: dict[str, list[TensorSlot]] = {}
    uncovered: list[tuple[str, TensorSlot]] = []
    problems: list[Problem] = []
    failing: dict[Problem, list[str]] = {}
    dtype_names: dict[torch.dtype, str] = {}
    tie_of = _tie_membership(groups, tree)

    for members, tensor in _units(slots, groups, tree):
        head = slots[members[0]]
        if len(members) == 1:
            candidates, tied_candidates, aliases = selected[members[0]], (), ()
        else:
            own = [i for i in members if slots[i].tensor is tensor]
            head = slots[own[0]]
            candidates = sorted({r for i in own for r in selected[i]})
            tied_candidates = sorted({r for i in members if slots[i].tensor is not tensor
                                      for r in selected[i]} - set(candidates))
            aliases = tuple(slots[i].name for i in members if slots[i] is not head)
        for r in candidates:
            matched_count[r] += 1
        for r in tied_candidates:
            matched_count[r] += 1
        name = head.name
        tensors[name] = tensor
        slots_of[name] = [slots[i] for i in members]
        dtype = tensor.dtype
        if dtype not in dtype_names:
            dtype_names[dtype] = str(dtype).removeprefix("torch.")
        shape = tuple(tensor.shape)
        tie = tie_of.get(name) if tie_of else None
        tie_shadowed = tuple(f"{rule_names[r]} (tie)" for r in tied_candidates) if tied_candidates else ()
        if not candidates:
            entries.append(Entry(name, aliases, head.kind, shape, dtype_names[dtype], "keep", None, (), tie,
                                 tie_shadowed))
            if head.kind == "parameter" or is_meta(tensor):
                uncovered.append((name, head))
            continue
        winner = candidates[0] if len(candidates) == 1 else max(candidates, key=rank.__getitem__)
        won_count[winner] += 1
        ops, std, staged, step_problems = _resolve(winner, head, tensor, shape, ctx)
        if step_problems:
            for p in step_problems:
                failing.setdefault(p, []).append(name)
            continue
        if ops and is_meta(tensor) and reads_existing(ops):
            problems.append(_reads_meta(name, ops, *rules[winner]))
            continue
        shadowed = (tuple(rule_names[r] for r in candidates if r != winner) + tie_shadowed
                    if len(candidates) > 1 or tie_shadowed else ())
        entries.append(Entry(name, aliases, head.kind, shape, dtype_names[dtype], "fill", rule_names[winner], ops,
                             tie, shadowed, std, staged))
    return _Planned(entries, tensors, slots_of, uncovered, matched_count, won_count, failing, problems)


def _reads_meta(name: str, ops: tuple[Op, ...], rule_name: str, rule: Rule) -> Problem:
    return Problem(step_path(rule_name, rule, 0),
                   f"{name!r} has no values yet (meta device) but the pipeline starts with "
                   f"{ops[0].kind!r}, which transforms existing values",
                   "start the pipeline with a sampler or constant")


_ENTRY_FIELDS = ("name", "aliases", "kind", "shape", "dtype", "action", "rule", "ops", "tie", "shadowed",
                 "expected_std", "staged")
_KEEP, _FILL, _PER_TENSOR, _READS, _FAILED = range(5)   # what a unique tensor still needs


class _OnMiss(dict):
    """A dict that computes a missing value as ``make(key)``: lookups that hit stay in C."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        value = self[key] = self.make(key)
        return value


class _Decision(NamedTuple):
    """What happens to every unique tensor of one kind (same candidates, tie candidates, shape, dtype)."""

    action: str
    rule: str | None
    ops: tuple[Op, ...]
    shadowed: tuple[str, ...]
    std: float | None
    staged: bool
    winner: int | None
    needs: int                      # _KEEP, _FILL, _PER_TENSOR, _READS or _FAILED
    step_problems: tuple[Problem, ...] = ()


class _Columns(NamedTuple):
    """Per tensor slot, what planning reads from it, each read once for all slots."""

    names: list[str]
    tensors: list[torch.Tensor]
    shapes: list[tuple[int, ...]]   # one tuple object per distinct shape
    dtypes: list[torch.dtype]
    kinds: list[str]
    owner_classes: list[type]


def _columns(tree: Tree) -> _Columns:
    c = tree.tensor_columns
    owner_classes = list(map(type, tree.module_columns.modules))
    return _Columns(c.names, c.tensors, _shapes(c.tensors), list(map(attrgetter("dtype"), c.tensors)), c.kinds,
                    list(map(owner_classes.__getitem__, c.owners)))


def _shapes(tensors: list[torch.Tensor]) -> list[tuple[int, ...]]:
    """Each tensor's shape as a tuple; one tuple object per distinct shape."""
    sizes = list(map(attrgetter("shape"), tensors))
    as_tuple = {size: tuple(size) for size in dict.fromkeys(sizes)}
    return list(map(as_tuple.__getitem__, sizes))


def _plan_columns(tree: Tree, groups: list[TieGroup], selection: _Selection, ctx: _Context,
                  columns: _Columns) -> _Planned | None:
    """:func:`_plan_loop`, column by column: per unique tensor only C-level ``map``/``zip``.

    Unique tensors of one kind (the selection's code: same candidate rules, shape and
    dtype; with ties or shared tensors, same candidates, tie candidates, shape and
    dtype) get one decision, made in Python on first sight (so resolution happens in
    the loop's order); only tensors whose ops depend on their name or layer, or that
    need a check, are visited one by one. None when ``Entry`` has changed shape (then
    the loop plans).
    """
    if Entry._fields != _ENTRY_FIELDS:
        return None
    rules = ctx.rules
    rule_names = [name for name, _ in rules]
    rank = [(rule.priority, r) for r, (_, rule) in enumerate(rules)]
    depends = [_depends(rule) for _, rule in rules]
    selected = selection.selected
    rows, unit_tensors, members = _unit_rows(columns.names, columns.tensors, groups, tree)
    n = len(rows)
    alone = isinstance(rows, range)   # every slot its own unit: no slot objects needed to plan
    slots = () if alone else tree.tensors
    heads = None if alone else list(map(slots.__getitem__, rows))
    head_of = tree.tensor if alone else heads.__getitem__   # the slot of unit u (for the few resolved)
    candidates = selected if alone else list(map(selected.__getitem__, rows))
    tied: list[tuple[int, ...]] = [()] * n
    aliases: list[tuple[str, ...]] = [()] * n
    held: dict[int, list[TensorSlot]] = {}      # every slot holding the tensor, where more than its head
    for row, rows_of_tensor in members.items():  # tied or shared tensors: few
        u = bisect.bisect_left(rows, row)
        tensor = unit_tensors[u]
        own = [i for i in rows_of_tensor if slots[i].tensor is tensor]
        heads[u] = head = slots[own[0]]
        candidates[u] = sorted({r for i in own for r in selected[i]})
        tied[u] = tuple(sorted({r for i in rows_of_tensor if slots[i].tensor is not tensor
                                for r in selected[i]} - set(candidates[u])))
        aliases[u] = tuple(slots[i].name for i in rows_of_tensor if slots[i] is not head)
        held[u] = [slots[i] for i in rows_of_tensor]
    if alone:
        names, kinds, shapes, dtypes = columns.names, columns.kinds, columns.shapes, columns.dtypes
    else:                         # (a tied target's unit tensor is its source)
        names = list(map(itemgetter(0), heads))
        kinds = list(map(itemgetter(4), heads))
        shapes = _shapes(unit_tensors)
        dtypes = list(map(attrgetter("dtype"), unit_tensors))
    dtype_names = {d: str(d).removeprefix("torch.") for d in set(dtypes)}
    if alone:   # the selection's codes already tell the kinds apart (its key has the shape and dtype)
        codes = selection.codes
    else:       # ints only (hashed for free): candidate and tie lists stay alive, one object per shape
        codes = _first_rows(list(zip(map(id, candidates), map(id, tied), map(id, shapes), map(id, dtypes))))

    def resolve(u: int, winner: int, shadowed: tuple[str, ...]) -> _Decision:
        per_name, per_layer = depends[winner]
        name = names[u]
        key = (winner, shapes[u], dtypes[u], name if per_name else None, layer_of(name) if per_layer else None)
        found = ctx.cache.get(key)
        if found is None:
            found = ctx.cache[key] = _resolve_uncached(winner, head_of(u), unit_tensors[u], shapes[u], ctx)
        ops, std, staged, step_problems = found
        needs = _FAILED if step_problems else _READS if ops and reads_existing(ops) else _FILL
        return _Decision("fill", rule_names[winner], ops, shadowed, std, staged, winner, needs, tuple(step_problems))

    def decide(u: int) -> _Decision:   # u: the first unique tensor of its kind
        tie_shadowed = tuple(f"{rule_names[r]} (tie)" for r in tied[u])
        if not candidates[u]:
            return _Decision("keep", None, (), tie_shadowed, None, False, None, _KEEP)
        winner = max(candidates[u], key=rank.__getitem__)
        shadowed = tuple(rule_names[r] for r in candidates[u] if r != winner) + tie_shadowed
        if depends[winner][0] or depends[winner][1]:
            return _Decision("fill", rule_names[winner], (), shadowed, None, False, winner, _PER_TENSOR)
        return resolve(u, winner, shadowed)

    decisions = list(map(_OnMiss(decide).__getitem__, codes))
    needs = list(map(itemgetter(7), decisions))
    problems: list[Problem] = []
    failing: dict[Problem, list[str]] = {}
    dropped = []   # tensors a problem keeps out of the plan
    for u in compress(range(n), map(_FILL.__lt__, needs)):  # in tensor order
        decision = decisions[u]
        if decision.needs == _PER_TENSOR:
            decision = decisions[u] = resolve(u, decision.winner, decision.shadowed)
        if decision.needs == _FAILED:
            for p in decision.step_problems:
                failing.setdefault(p, []).append(names[u])
            dropped.append(u)
        elif decision.needs == _READS and is_meta(unit_tensors[u]):
            problems.append(_reads_meta(names[u], decision.ops, *rules[decision.winner]))
            dropped.append(u)
    matched, won = [0] * len(rules), [0] * len(rules)
    for u, count in Counter(codes).items():
        for r in (*candidates[u], *tied[u]):
            matched[r] += count
        if decisions[u].winner is not None:
            won[decisions[u].winner] += count
    tie_of = _tie_membership(groups, tree)
    rows_out = zip(names, aliases, kinds, shapes, map(dtype_names.__getitem__, dtypes),
                   map(itemgetter(0), decisions), map(itemgetter(1), decisions), map(itemgetter(2), decisions),
                   map(tie_of.get, names) if tie_of else repeat(None), map(itemgetter(3), decisions),
                   map(itemgetter(4), decisions), map(itemgetter(5), decisions))
    if dropped:
        keep = [True] * n
        for u in dropped:
            keep[u] = False
        rows_out = compress(rows_out, keep)
    entries = list(map(tuple.__new__, repeat(Entry), rows_out))
    def all_heads() -> Sequence[TensorSlot]:   # every unit's slot (without ties: built in C on first use)
        return tree.tensors if alone else heads

    uncovered = [(names[u], all_heads()[u]) for u in compress(range(n), map(_KEEP.__eq__, needs))
                 if kinds[u] == "parameter" or is_meta(unit_tensors[u])]
    index = _NameIndex(names)
    return _Planned(entries, _ByName(index, unit_tensors.__getitem__),
                    _ByName(index, lambda u: held.get(u) or [all_heads()[u]]), uncovered, matched, won,
                    failing, problems)


class _ByName(Mapping):
    """Unique tensor name -> ``value(unit)``, through one name index shared by the layout's maps
    (two 100k-entry dicts and 100k one-slot lists fewer per plan), built on the first lookup
    (``plan()`` makes none)."""

    def __init__(self, index: _NameIndex, value: Callable[[int], Any]):
        self.index, self.value = index, value

    def __getitem__(self, name: str) -> Any:
        return self.value(self.index.of[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.index.names)

    def __len__(self) -> int:
        return len(self.index.names)


class _NameIndex:
    """Unique tensor names and, once first needed, name -> unit number."""

    def __init__(self, names: list[str]):
        self.names = names

    @functools.cached_property
    def of(self) -> dict[str, int]:
        return dict(zip(self.names, range(len(self.names))))


def _unit_rows(names: list[str], tensors: list[torch.Tensor], groups: list[TieGroup], tree: Tree):
    """:func:`_units` by columns: the first slot row of every unique tensor, the tensors, and
    for tensors held by several slots, their first row -> all their rows."""
    replaced = {}
    for group in groups:
        for target, source in group.tensor_map(tree).items():
            replaced[target] = tree.by_tensor_name[source].tensor
    if replaced:
        tensors = list(map(replaced.get, names, tensors))
    ids = list(map(id, tensors))
    if len(set(ids)) == len(ids):
        return range(len(ids)), tensors, {}
    first = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1)))
    firsts = list(map(first.__getitem__, ids))
    rows = list(compress(range(len(ids)), map(operator.eq, firsts, range(len(ids)))))
    members: dict[int, list[int]] = {}
    for i in compress(range(len(ids)), map(operator.ne, firsts, range(len(ids)))):
        members.setdefault(firsts[i], [firsts[i]]).append(i)
    return rows, list(map(tensors.__getitem__, rows)), members


class _Selection(NamedTuple):
    """Per tensor slot, the rules that admit it, and a code for its kind."""

    selected: list[list[int]]   # rule indices; one shared list per distinct answer (never mutated)
    codes: list[int]            # the first slot with the same matches, kind, owner class, shape and dtype


def _first_rows(keys: list) -> list[int]:
    """For each row, the first row with an equal key."""
    first = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1)))
    return list(map(first.__getitem__, keys))


def _select(rules: list[tuple[str, Rule]], tree: Tree, names: list[str], problems: list[Problem],
            columns: _Columns | None = None) -> _Selection:
    """For each tensor slot, the rules (by index) whose match/exclude/module/ndim/buffers admit it."""
    match_patterns, exclude_patterns = [], []
    for r, (rule_name, rule) in enumerate(rules):
        for key, texts, sink in (("match", rule.match, match_patterns), ("exclude", rule.exclude, exclude_patterns)):
            for i, text in enumerate(texts):
                try:
                    sink.append(compile_pattern(text, r))
                except PatternError as exc:
                    index = f".{i}" if len(texts) > 1 else ""
                    problems.append(Problem(f"{ROOT}.rules.{rule_name}.{key}{index}", exc.what,
                                            "globs use * ? [..]; regexes start with 're:'"))
    if problems:
        return _Selection([], [])
    matched = PatternSet(match_patterns).match(names)
    excluded = PatternSet(exclude_patterns).match(names) if exclude_patterns else None
    needs_filter = [bool(rule.module or rule.ndim) for _, rule in rules]
    buffers_ok = [rule.buffers for _, rule in rules]
    # What admits a tensor depends only on its tag lists (shared between names: match() gives
    # one list per distinct answer), kind, owner class, ndim and floating-pointness: one answer
    # per distinct combination (the shape stands in for ndim: planning's kinds need it too),
    # computed on first sight, looked up in C for the other tensors.
    columns = columns or _columns(tree)
    codes = _first_rows(list(zip(map(id, matched), map(id, excluded) if excluded is not None else repeat(0),
                                 columns.kinds, columns.owner_classes, map(id, columns.shapes), columns.dtypes)))

    def admit(i: int) -> list[int]:   # i: the first slot of its kind
        tags, slot = matched[i], tree.tensor(i)
        is_buffer = slot.kind == "buffer"
        if not tags or (is_buffer and not slot.tensor.is_floating_point()):
            return []
        out = excluded[i] if excluded is not None else ()
        return [r for r in tags if not (is_buffer and not buffers_ok[r]) and r not in out
                and not (needs_filter[r] and not _filters_pass(rules[r][1], slot))]

    return _Selection(list(map(_OnMiss(admit).__getitem__, codes)), codes)


def _filters_pass(rule: Rule, slot: TensorSlot) -> bool:
    if rule.ndim and slot.tensor.dim() not in rule.ndim:
        return False
    if rule.module and not any(class_matches(type(slot.owner.module), m) for m in rule.module):
        return False
    return True


def class_matches(cls: type, wanted: str) -> bool:
    """``Linear`` or ``torch.nn.Linear`` or ``torch.nn.modules.linear.Linear``; subclasses count."""
    for base in cls.__mro__:
        if "." not in wanted:
            if base.__name__ == wanted:
                return True
            continue
        module, _, qualname = wanted.rpartition(".")
        if base.__qualname__ == qualname and (base.__module__ == module or base.__module__.startswith(module + ".")):
            return True
    return False


def _resolve(winner: int, head: TensorSlot, tensor: torch.Tensor, shape: tuple[int, ...],
             ctx: _Context) -> tuple[tuple[Op, ...], float | None, bool, list[Problem]]:
    """Ops, expected std, staging and problems of a rule for one tensor.

    Cached over tensors that cannot differ: same rule, shape and dtype, and the
    same name or layer only where the rule's steps depend on them.
    """
    depends = ctx.keys.get(winner)
    if depends is None:
        depends = ctx.keys[winner] = _depends(ctx.rules[winner][1])
    key = (winner, shape, tensor.dtype, head.name if depends[0] else None,
           layer_of(head.name) if depends[1] else None)
    cached = ctx.cache.get(key)
    if cached is None:
        cached = ctx.cache[key] = _resolve_uncached(winner, head, tensor, shape, ctx)
    return cached


_LAYER_NAME = re.compile(r"\blayer\b")


def _depends(rule: Rule) -> tuple[bool, bool]:
    """Whether a rule's ops can differ by tensor name, and by layer (beyond shape and dtype)."""
    per_name = any(s.fn is not None or STEPS[s.name].custom or s.name in ("checkpoint", "padding_zero")
                   for s in rule.init)
    uses_layer = any(isinstance(v, str) and _LAYER_NAME.search(v) for s in rule.init for v in _arg_values(s))
    return per_name, uses_layer


def _resolve_uncached(winner: int, head: TensorSlot, tensor: torch.Tensor, shape: tuple[int, ...],
                      ctx: _Context) -> tuple[tuple[Op, ...], float | None, bool, list[Problem]]:
    rule_name, rule = ctx.rules[winner]
    if tensor.dtype not in FLOAT_DTYPES:
        return (), None, False, [Problem(f"{ROOT}.rules.{rule_name}",
                                         f"{head.name!r} has dtype {tensor.dtype}; initspec fills floating-point "
                                         "tensors only", "exclude it from the rule")]
    info = TensorInfo(head.name, shape, tensor.dtype, type(head.owner.module), _owner_attrs(head), rule.transposed)
    names = ExprNames(info, ctx.variables)
    ops: list[Op] = []
    for i, step in enumerate(rule.init):
        try:
            resolved = _resolve_step(step, info, names, rule, head.name, ctx.allow_fn)
            ops.append(dataclasses.replace(resolved, origin=step_path(rule_name, rule, i)))
        except StepArgError as exc:
            return (), None, False, [Problem(step_path(rule_name, rule, i, exc.arg), exc.what, exc.fix)]
        except Exception as exc:  # a step's own arithmetic (overflow, a zero-size dim) is a planning problem too
            return (), None, False, [Problem(step_path(rule_name, rule, i),
                                             f"step {step} failed: {type(exc).__name__}: {exc}",
                                             "check the step's arguments against the tensor's shape")]
    limits = _kernel_problems(ops, tensor.dtype)
    if limits:
        return (), None, False, limits
    final = tuple(_checkpoint_fallback(ops))
    return final, expected_std(final, shape), _needs_staging(final, tensor.dtype), []


def _arg_values(step) -> list:
    values = []
    for v in step.args.values():
        values.append(v["expr"] if isinstance(v, dict) and "expr" in v else v)
    return values


def _owner_attrs(slot: TensorSlot) -> dict:
    module = slot.owner.module
    return {"padding_idx": getattr(module, "padding_idx", None) if isinstance(module, nn.Embedding) else None}


def _resolve_step(step, info: TensorInfo, names: ExprNames, rule: Rule, name: str,
                  allow_fn: tuple[str, ...]) -> Op:
    if step.fn is not None or STEPS[step.name].custom:
        return _custom_op(step, names, allow_fn)
    definition = STEPS[step.name]
    args = {}
    for key, arg in definition.args.items():
        value = step.args.get(key, arg.default)
        if arg.kind == "number" and isinstance(value, str):
            try:
                value = evaluate(value, names)
            except ExprError as exc:
                raise StepArgError(key, exc.what, exc.fix) from None
        args[key] = check_value(key, arg, value)
    if step.name == "checkpoint":
        pattern = next((p for p in rule.match if _pattern_matches(p, name)), "")
        args["key"] = _format_key(args["key"], name, glob_captures(pattern, name) if pattern else ())
    return definition.fn(info, **args)


def _pattern_matches(pattern: str, name: str) -> bool:
    try:
        p = compile_pattern(pattern, 0)
    except PatternError:
        return False
    return p.text == name if p.literal else bool(p.regex.match(name))


def _format_key(template: str, name: str, captures: tuple[str, ...]) -> str:
    try:
        return template.format(*captures, name=name)
    except (IndexError, KeyError, ValueError) as exc:
        raise StepArgError("key", f"cannot fill key template {template!r} for {name!r}: {exc!r} "
                           f"(captures: {list(captures)})", "use {name} or {0}, {1} for the pattern's * captures") from None


def _custom_op(step, names: ExprNames, allow_fn: tuple[str, ...]) -> Op:
    kwargs = {}
    for key, value in step.args.items():
        if isinstance(value, dict) and set(value) == {"expr"}:
            try:
                value = evaluate(str(value["expr"]), names)
            except ExprError as exc:
                raise StepArgError(key, exc.what, exc.fix) from None
        kwargs[key] = value
    label_kwargs = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    if step.fn is not None:
        fn = resolve_fn(step.fn, allow_fn)
        return op("custom", label=f"{step.fn}({label_kwargs})", fn=fn, path=step.fn, kwargs=kwargs)
    return op("custom", label=f"{step.name}({label_kwargs})", fn=STEPS[step.name].fn, path=step.name, kwargs=kwargs)


def _checkpoint_fallback(ops: list[Op]) -> list[Op]:
    """``checkpoint(missing=init)``: present keys replace the pipeline; absent ones fall back to the rest."""
    for o in ops:
        if o.kind == "checkpoint" and o.args.get("missing") == "init":
            if o.args.get("present"):
                return [o]
            return [x for x in ops if x is not o] or [o]
    return ops


def _kernel_problems(ops: list[Op], dtype: torch.dtype) -> list[Problem]:
    """Ops torch would refuse mid-fill: uniform ranges the generation dtype cannot hold."""
    gen = generation_dtype(dtype)
    limit = torch.finfo(gen).max
    problems = []
    for o in ops:
        if o.kind == "uniform" and not (abs(o["a"]) <= limit and abs(o["b"]) <= limit and o["b"] - o["a"] <= limit):
            problems.append(Problem(o.origin or ROOT, f"{o} needs a range of {o['b'] - o['a']:g}, more than "
                                    f"{str(gen).removeprefix('torch.')} holds (max {limit:g})",
                                    "narrow the range" + (", or use float64 parameters" if gen != torch.float64 else "")))
    return problems


def _needs_staging(ops: tuple[Op, ...], dtype: torch.dtype) -> bool:
    """True unless the pipeline provably writes finite values in place.

    The proof needs the result bounds inside ``dtype`` and every numeric argument
    inside the generation dtype the kernels compute in (0 * float32(1e39) is NaN).
    """
    bounds = value_bounds(ops)
    if bounds is None:
        return True
    gen_limit = torch.finfo(generation_dtype(dtype)).max
    if any(isinstance(v, (int, float)) and not isinstance(v, bool) and not abs(v) <= gen_limit
           for o in ops for v in o.args.values()):
        return True
    limit = torch.finfo(dtype).max
    return not (math.isfinite(bounds[0]) and math.isfinite(bounds[1])
                and abs(bounds[0]) < limit and abs(bounds[1]) < limit)


def _defaults(spec: Spec, entries: list[Entry], uncovered: list[tuple[str, TensorSlot]],
              resets: dict[str, nn.Module], problems: list[Problem]) -> tuple[list[Entry], list[str]]:
    """Apply ``default`` to tensors no rule selects; meta tensors cannot be kept."""
    if spec.default == "error":
        names = [n for n, slot in uncovered if slot.kind == "parameter"]
        if names:
            problems.append(Problem(f"{ROOT}.default",
                                    f"{len(names)} parameter(s) match no rule: {', '.join(names)}",
                                    "add rules for them, or set default: keep / reset"))
            return entries, []
    to_reset = {}
    for name, slot in uncovered:
        meta = is_meta(slot.tensor)
        if spec.default != "reset" and not meta:
            continue
        module = slot.owner.module
        if callable(getattr(module, "reset_parameters", None)):
            to_reset[name] = slot
            resets.setdefault(slot.owner.name, module)
        elif meta and slot.kind == "buffer" and slot.tensor.dtype not in FLOAT_DTYPES:
            problems.append(Problem(f"{ROOT}.rules",
                                    f"buffer {name!r} ({str(slot.tensor.dtype).removeprefix('torch.')}) is on the meta "
                                    f"device (no values) and its module {type(module).__name__} has no "
                                    "reset_parameters(); rules fill floating-point tensors only",
                                    "build with initspec.build(...) or under initspec.meta_parameters(), which put "
                                    "only parameters on meta and compute buffers for real"))
        elif meta:
            problems.append(Problem(f"{ROOT}.rules",
                                    f"{slot.kind} {name!r} is on the meta device (no values), no rule covers it and "
                                    f"its module {type(module).__name__} has no reset_parameters()",
                                    "add a rule for it" + (" with buffers: true" if slot.kind == "buffer" else "")))
        else:
            problems.append(Problem(f"{ROOT}.default",
                                    f"default: reset, but {type(module).__name__} (owner of {name!r}) has no reset_parameters()",
                                    "add a rule for it, or use default: keep"))
    # reset_parameters() rewrites everything its module holds (BatchNorm: running stats too)
    if to_reset or resets:
        entries = [e._replace(action="reset") if e.name in to_reset
                   or (e.action == "keep" and e.name.rpartition(".")[0] in resets) else e for e in entries]
    return entries, list(resets)


def _warnings(tree: Tree) -> list[str]:
    return [f"{item} is a plain tensor attribute, not a registered parameter or buffer: initspec "
            f"cannot see it and optimizers will not train it (use nn.Parameter or register_buffer)"
            for item in tree.unregistered]
