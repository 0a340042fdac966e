"""initspec: declarative, config-driven parameter initialization for PyTorch.

    import initspec
    report = initspec.apply(model, "seed_custom", seed=0)   # preset name, YAML path, dict or DictConfig
    print(report.explain())
"""
from . import distributed
from .api import apply, load_spec, plan
from .builder import build, meta_parameters
from .catalog import STEPS, register_step, unregister_step
from .errors import InitSpecError, Problem
from .export import load_checkpoint, save_checkpoint
from .load import preset_names
from .plan import Entry, Plan
from .report import Report, Stats
from .spec import Rule, Spec, Step, Tie
from .ties import TieGroup

__all__ = [
    "apply", "plan", "load_spec", "build", "meta_parameters", "InitSpecError", "Problem", "register_step",
    "unregister_step", "save_checkpoint", "load_checkpoint", "Spec", "Rule", "Step", "Tie", "Plan", "Entry",
    "Report", "Stats", "TieGroup", "STEPS", "preset_names",
]
__version__ = "0.1.0"
