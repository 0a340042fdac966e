"""Helpers the test modules share, written once: ``from conftest import ...``.

* model state: ``tensors_of``, ``snapshot`` / ``assert_unchanged`` (all or nothing),
  ``values`` / ``assert_same_values`` (bitwise equal initializations);
* custom ``fn:`` initializers that fail (``boom``, ``nan_fill``; their prefix is ``FN``);
* ``rules(...)``, the smallest spec; ``table_row``, a row of a printed plan or report;
* ``spy`` (record the calls of a function or method), ``run_threads``, ``shard`` (FSDP2),
  ``spawn_ranks`` (gloo ranks in processes, bounded in time) and ``free_port``;
* the oracles: ``reference_match`` and ``expected_winner`` (which rule should fill a
  tensor, written plainly), ``assert_patterns_agree`` (the matcher against it);
* ``fill_region``: what the process holding one region of an entry fills.
"""
from __future__ import annotations

import contextlib
import datetime
import fnmatch
import os
import re
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn

FN = __name__   # allow_fn=[FN] lets a spec name f"{FN}.boom" and f"{FN}.nan_fill"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A multiprocess test is a slow test too: -m "not slow" runs no test that starts a process."""
    for item in items:
        if item.get_closest_marker("multiprocess") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def boom(tensor: torch.Tensor, **kwargs) -> None:
    """A custom initializer that writes first, then fails: the write must not reach the model."""
    tensor.fill_(1.0)
    raise RuntimeError("boom")


def nan_fill(tensor: torch.Tensor, **kwargs) -> None:
    tensor.fill_(float("nan"))


def rules(**named: dict | None) -> dict:
    """A spec made of these rules only: ``rules(w={"match": "*.weight", "init": "zeros"})``."""
    return {"rules": named}


# ------------------------------------------------------------------ model state

def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name it has (a shared one under each), the live objects."""
    return {**dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False))}


def snapshot(model: nn.Module) -> dict:
    """Every tensor by every name (the object and a copy of its values: a meta copy of a meta tensor),
    and every module object by every name."""
    return {"tensors": {name: (t, t.detach().clone()) for name, t in tensors_of(model).items()},
            "modules": dict(model.named_modules(remove_duplicate=False))}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    """Bitwise the state ``snapshot`` recorded: the same tensor objects under the same names (nothing tied
    or replaced), on the same side of meta, with the same dtype and values, in the same module objects."""
    now = tensors_of(model)
    assert now.keys() == before["tensors"].keys()
    for name, (obj, values) in before["tensors"].items():
        current = now[name]
        assert current is obj, f"{name} is a different object (tied or replaced)"
        assert current.is_meta == values.is_meta, f"{name} changed device"
        if not values.is_meta:
            assert current.dtype == values.dtype and torch.equal(current.detach(), values), f"{name} changed"
    modules = dict(model.named_modules(remove_duplicate=False))
    assert modules.keys() == before["modules"].keys()
    for name, module in before["modules"].items():
        assert modules[name] is module, f"module {name} was replaced (tied?)"


def values(model: nn.Module, buffers: bool = False) -> dict[str, torch.Tensor]:
    """A copy of every parameter's values (and every buffer's), by name; a sharded DTensor gathered whole."""
    named = [*model.named_parameters(), *(model.named_buffers() if buffers else ())]
    return {name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone() for name, t in named}


def assert_same_values(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str = "values") -> None:
    """The same names, and bitwise the same tensor under each."""
    assert got.keys() == want.keys(), (what, sorted(got.keys() ^ want.keys()))
    differ = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differ, f"{what}: {differ} differ"


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``initspec ARGS`` in this process: (exit code, stdout, stderr)."""
    from initspec.cli import main
    try:
        code = main(list(args))
    except SystemExit as exc:   # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def table_row(text: str, name: str) -> str:
    """The line of ``name`` in a table that ``explain()`` or the command prints."""
    return next(line for line in text.splitlines() if line.startswith(f"│ {name} "))


# ------------------------------------------------------------------ calls and threads

@contextlib.contextmanager
def spy(owner: Any, attr: str, record: Callable[..., Any]) -> Iterator[list]:
    """Within the block, every call of ``owner.attr`` (a module's function or a class's method) still runs,
    and ``record(*args, **kwargs)`` of each call, made before it runs, is appended to the list yielded."""
    calls: list = []
    original = getattr(owner, attr)
    own = vars(owner).get(attr)

    def recording(*args, **kwargs):
        calls.append(record(*args, **kwargs))
        return original(*args, **kwargs)

    setattr(owner, attr, recording)
    try:
        yield calls
    finally:
        if own is None:
            delattr(owner, attr)
        else:
            setattr(owner, attr, own)


def run_threads(*targets: Callable[[], Any], timeout: float = 120) -> None:
    """Run each function in a thread of its own, all at once; wait for them (``timeout`` seconds at
    most) and raise here the first exception a thread raised."""
    errors: list[BaseException] = []

    def guarded(target):
        try:
            target()
        except BaseException as exc:   # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(target,), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread still runs after {timeout} s"
    if errors:
        raise errors[0]


def shard(model: nn.Module, mesh, *children: nn.Module) -> nn.Module:
    """FSDP2: ``fully_shard`` each child, then the model."""
    from torch.distributed.fsdp import fully_shard
    for child in children:
        fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(body: Callable[..., Any], rank: int, world: int, port: int, out: str, *args) -> None:
    """One spawned rank: joins the gloo group on 127.0.0.1:``port``, saves ``body(rank, world, *args)`` as
    ``out/rank{rank}.pt`` (or its traceback as ``out/rank{rank}.err``) and leaves the group."""
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        import torch.distributed as dist
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
        result = body(rank, world, *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def spawn_ranks(body: Callable[..., Any], world: int, out: Path, *args, timeout: float) -> list:
    """Run ``body(rank, world, *args)`` on ``world`` gloo ranks, one spawned process each (``body`` is a
    module-level function, picklable); the ranks still running after ``timeout`` seconds are killed.
    Returns what each rank's ``body`` returned; fails with a rank's traceback if one raised."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(body, r, world, port, str(out), *args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    errors = [f.read_text() for f in sorted(Path(out).glob("rank*.err"))]
    assert not errors, errors[0]
    assert not alive, f"{len(alive)} rank(s) still running after {timeout} s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]


# ------------------------------------------------------------------ oracles

def reference_match(pattern: str, name: str) -> bool:
    """A rule's pattern, plainly: fnmatchcase for a glob, re.fullmatch for ``re:``."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name, re.S) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def expected_winner(spec: dict, model: nn.Module, names: tuple[str, ...]) -> str | None:
    """The rule of a dict spec that should fill the tensor known under ``names``: of the rules whose
    patterns and filters take one of the names, the highest priority, then the latest declared."""
    owners = dict(model.named_modules(remove_duplicate=False))
    best = None
    for index, (rule_name, rule) in enumerate(spec["rules"].items()):
        if rule is None:
            continue
        for name in names:
            owner_name, _, attr = name.rpartition(".")
            owner = owners[owner_name]
            tensor = owner._parameters.get(attr)
            if tensor is None:
                tensor = owner._buffers[attr]
                if not (rule.get("buffers") and tensor.is_floating_point()):
                    continue
            if not any(reference_match(p, name) for p in _as_list(rule["match"])):
                continue
            if any(reference_match(p, name) for p in _as_list(rule.get("exclude"))):
                continue
            if rule.get("ndim") is not None and tensor.dim() not in _as_list(rule["ndim"]):
                continue
            wanted = _as_list(rule.get("module"))
            if wanted and not any(c.__name__ == m.rpartition(".")[2] for m in wanted for c in type(owner).__mro__):
                continue
            key = (rule.get("priority", 0), index)
            if best is None or key > best[0]:
                best = (key, rule_name)
    return None if best is None else best[1]


def assert_patterns_agree(texts: list[str], names: list[str]) -> None:
    """``PatternSet.match`` gives every name the patterns ``reference_match`` gives it (invalid patterns
    are left out, as compile_pattern refuses them)."""
    from initspec.match import PatternError, PatternSet, compile_pattern
    compiled = []
    for i, text in enumerate(texts):
        try:
            compiled.append(compile_pattern(text, i))
        except PatternError:
            continue
    for name, tags in zip(names, PatternSet(compiled).match(names)):
        expected = sorted(c.tag for c in compiled if reference_match(c.text, name))
        assert list(tags) == expected, (name, [texts[t] for t in set(tags) ^ set(expected)])


# ------------------------------------------------------------------ regions of a fill

def fill_region(plan, name: str, local: torch.Tensor, offset: tuple[int, ...], shape: tuple[int, ...],
                threads: int = 1) -> torch.Tensor:
    """Fill ``local`` as the process holding ``shape[offset:]`` of entry ``name`` would (no processes)."""
    from initspec.execute import stream_of
    from initspec.fill import fill_tasks, run_tasks
    from initspec.sharding import Region
    entry = plan.entry(name)
    run_tasks(fill_tasks(entry.ops, Region(local, offset, shape), stream_of(plan, entry.name, local.device)), threads)
    return local
