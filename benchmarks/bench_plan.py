"""Target 1: plan 100,000 parameter tensors against 200 rules, for three naming schemes.

Each scheme is a model on the meta device with about 100k parameter tensors
and a 200-rule spec of the kind people write for it (catch-alls, module-filtered
norms, per-block globs, literal overrides, ``?``/``[..]`` globs, ``re:`` rules):

* ``indices``:  ModuleList indices, ``layers.12.mlp.experts.3.w1.weight`` (a 1000-layer
  mixture-of-experts transformer, 17 experts per layer);
* ``suffixed``: digits inside components, ``blk10384.moe.expert_7.w1.weight`` (the same
  model held in ModuleDicts keyed ``blk<n>`` and ``expert_<j>``);
* ``flat``:     a ModuleDict of 50,000 distinctly named Linear layers (``kabito.weight``).

Two rows per scheme, each measured side by side (median of 5 interleaved pairs):

* planning vs the naive loop: for every name, ``fnmatch.fnmatchcase`` (``re.fullmatch``
  for ``re:``) against every pattern of every rule, highest priority (then latest) wins:
  selection only, no filters, no expressions, no plan objects, so it does less than
  ``initspec.plan``. It is timed on every 10th name and scaled by 10 (its cost is
  exactly linear in the names). Threshold 0.1;
* planning vs constructing the same model on the meta device (what a launcher does
  before it plans). Threshold 0.5: nobody waits on planning more than on building.
"""
from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Callable

from torch import nn

from .common import Row, main, ms, med, paired, paired_ratio

N_LAYER = 1000
N_EXPERT = 17
N_FLAT = 50_000
SAMPLE = 10
DIM = 8
META = {"device": "meta"}  # explicit: a torch.device('meta') context slows construction 5x


class Linear(nn.Linear):
    """nn.Linear without its default init (the benchmark models live on the meta device)."""

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
    def __init__(self, keyed: bool):
        super().__init__()
        self.router = Linear(DIM, N_EXPERT, bias=False, **META)
        if keyed:
            self.experts = nn.ModuleDict({f"expert_{j}": Expert() for j in range(N_EXPERT)})
        else:
            self.experts = nn.ModuleList(Expert() for _ in range(N_EXPERT))


class Layer(nn.Module):
    def __init__(self, keyed: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(DIM, **META)
        self.attn = Attention()
        self.ln_2 = LayerNorm(DIM, **META)
        self.mlp = MoE(keyed)


class Transformer(nn.Module):
    """``indices``: layers.<i>...; ``suffixed``: blk<n>... with experts keyed expert_<j>."""

    def __init__(self, scheme: str, n_layer: int = N_LAYER):
        super().__init__()
        self.embed = nn.Embedding(64, DIM, **META)
        if scheme == "indices":
            self.layers = nn.ModuleList(Layer() for _ in range(n_layer))
        else:
            self.blocks = nn.ModuleDict({block_key(i): Layer(keyed=True) for i in range(n_layer)})
        self.norm = LayerNorm(DIM, **META)
        self.head = Linear(DIM, 64, bias=False, **META)


def block_key(i: int) -> str:
    return f"blk{10000 + 37 * i}"


SYLLABLES = ["ka", "bi", "to", "mo", "ru", "se", "na", "li", "po", "de", "gu", "fa", "zi", "ve", "ho", "ju",
             "ce", "wa", "xo", "ne", "pi", "ta", "lu", "me", "so", "ri", "ga", "bo", "ke", "yu", "da", "fi",
             "no", "sa", "te", "mi", "ro", "ze", "vu", "hi"]


def flat_names(n: int = N_FLAT) -> list[str]:
    """``n`` distinct digit-free module names of three syllables (40^3 = 64,000 to choose from)."""
    return ["".join(s) for s in itertools.islice(itertools.product(SYLLABLES, repeat=3), n)]


class Flat(nn.Module):
    def __init__(self, n: int = N_FLAT):
        super().__init__()
        self.mods = nn.ModuleDict({name: Linear(DIM, DIM, **META) for name in flat_names(n)})


def _per_block_rules(prefix: Callable[[int], str], expert: Callable[[int], str], n_layer: int) -> dict:
    """120 literal overrides and 60 per-block globs, spread over the blocks."""
    rules: dict[str, dict] = {}
    step = n_layer // 60
    for j in range(60):
        i = j * step + 3
        rules[f"block_{i}"] = {"match": f"{prefix(i)}.mlp.experts.{expert(1).replace('1', '*')}.w1.weight",
                               "priority": 1, "init": {"name": "trunc_normal", "std": 0.01, "cutoff": 3}}
    step = n_layer // 120
    for j in range(120):
        i = j * step + 1
        part = ("attn.q.weight", "attn.k.weight", "mlp.router.weight", "ln_1.bias")[j % 4]
        init = {"name": "constant", "value": 0.5} if part.endswith("bias") else {"name": "normal", "std": 0.001}
        rules[f"lit_{i}_{part.replace('.', '_')}"] = {"match": f"{prefix(i)}.{part}", "priority": 2, "init": init}
    return rules


def _common_rules(residual: str) -> dict:
    return {
        "weights": {"match": "*.weight", "ndim": 2, "init": {"name": "normal", "std": 0.02}},
        "biases": {"match": "*.bias", "init": "zeros"},
        "norms": {"match": ["*ln_?.weight", "*norm.weight", "*_norm.weight"], "module": ["LayerNorm", "RMSNorm"],
                  "init": "ones"},
        "attn_out": {"match": residual, "init": {"name": "normal", "std": "0.02 / sqrt(2 * n_layer)"}},
        "expert_out": {"match": "*.mlp.experts.*.w2.weight", "init": {"name": "normal", "std": "0.02 / sqrt(2 * n_layer)"}},
        "embed": {"match": ["embed.weight", "head.weight"], "init": {"name": "normal", "std": 1.0}},
    }


def indices_spec(n_layer: int = N_LAYER) -> dict:
    """6 catch-alls and residuals, 120 literal, 60 per-layer glob, 8 ?/[..] glob, 6 regex: 200 rules."""
    rules = _common_rules("layers.*.attn.o.weight")
    rules["attn_out"]["init"]["std"] = "0.02 / sqrt(2 * (layer + 1))"
    rules.update(_per_block_rules(lambda i: f"layers.{i}", str, n_layer))
    for j, glob in enumerate(["layers.?.attn.v.weight", "layers.[0-4]*.mlp.router.weight",
                              "layers.1?.ln_2.weight", "*.experts.1[0-6].w3.weight", "layers.*9.attn.o.bias",
                              "*.[qk]_norm.weight", "layers.??.mlp.experts.0.*", "*.experts.[3-5].w1.bias"]):
        rules[f"glob_{j}"] = {"match": glob, "priority": 1, "init": {"name": "normal", "std": 0.005}}
    for j, regex in enumerate([r"re:layers\.(1|2)\d*\.attn\.[qk]\.weight", r"re:.*experts\.(0|1)\.w3\.weight",
                               r"re:layers\.\d+5\.mlp\.router\.weight", r"re:(embed|head)\.weight",
                               r"re:layers\.99\d\..*\.bias", r"re:.*\.ln_[12]\.bias"]):
        rules[f"regex_{j}"] = {"match": regex, "priority": 1, "init": {"name": "uniform", "a": -0.01, "b": 0.01}}
    return _spec(rules, n_layer)


def suffixed_spec(n_layer: int = N_LAYER) -> dict:
    """The same 200-rule shape over blk<n> / expert_<j> names."""
    rules = _common_rules("blocks.*.attn.o.weight")
    rules.update(_per_block_rules(lambda i: f"blocks.{block_key(i)}", lambda j: f"expert_{j}", n_layer))
    for j, glob in enumerate(["blocks.blk1000?.attn.v.weight", "blocks.blk1[0-4]*.mlp.router.weight",
                              "blocks.blk101??.ln_2.weight", "*.expert_1[0-6].w3.weight", "blocks.*9.attn.o.bias",
                              "*.[qk]_norm.weight", "blocks.blk10???.mlp.experts.expert_0.*",
                              "*.expert_[3-5].w1.bias"]):
        rules[f"glob_{j}"] = {"match": glob, "priority": 1, "init": {"name": "normal", "std": 0.005}}
    for j, regex in enumerate([r"re:blocks\.blk(1|2)\d*\.attn\.[qk]\.weight", r"re:.*expert_(0|1)\.w3\.weight",
                               r"re:blocks\.blk\d+5\.mlp\.router\.weight", r"re:(embed|head)\.weight",
                               r"re:blocks\.blk4\d+\..*\.bias", r"re:.*\.ln_[12]\.bias"]):
        rules[f"regex_{j}"] = {"match": regex, "priority": 1, "init": {"name": "uniform", "a": -0.01, "b": 0.01}}
    return _spec(rules, n_layer)


def flat_spec(n: int = N_FLAT) -> dict:
    """2 catch-alls, 120 literal, 64 prefix globs, 8 ?/[..] globs, 6 regexes: 200 rules."""
    names = flat_names(n)
    rules: dict[str, dict] = {
        "weights": {"match": "*.weight", "init": {"name": "normal", "std": "1 / sqrt(fan_in)"}},
        "biases": {"match": "*.bias", "init": "zeros"},
    }
    for j in range(120):
        name = names[(j * 409) % n]
        rules[f"lit_{j}"] = {"match": f"mods.{name}.weight", "priority": 2, "init": {"name": "normal", "std": 0.001}}
    for a, b in itertools.islice(itertools.product(SYLLABLES[:8], repeat=2), 64):
        rules[f"prefix_{a}{b}"] = {"match": f"mods.{a}{b}*.bias", "priority": 1, "init": {"name": "constant", "value": 0.1}}
    for j, glob in enumerate(["mods.??bi*.weight", "mods.*[aeiou]to.bias", "mods.ka??mo.*", "*.[kb]a????.weight",
                              "mods.*ru.b?as", "mods.[!k]?ka*.weight", "*zi[!a]?.bias", "mods.ho*ju.*"]):
        rules[f"glob_{j}"] = {"match": glob, "priority": 1, "init": {"name": "normal", "std": 0.005}}
    for j, regex in enumerate([r"re:mods\.(ka|mo)\w*\.bias", r"re:.*(se|na)li\.weight", r"re:mods\.fa.*",
                               r"re:mods\.\w{4}xo\.bias", r"re:.*po(de|gu)\.weight", r"re:mods\.[a-d]\w+\.bias"]):
        rules[f"regex_{j}"] = {"match": regex, "priority": 1, "init": {"name": "uniform", "a": -0.01, "b": 0.01}}
    return _spec(rules, 1)


def _spec(rules: dict, n_layer: int) -> dict:
    assert len(rules) == 200, len(rules)
    return {"seed": 0, "default": "keep", "strict": True, "vars": {"n_layer": n_layer}, "rules": rules}


SCHEMES: dict[str, tuple[str, Callable[[], nn.Module], Callable[[], dict]]] = {
    "indices": ("ModuleList indices (layers.12.mlp.experts.3.w1.weight)", lambda: Transformer("indices"),
                indices_spec),
    "suffixed": ("digits in components (blocks.blk10384.mlp.experts.expert_7.w1.weight)",
                 lambda: Transformer("suffixed"), suffixed_spec),
    "flat": ("flat unique names (mods.kabito.weight, 50k Linear)", Flat, flat_spec),
}


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


def run_scheme(key: str, letter: str) -> list[Row]:
    import initspec
    label, make, make_spec = SCHEMES[key]
    model = make()
    raw = make_spec()
    spec = initspec.load_spec(raw)
    n_tensors = sum(1 for _ in model.parameters())
    plan = initspec.plan(model, spec)                       # warm-up (imports, regex caches)
    naive_winners(model, raw, every=1000)
    t_plan, t_naive = paired(lambda: initspec.plan(model, spec), lambda: naive_winners(model, raw, SAMPLE))
    t_naive = [t * SAMPLE for t in t_naive]
    t_plan2, t_build = paired(lambda: initspec.plan(model, spec), make)
    filled = sum(1 for e in plan.entries if e.action == "fill")
    fills = {e.rule for e in plan.entries if e.rule}
    return [
        Row(f"1{letter}. plan {n_tensors // 1000}k tensors x {len(spec.rules)} rules vs naive fnmatch loop: {label}",
            paired_ratio(t_plan, t_naive), 0.1,
            f"initspec.plan {ms(med(t_plan))}; naive {ms(med(t_naive))} (timed on every {SAMPLE}th name, "
            f"x{SAMPLE}); {filled} tensors filled by {len(fills)} rules"),
        Row(f"1{letter}'. plan vs constructing the same model on the meta device: {key}",
            paired_ratio(t_plan2, t_build), 0.5,
            f"initspec.plan {ms(med(t_plan2))}; construction {ms(med(t_build))}"),
    ]


def run() -> list[Row]:
    rows = []
    for key, letter in zip(SCHEMES, "abc"):
        rows += run_scheme(key, letter)
    return rows


if __name__ == "__main__":
    main(run, "benchmarks.bench_plan")
