"""Target 9: ``initspec.infer`` of GPT-2 small vs building it (``initspec.build`` with the gpt2 preset).

Measured alternately in one process: inferring the spec of a GPT-2 small that the gpt2
preset initialized (124M values: whole-tensor extremes and sums, at most 8192 sampled
values per tensor for the tests, formulas fitted per group) against
``initspec.build(gpt2_small, gpt2)`` (construction on meta, materialization, fill).
The row also checks that the inferred spec is the preset's in substance: four rules,
N(0, 0.02) weights, ``0.02 / sqrt(2 * n_layer)`` on the residual projections, the tie.
"""
from __future__ import annotations

from .common import Row, main, med, ms, paired, paired_ratio

N_LAYER = 12


def run() -> list[Row]:
    import initspec
    from initspec.models.gpt import gpt2_small
    spec = initspec.load_spec("gpt2", vars={"n_layer": N_LAYER})
    model, _ = initspec.build(gpt2_small, spec)
    inferred = initspec.infer(model)                  # warm-up both
    initspec.build(gpt2_small, spec)
    t_infer, t_build = paired(lambda: initspec.infer(model), lambda: initspec.build(gpt2_small, spec))
    rules = inferred.data["rules"]
    recovered = (len(rules) == 4 and "0.02 / sqrt(2 * n_layer)" in inferred.yaml
                 and {"name": "normal", "mean": 0, "std": 0.02} in (r["init"] for r in rules.values())
                 and inferred.data.get("ties") == {"lm_head": ["transformer.wte.weight", "lm_head.weight"]}
                 and not inferred.unexplained)
    return [Row("9. infer the spec of GPT-2 small (gpt2 preset) vs initspec.build of it",
                paired_ratio(t_infer, t_build), 3.0,
                f"initspec.infer {ms(med(t_infer))} vs initspec.build {ms(med(t_build))}; "
                f"{len(rules)} rules, the preset's formulas recovered: {'yes' if recovered else 'NO'}", recovered)]


if __name__ == "__main__":
    main(run, "benchmarks.bench_infer")
