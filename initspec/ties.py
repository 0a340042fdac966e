"""Tie groups: expand members, check them, and make targets the source object.

Members are module paths, parameter paths, or globs/regexes over either;
a glob keeps only its outermost matches and never the source or anything
inside it (``["layers.0", "layers.*"]`` shares every layer with layer 0).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import Problem
from .match import PatternError, compile_pattern, nearest
from .slots import Undo, live, put, put_module
from .spec import ROOT, Spec
from .tree import Tree


@dataclass(frozen=True)
class TieGroup:
    """A resolved tie group (canonical names)."""

    name: str
    kind: str                 # "module" | "parameter"
    source: str
    targets: tuple[str, ...]

    def tensor_map(self, tree: Tree) -> dict[str, str]:
        """Target tensor name -> source tensor name, for every tensor the tie replaces.

        Tying replaces an attribute of one module object, so when the model
        already shares that object, every name the attribute is reachable
        under is replaced too (``1.1.bias`` is also ``0.1.bias`` in
        ``Sequential(block, block)``).
        """
        out = {}
        if self.kind == "parameter":
            wanted = {(slot.owner.module, slot.attr) for slot in (tree.by_tensor_name[t] for t in self.targets)}
            for s in tree.tensors:
                if (s.owner.module, s.attr) in wanted and s.name != self.source:
                    out[s.name] = self.source
            return out
        wanted = {(slot.parent, slot.attr) for slot in (tree.by_module_name[t] for t in self.targets)}
        aliases = [m.name for m in tree.modules if m.name and (m.parent, m.attr) in wanted]
        for target in dict.fromkeys(aliases):
            for name in _tensors_under(tree, target):
                out[name] = self.source + name[len(target):]
        return out

    def make(self, tree: Tree, undo: Undo) -> None:
        """Make every target the source object (recorded in ``undo``)."""
        if self.kind == "module":
            source = tree.by_module_name[self.source].module
            for target in self.targets:
                put_module(tree.by_module_name[target], source, undo)
            return
        source = live(tree.by_tensor_name[self.source])   # live: materializing replaces meta parameters
        for target in self.targets:
            put(tree.by_tensor_name[target], source, undo)


def _tensors_under(tree: Tree, module: str) -> list[str]:
    prefix = module + "."
    return [name for name in tree.by_tensor_name if name.startswith(prefix)]


def _within(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + ".")


def expand_ties(spec: Spec, tree: Tree) -> tuple[list[TieGroup], list[Problem]]:
    """Resolve every tie group of ``spec`` against ``tree``; problems instead of raising."""
    groups: list[TieGroup] = []
    problems: list[Problem] = []
    if not spec.ties:
        return groups, problems
    modules = [m for m in tree.by_module_name if m]
    params = [n for n, s in tree.by_tensor_name.items() if s.kind == "parameter"]
    everything = modules + params
    for group_name, tie in spec.ties.items():
        path = f"{ROOT}.ties.{group_name}"
        source = tie.members[0]
        exempt = tie.optional or not spec.strict
        if source in tree.by_module_name and source:
            kind = "module"
        elif source in tree.by_tensor_name:
            kind = "parameter"
            if tree.by_tensor_name[source].kind != "parameter":
                problems.append(Problem(f"{path}.0", f"{source!r} is a buffer; only parameters and modules can be tied",
                                        "tie the owning module instead"))
                continue
        elif exempt:
            continue  # an optional group whose source this model lacks (GPT2Model has no head)
        else:
            hint = nearest(source, everything)
            problems.append(Problem(f"{path}.0", f"tie source {source!r} is not a module or parameter of the model"
                                    + (f"; nearest: {', '.join(hint)}" if hint else ""),
                                    "name an existing path (the first member is the source, and must be literal)"))
            continue
        targets: list[str] = []
        for i, member in enumerate(tie.members[1:], start=1):
            member_path = f"{path}.{i}"
            try:
                pattern = compile_pattern(member, i)
            except PatternError as exc:
                problems.append(Problem(member_path, exc.what, "fix the pattern"))
                continue
            if pattern.literal:
                if member not in tree.by_module_name and member not in tree.by_tensor_name:
                    if exempt:
                        continue
                    hint = nearest(member, everything)
                    problems.append(Problem(member_path, f"{member!r} is not a module or parameter of the model"
                                            + (f"; nearest: {', '.join(hint)}" if hint else ""),
                                            "fix the path or drop the member"))
                    continue
                found = [member]
            else:
                hits = sorted((n for n in everything if pattern.regex.match(n)), key=lambda n: n.count("."))
                found = []
                for name in hits:
                    if _within(name, source) or any(_within(name, kept) for kept in found):
                        continue
                    found.append(name)
                if not found and not exempt:
                    problems.append(Problem(member_path, f"pattern {member!r} matches no module or parameter",
                                            "fix the pattern, or set optional: true on the tie group"))
            for name in found:
                problem = _check_member(tree, kind, source, name, member_path)
                if problem:
                    problems.append(problem)
                elif name != source and name not in targets:
                    targets.append(name)
        if targets or not exempt:
            groups.append(TieGroup(group_name, kind, source, tuple(targets)))
    problems += _overlaps(groups, tree)
    return groups, problems


def _check_member(tree: Tree, kind: str, source: str, name: str, path: str) -> Problem | None:
    if kind == "module":
        if name not in tree.by_module_name:
            return Problem(path, f"{name!r} is a parameter but the source {source!r} is a module",
                           "tie modules to modules and parameters to parameters")
        if name != source and (_within(name, source) or _within(source, name)):
            inner, outer = (name, source) if _within(name, source) else (source, name)
            return Problem(path, f"cannot tie {name!r} to {source!r}: {outer!r} contains {inner!r} (a module tied to its own ancestor)",
                           "tie sibling modules, not a module and its ancestor")
        src, dst = tree.by_module_name[source].module, tree.by_module_name[name].module
        if type(src) is not type(dst):
            return Problem(path, f"cannot tie {name!r} ({type(dst).__name__}) to {source!r} ({type(src).__name__}): classes differ",
                           "tie modules of the same class")
        mismatch = _state_mismatch(src, dst)
        if mismatch:
            return Problem(path, f"cannot tie {name!r} to {source!r}: {mismatch}", "tie modules of the same configuration")
        return None
    if name not in tree.by_tensor_name or tree.by_tensor_name[name].kind != "parameter":
        return Problem(path, f"{name!r} is a module but the source {source!r} is a parameter",
                       "tie modules to modules and parameters to parameters")
    src, dst = tree.by_tensor_name[source].tensor, tree.by_tensor_name[name].tensor
    if tuple(src.shape) != tuple(dst.shape):
        return Problem(path, f"cannot tie {name!r} (shape {list(dst.shape)}) to {source!r} (shape {list(src.shape)})",
                       "tie parameters of the same shape")
    if src.dtype != dst.dtype:
        return Problem(path, f"cannot tie {name!r} ({dst.dtype}) to {source!r} ({src.dtype}): dtypes differ",
                       "cast the model to one dtype first")
    return None


def _state_mismatch(src: nn.Module, dst: nn.Module) -> str:
    a = {n: (tuple(t.shape), t.dtype) for n, t in [*src.named_parameters(remove_duplicate=False),
                                                   *src.named_buffers(remove_duplicate=False)]}
    b = {n: (tuple(t.shape), t.dtype) for n, t in [*dst.named_parameters(remove_duplicate=False),
                                                   *dst.named_buffers(remove_duplicate=False)]}
    if set(a) != set(b):
        return f"they hold different tensors ({sorted(set(a) ^ set(b))[:3]})"
    for n in a:
        if a[n] != b[n]:
            return f"{n!r} differs: shape/dtype {list(a[n][0])}/{a[n][1]} vs {list(b[n][0])}/{b[n][1]}"
    return ""


def _overlaps(groups: list[TieGroup], tree: Tree) -> list[Problem]:
    """A problem for each tensor two groups would tie, under any of its names: in a model
    that already shares a module, tying ``1.bias`` also ties ``0.bias`` (see ``tensor_map``)."""
    owner: dict[str, str] = {}
    problems = []
    for group in groups:
        covered = set()
        for member in (group.source, *group.targets):
            covered |= set(_tensors_under(tree, member)) if group.kind == "module" else {member}
        replaced = group.tensor_map(tree)
        covered |= set(replaced) | set(replaced.values())
        for name in sorted(covered):
            if name in owner and owner[name] != group.name:
                problems.append(Problem(f"{ROOT}.ties.{group.name}",
                                        f"parameter {name!r} is in two tie groups: {owner[name]!r} and {group.name!r}",
                                        "put each parameter in one tie group (a module the model already shares "
                                        "holds its parameters under each of its names)"))
                break
            owner[name] = group.name
    return problems
