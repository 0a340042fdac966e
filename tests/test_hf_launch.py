"""initspec.hf: fine-tuning from a checkpoint, where the spec fills exactly what the checkpoint
did not provide (per transformers' own loading info) and every loaded tensor stays bitwise.

Small BERT and Llama checkpoints are written by the tests themselves (``save_pretrained``
into tmp_path); nothing is downloaded.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import initspec  # noqa: E402
from initspec.hf import NewRows  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

transformers.logging.set_verbosity_error()


def bert_config(**kw):
    return transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32, **kw)


def llama_config(**kw):
    return transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, **kw)


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory):
    """A pretrained BERT with an MLM head (no pooler, no classifier), saved as safetensors."""
    path = tmp_path_factory.mktemp("bert_mlm")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        transformers.BertForMaskedLM(bert_config()).save_pretrained(path)
    return path


def assert_loaded_bitwise(model: nn.Module, path, grown: dict[str, int] | None = None) -> list[str]:
    """Every tensor of the checkpoint that the model holds with the checkpoint's shape (a grown one: on its
    old rows) equals it bitwise; returns the names compared."""
    saved, state, grown = load_file(str(path / "model.safetensors")), model.state_dict(), grown or {}
    compared = [k for k in saved if k in state and (k in grown or state[k].shape == saved[k].shape)]
    for key in compared:
        got = state[key][:grown[key]] if key in grown else state[key]
        assert torch.equal(got, saved[key]), f"{key} changed"
    return compared


def test_the_new_head_gets_the_spec_and_loaded_tensors_stay_bitwise(mlm_checkpoint):
    rng = torch.random.get_rng_state()
    model, info = initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint,
                                              spec="bert", num_labels=3, output_loading_info=True)
    assert torch.equal(torch.random.get_rng_state(), rng)          # transformers' init drew under a fork
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias",
                                    "bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert len(assert_loaded_bitwise(model, mlm_checkpoint)) == 37
    filled = {e.name for e in info["initspec"].plan.entries if e.action == "fill"}
    assert filled == info["missing_keys"]

    # initspec's values: what the same spec gives the same names on a model built from scratch
    scratch = transformers.BertForSequenceClassification(bert_config(num_labels=3))
    initspec.apply(scratch, "bert")
    for name in filled:
        assert torch.equal(model.get_parameter(name), scratch.get_parameter(name)), name
    assert float(model.classifier.weight.detach().std()) == pytest.approx(0.02, rel=0.5)
    assert not model.classifier.bias.any()

    again = initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint,
                                        spec="bert", num_labels=3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    other = initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint,
                                        spec="bert", num_labels=3, seed=7)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)
    assert torch.equal(other.bert.encoder.layer[0].output.dense.weight, model.bert.encoder.layer[0].output.dense.weight)


def test_the_model_trains_after_loading(mlm_checkpoint):
    model = initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint,
                                        spec="bert", num_labels=3)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 50, (8, 12), generator=data), torch.randint(0, 3, (8,), generator=data)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_mismatched_tensors_are_filled_whole(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(2)
        transformers.BertForSequenceClassification(bert_config(num_labels=2)).save_pretrained(tmp_path)
    model, info = initspec.hf.from_pretrained(transformers.BertForSequenceClassification, tmp_path, spec="bert",
                                              num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert {k[0] for k in info["mismatched_keys"]} == {"classifier.weight", "classifier.bias"}
    assert {e.name for e in info["initspec"].plan.entries if e.action == "fill"} == {"classifier.weight",
                                                                                    "classifier.bias"}
    assert len(assert_loaded_bitwise(model, tmp_path)) == 39     # all but the classifier (with a pooler)
    assert model.classifier.weight.shape == (5, 16) and not model.classifier.bias.any()


def test_init_missing_after_your_own_from_pretrained(mlm_checkpoint):
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        mlm_checkpoint, num_labels=3, output_loading_info=True)
    report = initspec.hf.init_missing(model, info, "bert")
    wanted = initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint,
                                         spec="bert", num_labels=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), wanted.state_dict().values()))
    assert report.plan.entry("classifier.weight").rule == "weights"


def test_resized_embeddings_get_the_spec_on_their_new_rows_only(mlm_checkpoint):
    model = initspec.hf.from_pretrained(transformers.BertForMaskedLM, mlm_checkpoint, spec="bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = initspec.hf.resize_token_embeddings(model, 57, "bert")
    words = model.bert.embeddings.word_embeddings.weight
    assert words.shape == (57, 16) and model.config.vocab_size == 57
    assert model.cls.predictions.decoder.weight is words                 # transformers' tie survives
    assert torch.equal(words[:50], before["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(model.cls.predictions.bias[:50], before["cls.predictions.bias"])
    assert not model.cls.predictions.bias[50:].any()                     # biases: zeros, on the new rows
    new_rows = words[50:].detach()
    assert new_rows.abs().max() < 0.02 * 6 and new_rows.std() > 0.005    # N(0, 0.02), not transformers' draw
    parts = report.plan.entry("bert.embeddings.word_embeddings.weight").parts
    assert [(p.part.start, p.part.stop, p.rule) for p in parts] == [(50, 57, "weights (new rows)")]
    unchanged = [k for k in before if not k.startswith(("bert.embeddings.word_embeddings", "cls.predictions.bias",
                                                         "cls.predictions.decoder"))]
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in unchanged)

    second = initspec.hf.from_pretrained(transformers.BertForMaskedLM, mlm_checkpoint, spec="bert")
    initspec.hf.resize_token_embeddings(second, 57, "bert")
    assert torch.equal(second.bert.embeddings.word_embeddings.weight, words)   # deterministic


def test_a_checkpoint_with_a_smaller_vocab_keeps_its_rows(mlm_checkpoint):
    model, info = initspec.hf.from_pretrained(transformers.BertForMaskedLM, mlm_checkpoint, spec="bert",
                                              vocab_size=64, output_loading_info=True)
    assert model.config.vocab_size == 64 and not info["mismatched_keys"]
    assert_loaded_bitwise(model, mlm_checkpoint, grown={"bert.embeddings.word_embeddings.weight": 50,
                                                        "cls.predictions.bias": 50})
    resized = initspec.hf.from_pretrained(transformers.BertForMaskedLM, mlm_checkpoint, spec="bert")
    initspec.hf.resize_token_embeddings(resized, 64, "bert")
    assert torch.equal(resized.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_an_untied_output_head_grows_too(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(3)
        transformers.LlamaForCausalLM(llama_config(tie_word_embeddings=False)).save_pretrained(tmp_path)
    model = initspec.hf.from_pretrained(transformers.LlamaForCausalLM, tmp_path, spec="hf_llama", vocab_size=48)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert_loaded_bitwise(model, tmp_path, grown={"model.embed_tokens.weight": 40, "lm_head.weight": 40})
    for weight in (model.lm_head.weight, model.model.embed_tokens.weight):
        assert weight.shape == (48, 16) and 0.005 < float(weight[40:].detach().std()) < 0.05
    assert not torch.equal(model.lm_head.weight[40:], model.model.embed_tokens.weight[40:])   # own streams


def test_a_padding_row_among_the_new_rows_is_zero():
    model = nn.Module()
    model.emb = nn.Embedding(10, 4, padding_idx=7)
    with torch.no_grad():
        model.emb.weight.fill_(5.0)
    spec = {"rules": {"emb": {"match": "emb.weight", "init": [{"name": "normal", "std": 0.02}, "padding_zero"]}}}
    initspec.hf.initialize_new(model, spec, whole=(), grown={"emb.weight": NewRows(0, 6, 10)})
    w = model.emb.weight.detach()
    assert (w[:6] == 5.0).all() and not w[7].any()
    assert all(w[r].any() and (w[r].abs() < 0.2).all() for r in (6, 8, 9))


def test_a_spec_that_covers_none_of_the_missing_tensors_is_an_error(mlm_checkpoint):
    spec = {"rules": {"embeddings": {"match": "*embeddings*", "init": "zeros"}}}
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint, spec=spec,
                                    num_labels=3)
    assert err.value.paths == ("initspec.rules",)
    text = str(err.value)
    assert "'classifier.weight'" in text and "did not provide" in text and "strict: false" in text

    model = initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint,
                                        spec={**spec, "strict": False}, num_labels=3)
    assert_loaded_bitwise(model, mlm_checkpoint)                     # nothing filled, nothing loaded touched

    partial = {"default": "error", "rules": {"head": {"match": "classifier.*", "init": "zeros"}}}
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint, spec=partial,
                                    num_labels=3)
    assert err.value.paths == ("initspec.default",) and "'bert.pooler.dense.weight'" in str(err.value)


def test_bad_use_is_named_before_loading(mlm_checkpoint):
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.hf.from_pretrained(transformers.BertForSequenceClassification, mlm_checkpoint,
                                    spec={"rules": {"w": {"mtach": "*"}}})
    assert err.value.paths[0].startswith("initspec.rules.w")
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.hf.from_pretrained(transformers.BertForMaskedLM, mlm_checkpoint, spec="bert", vocab_size=0)
    assert err.value.paths == ("vocab_size",)


def test_a_part_rule_on_a_grown_tensor_is_refused(mlm_checkpoint):
    model = initspec.hf.from_pretrained(transformers.BertForMaskedLM, mlm_checkpoint, spec="bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = initspec.load_spec("bert").to_data()
    spec["rules"]["halves"] = {"match": "*word_embeddings.weight", "part": {"dim": 1, "of": 2}, "init": "zeros"}
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.hf.resize_token_embeddings(model, 60, spec)
    assert err.value.paths == ("initspec.rules.halves.part",) and "new rows [50:60]" in str(err.value)
    assert model.config.vocab_size == 50                             # back to the old size and values
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_model_offloaded_to_meta_is_refused():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, device="meta"))
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.hf.init_missing(model, {"missing_keys": {"0.weight"}},
                                 {"rules": {"w": {"match": "*", "init": "ones"}}})
    assert err.value.paths == ("device_map",) and "'1.weight'" in str(err.value)
