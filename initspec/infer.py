"""``initspec.infer``: read an initialized model and write the spec that reproduces it.

    inferred = initspec.infer(model)                          # a model with its values
    inferred = initspec.infer("init.safetensors", model=cfg)  # values from a file, structure from a config
    print(inferred.yaml)                                      # the spec, with its evidence as comments
    initspec.apply(fresh_model, inferred.data)                # plain data load_spec accepts

Per unique tensor, :mod:`initspec.fit` detects the family from the values (never from
class or parameter names); :mod:`initspec.formulas` explains the scales by the simplest
formulas shared by groups of tensors; :mod:`initspec.grouping` writes the groups as
rules from the names. Tensors shared under several names become tie groups; tensors
nothing explains are listed in the header and left to ``default: keep``. The result is
checked by planning it against the model: every tensor gets its group's rule.
"""
from __future__ import annotations

import json
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InitSpecError
from .fit import SAMPLE, TensorFit, fit_tensor, significant
from .formulas import RandomGroup, TensorFacts, gain_value, group_random, random_steps
from .grouping import Name, RuleDraft, identifier, literal_rules, make_rules
from .tensor_info import layer_of
from .tree import walk

RULE_KEYS = ("match", "module", "ndim", "priority", "init")
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YAML_WORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", "~"}


@dataclass(frozen=True)
class Inferred:
    """An inferred spec: ``data`` (plain data for :func:`initspec.load_spec`), ``yaml`` (the same
    with the evidence as comments) and the tensors it could not explain."""

    data: dict
    yaml: str
    unexplained: tuple[str, ...]

    @property
    def rules(self) -> int:
        return len(self.data["rules"])

    def __str__(self) -> str:
        return self.yaml


@dataclass(frozen=True)
class Unit:
    """One unique tensor: its names (canonical first, then tie aliases), values and owner."""

    names: tuple[str, ...]
    tensor: torch.Tensor
    owner: nn.Module


@dataclass(frozen=True)
class Group:
    """Tensors one init explains."""

    steps: tuple
    members: tuple[int, ...]       # unit indices
    evidence: str
    uses_n_layer: bool = False


def infer(model_or_path: Any, *, model: Any = None, seed: int = 0, sample: int = SAMPLE,
          option: str = "model_or_path") -> Inferred:
    """The spec that reproduces ``model_or_path``'s initialization.

    ``model_or_path``: an ``nn.Module`` holding its values, or the path of a safetensors
    file whose values are read into the structure ``model`` describes (a config with
    ``_target_``, a factory or a module; built on the meta device). ``seed`` seeds the
    samples drawn for the tests (and is the spec's seed); ``sample`` is how many values
    of a tensor the tests see at most. ``option`` names the input in error messages.
    """
    if isinstance(model_or_path, nn.Module):
        module, units, source = model_or_path, units_of_model(model_or_path), type(model_or_path).__name__
    elif isinstance(model_or_path, (str, os.PathLike)):
        module, units = units_of_file(model_or_path, model, option)
        source = Path(model_or_path).name
    else:
        raise InitSpecError(option, f"expected an nn.Module or a safetensors path, got {type(model_or_path).__name__}",
                            "pass the model, or a path with model=<its config>")
    return infer_units(module, units, seed=seed, sample=sample, source=source)


# ----------------------------------------------------------------- inputs

def units_of_model(model: nn.Module) -> list[Unit]:
    """Every unique parameter of ``model`` with all the names it is reachable under."""
    units = _units(model)
    meta = [u.names[0] for u in units if u.tensor.is_meta]
    if meta:
        raise InitSpecError("model", f"{len(meta)} parameter(s) are on the meta device ({meta[0]}, ...): "
                            "there are no values to read",
                            "build the model for real, or read the values from a file: "
                            "infer('init.safetensors', model=<config>)  (CLI: --from FILE)")
    return units


def _units(model: nn.Module) -> list[Unit]:
    """Unique parameters, each with every name it is reachable under (registration order)."""
    slots = [s for s in walk(model).tensors if s.kind == "parameter"]
    if not slots:
        raise InitSpecError("model", f"{type(model).__name__} has no parameters: there is nothing to infer",
                            "give a model with parameters (check model._target_ and its arguments)")
    names: dict[torch.Tensor, list[str]] = {}   # keyed by the tensor object (tensors hash by identity)
    owners: dict[torch.Tensor, nn.Module] = {}
    for s in slots:
        names.setdefault(s.tensor, []).append(s.name)
        owners.setdefault(s.tensor, s.owner.module)
    return [Unit(tuple(group), tensor, owners[tensor]) for tensor, group in names.items()]


def units_of_file(path: str | os.PathLike, structure: Any, option: str) -> tuple[nn.Module, list[Unit]]:
    """Values from a safetensors file, names and owners from ``structure`` built on the meta device."""
    from .builder import instantiate, meta_parameters
    from .export import ALIASES_KEY
    if structure is None:
        raise InitSpecError("model", "reading values from a file needs the model's structure",
                            "pass model=<config with _target_, factory or module> (CLI: model=...)")
    if not Path(path).is_file():
        raise InitSpecError(option, f"no file {str(path)!r}", "give the path of a .safetensors file")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise InitSpecError(option, f"{str(path)!r} is not a safetensors file ({str(exc).splitlines()[0]})",
                            "give a file written by safetensors (save_file, save_pretrained, "
                            "initspec apply --out)") from None
    with meta_parameters():
        module = instantiate(structure)
    structure_units = _units(module)
    aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
    merged = _merge_aliases([list(u.names) for u in structure_units], aliases)
    names = {n for group in merged for n in group}
    buffers = {s.name for s in walk(module).tensors if s.kind == "buffer"}
    missing = [group[0] for group in merged if not any(n in keys for n in group)]
    extra = sorted(keys - names - buffers - {a for v in aliases.values() for a in v})
    if missing or extra:
        said = []
        if missing:
            said.append(f"the file lacks {len(missing)} of the model's parameters ({', '.join(missing[:3])})")
        if extra:
            said.append(f"the model lacks {len(extra)} of the file's tensors ({', '.join(extra[:3])})")
        raise InitSpecError(option, f"{Path(path).name} and {type(module).__name__} have different tensor names: "
                            + "; ".join(said),
                            "give the model config the file was saved from (model=...), or the file saved from this model")
    values: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        for group in merged:
            key = next(n for n in group if n in keys)
            values[group[0]] = handle.get_tensor(key)
    by_name = {u.names[0]: u for u in structure_units}
    units = []
    for group in merged:
        meta = by_name[group[0]]
        if tuple(values[group[0]].shape) != tuple(meta.tensor.shape):
            raise InitSpecError(option, f"{group[0]!r} has shape {list(values[group[0]].shape)} in {Path(path).name} "
                                f"but {list(meta.tensor.shape)} in the model",
                                "give the model config the file was saved from (model=...)")
        units.append(Unit(tuple(group), values[group[0]], meta.owner))
    return module, units


def _merge_aliases(groups: list[list[str]], aliases: dict[str, list[str]]) -> list[list[str]]:
    """Name groups joined where the file records ``aliases`` (a seed checkpoint's ties)."""
    where = {n: i for i, g in enumerate(groups) for n in g}
    for name, others in aliases.items():
        for other in others:
            if name in where and other in where and where[name] != where[other]:
                keep, drop = sorted((where[name], where[other]))
                groups[keep] += groups[drop]
                for n in groups[drop]:
                    where[n] = keep
                groups[drop] = []
    return [g for g in groups if g]


# ----------------------------------------------------------------- inference

def infer_units(module: nn.Module, units: list[Unit], *, seed: int = 0, sample: int = SAMPLE,
                source: str = "model") -> Inferred:
    fits = [fit_tensor(u.names[0], u.tensor, _padding_idx(u.owner), seed=zlib.crc32(u.names[0].encode()) ^ seed,
                       sample=sample) for u in units]
    facts = [TensorFacts(_fans(u.tensor.shape), layer_of(u.names[0])) for u in units]
    layers = {f.layer for f in facts if f.layer is not None}
    n_layer = len(layers) or None
    groups = structured_groups(fits) + [random_group(g, fits, n_layer) for g in group_random(fits, facts, n_layer)]
    group_of = {i: g for g, group in enumerate(groups) for i in group.members}
    names = [Name(name, group_of.get(i), type(u.owner), u.tensor.ndim, required=(j == 0))
             for i, u in enumerate(units) for j, name in enumerate(u.names)]
    drafts = make_rules(names)
    data, evidence = spec_data(drafts, groups, units, seed, n_layer)
    if not _plans_as_grouped(module, data, units, group_of, {d.name: d.group for d in drafts}):
        drafts = literal_rules(names)
        data, evidence = spec_data(drafts, groups, units, seed, n_layer)
    unexplained = tuple(units[i].names[0] for i in range(len(units)) if i not in group_of and fits[i].kind != "empty")
    return Inferred(data, to_yaml(data, header(units, fits, unexplained, data, source), evidence), unexplained)


def _padding_idx(owner: nn.Module) -> int | None:
    idx = getattr(owner, "padding_idx", None)
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else None


def _fans(shape: torch.Size) -> tuple[int, int] | None:
    if len(shape) < 2:
        return None
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def structured_groups(fits: list[TensorFit]) -> list[Group]:
    """Constants, eye, dirac and orthogonal tensors, grouped by their exact init."""
    by_step: dict[str, list[int]] = {}
    steps: dict[str, Any] = {}
    for i, fit in enumerate(fits):
        step = _structured_step(fit)
        if step is not None:
            key = json.dumps(step)
            steps[key] = step
            by_step.setdefault(key, []).append(i)
    groups = []
    for key, members in by_step.items():
        first = fits[members[0]]
        what = {"constant": f"all {first.value:g}", "eye": "identity (eye)",
                "dirac": f"dirac, groups {int(first.value)}",
                "orthogonal": f"orthogonal, W Wᵀ = gain² I, gain {first.value:.6g}"}[first.kind]
        groups.append(Group((steps[key],), tuple(members), f"{_count(fits, members)}, {what}"))
    return groups


def _structured_step(fit: TensorFit) -> Any:
    if fit.kind == "constant":
        value = _shortest(fit.value)
        return "zeros" if value == 0 else "ones" if value == 1 else {"name": "constant", "value": value}
    if fit.kind == "eye":
        return "eye"
    if fit.kind == "dirac":
        return "dirac" if fit.value == 1 else {"name": "dirac", "groups": int(fit.value)}
    if fit.kind == "orthogonal":
        gain = gain_value(fit.value)
        return "orthogonal" if gain == 1 else {"name": "orthogonal", "gain": gain}
    return None


def _shortest(value: float) -> float:
    """The shortest decimal that is the same float32 (1e-06, not 9.999999974752427e-07)."""
    for digits in range(1, 18):
        candidate = significant(value, digits)
        if torch.tensor(candidate, dtype=torch.float32).item() == torch.tensor(value, dtype=torch.float32).item():
            return candidate
    return value


def random_group(group: RandomGroup, fits: list[TensorFit], n_layer: int | None) -> Group:
    c = group.candidate
    scales = [v.scale for v in group.variants]
    low, high = min(scales), max(scales)
    shown = f"{low:.4g}" if high <= low * 1.005 else f"{low:.4g}..{high:.4g}"
    if c.family == "trunc_normal":
        what = f"truncated normal sigma {shown}, cut at {c.cutoff:g} sigma"
    else:
        what = {"normal": f"normal std {shown}", "uniform": f"uniform bound {shown}", "uniform_ab": "uniform"}[c.family]
    if c.mean:
        what += f", mean {c.mean:g}"
    if c.formula is not None:
        what += f" (fit {c.formula.describe(c.family, n_layer)})"
    if c.pad:
        what += ", padding row 0"
    uses = c.formula is not None and c.formula.depth == "n_layer"
    return Group(tuple(random_steps(c, n_layer)), group.members, f"{_count(fits, group.members)}, {what}", uses)


def _count(fits: list[TensorFit], members) -> str:
    values = sum(math.prod(fits[i].shape) for i in members)
    return f"{len(members)} tensor{'s' if len(members) != 1 else ''}, {_amount(values)} value{'s' if values != 1 else ''}"


def _amount(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


# ----------------------------------------------------------------- the spec

def spec_data(drafts: list[RuleDraft], groups: list[Group], units: list[Unit], seed: int,
              n_layer: int | None) -> tuple[dict, dict[str, str]]:
    """(plain spec data, rule name -> evidence): rules in order (catch-alls, rules, overrides), ties, vars."""
    rules, evidence = {}, {}
    for d in sorted(drafts, key=lambda d: (d.priority, not d.catch_all, min(groups[d.group].members))):
        steps = list(groups[d.group].steps)
        rule: dict[str, Any] = {"match": d.patterns[0] if len(d.patterns) == 1 else list(d.patterns)}
        if d.module is not None:
            rule["module"] = d.module
        if d.ndim is not None:
            rule["ndim"] = d.ndim
        if d.priority:
            rule["priority"] = d.priority
        rule["init"] = steps[0] if len(steps) == 1 else steps
        rules[d.name] = rule
        evidence[d.name] = groups[d.group].evidence
    data: dict[str, Any] = {"seed": seed, "default": "keep", "strict": True}
    if n_layer and any(groups[d.group].uses_n_layer for d in drafts):
        data["vars"] = {"n_layer": n_layer}
    data["rules"] = rules
    ties: dict[str, list[str]] = {}
    for u in units:
        if len(u.names) > 1:
            stem = identifier(u.names[1].rsplit(".", 1)[0].rsplit(".", 1)[-1], "tie")
            ties[stem if stem not in ties else f"{stem}_{len(ties) + 1}"] = list(u.names)
    if ties:
        data["ties"] = ties
    return data, evidence


def _plans_as_grouped(module: nn.Module, data: dict, units: list[Unit], group_of: dict[int, int],
                      rule_group: dict[str, int]) -> bool:
    """Planning ``data`` against the model gives every tensor its group's rule (unexplained: none)."""
    from .api import plan
    try:
        entries = {e.name: e for e in plan(module, data).entries if e.kind == "parameter"}
    except InitSpecError:
        return False
    for i, u in enumerate(units):
        entry = next((entries[n] for n in u.names if n in entries), None)
        if entry is None:
            return False
        got = rule_group.get(entry.rule) if entry.action == "fill" else None
        if got != group_of.get(i):
            return False
    return True


# ----------------------------------------------------------------- YAML

def header(units: list[Unit], fits: list[TensorFit], unexplained: tuple[str, ...], data: dict,
           source: str) -> list[str]:
    values = sum(u.tensor.numel() for u in units)
    ties = len(data.get("ties", {}))
    lines = [f"Inferred by initspec infer from {source}: {len(units)} tensors ({_amount(values)} values) "
             f"in {len(data['rules'])} rule{'s' if len(data['rules']) != 1 else ''}" + (f", {ties} tie group{'s' if ties != 1 else ''}" if ties else "") + ".",
             "Families come from the values (extremes, moments, KS tests on samples); each formula",
             "is the simplest one within sampling error for every tensor of its rule."]
    by_name = {f.name: f for f in fits}
    if unexplained:
        lines.append(f"Unexplained ({len(unexplained)}; no rule covers them, default: keep leaves them as they are):")
        for name in unexplained:
            fit = by_name[name]
            lines.append(f"  {name} {list(fit.shape)}: {fit.stats.describe()}" + (f" ({fit.note})" if fit.note else ""))
    notes = [f for f in fits if f.note and f.name not in unexplained]
    if notes:
        lines.append("Notes:")
        lines += [f"  {f.name}: {f.note}" for f in notes]
    return lines


def to_yaml(data: dict, header_lines: list[str], evidence: dict[str, str]) -> str:
    """The spec as YAML text, the header and each rule's evidence as comments."""
    lines = [f"# {line}".rstrip() for line in header_lines]
    lines += [f"seed: {data['seed']}", f"default: {data['default']}", f"strict: {_scalar(data['strict'])}"]
    if data.get("vars"):
        lines.append("vars:")
        lines += [f"  {k}: {_scalar(v)}" for k, v in data["vars"].items()]
    lines.append("rules:")
    for name, rule in data["rules"].items():
        lines.append(f"  {name}:" + (f"    # {evidence[name]}" if name in evidence else ""))
        for key in RULE_KEYS:
            if key in rule:
                lines.append(f"    {key}: {_flow(rule[key])}")
    if data.get("ties"):
        lines.append("ties:")
        lines += [f"  {k}: {_flow(v)}" for k, v in data["ties"].items()]
    return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    """A YAML 1.1 scalar that reads back as the same value (floats keep a dot: 1.0e-06)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            mantissa = mantissa if "." in mantissa else mantissa + ".0"
            sign = exponent[0] if exponent[0] in "+-" else "+"
            text = f"{mantissa}e{sign}{exponent.lstrip('+-')}"
        return text
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)
