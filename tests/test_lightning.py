"""PyTorch Lightning: a LightningModule builds its model in configure_model through initspec (once,
even when Lightning calls the hook again), Fabric's init_module(empty_init=True) + apply, the Hydra
example on 1 process and on 2 DDP ranks whose weights agree bitwise before the first step."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

L = pytest.importorskip("lightning")

import initspec  # noqa: E402
from conftest import assert_same_values, values  # noqa: E402
from initspec.models.gpt import gpt_tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "lightning_train.py"
GPT_TINY = {"_target_": "initspec.models.gpt.GPT", "vocab_size": 128, "n_positions": 32, "n_embd": 64,
            "n_layer": 2, "n_head": 4, "tie_embeddings": True}
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


class TinyGPT(L.LightningModule):
    def __init__(self, spec="gpt2"):
        super().__init__()
        self.spec, self.model, self.calls, self.at_start = spec, None, 0, None

    def configure_model(self):
        self.calls += 1
        initspec.lightning.build_once(self, "model", GPT_TINY, self.spec)

    def on_fit_start(self):
        self.at_start = values(self.model)

    def training_step(self, batch, batch_idx):
        logits = self.model(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 128), batch[:, 1:].reshape(-1))

    def validation_step(self, batch, batch_idx):
        return self.training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-2)


def tokens(n: int = 4) -> DataLoader:
    data = torch.Generator().manual_seed(0)
    return DataLoader([torch.randint(0, 128, (4, 17), generator=data) for _ in range(n)], batch_size=None)


def test_trainer_fit_builds_the_model_once_and_trains():
    module = TinyGPT()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, **QUIET)
    trainer.fit(module, tokens())
    built, _ = initspec.build(GPT_TINY, "gpt2")
    assert_same_values(module.at_start, values(built), "weights before the first step")
    model, trained = module.model, values(module.model)
    assert any(not torch.equal(trained[n], module.at_start[n]) for n in trained)     # it trained
    assert model.lm_head.weight is model.transformer.wte.weight

    trainer.validate(module, tokens(2))                      # Lightning calls configure_model again
    assert module.calls == 2 and module.model is model
    assert_same_values(values(module.model), trained, "weights after the second configure_model")


def test_a_configure_model_that_would_rebuild_is_an_error():
    class BuiltInInit(TinyGPT):
        def __init__(self):
            super().__init__()
            self.model = gpt_tiny()

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, **QUIET)
    with pytest.raises(initspec.InitSpecError) as err:
        trainer.fit(BuiltInInit(), tokens(1))
    assert err.value.paths == ("configure_model",)
    assert "already holds a GPT" in str(err.value) and "self.model = None in __init__" in str(err.value)

    module = TinyGPT()
    first = initspec.lightning.build_once(module, "model", GPT_TINY, "gpt2")
    assert initspec.lightning.build_once(module, "model", dict(GPT_TINY), "gpt2") is first     # same config
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.lightning.build_once(module, "model", GPT_TINY, "seed_normal")
    assert err.value.paths == ("configure_model",) and "another model config or spec" in str(err.value)
    module.model = None                                                       # rebuilding on purpose
    assert initspec.lightning.build_once(module, "model", GPT_TINY, "seed_normal") is not first


def test_a_meta_default_device_without_device_is_an_error():
    module = TinyGPT()
    with torch.device("meta"), pytest.raises(initspec.InitSpecError) as err:
        initspec.lightning.build_once(module, "model", GPT_TINY, "gpt2")
    assert err.value.paths == ("device",) and "device=" in str(err.value) and module.model is None


def test_fabric_empty_init_then_apply():
    fabric = L.Fabric(accelerator="cpu", devices=1)
    with fabric.init_module(empty_init=True):
        model = gpt_tiny()
    report = initspec.apply(model, "gpt2", vars={"n_layer": model.n_layer}, device=fabric.device)
    assert {e.action for e in report.plan.entries} == {"fill"}            # empty_init left nothing to keep
    reference = gpt_tiny()
    initspec.apply(reference, "gpt2", vars={"n_layer": reference.n_layer})
    assert_same_values(values(model), values(reference))

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    batch = next(iter(tokens(1)))
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).reshape(-1, 128), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def run_example(tmp_path: Path, *overrides: str, timeout: float) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLE), f"hydra.run.dir={tmp_path / 'run'}", *overrides],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_the_example_trains_on_one_process(tmp_path):
    out = run_example(tmp_path, "initspec=seed_custom", "steps=4", timeout=240)
    losses = [float(x) for x in re.findall(r"step \d+ loss (\S+)", out)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "zero_below" in out                                        # the seed_custom pipeline ran


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ddp_ranks_start_from_bitwise_the_same_weights(tmp_path):
    """Each rank saves its weights in configure_model, before DDP wraps (and would broadcast) them."""
    out = run_example(tmp_path, "model=gpt_tiny", "initspec=gpt2", "trainer.devices=2",
                      "trainer.strategy=ddp_spawn", "steps=3", f"save_init={tmp_path / 'init'}", timeout=300)
    assert len(re.findall(r"step \d+ loss", out)) == 3
    ranks = [torch.load(tmp_path / "init" / f"rank{r}.pt") for r in (0, 1)]
    assert_same_values(ranks[1], ranks[0], "rank 1 vs rank 0")
    built, _ = initspec.build(GPT_TINY, "gpt2")                       # one process, no distributed at all
    assert_same_values(ranks[0], built.state_dict(), "rank 0 vs a single-process build")
