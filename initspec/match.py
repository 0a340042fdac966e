"""Matching many names against many patterns.

Patterns are globs over whole names (``*`` crosses dots), ``re:<regex>``
(whole-name) or literal names. :meth:`PatternSet.match` answers, for every
name, which patterns match it, with three plain ideas:

* **Literal names** are looked up in a dict.
* **Templates.** A name's template writes every digit as ``#``
  (``layers.12.w1.weight`` -> ``layers.##.w#.weight``, ``blk123`` -> ``blk###``);
  a model with 100k tensors has a few hundred. A glob without literal digits
  (and without a ``[..]`` class that tells digits apart) matches a name exactly
  when it matches the name's template, so it is answered once per template.
* **Literal prefix and suffix.** Every match of ``layers.3.*`` starts with
  ``layers.3.``; every match of ``*.experts.7.w1.weight`` ends with
  ``.experts.7.w1.weight``. Templates and names are kept sorted forwards and by
  their reversed text, so a pattern is tried only on the entries that start
  with its prefix or end with its suffix (bisection), whichever are fewer.

A glob that needs the digits is tried name by name, on the fewest of: the names
with its prefix, the names with its suffix, or the names whose template its
template form (digits written as ``#``) accepts.
"""
from __future__ import annotations

import bisect
import difflib
import fnmatch
import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .regex_tree import backtracking_hazard, literal_ends, template_regex

DIGITS = "0123456789"
TO_TEMPLATE = str.maketrans(DIGITS, "#" * len(DIGITS))
_GLOB_TOKEN = re.compile(r"\[!?\]?[^\]]*\]|.", re.S)   # a [..] / [!..] class (a leading ] is a member) or a char


class PatternError(Exception):
    def __init__(self, pattern: str, what: str):
        super().__init__(what)
        self.pattern, self.what = pattern, what


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern and what every name it matches must look like."""

    text: str
    tag: int                        # the caller's number for it (rule or member index)
    regex: re.Pattern | None        # None for a literal name
    prefix: str = ""                # every match starts with this
    suffix: str = ""                # ... and ends with this
    template: re.Pattern | None = None   # the template of every match matches this (None: unknown)
    by_template: bool = False       # matches a name exactly when ``regex`` matches its template
    simple: bool = False            # exactly prefix*suffix: a long enough name with both matches

    @property
    def literal(self) -> bool:
        return self.regex is None

    def matches(self, text: str) -> bool:
        if self.regex is None:
            return text == self.text
        if self.simple:
            return (len(text) >= len(self.prefix) + len(self.suffix)
                    and text.startswith(self.prefix) and text.endswith(self.suffix))
        return self.regex.match(text) is not None


def template_of(name: str) -> str:
    """``name`` with every digit written as ``#``."""
    return name.translate(TO_TEMPLATE)


def glob_to_regex(glob: str) -> str:
    """fnmatch's translation, anchored; ``*`` may cross dots."""
    return fnmatch.translate(glob)


def compile_pattern(text: str, tag: int) -> Pattern:
    if not isinstance(text, str) or not text:
        raise PatternError(str(text), f"a pattern must be a non-empty string, got {text!r}")
    if text.startswith("re:"):
        return _compile_regex(text, tag)
    tokens = _GLOB_TOKEN.findall(text)
    if not any(t in "*?[" for t in text):
        return Pattern(text, tag, None, prefix=text, suffix=text)
    if text.count("[") != text.count("]"):
        raise PatternError(text, f"invalid glob {text!r}: unbalanced '[' ']'")
    try:
        regex = re.compile(glob_to_regex(text))
    except re.error as exc:  # pragma: no cover - fnmatch output is valid regex
        raise PatternError(text, f"invalid glob {text!r}: {exc}") from None
    literal = [len(t) == 1 and t not in "*?" for t in tokens]
    prefix = "".join(tokens[:literal.index(False)])
    suffix = "".join(tokens[len(tokens) - literal[::-1].index(False):])
    classes = [t for t in tokens if len(t) > 1]
    by_template = (not any(len(t) == 1 and (t in DIGITS or t == "#") for t in tokens)
                   and all(_uniform_on_digits(c) for c in classes))
    simple = tokens.count("*") == 1 and len(prefix) + len(suffix) + 1 == len(tokens)
    return Pattern(text, tag, regex, prefix, suffix, re.compile(_template_regex(tokens), re.S), by_template, simple)


def _compile_regex(text: str, tag: int) -> Pattern:
    body = text[3:]
    try:
        compiled = re.compile(f"(?s:{body})\\Z")
    except re.error as exc:
        raise PatternError(text, f"invalid regex {body!r}: {exc}") from None
    hazard = backtracking_hazard(body)
    if hazard:
        raise PatternError(text, f"regex {body!r} could backtrack for hours: it has {hazard}; "
                                 "use a glob or a regex without nested repetition")
    prefix, suffix = literal_ends(body)
    return Pattern(text, tag, compiled, prefix=prefix, suffix=suffix, template=template_regex(body))


def _class_regex(token: str) -> str:
    """The regex of one glob class (``[a-c]``) as fnmatch translates it, without fnmatch's anchors."""
    translated = fnmatch.translate(token)
    found = re.fullmatch(r"\(\?s:(.*)\)\\[zZ]", translated, re.S)
    return found.group(1) if found else translated


def _class_takes(token: str, char: str) -> bool:
    return re.fullmatch(_class_regex(token), char, re.S) is not None


def _uniform_on_digits(token: str) -> bool:
    """A [..] class that takes every digit and '#', or none of them."""
    return len({_class_takes(token, c) for c in DIGITS + "#"}) == 1


def _template_regex(tokens: list[str]) -> str:
    """A regex every template of a name the glob matches also matches (digits read as '#')."""
    out = []
    for t in tokens:
        if t == "*":
            out.append(".*")
        elif t == "?":
            out.append(".")
        elif len(t) > 1:   # a class: '#' stands for the digits it takes
            takes_digit = any(_class_takes(t, c) for c in DIGITS + "#")
            out.append(f"(?:#|{_class_regex(t)})" if takes_digit else _class_regex(t))
        else:
            out.append(re.escape(template_of(t)))
    return "(?:" + "".join(out) + r")\Z"


class SortedIndex:
    """Entries in sorted order, forwards and by their reversed text, for prefix and suffix ranges."""

    def __init__(self, entries: list[str]):
        self.entries = entries
        self._forward: list[int] | None = None    # entry indices, by entry
        self._reversed: list[str] | None = None
        self._backward: list[int] | None = None   # entry indices, by reversed entry

    def starting_with(self, prefix: str) -> list[int]:
        if self._forward is None:
            self._forward = sorted(range(len(self.entries)), key=self.entries.__getitem__)
        return _between(self._forward, self.entries, prefix)

    def ending_with(self, suffix: str) -> list[int]:
        if self._backward is None:
            self._reversed = [e[::-1] for e in self.entries]
            self._backward = sorted(range(len(self.entries)), key=self._reversed.__getitem__)
        return _between(self._backward, self._reversed, suffix[::-1])

    def candidates(self, prefix: str, suffix: str) -> Sequence[int]:
        """Indices of the entries that start with ``prefix`` or (whichever are fewer) end with
        ``suffix``: every entry that has both is among them."""
        if not prefix and not suffix:
            return range(len(self.entries))
        if not suffix:
            return self.starting_with(prefix)
        if not prefix:
            return self.ending_with(suffix)
        return min(self.starting_with(prefix), self.ending_with(suffix), key=len)


def _between(order: list[int], texts: list[str], start: str) -> list[int]:
    """The indices in ``order`` (sorted by ``texts``) whose text starts with ``start`` (bisection)."""
    lo = bisect.bisect_left(order, start, key=texts.__getitem__)
    hi = bisect.bisect_left(order, start + "\U0010ffff", lo, key=texts.__getitem__)
    return order[lo:hi]


class PatternSet:
    """Compiled patterns; :meth:`match` answers, per name, the tags that match."""

    def __init__(self, patterns: Iterable[Pattern]):
        self.patterns = tuple(patterns)
        self.literal: dict[str, list[int]] = defaultdict(list)
        self.by_template: list[Pattern] = []
        self.by_name: list[Pattern] = []
        for p in self.patterns:
            if p.literal:
                self.literal[p.text].append(p.tag)
            elif p.by_template:
                self.by_template.append(p)
            else:
                self.by_name.append(p)

    def match(self, names: Sequence[str]) -> list[tuple[int, ...]]:
        """For each name, the tags of the patterns that match it (sorted, once each).

        Names with the same answer share one tuple.
        """
        names = list(names)
        templates = [n.translate(TO_TEMPLATE) for n in names]
        number: dict[str, int] = {}                                     # template -> its number
        template_of_name = [number.setdefault(t, len(number)) for t in templates]
        distinct = list(number)
        template_index = SortedIndex(distinct)
        # names without digits are their own templates: then one index serves both
        name_index = template_index if distinct == names else SortedIndex(names)

        template_tags: list[tuple[int, ...]] = [()] * len(distinct)    # tags every name of a template has
        for p in self.by_template:
            for j in _hits(p, template_index.candidates(p.prefix, p.suffix), distinct, ranged=True):
                template_tags[j] += (p.tag,)

        name_tags: dict[int, tuple[int, ...]] = {}                      # tags of single names
        if self.literal:
            for i, name in enumerate(names):
                if name in self.literal:
                    name_tags[i] = tuple(self.literal[name])
        members = Members(template_of_name, len(distinct))
        for p in self.by_name:
            candidates, ranged = self._candidates(p, members, distinct, name_index)
            for i in _hits(p, candidates, names, ranged):
                name_tags[i] = name_tags.get(i, ()) + (p.tag,)

        canonical = Canonical()
        answer_of_template = [canonical(tags) for tags in template_tags]
        out = [answer_of_template[j] for j in template_of_name]
        for i, tags in name_tags.items():
            out[i] = canonical(out[i] + tags)
        return out

    @staticmethod
    def _candidates(p: Pattern, members: Members, distinct: list[str],
                    name_index: SortedIndex) -> tuple[Sequence[int], bool]:
        """The fewest names ``p`` must be tried on: those with its prefix or suffix (then True), or
        those whose template its template form accepts (then False)."""
        best = name_index.candidates(p.prefix, p.suffix)
        if p.template is not None and len(best) > len(distinct):
            accepted = [j for j, t in enumerate(distinct) if p.template.match(t)]
            if sum(len(members.of[j]) for j in accepted) < len(best):
                return [i for j in accepted for i in members.of[j]], False
        return best, True


def _hits(p: Pattern, candidates: Sequence[int], texts: list[str], ranged: bool) -> Sequence[int]:
    """The candidates whose text ``p`` matches. ``ranged``: the candidates are exactly the texts
    that start with its prefix or end with its suffix (SortedIndex.candidates)."""
    if ranged and p.simple and not (p.prefix and p.suffix):
        return candidates   # prefix* or *suffix: being in the range is matching
    if p.simple:
        least = len(p.prefix) + len(p.suffix)
        return [i for i in candidates if texts[i].startswith(p.prefix) and texts[i].endswith(p.suffix)
                and len(texts[i]) >= least]
    match = p.regex.match
    return [i for i in candidates if match(texts[i])]


class Members:
    """Template number -> the indices of its names, grouped on first use."""

    def __init__(self, template_of_name: list[int], templates: int):
        self.template_of_name, self.templates = template_of_name, templates

    @functools.cached_property
    def of(self) -> list[list[int]]:
        groups: list[list[int]] = [[] for _ in range(self.templates)]
        for i, j in enumerate(self.template_of_name):
            groups[j].append(i)
        return groups


class Canonical:
    """Tag tuples as sorted, repeat-free tuples, one shared object per distinct answer."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, ...], tuple[int, ...]] = {}

    def __call__(self, tags: tuple[int, ...]) -> tuple[int, ...]:
        found = self.seen.get(tags)
        if found is None:
            clean = tuple(sorted(set(tags)))
            found = self.seen[tags] = self.seen.setdefault(clean, clean)
        return found


def nearest(pattern: str, names: Sequence[str], n: int = 3) -> list[str]:
    """Names closest to a pattern that matched nothing (for error messages)."""
    probe = pattern[3:] if pattern.startswith("re:") else pattern
    stripped = probe.replace("*", "").strip(".")
    candidates = difflib.get_close_matches(probe, names, n=n, cutoff=0.3)
    if len(candidates) < n and stripped:
        candidates += [c for c in difflib.get_close_matches(stripped, names, n=n, cutoff=0.3) if c not in candidates]
    return candidates[:n]


def glob_captures(pattern: str, name: str) -> tuple[str, ...]:
    """What each ``*``/``?`` of a glob (or each group of a ``re:``) matched in ``name``."""
    if pattern.startswith("re:"):
        found = re.fullmatch(pattern[3:], name)
        return found.groups() if found else ()
    parts = []
    for piece in re.split(r"(\*|\?|\[[^\]]*\])", pattern):
        if piece == "*":
            parts.append("(.*)")
        elif piece == "?":
            parts.append("(.)")
        elif piece.startswith("[") and piece.endswith("]") and len(piece) > 1:
            parts.append("(" + _class_regex(piece) + ")")
        else:
            parts.append(re.escape(piece))
    found = re.fullmatch("".join(parts), name, re.S)
    return found.groups() if found else ()
