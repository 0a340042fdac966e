"""accelerate: a transformers model built with init_empty_weights() (or under torch.device("meta")) and
then initialized by initspec.apply(..., device=) holds bitwise the weights of a normal build, and trains."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

import initspec  # noqa: E402
from conftest import assert_same_values, values  # noqa: E402

transformers.logging.set_verbosity_error()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "accelerate_init.py"


def gpt2_config():
    return transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=16)


def test_an_empty_model_is_filled_on_the_device_as_a_normal_build_would_be():
    with accelerate.init_empty_weights():
        model = transformers.GPT2LMHeadModel(gpt2_config())
    model.tie_weights()
    assert all(p.is_meta for p in model.parameters())
    report = initspec.apply(model, "gpt2", vars={"n_layer": 2}, device="cpu")
    assert not any(p.is_meta for p in model.parameters()) and {e.action for e in report.plan.entries} == {"fill"}
    assert model.lm_head.weight is model.transformer.wte.weight

    reference = transformers.GPT2LMHeadModel(gpt2_config())
    initspec.apply(reference, "gpt2", vars={"n_layer": 2})
    assert_same_values(values(model), values(reference))

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(4):
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_a_meta_model_without_device_is_an_error_with_a_fix():
    with accelerate.init_empty_weights():
        model = transformers.GPT2LMHeadModel(gpt2_config())
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.apply(model, "gpt2", vars={"n_layer": 2})
    assert err.value.paths == ("device",) and "device='cpu'" in str(err.value)
    assert all(p.is_meta for p in model.parameters())


def test_a_torch_meta_build_names_the_computed_buffers_it_left_empty():
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.apply(model, "hf_llama", device="cpu")
    assert "'model.rotary_emb.inv_freq'" in str(err.value)
    with accelerate.init_empty_weights():                        # buffers stay real: rotary tables computed
        model = transformers.LlamaForCausalLM(config)
    initspec.apply(model, "hf_llama", device="cpu")
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


@pytest.mark.slow
def test_the_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "3"], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" loss ") == 3 and "tie lm_head" in proc.stdout
