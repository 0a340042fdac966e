"""The one exception initspec raises for user mistakes."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Problem:
    """One mistake: where (config path), what is wrong, how to fix it."""

    path: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.what}"
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class InitSpecError(Exception):
    """A mistake in a spec or in its use.

    ``problems`` lists every mistake found; each names its config path
    (``initspec.rules.linear.init.std``), what was wrong and how to fix it.
    """

    def __init__(self, problems: Problem | Sequence[Problem] | str, what: str = "", fix: str = ""):
        if isinstance(problems, str):
            problems = [Problem(problems, what, fix)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(self._format())

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p.path for p in self.problems)

    def _format(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class StepArgError(Exception):
    """A step argument that does not fit the tensor; ``arg`` is its key ('' for the step itself).

    Steps raise it while resolving; the planner turns it into a :class:`Problem`
    at the step's config path (``initspec.rules.w.init.std``).
    """

    def __init__(self, arg: str, what: str, fix: str = ""):
        super().__init__(what)
        self.arg, self.what, self.fix = arg, what, fix


def suggest(word: str, choices: Iterable[str], n: int = 1) -> str:
    """' Did you mean 'x'?' for the nearest choice, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def raise_all(problems: Sequence[Problem]) -> None:
    """Raise one InitSpecError carrying every problem (duplicates once), if there is any."""
    if problems:
        raise InitSpecError(list(dict.fromkeys(problems)))
