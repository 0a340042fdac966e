"""The HF presets (gpt2, bert, hf_llama) against transformers' own initialization.

For each model: one instance is initialized by transformers (``_init_weights``
at construction, global RNG seeded), another by the initspec preset. They must
have the same parameters and tie structure, every parameter must be filled by
a preset rule, constants must be equal exactly, all-zero rows (padding_idx) must
coincide, and every random tensor must agree in distribution:
  * std ratio within max(3%, 4/sqrt(n)) -- the ratio of two independent sample
    stds of n values has a relative spread of about 1/sqrt(n), so 3% on the large
    (>= 17k values) tensors, looser only on the few tiny ones (token types);
  * a two-sample Kolmogorov-Smirnov test that does not reject at 1% for the
    model as a whole (Bonferroni: each of the k random tensors at 1%/k; a
    per-tensor 1% would reject some tensor of a 30-tensor model by chance one
    time in four, while a wrong formula gives p < 1e-100).
Configs are small (vocabulary 1000, width 256) but large enough for these
statistics; nothing is downloaded.
"""
from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
stats = pytest.importorskip("scipy.stats")

import initspec  # noqa: E402
from initspec.models.gpt import GPT  # noqa: E402

transformers.logging.set_verbosity_error()

KS_ALPHA = 0.01
STD_TOL = 0.03
N_LAYER = 4


def gpt2_config(**kw):
    return transformers.GPT2Config(vocab_size=1000, n_embd=256, n_layer=N_LAYER, n_head=4, n_positions=128,
                                   bos_token_id=0, eos_token_id=0, **kw)


def bert_config(**kw):
    return transformers.BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=1024, max_position_embeddings=128, **kw)


def llama_config(**kw):
    return transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, **kw)


def hf_and_ours(build, preset, **vars):
    """(HF-initialized model, preset-initialized model, plan)."""
    torch.manual_seed(0)
    ref = build()
    ours = build()
    plan = initspec.plan(ours, preset, seed=0, vars=vars or None)
    initspec.apply(ours, preset, seed=0, vars=vars or None)
    return ref, ours, plan


def tie_structure(model) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), set()).add(name)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def is_constant(t: torch.Tensor) -> bool:
    return bool(t.min() == t.max())


def same_distribution(name: str, ref: torch.Tensor, ours: torch.Tensor, alpha: float) -> tuple[float, float] | None:
    """Assert ``ours`` is distributed as ``ref``; returns (std ratio, KS p) for random tensors."""
    r, o = ref.detach().float(), ours.detach().float()
    assert r.shape == o.shape, name
    if is_constant(r):
        assert torch.equal(o, r), f"{name}: HF sets the constant {r.flatten()[0].item():g}, the preset does not"
        return None
    if r.dim() == 2:
        assert torch.equal((r == 0).all(1), (o == 0).all(1)), f"{name}: all-zero rows (padding_idx) differ"
    ratio = (o.std() / r.std()).item()
    tol = max(STD_TOL, 4 / math.sqrt(r.numel()))
    assert abs(ratio - 1) < tol, f"{name}: std ratio preset/HF = {ratio:.4f} (tolerance {tol:.3f})"
    p = stats.ks_2samp(o.flatten().numpy(), r.flatten().numpy()).pvalue
    assert p > alpha, f"{name}: KS test rejects at {alpha:.2g} (p = {p:.2g})"
    return ratio, p


def assert_matches_hf(ref, ours, plan, rename=lambda n: n, transpose=()):
    """Every parameter of ``ref`` (HF) against ``ours``; ``rename``/``transpose`` map another naming scheme."""
    ours_named = dict(ours.named_parameters(remove_duplicate=False))
    ref_named = dict(ref.named_parameters(remove_duplicate=False))
    assert {rename(n) for n in ref_named} == set(ours_named)
    assert {frozenset(rename(n) for n in g) for g in tie_structure(ref)} == tie_structure(ours)
    not_filled = [e.name for e in plan.entries if e.kind == "parameter" and e.action != "fill"]
    assert not not_filled, f"parameters no preset rule fills: {not_filled}"
    alpha = KS_ALPHA / sum(not is_constant(r) for r in ref.parameters())
    results = {}
    for name, r in ref.named_parameters():
        o = ours_named[rename(name)]
        results[name] = same_distribution(name, r.T if name in transpose else r, o, alpha)
    return results


# ----------------------------------------------------------------- GPT-2

def test_gpt2_matches_hf_gpt2_lm_head_model():
    ref, ours, plan = hf_and_ours(lambda: transformers.GPT2LMHeadModel(gpt2_config()), "gpt2", n_layer=N_LAYER)
    results = assert_matches_hf(ref, ours, plan)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert plan.tie_groups == {"lm_head": ["transformer.wte.weight", "lm_head.weight"]}
    assert sum(r is not None for r in results.values()) == 2 + 4 * N_LAYER   # wte, wpe, 4 matrices per block
    residual = plan.entry("transformer.h.3.mlp.c_proj.weight")
    assert residual.rule == "residual" and residual.ops[0]["std"] == pytest.approx(0.02 / math.sqrt(2 * N_LAYER))


def test_gpt2_comparison_fails_when_the_residual_scaling_is_dropped():
    """The comparison has teeth: c_proj left at 0.02 (the classic mistake) is caught."""
    spec = initspec.load_spec("gpt2", vars={"n_layer": N_LAYER})
    broken = spec.model_copy(update={"rules": {k: v for k, v in spec.rules.items() if k != "residual"}})
    ref, ours, plan = hf_and_ours(lambda: transformers.GPT2LMHeadModel(gpt2_config()), broken)
    with pytest.raises(AssertionError, match="c_proj.weight"):
        assert_matches_hf(ref, ours, plan)


def test_gpt2_fits_gpt2_model_without_head_and_cross_attention():
    """GPT2Model has no 'transformer.' prefix and no lm_head: the tie is skipped, not an error."""
    build = lambda: transformers.GPT2Model(gpt2_config(add_cross_attention=True))  # noqa: E731
    ref, ours, plan = hf_and_ours(build, "gpt2", n_layer=N_LAYER)
    assert plan.ties == ()
    assert_matches_hf(ref, ours, plan)
    assert plan.entry("h.0.crossattention.c_proj.weight").rule == "residual"


def test_gpt2_fits_the_package_gpt_like_hf():
    """initspec.models.gpt.GPT (nn.Linear, built untied) ends like HF GPT-2: tied, same statistics."""
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(gpt2_config())
    ours = GPT(vocab_size=1000, n_positions=128, n_embd=256, n_layer=N_LAYER, n_head=4, tie_embeddings=False)
    plan = initspec.plan(ours, "gpt2", vars={"n_layer": N_LAYER})
    initspec.apply(ours, "gpt2", vars={"n_layer": N_LAYER})
    conv1d = {n for n, m in ref.named_modules() if isinstance(m, transformers.pytorch_utils.Conv1D)}
    transpose = {f"{n}.weight" for n in conv1d}
    assert_matches_hf(ref, ours, plan, transpose=transpose)
    assert ours.lm_head.weight is ours.transformer.wte.weight


# ------------------------------------------------------------------ BERT

def test_bert_matches_hf_bert_for_masked_lm():
    ref, ours, plan = hf_and_ours(lambda: transformers.BertForMaskedLM(bert_config()), "bert")
    assert_matches_hf(ref, ours, plan)
    emb = ours.bert.embeddings.word_embeddings
    assert ours.cls.predictions.decoder.weight is emb.weight
    assert ours.cls.predictions.decoder.bias is ours.cls.predictions.bias
    assert emb.padding_idx == 0 and torch.count_nonzero(emb.weight[0]) == 0
    assert torch.count_nonzero(emb.weight[1]) == emb.weight.shape[1]


def test_bert_fits_bert_model_and_pretraining_heads():
    for build in (lambda: transformers.BertModel(bert_config()),
                  lambda: transformers.BertForPreTraining(bert_config())):
        ref, ours, plan = hf_and_ours(build, "bert")
        assert_matches_hf(ref, ours, plan)


# ----------------------------------------------------------------- Llama

@pytest.mark.parametrize("tie", [False, True])
def test_hf_llama_matches_hf_llama_for_causal_lm(tie):
    build = lambda: transformers.LlamaForCausalLM(llama_config(tie_word_embeddings=tie, pad_token_id=3))  # noqa: E731
    ref, ours, plan = hf_and_ours(build, "hf_llama")
    assert (ref.lm_head.weight is ref.model.embed_tokens.weight) is tie
    assert_matches_hf(ref, ours, plan)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) is tie
    assert torch.count_nonzero(ours.model.embed_tokens.weight[3]) == 0
    # the rotary tables are HF's computed buffers: left as built
    assert torch.equal(ours.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)


def test_hf_llama_covers_attention_and_mlp_biases():
    build = lambda: transformers.LlamaForCausalLM(llama_config(attention_bias=True, mlp_bias=True))  # noqa: E731
    ref, ours, plan = hf_and_ours(build, "hf_llama")
    assert plan.entry("model.layers.0.self_attn.q_proj.bias").rule == "biases"
    assert_matches_hf(ref, ours, plan)
