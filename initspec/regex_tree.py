"""Facts read off the parse tree of an ``re:`` pattern (the stdlib's own regex parser).

* :func:`backtracking_hazard`: refuse patterns that can backtrack catastrophically;
* :func:`literal_ends`: the characters every match starts and ends with;
* :func:`template_regex`: a regex every name template of a match matches
  (digits written as ``#``), so a regex is tried only on plausible names.

The parser is ``re._parser`` on Python >= 3.11 and ``sre_parse`` on 3.10; both
are stable in practice but not public API, so the two optional facts fall back
to "unknown" (no screening, still exact) when parsing fails. Hazards:

Python's ``re`` backtracks and holds the GIL while it does: ``re:(.*)*x``
against a 35-character parameter name never returns, and no timeout can stop
it. A spec (or a command-line override of one) must not be able to hang
planning, so patterns are checked statically before they are compiled: a
repetition that repeats something which itself repeats without bound
(``(a+)+``, ``(.*)*``), or an unbounded repetition of an alternation
(``(a|.)*``), is refused, and so are more than MAX_UNBOUNDED unbounded
repetitions in one pattern (``.*.*.*.*.*.*.*x`` takes time ~ len(name)**7).
Globs are translated without backtracking hazards by :mod:`fnmatch`.
"""
from __future__ import annotations

import re

try:  # Python >= 3.11
    from re import _constants as C, _parser as parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as parser  # type: ignore[no-redef]

DIGITS = "0123456789"

_REPEATS = {C.MAX_REPEAT, C.MIN_REPEAT}
MAX_UNBOUNDED = 4


def backtracking_hazard(body: str) -> str:
    """'' when ``body`` (a valid regex) is safe, else what makes it unsafe."""
    items = parser.parse(body)
    count = _count(items, _unbounded_repeat)
    if count > MAX_UNBOUNDED:
        return f"{count} unbounded repetitions (* + {{n,}}; limit {MAX_UNBOUNDED})"
    return _scan(items)


def _count(items, wanted) -> int:
    return sum(int(wanted(op, av)) + sum(_count(c, wanted) for c in _children(op, av)) for op, av in items)


def _children(op, av) -> list:
    if op in _REPEATS or op == getattr(C, "POSSESSIVE_REPEAT", None):
        return [av[2]]
    if op == C.SUBPATTERN:
        return [av[-1]]
    if op == C.BRANCH:
        return list(av[1])
    if op in (C.ASSERT, C.ASSERT_NOT):
        return [av[1]]
    if op == getattr(C, "ATOMIC_GROUP", None):
        return [av]
    if op == C.GROUPREF_EXISTS:
        return [p for p in av[1:] if p is not None]
    return []


def _has(items, wanted) -> bool:
    for op, av in items:
        if wanted(op, av) or any(_has(child, wanted) for child in _children(op, av)):
            return True
    return False


def _unbounded_repeat(op, av) -> bool:
    return op in _REPEATS and av[1] == C.MAXREPEAT


def _branch(op, av) -> bool:
    return op == C.BRANCH


def _scan(items) -> str:
    for op, av in items:
        if op in _REPEATS and av[1] > 1:
            body = av[2]
            if _has(body, _unbounded_repeat):
                return "a repeated group that itself repeats without bound, such as (a+)+ or (.*)*"
            if av[1] == C.MAXREPEAT and _has(body, _branch):
                return "an unbounded repetition of alternatives, such as (a|.)*"
        for child in _children(op, av):
            found = _scan(child)
            if found:
                return found
    return ""


def literal_ends(body: str) -> tuple[str, str]:
    """(prefix, suffix): literal characters every match of the regex starts and ends with."""
    try:
        parsed = parser.parse(body)
    except Exception:  # pragma: no cover - the pattern compiled, so it parses
        return "", ""
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
        return "", ""
    items = list(parsed)

    def leading(seq) -> str:
        out = []
        for op, value in seq:
            if op is not C.LITERAL:
                break
            out.append(chr(value))
        return "".join(out)

    prefix = leading(items)
    suffix = leading(reversed(items))[::-1]
    if len(prefix) == len(items):   # all literal: the whole text
        suffix = prefix
    return prefix, suffix


def template_regex(body: str) -> re.Pattern | None:
    """A regex that the template (digits written as ``#``) of every name ``body`` matches also
    matches, or None when unknown (case-insensitive patterns, a parser that refuses).

    Literals become their template character, any one-character item becomes ``.``,
    groups and alternatives keep their structure, everything else becomes ``.*``.
    """
    try:
        parsed = parser.parse(body)
    except Exception:  # pragma: no cover
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    one_char = (C.ANY, C.IN, C.NOT_LITERAL)
    atomic = getattr(C, "ATOMIC_GROUP", None)
    return re.compile("(?s:" + _template_of(parsed, one_char, atomic) + ")\\Z")


def _template_of(items, one_char, atomic) -> str:
    out = []
    for op, value in items:
        if op is C.LITERAL:
            char = chr(value)
            out.append("#" if char in DIGITS else re.escape(char))
        elif op is C.SUBPATTERN and not value[1] & re.IGNORECASE:
            out.append("(?:" + _template_of(value[3], one_char, atomic) + ")")
        elif atomic is not None and op is atomic:
            out.append("(?:" + _template_of(value, one_char, atomic) + ")")
        elif op is C.BRANCH:
            out.append("(?:" + "|".join(_template_of(b, one_char, atomic) for b in value[1]) + ")")
        elif op in one_char:
            out.append(".")
        else:
            out.append(".*")
    return "".join(out)
