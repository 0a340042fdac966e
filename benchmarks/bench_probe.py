"""Issue 15: ``initspec.probe`` with a loss on GPT-2 small vs the forward and backward pass it wraps.

Both sides run on the same GPT-2 small (``initspec.models.gpt.gpt2_small`` filled
by the gpt2 preset) and the same batch (4 sequences of 64 random tokens, the
next-token cross-entropy), alternately:

* plain: ``loss(model(tokens), tokens).backward()``, then ``zero_grad(set_to_none=True)``
  so every repetition allocates its gradients as the probe's does;
* probe: ``initspec.probe(model, tokens, loss=loss)`` — forward hooks on all 163
  modules (a var_mean and a count_nonzero per output, one host transfer at the
  end), ``torch.autograd.grad``, a var_mean and a norm per parameter, the
  forked RNG and the buffer snapshot.

The target is probe / plain <= 1.3.
"""
from __future__ import annotations

import torch

from .common import Row, main, med, ms, paired, paired_ratio

N_LAYER = 12


def run() -> list[Row]:
    import initspec
    from initspec.models.gpt import gpt2_small
    from initspec.probe_data import NextTokenLoss, random_tokens
    model = gpt2_small()
    initspec.apply(model, "gpt2", vars={"n_layer": N_LAYER})
    tokens = random_tokens(4, 64, 50257, seed=0)
    loss = NextTokenLoss()

    def plain():
        loss(model(tokens), tokens).backward()
        model.zero_grad(set_to_none=True)

    def probed():
        return initspec.probe(model, tokens, loss=loss)

    plain()                                    # warm-up both
    result = probed()
    modules = len(result.modules)
    t_probe, t_plain = paired(probed, plain)
    ratio = paired_ratio(t_probe, t_plain)
    same_loss = abs(result.loss - float(loss(model(tokens), tokens).detach())) < 1e-4
    untouched = all(p.grad is None for p in model.parameters())
    return [Row("15. probe GPT-2 small with a loss vs plain forward + backward", ratio, 1.3,
                f"initspec.probe {ms(med(t_probe))} vs forward + backward {ms(med(t_plain))} "
                f"(4 x 64 tokens, {modules} modules, {torch.get_num_threads()} torch threads); "
                f"same loss: {'yes' if same_loss else 'NO'}; .grad left None: {'yes' if untouched else 'NO'}",
                same_loss and untouched)]


if __name__ == "__main__":
    main(run, "benchmarks.bench_probe")
