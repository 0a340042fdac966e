"""Batches and losses for ``initspec probe``: synthetic data drawn from a seeded generator.

The probe configs (``configs/probe/*.yaml``) instantiate them with Hydra: ``probe.data``
is one of the batch functions (``_target_`` plus its arguments), ``probe.loss``
one of the loss classes. Every batch comes from its own ``torch.Generator``
seeded with ``seed``, never from the global RNG, so the same config gives the
same batch anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InitSpecError
from .probe import first_tensor


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InitSpecError(f"probe.data.{name}", f"{name} must be a positive integer (got {value!r})",
                                f"set probe.data.{name} to a whole number >= 1")


def random_tokens(batch_size: int = 8, seq_len: int = 32, vocab_size: int = 50257, seed: int = 0) -> torch.Tensor:
    """Token ids, (batch_size, seq_len) int64, uniform over [0, vocab_size)."""
    _positive(batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=_generator(seed))


def random_images(batch_size: int = 8, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images, (batch_size, channels, size, size) float32, every pixel N(0, 1) (normalized inputs)."""
    _positive(batch_size=batch_size, channels=channels, size=size)
    return torch.randn(batch_size, channels, size, size, generator=_generator(seed))


def random_features(batch_size: int = 64, features: int = 3072, seed: int = 0) -> torch.Tensor:
    """Feature vectors, (batch_size, features) float32, every value N(0, 1)."""
    _positive(batch_size=batch_size, features=features)
    return torch.randn(batch_size, features, generator=_generator(seed))


@dataclass(frozen=True)
class NextTokenLoss:
    """Language modelling: cross-entropy of the logits at position t against the token at t + 1,
    ``F.cross_entropy(logits[:, :-1], tokens[:, 1:])`` averaged over every predicted position. The tokens
    are the batch, or its first tensor when it is a tuple, list or dict (``{"input_ids": ...}``)."""

    def __call__(self, logits: torch.Tensor, batch: Any) -> torch.Tensor:
        tokens = first_tensor(batch)
        vocab = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1))


@dataclass(frozen=True)
class RandomLabelLoss:
    """Classification against fixed random labels: ``F.cross_entropy(output, labels)`` with labels uniform
    over the output's classes (its last dim), drawn from ``seed`` (the same labels at every call)."""

    seed: int = 0

    def __call__(self, output: torch.Tensor, batch: object) -> torch.Tensor:
        labels = torch.randint(0, output.shape[-1], (output.shape[0],), generator=_generator(self.seed))
        return F.cross_entropy(output, labels.to(output.device))
