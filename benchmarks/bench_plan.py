"""Target 1: plan 100,000 parameter tensors against 200 rules, vs the naive fnmatch loop.

The model is a 1000-layer mixture-of-experts transformer on the meta device
(100 parameter tensors per layer: norms, attention, router, 17 experts). The
spec is what people write for such a model: catch-alls (``*.weight``,
``*.bias``), module-filtered norms, residual globs scaled by ``layer``,
``layers.3.*``-style per-layer globs, per-layer literal overrides, ``?`` and
``[..]`` globs and a few ``re:`` rules — 200 rules in all.

The naive loop is what planning costs without compiled patterns: for every
name, ``fnmatch.fnmatchcase`` (``re.fullmatch`` for ``re:``) against every
pattern of every rule, highest priority (then latest) wins — selection only,
no module/ndim filters, no expressions, no plan objects, so it does less than
``initspec.plan``. It is timed on every 10th name and scaled by 10 (its cost
is exactly linear in the names), so the benchmark stays under a minute.
"""
from __future__ import annotations

import fnmatch
import gc
import re

import torch
from torch import nn

from .common import Row, main, ms, paired, paired_ratio, med

N_LAYER = 1000
N_EXPERT = 17
SAMPLE = 10
DIM = 8
META = {"device": "meta"}  # explicit: a torch.device('meta') context slows construction 5x


class Linear(nn.Linear):
    """nn.Linear without its default init (the benchmark model lives on the meta device)."""

    def reset_parameters(self) -> None:
        pass


class LayerNorm(nn.LayerNorm):
    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.RMSNorm):
    def reset_parameters(self) -> None:
        pass


class Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = Linear(DIM, 2 * DIM, **META)
        self.w2 = Linear(2 * DIM, DIM, **META)
        self.w3 = Linear(DIM, 2 * DIM, bias=False, **META)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (Linear(DIM, DIM, **META) for _ in range(4))
        self.q_norm, self.k_norm = RMSNorm(DIM, **META), RMSNorm(DIM, **META)


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.router = Linear(DIM, N_EXPERT, bias=False, **META)
        self.experts = nn.ModuleList(Expert() for _ in range(N_EXPERT))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = LayerNorm(DIM, **META)
        self.attn = Attention()
        self.ln_2 = LayerNorm(DIM, **META)
        self.mlp = MoE()


def clone(module: nn.Module) -> nn.Module:
    """A structural copy with fresh meta parameters (10x faster than constructing: no __setattr__)."""
    new = type(module).__new__(type(module))
    new.__dict__ = {k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
    new._parameters = {k: None if p is None else nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), p.requires_grad)
                       for k, p in module._parameters.items()}
    new._modules = {k: None if m is None else clone(m) for k, m in module._modules.items()}
    return new


class Model(nn.Module):
    def __init__(self, n_layer: int = N_LAYER):
        super().__init__()
        self.embed = nn.Embedding(64, DIM, **META)
        first = Layer()
        self.layers = nn.ModuleList([first] + [clone(first) for _ in range(n_layer - 1)])
        self.norm = LayerNorm(DIM, **META)
        self.head = Linear(DIM, 64, bias=False, **META)


def build_model(n_layer: int = N_LAYER) -> nn.Module:
    gc.disable()  # 180k new objects: the cyclic collector would rescan them again and again
    try:
        return Model(n_layer)
    finally:
        gc.enable()


def build_spec(n_layer: int = N_LAYER) -> dict:
    """200 rules: 6 catch-alls and residuals, 120 literal, 60 per-layer glob, 8 ?/[..] glob, 6 regex."""
    rules: dict[str, dict] = {
        "weights": {"match": "*.weight", "ndim": 2, "init": {"name": "normal", "std": 0.02}},
        "biases": {"match": "*.bias", "init": "zeros"},
        "norms": {"match": ["*ln_?.weight", "*norm.weight", "*_norm.weight"], "module": ["LayerNorm", "RMSNorm"],
                  "init": "ones"},
        "attn_out": {"match": "layers.*.attn.o.weight", "init": {"name": "normal", "std": "0.02 / sqrt(2 * (layer + 1))"}},
        "expert_out": {"match": "layers.*.mlp.experts.*.w2.weight",
                       "init": {"name": "normal", "std": "0.02 / sqrt(2 * n_layer)"}},
        "embed": {"match": ["embed.weight", "head.weight"], "init": {"name": "normal", "std": 1.0}},
    }
    step = n_layer // 60
    for j in range(60):                                     # per-layer globs: layers.<i>.*
        i = j * step + 3
        rules[f"layer_{i}"] = {"match": f"layers.{i}.mlp.experts.*.w1.weight", "priority": 1,
                               "init": {"name": "trunc_normal", "std": 0.01, "cutoff": 3}}
    step = n_layer // 120
    for j in range(120):                                    # per-layer literal overrides
        i = j * step + 1
        part = ("attn.q.weight", "attn.k.weight", "mlp.router.weight", "ln_1.bias")[j % 4]
        init = {"name": "constant", "value": 0.5} if part.endswith("bias") else {"name": "normal", "std": 0.001}
        rules[f"lit_{i}_{part.replace('.', '_')}"] = {"match": f"layers.{i}.{part}", "priority": 2, "init": init}
    for j, glob in enumerate(["layers.?.attn.v.weight", "layers.[0-4]*.mlp.router.weight",
                              "layers.1?.ln_2.weight", "*.experts.1[0-6].w3.weight", "layers.*9.attn.o.bias",
                              "*.[qk]_norm.weight", "layers.??.mlp.experts.0.*", "*.experts.[3-5].w1.bias"]):
        rules[f"glob_{j}"] = {"match": glob, "priority": 1, "init": {"name": "normal", "std": 0.005}}
    for j, regex in enumerate([r"re:layers\.(1|2)\d*\.attn\.[qk]\.weight", r"re:.*experts\.(0|1)\.w3\.weight",
                               r"re:layers\.\d+5\.mlp\.router\.weight", r"re:(embed|head)\.weight",
                               r"re:layers\.99\d\..*\.bias", r"re:.*\.ln_[12]\.bias"]):
        rules[f"regex_{j}"] = {"match": regex, "priority": 1, "init": {"name": "uniform", "a": -0.01, "b": 0.01}}
    assert len(rules) == 200, len(rules)
    return {"seed": 0, "default": "keep", "strict": True, "vars": {"n_layer": n_layer}, "rules": rules}


def naive_winners(model: nn.Module, spec: dict, every: int = 1) -> list[str | None]:
    """The naive loop: every name against every pattern of every rule."""
    rules = [(name, r.get("priority", 0), [r["match"]] if isinstance(r["match"], str) else r["match"])
             for name, r in spec["rules"].items()]
    out = []
    for k, (name, _) in enumerate(model.named_parameters()):
        if k % every:
            continue
        best, best_priority = None, None
        for rule, priority, patterns in rules:
            for p in patterns:
                hit = (re.fullmatch(p[3:], name) is not None) if p.startswith("re:") else fnmatch.fnmatchcase(name, p)
                if hit:
                    if best is None or priority >= best_priority:
                        best, best_priority = rule, priority
                    break
        out.append(best)
    return out


def run() -> list[Row]:
    import initspec
    model = build_model()
    spec = initspec.load_spec(build_spec())
    n_tensors = sum(1 for _ in model.parameters())
    plan = initspec.plan(model, spec)                       # warm-up (imports, regex caches)
    naive_winners(model, build_spec(), every=1000)
    t_plan, t_naive = paired(lambda: initspec.plan(model, spec), lambda: naive_winners(model, build_spec(), SAMPLE))
    t_naive = [t * SAMPLE for t in t_naive]
    ratio = paired_ratio(t_plan, t_naive)
    filled = sum(1 for e in plan.entries if e.action == "fill")
    ok = med(t_plan) < 1.0
    return [Row(f"1. plan {n_tensors // 1000}k tensors x {len(spec.rules)} rules vs naive fnmatch loop",
                ratio, 0.1,
                f"initspec.plan {ms(med(t_plan))} (must be < 1 s: {'yes' if ok else 'NO'}); naive {ms(med(t_naive))} "
                f"(timed on every {SAMPLE}th name, x{SAMPLE}); {filled} tensors filled", ok)]


if __name__ == "__main__":
    main(run, "benchmarks.bench_plan")
