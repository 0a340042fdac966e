"""Selection: which rules admit a tensor slot, by name (match/exclude) and by filters
(module, within, ndim, buffers). Answers are computed once per distinct :class:`AdmissionKey`."""
from __future__ import annotations

from typing import NamedTuple

from .errors import Problem
from .match import PatternError, PatternSet, compile_pattern
from .spec import ROOT, Rule
from .tree import Tree, class_matches


class AdmissionKey(NamedTuple):
    """Everything that decides which rules admit a tensor slot."""

    matched: tuple[int, ...]    # rules whose match patterns hit the name
    excluded: tuple[int, ...]   # rules whose exclude patterns hit it
    kind: str
    owner_class: type
    ndim: int
    floating: bool


class Selection:
    """The rules' compiled patterns and filters; :meth:`admitted` answers per tensor slot."""

    def __init__(self, rules: list[tuple[str, Rule]], problems: list[Problem]):
        self.rules = rules
        match, exclude = [], []
        for r, (rule_name, rule) in enumerate(rules):
            for key, texts, sink in (("match", rule.match, match), ("exclude", rule.exclude, exclude)):
                for i, text in enumerate(texts):
                    try:
                        sink.append(compile_pattern(text, r))
                    except PatternError as exc:
                        index = f".{i}" if len(texts) > 1 else ""
                        problems.append(Problem(f"{ROOT}.rules.{rule_name}.{key}{index}", exc.what,
                                                "globs use * ? [..]; regexes start with 're:'"))
        self.match, self.exclude = PatternSet(match), PatternSet(exclude)
        self._filterless: dict[tuple[int, ...], bool] = {}
        self._within: dict[tuple[int, ...], bool] = {}

    def admitted(self, tree: Tree) -> list[tuple[int, ...]]:
        """For each tensor slot, the indices of the rules that admit it."""
        names = [s.name for s in tree.tensors]
        matched = self.match.match(names)
        excluded = self.exclude.match(names) if self.exclude.patterns else [()] * len(names)
        answers: dict[AdmissionKey, tuple[int, ...]] = {}
        unfiltered: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[int, ...]] = {}
        out = []
        for slot, hits, misses in zip(tree.tensors, matched, excluded):
            if not hits:
                out.append(())
                continue
            if slot.kind == "parameter" and self.filterless(hits):   # the answer depends on the name only
                pair = (hits, misses)
                if pair not in unfiltered:
                    unfiltered[pair] = tuple(r for r in hits if r not in misses)
                out.append(unfiltered[pair])
                continue
            tensor = slot.tensor
            key = AdmissionKey(hits, misses, slot.kind, type(slot.owner.module), tensor.dim(),
                               slot.kind == "parameter" or tensor.is_floating_point())
            if key not in answers:
                answers[key] = self._admit(key)
            answer = answers[key]
            if answer and self.uses_within(answer):   # ancestors differ by slot: checked one by one
                answer = tuple(r for r in answer if not self.rules[r][1].within
                               or slot.owner.within(self.rules[r][1].within))
            out.append(answer)
        return out

    def filterless(self, hits: tuple[int, ...]) -> bool:
        """No rule among ``hits`` filters by module, within or ndim (cached per distinct ``hits``)."""
        if hits not in self._filterless:
            self._filterless[hits] = not any(self.rules[r][1].module or self.rules[r][1].ndim
                                             or self.rules[r][1].within for r in hits)
        return self._filterless[hits]

    def uses_within(self, rules: tuple[int, ...]) -> bool:
        if rules not in self._within:
            self._within[rules] = any(self.rules[r][1].within for r in rules)
        return self._within[rules]

    def _admit(self, key: AdmissionKey) -> tuple[int, ...]:
        if not key.floating:
            return ()   # buffers are filled only when floating point
        return tuple(r for r in key.matched if r not in key.excluded
                     and _filters_pass(self.rules[r][1], key.kind, key.owner_class, key.ndim))


def _filters_pass(rule: Rule, kind: str, owner_class: type, ndim: int) -> bool:
    if kind == "buffer" and not rule.buffers:
        return False
    if rule.ndim and ndim not in rule.ndim:
        return False
    return not rule.module or any(class_matches(owner_class, m) for m in rule.module)
