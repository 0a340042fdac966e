"""``initspec infer``: write the spec that reproduces a model's initialization.

    initspec infer model=gpt_tiny                                   # the model's own init, the spec on stdout
    initspec infer --out spec.yaml model=gpt2_small                 # written to a file
    initspec infer --from init.safetensors --out spec.yaml model=gpt_tiny   # values from a file, structure from model

Without ``--from`` the model is built for real from ``model`` (its ``_target_``), so its
own initialization runs, with the global RNG seeded by ``--seed`` (default 0) inside a
fork that restores it. With ``--from`` the structure is built on the meta device and
the values are read from the safetensors file. The spec is :func:`initspec.infer`'s YAML.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = "write the spec that reproduces a model's initialization (--from FILE.safetensors, --out spec.yaml)"
REQUIRES = ("model",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_file", metavar="FILE",
                        help="infer: read the values from this safetensors file (model= gives the structure)")


def run(cfg: Any, args: argparse.Namespace, words: list[str]) -> int:
    from ..errors import InitSpecError
    from ..infer import infer
    if words:
        raise InitSpecError(words[0], f"infer takes no positional words (got {' '.join(words)})",
                            "give the model as a Hydra override (model=gpt_tiny) and a file with --from FILE")
    seed = 0 if args.seed is None else args.seed
    if args.from_file:
        inferred = infer(args.from_file, model=cfg.model, seed=seed, option="--from")
    else:
        inferred = infer(built_natively(cfg.model, seed), seed=seed)
    if not args.out:
        sys.stdout.write(inferred.yaml)
        return 0
    try:
        Path(args.out).write_text(inferred.yaml)
    except OSError as exc:
        raise InitSpecError("--out", f"cannot write {args.out!r}: {exc}", "check the path and its permissions") from None
    unexplained = f", {len(inferred.unexplained)} unexplained tensor(s) listed in its header" \
        if inferred.unexplained else ""
    print(f"wrote {args.out}: {inferred.rules} rule(s), {len(inferred.data.get('ties', {}))} tie group(s){unexplained}")
    return 0


def built_natively(model_cfg: Any, seed: int) -> Any:
    """The model with its own initialization, the global RNG seeded in a fork (restored after)."""
    import torch
    from ..builder import instantiate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return instantiate(model_cfg)
