"""The package's layout: the stages import one way, no module imports another's private names.

Every import counts, including those inside functions (a lazy import is still a
dependency), so the module graph below must be acyclic.
"""
from __future__ import annotations

import ast
from pathlib import Path

import initspec

PACKAGE = Path(initspec.__file__).parent
MAX_LINES = 600


def modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE).with_suffix("")).replace("/", "."): ast.parse(p.read_text())
            for p in PACKAGE.rglob("*.py")}


def _target(module: str, node: ast.ImportFrom) -> str:
    """The initspec module an import names ('' when it is outside the package)."""
    if node.level == 0:
        return node.module.removeprefix("initspec.") if (node.module or "").startswith("initspec.") else ""
    base = module.split(".")[:-node.level] if node.level <= module.count(".") + 1 else []
    parts = base + ([node.module] if node.module else [])
    return ".".join(parts) if parts else "__init__"


def imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, imported name)} over every import statement in it."""
    out: dict[str, set[tuple[str, str]]] = {}
    for module, tree in modules().items():
        found = out.setdefault(module, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _target(module, node)
                for alias in node.names:
                    found.add((target, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("initspec."):
                        found.add((alias.name.removeprefix("initspec."), ""))
    return out


def graph() -> dict[str, set[str]]:
    names = set(modules())
    edges: dict[str, set[str]] = {}
    for module, found in imports().items():
        targets = set()
        for target, name in found:
            if target == "__init__" and name in names:   # from . import catalog
                targets.add(name)
            elif f"{target}.{name}" in names:            # from .models import gpt
                targets.add(f"{target}.{name}")
            elif target in names:
                targets.add(target)
        edges[module] = targets - {module, "__init__"}
    return edges


def test_no_import_cycles():
    edges = graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_private_names_imported_across_modules():
    private = sorted(f"{module} imports {name} from {target}" for module, found in imports().items()
                     for target, name in found if target and name.startswith("_") and target != module)
    assert not private, private


def test_modules_stay_small():
    sizes = {module: len((PACKAGE / (module.replace(".", "/") + ".py")).read_text().splitlines())
             for module in modules()}
    assert max(sizes.values()) <= MAX_LINES, {m: n for m, n in sizes.items() if n > MAX_LINES}


def test_private_fsdp_state_is_read_in_one_module():
    """FSDP2's and DTensor's private attributes appear only in sharding.py."""
    markers = ("_get_fsdp_state", "_fsdp_param_groups", "_sharded_param_data", "_local_tensor",
               "padded_sharded_param_size", "compute_local_shape_and_global_offset")
    users = sorted({module for module in modules()
                    for marker in markers if marker in (PACKAGE / (module.replace(".", "/") + ".py")).read_text()})
    assert users == ["sharding"], users


def test_the_global_gc_is_never_touched():
    for module in modules():
        text = (PACKAGE / (module.replace(".", "/") + ".py")).read_text()
        assert "import gc" not in text and "gc." not in text.replace("rngc.", ""), module
