"""Matching many names against many patterns, fast.

Patterns are globs over whole names (``*`` crosses dots), ``re:<regex>``
(whole-name), or literal names. A :class:`PatternSet` compiles them once:

* literal names go into a dict;
* globs made only of non-digit literals and ``*`` cannot tell ``h.3.x`` from
  ``h.17.x``, so they are matched once per *template* (digit runs replaced
  by ``#``), and names sharing a template share the answer;
* globs that start with plain characters (``blocks.3.*``) only meet the
  names that start with that prefix: a range found by bisection in the
  sorted names;
  a regex's leading literal characters count as its prefix;
* the rest (globs starting with ``*`` that contain digits, ``?`` or ``[``,
  regexes with no literal prefix) are tested only on names that contain
  every literal run of the glob.

100k names x 200 patterns then costs a few dict lookups per name.
"""
from __future__ import annotations

import bisect
import fnmatch
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from .regex_safety import backtracking_hazard

_DIGITS = re.compile(r"\d+")
_GLOB_META = re.compile(r"[*?\[]")


class PatternError(Exception):
    def __init__(self, pattern: str, what: str):
        super().__init__(what)
        self.pattern, self.what = pattern, what


@dataclass(frozen=True)
class Pattern:
    text: str
    tag: int                   # caller's index (rule or member number)
    regex: re.Pattern | None   # None for literal names

    @property
    def literal(self) -> bool:
        return self.regex is None


def glob_to_regex(glob: str) -> str:
    """fnmatch's translation, anchored; ``*`` may cross dots."""
    return fnmatch.translate(glob)


def compile_pattern(text: str, tag: int) -> Pattern:
    if not isinstance(text, str) or not text:
        raise PatternError(str(text), f"a pattern must be a non-empty string, got {text!r}")
    if text.startswith("re:"):
        body = text[3:]
        try:
            compiled = re.compile(f"(?s:{body})\\Z")
        except re.error as exc:
            raise PatternError(text, f"invalid regex {body!r}: {exc}") from None
        hazard = backtracking_hazard(body)
        if hazard:
            raise PatternError(text, f"regex {body!r} could backtrack for hours: it has {hazard}; "
                                     "use a glob or a regex without nested repetition")
        return Pattern(text, tag, compiled)
    if not _GLOB_META.search(text):
        return Pattern(text, tag, None)
    if text.count("[") != text.count("]"):
        raise PatternError(text, f"invalid glob {text!r}: unbalanced '[' ']'")
    try:
        return Pattern(text, tag, re.compile(glob_to_regex(text)))
    except re.error as exc:  # pragma: no cover - fnmatch output is valid regex
        raise PatternError(text, f"invalid glob {text!r}: {exc}") from None


def _template_safe(pattern: Pattern) -> bool:
    text = pattern.text
    return (pattern.regex is not None and not text.startswith("re:")
            and not any(c.isdigit() or c in "?[]" for c in text))


class PatternSet:
    """Compiled patterns; :meth:`match` answers, per name, the tags that match."""

    def __init__(self, patterns: Iterable[Pattern]):
        self.patterns = tuple(patterns)
        self.literal: dict[str, list[int]] = defaultdict(list)
        self.templated: list[Pattern] = []
        self.prefixed: dict[str, list[Pattern]] = defaultdict(list)
        self.rest: list[tuple[str, Pattern]] = []
        for p in self.patterns:
            if p.literal:
                self.literal[p.text].append(p.tag)
            elif _template_safe(p):
                self.templated.append(p)
            elif (prefix := _literal_prefix(p)):
                self.prefixed[prefix].append(p)
            else:
                self.rest.append((_literal_runs(p), p))

    def match(self, names: Sequence[str]) -> list[list[int]]:
        """For each name, the tags of matching patterns (sorted, duplicates removed).

        The returned lists may be shared between names: do not mutate them.

        Work is done per pattern group over all names, not per name, so the
        Python-level cost per name is a few list operations.
        """
        names = list(names)
        out: list[list[int]] = [[] for _ in names]
        if self.templated:
            templates = _DIGITS.sub("#", "\n".join(names)).split("\n") if names else []
            by_template: dict[str, list[int]] = {}
            for template in set(templates):
                by_template[template] = [p.tag for p in self.templated if p.regex.match(template)]
            out = [by_template[t] for t in templates]  # shared lists: never mutated
        extra: dict[int, list[int]] = defaultdict(list)
        if self.literal:
            index = {name: i for i, name in reversed(list(enumerate(names)))}
            for text, tags in self.literal.items():
                if text in index:
                    extra[index[text]].extend(tags)
        if self.prefixed:
            order = sorted(range(len(names)), key=names.__getitem__)
            ordered = [names[i] for i in order]
            for prefix, patterns in self.prefixed.items():
                lo = bisect.bisect_left(ordered, prefix)
                hi = bisect.bisect_left(ordered, prefix + "\U0010ffff", lo)
                for j in range(lo, hi):
                    name = ordered[j]
                    for p in patterns:
                        if p.regex.match(name):
                            extra[order[j]].append(p.tag)
        for runs, p in self.rest:
            match = p.regex.match
            hits = range(len(names))
            for run in runs:
                hits = [i for i in hits if run in names[i]]
            for i in hits:
                if match(names[i]):
                    extra[i].append(p.tag)
        for i, tags in extra.items():
            if tags:
                out[i] = sorted(set(out[i] + tags))
        return out


def _literal_prefix(pattern: Pattern) -> str:
    """The plain characters every match starts with (for a regex, its leading literals)."""
    if pattern.text.startswith("re:"):
        return _regex_prefix(pattern.text[3:])
    found = _GLOB_META.search(pattern.text)
    return pattern.text[: found.start()] if found else pattern.text


def _regex_prefix(body: str) -> str:
    try:
        from re import _constants, _parser  # the stdlib's own regex parser
        parsed = _parser.parse(body)
    except Exception:  # pragma: no cover - invalid regexes fail at compile time first
        return ""
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
        return ""
    prefix = []
    for op, value in parsed:
        if op is not _constants.LITERAL:
            break
        prefix.append(chr(value))
    return "".join(prefix)


def _literal_runs(pattern: Pattern) -> list[str]:
    """Plain-character runs every match of a glob contains, longest first ([] for regexes)."""
    if pattern.text.startswith("re:"):
        return []
    runs = [r for r in re.split(r"\*|\?|\[[^\]]*\]", pattern.text) if r]
    return sorted(runs, key=len, reverse=True)


def nearest(pattern: str, names: Sequence[str], n: int = 3) -> list[str]:
    """Names closest to a pattern that matched nothing (for error messages)."""
    import difflib
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
            parts.append("(" + fnmatch.translate(piece)[4:-3] + ")")
        else:
            parts.append(re.escape(piece))
    found = re.fullmatch("".join(parts), name, re.S)
    return found.groups() if found else ()
