"""initspec: declarative, config-driven parameter initialization for PyTorch.

    import initspec
    report = initspec.apply(model, "seed_custom", seed=0)   # preset name, YAML path, dict or DictConfig
    print(report.explain())
"""
from . import distributed
from .api import apply, load_spec, plan
from .builder import build, meta_parameters
from .diff import diff
from .errors import InitSpecError, Problem, StepArgError
from .export import load_checkpoint, save_checkpoint
from .infer import Inferred, infer
from .load import preset_names
from .primitives import Op, Primitive
from .probe import ProbeResult, probe
from .report import Report, Stats
from .results import Entry, Plan, RuleSummary
from .spec import Rule, Spec, Step, Tie
from .steps import STEPS, Arg, register_step, unregister_step
from .tensor_info import TensorInfo
from .ties import TieGroup

__all__ = [
    "apply", "plan", "load_spec", "build", "meta_parameters", "InitSpecError", "Problem", "StepArgError",
    "register_step", "unregister_step", "Arg", "Primitive", "Op", "TensorInfo", "save_checkpoint",
    "load_checkpoint", "Spec", "Rule", "Step", "Tie", "Plan", "Entry", "RuleSummary", "Report", "Stats",
    "TieGroup", "STEPS", "preset_names", "infer", "Inferred", "probe", "ProbeResult", "diff",
]
__version__ = "0.1.0"
LAUNCHERS = ("hf", "lightning")   # initspec.hf, initspec.lightning: loaded on first use, so their extras stay optional


def __getattr__(name: str):
    if name in LAUNCHERS:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
