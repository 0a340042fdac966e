"""Target 8: ``initspec.diff`` of two GPT-2 small models vs ``initspec.build`` of one.

The models are GPT-2 small (124M parameters) built with the gpt2 preset, seed 0
and seed 1: every random tensor differs in its values, so each is summarized on
both sides (mean, std, min, max, zeros over all values), sampled and put through
the KS test; this is the costly case. ``diff(a, b)`` and ``initspec.build`` of a
third model are timed alternately, each result freed before the next. The
benchmark checks that the report says what it must: 98 tensors identical (the
constants), 50 the same distribution, nothing differing. A second row, for
context, diffs ``a`` against a copy with the same values (bitwise path).
"""
from __future__ import annotations

from .common import Row, main, med, ms, paired, paired_ratio

N_LAYER = 12


def run() -> list[Row]:
    import initspec
    from initspec.models.gpt import gpt2_small
    spec = initspec.load_spec("gpt2", vars={"n_layer": N_LAYER})
    a, _ = initspec.build(gpt2_small, spec, seed=0)
    b, _ = initspec.build(gpt2_small, spec, seed=1)
    same, _ = initspec.build(gpt2_small, spec, seed=0)

    report = initspec.diff(a, b)                         # warm-up, and what the report must say
    counts = report.counts
    right = report.ok and counts == {"identical": 98, "same distribution": 50}
    identical = initspec.diff(a, same).counts == {"identical": 148}

    t_diff, t_build = paired(lambda: initspec.diff(a, b), lambda: initspec.build(gpt2_small, spec))
    t_same, t_build2 = paired(lambda: initspec.diff(a, same), lambda: initspec.build(gpt2_small, spec))
    checks = f"report {counts}: {'yes' if right else 'NO'}; copy all identical: {'yes' if identical else 'NO'}"
    return [
        Row("8. diff two GPT-2 small (seeds 0 and 1) vs build one", paired_ratio(t_diff, t_build), 1.5,
            f"initspec.diff {ms(med(t_diff))} vs initspec.build {ms(med(t_build))}; " + checks, right and identical),
        Row("8b. diff GPT-2 small against a copy of itself vs build one", paired_ratio(t_same, t_build2), None,
            f"initspec.diff {ms(med(t_same))} (bitwise equal: torch.equal on every tensor, one summary each) "
            f"vs initspec.build {ms(med(t_build2))}"),
    ]


if __name__ == "__main__":
    main(run, "benchmarks.bench_diff")
