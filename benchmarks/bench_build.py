"""Target 3: ``initspec.build`` of GPT-2 small with the gpt2 preset vs what users do today.

Measured alternately in one process, each build freed before the next:

* initspec: ``initspec.build(gpt2_small, spec)`` — parameters on the meta device
  while constructing, then one materialization and a parallel chunk fill;
* normal + hand: ``gpt2_small()`` (PyTorch's default init of every layer) and then
  the hand-written ``torch.nn.init`` loop of target 2;
* floor: ``torch.empty`` of the same number of floats and one ``normal_`` — the
  single-thread floor for allocating and filling that much memory;
* transformers (context only): ``GPT2LMHeadModel(GPT2Config())``, when installed.
"""
from __future__ import annotations

import gc

import torch

from .common import Row, main, hand_init_gpt2, med, ms, paired_ratio, timed, REPEATS

N_LAYER = 12


def run() -> list[Row]:
    import initspec
    from initspec.execute import default_threads
    from initspec.models.gpt import gpt2_small
    spec = initspec.load_spec("gpt2", vars={"n_layer": N_LAYER})
    with torch.device("meta"):
        numel = sum(p.numel() for p in gpt2_small().parameters())
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is optional
        GPT2LMHeadModel = None

    def with_initspec():
        return initspec.build(gpt2_small, spec, device="cpu")

    def normal_then_hand():
        model = gpt2_small()
        hand_init_gpt2(model, N_LAYER)
        return model

    def floor():
        return torch.empty(numel).normal_(0.0, 0.02)

    def hf():
        return GPT2LMHeadModel(GPT2Config())

    runs = {"initspec": with_initspec, "normal+hand": normal_then_hand, "floor": floor}
    if GPT2LMHeadModel is not None:
        runs["transformers"] = hf
    for key in ("initspec", "floor", "transformers"):   # warm-up (lazy imports, allocator)
        if key in runs:
            runs[key]()
            gc.collect()
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for i in range(REPEATS):   # rotate the order: each pair of neighbours meets under the same load
        for key in order[i % len(order):] + order[:i % len(order)]:
            times[key].append(timed(runs[key]))
    t = {k: med(v) for k, v in times.items()}
    threads = default_threads()
    rows = [
        Row("3a. build GPT-2 small (gpt2) vs normal construction + hand loop",
            paired_ratio(times["initspec"], times["normal+hand"]), 0.5,
            f"initspec.build {ms(t['initspec'])} ({threads} fill threads) vs gpt2_small() + hand loop "
            f"{ms(t['normal+hand'])}"),
        Row("3b. build GPT-2 small (gpt2) vs single-thread floor",
            paired_ratio(times["initspec"], times["floor"]), 0.8,
            f"floor = torch.empty({numel / 1e6:.1f}M) + one normal_: {ms(t['floor'])}"),
    ]
    if "transformers" in t:
        rows.append(Row("3c. build GPT-2 small (gpt2) vs transformers GPT2LMHeadModel(GPT2Config())",
                        paired_ratio(times["initspec"], times["transformers"]), None,
                        f"transformers construction {ms(t['transformers'])} (context, no threshold)"))
    return rows


if __name__ == "__main__":
    main(run, "benchmarks.bench_build")
