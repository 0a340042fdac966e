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
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .regex_safety import backtracking_hazard

DIGITS = "0123456789"
TO_TEMPLATE = str.maketrans(DIGITS, "#" * len(DIGITS))
_GLOB_TOKEN = re.compile(r"\[!?\]?[^\]]*\]|.", re.S)   # a [..] / [!..] class (a leading ] is a member) or a char
_REGEX_SPECIAL = set(".^$*+?{}[]|()\\")


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
    return Pattern(text, tag, compiled, prefix=_regex_prefix(body))


def _regex_prefix(body: str) -> str:
    """Characters every match of the regex starts with (a conservative, possibly empty, guess)."""
    if "|" in body:
        return ""   # an alternative may start differently
    out = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and not body[i + 1].isalnum():
            literal, width = body[i + 1], 2
        elif char in _REGEX_SPECIAL:
            break
        else:
            literal, width = char, 1
        after = body[i + width:i + width + 1]
        if after and after in "*?{":
            break   # the character may be absent
        out.append(literal)
        if after == "+":
            break
        i += width
    return "".join(out)


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
    """Entries sorted forwards and by their reversed text, for prefix and suffix ranges."""

    def __init__(self, entries: list[str]):
        self.entries = entries
        self._forward: list[tuple[str, int]] | None = None
        self._backward: list[tuple[str, int]] | None = None

    def starting_with(self, prefix: str) -> list[int]:
        if self._forward is None:
            self._forward = sorted((e, i) for i, e in enumerate(self.entries))
        return _between(self._forward, prefix)

    def ending_with(self, suffix: str) -> list[int]:
        if self._backward is None:
            self._backward = sorted((e[::-1], i) for i, e in enumerate(self.entries))
        return _between(self._backward, suffix[::-1])

    def candidates(self, prefix: str, suffix: str) -> Sequence[int]:
        """Entries that may start with ``prefix`` and end with ``suffix`` (the narrower range)."""
        if not prefix and not suffix:
            return range(len(self.entries))
        if not suffix:
            return self.starting_with(prefix)
        if not prefix:
            return self.ending_with(suffix)
        first, last = self.starting_with(prefix), self.ending_with(suffix)
        return first if len(first) <= len(last) else last


def _between(ordered: list[tuple[str, int]], start: str) -> list[int]:
    lo = bisect.bisect_left(ordered, (start,))
    hi = bisect.bisect_left(ordered, (start + "\U0010ffff",), lo)
    return [i for _, i in ordered[lo:hi]]


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
        templates = [template_of(n) for n in names]
        members: dict[str, list[int]] = defaultdict(list)   # template -> indices of its names
        for i, t in enumerate(templates):
            members[t].append(i)
        distinct = list(members)
        template_index = SortedIndex(distinct)
        name_index = SortedIndex(names)

        template_tags: dict[str, list[int]] = defaultdict(list)   # tags every name of a template has
        for p in self.by_template:
            for j in template_index.candidates(p.prefix, p.suffix):
                if p.matches(distinct[j]):
                    template_tags[distinct[j]].append(p.tag)

        name_tags: dict[int, list[int]] = defaultdict(list)        # tags of single names
        if self.literal:
            where = _positions(names)
            for text, tags in self.literal.items():
                for i in where.get(text, ()):
                    name_tags[i].extend(tags)
        for p in self.by_name:
            for i in self._candidates(p, names, members, distinct, template_index, name_index):
                if p.matches(names[i]):
                    name_tags[i].append(p.tag)

        answers: dict[tuple[int, ...], tuple[int, ...]] = {}   # one shared tuple per distinct answer
        per_template = {t: _canonical(tuple(template_tags.get(t, ())), answers) for t in distinct}
        out = [per_template[t] for t in templates]
        for i, tags in name_tags.items():
            out[i] = _canonical(out[i] + tuple(tags), answers)
        return out

    @staticmethod
    def _candidates(p: Pattern, names: list[str], members: dict[str, list[int]], distinct: list[str],
                    template_index: SortedIndex, name_index: SortedIndex) -> Sequence[int]:
        """The fewest names ``p`` must be tried on: by prefix, by suffix, or by template."""
        best: Sequence[int] = range(len(names))
        if p.prefix or p.suffix:
            best = name_index.candidates(p.prefix, p.suffix)
        if p.template is not None and len(best) > len(distinct):
            screened = [i for j in template_index.candidates(template_of(p.prefix), template_of(p.suffix))
                        if p.template.match(distinct[j]) for i in members[distinct[j]]]
            if len(screened) < len(best):
                best = screened
        return best


def _canonical(tags: tuple[int, ...], answers: dict[tuple[int, ...], tuple[int, ...]]) -> tuple[int, ...]:
    """``tags`` sorted and without repeats, as the one shared tuple for that answer."""
    key = tuple(sorted(set(tags))) if len(tags) > 1 else tags
    return answers.setdefault(key, key)


def _positions(names: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        out[name].append(i)
    return out


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
