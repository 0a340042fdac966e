"""The README's "Launchers" blocks, run as they stand (each in a fresh namespace, in a temporary
directory), so the documentation cannot drift from the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def launcher_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Launchers\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_block(index: int, tmp_path: Path, monkeypatch, **names) -> dict:
    blocks = launcher_blocks()
    assert len(blocks) == 4, "one block per launcher: Lightning, Fabric, transformers, accelerate"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"readme_launchers_{index}", **names}
    exec(compile(blocks[index], f"README.md (Launchers block {index + 1})", "exec"), namespace)
    return namespace


def test_lightning_block(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    ns = run_block(0, tmp_path, monkeypatch)                  # the block itself trains 4 steps
    module = ns["LitGPT"](ns["gpt"], "gpt2")
    module.configure_model()
    assert module.model.lm_head.weight is module.model.transformer.wte.weight


def test_fabric_block(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    import initspec
    from initspec.models.gpt import gpt_tiny
    ns = run_block(1, tmp_path, monkeypatch)
    reference = gpt_tiny()
    initspec.apply(reference, "gpt2", vars={"n_layer": reference.n_layer})
    got = dict(ns["model"].module.named_parameters())          # fabric.setup wraps the model
    assert all(torch.equal(got[n].detach(), p.detach()) for n, p in reference.named_parameters())


def test_transformers_block(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    with torch.random.fork_rng():
        transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    ns = run_block(2, tmp_path, monkeypatch, path=str(tmp_path / "bert"))
    assert ns["info"]["missing_keys"] == {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight",
                                          "bert.pooler.dense.bias"}
    assert ns["model"].config.vocab_size == 52
    assert [p.part.start for p in ns["report"].plan.entry("bert.embeddings.word_embeddings.weight").parts] == [50]


def test_accelerate_block(tmp_path, monkeypatch):
    pytest.importorskip("transformers").logging.set_verbosity_error()
    pytest.importorskip("accelerate")
    ns = run_block(3, tmp_path, monkeypatch)
    model = ns["model"]
    assert not any(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
