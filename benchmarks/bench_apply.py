"""Target 2: the gpt2 preset applied to GPT-2 small vs the same fills by hand with torch.nn.init.

Both run on the same already-built model (``initspec.models.gpt.gpt2_small``,
124M parameters, ``lm_head`` tied to ``wte``), alternately. The hand loop is
what HF's ``_init_weights`` does, written the way a user writes it: one
``torch.nn.init`` call per unique tensor (the tied embedding filled once).
The benchmark checks that the two fill the same set of tensors, and that
initspec's values are bitwise the same with 1, 2 and 4 threads.
"""
from __future__ import annotations

import torch

from .common import Row, main, hand_init_gpt2, med, ms, paired, paired_ratio

N_LAYER = 12


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run() -> list[Row]:
    import initspec
    from initspec.execute import default_threads
    from initspec.models.gpt import gpt2_small
    model = gpt2_small()
    spec = initspec.load_spec("gpt2", vars={"n_layer": N_LAYER})
    threads = default_threads()

    filled = {e.name for e in initspec.api.plan(model, spec).entries if e.action == "fill"}
    unique = {n for n, _ in model.named_parameters()}   # named_parameters lists a tied tensor once
    same_fills = filled == unique

    values = {}
    for t in (1, 2, 4):
        initspec.apply(model, spec, threads=t)
        values[t] = snapshot(model)
    bitwise = all(torch.equal(values[1][n], values[t][n]) for t in (2, 4) for n in values[1])
    del values

    hand_init_gpt2(model, N_LAYER)                     # warm-up both
    t_spec, t_hand = paired(lambda: initspec.apply(model, spec), lambda: hand_init_gpt2(model, N_LAYER))
    ratio = paired_ratio(t_spec, t_hand)
    checks = (f"values bitwise equal for 1/2/4 threads: {'yes' if bitwise else 'NO'}; "
              f"same {len(unique)} tensors filled: {'yes' if same_fills else 'NO'}")
    return [Row("2. apply gpt2 preset to GPT-2 small vs hand torch.nn.init loop", ratio, 0.75,
                f"initspec.apply {ms(med(t_spec))} ({threads} fill threads) vs hand loop {ms(med(t_hand))}; "
                + checks, bitwise and same_fills)]


if __name__ == "__main__":
    main(run, "benchmarks.bench_apply")
