"""Load a spec from a YAML path, a preset name, a dict or an OmegaConf node.

Interpolations (``${model.n_layer}``) resolve while a node is still attached
to its parent config; ``vars`` given by the caller take precedence over the
spec's own and may fill values the spec leaves missing (``???``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import InitSpecError, Problem, raise_all, suggest
from .spec import ROOT

PRESET_PACKAGE = "initspec_configs"


def preset_dir() -> Path:
    """Directory of the shipped presets (``configs/initspec`` in the repo)."""
    return Path(str(resources.files(PRESET_PACKAGE) / "initspec"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def preset_description(name: str) -> str:
    """The first comment line of a preset file."""
    for line in (preset_dir() / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def load_data(obj: Any, *, vars: Mapping[str, Any] | None = None) -> dict:
    """Plain, resolved data of a spec given as path, preset name, dict or DictConfig."""
    check_vars_arg(vars)
    if isinstance(obj, (str, os.PathLike)):
        node = read_yaml(find_spec_file(obj))
    elif isinstance(obj, DictConfig):
        node = obj
    elif isinstance(obj, Mapping):
        try:
            node = OmegaConf.create(dict(obj))
        except OmegaConfBaseException as exc:
            raise InitSpecError(ROOT, f"cannot read the spec mapping: {exc}", "use plain YAML types") from None
        except RecursionError:
            raise InitSpecError(ROOT, "the spec mapping contains itself (or is nested too deeply)",
                                "pass plain, acyclic data") from None
    elif obj is None:
        node = OmegaConf.create({})
    else:
        raise InitSpecError(ROOT, f"a spec is a YAML path, preset name, dict or DictConfig, got {type(obj).__name__}",
                            "pass e.g. 'configs/initspec/seed_custom.yaml' or a dict")
    return _resolve(node, dict(vars or {}))


def check_vars_arg(vars: Any) -> None:
    """``vars=`` of load_spec/plan/apply: a mapping of names to numbers, or None."""
    if vars is not None and not isinstance(vars, Mapping):
        raise InitSpecError("vars", f"vars= must be a mapping of names to numbers, got {type(vars).__name__}",
                            "pass e.g. vars={'n_layer': 12}")


def find_spec_file(obj: str | os.PathLike) -> Path:
    path = Path(obj)
    if path.is_file():
        return path
    name = str(obj)
    if "/" not in name and not name.endswith((".yaml", ".yml")):
        candidate = preset_dir() / f"{name}.yaml"
        if candidate.is_file():
            return candidate
        raise InitSpecError(ROOT, f"no spec file or preset named {name!r}.{suggest(name, preset_names())}",
                            "presets: " + ", ".join(preset_names()))
    raise InitSpecError(ROOT, f"spec file {str(path)!r} does not exist", "check the path")


MAX_YAML_NODES = 20_000  # after alias expansion: a spec is far smaller; anchors can multiply it


def read_yaml(path: Path) -> DictConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InitSpecError(f"{ROOT} ({path})", f"cannot read the spec file: {exc}",
                            "save it as UTF-8 text and check that it is readable") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_size(root, path)
        problems = _boolean_keys(root, path)
        node = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        raise InitSpecError(f"{ROOT} ({where})", f"the YAML does not parse: {reason}",
                            "fix the YAML syntax at that line (indentation, brackets, quotes)") from None
    except OmegaConfBaseException as exc:
        raise InitSpecError(f"{ROOT} ({path})", f"the YAML is not a valid config: {str(exc).splitlines()[0]}",
                            "use string keys and plain values") from None
    if not isinstance(node, DictConfig):
        raise InitSpecError(f"{ROOT} ({path})", "the file holds a list, not a mapping", "write rules:, ties:, ...")
    raise_all(problems)
    return node


def _check_size(root: Any, path: Path) -> None:
    """Refuse alias cycles and documents that anchors expand past MAX_YAML_NODES nodes."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise InitSpecError(f"{ROOT} ({path}:{node.start_mark.line + 1})",
                                "a YAML alias refers to a node that contains it (a cycle)",
                                "remove the recursive anchor/alias")
        open_nodes.add(key)
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise InitSpecError(f"{ROOT} ({path})",
                                    f"the YAML expands to more than {MAX_YAML_NODES} nodes (anchors and aliases)",
                                    "write the spec out without nesting aliases of aliases")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    if root is not None:
        size(root)


def _boolean_keys(root: Any, path: Path) -> list[Problem]:
    """Keys that YAML 1.1 reads as booleans (off, no, yes, on): named with their line."""
    problems: list[Problem] = []
    seen: set[int] = set()

    def walk(node: Any, trail: list[str]) -> None:
        if id(node) in seen:  # an alias: its keys were reported where it is defined
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                text_key = key.value if isinstance(key, yaml.ScalarNode) else "?"
                if (isinstance(key, yaml.ScalarNode) and key.tag.endswith(":bool")
                        and text_key.lower() not in ("true", "false")):
                    problems.append(Problem(
                        ".".join([ROOT, *trail, text_key]),
                        f"YAML 1.1 reads the key {text_key!r} ({path}:{key.start_mark.line + 1}) as a boolean",
                        f"quote it ('{text_key}') or choose another name"))
                walk(value, [*trail, text_key])
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, [*trail, str(i)])

    walk(root, [])
    return problems


def _resolve(node: DictConfig, overrides: dict) -> dict:
    prefix = _node_prefix(node)
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for key in node.keys():
        if key == "vars":
            out["vars"] = _resolve_vars(node, overrides, prefix, problems)
            continue
        try:
            value = node._get_node(key)
            out[key] = (OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
                        if isinstance(value, (DictConfig, ListConfig)) else node[key])
        except OmegaConfBaseException as exc:
            problems.append(_interpolation_problem(exc, prefix, str(key)))
    if overrides and "vars" not in out:
        out["vars"] = dict(overrides)
    raise_all(problems)
    return out


def _resolve_vars(node: DictConfig, overrides: dict, prefix: str, problems: list[Problem]) -> dict:
    variables = node._get_node("vars")
    result: dict[str, Any] = {}
    if variables is not None and not isinstance(variables, DictConfig) and not OmegaConf.is_missing(node, "vars"):
        try:
            variables = node.vars  # an interpolation (vars: ${model}) resolves here
        except OmegaConfBaseException as exc:
            problems.append(_interpolation_problem(exc, prefix, "vars"))
            variables = None
    if isinstance(variables, DictConfig):
        for name in variables.keys():
            if name in overrides:
                continue
            try:
                result[name] = variables[name]
                if isinstance(result[name], (DictConfig, ListConfig)):
                    result[name] = OmegaConf.to_container(result[name], resolve=True)
            except OmegaConfBaseException as exc:
                problems.append(_interpolation_problem(exc, prefix, f"vars.{name}", var=str(name)))
    elif variables is not None and not OmegaConf.is_missing(node, "vars") and not _is_none(variables):
        problems.append(Problem(f"{ROOT}.vars", f"vars must be a mapping, got {_plain(variables)!r}",
                                "write vars: {n_layer: 12}"))
    result.update(overrides)
    return result


def _is_none(value: Any) -> bool:
    return value is None or (hasattr(value, "_is_none") and value._is_none())


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _node_prefix(node: DictConfig) -> str:
    try:
        return node._get_full_key("") or ""
    except Exception:  # pragma: no cover - private API drift
        return ""


def _interpolation_problem(exc: OmegaConfBaseException, prefix: str, key: str, var: str = "") -> Problem:
    full = getattr(exc, "full_key", None) or key
    if prefix and full.startswith(prefix + "."):
        full = full[len(prefix) + 1:]
    path = f"{ROOT}.{full}"
    text = str(exc).splitlines()[0]
    if "Missing mandatory value" in text or type(exc).__name__ == "MissingMandatoryValue":
        what = "a required value is missing (???)"
    else:
        what = f"cannot resolve: {text}"
    if var:
        fix = (f"compose the spec with a model config that provides it, pass vars={{'{var}': ...}} "
               f"from Python, or override {path}=<value>")
    else:
        fix = f"set {path} or fix the interpolation"
    return Problem(path, what, fix)
