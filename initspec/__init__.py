"""initspec: declarative, config-driven parameter initialization for PyTorch.

    import initspec
    report = initspec.apply(model, "configs/initspec/seed_custom.yaml", seed=0)
    print(report.explain())
"""
from .api import apply, load_spec, plan
from .catalog import STEPS, register_step, unregister_step
from .errors import InitSpecError, Problem
from .load import preset_names
from .plan import Entry, Plan
from .report import Report, Stats
from .spec import Rule, Spec, Step, Tie
from .ties import TieGroup

__all__ = [
    "apply", "plan", "load_spec", "InitSpecError", "Problem", "register_step", "unregister_step",
    "Spec", "Rule", "Step", "Tie", "Plan", "Entry", "Report", "Stats", "TieGroup", "STEPS", "preset_names",
]
__version__ = "0.1.0"
