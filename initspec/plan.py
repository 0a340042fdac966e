"""Planning: which rule fills which tensor with which ops, before touching any value.

``make_plan`` matches rules against canonical names, expands tie groups,
evaluates every expression with the tensor's global shape and resolves every
step into primitive ops. Any mistake is reported here, all at once, as one
:class:`~initspec.errors.InitSpecError`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

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
from .tensor_info import ExprNames, TensorInfo
from .ties import TieGroup, expand_ties
from .tree import Tree, TensorSlot, is_meta, walk

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Entry:
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
    tensors: dict[str, torch.Tensor]          # entry name -> tensor (as it is before apply)
    slots: dict[str, list[TensorSlot]]        # entry name -> every slot holding it after tying
    reset_modules: tuple[nn.Module, ...]
    reset_names: tuple[str, ...]


@dataclass
class _Context:
    variables: dict
    allow_fn: tuple[str, ...]
    cache: dict = field(default_factory=dict)


def make_plan(model: nn.Module, spec: Spec, allow_fn: tuple[str, ...] = ()) -> tuple[Plan, Layout]:
    """Plan ``spec`` against ``model``; raises InitSpecError listing every problem.

    ``allow_fn`` lists extra dotted prefixes ``fn:`` steps may resolve under
    (``torch.nn.init`` is always allowed); it comes from the caller, never the spec.
    """
    tree = walk(model)
    problems: list[Problem] = []
    groups, tie_problems = expand_ties(spec, tree)
    problems += tie_problems
    raise_all(problems)

    # After tying, each slot name refers to a unit (one tensor); tie sources come first.
    replaced: dict[str, str] = {}
    tie_of: dict[str, str] = {}
    for group in groups:
        for target, source in group.tensor_map(tree).items():
            replaced[target] = source
        for member in (group.source, *group.targets):
            tie_of[member] = group.name
    by_id: dict[int, list[TensorSlot]] = defaultdict(list)
    for slot in tree.tensors:
        source = replaced.get(slot.name)
        tensor = tree.by_tensor_name[source].tensor if source else slot.tensor
        by_id[id(tensor)].append(slot)

    rules = list(spec.rules.items())
    slot_names = [s.name for s in tree.tensors]
    selected = _select(rules, tree, slot_names, problems)
    raise_all(problems)

    matched_count = [0] * len(rules)
    won_count = [0] * len(rules)
    entries: list[Entry] = []
    tensors: dict[str, torch.Tensor] = {}
    slots_of: dict[str, list[TensorSlot]] = {}
    uncovered: list[tuple[str, TensorSlot]] = []
    resets: dict[str, nn.Module] = {}
    ctx = _Context(dict(spec.vars), tuple(allow_fn))
    failing: dict[Problem, list[str]] = {}    # a step problem -> the tensors it occurs for
    slot_index = {id(s): i for i, s in enumerate(tree.tensors)}

    for key, unit in by_id.items():
        source_name = next((replaced[s.name] for s in unit if s.name in replaced), None)
        head = tree.by_tensor_name[source_name] if source_name else unit[0]
        tensor = head.tensor
        own = [s for s in unit if s.tensor is tensor]            # the tensor's own names
        tied = [s for s in unit if s.tensor is not tensor]       # names it gets by tying
        candidates = sorted({r for s in own for r in selected[slot_index[id(s)]]})
        tied_candidates = sorted({r for s in tied for r in selected[slot_index[id(s)]]} - set(candidates))
        for r in set(candidates) | set(tied_candidates):
            matched_count[r] += 1
        group = next((tie_of[s.name] for s in unit if s.name in tie_of), None)
        if group is None:
            group = next((tie_of[m] for m in tie_of if any(s.name.startswith(m + ".") for s in unit)), None)
        name = head.name
        aliases = tuple(s.name for s in unit if s is not head)
        tensors[name] = tensor
        slots_of[name] = unit
        base = dict(name=name, aliases=aliases, kind=head.kind, shape=tuple(tensor.shape),
                    dtype=str(tensor.dtype).removeprefix("torch."), tie=group)
        if not candidates:
            shadowed = tuple(f"{rules[r][0]} (tie)" for r in tied_candidates)
            entries.append(Entry(action="keep", shadowed=shadowed, **base))
            if head.kind == "parameter" or is_meta(tensor):
                uncovered.append((name, head))
            continue
        winner = max(candidates, key=lambda r: (rules[r][1].priority, r))
        won_count[winner] += 1
        rule_name, rule = rules[winner]
        shadowed = tuple([rules[r][0] for r in candidates if r != winner]
                         + [f"{rules[r][0]} (tie)" for r in tied_candidates])
        ops, step_problems = _resolve(rule_name, rule, head, tensor, ctx)
        if step_problems:
            for p in step_problems:
                failing.setdefault(p, []).append(name)
            continue
        if is_meta(tensor) and reads_existing(ops):
            problems.append(Problem(step_path(rule_name, rule, 0),
                                    f"{name!r} has no values yet (meta device) but the pipeline starts with "
                                    f"{ops[0].kind!r}, which transforms existing values",
                                    "start the pipeline with a sampler or constant"))
            continue
        entries.append(Entry(action="fill", rule=rule_name, ops=ops, shadowed=shadowed,
                             expected_std=expected_std(ops, tuple(tensor.shape)),
                             staged=_needs_staging(ops, tensor.dtype), **base))

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


def _select(rules: list[tuple[str, Rule]], tree: Tree, names: list[str], problems: list[Problem]) -> list[list[int]]:
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
        return []
    matched = PatternSet(match_patterns).match(names)
    excluded = PatternSet(exclude_patterns).match(names) if exclude_patterns else None
    needs_filter = [bool(rule.module or rule.ndim) for _, rule in rules]
    buffers_ok = [rule.buffers for _, rule in rules]
    out: list[list[int]] = []
    for i, slot in enumerate(tree.tensors):
        tags = matched[i]
        if not tags:
            out.append(tags)
            continue
        is_buffer = slot.kind == "buffer"
        if is_buffer and not slot.tensor.is_floating_point():
            out.append([])
            continue
        keep = []
        for r in tags:
            if is_buffer and not buffers_ok[r]:
                continue
            if excluded is not None and r in excluded[i]:
                continue
            if needs_filter[r] and not _filters_pass(rules[r][1], slot):
                continue
            keep.append(r)
        out.append(keep)
    return out


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


def _resolve(rule_name: str, rule: Rule, head: TensorSlot, tensor: torch.Tensor,
             ctx: _Context) -> tuple[tuple[Op, ...], list[Problem]]:
    """Evaluate a rule's steps for one tensor (cached over tensors that cannot differ)."""
    uses_layer = any(isinstance(v, str) and "layer" in v for s in rule.init for v in _arg_values(s))
    per_name = any(s.fn is not None or STEPS[s.name].custom or s.name in ("checkpoint", "padding_zero")
                   for s in rule.init)
    info = TensorInfo(head.name, tuple(tensor.shape), tensor.dtype, type(head.owner.module),
                      _owner_attrs(head), rule.transposed)
    key = (rule_name, info.shape, tensor.dtype, head.name if per_name else None,
           _safe_layer(info) if uses_layer else None)
    cache = ctx.cache
    if key in cache:
        return cache[key]
    problems: list[Problem] = []
    if tensor.dtype not in FLOAT_DTYPES:
        problems.append(Problem(f"{ROOT}.rules.{rule_name}",
                                f"{head.name!r} has dtype {tensor.dtype}; initspec fills floating-point tensors only",
                                "exclude it from the rule"))
        cache[key] = ((), problems)
        return cache[key]
    names = ExprNames(info, ctx.variables)
    ops: list[Op] = []
    for i, step in enumerate(rule.init):
        try:
            resolved = _resolve_step(step, info, names, rule, head.name, ctx.allow_fn)
            ops.append(dataclasses.replace(resolved, origin=step_path(rule_name, rule, i)))
        except StepArgError as exc:
            where = step_path(rule_name, rule, i, exc.arg)
            problems.append(Problem(where, exc.what, exc.fix))
            break
        except Exception as exc:  # a step's own arithmetic (overflow, a zero-size dim) is a planning problem too
            problems.append(Problem(step_path(rule_name, rule, i), f"step {step} failed: {type(exc).__name__}: {exc}",
                                    "check the step's arguments against the tensor's shape"))
            break
    if not problems:
        problems = _kernel_problems(ops, tensor.dtype)
    result = (tuple(_checkpoint_fallback(ops)), problems)
    cache[key] = result
    return result


def _arg_values(step) -> list:
    values = []
    for v in step.args.values():
        values.append(v["expr"] if isinstance(v, dict) and "expr" in v else v)
    return values


def _safe_layer(info: TensorInfo) -> Any:
    try:
        return info.layer
    except ExprError:
        return None


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
                raise StepArgError(key, f"{exc.what} (for {name!r})", exc.fix) from None
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
    bounds = value_bounds(ops)
    if bounds is None:
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
        elif meta:
            problems.append(Problem(f"{ROOT}.rules",
                                    f"{slot.kind} {name!r} is on the meta device (no values), no rule covers it and "
                                    f"its module {type(module).__name__} has no reset_parameters()",
                                    "add a rule for it" + (" with buffers: true" if slot.kind == "buffer" else "")))
        else:
            problems.append(Problem(f"{ROOT}.default",
                                    f"default: reset, but {type(module).__name__} (owner of {name!r}) has no reset_parameters()",
                                    "add a rule for it, or use default: keep"))
    entries = [Entry(**{**e.__dict__, "action": "reset"}) if e.name in to_reset else e for e in entries]
    return entries, list(resets)


def _warnings(tree: Tree) -> list[str]:
    return [f"{item} is a plain tensor attribute, not a registered parameter or buffer: initspec "
            f"cannot see it and optimizers will not train it (use nn.Parameter or register_buffer)"
            for item in tree.unregistered]
