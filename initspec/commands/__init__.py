"""Commands of the ``initspec`` CLI that live in modules of their own (``initspec <name> ...``).

A command module defines:

* ``DESCRIPTION``: one line for ``initspec --help``;
* ``add_arguments(parser)``: its own options (the common ones, ``--config-dir``,
  ``--format``, ``--plot``, ``--seed`` ..., are already there);
* ``REQUIRES``: the keys the composed config must have (default ``("model", "initspec")``);
* ``run(cfg, args, words) -> int``: the exit code; ``words`` are the command line's
  positional words that are not Hydra overrides (``initspec diff spec native model=...``
  gives ``["spec", "native"]``). Mistakes raise :class:`initspec.InitSpecError` (exit 2).

Modules here import the library, never :mod:`initspec.cli`.
"""
from __future__ import annotations

COMMAND_MODULES: dict[str, str] = {}   # command name -> module path, e.g. "diff": "initspec.commands.diff"
COMMAND_MODULES["probe"] = "initspec.commands.probe"
COMMAND_MODULES["infer"] = "initspec.commands.infer"
COMMAND_MODULES["diff"] = "initspec.commands.diff"
