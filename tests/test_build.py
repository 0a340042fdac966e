"""initspec.build: empty construction, one materialization, ties kept, vars from the model config."""
import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from torch import nn

import initspec
from initspec import InitSpecError, meta_parameters
from conftest import assert_same_values, run_threads, spy, values

GPT = {"_target_": "initspec.models.gpt.GPT", "vocab_size": 128, "n_positions": 32, "n_embd": 64, "n_layer": 4,
       "n_head": 4}


def linear_resets_seen():
    """Records, for each nn.Linear.reset_parameters() call, whether its weight was on meta."""
    return spy(nn.Linear, "reset_parameters", lambda self: self.weight.is_meta)


def test_build_from_target_config_resolves_model_vars_and_keeps_ties():
    model, report = initspec.build(GPT, "gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(p.is_meta for p in model.parameters())
    entry = report.plan.entry("transformer.h.3.mlp.c_proj.weight")
    assert entry.expected_std == pytest.approx(0.02 / (2 * 4) ** 0.5)     # n_layer from the model config
    assert report.plan.entry("transformer.wte.weight").aliases == ("lm_head.weight",)
    ln = model.transformer.h[0].ln_1
    assert torch.equal(ln.weight.detach(), torch.ones(64)) and torch.equal(ln.bias.detach(), torch.zeros(64))


def test_build_equals_apply_on_a_normally_built_model():
    built, _ = initspec.build(GPT, "gpt2", seed=5)
    from initspec.models.gpt import GPT as GPTClass
    plain = GPTClass(**{k: v for k, v in GPT.items() if k != "_target_"})
    initspec.apply(plain, "gpt2", seed=5, vars={"n_layer": 4})
    assert_same_values(values(built), values(plain))


def test_no_double_init_parameters_never_hold_default_values():
    with linear_resets_seen() as calls:
        initspec.build(lambda: nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),
                       {"rules": {"all": {"match": "*", "init": "zeros"}}})
    assert calls == [True, True]   # default init ran on meta tensors only: free


def test_uncovered_parameters_get_their_module_reset_seeded():
    a, _ = initspec.build(lambda: nn.Sequential(nn.Linear(4, 4)), {"rules": {"w": {"match": "*.weight", "init": "zeros"}}})
    b, _ = initspec.build(lambda: nn.Sequential(nn.Linear(4, 4)), {"rules": {"w": {"match": "*.weight", "init": "zeros"}}})
    assert torch.equal(a[0].bias, b[0].bias) and torch.count_nonzero(a[0].bias) == 4


def test_buffers_are_built_for_real():
    class Rotary(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.register_buffer("freqs", torch.arange(4.0) / 4)

    model, _ = initspec.build(Rotary, {"rules": {"all": {"match": "proj.*", "init": "ones"}}})
    assert torch.equal(model.freqs, torch.arange(4.0) / 4)


def test_meta_parameters_only_affects_this_thread_and_restores():
    original = nn.Module.register_parameter
    seen = {}

    def other():
        seen["other"] = nn.Linear(2, 2).weight.is_meta

    with meta_parameters():
        run_threads(other)
        seen["here"] = nn.Linear(2, 2).weight.is_meta
    assert seen == {"other": False, "here": True}
    assert nn.Module.register_parameter is original
    with pytest.raises(RuntimeError):
        with meta_parameters():
            raise RuntimeError("x")
    assert nn.Module.register_parameter is original


def test_build_errors():
    with pytest.raises(InitSpecError, match="_target_"):
        initspec.build({"n_layer": 2}, "gpt2")
    with pytest.raises(InitSpecError, match="not an nn.Module"):
        initspec.build(lambda: 3, "seed_normal")
    with pytest.raises(InitSpecError, match="cannot instantiate"):
        initspec.build({"_target_": "initspec.models.gpt.GPT", "bogus": 1}, "gpt2")


def test_build_with_a_composed_dictconfig():
    cfg = OmegaConf.create({"model": GPT, "initspec": {"vars": {"n_layer": "${model.n_layer}"},
                                                       "rules": {"w": {"match": "*.weight", "ndim": 2, "init": {
                                                           "name": "normal", "std": "1 / n_layer"}}}}})
    model, report = initspec.build(cfg.model, cfg.initspec)
    assert report.plan.entry("transformer.wpe.weight").expected_std == 0.25


def test_checkpoint_round_trip_restores_ties(tmp_path):
    model, report = initspec.build(GPT, "gpt2")
    path = tmp_path / "seed.safetensors"
    initspec.save_checkpoint(model, path, report.plan)
    with safe_open(str(path), framework="pt") as f:      # the file as any safetensors reader sees it
        meta = f.metadata()
    assert json.loads(meta["initspec.aliases"]) == {"transformer.wte.weight": ["lm_head.weight"]}
    assert json.loads(meta["initspec.tie_groups"]) == {"lm_head": ["transformer.wte.weight", "lm_head.weight"]}
    from initspec.models.gpt import GPT as GPTClass
    fresh = GPTClass(**{k: v for k, v in GPT.items() if k != "_target_"}, tie_embeddings=False)
    initspec.load_checkpoint(fresh, path)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    assert_same_values(values(fresh), values(model))


def test_empty_init_false_builds_normally_and_gives_the_same_values():
    with linear_resets_seen() as calls:
        full, _ = initspec.build(GPT, "gpt2", seed=3, empty_init=False)
    assert calls and not any(calls)    # PyTorch's default init really ran on real tensors
    empty, _ = initspec.build(GPT, "gpt2", seed=3)
    assert_same_values(values(full), values(empty))


def test_uncovered_meta_parameter_without_reset_parameters_is_an_error():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))
            self.proj = nn.Linear(3, 3)

    with pytest.raises(InitSpecError) as info:
        initspec.build(Scale, {"rules": {"proj": {"match": "proj.*", "init": "zeros"}}})
    assert "gain" in str(info.value) and info.value.problems[0].fix
    model, _ = initspec.build(Scale, {"rules": {"all": {"match": "*", "init": "ones"}}})
    assert torch.equal(model.gain.detach(), torch.ones(3))


def test_a_failing_factory_leaves_parameter_registration_unpatched():
    original = nn.Module.register_parameter

    def broken():
        nn.Linear(2, 2)
        raise ValueError("bad factory")

    with pytest.raises(ValueError, match="bad factory"):
        initspec.build(broken, "seed_normal")
    assert nn.Module.register_parameter is original
    assert not nn.Linear(2, 2).weight.is_meta


def test_bad_device_is_an_initspec_error():
    for device, message in (("bogus", "is not a device"), ("meta", "cannot be 'meta'")):
        with pytest.raises(InitSpecError, match=message) as info:
            initspec.build(GPT, "gpt2", device=device)
        assert info.value.paths == ("device",)


def test_progress_reports_every_filled_element_once():
    calls = []
    model, _ = initspec.build(GPT, "gpt2", progress=lambda done, total: calls.append((done, total)))
    unique = sum(p.numel() for p in model.parameters())     # the tied lm_head counted once
    assert calls and {total for _, total in calls} == {unique}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == unique


def test_overlapping_builds_in_two_threads_restore_torch_exactly():
    import threading
    originals = (nn.Module.register_parameter, nn.init.normal_, nn.init.kaiming_uniform_)
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with meta_parameters():
            a_inside.set()
            b_inside.wait(10)
            seen["a"] = nn.Embedding(3, 2).weight.is_meta
        a_left.set()

    def b():
        a_inside.wait(10)
        with meta_parameters():     # enters while a is inside, leaves after a
            b_inside.set()
            a_left.wait(10)
            seen["b"] = nn.Linear(2, 2).weight.is_meta
            seen["b sees patch"] = nn.Module.register_parameter is not originals[0]

    run_threads(a, b)
    assert seen == {"a": True, "b": True, "b sees patch": True}
    assert (nn.Module.register_parameter, nn.init.normal_, nn.init.kaiming_uniform_) == originals


def test_default_init_functions_are_skipped_on_meta_only():
    with meta_parameters():
        real = torch.zeros(3)
        nn.init.ones_(real)                                    # a real tensor is still filled
        meta = torch.empty(3, device="meta")
        assert nn.init.normal_(meta) is meta
    assert torch.equal(real, torch.ones(3))
