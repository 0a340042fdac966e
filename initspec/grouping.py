"""Readable rules for groups of tensor names (the naming half of ``initspec infer``).

Every parameter name belongs to one group (the tensors one init explains) or to none
(unexplained). Rules are built from the names only, never from values:

* a name's template writes each integer component as ``*``
  (``transformer.h.3.attn.c_proj.weight`` -> ``transformer.h.*.attn.c_proj.weight``);
  a template whose names fall into several groups is replaced by its literal names;
* a selector is a glob with at most one filter (``module:`` the owner's class, subclasses
  count; or ``ndim:``): the template, its suffixes (``*.c_proj.weight``), ``*.weight``
  with a filter, ``*``. A selector is exact when every name it matches is in the group;
  each group is covered greedily by exact selectors (most names first, then the plainest);
* a catch-all: a group that needs several selectors gets one broad one (``*.weight``,
  ``*``, with or without a filter) at priority 0 when the other groups it also matches
  are all explained; those get ``priority: 1`` (their exact selectors win there).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from .tree import class_matches

_INTEGER = re.compile(r"(?<![^.])\d+(?![^.])")


@dataclass(frozen=True)
class Name:
    """One parameter name as rule making sees it."""

    name: str
    group: int | None            # the explanation it belongs to (None: unexplained)
    owner: type                  # the owning module's class
    ndim: int
    required: bool = True        # False for a tie alias: the tie covers it


@dataclass(frozen=True)
class Selector:
    pattern: str
    module: str | None = None
    ndim: int | None = None

    @property
    def cost(self) -> float:
        """Plainer is cheaper: no filter, then a module filter, then ndim; then fewer components."""
        filtered = self.module is not None or self.ndim is not None
        bare = filtered and self.pattern == "*"           # "*.weight" with a filter reads better than "*"
        return (self.module is not None) * 1.0 + (self.ndim is not None) * 1.05 + self.pattern.count(".") * 0.01 \
            + bare * 0.02


@dataclass(frozen=True)
class RuleDraft:
    """One rule of the inferred spec, before its init is written."""

    group: int
    name: str
    patterns: tuple[str, ...]
    module: str | None
    ndim: int | None
    priority: int
    catch_all: bool = False


@dataclass(frozen=True)
class _Key:
    """Names that every selector treats alike: same template (or literal name), owner class, ndim."""

    text: str
    literal: bool
    owner: type
    ndim: int
    group: int | None
    required: bool


def template_of(name: str) -> str:
    """``name`` with every integer component written as ``*``."""
    return _INTEGER.sub("*", name)


def make_rules(names: list[Name]) -> list[RuleDraft]:
    """Rules that give every required name of each group exactly that group (see the module docstring)."""
    keys = _keys(names)
    groups = sorted({k.group for k in keys if k.group is not None})
    chosen = {g: _cover(g, keys) for g in groups}
    catch_alls: dict[int, Selector] = {}
    overridden: set[int] = set()
    for g in sorted(groups, key=lambda g: (-len(chosen[g]), g)):
        if len(chosen[g]) < 2 or g in overridden:
            continue
        found = _catch_all(g, keys, set(catch_alls))
        if found is not None:
            selector, hit = found
            catch_alls[g] = selector
            overridden |= hit
    drafts: list[RuleDraft] = []
    for g in groups:
        if g in catch_alls:
            s = catch_alls[g]
            name = _rule_name(Selector(s.pattern, s.module))          # "weights", not "weights_2d"
            drafts.append(RuleDraft(g, name, (s.pattern,), s.module, s.ndim, 0, catch_all=True))
            continue
        by_filter: dict[tuple, list[str]] = {}
        for s in chosen[g]:
            by_filter.setdefault((s.module, s.ndim), []).append(s.pattern)
        for (module, ndim), patterns in by_filter.items():
            name = _rule_name(Selector(patterns[0], module, ndim))
            drafts.append(RuleDraft(g, name, tuple(patterns), module, ndim, 1 if g in overridden else 0))
    return _unique_names(drafts)


def _keys(names: list[Name]) -> list[_Key]:
    groups_of: dict[str, set] = {}
    for n in names:
        groups_of.setdefault(template_of(n.name), set()).add(n.group)
    keys = {}
    for n in names:
        template = template_of(n.name)
        literal = len(groups_of[template]) > 1
        key = _Key(n.name if literal else template, literal, n.owner, n.ndim, n.group, n.required)
        keys.setdefault(key, None)
    return list(keys)


def _matches(selector: Selector, key: _Key) -> bool:
    if selector.ndim is not None and key.ndim != selector.ndim:
        return False
    if selector.module is not None and not class_matches(key.owner, selector.module):
        return False
    if "*" not in selector.pattern:
        return key.text == selector.pattern
    return fnmatch.fnmatchcase(key.text, selector.pattern)


def _candidates(group: int, keys: list[_Key]) -> list[Selector]:
    mine = [k for k in keys if k.group == group and k.required]
    found: dict[Selector, None] = {}
    for k in mine:
        if k.literal:
            found[Selector(k.text)] = None
            continue
        parts = k.text.split(".")
        for i in range(1, len(parts)):
            if parts[i] != "*":                     # "*.*.ff_out.weight" reads worse than "blocks.*.ff_out.weight"
                found[Selector("*." + ".".join(parts[i:]))] = None
        found[Selector(k.text)] = None
    leaves = {k.text.rsplit(".", 1)[-1] for k in mine}
    for pattern in ["*", *(f"*.{leaf}" for leaf in sorted(leaves))]:
        found[Selector(pattern)] = None
        for k in mine:
            found[Selector(pattern, module=k.owner.__name__)] = None
            found[Selector(pattern, ndim=k.ndim)] = None
    return list(found)


def _cover(group: int, keys: list[_Key]) -> list[Selector]:
    """Exact selectors covering the group's required keys: the most keys first, then the plainest."""
    exact = []
    for s in _candidates(group, keys):
        hit = [k for k in keys if _matches(s, k)]
        if all(k.group == group for k in hit):
            exact.append((s, {k for k in hit if k.required}))
    left = {k for k in keys if k.group == group and k.required}
    chosen = []
    while left:
        s, covered = min(exact, key=lambda item: (-len(item[1] & left), item[0].cost, item[0].pattern))
        if not covered & left:     # pragma: no cover - a key's own text always covers it
            raise AssertionError(f"no exact selector for {sorted(k.text for k in left)}")
        chosen.append(s)
        left -= covered
    return chosen


def _catch_all(group: int, keys: list[_Key], taken: set[int]) -> tuple[Selector, set[int]] | None:
    """A broad selector for the group: it may also match explained names of other groups that
    are not catch-alls themselves; the fewest such groups, then the plainest."""
    mine = [k for k in keys if k.group == group and k.required]
    leaves = {k.text.rsplit(".", 1)[-1] for k in mine}
    classes = {k.owner.__name__ for k in mine}
    ndims = {k.ndim for k in mine}
    patterns = ["*"] + ([f"*.{leaves.pop()}"] if len(leaves) == 1 else [])
    options = []
    for pattern in patterns:
        filters = [Selector(pattern)]
        filters += [Selector(pattern, module=classes.pop())] if len(classes) == 1 else []
        filters += [Selector(pattern, ndim=ndims.pop())] if len(ndims) == 1 else []
        for s in filters:
            hit = [k for k in keys if _matches(s, k)]
            if not all(k in hit for k in mine):
                continue
            others = {k.group for k in hit if k.group != group}
            if None in others or others & taken:
                continue
            options.append((len(others), s.cost - 0.5 * (pattern != "*"), s.pattern, s, others))
        classes = {k.owner.__name__ for k in mine}
        ndims = {k.ndim for k in mine}
    if not options:
        return None
    best = min(options, key=lambda o: o[:3])
    return best[3], best[4]


def _rule_name(selector: Selector) -> str:
    """``*.c_proj.weight`` -> ``c_proj``; ``*.weight`` -> ``weights``; module filters lead."""
    parts = [p for p in selector.pattern.split(".") if p != "*"]
    leaf = parts[-1] if parts else ""
    if len(parts) >= 2 and leaf in ("weight", "bias"):
        stem = parts[-2]
    elif parts:
        stem = {"weight": "weights", "bias": "biases"}.get(leaf, leaf)
    else:
        stem = "all"
    if selector.module is not None:
        stem = f"{selector.module.lower()}_{stem}" if stem != "all" else selector.module.lower()
    elif selector.ndim is not None:
        stem = f"{stem}_{selector.ndim}d"
    return identifier(stem, leaf)


def identifier(stem: str, leaf: str = "") -> str:
    """A name Hydra overrides can address: ``2`` -> ``bias_of_2`` (YAML would read ``2:`` as a number)."""
    stem = re.sub(r"\W", "_", stem) or "rule"
    if not (stem[0].isalpha() or stem[0] == "_"):
        stem = f"{leaf or 'rule'}_of_{stem}"
    return stem


def _unique_names(drafts: list[RuleDraft]) -> list[RuleDraft]:
    seen: dict[str, int] = {}
    out = []
    for d in drafts:
        count = seen.get(d.name, 0)
        seen[d.name] = count + 1
        out.append(d if count == 0 else RuleDraft(d.group, f"{d.name}_{count + 1}", d.patterns, d.module,
                                                    d.ndim, d.priority, d.catch_all))
    return out


def literal_rules(names: list[Name]) -> list[RuleDraft]:
    """One rule per group listing its names literally: always exact (the fallback)."""
    by_group: dict[int, list[str]] = {}
    for n in names:
        if n.group is not None and n.required:
            by_group.setdefault(n.group, []).append(n.name)
    return [RuleDraft(g, f"group_{g}", tuple(members), None, None, 0) for g, members in sorted(by_group.items())]
