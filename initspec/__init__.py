"""initspec: declarative, config-driven parameter initialization for PyTorch.

    import initspec
    report = initspec.apply(model, "seed_custom", seed=0)   # preset name, YAML path, dict or DictConfig
    print(report.explain())

Names are imported on first use, so ``import initspec.configs`` (what Hydra
does to find the presets) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "apply": "api", "plan": "api", "load_spec": "api",
    "build": "builder", "meta_parameters": "builder",
    "STEPS": "catalog", "register_step": "catalog", "unregister_step": "catalog",
    "InitSpecError": "errors", "Problem": "errors",
    "preset_names": "load",
    "Entry": "plan", "Plan": "plan",
    "Report": "report", "Stats": "report",
    "Rule": "spec", "Spec": "spec", "Step": "spec", "Tie": "spec",
    "TieGroup": "ties",
    "save_checkpoint": "export", "load_checkpoint": "export",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'initspec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
