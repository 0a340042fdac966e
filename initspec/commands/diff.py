"""``initspec diff A B``: compare two initializations tensor by tensor (:func:`initspec.diff`).

    initspec diff spec native model=gpt_tiny initspec=gpt2     # does the preset reproduce the model's own init?
    initspec diff spec seed.safetensors model=gpt_tiny initspec=gpt2   # against a saved seed checkpoint
    initspec diff a.safetensors b.safetensors --format json    # two files; --plot FILE.png for histograms

Each of A and B is one of:

* ``spec``: the composed ``model`` initialized by the composed ``initspec``
  (``initspec.build(cfg.model, cfg.initspec, device="cpu")``, with ``--seed``,
  ``--threads`` and ``--allow-fn``);
* ``native``: the composed ``model`` with its constructor's own init
  (``initspec.builder.instantiate(cfg.model)``), drawn from torch's global
  generator seeded with ``--seed`` (default 0) inside ``torch.random.fork_rng``,
  so runs repeat and the caller's RNG state is untouched;
* a path to a safetensors file (``initspec apply --out`` writes them, with ties).

Exit code 0 when every tensor agrees, 1 when something differs, 2 on a usage error.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DESCRIPTION = "compare two initializations tensor by tensor: initspec diff A B, each spec, native or FILE.safetensors"
REQUIRES = ()          # checked per word: spec needs model and initspec, native needs model
WORDS = ("spec", "native")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..compare import SAMPLE
    parser.add_argument("--sample", type=int, default=SAMPLE,
                        help=f"diff: values per side drawn for the KS test (default {SAMPLE})")
    parser.add_argument("--expand", action="store_true",
                        help="diff: one row per tensor (agreeing tensors are otherwise collapsed by name template)")


def run(cfg: Any, args: argparse.Namespace, words: list[str]) -> int:
    from ..diff import diff
    from ..errors import InitSpecError
    if len(words) != 2:
        got = f": {' '.join(words)}" if words else ""
        raise InitSpecError("diff", f"diff compares two initializations, got {len(words)} word(s){got}",
                            "give two of spec, native or a .safetensors path, e.g. "
                            "initspec diff spec native model=gpt_tiny initspec=gpt2")
    sides = [resolve(word, cfg, args) for word in words]
    report = diff(sides[0], sides[1], labels=(words[0], words[1]), sample=args.sample)
    if args.format == "json":
        print(report.to_json())
    else:
        print(report.explain(width=args.width, collapse=not args.expand), end="")
    if args.plot:
        report.plot(args.plot)
        if args.format != "json":
            print(f"histograms: {args.plot}")
    return 0 if report.ok else 1


def resolve(word: str, cfg: Any, args: argparse.Namespace) -> Any:
    """The model or path a word of the command line names."""
    from ..errors import InitSpecError, suggest
    if word in WORDS:
        needed = ("model", "initspec") if word == "spec" else ("model",)
        for key in needed:
            if cfg.get(key) is None:
                raise InitSpecError(key, f"'{word}' builds the composed {key}, but the config has none",
                                    f"add {key} to the config or the command line (e.g. model=gpt_tiny initspec=gpt2)")
        return built(cfg, args) if word == "spec" else native(cfg, args)
    if not Path(word).exists():
        raise InitSpecError("diff", f"{word!r} is neither spec, native nor an existing file.{suggest(word, WORDS)}",
                            "give spec, native or the path of a .safetensors file (initspec apply --out writes one)")
    return word


def built(cfg: Any, args: argparse.Namespace) -> Any:
    from ..builder import build
    model, _ = build(cfg.model, cfg.initspec, device="cpu", seed=args.seed, allow_fn=args.allow_fn,
                     threads=args.threads)
    return model


def native(cfg: Any, args: argparse.Namespace) -> Any:
    import torch
    from ..builder import instantiate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if args.seed is None else args.seed)
        return instantiate(cfg.model)
