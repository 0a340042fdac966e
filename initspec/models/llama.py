"""A Llama 3 transformer with torchtitan's parameter names.

Names follow ``torchtitan/models/llama3/model/model.py`` (``tok_embeddings``,
``layers.{i}.attention.{wq,wk,wv,wo}``, ``layers.{i}.feed_forward.{w1,w2,w3}``,
``layers.{i}.attention_norm``, ``layers.{i}.ffn_norm``, ``norm``, ``output``;
``layers`` is a ``ModuleDict`` keyed by the layer index, as there), so the
``llama_depth`` preset's globs fit both. ``freqs_cis`` is a complex buffer,
which initspec never touches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_table(head_dim: int, max_seq_len: int, theta: float = 500000.0) -> torch.Tensor:
    """Complex rotations e^(i t f), f = theta^(-2k/head_dim): shape (max_seq_len, head_dim // 2)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len).float(), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Apply rotary embeddings to (batch, seq, heads, head_dim)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs_cis[: x.shape[1], None, :]).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = rotate(self.wq(x).view(b, t, self.n_heads, self.head_dim), freqs_cis)
        k = rotate(self.wk(x).view(b, t, self.n_kv_heads, self.head_dim), freqs_cis)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=self.n_heads != self.n_kv_heads)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden_dim: int, norm_eps: float):
        super().__init__()
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.feed_forward = FeedForward(dim, hidden_dim)
        self.attention_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.ffn_norm = nn.RMSNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """torchtitan llama3 ``Transformer`` (SwiGLU hidden size from ``multiple_of`` as there)."""

    def __init__(self, vocab_size: int = 128256, dim: int = 4096, n_layers: int = 32, n_heads: int = 32,
                 n_kv_heads: int | None = 8, multiple_of: int = 1024, norm_eps: float = 1e-5,
                 max_seq_len: int = 2048, rope_theta: float = 500000.0):
        super().__init__()
        self.dim, self.n_layers = dim, n_layers
        hidden = int(2 * (4 * dim) / 3)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.register_buffer("freqs_cis", rope_table(dim // n_heads, max_seq_len, rope_theta), persistent=False)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(dim, n_heads, n_kv_heads or n_heads, hidden, norm_eps)
                                     for i in range(n_layers)})
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h, self.freqs_cis)
        return self.output(self.norm(h))


def llama_tiny(**overrides) -> Transformer:
    """A small llama3 for tests: 4 layers, 256 wide, vocabulary 1000."""
    config = dict(vocab_size=1000, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=64, max_seq_len=64)
    config.update(overrides)
    return Transformer(**config)
