"""A Hydra + PyTorch Lightning launcher whose LightningModule builds its model through initspec.

    python examples/lightning_train.py                                 # seed MLP, seed_normal, 1 CPU process
    python examples/lightning_train.py initspec=seed_custom
    python examples/lightning_train.py model=gpt_tiny initspec=gpt2
    python examples/lightning_train.py trainer.devices=2 trainer.strategy=ddp_spawn   # 2 ranks, gloo

``configure_model`` builds the model empty (no PyTorch default init) and fills it
from the composed spec, in every process before DDP wraps it: each rank computes
bitwise the same weights from initspec's per-parameter streams (``save_init=DIR``
writes each rank's, to compare), so nothing needs broadcasting.
"""
from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

import initspec
from train import loss_of, synthetic_batch      # examples/train.py: synthetic data fitting the model


class LitModel(L.LightningModule):
    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.model = None                         # built in configure_model, once per process

    def configure_model(self) -> None:
        report = initspec.lightning.build_once(self, "model", self.cfg.model, self.cfg.initspec)
        if self.global_rank == 0:
            print(report.explain(), flush=True)
        if self.cfg.save_init:
            Path(self.cfg.save_init).mkdir(parents=True, exist_ok=True)
            torch.save(self.model.state_dict(), Path(self.cfg.save_init) / f"rank{self.global_rank}.pt")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = loss_of(self.model, x, y)
        self.log("loss", loss)
        if self.global_rank == 0:
            print(f"step {self.global_step} loss {loss.item():.6f}", flush=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr)


def batches(cfg: DictConfig) -> DataLoader:
    """The same synthetic batch, ``cfg.steps`` times per rank (each rank draws it with its own generator)."""
    model = hydra.utils.instantiate(cfg.model)    # only to read the input and output sizes
    x, y = synthetic_batch(model, cfg.batch, torch.Generator().manual_seed(cfg.data_seed))
    return DataLoader([(x, y)] * cfg.steps * cfg.trainer.devices, batch_size=None)


@hydra.main(version_base=None, config_path="conf", config_name="lightning_train")
def main(cfg: DictConfig) -> float:
    trainer = L.Trainer(**cfg.trainer, max_steps=cfg.steps, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(LitModel(cfg), batches(cfg))
    return float(trainer.callback_metrics["loss"])


if __name__ == "__main__":
    main()
