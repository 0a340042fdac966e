"""A tiny Hydra training launcher that builds its model through initspec.

    python examples/train.py                                   # seed MLP, seed_normal
    python examples/train.py initspec=seed_custom
    python examples/train.py initspec=seed_custom initspec.rules.weights.init.0.a=-5
    python examples/train.py '+initspec.rules.head={match: "2.weight", init: zeros}'
    python examples/train.py initspec.rules.biases=null       # biases keep PyTorch's default init
    python examples/train.py -m initspec=seed_normal,seed_custom
    python examples/train.py model=gpt_tiny initspec=gpt2

The model is built once, empty (no PyTorch default init), and initialized by
the composed spec; then a few SGD steps run on synthetic data.
"""
from __future__ import annotations

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

import initspec


def synthetic_batch(model: nn.Module, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and regression/classification targets fitting the model's first and last layer."""
    if isinstance(getattr(model, "transformer", None), nn.ModuleDict):      # GPT: next-token prediction
        vocab = model.transformer.wte.num_embeddings
        tokens = torch.randint(0, vocab, (batch, 9), generator=generator)
        return tokens[:, :-1], tokens[:, 1:]
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    if isinstance(first, nn.Conv2d):
        x = torch.randn(batch, first.in_channels, 32, 32, generator=generator)
        classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
        return x, torch.randint(0, classes, (batch,), generator=generator)
    x = torch.randn(batch, first.in_features, generator=generator)
    return x, x.sum(dim=1, keepdim=True)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if y.dtype == torch.long:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.mse_loss(out, y)


@hydra.main(version_base=None, config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    model, report = initspec.build(cfg.model, cfg.initspec, device=cfg.device)
    print(report.explain())
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.data_seed)
    x, y = synthetic_batch(model, cfg.batch, generator)
    loss = loss_of(model, x, y)
    for step in range(cfg.steps):
        optimizer.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        print(f"step {step} loss {loss.item():.6f}")
    return float(loss.detach())


if __name__ == "__main__":
    main()
