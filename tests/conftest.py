import pytest
import torch


def snapshot(model: torch.nn.Module) -> dict:
    """Every tensor (by every name) cloned, plus object identities."""
    tensors = {}
    for name, t in model.named_parameters(remove_duplicate=False):
        tensors["p:" + name] = (t, t.detach().clone())
    for name, t in model.named_buffers(remove_duplicate=False):
        tensors["b:" + name] = (t, t.detach().clone())
    modules = {name: m for name, m in model.named_modules(remove_duplicate=False)}
    return {"tensors": tensors, "modules": modules}


def assert_unchanged(model: torch.nn.Module, snap: dict) -> None:
    now = snapshot(model)
    assert now["tensors"].keys() == snap["tensors"].keys()
    for key, (obj, values) in snap["tensors"].items():
        current = now["tensors"][key][0]
        assert current is obj, f"{key} was replaced"
        if not values.is_meta:
            assert torch.equal(current.detach(), values), f"{key} changed"
    assert now["modules"].keys() == snap["modules"].keys()
    for key, module in snap["modules"].items():
        assert now["modules"][key] is module, f"module {key} was replaced"


@pytest.fixture
def unchanged():
    return snapshot, assert_unchanged


def fill_region(plan, name: str, local: torch.Tensor, offset: tuple[int, ...], shape: tuple[int, ...],
                threads: int = 1) -> torch.Tensor:
    """Fill ``local`` as the process holding ``shape[offset:]`` of entry ``name`` would (no processes)."""
    from initspec.execute import stream_of
    from initspec.fill import fill_tasks, run_tasks
    from initspec.sharding import Region
    entry = plan.entry(name)
    run_tasks(fill_tasks(entry.ops, Region(local, offset, shape), stream_of(plan, entry, local.device)), threads)
    return local
