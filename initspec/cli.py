"""The ``initspec`` command: explain, check, apply and measure a spec against a model.

    initspec [COMMAND] [--config-dir DIR] [--config-name NAME] [OPTIONS] [HYDRA OVERRIDES ...]

The composed config holds ``model`` (instantiable, ``_target_``) and
``initspec`` (the spec). Without ``--config-dir`` the shipped configs are
used; the ``initspec`` presets and ``model`` examples are reachable from any
config dir through initspec's Hydra search-path plugin. With no arguments it
runs the built-in default: the seed notebook's MLP with ``seed_custom``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

COMMANDS = {
    "run": "build, initialize, show the plan and the statistics (default)",
    "explain": "show the plan as a table (or --format json); the model is built empty, nothing is filled",
    "check": "validate the spec against the model: exit 0, or exit 2 listing every problem",
    "apply": "build, initialize and save a seed checkpoint (--out FILE.safetensors)",
    "stats": "measured statistics per rule next to the expected std (--plot FILE.png for histograms)",
    "presets": "list the shipped presets",
}
DEFAULT_CONFIG = "initspec_cli"


def command_module(name: str) -> Any:
    """The module of a command that lives in initspec.commands (None for the built-in ones)."""
    import importlib
    from .commands import COMMAND_MODULES
    return importlib.import_module(COMMAND_MODULES[name]) if name in COMMAND_MODULES else None


def all_commands() -> dict[str, str]:
    from .commands import COMMAND_MODULES
    return {**COMMANDS, **{name: command_module(name).DESCRIPTION for name in COMMAND_MODULES}}


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    commands = all_commands()
    parser = argparse.ArgumentParser(
        prog="initspec", description=__doc__.split("\n\n")[0],
        epilog="commands:\n" + "\n".join(f"  {k:9s} {v}" for k, v in commands.items())
        + "\n\nexamples:\n  initspec explain model=gpt_tiny initspec=gpt2\n"
          "  initspec check initspec.rules.weights.init.std=-1\n"
          "  initspec apply --out seed.safetensors model=gpt_tiny initspec=gpt2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", help="one of: " + ", ".join(commands))
    parser.add_argument("--config-dir", help="a Hydra config directory holding your configs")
    parser.add_argument("--config-name", default=None, help=f"primary config name (default: {DEFAULT_CONFIG})")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="explain: output format")
    parser.add_argument("--out", help="apply: where to write the safetensors seed checkpoint")
    parser.add_argument("--plot", help="stats/run: write histograms per rule to this PNG")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument("--device", default="cpu", help="where parameters are materialized (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="fill threads (values never depend on it)")
    parser.add_argument("--allow-fn", action="append", default=[], metavar="PREFIX",
                        help="allow fn: steps under this dotted prefix (repeatable); torch.nn.init always")
    parser.add_argument("--width", type=int, default=None, help="table width in characters")
    named = next((a for a in argv if not a.startswith("-")), None)
    module = command_module(named) if named else None
    if module is not None:
        module.add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    if args.command not in commands:
        if "=" in args.command or args.command.startswith(("~", "+")):
            rest.insert(0, args.command)
            args.command = "run"
        else:
            parser.error(f"unknown command {args.command!r}; commands: {', '.join(commands)}")
    unknown = [r for r in rest if r.startswith("-")]
    if unknown:
        parser.error(f"unrecognized options: {' '.join(unknown)}")
    args.words = []
    if module is not None:   # positional words of the command (diff's "spec native"), not Hydra overrides
        args.words = [r for r in rest if "=" not in r and not r.startswith(("~", "+"))]
        rest = [r for r in rest if r not in args.words]
    return args, rest


def compose(config_dir: str | None, config_name: str | None, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    if config_dir:
        context = initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None)
    else:
        context = initialize_config_module(config_module="initspec_configs", version_base=None)
    with context:
        return hydra_compose(config_name=config_name or DEFAULT_CONFIG, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # e.g. `initspec explain | head`
        sys.stderr.close()
        return 0


def _main(argv: list[str]) -> int:
    args, overrides = parse(argv)
    if args.command == "presets":
        return _presets()
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from .errors import InitSpecError
    try:
        for option in ("out", "plot"):
            _check_writable(getattr(args, option), option)
        try:
            cfg = compose(args.config_dir, args.config_name, overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            print(f"error: cannot compose the config: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:   # e.g. a name where a list index belongs (init.std on a list of steps)
            print(f"error: cannot compose the config: an override does not fit the config ({exc}). Fix: check "
                  "the override paths; steps in a list are addressed by index (initspec.rules.x.init.0.std)",
                  file=sys.stderr)
            return 2
        module = command_module(args.command)
        for key in getattr(module, "REQUIRES", ("model", "initspec")):
            if key not in cfg:
                raise InitSpecError(key, f"the composed config has no {key!r}",
                                    f"add {key} to the config (e.g. defaults: [model: seed_mlp, initspec: seed_custom])")
        if module is not None:
            return module.run(cfg, args, args.words)
        return COMMAND_FUNCTIONS[args.command](cfg, args)
    except InitSpecError as exc:
        print("error: " + ("the spec has problems:" if args.command == "check" else "initspec failed:"), file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2


def _check_writable(path: str | None, option: str) -> None:
    """Fail before any work when an output file cannot be written."""
    from .errors import InitSpecError
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise InitSpecError(f"--{option}", f"the directory {str(parent)!r} does not exist",
                            "create it first or write somewhere else")
    if Path(path).is_dir():
        raise InitSpecError(f"--{option}", f"{path!r} is a directory", "give a file name")


def _presets() -> int:
    from .load import preset_description, preset_names
    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:{width}s}  {preset_description(name)}")
    return 0


def _plan(cfg: Any, args: argparse.Namespace):
    from .api import plan
    from .builder import instantiate, meta_parameters
    with meta_parameters():
        model = instantiate(cfg.model)
    return plan(model, cfg.initspec, seed=args.seed, allow_fn=args.allow_fn)


def _build(cfg: Any, args: argparse.Namespace):
    from .builder import build
    with Progress() as progress:
        return build(cfg.model, cfg.initspec, device=args.device, seed=args.seed, allow_fn=args.allow_fn,
                     threads=args.threads, progress=progress)


def cmd_explain(cfg: Any, args: argparse.Namespace) -> int:
    the_plan = _plan(cfg, args)
    print(the_plan.to_json() if args.format == "json" else the_plan.explain(width=args.width))
    return 0


def cmd_check(cfg: Any, args: argparse.Namespace) -> int:
    the_plan = _plan(cfg, args)
    filled = sum(1 for e in the_plan.entries if e.action == "fill")
    print(f"ok: {len(the_plan.entries)} tensors, {filled} filled by {len(the_plan.rules)} rules, "
          f"{len(the_plan.ties)} tie group(s)")
    for warning in the_plan.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_run(cfg: Any, args: argparse.Namespace) -> int:
    return _show_stats(cfg, args, with_plan=True)


def cmd_stats(cfg: Any, args: argparse.Namespace) -> int:
    return _show_stats(cfg, args, with_plan=False)


def _show_stats(cfg: Any, args: argparse.Namespace, with_plan: bool) -> int:
    """Build and initialize; print the report table (``run``), per-rule statistics, histograms."""
    from .render import render_rule_stats
    model, report = _build(cfg, args)
    if with_plan:
        print(report.explain(width=args.width))
    print(render_rule_stats(report, width=args.width))
    if args.plot:
        plot_histograms(report, args.plot)
        print(f"histograms: {args.plot}")
    return 0


def cmd_apply(cfg: Any, args: argparse.Namespace) -> int:
    from .errors import InitSpecError
    from .export import save_checkpoint
    if not args.out:
        raise InitSpecError("--out", "apply needs --out FILE.safetensors", "e.g. initspec apply --out seed.safetensors")
    model, report = _build(cfg, args)
    try:
        aliases = save_checkpoint(model, args.out, report.plan)
    except Exception as exc:   # OSError, SafetensorError: the file system said no
        raise InitSpecError("--out", f"cannot write {args.out!r}: {exc}", "check the path and its permissions") from None
    tied = sum(1 for v in aliases.values() if v)
    print(f"wrote {args.out}: {len(aliases)} tensors ({tied} with tied names), seed {report.plan.seed}, "
          f"{report.seconds:.3f} s")
    return 0


COMMAND_FUNCTIONS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "run": cmd_run, "explain": cmd_explain, "check": cmd_check, "apply": cmd_apply, "stats": cmd_stats,
}


def plot_histograms(report: Any, path: str, max_values: int = 200_000) -> None:
    """One histogram panel per rule, with the expected std in the title (no pyplot: the caller's backend and
    figures are left alone)."""
    import torch
    from .figures import figure, save
    from .sharding import local_tensor
    from .tree import walk
    tensors = {s.name: s.tensor for s in walk(report.model).tensors}
    stats = report.rule_stats()
    rules = list(stats)
    if not rules:
        return
    cols = min(3, len(rules))
    rows = (len(rules) + cols - 1) // cols
    fig, axes = figure(rows, cols, figsize=(4.5 * cols, 3.2 * rows))
    generator = torch.Generator().manual_seed(0)
    for ax, rule in zip(axes.flat, rules):
        values = [local_tensor(tensors[e.name]).detach()
                  for e in report.plan.entries if e.rule == rule and e.name in tensors]
        ax.hist(sample_values(values, max_values, generator).numpy(), bins=60, color="#4477aa")
        for std in stats[rule]["expected_std"]:          # mean +- expected std, dashed
            if std > 0:
                for x in (stats[rule]["mean"] - std, stats[rule]["mean"] + std):
                    ax.axvline(x, color="#cc6677", linestyle="--", linewidth=1)
        expected = ", ".join(f"{x:.3g}" for x in stats[rule]["expected_std"]) or "-"
        ax.set_title(f"{rule} ({stats[rule]['tensors']} tensors): std {stats[rule]['std']:.3g} "
                     f"(expected {expected})", fontsize=9)
        ax.locator_params(axis="x", nbins=5)
    for ax in list(axes.flat)[len(rules):]:
        ax.axis("off")
    save(fig, path)


def sample_values(tensors: list[Any], limit: int, generator: Any) -> Any:
    """All values of ``tensors`` as one float tensor, or ``limit`` of them drawn uniformly
    (with replacement) when there are more: a histogram of GPT-2's 124M values costs ~0.1 s."""
    import torch
    sizes = [t.numel() for t in tensors]
    total = sum(sizes)
    if total <= limit:
        return torch.cat([t.reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)
    parts = [t.reshape(-1)[torch.randint(0, n, (max(1, round(limit * n / total)),), generator=generator)].float()
             for t, n in zip(tensors, sizes) if n]
    return torch.cat(parts)


class Progress:
    """A rich progress bar on stderr that appears once filling has taken more than ``delay`` seconds."""

    def __init__(self, delay: float = 1.0):
        self.delay = delay
        self.start = time.perf_counter()
        self.bar = None
        self.task = None

    def __enter__(self) -> "Progress":
        self.start = time.perf_counter()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if time.perf_counter() - self.start < self.delay or done >= total:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
            self.bar = RichProgress(TextColumn("initializing"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                    TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("init", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
