"""Planning: which rule fills which tensor with which ops, before touching any value.

Follow one tensor from :func:`make_plan` to its :class:`~initspec.results.Entry`:

1. :func:`~initspec.tree.walk` lists it under its canonical name;
2. :class:`Selection` finds the rules that admit it: their ``match`` patterns hit
   the name (:class:`~initspec.match.PatternSet`), no ``exclude`` does, and the
   ``module``/``ndim``/``buffers`` filters pass;
3. :func:`unique_tensors` joins the names that hold the same tensor (shared
   modules, tie groups) into one :class:`Unit`;
4. :class:`Decider` picks the winning rule (highest ``priority``, then the later
   rule) and resolves its steps into ops with the tensor's global shape. Tensors
   that agree on everything the result can depend on share one
   :class:`Decision`, cached under a :class:`DecisionKey`;
5. the unit becomes an ``Entry``; tensors no rule covers get the spec's
   ``default``. Every problem found is raised at once, with its config path.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from .errors import Problem, StepArgError, raise_all
from .expr import ExprError, evaluate, names_in
from .match import PatternError, PatternSet, compile_pattern, glob_captures, nearest
from .primitives import Op, custom_op, expected_std, reads_values, value_bounds
from .custom import resolve_fn
from .parts import TensorPart, cut
from .results import Entry, Layout, PartFill, Plan, RuleSummary
from .sharding import is_meta
from .spec import ROOT, Rule, Spec, step_path
from .steps import STEPS, Exclusive, as_ops, check_value
from .streams import generation_dtype
from .tensor_info import ExprNames, TensorInfo, layer_of
from .ties import TieGroup, expand_ties
from .select import Selection
from .tree import TensorSlot, Tree, walk

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def make_plan(model: nn.Module, spec: Spec, allow_fn: tuple[str, ...] = ()) -> tuple[Plan, Layout]:
    """Plan ``spec`` against ``model``; raises InitSpecError listing every problem.

    ``allow_fn`` lists extra dotted prefixes ``fn:`` steps may resolve under
    (``torch.nn.init`` is always allowed); it comes from the caller, never the spec.
    """
    tree = walk(model)
    groups, problems = expand_ties(spec, tree)
    raise_all(problems)
    rules = list(spec.rules.items())
    selection = Selection(rules, problems)
    raise_all(problems)
    admitted = selection.admitted(tree)

    decider = Decider(rules, dict(spec.vars), tuple(allow_fn))
    tie_of = tie_membership(groups, tree)
    matched, won = [0] * len(rules), [0] * len(rules)
    entries: list[Entry] = []
    tensors: dict[str, torch.Tensor] = {}
    rows_of: dict[str, tuple[int, ...]] = {}
    uncovered: list[tuple[str, TensorSlot]] = []
    failing: dict[Problem, list[str]] = {}
    selected: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}   # (candidates, tie candidates) -> tensors

    for tensor, rows in unique_tensors(tree, groups):
        if len(rows) == 1:   # the common case: one name, no tie
            head, aliases, candidates, tied = tree.tensors[rows[0]], (), admitted[rows[0]], ()
        else:
            head, aliases, candidates, tied = held_by_several(tree, tensor, rows, admitted)
        name = head.name
        tensors[name] = tensor
        rows_of[name] = rows
        selected[candidates, tied] = selected.get((candidates, tied), 0) + 1
        decision = decider.decide(candidates, tied, head, tensor)
        common = (name, aliases, head.kind, decision.shape, decision.dtype_name)
        tie = tie_of.get(name)
        if decision.problems:
            for p in decision.problems:
                failing.setdefault(p, []).append(name)
            continue
        for r in (decision.rule, *decision.part_rules):
            if r is not None:
                won[r] += 1
        if not decision.covered:   # some (or all) of it keeps its values, or gets the default
            entries.append(Entry(*common, "keep", None, (), tie, decision.shadowed, parts=decision.parts))
            if head.kind == "parameter" or is_meta(tensor):
                uncovered.append((name, head))
            continue
        if decision.reads_values and is_meta(tensor):
            problems.append(_reads_meta(name, decision, rules))
            continue
        rule_name = rules[decision.rule][0] if decision.rule is not None else None
        entries.append(Entry(*common, "fill", rule_name, decision.ops, tie, decision.shadowed,
                             decision.expected_std, decision.staged, decision.parts))

    for (candidates, tied), count in selected.items():
        for r in (*candidates, *tied):
            matched[r] += count
    problems += [_for_tensors(p, names) for p, names in failing.items()]
    problems += _unmatched_rules(spec, rules, matched, tree)
    resets: dict[str, nn.Module] = {}
    entries, reset_names = _defaults(spec, entries, uncovered, resets, problems)
    raise_all(problems)

    plan = Plan(
        seed=spec.seed, streams=spec.streams, entries=tuple(entries), ties=tuple(groups),
        resets=tuple(reset_names),
        rules=tuple(RuleSummary(n, tuple(r.match), matched[i], won[i]) for i, (n, r) in enumerate(rules)),
        warnings=tuple(_warnings(tree)), spec=spec)
    return plan, Layout(tree, tensors, rows_of, tuple(resets.values()), tuple(reset_names))


# -------------------------------------------------------------- unique tensors

def unique_tensors(tree: Tree, groups: Sequence[TieGroup]) -> Iterator[tuple[torch.Tensor, tuple[int, ...]]]:
    """Each unique tensor once the tie groups are made, with the rows of ``tree.tensors`` that
    hold it (shared modules, ties), in registration order."""
    becomes: dict[str, torch.Tensor] = {}   # a tied target's name -> the source tensor it will hold
    for group in groups:
        for target, source in group.tensor_map(tree).items():
            becomes[target] = tree.by_tensor_name[source].tensor
    held = [becomes.get(slot.name, slot.tensor) for slot in tree.tensors] if becomes else \
        [slot.tensor for slot in tree.tensors]
    first_row: dict[torch.Tensor, int] = {}   # keyed by the tensor object (tensors hash by identity)
    more_rows: dict[int, list[int]] = {}      # first row -> every row, for tensors several slots hold
    for row, tensor in enumerate(held):
        first = first_row.setdefault(tensor, row)
        if first != row:
            more_rows.setdefault(first, [first]).append(row)
    for row, tensor in enumerate(held):
        if first_row[tensor] == row:
            yield tensor, tuple(more_rows.get(row, (row,)))


def held_by_several(tree: Tree, tensor: torch.Tensor, rows: tuple[int, ...], admitted: list[tuple[int, ...]]):
    """(head slot, alias names, candidate rules, tie-only rules) of a tensor several slots hold.

    The head is the first slot that holds the tensor already (a tie target holds it only once
    the tie is made). Rules that admit only a tie target's name are shadowed by the tie.
    """
    slots = [tree.tensors[row] for row in rows]
    own = [row for row, slot in zip(rows, slots) if slot.tensor is tensor]
    head = tree.tensors[own[0]]
    candidates = tuple(sorted({r for row in own for r in admitted[row]}))
    tied = tuple(sorted({r for row in rows if row not in own for r in admitted[row]} - set(candidates)))
    return head, tuple(slot.name for slot in slots if slot is not head), candidates, tied


def tie_membership(groups: Sequence[TieGroup], tree: Tree) -> dict[str, str]:
    """Tensor name -> tie group, for the sources and targets of every group."""
    out = {}
    for group in groups:
        for target, source in group.tensor_map(tree).items():
            out[source] = group.name
            out[target] = group.name
    return out


# ------------------------------------------------------------------- decisions

class DecisionKey(NamedTuple):
    """Everything a decision depends on: two tensors with equal keys get the same ops."""

    candidates: tuple[int, ...]
    tied: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    reads: tuple[Any, ...]      # what the applied rules' steps read of this tensor (name, layer, owner attributes)


@dataclass(frozen=True)
class Decision:
    shape: tuple[int, ...]
    dtype_name: str
    shadowed: tuple[str, ...]
    rule: int | None = None             # the winning whole-tensor rule; None: no rule covers the whole tensor
    ops: tuple[Op, ...] = ()
    expected_std: float | None = None
    staged: bool = False
    parts: tuple[PartFill, ...] = ()    # filled after the whole tensor, in order
    part_rules: tuple[int, ...] = ()
    covered: bool = False               # every value comes from a rule (whole or parts)
    problems: tuple[Problem, ...] = ()

    @functools.cached_property
    def reads_values(self) -> bool:
        return reads_values(self.ops) or any(reads_values(f.ops) for f in self.parts)


@dataclass(frozen=True)
class Reads:
    """What a rule's steps read of a tensor beyond its shape and dtype."""

    name: bool = False
    layer: bool = False
    owner_attrs: tuple[str, ...] = ()

    def of(self, slot: TensorSlot) -> tuple[Any, ...]:
        """The values this tensor has for them (part of its DecisionKey)."""
        if not (self.name or self.layer or self.owner_attrs):
            return ()
        module = slot.owner.module
        return ((slot.name if self.name else None, layer_of(slot.name) if self.layer else None)
                + tuple(getattr(module, attr, None) for attr in self.owner_attrs))

    def __or__(self, other: Reads) -> Reads:
        return Reads(self.name or other.name, self.layer or other.layer,
                     tuple(sorted({*self.owner_attrs, *other.owner_attrs})))


def rule_reads(rule: Rule) -> Reads:
    """Gathered from the steps' declarations and the names their expressions use."""
    declared = set()
    for step in rule.init:
        if step.name is not None:
            declared |= STEPS[step.name].reads
        for value in step.args.values():
            text = value["expr"] if isinstance(value, dict) and "expr" in value else value
            if isinstance(text, str) and "layer" in names_in(text):
                declared.add("layer")
    attrs = tuple(sorted(r.removeprefix("owner.") for r in declared if r.startswith("owner.")))
    return Reads("name" in declared, "layer" in declared, attrs)


class Choice(NamedTuple):
    """Which candidate rules apply: the winner over the whole tensor, then part rules above it."""

    winner: int | None
    part_rules: tuple[int, ...]     # lowest rank first: a later one wins where parts overlap
    shadowed: tuple[int, ...]       # candidates that fill nothing
    reads: Reads


class Decider:
    """Picks the rules that apply to a tensor and resolves their steps, once per :class:`DecisionKey`."""

    def __init__(self, rules: list[tuple[str, Rule]], variables: dict[str, Any], allow_fn: tuple[str, ...]):
        self.rules, self.variables, self.allow_fn = rules, variables, allow_fn
        self.names = [name for name, _ in rules]
        self.reads = [rule_reads(rule) for _, rule in rules]
        self.decisions: dict[DecisionKey, Decision] = {}
        self.choices: dict[tuple[int, ...], Choice] = {}

    def rank(self, r: int) -> tuple[int, int]:
        """Highest priority wins; among equals, the rule declared later."""
        return self.rules[r][1].priority, r

    def choose(self, candidates: tuple[int, ...]) -> Choice:
        if candidates not in self.choices:
            whole = [r for r in candidates if self.rules[r][1].part is None]
            winner = max(whole, key=self.rank) if whole else None
            above = [r for r in candidates if self.rules[r][1].part is not None
                     and (winner is None or self.rank(r) > self.rank(winner))]
            applied = ([winner] if winner is not None else []) + above
            reads = Reads()
            for r in applied:
                reads = reads | self.reads[r]
            self.choices[candidates] = Choice(winner, tuple(sorted(above, key=self.rank)),
                                              tuple(r for r in candidates if r not in applied), reads)
        return self.choices[candidates]

    def decide(self, candidates: tuple[int, ...], tied: tuple[int, ...], head: TensorSlot,
               tensor: torch.Tensor) -> Decision:
        choice = self.choose(candidates)
        key = DecisionKey(candidates, tied, tuple(tensor.shape), tensor.dtype, choice.reads.of(head))
        decision = self.decisions.get(key)
        if decision is None:
            decision = self.decisions[key] = self._decide(key, choice, head)
        return decision

    def _decide(self, key: DecisionKey, choice: Choice, head: TensorSlot) -> Decision:
        names = self.names
        shadowed = tuple(names[r] for r in choice.shadowed) + tuple(f"{names[r]} (tie)" for r in key.tied)
        dtype_name = str(key.dtype).removeprefix("torch.")
        if choice.winner is None and not choice.part_rules:
            return Decision(key.shape, dtype_name, shadowed)
        ops: tuple[Op, ...] = ()
        problems: list[Problem] = []
        if choice.winner is not None:
            ops, problems = self._resolve(choice.winner, head, key.shape, key.dtype)
        fills, pieces = [], []
        for r in choice.part_rules:
            rule_name, rule = self.rules[r]
            cut_pieces, cut_problems = cut(rule.part, key.shape, self.variables, f"{ROOT}.rules.{rule_name}.part")
            problems += cut_problems
            for piece in cut_pieces:
                part_ops, part_problems = self._resolve(r, head, piece.shape_in(key.shape), key.dtype,
                                                        piece, key.shape)
                problems += part_problems
                problems += [Problem(o.origin, f"{o.kind!r} runs on whole tensors, not on a part",
                                     "drop part: from this rule, or the data-dependent step from its pipeline")
                             for o in part_ops if o.primitive.data_pass is not None]
                shape = piece.shape_in(key.shape)
                fills.append(PartFill(piece, rule_name, part_ops, expected_std(part_ops, shape),
                                      needs_staging(part_ops, key.dtype) if part_ops else False))
                pieces.append(piece)
        if problems:
            return Decision(key.shape, dtype_name, shadowed, choice.winner, problems=tuple(dict.fromkeys(problems)))
        return Decision(key.shape, dtype_name, shadowed, choice.winner, ops,
                        expected_std(ops, key.shape) if ops else None, needs_staging(ops, key.dtype) if ops else False,
                        tuple(fills), choice.part_rules, choice.winner is not None or covers(pieces, key.shape))

    def _resolve(self, r: int, head: TensorSlot, shape: tuple[int, ...], dtype: torch.dtype,
                 piece: TensorPart | None = None,
                 whole_shape: tuple[int, ...] = ()) -> tuple[tuple[Op, ...], list[Problem]]:
        """Rule ``r``'s steps as ops for a tensor (or part) of ``shape``, or the problems that stop them."""
        rule_name, rule = self.rules[r]
        if dtype not in FLOAT_DTYPES:
            return (), [Problem(f"{ROOT}.rules.{rule_name}", f"{head.name!r} has dtype {dtype}; initspec fills "
                                "floating-point tensors only", "exclude it from the rule")]
        reads = self.reads[r]
        info = TensorInfo(head.name, shape, dtype, type(head.owner.module),
                          {attr: getattr(head.owner.module, attr, None) for attr in reads.owner_attrs},
                          rule.transposed, _captures(rule, head.name) if reads.name else (), piece, whole_shape)
        expr_names = ExprNames(info, self.variables)
        ops: list[Op] = []
        exclusive: tuple[Op, ...] | None = None
        for i, step in enumerate(rule.init):
            path = step_path(rule_name, rule, i)
            try:
                result = resolve_step(step, info, expr_names, self.allow_fn)
            except StepArgError as exc:
                return (), [Problem(step_path(rule_name, rule, i, exc.arg), exc.what, exc.fix)]
            except Exception as exc:  # a step's own arithmetic (overflow, a zero-size dim) is a planning problem too
                return (), [Problem(path, f"step {step} failed: {type(exc).__name__}: {exc}",
                                    "check the step's arguments against the tensor's shape")]
            if isinstance(result, Exclusive):
                exclusive = tuple(dataclasses.replace(o, origin=path) for o in result.ops)
            else:
                ops += [dataclasses.replace(o, origin=path) for o in result]
        final = exclusive if exclusive is not None else tuple(ops)
        late = [o for o in final[:-1] if o.primitive.data_pass is not None]
        if late:
            return (), [Problem(late[0].origin, f"{late[0].kind!r} needs the filled model and a batch, so it must be "
                                "the last step of its pipeline", f"move {late[0].kind} to the end of the pipeline")]
        if not final:
            return (), [Problem(f"{ROOT}.rules.{rule_name}.init", f"no step of rule {rule_name!r} has anything to "
                                f"write into {head.name!r}", "add a step that fills it (e.g. after a checkpoint "
                                "with missing: init, a sampler to fall back to)")]
        return final, []


def covers(pieces: list[TensorPart], shape: tuple[int, ...]) -> bool:
    """The pieces together cover the whole tensor (along some dimension, without gaps)."""
    for dim in {p.dim for p in pieces}:
        reached = 0
        for piece in sorted(p for p in pieces if p.dim == dim):
            if piece.start > reached:
                break
            reached = max(reached, piece.stop)
        if reached >= shape[dim]:
            return True
    return False


def resolve_step(step: Any, info: TensorInfo, expr_names: ExprNames,
                 allow_fn: tuple[str, ...]) -> tuple[Op, ...] | Exclusive:
    """One step of a rule as ops for one tensor; raises StepArgError for a mistake."""
    if step.fn is not None:
        kwargs = {key: _evaluate(key, value["expr"], expr_names) if isinstance(value, dict) else value
                  for key, value in step.args.items()}
        label = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        return (custom_op(resolve_fn(step.fn, allow_fn), f"{step.fn}({label})", **kwargs),)
    definition = STEPS[step.name]
    args = {}
    for key, arg in definition.args.items():
        value = step.args.get(key, arg.default)
        if arg.kind == "number" and isinstance(value, str):
            value = _evaluate(key, value, expr_names)
        args[key] = check_value(key, arg, value)
    return as_ops(definition.fn(info, **args), step.name)


def _evaluate(key: str, text: Any, expr_names: ExprNames) -> Any:
    try:
        return evaluate(str(text), expr_names)
    except ExprError as exc:
        raise StepArgError(key, exc.what, exc.fix) from None


def _captures(rule: Rule, name: str) -> tuple[str, ...]:
    """What the * / ? of the rule's first pattern that matches ``name`` took."""
    for text in rule.match:
        try:
            if compile_pattern(text, 0).matches(name):
                return glob_captures(text, name)
        except PatternError:
            continue
    return ()


def needs_staging(ops: tuple[Op, ...], dtype: torch.dtype) -> bool:
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


# --------------------------------------------------------------------- problems

def _reads_meta(name: str, decision: Decision, rules: list[tuple[str, Rule]]) -> Problem:
    if reads_values(decision.ops):
        rule_name, rule, ops = *rules[decision.rule], decision.ops
    else:
        fill = next(f for f in decision.parts if reads_values(f.ops))
        rule_name, ops = fill.rule, fill.ops
        rule = dict(rules)[rule_name]
    return Problem(step_path(rule_name, rule, 0),
                   f"{name!r} has no values yet (meta device) but the pipeline starts with "
                   f"{ops[0].kind!r}, which transforms existing values",
                   "start the pipeline with a sampler or constant")


def _for_tensors(problem: Problem, names: list[str]) -> Problem:
    """Name the tensors a step problem occurs for (once per problem, not per tensor)."""
    if all(n in problem.what for n in names):
        return problem
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return Problem(problem.path, f"{problem.what} (for {shown})", problem.fix)


def _unmatched_rules(spec: Spec, rules: list[tuple[str, Rule]], matched: list[int], tree: Tree) -> list[Problem]:
    """Under ``strict``, a rule that selects nothing is a problem (with the nearest names)."""
    problems = []
    names = [s.name for s in tree.tensors]
    for r, (rule_name, rule) in enumerate(rules):
        if matched[r] or not spec.strict or rule.optional:
            continue
        hints = sorted({h for p in rule.match for h in nearest(p, names)})[:3]
        rooted = [p for p in rule.match if p.startswith("*.") and p[2:] in names]
        note = (f" ('{rooted[0]}' needs a dot before '{rooted[0][2:]}': a top-level name is matched by "
                f"'{rooted[0][2:]}' or '*{rooted[0][2:]}')" if rooted else "")
        problems.append(Problem(f"{ROOT}.rules.{rule_name}.match",
                                f"rule {rule_name!r} ({', '.join(rule.match)}) matches no "
                                f"{'parameter or buffer' if rule.buffers else 'parameter'}"
                                + (f"; nearest names: {', '.join(hints)}" if hints else "") + note,
                                "fix the pattern, set optional: true on the rule, or strict: false"))
    return problems


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
    to_reset = set()
    for name, slot in uncovered:
        meta = is_meta(slot.tensor)
        if spec.default != "reset" and not meta:
            continue
        module = slot.owner.module
        if callable(getattr(module, "reset_parameters", None)):
            to_reset.add(name)
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
                                    f"default: reset, but {type(module).__name__} (owner of {name!r}) has no "
                                    "reset_parameters()", "add a rule for it, or use default: keep"))
    # reset_parameters() rewrites everything its module holds (BatchNorm: running stats too)
    if to_reset or resets:
        entries = [e._replace(action="reset") if e.name in to_reset
                   or (e.action == "keep" and e.name.rpartition(".")[0] in resets) else e for e in entries]
    return entries, list(resets)


def _warnings(tree: Tree) -> Iterable[str]:
    return [f"{item} is a plain tensor attribute, not a registered parameter or buffer: initspec "
            f"cannot see it and optimizers will not train it (use nn.Parameter or register_buffer)"
            for item in tree.unregistered]
