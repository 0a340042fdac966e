"""The spec schema (pydantic) and its validation into frozen data.

Errors come back re-keyed to the user's config path
(``initspec.rules.linear.init.std: must be > 0 (got -1)``), never as
pydantic's own report.
"""
from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import catalog, lsuv  # noqa: F401  (register the built-in steps)
from .errors import InitSpecError, Problem, StepArgError, raise_all, suggest
from .steps import REQUIRED, STEPS, check_value

ROOT = "initspec"
NUMERIC_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    return [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value


class Step(BaseModel):
    """One step of a pipeline: a catalog or registered step, or a custom callable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    fn: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)

    def to_data(self) -> Any:
        """As a spec writes it: ``zeros`` or ``{name: normal, std: 0.02}`` or ``{fn: ..., ...}``."""
        if self.name is not None and not self.args:
            return self.name
        return {"name": self.name, **self.args} if self.name is not None else {"fn": self.fn, **self.args}

    def __str__(self) -> str:
        head = self.name or f"fn:{self.fn}"
        if not self.args:
            return head
        return head + "(" + ", ".join(f"{k}={v}" for k, v in self.args.items()) + ")"


class Part(BaseModel):
    """Pieces of one dimension: ``of`` equal pieces, or ``sizes`` (numbers or expressions);
    ``index`` picks some (an int or a list), else every piece is initialized on its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: Int = 0
    of: Int | None = None
    sizes: list[Int | str] | None = None
    index: Int | list[Int] | None = None

    @field_validator("dim")
    @classmethod
    def _dim(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"dim must be >= 0 (got {value})")
        return value

    @field_validator("of")
    @classmethod
    def _of(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"of must be >= 1 (got {value})")
        return value

    @field_validator("index")
    @classmethod
    def _index(cls, value: Any) -> Any:
        for i in value if isinstance(value, list) else [value]:
            if i is not None and i < 0:
                raise ValueError(f"index must be >= 0 (got {i})")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> "Part":
        if (self.of is None) == (self.sizes is None):
            raise ValueError("give exactly one of of: (equal pieces) or sizes: (a list)"
                             + (f" (got of: {self.of} and sizes: {self.sizes})" if self.of is not None else ""))
        if self.sizes is not None and not self.sizes:
            raise ValueError("sizes must list at least one size")
        return self


class Rule(BaseModel):
    """Which tensors (match/exclude/module/within/ndim, part) get which pipeline (init)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: list[str]
    exclude: list[str] = Field(default_factory=list)
    module: list[str] = Field(default_factory=list)
    within: list[str] = Field(default_factory=list)
    ndim: list[Int] = Field(default_factory=list)
    part: Part | None = None
    priority: Int = 0
    init: tuple[Step, ...]
    buffers: bool = False
    transposed: bool = False
    optional: bool = False
    init_is_list: bool = Field(default=True, exclude=True)

    @field_validator("match", "exclude", "module", "within", "ndim", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("match")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("match must name at least one pattern")
        return value


    def to_data(self) -> dict[str, Any]:
        """As a spec writes it (keys left at their defaults are omitted)."""
        data = self.model_dump(exclude_defaults=True, exclude={"init", "init_is_list", "part"})
        if self.part is not None:
            data["part"] = self.part.model_dump(exclude_none=True, exclude_defaults=True)
        steps = [step.to_data() for step in self.init]
        data["init"] = steps if self.init_is_list or len(steps) != 1 else steps[0]
        return data


class Tie(BaseModel):
    """A tie group: the first member is the source, the rest become it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    members: list[str]
    optional: bool = False

    @field_validator("members")
    @classmethod
    def _two(cls, value: list[str]) -> list[str]:
        if len(value) < 2:
            raise ValueError(f"a tie group needs a source and at least one target (got {value})")
        return value


class Spec(BaseModel):
    """A validated initspec spec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: Int = 0
    default: Literal["keep", "reset", "error"] = "keep"
    strict: bool = True
    streams: Literal["fast", "portable"] = "fast"
    vars: dict[str, float | int] = Field(default_factory=dict)
    rules: dict[str, Rule] = Field(default_factory=dict)
    ties: dict[str, Tie] = Field(default_factory=dict)
    description: str = ""

    def to_data(self) -> dict[str, Any]:
        """Plain data that :func:`initspec.load_spec` turns back into this spec."""
        data = self.model_dump(exclude={"rules", "ties"})
        data["rules"] = {name: rule.to_data() for name, rule in self.rules.items()}
        data["ties"] = {name: tie.model_dump() for name, tie in self.ties.items()}
        return data


FIELDS = {
    "spec": list(Spec.model_fields),
    "rule": [f for f in Rule.model_fields if f != "init_is_list"],
    "tie": list(Tie.model_fields),
    "part": list(Part.model_fields),
}
PART_FIX = "write part: {of: 4} (equal pieces), part: {of: 4, index: 1}, or part: {sizes: [256, 64, 64], index: [1, 2]}"


def validate(data: Any) -> Spec:
    """Validate plain data (from :func:`initspec.load.load_data`) into a :class:`Spec`."""
    if isinstance(data, Spec):
        return data
    problems: list[Problem] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InitSpecError(ROOT, f"a spec must be a mapping, got {type(data).__name__}",
                            "write keys such as rules:, ties:, seed:")
    data = dict(data)
    for key in ("rules", "ties"):
        if isinstance(data.get(key), list):
            problems.append(Problem(f"{ROOT}.{key}", f"{key} must be a mapping keyed by name, not a list",
                                    f"write {key}: {{my_name: ...}} (lists do not compose with Hydra overrides)"))
            data.pop(key)
    rules = _named(data, "rules", problems)
    ties = _named(data, "ties", problems)
    data["rules"] = {name: _normalize_rule(name, rule, problems) for name, rule in rules.items()}
    data["rules"] = {k: v for k, v in data["rules"].items() if v is not None}
    data["ties"] = {name: ({"members": tie} if isinstance(tie, list) else tie) for name, tie in ties.items()}
    listed = {name for name, tie in ties.items() if isinstance(tie, list)}
    problems += check_vars(data.get("vars"))
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        reported = {p.path for p in problems}
        errors = [_user_loc(err, data, listed) for err in exc.errors()]
        for err in errors:
            if _misspelled(err, errors):
                continue  # the unknown-key problem already says "did you mean"
            problem = _from_pydantic(err)
            if not any(problem.path == r or problem.path.startswith(r + ".") for r in reported):
                problems.append(problem)
                reported.add(problem.path)
        raise_all(problems)
        raise
    raise_all(problems)
    return spec


def _named(data: dict, key: str, problems: list[Problem]) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        problems.append(Problem(f"{ROOT}.{key}", f"must be a mapping keyed by name, got {type(value).__name__}", ""))
        return {}
    out = {}
    for name, item in value.items():
        if isinstance(name, bool):
            problems.append(Problem(
                f"{ROOT}.{key}.{name}",
                f"a {key[:-1]} name became the boolean {name}: YAML 1.1 reads off/no/yes/on as booleans",
                f"quote the name ('off') or rename it"))
            continue
        if not isinstance(name, str):
            name = str(name)
        if item is None:
            continue  # null disables (Hydra: initspec.rules.biases=null)
        out[name] = item
    return out


def check_vars(variables: Any) -> list[Problem]:
    from .tensor_info import ExprNames
    problems = []
    if isinstance(variables, dict):
        for name, value in variables.items():
            path = f"{ROOT}.vars.{name}"
            if not isinstance(name, str) or not name.isidentifier():
                problems.append(Problem(path, f"var name {name!r} is not an identifier", "use letters, digits and _"))
            elif name in ExprNames.TENSOR_NAMES:
                problems.append(Problem(path, f"var {name!r} shadows a built-in expression name",
                                        "rename it; built-in names: " + ", ".join(ExprNames.TENSOR_NAMES)))
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(Problem(path, f"vars must be numbers, got {value!r}",
                                        "give a number, or interpolate one (${model.n_layer})"))
    return problems


def _normalize_rule(name: str, rule: Any, problems: list[Problem]) -> Any:
    """Turn ``init`` into a list of {name|fn, args} dicts; keep the rest for pydantic."""
    path = f"{ROOT}.rules.{name}"
    if not isinstance(rule, dict):
        problems.append(Problem(path, f"a rule must be a mapping with match: and init:, got {rule!r}",
                                "write {match: '*.weight', init: {name: normal, std: 0.02}}"))
        return None
    rule = dict(rule)
    if "init" not in rule:
        return rule  # pydantic reports it missing
    init = rule["init"]
    is_list = isinstance(init, list)
    steps = []
    for i, step in enumerate(init if is_list else [init]):
        step_path = f"{path}.init.{i}" if is_list else f"{path}.init"
        parsed = _parse_step(step, step_path, problems)
        if parsed is not None:
            steps.append(parsed)
    if is_list and not init:
        problems.append(Problem(f"{path}.init", "init is an empty list", "give at least one step, e.g. zeros"))
    rule["init"] = steps
    rule["init_is_list"] = is_list
    problems += _check_steps(name, steps, is_list)
    return rule


def _parse_step(step: Any, path: str, problems: list[Problem]) -> dict | None:
    if isinstance(step, str):
        step = {"name": step}
    if not isinstance(step, dict):
        problems.append(Problem(path, f"a step must be a name or a mapping, got {step!r}",
                                "write zeros or {name: normal, std: 0.02}"))
        return None
    step = dict(step)
    name, fn = step.pop("name", None), step.pop("fn", None)
    if (name is None) == (fn is None):
        what = "a step needs exactly one of name: or fn:" + (f" (got both {name!r} and {fn!r})" if name else "")
        problems.append(Problem(path, what, "write {name: normal, std: 0.02} or {fn: my_pkg.inits.f}"))
        return None
    if name is not None:
        if not isinstance(name, str) or name not in STEPS:
            problems.append(Problem(f"{path}.name", f"unknown step {name!r}.{suggest(name, STEPS)}",
                                    "known steps: " + ", ".join(sorted(STEPS))))
            return None
        return {"name": name, "args": step}
    if not isinstance(fn, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", fn):
        problems.append(Problem(f"{path}.fn", f"fn must be a dotted path such as torch.nn.init.orthogonal_, got {fn!r}", ""))
        return None
    return {"fn": fn, "args": step}


def step_path(rule_name: str, rule: Rule | bool, index: int, arg: str = "") -> str:
    """Config path of step ``index`` of a rule (and optionally one of its args)."""
    is_list = rule if isinstance(rule, bool) else rule.init_is_list
    base = f"{ROOT}.rules.{rule_name}.init" + (f".{index}" if is_list else "")
    return f"{base}.{arg}" if arg else base


def _check_steps(rule_name: str, steps: list[dict], is_list: bool) -> list[Problem]:
    """Argument names and literal values of each step, before any model is seen."""
    problems = []
    for i, step in enumerate(steps):
        if "fn" in step:
            for key, value in step["args"].items():
                if isinstance(value, dict) and set(value) != {"expr"}:
                    problems.append(Problem(step_path(rule_name, is_list, i, key),
                                            f"a mapping argument must be {{expr: '...'}}, got {value!r}", ""))
            continue
        name = step["name"]
        spec_args = STEPS[name].args
        for key, value in step["args"].items():
            if not isinstance(key, str) or key not in spec_args:
                known = list(spec_args) or ["(none)"]
                problems.append(Problem(step_path(rule_name, is_list, i, key),
                                        f"unknown argument {key!r} for step {name!r}.{suggest(key, spec_args)}",
                                        f"{name} takes: {', '.join(known)}"))
                continue
            arg = spec_args[key]
            if arg.kind == "number" and isinstance(value, str) and not NUMERIC_RE.match(value.strip()):
                continue  # an expression: checked per parameter at plan time
            if arg.kind == "number" and isinstance(value, str):
                value = float(value)
            try:
                check_value(key, arg, value)
            except StepArgError as exc:
                problems.append(Problem(step_path(rule_name, is_list, i, key), exc.what, exc.fix))
        for key, arg in spec_args.items():
            if arg.default is REQUIRED and key not in step["args"]:
                problems.append(Problem(step_path(rule_name, is_list, i, key),
                                        f"step {name!r} needs argument {key!r}",
                                        f"add {key}: <value> to the step"))
    return problems


def _misspelled(err: dict, errors: list[dict]) -> bool:
    """A missing key that an unknown sibling key is a misspelling of (``mtach`` for ``match``)."""
    if err["type"] != "missing":
        return False
    parent, key = err["loc"][:-1], str(err["loc"][-1])
    return any(e["type"] == "extra_forbidden" and e["loc"][:-1] == parent
               and difflib.get_close_matches(str(e["loc"][-1]), [key], n=1, cutoff=0.6) for e in errors)


def _user_loc(err: dict, data: dict, listed: set[str]) -> dict:
    """Pydantic's location as the user wrote it: no union-member tags (``vars.x.float``)
    and no ``members`` key for a tie group written as a plain list."""
    loc, node = [], data
    for i, part in enumerate(err["loc"]):
        last_missing = err["type"] == "missing" and i == len(err["loc"]) - 1
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not last_missing:
            break  # a union-member tag, not a key the user wrote
        if not (part == "members" and len(loc) == 2 and loc[0] == "ties" and loc[1] in listed):
            loc.append(part)
    return {**err, "loc": tuple(loc)}


def _from_pydantic(err: dict) -> Problem:
    loc = [str(x) for x in err["loc"]]
    path = ".".join([ROOT, *loc])
    kind, given = err["type"], err.get("input")
    if len(loc) >= 4 and loc[0] == "rules" and loc[2] == "part":
        fields, where = FIELDS["part"], "part"
    elif len(loc) >= 2 and loc[0] == "rules":
        fields, where = FIELDS["rule"], "rule"
    elif len(loc) >= 2 and loc[0] == "ties":
        fields, where = FIELDS["tie"], "tie group"
    else:
        fields, where = FIELDS["spec"], "spec"
    if kind == "extra_forbidden":
        return Problem(path, f"unknown key {loc[-1]!r} in a {where}.{suggest(loc[-1], fields)}",
                       f"{where} keys: {', '.join(fields)}")
    if kind == "missing":
        fix = {"match": "add match: '<glob>' naming the parameters",
               "init": "add init: <step> (e.g. zeros or {name: normal, std: 0.02})"}.get(loc[-1], "add it")
        return Problem(path, f"required key {loc[-1]!r} is missing", fix)
    message = err["msg"].removeprefix("Value error, ")
    fix = PART_FIX if "part" in loc[2:3] else _type_fix(err)
    return Problem(path, message if "(got " in message else f"{message} (got {given!r})", fix)


def _type_fix(err: dict) -> str:
    """How to fix a value pydantic refused for its type or its allowed values."""
    kind = err["type"]
    if kind == "literal_error" and "expected" in err.get("ctx", {}):
        return f"use {err['ctx']['expected']}"
    for prefix, fix in (("int", "give an integer"), ("bool", "give true or false"), ("float", "give a number"),
                        ("string", "give a string"), ("dict", "give a mapping"), ("list", "give a list")):
        if kind.startswith(prefix):
            return fix
    return ""
