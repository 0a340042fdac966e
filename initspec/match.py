"""Matching many names against many patterns, fast.

Patterns are globs over whole names (``*`` crosses dots), ``re:<regex>``
(whole-name), or literal names. A :class:`PatternSet` compiles them once:

* literal names go into a dict;
* names are grouped by *template*: every dot-separated component made only
  of digits (and ``#``) becomes as many ``#`` (``layers.17.ln_1.weight`` ->
  ``layers.##.ln_1.weight``); a model with 100k tensors has a few hundred;
* a glob whose digits sit next to letters (``*.w2.weight``, ``*ln_[12]*``)
  and that has no other digit cannot tell ``h.3.x`` from ``h.17.x``, so it is
  matched once per template, and names sharing a template share the answer;
* every other glob or regex runs its regex only on the names of templates
  its *template regex* accepts (its regex with digits read as themselves or
  ``#`` and everything but literals relaxed, built from the stdlib's regex
  parser); when its literal prefix has digits (``blocks.3.*``), only on the
  range of the template's sorted names that starts with it (bisection); a
  pattern that takes every name of a template is recorded for the template.

100k names x 200 patterns then costs a few dict lookups per name.
"""
from __future__ import annotations

import bisect
import fnmatch
import re
from collections import defaultdict
from itertools import compress, count, repeat
from operator import itemgetter
from dataclasses import dataclass
from typing import Iterable, Sequence

from .regex_safety import backtracking_hazard

_DIGITS_AND_HASH = "0123456789#"
_TO_HASH = str.maketrans("0123456789", "#" * 10)      # every ASCII digit -> "#"
_DROP_NUMERIC = str.maketrans("", "", _DIGITS_AND_HASH)  # what is left of a component besides digits and "#"
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


_GLOB_CLASS = re.compile(r"\[!?\]?[^\]]*\]")   # fnmatch's [..] / [!..] (a leading ] is a member)


def _template_safe(pattern: Pattern) -> bool:
    """A glob whose answer depends only on the name's template (:func:`template_of`).

    Templates change only components made of digits and ``#``. ``*`` and ``?`` take
    any character, so they cannot tell a digit from ``#``; a literal digit or ``#``,
    or a class that takes some of the digits and ``#`` but not all, can, unless a
    literal letter (any character but digits, ``#`` and ``.``) sits in the same
    stretch of literals and dot-free classes: then every name it matches has a
    letter in that component, which the template keeps as it is.
    """
    text = pattern.text
    if pattern.regex is None or text.startswith("re:"):
        return False
    if any(c in "[]" for c in _GLOB_CLASS.sub("", text)):
        return False
    stretch: list[tuple[str, bool]] = []   # (token, tells a digit from '#' apart) since the last break
    for token in _glob_tokens(text) + ["*"]:
        tells = (token in _DIGITS_AND_HASH if len(token) == 1
                 else len({_class_takes(token, c) for c in _DIGITS_AND_HASH}) > 1)
        if token in ("*", "?", ".") or (len(token) > 1 and _class_takes(token, ".")):
            glued = any(len(t) == 1 and t not in _DIGITS_AND_HASH for t, _ in stretch)
            if (tells and len(token) > 1) or (not glued and any(told for _, told in stretch)):
                return False   # (a class that takes '.' may sit in any component: it glues to nothing)
            stretch = []
        else:
            stretch.append((token, tells))
    return True


def _glob_tokens(text: str) -> list[str]:
    """A glob as its characters and ``[..]`` classes."""
    tokens: list[str] = []
    at = 0
    for found in _GLOB_CLASS.finditer(text):
        tokens += text[at:found.start()]
        tokens.append(found.group())
        at = found.end()
    return tokens + list(text[at:])


def _class_takes(token: str, char: str) -> bool:
    return re.fullmatch(fnmatch.translate(token), char) is not None


def template_of(name: str) -> str:
    """``name`` with every component made only of digits and ``#`` written as ``#``s."""
    return ".".join("#" * len(c) if c and not c.translate(_DROP_NUMERIC) else c for c in name.split("."))


@dataclass(frozen=True)
class _Screen:
    """A pattern with what every name it matches must show in its template (digits -> ``#``)."""

    pattern: Pattern
    prefix: str                     # every name it matches starts with this
    template: re.Pattern | None     # the template of every name it matches matches this (None: unknown)

    @property
    def narrows(self) -> bool:
        """The prefix has digits, so it tells apart names that share a template."""
        return self.prefix != self.prefix.translate(_TO_HASH)


def _screen(pattern: Pattern) -> _Screen:
    return _Screen(pattern, _literal_prefix(pattern), _template_regex(pattern.regex.pattern))


class PatternSet:
    """Compiled patterns; :meth:`match` answers, per name, the tags that match."""

    def __init__(self, patterns: Iterable[Pattern]):
        self.patterns = tuple(patterns)
        self.literal: dict[str, list[int]] = defaultdict(list)
        self.templated: list[Pattern] = []
        self.screened: list[_Screen] = []
        for p in self.patterns:
            if p.literal:
                self.literal[p.text].append(p.tag)
            elif _template_safe(p):
                self.templated.append(p)
            else:
                self.screened.append(_screen(p))

    def match(self, names: Sequence[str]) -> list[list[int]]:
        """For each name, the tags of matching patterns (sorted, duplicates removed).

        The returned lists may be shared between names: do not mutate them.

        Names are grouped by template: template-safe globs are answered once per
        template; every other pattern runs its regex only on the names of the
        templates its template regex accepts (narrowed by bisection in the
        template's sorted names when its prefix has digits).
        """
        names = list(names)
        none: list[int] = []
        out = [none] * len(names)  # shared lists: never mutated
        if not names:
            return out
        groups = _template_groups(names)                     # template -> name indices, in order
        by_template = {t: sorted({p.tag for p in self.templated if p.regex.match(t)}) for t in groups}
        group_names: dict[str, list[str]] = {}                 # template -> its names, in order
        ordered: dict[str, tuple[list[str], list[int]]] = {}  # template -> its names sorted, their indices

        def names_of(t: str) -> list[str]:
            found = group_names.get(t)
            if found is None:
                found = group_names[t] = list(map(names.__getitem__, groups[t]))
            return found

        extra: dict[int, list[int]] = defaultdict(list)       # name index -> tags beyond its template's
        where: dict[str, dict[str, list[int]]] = {}            # template -> its names -> their indices
        for text, tags in self.literal.items():
            t = template_of(text)
            if t in groups:
                if t not in where:
                    where[t] = _positions(names_of(t), groups[t])
                for i in where[t].get(text, ()):
                    extra[i].extend(tags)
        for screen in self.screened:
            match, tag, prefix = screen.pattern.regex.match, screen.pattern.tag, screen.prefix
            for t, members in groups.items():
                if screen.template is not None and not screen.template.match(t):
                    continue
                if screen.narrows and len(members) > 64:
                    if t not in ordered:
                        order = sorted(members, key=names.__getitem__)
                        ordered[t] = (list(map(names.__getitem__, order)), order)
                    sorted_names, order = ordered[t]
                    lo = bisect.bisect_left(sorted_names, prefix)
                    hi = bisect.bisect_left(sorted_names, prefix + "\U0010ffff", lo)
                    candidates, within = sorted_names[lo:hi], order[lo:hi]
                else:
                    candidates, within = names_of(t), members
                hits = list(compress(within, map(match, candidates)))   # the regex runs in C
                if len(hits) == len(members):   # every name of the template: one answer for all
                    by_template[t] = sorted({*by_template[t], tag})
                    continue
                for i in hits:
                    extra[i].append(tag)
        for t, members in groups.items():
            if by_template[t]:
                for _ in map(out.__setitem__, members, repeat(by_template[t])):   # in C
                    pass
        merged: dict[tuple, list[int]] = {}  # (answer so far, extra tags) -> one shared merged list
        for i, tags in extra.items():
            key = (id(out[i]), *tags)        # out[i] is a by_template list (alive) or `none`
            found = merged.get(key)
            if found is None:
                found = merged[key] = sorted(set(out[i]).union(tags))
            out[i] = found
        return out


def _positions(names: list[str], indices: list[int]) -> dict[str, list[int]]:
    """Name -> its indices (a name may occur more than once)."""
    out = dict(zip(names, map(list, zip(indices))))
    if len(out) < len(names):
        out = {}
        for name, i in zip(names, indices):
            out.setdefault(name, []).append(i)
    return out


def _template_groups(names: list[str]) -> dict[str, list[int]]:
    """Template (:func:`template_of`) -> the indices of its names, in order.

    Every digit goes to ``#`` first (one C-level pass over all names); then, in the
    few groups whose ``#``s partly sit next to letters (``w#``, ``ln_#``), the names'
    own characters there split the group.
    """
    joined = "\n".join(names)
    if joined.count("\n") == len(names) - 1:
        hashed = joined.translate(_TO_HASH).split("\n")
    else:
        hashed = [n.translate(_TO_HASH) for n in names]
    kept = {t: _kept_positions(t) for t in dict.fromkeys(hashed)}
    pick = {t: itemgetter(*at) if at else None for t, at in kept.items()}
    found: dict = defaultdict(list)   # template, or (digit template, the names' characters there) -> indices
    for i, t, name in zip(count(), hashed, names):
        get = pick[t]
        found[t if get is None else (t, get(name))].append(i)
    groups: dict[str, list[int]] = {}
    for key, members in found.items():
        if isinstance(key, str):
            groups[key] = members
            continue
        t, chars = key
        template = list(t)
        for at, char in zip(kept[t], chars if len(kept[t]) > 1 else (chars,)):
            template[at] = char
        groups["".join(template)] = members
    return groups


def _kept_positions(hashed: str) -> list[int]:
    """Positions of ``#`` (from a digit or ``#``) in components that have other characters too."""
    kept, at = [], 0
    for component in hashed.split("."):
        if "#" in component and component.strip("#"):
            kept += [at + i for i, c in enumerate(component) if c == "#"]
        at += len(component) + 1
    return kept


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


def _template_regex(regex: str) -> re.Pattern | None:
    """A regex that the template of every name ``regex`` matches also matches (None if unknown).

    Built from the stdlib parser's view of ``regex``: literals become their template
    character, any one-character item becomes ``.``, groups and alternatives keep their
    structure and everything else (repeats, anchors, lookarounds) becomes ``.*``.
    Case-insensitive patterns get no screen.
    """
    from re import _constants as c, _parser
    try:
        parsed = _parser.parse(regex)
    except Exception:  # pragma: no cover - the pattern compiled, so it parses
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    one_char = (c.ANY, c.IN, c.NOT_LITERAL)
    atomic = getattr(c, "ATOMIC_GROUP", None)

    def build(items) -> str:
        out = []
        for op, value in items:
            if op is c.LITERAL:   # a digit stays itself next to letters, else it is "#"
                char = chr(value)
                out.append(f"[#{char}]" if char in "0123456789" else re.escape(char))
            elif op is c.SUBPATTERN and not value[1] & re.IGNORECASE:
                out.append("(?:" + build(value[3]) + ")")
            elif atomic is not None and op is atomic:
                out.append("(?:" + build(value) + ")")
            elif op is c.BRANCH:
                out.append("(?:" + "|".join(build(branch) for branch in value[1]) + ")")
            elif op in one_char:
                out.append(".")
            else:
                out.append(".*")
        return "".join(out)

    screen = re.compile("(?s:" + build(parsed) + ")\\Z")
    build = None  # break the recursive closure's reference cycle
    return screen


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
