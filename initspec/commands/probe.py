"""``initspec probe``: build a model with a spec, run it on one batch, show what every layer outputs.

    initspec probe model=gpt_tiny initspec=gpt2 probe=tokens              # table (--format json, --plot FILE.png)
    initspec probe model=mup_mlp initspec=mup probe=features initspec.vars.base_width=64 \\
        --sweep model.width=64,128,256,512 --steps 3 --lr 0.01 --lr-scaling mup      # the muP coordinate check

The batch comes from the ``probe`` config group: ``probe.data`` is instantiated
(``_target_``: a function returning a batch) and ``probe.loss``, when present,
is instantiated to a callable ``loss(output, batch) -> scalar``. The model is
built with ``initspec.build(cfg.model, cfg.initspec, data=batch)``, so a spec
with an ``lsuv`` step works here too. With ``--sweep KEY=V1,V2,...`` the model is
built once per value of the config key and probed at init and after each of
``--steps`` optimizer steps on the batch (:mod:`initspec.coordcheck`).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

DESCRIPTION = "per-layer activation and gradient statistics on a batch (--sweep KEY=V1,V2,...: coordinate check)"
REQUIRES = ("model", "initspec")
PROBES = "probe=tokens (GPT models), probe=images (ResNet, ViT), probe=features (mup_mlp)"
SWEEP_OPTIONS = ("steps", "lr", "optimizer", "lr_scaling", "tolerance")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...",
                        help="probe: coordinate check over these values of a config key (e.g. model.width=64,128,256)")
    parser.add_argument("--steps", type=int, default=None, help="probe --sweep: optimizer steps after init (default 3)")
    parser.add_argument("--lr", type=float, default=None, help="probe --sweep: learning rate (default 0.01)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help="probe --sweep: default adam")
    parser.add_argument("--lr-scaling", choices=("none", "mup"), default=None,
                        help="probe --sweep: mup = initspec.models.mup.mup_param_groups (lr / m for hidden and "
                             "readout weights, m = vars.width / vars.base_width of the spec)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="probe --sweep: largest |slope| of log RMS vs log width counted as stable (default 0.2)")


def run(cfg: Any, args: argparse.Namespace, words: list[str]) -> int:
    from ..errors import InitSpecError
    if words:
        raise InitSpecError(words[0], f"probe takes no positional words (got {' '.join(words)})",
                            "give Hydra overrides as key=value, e.g. probe=tokens")
    if cfg.get("probe") is None or cfg.probe.get("data") is None:
        raise InitSpecError("probe", "the probe command needs a batch: the composed config has no probe.data",
                            f"choose a probe config: {PROBES} (with your own --config-dir: +probe=tokens)")
    if args.sweep is not None:
        return coordinate_check(cfg, args)
    given = [f"--{name.replace('_', '-')}" for name in SWEEP_OPTIONS if getattr(args, name) is not None]
    if given:
        raise InitSpecError(given[0], f"{given[0]} belongs to the coordinate check",
                            "add --sweep KEY=V1,V2,... (e.g. --sweep model.width=64,128,256) or leave it out")
    return probe_once(cfg, args)


def probe_once(cfg: Any, args: argparse.Namespace) -> int:
    from ..probe import checked_loss, probe
    from ..probe_render import plot_probe
    loss = configured_loss(cfg)
    model, batch = built(cfg, args)
    checked = None if loss is None else checked_loss(loss, "probe.loss")
    result = model_errors(lambda: probe(model, batch, loss=checked))
    print(result.to_json() if args.format == "json" else result.table(width=args.width), end="")
    if args.plot:
        plot_probe(result, args.plot)
    show_plot(args)
    return 0


def coordinate_check(cfg: Any, args: argparse.Namespace) -> int:
    from ..coordcheck import TOLERANCE, coord_check
    from ..errors import InitSpecError
    from ..probe_render import plot_coord_check
    key, values = sweep_values(cfg, args.sweep)
    loss = configured_loss(cfg)
    if loss is None:
        raise InitSpecError("probe.loss", "the coordinate check trains on the batch, so it needs a loss",
                            f"choose a probe config with a loss: {PROBES}")
    multipliers: dict[Any, tuple[float, float]] = {}   # model -> (vars.width, vars.base_width) it was built with

    def build(value: float) -> tuple[Any, Any]:
        at = with_value(cfg, key, value)
        model, batch = built(at, args)
        if args.lr_scaling == "mup":
            multipliers[model] = mup_widths(at)
        return model, batch

    def mup_groups(model: Any, lr: float) -> list[dict]:
        from ..models.mup import mup_param_groups
        width, base_width = multipliers.pop(model)
        return mup_param_groups(model, lr, width=width, base_width=base_width)

    steps = 3 if args.steps is None else args.steps
    lr = 0.01 if args.lr is None else args.lr
    optimizer = args.optimizer or "adam"
    check = model_errors(lambda: coord_check(
        build, values, loss, steps=steps, lr=lr, optimizer=optimizer,
        param_groups=mup_groups if args.lr_scaling == "mup" else None,
        tolerance=TOLERANCE if args.tolerance is None else args.tolerance, key=key))
    print(check.to_json() if args.format == "json" else check.table(width=args.width), end="")
    if args.plot:
        rates = "µP learning rates (mup_param_groups)" if args.lr_scaling == "mup" else "the same lr for every layer"
        trained = f"{steps} step{'' if steps == 1 else 's'} on one batch"
        plot_coord_check(check, args.plot, f"{optimizer}, lr {lr:g}, {rates}, {trained}")
    show_plot(args)
    return 0


def show_plot(args: argparse.Namespace) -> None:
    if args.format == "json":
        print()
    elif args.plot:
        print(f"plot: {args.plot}")


# ------------------------------------------------------------------ config

def built(cfg: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """The batch from probe.data, and the model built by the spec with that batch (for lsuv steps)."""
    from ..builder import build
    batch = on_device(instantiated(cfg.probe.data, "probe.data"), args.device)
    model, _ = build(cfg.model, cfg.initspec, device=args.device, seed=args.seed, allow_fn=args.allow_fn,
                     threads=args.threads, data=batch)
    return model, batch


def configured_loss(cfg: Any) -> Callable[[Any, Any], Any] | None:
    from ..errors import InitSpecError
    node = cfg.probe.get("loss")
    if node is None:
        return None
    loss = instantiated(node, "probe.loss")
    if not callable(loss):
        raise InitSpecError("probe.loss", f"probe.loss built a {type(loss).__name__}, not a callable",
                            "point _target_ at a loss class (initspec.probe_data.NextTokenLoss) or use _partial_: true")
    return loss


def instantiated(node: Any, path: str) -> Any:
    """``hydra.utils.instantiate(node)``; its failures (and InitSpecErrors raised inside) name ``path``."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig
    from ..errors import InitSpecError
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise InitSpecError(path, f"{path} needs a _target_", "e.g. _target_: initspec.probe_data.random_tokens")
    try:
        return instantiate(node)
    except Exception as exc:
        cause = exc.__cause__
        if isinstance(cause, InitSpecError):
            raise cause from None
        raise InitSpecError(path, f"cannot instantiate {path}: {exc}", f"check {path}._target_ and its arguments") \
            from None


def on_device(batch: Any, device: str) -> Any:
    """The batch with every tensor in it moved to ``device``."""
    import torch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: on_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(on_device(v, device) for v in batch)
    return batch


def sweep_values(cfg: Any, text: str) -> tuple[str, list[float]]:
    """``KEY=V1,V2,...`` as the config key and its numbers."""
    from omegaconf import OmegaConf
    from ..errors import InitSpecError
    key, sep, listed = text.partition("=")
    if not sep or not key or not listed:
        raise InitSpecError("--sweep", f"{text!r} is not KEY=V1,V2,...", "e.g. --sweep model.width=64,128,256,512")
    if OmegaConf.select(cfg, key, default=None) is None:
        raise InitSpecError("--sweep", f"the composed config has no key {key!r}",
                            "sweep a key of the model config, e.g. model.width (mup_mlp) or model.n_embd (gpt_tiny)")
    values = []
    for item in listed.split(","):
        try:
            number = float(item)
        except ValueError:
            raise InitSpecError("--sweep", f"{item!r} in {text!r} is not a number",
                                "give numbers: --sweep model.width=64,128,256") from None
        values.append(int(number) if number.is_integer() else number)
    return key, values


def with_value(cfg: Any, key: str, value: float) -> Any:
    """A copy of the composed config with ``key`` set to ``value`` (interpolations such as the spec's
    ``${model.width}`` then read the new value)."""
    import copy
    from omegaconf import OmegaConf
    at = copy.deepcopy(cfg)
    OmegaConf.update(at, key, value, merge=False)
    return at


def mup_widths(cfg: Any) -> tuple[float, float]:
    """The spec's vars.width and vars.base_width, resolved."""
    from ..errors import InitSpecError
    spec_vars = cfg.initspec.get("vars") or {}
    if "width" not in spec_vars or "base_width" not in spec_vars:
        raise InitSpecError("--lr-scaling", "mup learning rates need the spec's vars.width and vars.base_width",
                            "use initspec=mup, or leave --lr-scaling out")
    return float(spec_vars.width), float(spec_vars.base_width)


def model_errors(run: Callable[[], Any]) -> Any:
    """``run()``; an error the model or the loss raises on the batch becomes an InitSpecError naming probe.data."""
    from ..errors import InitSpecError
    try:
        return run()
    except InitSpecError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise InitSpecError("probe.data", f"the model cannot run on the batch: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}",
                            f"choose a probe config that fits the model: {PROBES}") from None
